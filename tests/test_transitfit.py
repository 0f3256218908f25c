"""Red-noise metrics, decorrelation and transit fits on synthetic light curves whose truth we set.

Each light curve: a batman transit (integrated over 60 s exposures) times a
baseline in airmass (crossing the meridian, so not a line in time) and FWHM,
plus white noise and optionally an AR(1) red component; ``x`` is pure noise.
"""

from __future__ import annotations

import json
import time

import batman
import numpy as np
import pandas as pd
import pytest

from ccdflow.rednoise import noise_score, rms_by_bin, time_averaged_beta
from ccdflow.transitfit import (
    FitResult,
    TransitSpec,
    _Problem,
    _Shape,
    _summary,
    decorrelation_vectors,
    fit_light_curve,
    plot_fit,
)

PERIOD, T_MID, RP, A_RS, INC = 3.0, 2460500.70, 0.1, 10.0, 88.0
CADENCE_S, N_POINTS, SIGMA = 60.0, 300, 2e-3
FIXED = TransitSpec(PERIOD, T_MID + 0.02, 0.1, 0.008, a_rs=A_RS, inc_deg=INC, exp_time_s=CADENCE_S)


def ar1(rng, n, tau_min, cadence_s=CADENCE_S):
    """Unit-variance AR(1) series with correlation time ``tau_min``."""
    phi = np.exp(-cadence_s / 60.0 / tau_min)
    e = rng.standard_normal(n + 200)
    out = np.zeros(n + 200)
    for i in range(1, out.size):
        out[i] = phi * out[i - 1] + np.sqrt(1 - phi**2) * e[i]
    return out[200:]


def truth_transit(t, exp_s=CADENCE_S, t0=T_MID, rp=RP, a=A_RS, inc=INC):
    p = batman.TransitParams()
    p.t0, p.per, p.rp, p.a, p.inc, p.ecc, p.w = t0, PERIOD, rp, a, inc, 0.0, 90.0
    p.u, p.limb_dark = [0.4, 0.25], "quadratic"
    return batman.TransitModel(p, t, supersample_factor=15, exp_time=exp_s / 86400).light_curve(p)


def make_lc(seed, *, red=0.0, tau_min=5.0, transit=True):
    rng = np.random.default_rng(seed)
    t = T_MID - 0.12 + np.arange(N_POINTS) * CADENCE_S / 86400
    airmass = 1.0 / (0.5 + 0.45 * np.cos(3 * np.pi * (t - T_MID - 0.02)))  # 1.05-1.6, minimum mid-night
    fwhm = 3.0 + 0.3 * np.sin(40 * (t - T_MID)) + 0.05 * rng.standard_normal(N_POINTS)
    baseline = 1.0 + 0.01 * (airmass - airmass.mean()) + 0.004 * (fwhm - 3.0)
    flux = (truth_transit(t) if transit else 1.0) * baseline + SIGMA * rng.standard_normal(N_POINTS)
    if red:
        flux += red * ar1(rng, N_POINTS, tau_min)
    return pd.DataFrame({"bjd_tdb": t, "rel_flux": flux, "rel_flux_err": np.full(N_POINTS, SIGMA),
                         "airmass": airmass, "fwhm": fwhm, "bkg": np.full(N_POINTS, 250.0),
                         "x": rng.standard_normal(N_POINTS), "flag": 0})


def fit(lc, spec=FIXED, vectors=None, **kw) -> FitResult:
    vectors = decorrelation_vectors(lc) if vectors is None else vectors
    return fit_light_curve(lc["bjd_tdb"], lc["rel_flux"], lc["rel_flux_err"], vectors, spec, **kw)


def rms(values):
    return float(np.sqrt(np.mean(np.square(values))))


# --------------------------------------------------------------------------- red-noise metrics
def test_rms_by_bin_white_noise_and_formula():
    rng = np.random.default_rng(1)
    t = np.arange(600) / 1440.0
    t = np.r_[t[:300], t[360:]]  # a one-hour gap: bins are made in time
    betas = []
    for _ in range(40):
        table = rms_by_bin(t, rng.standard_normal(t.size), [2, 5, 10, 20, 30, 60])
        betas.append(table["beta"].to_numpy())
    assert list(table.columns) == ["bin_minutes", "n_per_bin", "n_bins", "rms", "white_rms", "beta"]
    assert 0.85 <= np.mean(betas) <= 1.2
    assert table.loc[table["bin_minutes"] == 30, "n_bins"].item() == 18  # the gap's two empty bins skipped
    # equal bins: white_rms = sigma_1 / sqrt(N) sqrt((M - 1) / M), rms = std of the bin means
    r = rng.standard_normal(60)
    row = rms_by_bin(np.arange(60) / 1440.0, r, 10).iloc[0]
    assert row["white_rms"] == pytest.approx(np.std(r, ddof=1) / np.sqrt(10) * np.sqrt(5 / 6))
    assert row["rms"] == pytest.approx(np.std(r.reshape(6, 10).mean(1)))
    assert rms_by_bin(np.arange(60) / 1440.0, r, 30).empty  # 2 bins: left out


def test_beta_white_red_and_edge_cases():
    rng = np.random.default_rng(2)
    t = np.arange(N_POINTS) * CADENCE_S / 86400
    white = [time_averaged_beta(t, rng.standard_normal(t.size)) for _ in range(20)]
    red = [time_averaged_beta(t, rng.standard_normal(t.size) + 0.7 * ar1(rng, t.size, 10.0)) for _ in range(20)]
    assert all(b >= 1.0 for b in white) and np.median(white) < 1.2
    assert min(red) > 1.3
    assert time_averaged_beta(t[:20], rng.standard_normal(20)) == 1.0  # 20 minutes: nothing to bin
    r = rng.standard_normal(t.size)
    r[::7] = np.nan
    assert np.isfinite(time_averaged_beta(t, r))


def test_noise_score_ranks_red_noise_worse():
    rng = np.random.default_rng(3)
    t = np.arange(N_POINTS) * CADENCE_S / 86400
    white = 1.1e-3 * rng.standard_normal(t.size)
    red = 1e-3 * rng.standard_normal(t.size) + 0.5e-3 * ar1(rng, t.size, 10.0)  # smaller p2p, more red
    assert noise_score(t, red) > noise_score(t, white)
    spiky = white.copy()
    spiky[::50] += 0.05  # six outliers do not decide
    assert noise_score(t, spiky) < 1.3 * noise_score(t, white)


# --------------------------------------------------------------------------- decorrelation
def test_decorrelation_vectors():
    lc = make_lc(4)
    lc.loc[:10, "fwhm"] = np.nan
    lc["y"] = np.nan
    vectors = decorrelation_vectors(lc)
    assert set(vectors) == {"time", "airmass", "fwhm", "x"}  # bkg constant, y all-NaN: skipped
    for v in vectors.values():
        assert np.nanmean(v) == pytest.approx(0, abs=1e-12) and np.nanstd(v) == pytest.approx(1)
    assert np.isnan(vectors["fwhm"][:11]).all()
    assert "time2" in decorrelation_vectors(lc, time2=True)


def test_detrend_only_removes_airmass_trend():
    lc = make_lc(5, transit=False)
    result = fit(lc, None)
    assert "airmass" in result.terms and "fwhm" in result.terms
    assert result.residual_rms == pytest.approx(SIGMA, rel=0.1)
    assert result.beta < 1.2 and result.red_chi2 == pytest.approx(1.0, abs=0.2)
    assert np.allclose(result.transit_model[result.good], 1.0)
    assert "t0" not in result.params and result.errors["c_airmass"] > 0


# --------------------------------------------------------------------------- transit fits
def test_fit_recovers_transit_and_selects_terms():
    spurious, missed, outside = 0, 0, 0
    for seed in range(10):
        result = fit(make_lc(seed))
        p, e = result.params, result.errors
        outside += abs(p["t0"] - T_MID) > 3 * e["t0"] or abs(p["depth"] - RP**2) > 3 * e["depth"]
        missed += not {"airmass", "fwhm"} <= set(result.terms)
        spurious += "x" in result.terms
        assert result.free == ["t0", "rp"] and e["a_rs"] == 0.0
    assert outside <= 1 and missed == 0 and spurious <= 2


def test_model_average_over_term_sets():
    """Every subset of the terms fitted, weights summing to 1, the chosen terms the heaviest;
    averaged errors below the Buckland formula's (which counts the noise-made spread twice)."""
    lc = make_lc(3)
    vec = decorrelation_vectors(lc)
    vec = {k: vec[k] for k in ("airmass", "fwhm", "x")}
    chosen = fit(lc, vectors=vec)
    averaged = fit(lc, vectors=vec, average=True)
    table = averaged.averaged
    assert len(table) == 2 ** 3 and abs(sum(r["weight"] for r in table) - 1) < 1e-9
    assert set(table[0]["terms"]) == set(chosen.terms) == {"airmass", "fwhm"}
    assert averaged.terms == chosen.terms and np.array_equal(averaged.model, chosen.model, equal_nan=True)
    mean_t0 = sum(r["weight"] * r["t0"] for r in table)
    assert averaged.params["t0"] == pytest.approx(mean_t0, abs=1e-9)
    (own,) = [r for r in table if r["terms"] == chosen.terms]
    weight = np.array([r["weight"] for r in table])
    for name in ("t0", "depth"):
        assert own[name + "_err"] == pytest.approx(chosen.errors[name], rel=1e-9)
        value, sigma = (np.array([r[k] for r in table]) for k in (name, name + "_err"))
        buckland = np.sqrt(weight @ (sigma**2 + (value - weight @ value) ** 2))
        assert 0.5 * chosen.errors[name] < averaged.errors[name] < buckland
    assert abs(averaged.params["t0"] - T_MID) < 3 * averaged.errors["t0"]
    assert json.dumps(averaged.to_dict())  # serialisable, the table included


def test_a_term_set_response_to_the_data_gives_its_errors():
    """The linear response of each parameter to the (weighted) data, which the model average
    combines across term sets, reproduces the covariance errors, and a nudge of noise-free
    data moves the fitted mid-time and depth as it predicts (with noise the residuals'
    curvature term, left out of Gauss-Newton, moves a single realisation by ~20 %)."""
    lc = make_lc(5)
    terms = ["airmass", "fwhm"]
    vec = {k: v for k, v in decorrelation_vectors(lc).items() if k in terms}
    t, f, e = (lc[c].to_numpy(float) for c in ("bjd_tdb", "rel_flux", "rel_flux_err"))
    shape = _Shape(FIXED, t, FIXED.t0_guess)
    noisy = _Problem(t, f, e, vec, shape)
    trial = noisy.trial(terms, noisy.scan_starts(terms))
    summary = _summary(noisy, trial)
    for name in ("t0", "depth"):
        assert np.linalg.norm(summary["sensitivity"][name]) == pytest.approx(summary["errors"][name], rel=1e-6)
    clean = summary["model"]  # noise-free data: the fit's own model
    base = _summary(_Problem(t, clean, e, vec, shape), _Problem(t, clean, e, vec, shape).trial(terms, [trial.x]))
    nudge = np.random.default_rng(0).standard_normal(t.size) * 0.5 * e
    up, down = (_summary(p, p.trial(terms, [trial.x])) for p in
                (_Problem(t, clean + nudge, e, vec, shape), _Problem(t, clean - nudge, e, vec, shape)))
    for name in ("t0", "depth"):
        predicted = base["sensitivity"][name] @ (nudge / e)
        assert (up["params"][name] - down["params"][name]) / 2 == pytest.approx(predicted, rel=0.05)


def test_model_averaged_errors_are_honest_on_white_noise():
    """60 white-noise nights, collinear airmass and seeing terms, a spurious pointing term:
    the averaged errors give pulls of rms 0.8-1.2 (the Buckland formula, which counts the
    spread that noise alone makes twice, gave depth errors a tenth too large on real nights'
    vectors: benchmarks/study_model_average.py)."""
    t0_pulls, depth_pulls = [], []
    for seed in range(300, 360):
        lc = make_lc(seed)
        vec = {k: v for k, v in decorrelation_vectors(lc).items() if k in ("airmass", "fwhm", "x")}
        result = fit(lc, vectors=vec, average=True)
        t0_pulls.append((result.params["t0"] - T_MID) / result.errors["t0"])
        depth_pulls.append((result.params["depth"] - RP**2) / result.errors["depth"])
    for pulls in (t0_pulls, depth_pulls):
        assert 0.8 <= np.std(pulls, ddof=1) <= 1.2 and abs(np.mean(pulls)) < 0.35


def test_fit_free_geometry_from_wrong_guess():
    lc = make_lc(11)
    spec = TransitSpec(PERIOD, T_MID - 0.045, 0.08, 0.006, exp_time_s=CADENCE_S)  # ~40 % of T14 early
    result = fit(lc, spec)
    p, e = result.params, result.errors
    assert result.free == ["t0", "rp", "t14", "b"]
    assert abs(p["t0"] - T_MID) < 3 * e["t0"]
    assert abs(p["depth"] - RP**2) < 3 * e["depth"]
    t14_true = PERIOD / np.pi * np.arcsin(np.sqrt((1 + RP) ** 2 - (A_RS * np.cos(np.radians(INC))) ** 2) / A_RS)
    assert abs(p["t14_d"] - t14_true) < 3 * e["t14_d"]
    assert 0 <= p["b"] < 1 + p["rp"]


def test_long_exposures_are_integrated():
    t = T_MID - 0.12 + np.arange(60) * 300.0 / 86400  # 5-min exposures back to back, noiseless
    flux = truth_transit(t, 300.0)
    err = np.full(t.size, SIGMA)
    results = {}
    for exp_s in (300.0, 0.0):
        spec = TransitSpec(PERIOD, T_MID + 0.01, 0.1, 0.008, a_rs=A_RS, inc_deg=INC, exp_time_s=exp_s)
        results[exp_s] = fit_light_curve(t, flux, err, {}, spec)
    assert results[300.0].params["rp"] == pytest.approx(RP, abs=1e-4)
    assert results[300.0].params["t0"] == pytest.approx(T_MID, abs=1e-5)
    assert results[300.0].chi2 < 1e-3 < results[0.0].chi2  # a point model cannot take the smeared contacts


def _pulls(red, seeds):
    out = []
    for seed in seeds:
        lc = make_lc(seed, red=red)
        vec = decorrelation_vectors(lc)
        result = fit(lc, vectors={k: vec[k] for k in ("airmass", "fwhm")}, criterion=None)
        p, e, w = result.params, result.errors, result.errors_white
        out.append([(p["t0"] - T_MID) / e["t0"], (p["depth"] - RP**2) / e["depth"],
                    (p["t0"] - T_MID) / w["t0"], (p["depth"] - RP**2) / w["depth"], result.beta])
    return np.array(out)


def test_pull_study_white_noise():
    start = time.perf_counter()
    pulls = _pulls(0.0, range(40))
    per_fit = (time.perf_counter() - start) / 40
    for column in (0, 1, 2, 3):  # reported and white-noise errors of t0 and depth
        assert 0.7 <= rms(pulls[:, column]) <= 1.3
        assert abs(pulls[:, column].mean()) < 0.4
    assert np.median(pulls[:, 4]) < 1.1
    assert per_fit < 0.5  # ~0.05 s here; loose for slow machines


def test_pull_study_red_noise_inflation_helps():
    pulls = _pulls(SIGMA / 2, range(100, 160))  # AR(1), 5 min, half the white noise; 60 seeds: the
    # rms of 30-40 red-noise pulls is itself too noisy (one 2.5 sigma fit moves it by 0.2)
    assert np.median(pulls[:, 4]) > 1.15
    for inflated, white in ((0, 2), (1, 3)):
        assert rms(pulls[:, inflated]) < 1.5
        assert rms(pulls[:, white]) > 1.15 * rms(pulls[:, inflated])


# --------------------------------------------------------------------------- outputs
def test_mask_nan_and_serialisation(tmp_path):
    lc = make_lc(13)
    lc.loc[[5, 6, 7], "rel_flux"] = np.nan
    lc.loc[20:29, "flag"] = 4
    result = fit(lc, good=lc["flag"] == 0)
    assert result.n == N_POINTS - 13
    assert np.isnan(result.model[[5, 20, 29]]).all() and np.isfinite(result.model[30])
    summary = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert summary["terms"] == result.terms and summary["n"] == result.n
    table = result.to_table()
    assert list(table["name"][:3]) == ["t0", "rp", "depth"] and table.attrs["beta"] == result.beta
    assert len(result.points()) == N_POINTS
    plot = tmp_path / "fit.png"
    plot_fit(lc["bjd_tdb"], lc["rel_flux"], result, plot, "synthetic")
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 600 and height > 800
    assert [p.name for p in tmp_path.iterdir()] == ["fit.png"]  # no temporary left


def test_bad_criterion():
    with pytest.raises(ValueError, match="criterion"):
        fit(make_lc(14), criterion="chi2")
