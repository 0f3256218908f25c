"""Masters and calibrated frames against the simulator's truth, through the library.

The night is small (256x256) but has enough frames that chi-square tests mean
something: 8 biases, 2x5 darks, 10 flats per filter. Overscan levels use the
mean here because the expected value of a mean is exactly the mean of the
injected bias structure, which makes the truth exact; the median (the default)
is tested in test_overscan.py.
"""

import itertools
import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, VarianceUncertainty
from astropy.table import Table

from ccdflow import bitmask
from ccdflow.calibrate import CalibrationConfig, build_master, calibrate_frame, load_master, preprocess_frame
from ccdflow.calibselect import plan_masters
from ccdflow.inventory import RawSource, find_raw_files, take_inventory
from ccdflow.overscan import OverscanOptions
from ccdflow.simulate import NightSpec, render_stars, transit_factor, simulate_night, star_positions


@pytest.fixture(scope="module")
def night(tmp_path_factory, profiles):
    out = tmp_path_factory.mktemp("calnight")
    spec = NightSpec.from_dict({"nx": 256, "ny": 256, "n_bias": 8, "n_dark_per_exptime": 5,
                                "n_flat_per_filter": 10, "n_science": 3, "n_stars": 80,
                                "n_cosmic_rays_per_frame": 25, "bad_column": 200}, base="tiny")
    truth = simulate_night(out, spec)
    table = take_inventory(find_raw_files([RawSource(str(out / "raw"), "simulator")]),
                           {"simulator": profiles["simulator"]})
    cfg = CalibrationConfig(overscan=OverscanOptions(statistic="mean"))
    rows = {r["frame_id"]: r for r in table.to_dict("records")}
    proc = out / "proc"
    proc.mkdir()
    masters = {}
    flats = {}
    for kind in ("bias", "dark", "flat"):
        for plan in plan_masters(table)[kind].values():
            paths = []
            for fid in plan.frame_ids:
                preprocess_frame(rows[fid], cfg).write(proc / f"{fid}.fits")
                paths.append(str(proc / f"{fid}.fits"))
            product = build_master(kind, paths, [dict(rows[f], sha1="-") for f in plan.frame_ids], cfg,
                                   bias=masters.get("bias"), dark=masters.get("dark"), group=plan.group)
            path = out / f"master_{kind}_{rows[plan.frame_ids[0]]['filter']}.fits"
            product.write(path)
            if kind == "flat":
                flats[rows[plan.frame_ids[0]]["filter"]] = load_master(path)
            else:
                masters[kind] = load_master(path)
    return out, truth, table, cfg, masters, flats


def _truth_image(out, name):
    with fits.open(out / "truth" / "truth.fits") as hdul:
        return hdul[name].data.astype(np.float64)


def _normalised(product, expected, good):
    residual = (product.data - expected) / np.sqrt(product.variance)
    return residual[good]


def test_master_bias_matches_truth_within_its_noise(night):
    out, truth, _, _, masters, _ = night
    geometry = truth["geometry"]
    bias_adu = _truth_image(out, "BIAS")
    data = bias_adu[:, geometry["data_cols"][0] : geometry["data_cols"][1]]
    overscan = bias_adu[:, geometry["overscan_cols"][0] : geometry["overscan_cols"][1]]
    expected = (data - overscan.mean(axis=1)[:, None]) * truth["gain"]
    master = masters["bias"]
    residual = _normalised(master, expected, master.mask == 0)
    assert master.header["QCSTATUS"] == "PASS" and master.header["NCOMBINE"] == 9
    assert abs(residual.mean()) < 0.05
    assert abs(residual.std() - 1) < 0.05, residual.std()


def test_master_dark_rate_matches_truth_within_its_noise(night):
    out, truth, _, _, masters, _ = night
    rate = _truth_image(out, "DARK_RATE")
    master = masters["dark"]
    assert master.header["DARKMODE"] == "rate" and master.header["NCOMBINE"] == 10
    good = master.mask == 0
    residual = _normalised(master, rate, good)
    assert abs(residual.mean()) < 0.05
    assert abs(residual.std() - 1) < 0.05, residual.std()
    # hot pixels well above the master's noise are flagged HOT, quiet pixels almost never
    noise = np.sqrt(master.variance)
    flagged = (master.mask & bitmask.HOT) != 0
    clearly_hot = rate > np.median(rate) + 20 * noise
    quiet = rate < np.median(rate) + 2 * noise
    assert clearly_hot.sum() > 5 and flagged[clearly_hot].mean() > 0.95
    assert flagged[quiet].mean() < 1e-3


def test_master_flat_within_0p3_percent_rms(night):
    out, truth, _, _, _, flats = night
    for name, master in flats.items():
        true_flat = _truth_image(out, f"FLAT_{name}")
        good = master.mask == 0
        ratio = master.data[good] / true_flat[good]
        ratio /= np.median(ratio)
        assert np.std(ratio) < 0.003, (name, np.std(ratio))
        rejected = [master.header[k] for k in master.header if k.startswith("REJ")]
        assert len(rejected) == 2 and any("too bright" in r for r in rejected) and any("too faint" in r for r in rejected)
        # the dead column has a tiny response and is masked LOW_FLAT
        assert np.all(master.mask[:, truth["bad_column"]] & bitmask.LOW_FLAT)


def _science_model(out, truth, frame_row, nx, ny):
    """True sky + stars (e-) of a science frame, as the simulator injected them."""
    spec = truth["spec"]
    frames = Table.read(out / "truth" / "frames.ecsv")
    info = frames[frames["filename"] == frame_row["filename"]][0]
    stars = Table.read(out / "truth" / "stars.ecsv")
    x, y = star_positions(nx, ny, stars["x"], stars["y"], info["dx"], info["dy"], info["rotation_deg"]).T
    flux = np.asarray(stars["flux_e"], float) * info["transmission"] * info["exptime"] / spec["science_exptime"]
    t_mjd = info["mjd_mid"]
    transit, variable = truth["transit"], truth["variable"]
    host = np.asarray(stars["id"]) == transit["host_id"]
    flux[host] *= transit_factor(t_mjd * 86400, transit["t_mid_mjd"] * 86400, transit["duration_s"], transit["depth"])
    var = np.asarray(stars["id"]) == variable["id"]
    flux[var] *= 1 + variable["amplitude"] * np.sin(
        2 * np.pi * (t_mjd - variable["t0_mjd"]) * 86400 / variable["period_s"] + variable["phase"])
    image = render_stars(nx, ny, x, y, flux, info["fwhm"], spec["moffat_beta"])
    return image + spec["sky_e_per_s"] * info["exptime"] * info["transmission"], info


@pytest.fixture(scope="module")
def calibrated(night):
    out, truth, table, cfg, masters, flats = night
    row = table[(table["imagetyp"] == "science") & (table["status"] == "ok")].iloc[1].to_dict()
    product = calibrate_frame(row, {"bias": masters["bias"], "dark": masters["dark"], "flat": flats[row["filter"]]},
                              {}, cfg, config_hash="test")
    path = out / "calibrated.fits"
    product.write(path)
    # The master flat is normalised to its central region, the simulator's flat
    # to its whole-frame median: calibrated frames are in e- times that ratio.
    true_flat = _truth_image(out, f"FLAT_{row['filter']}")
    flat = flats[row["filter"]]
    product.flat_scale = float(np.median(true_flat[flat.mask == 0] / flat.data[flat.mask == 0]))
    return out, truth, row, product, path


def test_calibrated_frame_equals_truth_within_propagated_uncertainty(calibrated):
    out, truth, row, product, _ = calibrated
    ny, nx = product.data.shape
    model, _ = _science_model(out, truth, row, nx, ny)
    good = product.mask == 0
    # the few cosmic-ray pixels astroscrappy misses are not sky or stars: leave them out
    cosmics = Table.read(out / "truth" / "cosmics.ecsv")
    hits = cosmics[cosmics["filename"] == row["filename"]]
    good[hits["y"], hits["x"]] = False
    residual = _normalised(product, model * product.flat_scale, good)
    assert abs(product.flat_scale - 1) < 0.2
    assert good.mean() > 0.9
    assert abs(residual.mean()) < 0.05, residual.mean()
    assert abs(residual.std() - 1) < 0.05, residual.std()


def test_mask_flags_bad_column_saturated_stars_and_cosmic_rays(calibrated):
    out, truth, row, product, _ = calibrated
    mask = product.mask
    assert np.all(mask[:, truth["bad_column"]] & (bitmask.LOW_FLAT | bitmask.BAD))
    stars = Table.read(out / "truth" / "stars.ecsv")
    ny, nx = mask.shape
    _, info = _science_model(out, truth, row, nx, ny)
    saturated = stars[stars["is_saturated"]]
    assert len(saturated) >= 1
    for star in saturated:
        x, y = int(round(star["x"] + info["dx"])), int(round(star["y"] + info["dy"]))
        if 2 <= x < nx - 2 and 2 <= y < ny - 2:
            assert mask[y, x] & bitmask.SATURATED, f"saturated star {star['id']} core not flagged"
    cosmics = Table.read(out / "truth" / "cosmics.ecsv")
    hits = cosmics[cosmics["filename"] == row["filename"]]
    assert len(hits) > 20
    flagged = np.array([bool(mask[y, x] & (bitmask.COSMIC_RAY | bitmask.SATURATED)) for x, y in zip(hits["x"], hits["y"])])
    assert flagged.mean() >= 0.9, flagged.mean()


def test_product_opens_as_ccddata_with_variance_mask_and_provenance(calibrated):
    _, _, row, product, path = calibrated
    ccd = CCDData.read(path)
    assert isinstance(ccd.uncertainty, VarianceUncertainty)
    assert ccd.unit == "electron" and ccd.mask.dtype == bool and ccd.mask.any()
    header = fits.getheader(path)
    assert header["STEPS"].startswith("overscan,trim,gain,bias,dark,flat,cosmic_rays")
    for key in ("MBIAS", "MBIASSHA", "MDARK", "MDARKSHA", "MFLAT", "MFLATSHA", "PIPEVER", "CFGHASH", "RAWSHA1"):
        assert key in header, key
    assert len(header["MFLATSHA"]) == 40


def test_product_keeps_the_keywords_other_tools_read(calibrated):
    """Times in the FITS standard (start, mid-exposure, scale), the raw header's
    telescope, instrument, observer and object; gain 1 on data in electrons."""
    from astropy.time import Time

    out, _, row, _, path = calibrated
    header, raw = fits.getheader(path), fits.getheader(row["path"])
    assert header["TIMESYS"] == "UTC"
    assert Time(header["DATE-OBS"]).isot == Time(raw["DATE-OBS"]).isot  # the simulator stamps the start
    exptime = raw["EXPTIME"]
    assert (Time(header["DATE-AVG"]) - Time(header["DATE-OBS"])).sec == pytest.approx(exptime / 2, abs=1e-3)
    assert header["MJD-AVG"] == pytest.approx(Time(header["DATE-AVG"]).mjd, abs=1e-9)
    for key in ("TELESCOP", "INSTRUME", "OBSERVER", "OBJECT"):
        assert header.get(key) == raw.get(key) and header.get(key), key
    assert header["BUNIT"] == "electron" and header["GAIN"] == 1.0
    assert header["GAINRAW"] == pytest.approx(raw["GAIN"])


def test_dark_scaled_to_exposure_time(night):
    """A 30 s dark calibrated with the rate master leaves no dark signal behind."""
    out, truth, table, cfg, masters, flats = night
    row = table[(table["imagetyp"] == "dark") & (table["exptime"] == 30)].iloc[0].to_dict()
    product = calibrate_frame(row, {"bias": masters["bias"], "dark": masters["dark"]}, {}, CalibrationConfig(
        overscan=OverscanOptions(statistic="mean"), cosmic_rays={"enabled": False}))
    good = product.mask == 0
    # median: the dark's cosmic rays are not flagged here (cosmic rays off)
    level = np.median(product.data[good])
    assert abs(level) < 5 * 1.25 * np.sqrt(np.mean(product.variance[good]) / good.sum())


def test_shape_mismatch_is_caught_before_arithmetic(night):
    _, _, table, cfg, masters, flats = night
    row = table[table["imagetyp"] == "science"].iloc[0].to_dict()
    cut = masters["bias"]
    from ccdflow.ccdio import Product
    wrong = Product(cut.data[:100], cut.variance[:100], cut.mask[:100], cut.header.copy())
    with pytest.raises(ValueError, match="does not match master bias"):
        calibrate_frame(row, {"bias": wrong}, {}, cfg)


def test_two_amplifier_detector_is_corrected_per_amplifier(tmp_path, profiles):
    """Two amplifiers with different bias levels and gains give one seamless image in e-."""
    spec = NightSpec.from_dict({"n_amps": 2, "n_science": 3, "damaged": []}, base="tiny")
    truth = simulate_night(tmp_path, spec)
    amps = truth["geometry"]["amplifiers"]
    assert len(amps) == 2 and amps[0]["gain"] != amps[1]["gain"]
    table = take_inventory(find_raw_files([RawSource(str(tmp_path / "raw"), "simulator")]),
                           {"simulator": profiles["simulator"]})
    flat_row = table[(table["imagetyp"] == "flat") & (table["filter"] == "V")].iloc[1].to_dict()
    assert json.loads(flat_row["amplifiers"])[1]["gain"] == pytest.approx(amps[1]["gain"])
    product = preprocess_frame(flat_row, CalibrationConfig())
    half = spec.nx // 2
    true_flat = _truth_image(tmp_path, "FLAT_V")
    # divide out the flat pattern: what remains must be one level across the amplifier seam
    level = product.data / true_flat
    left, right = np.median(level[:, half - 20 : half]), np.median(level[:, half : half + 20])
    assert abs(left / right - 1) < 0.01, (left, right)
    raw = fits.getdata(tmp_path / "raw" / flat_row["filename"]).astype(float)
    raw_left, raw_right = np.median(raw[:, 8 + half - 20 : 8 + half]), np.median(raw[:, 8 + half : 8 + half + 20])
    assert abs(raw_left / raw_right - 1) > 0.05  # in ADU the two halves differ (gain and bias)
    # every amplifier's gain and read noise is in the header
    assert product.header["NAMPS"] == 2
    for n, amp in enumerate(amps, 1):
        assert product.header[f"AGAIN_{n:02d}"] == pytest.approx(amp["gain"])
        assert product.header[f"ARDNS_{n:02d}"] == pytest.approx(amp["read_noise"])


def test_master_outside_qc_limits_fails_and_says_why(night):
    out, truth, table, cfg, masters, _ = night
    plan = next(iter(plan_masters(table)["bias"].values()))
    paths = [str(out / "proc" / f"{fid}.fits") for fid in plan.frame_ids]
    rows = [dict(r, sha1="-") for r in table.set_index("frame_id").loc[list(plan.frame_ids)].reset_index().to_dict("records")]
    strict = CalibrationConfig(overscan=cfg.overscan, qc={"bias": {"std_max": 0.01}})
    product = build_master("bias", paths, rows, strict, group=plan.group)
    assert product.header["QCSTATUS"] == "FAIL" and "robust std" in product.header["QCREASON"]
    assert masters["bias"].header["QCSTATUS"] == "PASS" and masters["bias"].header["QCSTD"] > 0.01


def test_matched_dark_mode_uses_darks_of_the_same_exposure_only(night):
    out, truth, table, cfg, masters, _ = night
    matched = CalibrationConfig(overscan=cfg.overscan, dark_mode="matched", cosmic_rays={"enabled": False})
    plans = plan_masters(table, "matched")["dark"]
    assert len(plans) == 2  # one per exposure time
    plan = next(p for p in plans.values() if p.group.endswith("|30s"))
    rows = table.set_index("frame_id").loc[list(plan.frame_ids)].reset_index().to_dict("records")
    paths = [str(out / "proc" / f"{fid}.fits") for fid in plan.frame_ids]
    dark = build_master("dark", paths, [dict(r, sha1="-") for r in rows], matched, bias=masters["bias"], group=plan.group)
    assert dark.header["DARKMODE"] == "matched" and dark.unit == "electron"
    rate = _truth_image(out, "DARK_RATE")
    good = (dark.mask == 0) & (rate < 1)
    # a matched master holds the dark signal of 30 s itself
    assert abs(np.median(dark.data[good]) / np.median(30 * rate[good]) - 1) < 0.1
    dark.write(out / "matched.fits")
    result = calibrate_frame(rows[0], {"bias": masters["bias"], "dark": load_master(out / "matched.fits")}, {}, matched)
    assert abs(np.median(result.data[result.mask == 0])) < 1.0


def test_cosmic_ray_noise_model_is_each_amplifiers_own():
    """Issue 12 point 8: two amplifiers, read noise 4 and 16 e-, a faint sky and no cosmic
    rays. With one read noise (amplifier 1's) for the frame, the noisy half is full of
    false hits; with the variance plane as the noise model it is as clean as the other."""
    import astroscrappy

    from ccdflow.calibrate import _cosmic_rays

    rng = np.random.default_rng(8)
    shape, sky = (200, 200), 30.0
    read = np.where(np.arange(shape[1]) < 100, 4.0, 16.0)[None, :] * np.ones(shape)
    data = (rng.poisson(sky, shape) + rng.normal(0, read)).astype(np.float32)
    variance = (sky + read ** 2).astype(np.float32)
    mask = bitmask.empty(shape)
    _cosmic_rays(data, variance, mask, 4.0, {"star_objlim": 0})
    per_amp = [int(np.count_nonzero(mask[:, :100] & bitmask.COSMIC_RAY)),
               int(np.count_nonzero(mask[:, 100:] & bitmask.COSMIC_RAY))]
    one_noise = astroscrappy.detect_cosmics(data, gain=1.0, readnoise=4.0, satlevel=np.inf, sigclip=4.5,
                                            objlim=5.0, sigfrac=0.3, niter=2)[0]
    print(f"false flags per amplifier: {per_amp} (one read noise: {int(one_noise[:, 100:].sum())} in the noisy half)")
    assert one_noise[:, 100:].sum() > 50          # the failure the variance plane avoids
    assert per_amp[1] <= 5 and per_amp[0] <= 5


def test_compressed_products_add_under_one_percent_of_each_pixels_noise(calibrated, tmp_path):
    """A calibrated frame written tile-compressed (.fits.fz, the default quantisation) against
    the same frame written plain: the rounding adds at most 1 % of each pixel's own noise (rms,
    in every decile of that noise: sky-limited pixels and star cores alike), the mask is
    unchanged, the photometry of every star moves by at most 0.1 of its error, and the file
    opens in astropy's CCDData with its variance and mask."""
    from astropy.nddata import CCDData

    from ccdflow.ccdio import Product
    from ccdflow.photometry import forced_photometry

    out, truth, row, product, _ = calibrated
    plain, packed = tmp_path / "frame.fits", tmp_path / "frame.fits.fz"
    product.write(plain)
    product.write(packed)
    a, b = Product.read(plain), Product.read(packed)
    assert np.array_equal(a.mask, b.mask) and b.header["FRAMEID"] == a.header["FRAMEID"]
    good = (a.mask == 0) & np.isfinite(a.data) & (a.variance > 0)
    noise = np.sqrt(a.variance[good])
    added = (b.data - a.data)[good] / noise
    deciles = np.quantile(noise, np.linspace(0, 1, 11))
    per_decile = [np.sqrt(np.mean(added[(noise >= lo) & (noise <= hi)] ** 2)) for lo, hi in itertools.pairwise(deciles)]
    print(f"added rms / own noise by noise decile: {np.round(per_decile, 4)}; file "
          f"{packed.stat().st_size / plain.stat().st_size:.2f} of plain")
    assert max(per_decile) <= 0.01 and min(per_decile) > 0  # quantised, and not beyond 1 %
    assert np.sqrt(np.mean(((b.variance - a.variance)[good] / a.variance[good]) ** 2)) < 0.01
    assert packed.stat().st_size < 0.4 * plain.stat().st_size

    ny, nx = a.data.shape
    _, info = _science_model(out, truth, row, nx, ny)
    stars = Table.read(out / "truth" / "stars.ecsv")
    xy = star_positions(nx, ny, stars["x"], stars["y"], info["dx"], info["dy"], info["rotation_deg"])
    inside = (xy[:, 0] > 10) & (xy[:, 0] < nx - 10) & (xy[:, 1] > 10) & (xy[:, 1] < ny - 10)
    phot_a, phot_b = (forced_photometry(p.data, p.variance, p.mask, xy[inside], float(info["fwhm"])) for p in (a, b))
    measured = np.isfinite(phot_a["flux"]) & (phot_a["flux_err"] > 0)
    shift = np.abs(phot_b["flux"] - phot_a["flux"])[measured] / phot_a["flux_err"][measured]
    # the sky is a clipped median: when the rounding moves one annulus pixel across the clip
    # (n_sky changes) the median steps by a gap between order statistics, up to ~0.1 of a faint
    # star's error in the largest aperture; any change of the data, float32 rounding included,
    # does that (15 % of the measurements here). Elsewhere the fluxes move by the rounding's own
    # noise: median 0.005 of the error, at most 0.02 here
    stepped = (phot_a["n_sky"] != phot_b["n_sky"])[measured]
    print(f"flux shift / error: median {np.median(shift):.4f}, 99th percentile {np.percentile(shift, 99):.3f}, "
          f"max {shift.max():.3f} where the sky's clip moved, {shift[~stepped].max():.4f} elsewhere")
    assert measured.sum() > 50 and np.median(shift) < 0.01 and np.percentile(shift, 99) <= 0.1
    assert shift[~stepped].max() <= 0.1

    ccd = CCDData.read(packed, hdu="SCI")
    assert isinstance(ccd.uncertainty, VarianceUncertainty) and ccd.mask.sum() == (b.mask != 0).sum()
    assert str(ccd.unit) == "electron" and np.array_equal(ccd.data, b.data)
