"""Differential light curves on synthetic photometry tables whose truth we set exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ccdflow.lightcurve import (
    FLAG_ENSEMBLE,
    FLAG_TARGET,
    ccd_equation_sigma,
    differential_light_curve,
    ensemble_weights,
    plot_light_curve,
    point_to_point_scatter,
    select_comparisons,
)

N_FRAMES = 120
T0 = 2460828.65  # BJD_TDB of the first frame
CADENCE = 70.0 / 86400.0  # days
TRANSIT_MID, TRANSIT_DUR, DEPTH = T0 + 60 * CADENCE, 40 * CADENCE, 0.015
TARGET, VARIABLE = 7, 12  # source ids
VAR_AMP, VAR_PERIOD = 0.03, 0.05  # relative semi-amplitude, days
SKY_E, NPIX, READ_NOISE = 400.0, 80.0, 10.0


def in_transit(bjd):
    return np.abs(bjd - TRANSIT_MID) < TRANSIT_DUR / 2


def make_table(seed=20250602, n_stars=30, apertures=None, n_frames=N_FRAMES):
    """Long photometry table: 30 stars of 1e4-1e6 e-, photon + sky + read noise,
    a common transparency variation of several per cent, a 1.5 % box transit
    on TARGET and a 3 % sinusoid on VARIABLE.

    ``apertures`` maps an aperture name to a noise factor: that aperture's
    noise (drawn and reported in flux_err) is factor x the CCD-equation sigma."""
    rng = np.random.default_rng(seed)
    apertures = apertures or {"r5": 1.0}
    bjd = T0 + CADENCE * np.arange(n_frames)
    airmass = 1.1 + 0.4 * ((bjd - bjd.mean()) / np.ptp(bjd)) ** 2
    # extinction + slow cirrus + frame-to-frame jitter, common to every star
    transparency = 10 ** (-0.4 * 0.12 * airmass) * (1 + 0.04 * np.sin(2 * np.pi * (bjd - T0) / 0.11))
    transparency *= 1 + 0.02 * rng.standard_normal(n_frames)
    base = np.geomspace(1e6, 1e4, n_stars)
    rng.shuffle(base)
    base[TARGET], base[VARIABLE] = 2.0e5, 3.0e5
    intrinsic = np.ones((n_frames, n_stars))
    intrinsic[in_transit(bjd), TARGET] -= DEPTH
    intrinsic[:, VARIABLE] *= 1 + VAR_AMP * np.sin(2 * np.pi * (bjd - T0) / VAR_PERIOD + 0.3)
    expected = base * intrinsic * transparency[:, None]
    rows = []
    for name, factor in apertures.items():
        sigma = expected * ccd_equation_sigma(expected, SKY_E, NPIX, READ_NOISE) * factor
        flux = expected + sigma * rng.standard_normal(expected.shape)
        for i in range(n_stars):
            rows.append(
                pd.DataFrame(
                    {
                        "frame_id": np.arange(n_frames),
                        "bjd_tdb": bjd,
                        "source_id": i,
                        "aperture": name,
                        "flux": flux[:, i],
                        "flux_err": sigma[:, i],
                        "flag": 0,
                        "airmass": airmass,
                        "fwhm": 2.5,
                        "bkg": SKY_E,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def table():
    return make_table()


def transit_depth(lc):
    """Depth from in- vs out-of-transit means (known mid-time and duration) and its 1 sigma."""
    good = lc[lc["flag"] == 0]
    inside = in_transit(good["bjd_tdb"].to_numpy())
    f_in, f_out = good["rel_flux"][inside], good["rel_flux"][~inside]
    depth = 1.0 - f_in.mean() / f_out.mean()
    sigma = np.hypot(f_in.std(ddof=1) / np.sqrt(f_in.size), f_out.std(ddof=1) / np.sqrt(f_out.size)) / f_out.mean()
    return depth, sigma


def test_variable_is_rejected_from_the_ensemble(table):
    comps = select_comparisons(table, TARGET, "r5")
    assert VARIABLE not in comps and TARGET not in comps
    assert 10 <= len(comps) <= 20
    lc, info = differential_light_curve(table, TARGET, "r5")
    assert [r["source_id"] for r in info["rejected_variables"]] == [VARIABLE]
    assert info["rejected_variables"][0]["excess"] > 5
    assert sum(info["weights"].values()) == pytest.approx(1.0)
    # only stars within 2.5 mag of the target (2e5 e-): 2e4 .. 2e6
    base = table[table["frame_id"] == 0].set_index("source_id")["flux"]
    ratio = base[comps] / base[TARGET]
    assert ratio.between(10**-1.1, 10**1.1).all()


def test_constant_stars_scatter_matches_propagated_errors(table):
    """Every constant star, taken as target: its scatter vs the error that
    propagates its own flux_err and the ensemble's. Pooled over 28 stars the
    ratio is known to ~1.3 %, so it must be within 1.10; one star alone (120
    points) only to ~6.5 %, so each is held to 1.10 + 3 x 6.5 %."""
    ratios = []
    for star in range(30):
        if star in (TARGET, VARIABLE):
            continue
        lc, _ = differential_light_curve(table, star, "r5")
        ratios.append(np.sqrt(np.mean(((lc["rel_flux"] - 1) / lc["rel_flux_err"]) ** 2)))
    ratios = np.array(ratios)
    pooled = np.sqrt(np.mean(ratios**2))
    assert 1 / 1.10 < pooled < 1.10, pooled
    assert np.all(ratios < 1.10 + 3 * 0.065) and np.all(ratios > 0.75), ratios


def test_transit_depth_recovered(table):
    lc, _ = differential_light_curve(table, TARGET, "r5")
    depth, sigma = transit_depth(lc)
    assert sigma < 0.1 * DEPTH
    # This fixed realisation (seed 20250602, not chosen) lands at -1.8 sigma;
    # the calibration of that sigma is what the next test checks.
    assert abs(depth - DEPTH) < 3 * sigma, (depth, sigma)


def test_transit_depth_error_bar_is_calibrated():
    """Over 30 independent nights the truth lies within 1 sigma in ~68 % of
    them (binomial: 47-90 % at 2.7 sigma) and the mean depth is unbiased."""
    z = []
    for seed in range(30):
        lc, _ = differential_light_curve(make_table(seed=seed), TARGET, "r5")
        depth, sigma = transit_depth(lc)
        z.append((depth - DEPTH) / sigma)
    z = np.array(z)
    assert 0.47 <= np.mean(np.abs(z) < 1) <= 0.90, z
    assert abs(z.mean()) < 3 / np.sqrt(z.size), z.mean()
    assert np.all(np.abs(z) < 4.5)


def test_variable_amplitude_recovered(table):
    lc, _ = differential_light_curve(table, VARIABLE, "r5")
    phase = 2 * np.pi * (lc["bjd_tdb"] - T0) / VAR_PERIOD
    design = np.column_stack([np.sin(phase), np.cos(phase), np.ones(len(lc))]) / lc["rel_flux_err"].to_numpy()[:, None]
    coef, *_ = np.linalg.lstsq(design, lc["rel_flux"] / lc["rel_flux_err"], rcond=None)
    amplitude = np.hypot(coef[0], coef[1]) / coef[2]
    assert amplitude == pytest.approx(VAR_AMP, rel=0.05)


def test_common_extra_noise_does_not_reject_bright_stars():
    """Scintillation-like noise (0.3 %, independent per star, absent from
    flux_err) makes bright stars scatter well above their errors; they must not
    be thrown out as variables, while the real variable still is."""
    tab = make_table(seed=5)
    rng = np.random.default_rng(1)
    tab["flux"] *= 1 + 0.003 * rng.standard_normal(len(tab))
    _, info = differential_light_curve(tab, TARGET, "r5")
    assert [r["source_id"] for r in info["rejected_variables"]] == [VARIABLE]


def test_ensemble_weights_follow_inverse_variance():
    rng = np.random.default_rng(3)
    sigmas = np.array([0.002, 0.003, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.004, 0.004])
    n = 400
    transparency = 1 + 0.05 * rng.standard_normal(n)
    flux = 1e5 * transparency[:, None] * (1 + sigmas * rng.standard_normal((n, sigmas.size)))
    flux[:, -1] *= 1 + 0.03 * np.sin(np.arange(n) / 20)  # a variable
    err = 1e5 * transparency[:, None] * sigmas
    w = ensemble_weights(flux, err)
    assert w.sum() == pytest.approx(1.0)
    # the variable (rms 2.1 %) is down-weighted by its scatter below every constant star
    assert w[-1] < w[:-1].min() and w[-1] < 0.02 * w[0]
    # Broeg's fixed point: w_i ~ 1 / (sigma_i^2 + noise of the ensemble of the others)
    wc, sc = w[:-1], sigmas[:-1]
    others = np.array([np.sum(np.delete(wc**2 * sc**2, i)) / np.sum(np.delete(wc, i)) ** 2 for i in range(wc.size)])
    expected = 1 / (sc**2 + others)
    np.testing.assert_allclose(wc / wc.sum(), expected / expected.sum(), rtol=0.15)
    assert w[0] > w[1] > w[2] > w[3] > w[4] > w[5] > w[6] > w[7]
    w_missing = ensemble_weights(np.where(rng.random(flux.shape) < 0.05, np.nan, flux), err)
    np.testing.assert_allclose(w_missing, w, rtol=0.25, atol=1e-3)
    # a star never measured gets no weight instead of poisoning the others
    w_dead = ensemble_weights(np.column_stack([flux, np.full(n, np.nan)]), np.column_stack([err, np.ones(n)]))
    assert w_dead[-1] == 0 and w_dead[:-1] == pytest.approx(w)


def test_best_aperture_has_least_injected_noise():
    tab = make_table(seed=11, apertures={"r3": 1.6, "r5": 1.0, "r8": 1.3})
    lc, info = differential_light_curve(tab, TARGET)
    assert info["aperture"] == "r5"
    scatter = info["scatter_by_aperture"]
    assert set(scatter) == {"r3", "r5", "r8"}
    assert scatter["r5"] < scatter["r8"] < scatter["r3"]
    # the point-to-point scatter ignores the transit: it matches the error bars
    assert scatter["r5"] == pytest.approx(np.median(lc["rel_flux_err"]), rel=0.2)
    assert point_to_point_scatter(np.r_[np.ones(50), 0.9 * np.ones(50)]) == 0
    # a score function (the workflow's red-noise-aware one) overrules the scatter
    picked, info = differential_light_curve(tab, TARGET, score=lambda lc, info: -np.nanmax(lc["rel_flux_err"]))
    assert info["aperture"] == "r3" and set(info["score_by_aperture"]) == {"r3", "r5", "r8"}


def test_flagged_target_points_are_not_used(table):
    reference, _ = differential_light_curve(table, TARGET, "r5")
    tab = table.copy()
    bad = (tab["source_id"] == TARGET) & tab["frame_id"].between(10, 14)
    tab.loc[bad, "flag"] = 4
    tab.loc[bad, "flux"] *= 0.3  # garbage that must not leak anywhere
    tab = tab[~((tab["source_id"] == TARGET) & (tab["frame_id"] == 20))]  # target missing
    lc, info = differential_light_curve(tab, TARGET, "r5")
    assert len(lc) == N_FRAMES and info["n_good"] == N_FRAMES - 6
    marked = lc.index[(lc["flag"] & FLAG_TARGET) > 0]
    assert list(marked) == [10, 11, 12, 13, 14, 20]
    assert lc.loc[marked, "rel_flux"].isna().all()
    good = lc["flag"] == 0
    np.testing.assert_allclose(lc.loc[good, "rel_flux"], reference.loc[good, "rel_flux"], rtol=2e-3)


def test_missing_and_flagged_comparisons_are_handled(table):
    reference, info = differential_light_curve(table, TARGET, "r5")
    comps = info["comparisons"]
    tab = table.copy()
    gone = tab["source_id"].isin(comps[:4]) & tab["frame_id"].between(30, 35)
    tab = tab[~gone].copy()
    tab.loc[tab["source_id"].isin(comps[4:6]) & tab["frame_id"].between(50, 52), "flag"] = 2
    tab.loc[tab["source_id"].isin(comps) & (tab["frame_id"] == 90), "flag"] = 1  # ensemble gone
    tab.loc[tab["source_id"].isin(comps[:-1]) & (tab["frame_id"] == 91), "flag"] = 1  # one faint star left
    lc, _ = differential_light_curve(tab, TARGET, "r5", comparisons=comps)
    ok = lc.index.isin(list(range(30, 36)) + [50, 51, 52])
    assert (lc.loc[ok, "flag"] == 0).all() and np.isfinite(lc.loc[ok, "rel_flux"]).all()
    # the ensemble is normalised star by star, so dropping some stars costs noise, not a jump
    diff = (lc.loc[ok, "rel_flux"] - reference.loc[ok, "rel_flux"]) / reference.loc[ok, "rel_flux_err"]
    assert np.all(np.abs(diff) < 3)
    assert lc.loc[90, "flag"] == FLAG_TARGET | FLAG_ENSEMBLE and np.isnan(lc.loc[90, "rel_flux"])
    assert lc.loc[91, "flag"] == FLAG_ENSEMBLE and np.isfinite(lc.loc[91, "rel_flux"])
    # a star present in only 80 % of the frames is not a candidate
    sparse = comps[0]
    tab2 = table[~((table["source_id"] == sparse) & (table["frame_id"] % 5 == 0))]
    assert sparse not in select_comparisons(tab2, TARGET, "r5")
    assert comps[1] not in select_comparisons(table, TARGET, "r5", exclude_ids=[comps[1]])


def test_bootstrap_error_column(table):
    lc, _ = differential_light_curve(table, TARGET, "r5", bootstrap=40, rng=2)
    ratio = np.median(lc["rel_flux_err_boot"] / lc["rel_flux_err"])
    assert 0.8 < ratio < 1.25
    again, _ = differential_light_curve(table, TARGET, "r5", bootstrap=40, rng=2)
    np.testing.assert_array_equal(lc["rel_flux_err_boot"], again["rel_flux_err_boot"])


def test_output_columns_and_frame_data(table):
    lc, info = differential_light_curve(table, TARGET, "r5")
    assert list(lc.columns) == ["bjd_tdb", "rel_flux", "rel_flux_err", "airmass", "fwhm", "bkg", "x", "y", "flag"]
    assert lc["bjd_tdb"].is_monotonic_increasing
    assert np.nanmedian(lc["rel_flux"]) == pytest.approx(1.0)
    assert (lc["fwhm"] == 2.5).all() and lc["airmass"].between(1.1, 1.5).all()
    with pytest.raises(KeyError):
        differential_light_curve(table, 999, "r5")
    with pytest.raises(KeyError):
        differential_light_curve(table, TARGET, "r5", comparisons=[1, 999])
    # frame conditions are optional
    bare, _ = differential_light_curve(table.drop(columns=["airmass", "fwhm", "bkg"]), TARGET, "r5")
    assert bare[["airmass", "fwhm", "bkg"]].isna().all().all()
    np.testing.assert_allclose(bare["rel_flux"], lc["rel_flux"])


def test_plot_writes_png(table, tmp_path):
    lc, _ = differential_light_curve(table, TARGET, "r5")
    path = tmp_path / "lc.png"
    plot_light_curve(lc, path, "synthetic transit")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_ccd_equation():
    assert ccd_equation_sigma(1e4, 0, 0, 0) == pytest.approx(0.01)
    # 1e4 e- star, 100 pixels of 50 e- sky, 10 e- read noise, 2 e- dark
    expected = np.sqrt(1e4 + 100 * (50 + 2 + 100)) / 1e4
    assert ccd_equation_sigma(1e4, 50, 100, 10, 2) == pytest.approx(expected)
    # sky estimated from 400 pixels inflates the background term by 1 + 100/400
    expected_nsky = np.sqrt(1e4 + 100 * 1.25 * 150) / 1e4
    assert ccd_equation_sigma(1e4, 50, 100, 10, n_sky=400) == pytest.approx(expected_nsky)
    np.testing.assert_allclose(ccd_equation_sigma(np.array([1e4, 1e6]), 0, 0, 0), [0.01, 0.001])


def test_light_curve_plot_survives_nan_times_and_fluxes(tmp_path):
    """A frame with no BJD (no target coordinates) or no flux must not crash the plot."""
    from ccdflow.lightcurve import plot_light_curve

    lc = pd.DataFrame({"bjd_tdb": [2460828.70, np.nan, 2460828.72, 2460828.73],
                       "rel_flux": [1.0, 1.01, np.nan, 0.99], "rel_flux_err": [0.01] * 4, "flag": [0, 0, 0, 0]})
    plot_light_curve(lc, tmp_path / "lc.png", "nan")
    plot_light_curve(lc.assign(bjd_tdb=np.nan), tmp_path / "none.png", "all nan")
    assert (tmp_path / "lc.png").stat().st_size > 1000 and (tmp_path / "none.png").exists()


def test_seeing_alone_never_flags_a_frame_as_cloudy():
    """Moffat stars (beta 2.5) whose FWHM grows 1.6x through a clear night: a fixed
    3 px aperture keeps 30 % less of their light at the end, which it would take for
    cloud; transparency is measured in the FWHM-scaled aperture, so only the one
    frame through real cloud (40 % of the light) is flagged, in every aperture."""
    from ccdflow.lightcurve import FLAG_TRANSPARENCY, field_transparency, transparency_aperture

    def kept(radius, fwhm, beta=2.5):  # fraction of a Moffat star's light within radius
        alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
        return 1 - (1 + (radius / alpha) ** 2) ** (1 - beta)

    rng = np.random.default_rng(5)
    n_frames, n_stars = 80, 25
    fwhm = np.linspace(2.5, 4.0, n_frames)
    cloud = 50
    light = np.where(np.arange(n_frames) == cloud, 0.4, 1.0)
    base = np.geomspace(5e5, 2e4, n_stars)
    rows = []
    for name, radius in (("r3.0px", np.full(n_frames, 3.0)), ("r2.0fwhm", 2.0 * fwhm)):
        expected = base * (light * kept(radius, fwhm))[:, None]
        sigma = np.sqrt(expected + 400.0 * np.pi * radius[:, None] ** 2)
        flux = expected + sigma * rng.standard_normal(expected.shape)
        for i in range(n_stars):
            rows.append(pd.DataFrame({"frame_id": np.arange(n_frames), "bjd_tdb": T0 + CADENCE * np.arange(n_frames),
                                      "source_id": i, "aperture": name, "flux": flux[:, i], "flux_err": sigma[:, i],
                                      "flag": 0, "airmass": 1.2, "fwhm": fwhm, "bkg": 400.0}))
    table = pd.concat(rows, ignore_index=True)
    assert transparency_aperture(["r3.0px", "r8.0px", "r1.5fwhm", "r2.0fwhm"]) == "r2.0fwhm"
    assert transparency_aperture(["r3.0px", "r8.0px"]) == "r8.0px"
    fixed = field_transparency(table, "r3.0px")
    assert fixed["cloudy"].sum() > 5  # what a fixed aperture would call cloud: the bad seeing
    conditions = field_transparency(table)
    assert list(np.flatnonzero(conditions["cloudy"])) == [cloud]
    for aperture in ("r3.0px", "r2.0fwhm"):
        lc, _ = differential_light_curve(table, 3, aperture)
        assert list(np.flatnonzero(lc["flag"].to_numpy() & FLAG_TRANSPARENCY)) == [cloud], aperture


def test_bright_stars_saturated_in_the_sharp_frames_do_not_make_them_cloudy():
    """A clear night with extinction whose seeing varies: the four brightest stars
    saturate in the sharp half of the frames and lose a third of their light there.
    They carry most of the field's flux, so a flux-weighted ratio called those clear
    frames cloudy; the median over the brighter half of the stars does not, follows
    the extinction, and still finds the one frame through real cloud."""
    from ccdflow.lightcurve import MIN_TRANSPARENCY, transparency

    rng = np.random.default_rng(16)
    n_frames, n_stars = 100, 30
    airmass = np.linspace(1.1, 1.8, n_frames)
    sharp = rng.random(n_frames) < 0.5
    cloud = 70
    light = 10 ** (-0.4 * 0.15 * airmass) * np.where(np.arange(n_frames) == cloud, 0.5, 1.0)
    base = np.geomspace(3e6, 1e4, n_stars)
    expected = base * light[:, None]
    expected[:, :4] *= np.where(sharp, 0.65, 1.0)[:, None]  # clipped at full well
    flux = expected + np.sqrt(expected + 2e3) * rng.standard_normal(expected.shape)
    flux[rng.random(flux.shape) < 0.03] = np.nan  # the odd star lost off a frame
    value = transparency(flux, airmass)
    assert list(np.flatnonzero(value < MIN_TRANSPARENCY)) == [cloud]
    clear = np.arange(n_frames) != cloud
    assert np.all(np.abs(value[clear] - 1) < 0.03), value[clear].min()


def test_check_star_curves_score_an_aperture_by_its_constant_stars():
    """Two apertures with the same white noise; in one every star drifts slowly on its own
    (a sky or flat error that follows the star across the chip): the comparison stars' own
    light curves (each against the others) see it, and the workflow's score picks the other
    aperture, without looking at the target's residuals; point-to-point scatter cannot tell."""
    from ccdflow.lcfit import aperture_score

    tab = make_table(seed=5, apertures={"drift": 1.0, "white": 1.0})
    rng = np.random.default_rng(6)
    drifting = tab["aperture"] == "drift"
    for source in tab["source_id"].unique():
        rows = drifting & (tab["source_id"] == source)
        walk = np.cumsum(rng.normal(0, 0.0015, rows.sum()))
        tab.loc[rows, "flux"] *= 1 + np.convolve(walk - walk.mean(), np.ones(9) / 9, mode="same")
    seen = {}

    def score(lc, info):
        seen[info["aperture"]] = info["check_curves"]
        return aperture_score(lc, info, None, {})

    lc, info = differential_light_curve(tab, TARGET, score=score, checks=6)
    assert info["aperture"] == "white", info["score_by_aperture"]
    assert info["score_by_aperture"]["drift"] > 1.5 * info["score_by_aperture"]["white"]
    scatter = info["scatter_by_aperture"]
    assert abs(scatter["drift"] / scatter["white"] - 1) < 0.15, scatter
    assert "check_curves" not in info and len(seen["white"]) == 6
    for rel, err in seen["white"]:  # a constant star against the others: flat, its error bars honest
        good = np.isfinite(rel)
        assert abs(np.median(rel[good]) - 1) < 1e-3
        assert 0.7 < np.std(rel[good]) / np.median(err[good]) < 1.3
