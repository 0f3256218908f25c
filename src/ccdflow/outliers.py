"""Light added to one star in one frame: the cosmic rays the pixel-level detection spared.

L.A.Cosmic (:mod:`ccdflow.calibrate`) must not flag the cores of undersampled
stars, so its object limit is high, and a cosmic ray that lands on a star's
core looks like part of the star and is spared (on simulated nights: +12 % of
the host's flux in one frame, 23 sigma). Across the aligned frames the same
hit is obvious: the star's flux, relative to the rest of the field, jumps in
one frame and returns in the next. This is the test at each catalogue
position that the pixel test cannot make.

For a (frames x stars) flux matrix in time order each star is normalised to
its median, each frame divided by the median of its stars (transparency,
robust to the one star hit), and every point compared with the medians of the
``half_window`` frames before it and of those after it. A point above *both*
by more than ``nsigma`` of its own error (scaled up by the star's robust
spread of those deviations when the errors are too small) is an excess. Both
sides, so a step (an eclipse's egress, a flare's rise) is never one: past the
step the frames on one side are level with the point. Only excesses: cosmic
rays and satellites add light; a single-frame deficit has no such cause
(a cloud dims every star and is divided out).
"""

from __future__ import annotations

import warnings

import bottleneck as bn
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["single_frame_excess"]

HALF_WINDOW = 3     # frames on each side; at 1-2 min cadences far shorter than an ingress
NSIGMA = 5.0        # ~3e-7 false alarms per point for white noise
MIN_STARS = 3       # fewer stars cannot give a transparency robust to the one hit


def _side_medians(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of the k frames before and of the k frames after each frame (NaN-aware, per column)."""
    n_frames, n_stars = values.shape
    pad = np.full((k, n_stars), np.nan)
    padded = np.vstack([pad, values, pad])
    windows = sliding_window_view(padded, k, axis=0)  # (n_frames + k + 1, n_stars, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows at gaps and ends
        medians = bn.nanmedian(windows, axis=-1)
    return medians[:n_frames], medians[k + 1:k + 1 + n_frames]


def single_frame_excess(flux, flux_err, *, half_window: int = HALF_WINDOW, nsigma: float = NSIGMA) -> np.ndarray:
    """Boolean (frames x stars): points with light added in that frame only (module notes).

    ``flux``, ``flux_err``: (frames x stars) in time order, NaN where a point is
    missing or flagged (never an excess). With fewer than MIN_STARS stars no
    transparency can be divided out, and only a star's own series is used.
    """
    f = np.asarray(flux, dtype=float)
    e = np.asarray(flux_err, dtype=float)
    if f.ndim != 2 or f.shape != e.shape:
        raise ValueError("flux and flux_err must be matching (frames x stars) matrices")
    usable = np.isfinite(f) & np.isfinite(e) & (f > 0) & (e > 0)
    f = np.where(usable, f, np.nan)
    if f.shape[0] < 2 * half_window + 1 or not usable.any():
        return np.zeros(f.shape, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # stars or frames with no usable point
        norm = f / bn.nanmedian(f, axis=0)
        if f.shape[1] >= MIN_STARS:
            level = bn.nanmedian(norm, axis=1)
            norm = norm / np.where(np.isfinite(level) & (level > 0), level, 1.0)[:, None]
        sigma = np.where(usable, e / f, np.nan) * norm
        before, after = _side_medians(norm, half_window)
        reference = np.fmax(before, after)  # above both sides; one side at the series' ends
        dev = (norm - reference) / sigma
        centre = bn.nanmedian(dev, axis=0)
        spread = 1.4826 * bn.nanmedian(np.abs(dev - centre), axis=0)
    scale = np.where(np.isfinite(spread), np.maximum(spread, 1.0), 1.0)
    return usable & np.isfinite(dev) & (dev > nsigma * scale)
