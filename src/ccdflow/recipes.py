"""One recipe per master kind: what is combined, how, and how a frame uses it.

In the manner of BANZAI's calibration stages, everything that differs between
a bias, a dark and a flat lives in its recipe: the inventory group a master
serves, the masters removed from its inputs, which inputs are usable, how the
combined image is finished (hot pixels, normalisation), its unit and extra
header cards, and the arithmetic that applies it to a science frame. The
builder (:func:`ccdflow.calibrate.build_master`), the frame calibration
(:func:`ccdflow.calibrate.calibrate_frame`), the plan and the workflow rules
are written once for any recipe; adding a kind (a sky flat, a fringe frame) is
one recipe here plus its block in the config schema.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import bitmask
from .ccdio import Product
from .combine import FrameSource, _FitsSource

if TYPE_CHECKING:
    from .calibrate import CalibrationConfig

log = logging.getLogger(__name__)


class ProductSource(FrameSource):
    """A pre-processed frame served in row bands, with masters subtracted on the fly.

    ``(data - bias - dark_rate * exptime) / divide`` is computed band by band,
    so a master combine never holds whole frames. The data and mask planes are
    read through :class:`ccdflow.combine._FitsSource`, which unmaps each band's
    pages once read: with astropy's memory map every page touched stayed
    resident, 24 MB a 2048x2048 frame whatever the combine's budget
    (``benchmarks/bench_master_memory.py``).
    """

    def __init__(self, path, bias: Product | None = None, dark: Product | None = None,
                 exptime: float = 0.0, divide: float = 1.0):
        self.path = str(path)
        self._data = _FitsSource(self.path)
        self._mask = _FitsSource(self.path, extname="MASK")
        self.shape = self._data.shape
        self.name = Path(self.path).name
        self.bias, self.dark, self.exptime, self.divide = bias, dark, exptime, divide

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        rows = self._data.read_rows(r0, r1)
        if self.bias is not None:
            rows -= self.bias.data[r0:r1]
        if self.dark is not None:
            rows -= self.dark.data[r0:r1] * self.exptime
        return rows / self.divide if self.divide != 1.0 else rows

    def read_uncertainty_rows(self, r0, r1):
        return None

    def read_mask_rows(self, r0: int, r1: int) -> np.ndarray:
        return self._mask.read_rows(r0, r1) != 0

    def _read_into(self, r0, r1, out):
        out[...] = self.read_rows(r0, r1)

    def _sample(self, rows, cols):
        r0, r1, step = rows.indices(self.shape[0])
        return self.read_rows(r0, r1)[::step, cols]

    def close(self) -> None:
        self._data.close()
        self._mask.close()


def central(image: np.ndarray, fraction: float) -> np.ndarray:
    """The central ``fraction`` of an image along each axis."""
    ny, nx = image.shape
    dy, dx = int(ny * (1 - fraction) / 2), int(nx * (1 - fraction) / 2)
    return image[dy : ny - dy, dx : nx - dx]


class MasterRecipe:
    """The bias recipe, and the defaults every other recipe starts from."""

    kind = "bias"
    subtracts: tuple[str, ...] = ()   # masters removed from each input before combining
    combine_scale: str | None = None  # per-frame scaling in the combine
    counts_signal = False             # input variance gains the Poisson noise of its signal
    signal_after = True               # a science frame holds collected charge after this step
    titled_by_group = False           # QA thumbnails name the last part of the group key (a flat's filter)

    def group_column(self, dark_mode: str) -> str:
        """Inventory column holding the group key this master serves."""
        return "cal_group"

    def config_blocks(self) -> tuple[str, ...]:
        """Blocks of the ``calibration`` config a master of this kind depends on."""
        return ("combine", self.kind, *self.subtracts) + (("window_days",) if self.subtracts else ())

    def unit(self, cfg: CalibrationConfig) -> str:
        return "electron"

    def divisor(self, row: dict, cfg: CalibrationConfig) -> float:
        """What each input is divided by before combining (a dark's exposure time)."""
        return 1.0

    def usable(self, paths, rows, cfg: CalibrationConfig, used: dict[str, Product | None]):
        """``(paths, rows, reasons)``: the inputs fit to combine, and why others are not."""
        kept_paths, kept_rows, reasons = [], [], []
        for path, row in zip(paths, rows):
            reason = self.rejection(path, row, cfg, used)
            if reason:
                reasons.append(f"{row['filename']}: {reason}")
                log.warning("%s rejected: %s", self.kind, reasons[-1])
            else:
                kept_paths.append(path)
                kept_rows.append(row)
        return kept_paths, kept_rows, reasons

    def rejection(self, path, row: dict, cfg: CalibrationConfig, used: dict[str, Product | None]) -> str:
        """Why this input must not be combined ("" when it may)."""
        return ""

    def source(self, path, row: dict, cfg: CalibrationConfig, used: dict[str, Product | None]) -> ProductSource:
        return ProductSource(path, bias=used.get("bias"), divide=self.divisor(row, cfg))

    def finish(self, data, variance, mask, rows, cfg: CalibrationConfig):
        """The combined image made a master: ``(data, variance, header cards)``; ``mask`` is updated."""
        return data, variance, {}

    def terms(self, master: Product) -> dict:
        """Per-master arrays every science frame needs (computed once per master)."""
        return {"bits": (master.mask != 0).astype(bitmask.DTYPE) * bitmask.DTYPE(bitmask.BAD)}

    def apply(self, data, variance, mask, master: Product, terms: dict, row: dict) -> None:
        """Apply the master to a science frame in place (data in e-)."""
        data -= master.data
        variance += master.variance
        mask |= terms["bits"]


class DarkRecipe(MasterRecipe):
    """Bias-subtracted darks, as e-/s (``rate``) or e- at one exposure (``matched``); hot pixels flagged."""

    kind = "dark"
    subtracts = ("bias",)
    counts_signal = True
    signal_after = False

    def group_column(self, dark_mode: str) -> str:
        return "cal_group" if dark_mode == "rate" else "dark_group"

    def unit(self, cfg):
        return "electron / s" if cfg.dark_mode == "rate" else "electron"

    def divisor(self, row, cfg):
        return float(row["exptime"]) if cfg.dark_mode == "rate" else 1.0

    def rejection(self, path, row, cfg, used):
        """A dark needs a positive exposure time: a rate from a zero (or unknown)
        exposure is infinite, and would ruin every frame it is subtracted from."""
        exptime = float(row["exptime"])
        if not (np.isfinite(exptime) and exptime > 0):
            return f"EXPTIME = {row['exptime']} s (a dark needs a positive exposure time)"
        return ""

    def finish(self, data, variance, mask, rows, cfg):
        level = np.median(data[mask == 0])
        # hot: above the typical rate by more than hot_sigma times the pixel's own noise
        bitmask.flag(mask, data > level + cfg.hot_sigma * np.sqrt(variance), bitmask.HOT)
        cards = {"DARKMODE": (cfg.dark_mode, "rate: e-/s, scaled to each frame; matched: e-"),
                 "EXPTIME": (float(np.mean([float(r["exptime"]) for r in rows])), "s, mean of inputs")}
        return data, variance, cards

    def terms(self, master):
        hot = (master.mask & bitmask.HOT) != 0
        bits = np.where(hot, bitmask.DTYPE(bitmask.HOT), (master.mask != 0) * bitmask.DTYPE(bitmask.BAD))
        return {"bits": bits.astype(bitmask.DTYPE)}

    def apply(self, data, variance, mask, master, terms, row):
        exptime = float(row["exptime"])
        scale = np.float32(exptime if master.header.get("DARKMODE", "rate") == "rate" else 1.0)
        data -= master.data * scale
        variance += master.variance * (scale * scale)
        mask |= terms["bits"]


class FlatRecipe(MasterRecipe):
    """Bias- and dark-corrected flats of one filter, each scaled to its median,
    normalised to the central region; low response masked."""

    kind = "flat"
    subtracts = ("bias", "dark")
    combine_scale = "median"
    titled_by_group = True
    counts_signal = True
    signal_after = False

    def group_column(self, dark_mode):
        return "flat_group"

    def unit(self, cfg):
        return ""

    def rejection(self, path, row, cfg, used):
        """A flat whose raw level is too faint or too close to saturation."""
        product = Product.read(path)
        bias = used.get("bias")
        level = product.data if bias is None else product.data - bias.data
        median_e = float(np.median(central(level, cfg.flat_central_fraction)))
        saturated = central(product.mask & bitmask.SATURATED, cfg.flat_central_fraction) != 0
        saturated_fraction = float(np.mean(saturated))
        gain = float(product.header.get("GAINRAW", product.header.get("GAIN", 1.0)))  # e-/ADU of the raw
        limit_e = cfg.flat_max_level_fraction * float(row.get("saturation") or np.inf) * gain
        if saturated_fraction > 0.01 or median_e > limit_e:
            return f"too bright ({median_e:.0f} e-, {saturated_fraction:.0%} saturated)"
        if median_e < cfg.flat_min_level_e:
            return f"too faint ({median_e:.0f} e- < {cfg.flat_min_level_e:g})"
        return ""

    def source(self, path, row, cfg, used):
        return ProductSource(path, bias=used.get("bias"), dark=used.get("dark"), exptime=float(row["exptime"]))

    def finish(self, data, variance, mask, rows, cfg):
        middle = central(data, cfg.flat_central_fraction)
        norm = np.median(middle[np.isfinite(middle) & (middle > 0)])
        data, variance = data / norm, variance / norm**2
        bitmask.flag(mask, data < cfg.flat_low_response, bitmask.LOW_FLAT)
        return data, variance, {"FLATNORM": (float(norm), "central level divided out (e-)")}

    def terms(self, master):
        usable = master.data > 0
        response = np.where(usable, master.data, 1.0).astype(np.float32)
        low = (master.mask & bitmask.LOW_FLAT) != 0
        other = (master.mask & ~np.uint16(bitmask.LOW_FLAT)) != 0
        bits = (low * bitmask.LOW_FLAT) | (other * bitmask.BAD) | (~usable * bitmask.NO_DATA)
        inverse = (1.0 / response).astype(np.float32)
        return {"bits": bits.astype(bitmask.DTYPE), "inverse": inverse, "inverse_squared": inverse * inverse,
                "relative_variance": (master.variance * inverse * inverse).astype(np.float32)}

    def apply(self, data, variance, mask, master, terms, row):
        data *= terms["inverse"]
        variance *= terms["inverse_squared"]
        variance += data * data * terms["relative_variance"]
        mask |= terms["bits"]


# In the order a science frame is calibrated; each recipe's ``subtracts`` come before it.
RECIPES: dict[str, MasterRecipe] = {r.kind: r for r in (MasterRecipe(), DarkRecipe(), FlatRecipe())}
