"""Light-curve fits in the workflow (issue 12 point 4): transit spec from the config,
apertures scored by red noise, fit products."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ccdflow.lcfit import (
    aperture_score,
    check_star_score,
    fit_target,
    residual_score,
    transit_spec,
    write_fit,
)

PERIOD, T0, RP, A_RS, INC = 2.5, 2460000.70, 0.1, 8.0, 87.0


def _light_curve(seed, red=0.0, trend=0.004):
    """A transit (batman) times an airmass trend, white noise 2 ppt plus optional AR(1) red noise."""
    import batman

    rng = np.random.default_rng(seed)
    t = 2460000.60 + np.arange(200) * 90 / 86400
    p = batman.TransitParams()
    p.t0, p.per, p.rp, p.a, p.inc, p.ecc, p.w, p.u, p.limb_dark = T0, PERIOD, RP, A_RS, INC, 0, 90, [0.4, 0.25], "quadratic"
    transit = batman.TransitModel(p, t).light_curve(p)
    airmass = 1.1 + 2.0 * (t - t[0]) ** 2 / (t[-1] - t[0]) ** 2
    noise = rng.normal(0, 0.002, t.size)
    if red:
        r = np.zeros(t.size)
        for i in range(1, t.size):
            r[i] = 0.9 * r[i - 1] + rng.normal(0, red)
        noise += r
    flux = transit * (1 - trend * (airmass - 1.1)) + noise
    return pd.DataFrame({"frame_id": [f"f{i:03d}" for i in range(t.size)], "bjd_tdb": t, "rel_flux": flux,
                         "rel_flux_err": np.full(t.size, 0.002), "airmass": airmass,
                         "fwhm": 2 + rng.normal(0, 0.1, t.size), "bkg": 100 + rng.normal(0, 1, t.size),
                         "x": 50 + rng.normal(0, 0.2, t.size), "y": 60 + rng.normal(0, 0.2, t.size), "flag": 0})


def _spec():
    cfg = {"period_d": PERIOD, "t0_bjd": T0 - 10 * PERIOD + 0.002, "duration_h": 2.5, "a_rs": A_RS, "inc_deg": INC}
    return transit_spec(cfg, _light_curve(0)["bjd_tdb"], 60.0)


def test_transit_spec_takes_the_epoch_nearest_the_data():
    spec = _spec()
    assert abs(spec.t0_guess - (T0 + 0.002)) < 1e-9 and spec.exp_time_s == 60.0 and spec.a_rs == A_RS
    assert transit_spec(None, [1.0], 60.0) is None


def test_fit_recovers_mid_time_and_depth_and_picks_the_airmass_term(tmp_path):
    lc = _light_curve(1)
    result = fit_target(lc, _spec(), {})
    p, e = result.params, result.errors
    assert abs(p["t0"] - T0) < 3 * e["t0"] and abs(p["depth"] - RP ** 2) < 3 * e["depth"], (p, e)
    assert "airmass" in result.terms and "x" not in result.terms
    summary = write_fit(result, lc, tmp_path, "host", "test")
    assert json.loads((tmp_path / "host_fit.json").read_text())["params"]["t0"] == summary["params"]["t0"]
    assert (tmp_path / "host_fit.png").stat().st_size > 10_000 and (tmp_path / "host_fit.ecsv").exists()
    from astropy.table import Table

    from ccdflow.tables import FIT_POINTS

    points = Table.read(tmp_path / "host_fit.ecsv")
    FIT_POINTS.check(points, "host_fit.ecsv")
    assert str(points["bjd_tdb"].unit) == "d" and points["residual"].description == "rel_flux - model"


def test_residual_score_prefers_white_noise_over_red_of_the_same_point_scatter():
    """The failure of choosing by point-to-point scatter: an aperture whose noise drifts
    scores worse than one with white noise, though their point-to-point scatter is alike."""
    white, red = _light_curve(2), _light_curve(2, red=0.0009)
    p2p = [np.std(np.diff(lc["rel_flux"])) / np.sqrt(2) for lc in (white, red)]
    assert abs(p2p[1] / p2p[0] - 1) < 0.15
    assert residual_score(red, _spec(), {}) > 1.2 * residual_score(white, _spec(), {})
    # without check stars (fewer than three comparisons) a transit is scored by its residuals
    assert aperture_score(red, {}, _spec(), {}) == residual_score(red, _spec(), {})
    assert aperture_score(red, {}, None, {}) == np.inf


def _check_curves(seed, red=0.0, n=6):
    """Comparison stars' own differential light curves: white noise 2 ppt, optional AR(1) drift."""
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n):
        flux = 1 + rng.normal(0, 0.002, 200)
        if red:
            drift = np.zeros(200)
            for i in range(1, 200):
                drift[i] = 0.9 * drift[i - 1] + rng.normal(0, red)
            flux += drift
        curves.append((flux, np.full(200, 0.002)))
    return curves


def test_check_star_score_sees_red_noise_in_the_comparison_stars_not_the_target():
    """The same target light curve scores worse at an aperture whose constant stars drift,
    and the score follows the target's own error bars, not its residuals."""
    lc = _light_curve(3)
    white, red = check_star_score(_check_curves(4), lc, {}), check_star_score(_check_curves(4, red=0.0009), lc, {})
    assert 0.9 * 0.002 < white < 1.3 * 0.002, white  # white noise: the error bar itself
    assert red > 1.3 * white, (white, red)
    bigger_errors = lc.assign(rel_flux_err=2 * lc["rel_flux_err"])
    assert check_star_score(_check_curves(4), bigger_errors, {}) == 2 * white
    assert check_star_score([], lc, {}) == np.inf


def test_pointing_terms_see_the_wander_not_the_drift():
    """A pointing that drifts steadily through the night is a trend in time: the x/y
    vectors keep only the star's wander about a quadratic in time, so a steady drift
    never stands in for time against extinction's airmass curve, while flux that
    follows the frame-to-frame wander (pixel phase) is still decorrelated."""
    from ccdflow.transitfit import decorrelation_vectors

    lc = _light_curve(5)
    t = lc["bjd_tdb"].to_numpy()
    jitter = np.random.default_rng(6).normal(0, 0.3, t.size)
    lc["y"] = 60 - 3.0 * (t - t[0]) / np.ptp(t) + jitter
    vectors = decorrelation_vectors(lc)
    assert abs(np.corrcoef(vectors["y"], t)[0, 1]) < 1e-6 and abs(np.corrcoef(vectors["y"], t**2)[0, 1]) < 1e-6
    assert np.corrcoef(vectors["y"], jitter)[0, 1] > 0.95
    result = fit_target(lc, _spec(), {})
    assert "y" not in result.terms and abs(result.params["depth"] - RP**2) < 3 * result.errors["depth"]
    lc["rel_flux"] *= 1 + 0.01 * jitter  # 3 ppt per 0.3 px of wander: pixel phase
    assert "y" in fit_target(lc, _spec(), {}).terms
