"""Hot pixels found from the science frames themselves, for nights without darks.

A warm chip without dark frames leaves its hot pixels in every calibrated
frame: a pixel far above its neighbours, at the same detector position all
night, while the stars move (drift, guiding errors, field rotation). Each one
that falls in an aperture adds charge the noise model does not know about,
and L.A.Cosmic flags it as a cosmic ray, which used to reject the measurement.

:func:`find_hot_pixels` counts, per detector pixel, in how many frames it
stands more than ``sigma`` above the median of its 8 neighbours, among the frames
where no catalogue star lies within 2 FWHM of it (a star's core is also sharp;
a pixel a star never leaves is never called hot). A pixel high in at least
``min_fraction`` of at least ``min_frames`` such frames is hot. Cosmic rays
strike a given pixel in a handful of frames at most, so they do not pass.

The map is flagged HOT in each frame before photometry; since no dark took
the charge out, those pixels are repaired like any masked pixel
(:mod:`ccdflow.repair`), never measured.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import bitmask

__all__ = ["find_hot_pixels", "star_footprint"]

STAR_RADIUS_FWHM = 2.0
SATURATED_GROW_PX = 5
_UNUSABLE = bitmask.BAD | bitmask.SATURATED | bitmask.NO_DATA
_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool)


def star_footprint(shape, xy, radius: float) -> np.ndarray:
    """Boolean image, True within ``radius`` px of any of the (N, 2) positions ``xy``."""
    ny, nx = shape
    ix, iy = np.rint(np.asarray(xy, float).reshape(-1, 2)).astype(int).T
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    if not inside.any():
        return np.zeros(shape, bool)
    centres = np.ones(shape, bool)
    centres[iy[inside], ix[inside]] = False
    return ndimage.distance_transform_edt(centres) <= radius + 0.5


def find_hot_pixels(frames, star_positions, fwhm: float, *, sigma: float = 5.0, min_fraction: float = 0.5,
                    min_frames: int = 3) -> np.ndarray:
    """Boolean map of hot pixels from a night's calibrated frames.

    ``frames``: iterable of ``(data, variance, mask)`` in detector pixels (a
    generator keeps one frame in memory); ``star_positions``: parallel
    iterable of each frame's (N, 2) star positions (x, y); ``fwhm`` (px).
    """
    high = valid_count = None
    for (data, variance, mask), xy in zip(frames, star_positions):
        data = np.asarray(data, float)
        usable = np.isfinite(data) & np.isfinite(variance) & ((np.asarray(mask) & _UNUSABLE) == 0)
        # the median of the 8 neighbours: a dead column beside a pixel must not make it "high"
        neighbours = ndimage.median_filter(np.where(usable, data, np.nanmedian(data)), footprint=_RING, mode="nearest")
        with np.errstate(invalid="ignore", divide="ignore"):
            excess = (data - neighbours) / np.sqrt(np.asarray(variance, float) * 1.2)
        # bleed trails and the far wings of saturated stars are sharp and fixed: never hot pixels
        saturated = ndimage.binary_dilation((np.asarray(mask) & bitmask.SATURATED) != 0, iterations=SATURATED_GROW_PX)
        free = usable & ~saturated & ~star_footprint(data.shape, xy, STAR_RADIUS_FWHM * fwhm)
        if high is None:
            high, valid_count = np.zeros(data.shape, np.int32), np.zeros(data.shape, np.int32)
        high += free & (excess > sigma)
        valid_count += free
    if high is None:
        raise ValueError("no frames to find hot pixels in")
    return (valid_count >= min_frames) & (high >= min_fraction * valid_count)
