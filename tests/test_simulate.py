"""Tests for ccdflow.simulate: the raw-night simulator must match its own truth."""

import dataclasses
import hashlib
import json
import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from scipy import ndimage

from ccdflow import simulate
from ccdflow.simsky import SKIES, sky_options
from ccdflow.simulate import (
    DAMAGE_KINDS,
    ISOLATION_PX,
    SPOIL_KINDS,
    NightSpec,
    render_stars,
    simulate_night,
    star_positions,
    truth_calibrated,
)

REQUIRED_KEYS = ("IMAGETYP", "OBJECT", "EXPTIME", "FILTER", "DATE-OBS", "GAIN", "RDNOISE",
                 "SATURATE", "BIASSEC", "TRIMSEC", "CCDSUM", "XBINNING", "YBINNING", "DETECTOR",
                 "INSTRUME", "TELESCOP", "RA", "DEC", "SITELAT", "SITELONG", "SITEELEV")


def _section(text):
    """FITS '[x1:x2,y1:y2]' (1-based inclusive) -> numpy (row slice, col slice)."""
    x1, x2, y1, y2 = map(int, re.fullmatch(r"\[(\d+):(\d+),(\d+):(\d+)\]", text).groups())
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def _table(path):
    """Read a truth ECSV keeping '' strings as '' (astropy masks them by default)."""
    return Table.read(path, fill_values=[])


def _row_corrected(path):
    """Frame as float minus the per-row overscan median (removes bias level + drift)."""
    data = fits.getdata(path).astype(float)
    rows, cols = _section(fits.getheader(path)["BIASSEC"])
    return data - np.median(data[rows, cols], axis=1)[:, None]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A tiny night with every kind of damaged file and spoiled frame."""
    spec = dataclasses.replace(NightSpec.tiny(), damaged=DAMAGE_KINDS, spoiled=SPOIL_KINDS)
    out = tmp_path_factory.mktemp("tiny_night")
    truth = simulate_night(out, spec)
    return out, spec, truth


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The tiny preset exactly as it is."""
    out = tmp_path_factory.mktemp("tiny_plain")
    truth = simulate_night(out, NightSpec.tiny())
    return out, NightSpec.tiny(), truth


def _sky_night(tmp_path, *skies, base="tiny", **overrides):
    """Simulate ``base`` with the named SKIES and overrides; return (outdir, spec, truth)."""
    spec = NightSpec.from_dict(overrides, base=base, skies=skies)
    return tmp_path, spec, simulate_night(tmp_path, spec)


def _science(out):
    frames = _table(out / "truth" / "frames.ecsv")
    return frames[(frames["imagetyp"] == "OBJECT") & (frames["damaged"] == "")]


def _aperture_flux(out, spec, row, x, y, radius):
    """Sky-subtracted aperture sum (e-) at reference position (x, y) in science frame ``row``.

    The frame (one amplifier) is reduced with the truth: row-by-row overscan,
    bias structure, gain, dark and flat; the sky is the median of an annulus.
    """
    path = out / "raw" / row["filename"]
    with fits.open(out / "truth" / "truth.fits") as truth:
        bias, flat = truth["BIAS"].data.astype(float), truth[f"FLAT_{spec.science_filter}"].data
        dark = truth["DARK_RATE"].data * row["exptime"]
    bsec, tsec = _section(fits.getheader(path)["BIASSEC"]), _section(fits.getheader(path)["TRIMSEC"])
    bias -= np.median(bias[bsec], axis=1)[:, None]
    image = ((_row_corrected(path) - bias)[tsec] * spec.gain - dark) / flat
    (px, py), = star_positions(spec.nx, spec.ny, [x], [y], row["dx"], row["dy"], row["rotation_deg"])
    yy, xx = np.mgrid[0:spec.ny, 0:spec.nx]
    r = np.hypot(xx - px, yy - py)
    annulus = (r > radius + 3) & (r < radius + 10)
    return float((image[r <= radius] - np.median(image[annulus])).sum())


# SHA1 of tiny-preset raw frames measured before the hostile-sky options existed:
# every option at its default must leave the pixels and headers bit-identical.
TINY_SHA1 = {
    "bias_0001.fits": "dba73f3bcedab100523a72a3a8c3db30d03d6b55",
    "dark_010s_0001.fits": "127aaf610581d7c605750f84b6edf7f7c820c7cc",
    "flat_V_0002.fits": "4fa69982739222137e864044c9e3de391d741d0d",
    "sci_R_0001.fits": "ea4616d426d9d1b3426b91d0a77a08b25bbffcfd",
    "sci_R_0005.fits": "71c23c998b31f52720ea106ac64de25cd80485de",
}


def test_tiny_preset_frames_unchanged(plain):
    out, spec, truth = plain
    for name, sha1 in TINY_SHA1.items():
        assert hashlib.sha1((out / "raw" / name).read_bytes()).hexdigest() == sha1, name
    # the new truth is there, at its neutral defaults
    stars = _table(out / "truth" / "stars.ecsv")
    assert np.all(stars["pair_id"] == 0) and np.all((stars["colour"] >= 0.3) & (stars["colour"] <= 1.5))
    assert stars["colour"][0] == spec.host_colour
    assert truth["extinction"]["grey_mag_per_airmass"] == 0 and truth["close_pairs"] == []
    assert truth["adc"]["ceiling_adu"] == 60000 and truth["transit"]["shape"] == "trapezoid"
    sci = _science(out)
    assert np.all(sci["host_transit_factor"] <= 1) and sci["host_transit_factor"].min() < 0.995
    # the default pointing is a rising field: the airmass falls through the series
    assert sci["airmass"][0] - sci["airmass"][-1] > 0.03


def test_deterministic_by_seed(tmp_path):
    spec = dataclasses.replace(NightSpec.tiny(), n_science=3)
    simulate_night(tmp_path / "a", spec)
    simulate_night(tmp_path / "b", spec)
    simulate_night(tmp_path / "c", dataclasses.replace(spec, seed=spec.seed + 1))
    name = "raw/sci_R_0002.fits"
    same = (tmp_path / "a" / name).read_bytes()
    assert same == (tmp_path / "b" / name).read_bytes()
    assert same != (tmp_path / "c" / name).read_bytes()


def test_optional_frames_do_not_change_others(night, plain):
    out, spec, _ = night
    assert dataclasses.replace(spec, damaged=(), spoiled=()) == plain[1]
    for name in ("sci_R_0002.fits", "flat_V_0002.fits", "bias_0001.fits"):
        assert (plain[0] / "raw" / name).read_bytes() == (out / "raw" / name).read_bytes()


def test_read_noise_from_bias_pair(night):
    out, spec, truth = night
    a, b = (fits.getdata(out / "raw" / f"bias_000{i}.fits").astype(float) for i in (1, 2))
    rows, cols = _section(truth["geometry"]["TRIMSEC"])
    diff = (a - b)[rows, cols]
    diff -= np.median(diff, axis=1)[:, None]       # the row drift differs from frame to frame
    assert diff.size > 5000
    measured = diff.std() / np.sqrt(2) * spec.gain
    assert measured == pytest.approx(spec.read_noise, rel=0.03)


def test_overscan_holds_no_light(night):
    out, spec, truth = night
    bias_truth = fits.getdata(out / "truth" / "truth.fits", "BIAS")
    for name in ("flat_R_0001.fits", "flat_R_0002.fits"):   # saturated and good flat
        data = fits.getdata(out / "raw" / name).astype(float)
        hdr = fits.getheader(out / "raw" / name)
        bsec, tsec = _section(hdr["BIASSEC"]), _section(hdr["TRIMSEC"])
        over = np.median(data[bsec])
        assert abs(over - np.median(bias_truth[bsec])) < spec.overscan_drift_amp + 1.0
        assert np.median(data[tsec]) - over > 0.3 * spec.flat_level_e / spec.gain
        # column by column, so light leaking into a few edge columns is caught too
        excess = np.median(data - bias_truth, axis=0)
        dark_cols = np.r_[0:spec.prescan, bsec[1].start:bsec[1].stop]
        assert np.all(np.abs(excess[dark_cols]) < spec.overscan_drift_amp + 1.0)


def test_dark_signal_scales_with_exptime(tmp_path):
    # the default 0.02 e-/s is far below the read noise; a warm chip makes the test sharp
    spec = dataclasses.replace(NightSpec.tiny(), dark_rate=5.0, n_science=3, n_bias=4)
    simulate_night(tmp_path, spec)
    raw = tmp_path / "raw"
    master = np.mean([_row_corrected(raw / f"bias_000{i}.fits") for i in range(1, 5)], axis=0)
    tsec = _section(fits.getheader(raw / "dark_010s_0001.fits")["TRIMSEC"])
    true_rate = np.median(fits.getdata(tmp_path / "truth" / "truth.fits", "DARK_RATE"))
    signal = {}
    for t in spec.dark_exptimes:
        frames = sorted(raw.glob(f"dark_{int(t):03d}s_*.fits"))
        e = [(_row_corrected(f) - master)[tsec] * spec.gain for f in frames]
        signal[t] = np.median(e)
        assert signal[t] / t == pytest.approx(true_rate, rel=0.05)
    t1, t2 = spec.dark_exptimes
    assert signal[t2] / signal[t1] == pytest.approx(t2 / t1, rel=0.03)


def test_star_fluxes_match_catalogue(tmp_path):
    spec = dataclasses.replace(NightSpec.tiny(), nx=256, ny=256, n_stars=25, n_science=3,
                               n_saturated_stars=1)
    truth = simulate_night(tmp_path, spec)
    stars = _table(tmp_path / "truth" / "stars.ecsv")
    frames = _table(tmp_path / "truth" / "frames.ecsv")
    cosmics = _table(tmp_path / "truth" / "cosmics.ecsv")
    fr = frames[frames["filename"] == "sci_R_0001.fits"][0]   # reference frame: no shift
    assert fr["dx"] == 0 and fr["dy"] == 0 and fr["rotation_deg"] == 0
    flat = fits.getdata(tmp_path / "truth" / "truth.fits", f"FLAT_{spec.science_filter}")
    dark = fits.getdata(tmp_path / "truth" / "truth.fits", "DARK_RATE") * fr["exptime"]
    hdr = fits.getheader(tmp_path / "raw" / fr["filename"])
    adu = _row_corrected(tmp_path / "raw" / fr["filename"])
    bias = fits.getdata(tmp_path / "truth" / "truth.fits", "BIAS").astype(float)
    bsec, tsec = _section(hdr["BIASSEC"]), _section(hdr["TRIMSEC"])
    bias = bias - np.median(bias[bsec], axis=1)[:, None]   # structure relative to the overscan
    e_raw = (adu - bias)[tsec] * spec.gain
    sky = spec.sky_e_per_s * fr["exptime"] * fr["transmission"]
    beta, fwhm = spec.moffat_beta, fr["fwhm"]
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    r_ap = 4 * fwhm
    frac_in = 1 - (1 + (r_ap / alpha) ** 2) ** (1 - beta)
    sigma_os = 1.2533 * spec.read_noise / np.sqrt(spec.overscan)   # e-, error of a row overscan median
    yy, xx = np.mgrid[0:spec.ny, 0:spec.nx]
    cr_here = cosmics[cosmics["filename"] == fr["filename"]]
    t_mid = fr["mjd_mid"]
    checked = 0
    for s in stars:
        if s["is_saturated"] or s["flux_e"] < 5e3:
            continue
        x, y = s["x"], s["y"]
        if min(x, y) < r_ap + 2 or x > spec.nx - r_ap - 3 or y > spec.ny - r_ap - 3:
            continue
        if abs(x - spec.bad_column) < r_ap + 2:
            continue
        others = stars[stars["id"] != s["id"]]
        d = np.hypot(others["x"] - x, others["y"] - y)
        leak = others["flux_e"] * (1 + (np.clip(d - r_ap, 0, None) / alpha) ** 2) ** (1 - beta)
        sat_cols = others["x"][others["is_saturated"]]
        if leak.sum() > 250 or np.any(np.abs(sat_cols - x) < r_ap + 5):
            continue
        ap = np.hypot(xx - x, yy - y) <= r_ap
        if np.any(ap[cr_here["y"], cr_here["x"]]):
            continue
        measured = ((e_raw - dark) / flat - sky)[ap].sum()
        expected = s["flux_e"] * fr["transmission"] * frac_in
        if s["role"] == "variable":
            v = truth["variable"]
            expected *= 1 + v["amplitude"] * np.sin(
                2 * np.pi * (t_mid - v["t0_mjd"]) * 86400 / v["period_s"] + v["phase"])
        elif s["role"] == "transit":
            tr = truth["transit"]
            dt = abs(t_mid - tr["t_mid_mjd"]) * 86400
            depth = tr["depth"] * np.clip((tr["duration_s"] / 2 - dt) / tr["ingress_s"], 0, 1)
            expected *= 1 - depth
        counts = np.clip(e_raw[ap], 0, None) / flat[ap] ** 2
        rows_in = ap.sum(axis=1)
        var = counts.sum() + (spec.read_noise ** 2 / flat[ap] ** 2).sum() \
            + (rows_in ** 2).sum() * sigma_os ** 2
        assert abs(measured - expected) < 3 * np.sqrt(var), (s["id"], measured, expected)
        checked += 1
    assert checked >= 3


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_damaged_files_are_damaged(night):
    out, spec, truth = night
    raw = out / "raw"
    assert (raw / "damaged_zero_length.fits").stat().st_size == 0
    with pytest.raises(Exception):
        with fits.open(raw / "damaged_not_fits.fits") as hdul:
            hdul[0].data
    truncated = raw / "damaged_truncated.fits"
    try:
        data = fits.getdata(truncated)
    except Exception:
        pass
    else:
        assert data.size < spec.ny * (spec.prescan + spec.nx + spec.overscan)
    assert "EXPTIME" not in fits.getheader(raw / "damaged_missing_exptime.fits")
    assert "EXPTIME" in fits.getheader(raw / "sci_R_0001.fits")
    assert fits.getdata(raw / "damaged_wrong_shape.fits").shape != tuple(truth["geometry"]["full_shape"])
    assert sorted(d["kind"] for d in truth["damaged"]) == sorted(DAMAGE_KINDS)


def test_spoiled_frames(night):
    out, spec, truth = night
    frames = _table(out / "truth" / "frames.ecsv")
    lost = frames[frames["spoiled"] == "pointing_lost"][0]
    cloud = frames[frames["spoiled"] == "cloud"][0]
    assert np.hypot(lost["dx"], lost["dy"]) > 200 and abs(lost["rotation_deg"]) > 1
    assert cloud["transmission"] == pytest.approx(0.03)
    tsec = _section(truth["geometry"]["TRIMSEC"])
    sky = {n: np.median(_row_corrected(out / "raw" / n)[tsec])
           for n in (cloud["filename"], "sci_R_0001.fits")}
    assert sky[cloud["filename"]] < 0.1 * sky["sci_R_0001.fits"]


def test_bad_column_saturation_and_bleeding(night):
    out, spec, truth = night
    data = fits.getdata(out / "raw" / "sci_R_0001.fits").astype(float)
    hdr = fits.getheader(out / "raw" / "sci_R_0001.fits")
    col = spec.prescan + spec.bad_column
    bias = fits.getdata(out / "truth" / "truth.fits", "BIAS")
    sky_adu = spec.sky_e_per_s * spec.science_exptime / spec.gain
    assert np.median(data[:, col] - bias[:, col]) < 0.2 * sky_adu
    assert np.median(data[:, col + 2] - bias[:, col + 2]) > 0.7 * sky_adu
    badpix = fits.getdata(out / "truth" / "truth.fits", "BADPIX")
    assert badpix[:, spec.bad_column].all() and badpix.sum() == spec.ny
    stars = _table(out / "truth" / "stars.ecsv")
    saturated = stars[stars["is_saturated"]]
    assert len(saturated) == spec.n_saturated_stars
    frames = _table(out / "truth" / "frames.ecsv")
    fwhm = frames["fwhm"][frames["filename"] == "sci_R_0001.fits"][0]
    beta = spec.moffat_beta
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    sat_e = (hdr["SATURATE"] - spec.bias_level) * spec.gain
    for s in saturated:
        ix, iy = int(round(s["x"])) + spec.prescan, int(round(s["y"]))
        assert data[iy, ix] == hdr["SATURATE"]
        # without bleeding only the Moffat core above saturation would be flat-topped
        core = s["flux_e"] * (beta - 1) / (np.pi * alpha ** 2)
        r_sat = alpha * np.sqrt((core / sat_e) ** (1 / beta) - 1)
        column = data[:, ix] == hdr["SATURATE"]
        lo, hi = iy, iy
        while lo > 0 and column[lo - 1]:
            lo -= 1
        while hi < spec.ny - 1 and column[hi + 1]:
            hi += 1
        assert hi - lo + 1 > 2 * r_sat + 5, "charge should bleed along the column"
    assert data.max() <= hdr["SATURATE"]


def test_headers_and_sections(night):
    out, spec, truth = night
    frames = _table(out / "truth" / "frames.ecsv")
    readable = frames[(frames["damaged"] == "") | (frames["damaged"] == "wrong_shape")]
    for row in readable:
        hdr = fits.getheader(out / "raw" / row["filename"])
        for key in REQUIRED_KEYS:
            assert key in hdr, (row["filename"], key)
        assert hdr["BITPIX"] == 16 and hdr["BZERO"] == 32768
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", hdr["DATE-OBS"])
        assert hdr["DATE-OBS"] == row["date_obs"]
        assert hdr["IMAGETYP"] == row["imagetyp"]
        assert hdr["RA"] == "10:00:00.00" and hdr["DEC"] == "+30:00:00.0"
        if hdr["IMAGETYP"] == "OBJECT":
            assert 1.0 <= hdr["AIRMASS"] < 5 and hdr["OBJECT"] == spec.target_name
        if row["damaged"]:
            continue
        shape = (hdr["NAXIS2"], hdr["NAXIS1"])
        assert list(shape) == truth["geometry"]["full_shape"]
        brows, bcols = _section(hdr["BIASSEC"])
        trows, tcols = _section(hdr["TRIMSEC"])
        assert (bcols.start, bcols.stop) == (spec.prescan + spec.nx, shape[1])
        assert (tcols.start, tcols.stop) == (spec.prescan, spec.prescan + spec.nx)
        assert brows.stop == trows.stop == shape[0]


def test_truth_products(night):
    out, spec, truth = night
    assert json.loads((out / "truth" / "truth.json").read_text(encoding="utf-8")) == truth
    frames = _table(out / "truth" / "frames.ecsv")
    raw_names = sorted(p.name for p in (out / "raw").iterdir())
    assert sorted(frames["filename"]) == raw_names
    assert "bias extra 'ü'.fits" in raw_names
    assert truth["counts"] == {"BIAS": spec.n_bias + 1,
                               "DARK": len(spec.dark_exptimes) * spec.n_dark_per_exptime,
                               "FLAT": len(spec.flat_filters) * spec.n_flat_per_filter,
                               "OBJECT": spec.n_science}
    with fits.open(out / "truth" / "truth.fits") as hdul:
        for f in spec.flat_filters:
            assert np.median(hdul[f"FLAT_{f}"].data) == pytest.approx(1.0, abs=1e-3)
        assert hdul["BIAS"].data.shape == tuple(truth["geometry"]["full_shape"])
        assert hdul["DARK_RATE"].data.shape == (spec.ny, spec.nx)
    stars = _table(out / "truth" / "stars.ecsv")
    assert len(stars) == spec.n_stars + spec.n_saturated_stars
    assert truth["transit"]["host_id"] in stars["id"][stars["role"] == "transit"]
    # cosmic-ray pixels listed in the truth really carry extra charge
    cosmics = _table(out / "truth" / "cosmics.ecsv")
    hits = cosmics[cosmics["filename"] == "sci_R_0001.fits"]
    assert len(hits) > 0
    data = _row_corrected(out / "raw" / "sci_R_0001.fits")[:, spec.prescan:spec.prescan + spec.nx]
    sky = np.median(data)
    assert np.median(data[hits["y"], hits["x"]] - sky) > 500 / spec.gain


def test_from_dict():
    spec = NightSpec.from_dict({"nx": 200, "fwhm_range": [2.0, 3.0], "transit": {"depth": 0.02}},
                               base="tiny")
    assert spec.nx == 200 and spec.ny == 128 and spec.fwhm_range == (2.0, 3.0)
    assert spec.transit["depth"] == 0.02 and "duration_s" in spec.transit
    with pytest.raises(ValueError, match="bogus"):
        NightSpec.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="kaputt"):
        NightSpec.from_dict({"damaged": ["kaputt"]})
    assert NightSpec.demo() == NightSpec()
    assert NightSpec.benchmark().nx == 2048


# ----------------------------------------------------------------------------- hostile skies
def test_sky_options_and_validation():
    assert set(SKIES) >= {"undersampled", "twelve_bit", "science_only", "warm_no_darks", "saturated_host",
                          "close_pairs", "extinction", "drifting", "four_amps"}
    merged = sky_options("limb_darkened", "undersampled")
    assert merged["transit"] == {"shape": "limb_darkened"} and merged["fwhm_range"] == (1.3, 2.2)
    a = NightSpec.from_dict({"seed": 5, "transit": {"b": 0.5}}, base="tiny", skies=("limb_darkened",))
    b = NightSpec.from_dict({"seed": 5, "skies": "limb_darkened", "transit": {"b": 0.5}}, base="tiny")
    c = NightSpec.from_dict({**sky_options("limb_darkened"), "seed": 5}, base="tiny")
    assert a == b and a.transit["shape"] == "limb_darkened" and a.transit["b"] == 0.5
    assert c.transit == {**a.transit, "b": 0.3} and a.transit["duration_s"] == 300.0
    for sky in SKIES:   # every named sky is a valid night on its own
        NightSpec.from_dict({}, base="tiny", skies=(sky,))
    bad = [({"n_amps": 4, "prescan": 2}, "four amplifiers"), ({"n_amps": 4, "ny": 129}, "even ny"),
           ({"n_amps": 3}, "n_amps"), ({"adc_bits": 7}, "adc_bits"),
           ({"adc_bits": 12}, "ceiling"), ({"n_flat_per_filter": 2}, "n_flat_per_filter"),
           ({"n_amps": 2, "overscan": 0}, "two amplifiers"),
           ({"airmass_range": (1.1, 9.0), "dec_deg": -40.0}, "never reached"),
           ({"transit": {"shape": "box"}}, "transit shape"), ({"n_amps": 2, "amp_table": [{"gain": 2.0}]}, "one entry"),
           ({"amp_table": [{"gian": 2.0}]}, "amp_table entry 1"),
           ({"adc_bits": 12, "saturation_adu": 4095, "gain": 0.5}, "saturates"),
           ({"adc_bits": 12, "saturation_adu": 4095, "bias_level": 4090.0}, "bias_level"),
           ({"transit": {"bogus": 1}}, "bogus"), ({"bogus_key": 1}, "bogus_key")]
    for override, message in bad:
        with pytest.raises(ValueError, match=message):
            NightSpec.from_dict(override, base="tiny")
    with pytest.raises(ValueError, match="unknown sky"):
        NightSpec.from_dict({}, base="tiny", skies=("cloudy_with_meatballs",))


def test_undersampled_stars_keep_their_flux(tmp_path):
    # pixel integrals of a 1.3 px Moffat star, brute force, against render_stars
    fwhm, beta, flux = 1.3, 3.0, 1e5
    alpha2 = (fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))) ** 2
    fine = (np.arange(200) + 0.5) / 200 - 0.5
    for x, y in ((40.0, 40.0), (40.37, 39.81), (40.5, 40.5)):
        image = render_stars(80, 80, np.array([x]), np.array([y]), np.array([flux]), fwhm, beta)
        assert image.sum() == pytest.approx(flux, rel=1e-9)     # the whole catalogue flux lands in the stamp
        ix, iy = round(x), round(y)
        for j, i in ((iy, ix), (iy + 1, ix), (iy, ix - 1), (iy + 1, ix + 1)):
            dy, dx = np.meshgrid(j + fine - y, i + fine - x, indexing="ij")
            exact = flux * (beta - 1) / (np.pi * alpha2) * np.mean((1 + (dx ** 2 + dy ** 2) / alpha2) ** -beta)
            assert image[j, i] == pytest.approx(exact, rel=1e-3, abs=1e-4 * flux), (x, y, j, i)
    out, spec, _ = _sky_night(tmp_path, "undersampled", n_science=3, n_stars=20)
    sci = _science(out)
    assert spec.fwhm_range == (1.3, 2.2)
    assert np.all((sci["fwhm"] >= 1.3) & (sci["fwhm"] <= 2.2)) and sci["fwhm"].min() < 2.0


def test_twelve_bit_converter(tmp_path):
    out, spec, truth = _sky_night(tmp_path, "twelve_bit", n_science=3)
    assert truth["adc"]["bits"] == 12 and truth["adc"]["ceiling_adu"] == 4095
    assert truth["adc"]["saturation_e"] < spec.full_well      # the converter clips before the well fills
    for path in (out / "raw").iterdir():
        data = fits.getdata(path)
        assert data.max() <= 4095 and fits.getheader(path)["SATURATE"] == 4095, path.name
    stars = _table(out / "truth" / "stars.ecsv")
    raw = fits.getdata(out / "raw" / "sci_R_0001.fits")[:, spec.prescan:spec.prescan + spec.nx]
    peak = {int(s["id"]): raw[round(s["y"]) - 1:round(s["y"]) + 2, round(s["x"]) - 1:round(s["x"]) + 2].max()
            for s in stars}
    saturated = stars["is_saturated"]
    assert saturated.sum() == spec.n_saturated_stars
    assert all(peak[int(i)] == 4095 for i in stars["id"][saturated])
    bright = stars[~saturated & (stars["flux_e"] > 1e4)]
    assert len(bright) >= 3 and all(peak[int(i)] < 4095 for i in bright["id"])
    assert (raw == 4095).mean() < 0.02
    # a good flat stays below the ceiling, the first (twilight-bright) one saturates
    assert np.median(fits.getdata(out / "raw" / "flat_R_0002.fits")) < 4000
    assert np.median(fits.getdata(out / "raw" / "flat_R_0001.fits")) == 4095


def test_science_only_night_without_overscan(tmp_path):
    out, spec, truth = _sky_night(tmp_path, "science_only", "no_overscan", n_science=3)
    names = sorted(p.name for p in (out / "raw").iterdir())
    assert names == ["sci_R_0001.fits", "sci_R_0002.fits", "sci_R_0003.fits"]
    assert truth["counts"] == {"BIAS": 0, "DARK": 0, "FLAT": 0, "OBJECT": 3}
    hdr = fits.getheader(out / "raw" / names[0])
    assert "BIASSEC" not in hdr and "BIASSEC1" not in hdr
    assert hdr["TRIMSEC"] == f"[1:{spec.nx},1:{spec.ny}]" and (hdr["NAXIS2"], hdr["NAXIS1"]) == (spec.ny, spec.nx)
    assert truth["geometry"]["BIASSEC"] is None
    cal = truth_calibrated(out, spec, names[0])      # no overscan: the truth bias is subtracted
    sky = spec.sky_e_per_s * spec.science_exptime
    assert np.median(cal["data"]) == pytest.approx(sky, rel=0.05)


def test_hot_pixels_of_a_warm_chip_without_darks(tmp_path):
    out, spec, truth = _sky_night(tmp_path, "warm_no_darks", n_science=3, n_stars=10)
    assert truth["counts"]["DARK"] == 0
    with fits.open(out / "truth" / "truth.fits") as hdul:
        rate, hot = hdul["DARK_RATE"].data, hdul["HOT"].data.astype(bool)
    assert np.median(rate) == pytest.approx(spec.dark_rate, rel=0.05)
    assert truth["hot_pixels"]["n"] == hot.sum() and 0.5 * spec.hot_pixel_fraction < hot.mean() < 2 * spec.hot_pixel_fraction
    stars = _table(out / "truth" / "stars.ecsv")
    cosmics = _table(out / "truth" / "cosmics.ecsv")
    yy, xx = np.mgrid[0:spec.ny, 0:spec.nx]
    usable = np.ones(hot.shape, bool)
    usable[:, spec.bad_column] = False
    for s in stars[stars["flux_e"] > 2000]:
        usable &= np.hypot(xx - s["x"], yy - s["y"]) > 3 * spec.fwhm_range[1]
        if s["is_saturated"]:
            usable[:, max(round(s["x"]) - 3, 0):round(s["x"]) + 4] = False   # bleed trail
    high = []
    for row in _science(out)[:2]:       # a hot pixel is high in every frame, a cosmic ray in one
        e = _row_corrected(out / "raw" / row["filename"])[:, spec.prescan:spec.prescan + spec.nx] * spec.gain
        noise = np.sqrt(spec.sky_e_per_s * row["exptime"] + np.median(rate) * row["exptime"] + spec.read_noise ** 2)
        flagged = e - ndimage.median_filter(e, size=5) > 10 * noise    # local background: star wings go
        hits = cosmics[cosmics["filename"] == row["filename"]]
        flagged[hits["y"], hits["x"]] = False
        high.append(flagged)
    found = high[0] & high[1] & usable
    assert hot[usable].sum() > 10
    assert (found & hot).sum() >= 0.95 * hot[usable].sum()     # hot pixels are seen ...
    assert (found & ~hot).sum() <= 0.05 * found.sum()           # ... and almost nothing else


def test_saturated_host_only_in_the_sharpest_frames(tmp_path):
    out, spec, truth = _sky_night(tmp_path, "saturated_host")
    sci = _science(out)
    host = _table(out / "truth" / "stars.ecsv")[0]
    assert host["role"] == "transit" and host["is_saturated"]
    order = np.argsort(sci["fwhm"])
    assert sci["host_saturated"][order[0]], "the best-seeing frame must saturate the host"
    assert not np.any(sci["host_saturated"][order[-3:]]), "the worst frames must not"
    assert sci["fwhm"][sci["host_saturated"]].max() < sci["fwhm"][~sci["host_saturated"]].max()
    assert np.corrcoef(sci["fwhm"], sci["host_peak_e"])[0, 1] < -0.8
    assert truth["host_saturated_files"] == list(sci["filename"][sci["host_saturated"]])
    for row in sci:      # the flag says what the raw frame shows at the host
        data = fits.getdata(out / "raw" / row["filename"])[:, spec.prescan:spec.prescan + spec.nx]
        (x, y), = star_positions(spec.nx, spec.ny, [host["x"]], [host["y"]], row["dx"], row["dy"],
                                 row["rotation_deg"])
        box = data[round(y) - 2:round(y) + 3, round(x) - 2:round(x) + 3]
        assert (box.max() >= spec.saturation_adu) == row["host_saturated"], row["filename"]


def test_close_pairs(tmp_path):
    out, spec, truth = _sky_night(tmp_path, "close_pairs", "host_pair")
    stars = _table(out / "truth" / "stars.ecsv")
    fwhm = np.mean(spec.fwhm_range)
    ids = sorted(set(stars["pair_id"]) - {0})
    assert len(ids) == spec.n_close_pairs + 1 and len(truth["close_pairs"]) == len(ids)
    assert len(stars) == spec.n_stars + spec.n_saturated_stars + 2 * spec.n_close_pairs + 1
    host, var = stars[0], stars[1]
    sky = spec.sky_e_per_s * spec.science_exptime + spec.read_noise ** 2
    for k in ids:
        a, b = stars[stars["pair_id"] == k]
        sep = np.hypot(a["x"] - b["x"], a["y"] - b["y"]) / fwhm
        assert 1.5 <= sep <= 3.0, (k, sep)
        assert 0.2 <= b["flux_e"] / a["flux_e"] <= 1.0
        f = a["flux_e"]
        assert f / np.sqrt(f + np.pi * (1.5 * fwhm) ** 2 * sky) > 50        # S/N of the primary per frame
        assert not a["is_saturated"]
        if host["id"] in (a["id"], b["id"]):
            continue
        for special in (host, var):
            assert min(np.hypot(m["x"] - special["x"], m["y"] - special["y"]) for m in (a, b)) > ISOLATION_PX
    assert host["pair_id"] == spec.n_close_pairs + 1 and var["pair_id"] == 0


def _noiseless_fluxes(spec, rows, radius_fwhm=3.0):
    """{(catalogue row, science index): aperture sum} on the simulator's noiseless science frames.

    The frames are the expected electrons (Poisson step replaced by its mean),
    minus dark and sky, divided by the flat.
    """
    class Expected:
        def poisson(self, lam):
            return np.asarray(lam, float)

    night = simulate._prepare(spec)
    yy, xx = np.mgrid[0:spec.ny, 0:spec.nx]
    out = {}
    for fr in (f for f in night.frames if f.sci >= 0):
        e, _ = simulate._science_electrons(night, fr, Expected())
        i, series = fr.sci, night.series
        sky = spec.sky_e_per_s * fr.exptime * series["transmission"][i]
        image = (e - night.dark_map * fr.exptime) / night.flats[fr.filter] - sky
        for row in rows:
            (x, y), = star_positions(spec.nx, spec.ny, [night.cat["x"][row]], [night.cat["y"][row]],
                                     series["dx"][i], series["dy"][i], series["rotation_deg"][i])
            out[row, i] = image[np.hypot(xx - x, yy - y) <= radius_fwhm * series["fwhm"][i]].sum()
    return out


def test_colour_extinction_changes_the_flux_ratio(tmp_path):
    # host (blue) and variable (red) as two isolated bright stars, nothing else varying
    out, spec, truth = _sky_night(tmp_path, "extinction", n_science=3, colour_extinction_mag=0.3,
                                  host_colour=0.3, n_cosmic_rays_per_frame=0, sky_e_per_s=2.0,
                                  transit={"depth": 0.0}, variable={"amplitude": 0.0})
    stars = _table(out / "truth" / "stars.ecsv")
    host, var = stars[0], stars[1]
    assert abs(host["colour"] - var["colour"]) > 0.5 and host["colour"] == 0.3
    sci = _science(out)
    first, last = sci[0], sci[-1]
    assert first["airmass"] == pytest.approx(1.1, abs=1e-6) and last["airmass"] == pytest.approx(2.0, abs=1e-6)
    cadence = (last["mjd_mid"] - first["mjd_mid"]) * 86400 / (len(sci) - 1)
    assert truth["pointing"]["cadence_s"] == pytest.approx(cadence, abs=1e-3) and cadence > 1000
    assert truth["extinction"]["colour_mag_per_airmass"] == 0.3
    d_airmass = last["airmass"] - first["airmass"]
    expected = 10 ** (-0.4 * spec.colour_extinction_mag * (host["colour"] - var["colour"]) * d_airmass)
    grey = 10 ** (-0.4 * (spec.extinction_mag + spec.colour_extinction_mag * host["colour"]) * d_airmass)
    assert abs(expected - 1) > 0.2
    # the noiseless frames follow the law exactly (grey extinction cancels in the ratio) ...
    model = _noiseless_fluxes(spec, (0, 1))
    n = len(sci) - 1
    assert truth["spec"]["cadence_s"] == pytest.approx(cadence)      # truth records the solved pointing
    assert (model[0, n] / model[1, n]) / (model[0, 0] / model[1, 0]) == pytest.approx(expected, rel=1e-3)
    assert model[0, n] / model[0, 0] == pytest.approx(grey * last["transmission"] / first["transmission"], rel=1e-3)
    # ... and so do the raw frames, within their noise (~1.5 % on this double ratio)
    flux = {(s["id"], row["filename"]): _aperture_flux(out, spec, row, s["x"], s["y"], 3 * row["fwhm"])
            for s in (host, var) for row in (first, last)}
    ratio = [flux[host["id"], row["filename"]] / flux[var["id"], row["filename"]] for row in (first, last)]
    assert ratio[1] / ratio[0] == pytest.approx(expected, rel=0.05)
    alone = flux[host["id"], last["filename"]] / flux[host["id"], first["filename"]]
    assert alone == pytest.approx(grey * last["transmission"] / first["transmission"], rel=0.03)


def test_seeing_and_pointing_drift(tmp_path, plain):
    out, spec, _ = _sky_night(tmp_path, "drifting")
    sci, ref = _science(out), _science(plain[0])
    i = np.arange(len(sci))
    expected = ref["fwhm"] * sci["airmass"] ** 0.6 * (1 + 0.3 * i / (spec.n_science - 1))
    assert np.allclose(sci["fwhm"], np.clip(expected, 1.0, None), rtol=1e-12)
    walk = np.column_stack([sci["dx"] - ref["dx"], sci["dy"] - ref["dy"]])
    assert np.all(walk[0] == 0) and np.all(walk[1:] != 0)
    steps = np.diff(walk, axis=0)
    assert 0.1 < steps.std() < 0.6        # 0.3 px rms per frame
    # the stars really moved with it: the host's centroid follows the truth position
    host = _table(out / "truth" / "stars.ecsv")[0]
    row = sci[-1]
    data = _row_corrected(out / "raw" / row["filename"])[:, spec.prescan:spec.prescan + spec.nx]
    (x, y), = star_positions(spec.nx, spec.ny, [host["x"]], [host["y"]], row["dx"], row["dy"], row["rotation_deg"])
    ix, iy = round(x), round(y)
    box = data[iy - 6:iy + 7, ix - 6:ix + 7]
    box = box - np.median(box)
    yy, xx = np.mgrid[iy - 6:iy + 7, ix - 6:ix + 7]
    assert (box * xx).sum() / box.sum() == pytest.approx(x, abs=0.15)
    assert (box * yy).sum() / box.sum() == pytest.approx(y, abs=0.15)


def test_four_amplifiers(tmp_path):
    out, spec, truth = _sky_night(tmp_path, "four_amps", n_science=3, n_stars=10)
    amps = truth["geometry"]["amplifiers"]
    assert len(amps) == 4 and [a["rows"] for a in amps] == [[0, 64], [0, 64], [64, 128], [64, 128]]
    hdr = fits.getheader(out / "raw" / "bias_0001.fits")
    assert hdr["NAMPS"] == 4
    bias_truth = fits.getdata(out / "truth" / "truth.fits", "BIAS")
    a, b = (fits.getdata(out / "raw" / f"bias_000{k}.fits").astype(float) for k in (1, 2))
    for n, amp in enumerate(amps, 1):
        assert hdr[f"DATASEC{n}"] == amp["data"] and hdr[f"BIASSEC{n}"] == amp["overscan"]
        assert hdr[f"GAIN{n}"] == pytest.approx(amp["gain"]) and hdr[f"RDNOISE{n}"] == pytest.approx(amp["read_noise"])
        over, data = _section(amp["overscan"]), _section(amp["data"])
        assert over[0] == data[0]                     # BIASSECn covers only this amplifier's rows
        level = np.median(a[over])
        assert level == pytest.approx(spec.bias_level + amp["bias_offset"], abs=2 * spec.bias_structure_amp + 2)
        assert level == pytest.approx(np.median(bias_truth[over]), abs=spec.overscan_drift_amp + 1)
        residual = a[over] - np.median(a[over], axis=1)[:, None]   # remove the row drift
        sigma_adu = amp["read_noise"] / amp["gain"]
        assert residual.std() == pytest.approx(sigma_adu, rel=0.12)
        diff = (a - b)[data]
        diff -= np.median(diff, axis=1)[:, None]
        assert diff.std() / np.sqrt(2) == pytest.approx(sigma_adu, rel=0.05)
    assert len({round(a["gain"], 3) for a in amps}) == 4 and len({a["bias_offset"] for a in amps}) == 4
    # truth_calibrated removes each quadrant's own overscan and gain: one sky level in e-
    cal = truth_calibrated(out, spec, "sci_R_0001.fits")
    flat = fits.getdata(out / "truth" / "truth.fits", f"FLAT_{spec.science_filter}")
    sky = [np.median((cal["data"] / flat)[_section(amp["data"])[0], _section(amp["data"])[1].start - spec.prescan:
                                          _section(amp["data"])[1].stop - spec.prescan]) for amp in amps]
    assert np.ptp(sky) < 0.02 * np.mean(sky)


def test_limb_darkened_transit(tmp_path):
    batman = pytest.importorskip("batman")
    out, spec, truth = _sky_night(tmp_path, "limb_darkened", transit={"depth": 0.04, "duration_s": 400.0},
                                  variable={"amplitude": 0.0}, n_cosmic_rays_per_frame=0, sky_e_per_s=2.0)
    tr = truth["transit"]
    assert tr["shape"] == "limb_darkened" and tr["rp"] == pytest.approx(0.2) and tr["depth"] == pytest.approx(0.04)
    assert tr["u"] == [0.4, 0.25] and tr["b"] == 0.3 and tr["period_d"] == 2.5
    params = batman.TransitParams()
    params.t0, params.per, params.rp, params.a, params.inc = 0.0, tr["period_d"], tr["rp"], tr["a_rs"], tr["inc_deg"]
    params.ecc, params.w, params.u, params.limb_dark = 0.0, 90.0, tr["u"], "quadratic"
    t = np.linspace(-400, 400, 16001)                          # s from mid-transit, 0.05 s steps
    lc = batman.TransitModel(params, t / 86400).light_curve(params)
    inside = t[lc < 1 - 1e-9]
    assert inside.max() - inside.min() == pytest.approx(400.0, abs=0.2)          # T14 as requested
    u1, u2 = tr["u"]
    mu = np.sqrt(1 - tr["b"] ** 2)
    limb = (1 - u1 * (1 - mu) - u2 * (1 - mu) ** 2) / (1 - u1 / 3 - u2 / 6)
    assert 1 - lc.min() == pytest.approx(tr["rp"] ** 2 * limb, rel=0.05)
    bottom = t[lc <= lc[np.argmin(np.abs(t - (200 - tr["ingress_s"])))] + 1e-12]
    assert bottom.max() == pytest.approx(200 - tr["ingress_s"], abs=0.5)        # ingress from the geometry
    # every science frame used this model, and the host's flux relative to the variable follows it
    sci = _science(out)
    model = batman.TransitModel(params, (sci["mjd_mid"] - tr["t_mid_mjd"]))
    assert np.allclose(sci["host_transit_factor"], model.light_curve(params), atol=1e-6)
    assert sci["host_transit_factor"].min() < 0.96
    stars = _table(out / "truth" / "stars.ecsv")
    ratio = np.array([_aperture_flux(out, spec, row, stars[0]["x"], stars[0]["y"], 3 * row["fwhm"])
                      / _aperture_flux(out, spec, row, stars[1]["x"], stars[1]["y"], 3 * row["fwhm"])
                      for row in sci])
    outside = sci["host_transit_factor"] == 1
    dip, measured = sci["host_transit_factor"] - 1, ratio / np.mean(ratio[outside]) - 1
    scale = (dip * measured).sum() / (dip ** 2).sum()       # measured dip / model dip
    assert scale == pytest.approx(1.0, abs=0.15)
    assert np.std(measured - dip) < 0.006
