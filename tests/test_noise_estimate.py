"""Gain and read noise measured from raw frames (ccdflow.noise_estimate).

Truth: the simulator's GAIN/RDNOISE (exact), synthetic Poisson frames (exact), and the
real nights in ../shared/data (skipped when absent), whose references are:

* ARCSAT: 1.33 e-/ADU and 16 e- (config/instruments/arcsat.yaml, measured from
  this night's flat and bias pairs, so a consistency check rather than independent).
* Lowell NASA42: the headers say AGAIN_01 = 4.95 e-/ADU, ARDNS_01 = 9.3 e-, but the
  frames do not bear that out: photon transfer gives 3.67 e-/ADU and 4.3 e-, as
  Massey & Neugent's Janesick-method measurement of this camera does (3.71-3.78
  e-/ADU, 4.27-4.35 e-; T. Dunham's full analysis 3.84 e-/ADU, 4.6 e-; "reasonably
  solid values are 3.8 e/ADU and 4.5 e-", www2.lowell.edu/users/massey/nasa42/).
  The tests check against 3.8 / 4.5 and that the header values are ruled out.

Measured sky-pair biases (science frames only; the module's notes point here):
simulator -2.0 % with bias frames, -2.4 % with the overscan alone (seed 42; means over
seeds 1-6: -0.7 % and -1.1 %, ranges -1.6..+0.2 % and -2.1..-0.3 %): star residuals the
mask misses add variance. Real frames read high instead: Lowell 4.01 e-/ADU, +5 % on
3.8 and +9 % on its own flats; ARCSAT 1.56 (20 frames) to 1.64 (all 80), +17-23 %,
where read noise is ~64 % of the sky variance, so the gain hangs on rn^2 and the bias
level. (Single-frame sky variance, the textbook variant, reads 21 % low on the
simulator: the flat's pixel structure adds 27 % to the variance; pairs cancel it.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from ccdflow.noise_estimate import NoiseEstimate, estimate_noise
from ccdflow.simulate import NightSpec, simulate_night

# One filter with ten twilight flats: the first is saturated, the last at 1 % level,
# and neighbours in level among the other eight pair up within 10 %.
SPEC = {"flat_filters": ["R"], "n_flat_per_filter": 10}


def _by_type(folder) -> dict[str, list[str]]:
    """Raw files under ``folder`` by IMAGETYP (upper case), sorted by name (= time here)."""
    out: dict[str, list[str]] = {}
    for path in sorted(Path(folder).rglob("*.fits*")):
        out.setdefault(str(fits.getheader(path).get("IMAGETYP", "")).upper(), []).append(str(path))
    return out


def _night(outdir, **overrides):
    truth = simulate_night(outdir, NightSpec.from_dict({**SPEC, **overrides}, base="tiny"))
    return _by_type(Path(outdir) / "raw"), truth


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return _night(tmp_path_factory.mktemp("noise_night"))


def _kw(truth, amp=None):
    g = truth["geometry"]
    data, overscan = (amp["data"], amp["overscan"]) if amp else (g["TRIMSEC"], g["BIASSEC"])
    return {"data_section": data, "overscan_section": overscan, "saturation": truth["saturate_adu"]}


def _assert_close(value, err, truth, frac, nsigma=3.0):
    assert abs(value - truth) <= nsigma * err, (value, err, truth)
    assert abs(value / truth - 1) <= frac, (value, truth)


def test_photon_transfer_recovers_the_simulated_gain_and_read_noise(night):
    files, truth = night
    est = estimate_noise(files["BIAS"], files["FLAT"], **_kw(truth))
    # measured: 1.514 +/- 0.021 e-/ADU (+0.9 %), 6.05 +/- 0.09 e- (+0.9 %)
    _assert_close(est.gain, est.gain_err, truth["gain"], 0.03)
    _assert_close(est.read_noise, est.read_noise_err, truth["read_noise_e"], 0.04)
    assert est.method.startswith("photon transfer: ") and "2 bias pairs" in est.method
    assert 0 < est.gain_err < 0.03 * est.gain and 0 < est.read_noise_err < 0.03 * est.read_noise
    assert est.notes == ()


def test_without_bias_frames_the_overscan_gives_the_read_noise(night):
    files, truth = night
    est = estimate_noise([], files["FLAT"], **_kw(truth))
    # the saturated flat's overscan is left out: 4 pairs of strips from the other 9
    assert "overscan of 8 frames" in est.method
    _assert_close(est.gain, est.gain_err, truth["gain"], 0.03)
    _assert_close(est.read_noise, est.read_noise_err, truth["read_noise_e"], 0.04)


def test_without_any_bias_level_the_gain_comes_from_the_slope(night):
    files, truth = night
    est = estimate_noise([], files["FLAT"], data_section=truth["geometry"]["TRIMSEC"],
                         saturation=truth["saturate_adu"])
    # measured 1.46 +/- 0.03 (-2.6 %); the slope is the loosest method (seed 3: -7 %, 2.5 sigma)
    _assert_close(est.gain, est.gain_err, truth["gain"], 0.08)
    assert np.isnan(est.read_noise) and np.isnan(est.read_noise_err)
    assert any("slope" in n for n in est.notes) and any("NaN" in n for n in est.notes)


def test_each_amplifier_is_measured_on_its_own(tmp_path):
    files, truth = _night(tmp_path, n_amps=2, nx=256)
    amps = truth["geometry"]["amplifiers"]
    assert amps[1]["gain"] / amps[0]["gain"] == pytest.approx(1.12)
    for amp in amps:
        est = estimate_noise(files["BIAS"], files["FLAT"], **_kw(truth, amp))
        _assert_close(est.gain, est.gain_err, amp["gain"], 0.03)
        _assert_close(est.read_noise, est.read_noise_err, amp["read_noise"], 0.04)


def test_science_pairs_recover_the_gain_within_error_and_tolerance(night):
    files, truth = night
    # Tolerance: 2 sigma + 2 %. Star residuals the source mask misses add variance, so
    # sky gains read low: -2.0 % here (-1.7 sigma); -0.7 % mean over six seeds.
    for bias in (files["BIAS"], []):   # bias level from the biases, or the overscan alone
        est = estimate_noise(bias, [], files["OBJECT"], **_kw(truth))
        assert est.method.startswith("science sky: 4 science-frame pairs")
        assert abs(est.gain / truth["gain"] - 1) <= 2 * est.gain_err / est.gain + 0.02, est.describe()
        _assert_close(est.read_noise, est.read_noise_err, truth["read_noise_e"], 0.05)
        assert any("sky-pair gain" in n for n in est.notes)


def test_flats_are_preferred_over_the_sky(night):
    files, truth = night
    est = estimate_noise(files["BIAS"], files["FLAT"], files["OBJECT"], **_kw(truth))
    assert est.method.startswith("photon transfer")


def test_one_sky_level_and_no_bias_level_cannot_give_a_gain(night):
    files, truth = night
    with pytest.raises(ValueError, match="bias frames or an overscan section"):
        estimate_noise([], [], files["OBJECT"], data_section=truth["geometry"]["TRIMSEC"],
                       saturation=truth["saturate_adu"])


# --- synthetic frames: exact Poisson statistics, nothing else -------------------------

def _write(path, adu, **header) -> str:
    fits.PrimaryHDU(np.clip(np.rint(adu), 0, 65535).astype(np.uint16),
                    fits.Header({"IMAGETYP": "FLAT", **header})).writeto(path)
    return str(path)


def _synthetic(tmp_path, levels_e, gain=2.0, rn_e=5.0, filters=None):
    """Bias pair + one flat per level: 4 % vignetting ramp x 2 % fixed PRNU, Poisson, read noise."""
    rng = np.random.default_rng(7)
    shape, bias = (200, 200), 500.0
    pattern = np.linspace(0.96, 1.0, shape[1])[None, :] * (1 + 0.02 * rng.standard_normal(shape))
    read = lambda: rng.normal(bias, rn_e / gain, shape)
    biases = [_write(tmp_path / f"b{i}.fits", read(), IMAGETYP="BIAS") for i in range(2)]
    flats = [_write(tmp_path / f"f{i}.fits", read() + rng.poisson(level * pattern) / gain,
                    FILTER=(filters or ["V"] * len(levels_e))[i]) for i, level in enumerate(levels_e)]
    return biases, flats


def test_pairs_cancel_the_flat_pattern_and_a_level_mismatch(tmp_path):
    # 2 % PRNU alone would add 2.5x the Poisson variance at 40000 e-: only the difference removes it
    biases, flats = _synthetic(tmp_path, [40000, 37000, 20000, 21500])
    est = estimate_noise(biases, flats)
    assert est.method == "photon transfer: 2 flat pairs, 1 bias pair"
    _assert_close(est.gain, est.gain_err, 2.0, 0.02)   # measured 2.020 +/- 0.013
    # rounding to whole ADU adds 1/12 ADU^2, real noise of the frames (+0.7 % on 2.5 ADU)
    _assert_close(est.read_noise, est.read_noise_err, 2.0 * np.hypot(2.5, np.sqrt(1 / 12)), 0.04)


def test_flats_of_other_filters_or_levels_do_not_pair(tmp_path):
    biases, flats = _synthetic(tmp_path, [30000, 30000, 10000], filters=["V", "R", "R"])
    with pytest.raises(ValueError, match="need two flats of one filter"):
        estimate_noise(biases, flats)


def test_a_section_outside_the_frame_is_named(tmp_path):
    biases, flats = _synthetic(tmp_path, [30000, 30000])
    with pytest.raises(ValueError, match=r"overscan section \[201:210,1:200\] lies outside"):
        estimate_noise(biases, flats, overscan_section="[201:210,1:200]")


def test_describe_reads_as_one_line():
    est = NoiseEstimate(1.33, 0.02, 16.0, 0.3, "photon transfer: 4 flat pairs, 2 bias pairs")
    assert est.describe() == ("gain 1.33 +/- 0.02 e-/ADU, read noise 16.0 +/- 0.3 e- "
                              "(photon transfer: 4 flat pairs, 2 bias pairs)")
    assert NoiseEstimate(3.669, 0.004, 4.3, 0.01, "m").describe().startswith("gain 3.669 +/- 0.004")


# --- real frames (../shared/data) -----------------------------------------------------

LOWELL_SECTIONS = {"data_section": "[18:1382,1:1370]", "overscan_section": "[1388:1432,1:1370]"}


@pytest.mark.realdata
def test_arcsat_photon_transfer_matches_the_profile(arcsat_raw):
    files = _by_type(arcsat_raw)
    est = estimate_noise(files["BIAS"], files["FLAT"])   # no overscan on this camera
    # measured 1.337 +/- 0.002 e-/ADU, 16.16 +/- 0.04 e- (2 flat pairs, 2 bias pairs), ~1 s.
    # 5 % / 10 %: what a flat-field or noise model can be off by before it shows.
    assert abs(est.gain / 1.33 - 1) < 0.05 and abs(est.read_noise / 16.0 - 1) < 0.10, est.describe()


@pytest.mark.realdata
@pytest.mark.slow  # 5 s: many full frames
def test_arcsat_sky_only_is_flagged_as_read_noise_dominated(arcsat_raw):
    files = _by_type(arcsat_raw)
    science = [p for p in files["LIGHT"] if "XO1" in Path(p).name][:20]   # 10 pairs, ~5 s
    est = estimate_noise(files["BIAS"], [], science)
    # measured 1.56 +/- 0.01 (+17 %; 1.64 from all 80 frames): read noise is ~64 % of a
    # ~135 ADU sky's variance, so a few per cent on rn^2 or on the bias level moves the gain
    # by twice that; 30 % allowed
    assert abs(est.gain / 1.33 - 1) < 0.30, est.describe()
    assert any("of the sky variance" in n for n in est.notes)


@pytest.mark.realdata
def test_lowell_photon_transfer_matches_the_published_measurement(lowell_raw):
    files = _by_type(lowell_raw)
    header = fits.getheader(files["BIAS"][0])
    assert (header["AGAIN_01"], header["ARDNS_01"]) == (4.95, 9.3)
    est = estimate_noise(files["BIAS"], files["SKYFLAT"], **LOWELL_SECTIONS)
    # measured 3.669 +/- 0.004 e-/ADU and 4.28 +/- 0.02 e- (3 flat pairs, 5 bias pairs), ~3 s.
    # Against 3.8 / 4.5 (module docstring): 5 % on the gain, 10 % on the read noise.
    assert abs(est.gain / 3.8 - 1) < 0.05 and abs(est.read_noise / 4.5 - 1) < 0.10, est.describe()
    # ... and the header's values are ruled out by far more than any error
    assert est.gain < 0.8 * header["AGAIN_01"] and est.read_noise < 0.6 * header["ARDNS_01"]
    # without the biases: read noise from the overscan (column 1432, bad, is clipped)
    alone = estimate_noise([], files["SKYFLAT"], **LOWELL_SECTIONS)
    assert "overscan" in alone.method and abs(alone.read_noise / est.read_noise - 1) < 0.05


@pytest.mark.realdata
@pytest.mark.slow  # 5 s: many full frames
def test_lowell_sky_only_within_its_wider_tolerance(lowell_raw):
    files = _by_type(lowell_raw)
    # the last 8 frames: after twilight, consecutive skies within 10 % (4 pairs), ~4 s
    est = estimate_noise(files["BIAS"], [], files["OBJECT"][-8:], **LOWELL_SECTIONS)
    # measured 4.01 e-/ADU, 4.67 e-: +5 % / +4 % on 3.8 / 4.5 (+9 % on the flats' 3.67);
    # 15 % allowed for sky-only
    assert est.method.startswith("science sky: 4 science-frame pairs")
    assert abs(est.gain / 3.8 - 1) < 0.15 and abs(est.read_noise / 4.5 - 1) < 0.15, est.describe()


def test_single_sky_frames_would_read_far_low(night):
    """Why the sky method differences frames: one frame's sky variance carries the flat's structure."""
    from ccdflow import noise_estimate as ne
    from ccdflow.sections import parse_section

    files, truth = night
    kw = _kw(truth)
    reader = ne._Reader(parse_section(kw["data_section"]), parse_section(kw["overscan_section"]), kw["saturation"])
    gains = []
    for path in files["OBJECT"]:
        tiles = ne._clip(ne._tiles(ne._mask_sources(reader.load(path), reader.tile).pix, reader.tile, reader.tile))
        variance = ne._var(tiles, reader.tile, reader.tile) - truth["read_noise_adu"] ** 2
        gains.append(np.nanmean(tiles, axis=1) / variance)
    single = float(np.nanmedian(np.concatenate(gains)))
    assert single < 0.85 * truth["gain"], single   # measured 1.18 e-/ADU for 1.5: -21 %
