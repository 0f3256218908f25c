"""Robust statistics shared by every stage."""

from __future__ import annotations

import numpy as np

# sigma of a normal distribution per unit of median absolute deviation, to the
# four figures the field quotes (astropy's mad_std uses 1/Phi^-1(3/4) = 1.482602:
# 1.5e-6 relative, far below any noise, but it would change every stored figure)
MAD_TO_SIGMA = 1.4826


def robust_std(values, ignore_nan: bool = False):
    """``1.4826 x`` the median absolute deviation of ``values`` (NaN if there are none).

    The result keeps the precision of ``values`` (a float32 array gives a float32).
    """
    v = np.asarray(values)
    if ignore_nan:
        v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan
    return MAD_TO_SIGMA * np.median(np.abs(v - np.median(v)))
