"""Light-curve fits in the workflow (issue 12 point 4): transit spec from the config,
apertures scored by red noise, fit products."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ccdflow.lcfit import aperture_score, fit_target, transit_spec, write_fit

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


def test_aperture_score_prefers_white_noise_over_red_of_the_same_point_scatter():
    """The failure of choosing by point-to-point scatter: an aperture whose noise drifts
    scores worse than one with white noise, though their point-to-point scatter is alike."""
    white, red = _light_curve(2), _light_curve(2, red=0.0009)
    p2p = [np.std(np.diff(lc["rel_flux"])) / np.sqrt(2) for lc in (white, red)]
    assert abs(p2p[1] / p2p[0] - 1) < 0.15
    assert aperture_score(red, _spec(), {}) > 1.2 * aperture_score(white, _spec(), {})
