"""Tests for ccdflow.simulate: the raw-night simulator must match its own truth."""

import dataclasses
import json
import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from ccdflow.simulate import DAMAGE_KINDS, SPOIL_KINDS, NightSpec, simulate_night

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


def test_deterministic_by_seed(tmp_path):
    spec = dataclasses.replace(NightSpec.tiny(), n_science=3)
    simulate_night(tmp_path / "a", spec)
    simulate_night(tmp_path / "b", spec)
    simulate_night(tmp_path / "c", dataclasses.replace(spec, seed=spec.seed + 1))
    name = "raw/sci_R_0002.fits"
    same = (tmp_path / "a" / name).read_bytes()
    assert same == (tmp_path / "b" / name).read_bytes()
    assert same != (tmp_path / "c" / name).read_bytes()


def test_optional_frames_do_not_change_others(tmp_path, night):
    out, spec, _ = night
    plain = dataclasses.replace(spec, damaged=(), spoiled=())
    simulate_night(tmp_path, plain)
    for name in ("sci_R_0002.fits", "flat_V_0002.fits", "bias_0001.fits"):
        assert (tmp_path / "raw" / name).read_bytes() == (out / "raw" / name).read_bytes()


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
