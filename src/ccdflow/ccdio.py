"""Reading raw pixels and writing ccdflow's image products.

A product is one FITS file that ``astropy.nddata.CCDData.read`` opens with its
uncertainty and mask: the primary HDU holds the data (``BUNIT``), ``UNCERT``
the variance (``UTYPE = 'VarianceUncertainty'``), ``MASK`` the bitmask
(:mod:`ccdflow.bitmask`; CCDData reads it as a boolean mask). Masters add
``NFRAMES``. Products are written atomically.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import bitmask
from .atomic import atomic_path


def read_raw(path: str | Path, extensions: str = "") -> tuple[np.ndarray, fits.Header]:
    """Pixels (as stored: uint16 for BZERO=32768 frames) and header of the image HDU.

    ``extensions`` (the inventory column): HDU numbers, ``"1,2,3,4"``, of the
    image extensions of a multi-extension file read as one frame, side by side
    in that order (:mod:`ccdflow.mosaic`); the header is the first one's.
    No conversion to float here: :func:`ccdflow.overscan.preprocess` writes
    the float32 result in one pass.

    Raises ``OSError``/``ValueError`` with the file name for unreadable data.
    """
    wanted = [int(i) for i in str(extensions).split(",") if i.strip()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                if wanted:
                    parts = [np.asarray(hdul[i].data) for i in wanted]
                    return np.hstack(parts), hdul[wanted[0]].header.copy()
                for hdu in hdul:
                    if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                        return np.asarray(hdu.data), hdu.header.copy()
    except Exception as err:  # astropy raises many kinds for corrupt files
        raise OSError(f"{Path(path).name}: cannot read pixel data ({type(err).__name__}: {err})") from None
    raise ValueError(f"{Path(path).name}: no 2-D image data")


@dataclass
class Product:
    """An image with variance, bitmask and header (what every stage writes)."""

    data: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    header: fits.Header = field(default_factory=fits.Header)
    nframes: np.ndarray | None = None
    unit: str = "electron"

    def write(self, path: str | Path) -> None:
        header = self.header.copy()
        header["BUNIT"] = (self.unit, "unit of the data")
        for key, value, comment in bitmask.header_cards():
            header[key] = (value, f"mask bit {comment}")
        hdus = [
            fits.PrimaryHDU(self.data.astype(np.float32, copy=False), header),
            fits.ImageHDU(self.variance.astype(np.float32, copy=False), name="UNCERT"),
            # int16 on disk: no BZERO, so the mask can be memory-mapped (bits < 2**15)
            fits.ImageHDU(self.mask.astype(np.int16), name="MASK"),
        ]
        hdus[1].header["UTYPE"] = ("VarianceUncertainty", "astropy uncertainty class")
        hdus[1].header["BUNIT"] = (f"{self.unit}2" if self.unit != "adimensional" else "", "variance unit")
        if self.nframes is not None:
            hdus.append(fits.ImageHDU(self.nframes.astype(np.int16), name="NFRAMES"))
        with atomic_path(path) as temp:
            fits.HDUList(hdus).writeto(temp)

    @classmethod
    def read(cls, path: str | Path, memmap: bool = False) -> "Product":
        with fits.open(path, memmap=memmap) as hdul:
            nframes = hdul["NFRAMES"].data.copy() if "NFRAMES" in hdul else None
            return cls(hdul[0].data.astype(np.float32), hdul["UNCERT"].data.astype(np.float32),
                       hdul["MASK"].data.astype(bitmask.DTYPE), hdul[0].header.copy(), nframes,
                       hdul[0].header.get("BUNIT", "electron"))
