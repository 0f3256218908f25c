"""Red (time-correlated) noise in light-curve residuals: the time-averaging method.

Residuals of a light curve are averaged in bins of growing length; for white
noise the rms of the bin means falls as 1/sqrt(N) with N points per bin, and
correlated noise (seeing, guiding, airmass-dependent systematics the baseline
did not catch) makes it fall more slowly (Pont, Zucker & Queloz 2006, MNRAS
373, 231). The ratio beta = observed / white-noise rms on the timescale of a
transit's ingress is the factor by which white-noise parameter errors are
inflated (Winn et al. 2008, ApJ 683, 1076).

Bins are made in time, not by index, so a gap in the data never joins points
hours apart into one bin. Expectation for white noise: the M bin means b_i of
n_i points have variance sigma_1^2 / n_i, and their scatter about their own
mean (one degree of freedom gone to it) has expectation

    white_rms^2 = sigma_1^2 * mean(1 / n_i) * (M - p) / M,   p = 1,

which for equal bins is (sigma_1 / sqrt(N))^2 (M - 1) / M. Winn et al. write
the last factor as M / (M - 1); with 3-10 bins (the long bin sizes that matter)
that would bias beta low by (M - 1) / M, 0.67-0.9, so the exact expectation is
used instead and beta is unbiased for white noise at every bin size.

Residuals of a fit have lost more than the mean: each of the p fitted
parameters whose model column is smooth on the bin timescale (a baseline
coefficient, a transit's depth and mid-time on bins of about its ingress)
takes one more degree of freedom from the M bin means, white or red alike.
``n_params`` = p corrects for that; without it, beta of the residuals of a
5-parameter transit fit on 10-20 bins is ~15 % low (and is low for white noise
too, hidden there by the floor at 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import stats

__all__ = ["DEFAULT_BIN_MINUTES", "MIN_BINS", "noise_score", "rms_by_bin", "time_averaged_beta"]

DEFAULT_BIN_MINUTES = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0)
MIN_BINS = 3  # fewer bins than this give no usable scatter of the bin means

_COLUMNS = ["bin_minutes", "n_per_bin", "n_bins", "rms", "white_rms", "beta"]


def _finite(times_d, residuals):
    t = np.asarray(times_d, dtype=float)
    r = np.asarray(residuals, dtype=float)
    if t.shape != r.shape:
        raise ValueError("times_d and residuals must have the same shape")
    keep = np.isfinite(t) & np.isfinite(r)
    order = np.argsort(t[keep], kind="stable")
    return t[keep][order], r[keep][order]


def rms_by_bin(times_d, residuals, bin_minutes=DEFAULT_BIN_MINUTES, n_params: int = 1) -> pd.DataFrame:
    """Rms of time-binned residual means against the white-noise expectation.

    ``times_d`` in days, ``residuals`` (data - model) in any unit; NaN points
    are dropped. For each bin length in ``bin_minutes`` (a number or a
    sequence) the data are cut into consecutive bins of that length from the
    first point; empty bins (gaps) are skipped. Columns:

    * ``bin_minutes``; ``n_per_bin``: mean number of points of the non-empty bins;
      ``n_bins``: their number M;
    * ``rms``: standard deviation of the M bin means (about their mean);
    * ``white_rms``: its expectation for white noise of the unbinned standard
      deviation sigma_1, ``sigma_1 sqrt(mean(1/n_i) (M - p) / M)`` with p =
      ``n_params``, the parameters fitted to make the residuals (1: only their
      mean; module notes);
    * ``beta`` = rms / white_rms.

    Bin lengths with fewer than ``MIN_BINS`` (3) non-empty bins, or fewer than
    ``n_params + 2``, are left out.
    """
    t, r = _finite(times_d, residuals)
    rows = []
    if t.size >= 2:
        sigma_1 = float(np.std(r, ddof=1))
        for minutes in np.atleast_1d(np.asarray(bin_minutes, dtype=float)):
            if not (np.isfinite(minutes) and minutes > 0):
                continue
            idx = np.floor((t - t[0]) / (minutes / 1440.0)).astype(np.int64)
            n = np.bincount(idx)
            used = n > 0
            n = n[used]
            m = n.size
            if m < max(MIN_BINS, n_params + 2):
                continue
            means = np.bincount(idx, r)[used] / n
            rms = float(np.std(means))
            white = sigma_1 * float(np.sqrt(np.mean(1.0 / n) * (m - n_params) / m))
            beta = rms / white if white > 0 else np.nan
            rows.append((float(minutes), float(n.mean()), int(m), rms, white, beta))
    return pd.DataFrame(rows, columns=_COLUMNS).astype({"n_bins": int})


def time_averaged_beta(times_d, residuals, bin_minutes=DEFAULT_BIN_MINUTES, n_params: int = 1) -> float:
    """Red-noise factor beta: mean of :func:`rms_by_bin`'s beta, never below 1.

    Pass bin lengths comparable to the transit's ingress/egress duration (Winn
    et al. 2008 average over 0.5-2x it; :func:`ccdflow.transitfit.fit_light_curve`
    does so); the default 5-30 min suits typical hot-Jupiter ingresses.
    ``n_params``: parameters fitted to make the residuals (:func:`rms_by_bin`).
    Bin lengths with too few bins are ignored; 1.0 when none is left.
    """
    table = rms_by_bin(times_d, residuals, bin_minutes, n_params)
    beta = table["beta"].to_numpy(float)
    beta = beta[np.isfinite(beta)]
    return float(max(1.0, beta.mean())) if beta.size else 1.0


def noise_score(times_d, residuals, bin_minutes=DEFAULT_BIN_MINUTES, n_params: int = 1) -> float:
    """Effective noise per point on the transit timescale: robust rms x beta.

    For ranking apertures or comparison sets on one night (lower is better).
    sigma_1 * beta is the noise per point that, averaged as white noise over
    an ingress-length bin, gives the scatter the residuals actually show on that
    timescale; what limits a transit's depth and mid-time. The rms is 1.4826 x
    MAD, so a few outliers do not decide the ranking, and beta sees what a
    point-to-point scatter cannot: slow wander that the seeing or guiding put
    into one aperture and not another. ``residuals`` should be detrended
    (e.g. :func:`ccdflow.transitfit.fit_light_curve` ``.residuals``); a transit
    or trend left in them counts as red noise; ``n_params`` as in
    :func:`rms_by_bin` (the same for every candidate ranked). NaN if fewer than
    3 finite points.
    """
    t, r = _finite(times_d, residuals)
    if t.size < 3:
        return np.nan
    return float(stats.robust_std(r)) * time_averaged_beta(t, r, bin_minutes, n_params)
