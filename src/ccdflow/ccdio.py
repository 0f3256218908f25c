"""Reading raw pixels and writing ccdflow's image products.

A product is one FITS file that ``astropy.nddata.CCDData.read`` opens with its
uncertainty and mask: the data (``BUNIT``), ``UNCERT`` the variance
(``UTYPE = 'VarianceUncertainty'``), ``MASK`` the bitmask (:mod:`ccdflow.bitmask`;
CCDData reads it as a boolean mask). Masters add ``NFRAMES``. Products are
written atomically.

Kept products (masters, calibrated frames) are tile-compressed, ``.fits.fz``
(the FITS tiled-image convention, FITS 4.0 section 10; what fpack writes): the
primary HDU holds the header alone, the image HDUs follow, ``SCI`` first. The
float planes are quantised: in each tile (a row) the step is the tile's noise
(CFITSIO's estimate from pixel differences) over ``quantize_level``, with
subtractive dithering (exact zeros kept), so the rounding adds noise of rms
step / sqrt(12): at the default 40, 0.7 % of a sky-limited pixel's noise, less in
star cores (0.003 % more noise in quadrature), for under a third of the float32
size (fpack's default, 4, adds 7 %). The dither is
seeded from the tile's checksum, so the same data make the same file. Masks and
frame counts are integers, compressed losslessly. Other names (``.fits``:
pre-processed calibration frames, read in row chunks by memory map) are written
plain.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import bitmask
from .atomic import atomic_path

PRODUCT_SUFFIX = ".fits.fz"  # kept image products: masters, calibrated frames
QUANTIZE_LEVEL = 40.0  # the tile's noise over the quantisation step (module notes)
SUBTRACTIVE_DITHER_2 = 2  # CFITSIO's quantize methods: 2 dithers all but exact zeros
DITHER_SEED_CHECKSUM = -1  # the dither seeded from each tile's checksum: reproducible files
_STRUCTURAL = {"SIMPLE", "BITPIX", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "BSCALE", "BZERO"}


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

    def write(self, path: str | Path, quantize_level: float = QUANTIZE_LEVEL) -> None:
        """Write to ``path``, tile-compressed if it ends in ``.fz`` (module notes; ``quantize_level``
        0: the float planes losslessly, GZIP_2), else plain."""
        header = self.header.copy()
        header["BUNIT"] = (self.unit, "unit of the data")
        for key, value, comment in bitmask.header_cards():
            header[key] = (value, f"mask bit {comment}")
        # int16 on disk: no BZERO, so the mask can be memory-mapped (bits < 2**15)
        planes = [("UNCERT", self.variance.astype(np.float32, copy=False)), ("MASK", self.mask.astype(np.int16))]
        if self.nframes is not None:
            planes.append(("NFRAMES", self.nframes.astype(np.int16)))
        data = self.data.astype(np.float32, copy=False)
        if is_compressed(path):
            hdus = [fits.PrimaryHDU(header=header), _compressed(data, "SCI", quantize_level, header)]
            hdus += [_compressed(plane, name, quantize_level) for name, plane in planes]
        else:
            hdus = [fits.PrimaryHDU(data, header)] + [fits.ImageHDU(plane, name=name) for name, plane in planes]
        hdus[-len(planes)].header["UTYPE"] = ("VarianceUncertainty", "astropy uncertainty class")
        hdus[-len(planes)].header["BUNIT"] = (f"{self.unit}2" if self.unit != "adimensional" else "", "variance unit")
        with atomic_path(path) as temp:
            fits.HDUList(hdus).writeto(temp)

    @classmethod
    def read(cls, path: str | Path, memmap: bool = False) -> "Product":
        with fits.open(path, memmap=memmap) as hdul:
            nframes = hdul["NFRAMES"].data.copy() if "NFRAMES" in hdul else None
            return cls(science_hdu(hdul).data.astype(np.float32), hdul["UNCERT"].data.astype(np.float32),
                       hdul["MASK"].data.astype(bitmask.DTYPE), hdul[0].header.copy(), nframes,
                       hdul[0].header.get("BUNIT", "electron"))


def is_compressed(path: str | Path) -> bool:
    """Whether a product path names a tile-compressed file (``.fz``)."""
    return str(path).endswith(".fz")


def science_hdu(hdul: fits.HDUList):
    """The HDU holding a product's data: ``SCI`` of a compressed product, else the primary."""
    return hdul["SCI"] if "SCI" in hdul else hdul[0]


def _compressed(plane: np.ndarray, name: str, quantize_level: float, header: fits.Header | None = None):
    """One tile-compressed image HDU, a row per tile; floats quantised (module notes)."""
    kwargs = {"compression_type": "RICE_1", "tile_shape": (1, plane.shape[-1])}
    if plane.dtype.kind == "f":
        if quantize_level > 0:
            kwargs.update(quantize_level=float(quantize_level), quantize_method=SUBTRACTIVE_DITHER_2,
                          dither_seed=DITHER_SEED_CHECKSUM)
        else:  # lossless: no quantisation, byte-shuffled gzip
            kwargs.update(compression_type="GZIP_2", quantize_level=0.0)
    image_header = None
    if header is not None:
        image_header = fits.Header([card for card in header.cards
                                    if card.keyword not in _STRUCTURAL and not card.keyword.startswith("NAXIS")])
    return fits.CompImageHDU(plane, header=image_header, name=name, **kwargs)
