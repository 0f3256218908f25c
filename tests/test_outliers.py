"""Single-frame excesses across aligned frames (ccdflow.outliers): the spared cosmic ray on a star."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ccdflow.lightcurve import FLAG_EXCESS, differential_light_curve
from ccdflow.outliers import single_frame_excess


def _field(n_frames=200, n_stars=30, seed=1, rel_err=0.005):
    rng = np.random.default_rng(seed)
    level = rng.uniform(2e4, 2e5, n_stars)
    transparency = 1.0 - 0.2 * np.sin(np.linspace(0, 3, n_frames))[:, None]  # extinction, common to all
    flux = level * transparency * (1 + rng.normal(0, rel_err, (n_frames, n_stars)))
    return flux, flux * rel_err


def test_a_cosmic_ray_on_one_star_in_one_frame_is_found_and_white_noise_is_not():
    flux, err = _field()
    flux[57, 4] *= 1.05   # 10 sigma, the one hit
    flux[120, 9] *= 1.04  # 8 sigma
    hit = single_frame_excess(flux, err)
    assert hit[57, 4] and hit[120, 9]
    assert hit.sum() == 2  # 6000 white points at 5 sigma: no false alarm


def test_steps_cloud_and_transit_are_not_excesses():
    flux, err = _field(seed=2)
    flux[80:100, 3] *= 0.7      # an eclipse: the frame after egress is level with those after it
    flux[150, :] *= 0.5         # a cloud dims every star in one frame
    flux[20, :] *= 1.3          # and a brighter frame (transparency) lifts every star
    t = np.arange(200)
    flux[:, 5] *= 1 - 0.02 * ((t > 60) & (t < 120))  # a 2 % box transit
    flux[40:, 6] *= 1.2         # a brightening that stays
    assert not single_frame_excess(flux, err).any()


def test_too_small_errors_are_scaled_by_the_measured_spread():
    flux, err = _field(seed=3, rel_err=0.01)
    assert single_frame_excess(flux, err / 3).sum() <= 1  # 3x underestimated errors: no flood of flags


def test_missing_points_and_few_frames():
    flux, err = _field(n_frames=5, n_stars=2)
    assert not single_frame_excess(flux, err).any()
    flux, err = _field(seed=4)
    flux[::7, 2] = np.nan
    flux[33, 2] *= 1.08
    hit = single_frame_excess(flux, err)
    assert hit[33, 2] and not hit[np.isnan(flux)].any()


def test_light_curve_flags_the_target_and_drops_the_comparison_point():
    flux, err = _field(n_frames=120, n_stars=8, seed=5)
    flux[30, 0] *= 1.06   # the target
    flux[70, 3] *= 1.20   # a comparison: must not lift the ensemble (every target point would dip)
    rows = [{"frame_id": f"f{i:03d}", "bjd_tdb": 2460000.5 + i / 1440, "source_id": s, "aperture": "r4",
             "flux": flux[i, s], "flux_err": err[i, s], "flag": 0}
            for i in range(flux.shape[0]) for s in range(flux.shape[1])]
    lc, _ = differential_light_curve(pd.DataFrame(rows), 0, "r4", comparisons=[1, 2, 3, 4, 5, 6, 7])
    assert lc["flag"].iloc[30] & FLAG_EXCESS and np.isfinite(lc["rel_flux"].iloc[30])
    assert ((lc["flag"] & FLAG_EXCESS) > 0).sum() == 1
    others = lc["rel_flux"].drop(lc.index[[30, 70]])
    assert abs(lc["rel_flux"].iloc[70] - np.median(others)) < 4 * 0.005  # no 1/7 x 20 % dip
