"""Multi-extension files: one amplifier per extension reduced as one frame, or quarantined."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from astropy.io import fits

from ccdflow.calibrate import CalibrationConfig, preprocess_frame
from ccdflow.instrument import load_profile
from ccdflow.inventory import NightRule, take_inventory
from ccdflow.sections import parse_section
from ccdflow.simulate import NightSpec, simulate_night

MEF_PROFILE = {
    "name": "mef", "frame_type": {"keywords": ["IMAGETYP"]}, "exptime": "EXPTIME",
    "filter": {"keyword": "FILTER", "default": "NONE"}, "detector": "DETECTOR", "saturation": "SATURATE",
    "time": {"iso": "DATE-OBS", "anchor": "start"}, "extensions": "amplifiers",
    "sections": {"amplifiers": {"data": "DATASEC", "overscan": "BIASSEC", "gain": "GAIN", "read_noise": "RDNOISE",
                                "output": "DETSEC"}},
}


def _split(path, out, reverse=False, binning=1):
    """The simulator's two-amplifier frame written as a primary header and one image
    extension per amplifier, each with its own sections, gain, read noise and DETSEC
    (in unbinned pixels when ``binning`` > 1); ``reverse`` stores the right amplifier first."""
    with fits.open(path) as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    amp1, amp2 = parse_section(header["DATASEC1"]), parse_section(header["DATASEC2"])
    mid = amp1.x1  # amplifier 1: prescan (its overscan) and the left half; amplifier 2: the rest
    width = amp1.x1 - amp1.x0
    ny = data.shape[0]
    parts = []
    for n, (columns, data_sec, bias_sec, detsec) in enumerate((
            ((0, mid), header["DATASEC1"], header["BIASSEC1"], (0, width)),
            ((mid, data.shape[1]), f"[{amp2.x0 - mid + 1}:{amp2.x1 - mid},1:{ny}]",
             f"[{amp2.x1 - mid + 1}:{data.shape[1] - mid},1:{ny}]", (width, 2 * width))), 1):
        ext = fits.Header()
        ext["EXTNAME"] = f"AMP{n}"
        ext["DATASEC"], ext["BIASSEC"] = data_sec, bias_sec
        ext["DETSEC"] = f"[{detsec[0] * binning + 1}:{detsec[1] * binning},1:{ny * binning}]"
        ext["GAIN"], ext["RDNOISE"] = header[f"GAIN{n}"], header[f"RDNOISE{n}"]
        parts.append(fits.ImageHDU(data[:, columns[0]:columns[1]], ext))
    primary = header.copy()
    for key in [k for k in primary if k.startswith(("DATASEC", "BIASSEC", "GAIN", "RDNOISE", "TRIMSEC", "NAMPS"))]:
        del primary[key]
    hdus = fits.HDUList([fits.PrimaryHDU(header=primary), *(parts[::-1] if reverse else parts)])
    hdus[0].header["NAXIS"] = 0
    hdus.writeto(out)
    return out


@pytest.fixture(scope="module")
def night(tmp_path_factory, profiles):
    work = tmp_path_factory.mktemp("mosaic")
    simulate_night(work / "sim", NightSpec.from_dict({"n_amps": 2, "n_science": 3, "n_stars": 8, "damaged": []},
                                                     base="tiny"))
    frame = sorted((work / "sim" / "raw").glob("sci_*.fits"))[0]
    (work / "mef").mkdir()
    mef = _split(frame, work / "mef" / "sci_mef.fits")
    flipped = _split(frame, work / "mef" / "sci_mef_reversed.fits", reverse=True)
    binned = _split(frame, work / "mef" / "sci_mef_detsec_unbinned.fits", binning=2)
    path = work / "mef.yaml"
    path.write_text(yaml.safe_dump(MEF_PROFILE))
    return frame, (mef, flipped, binned), load_profile(path), profiles["simulator"]


def test_extensions_read_as_amplifiers_give_the_single_file_frame(night):
    frame, mefs, mef_profile, simulator = night
    single = take_inventory([(str(frame), "simulator")], {"simulator": simulator}, NightRule()).iloc[0]
    table = take_inventory([(str(p), "mef") for p in mefs], {"mef": mef_profile}, NightRule())
    assert (table["status"] == "ok").all(), table["reason"].tolist()
    cfg = CalibrationConfig.from_config({"cosmic_rays": {"enabled": False}})
    expected = preprocess_frame(single.to_dict(), cfg)
    for row in table.to_dict("records"):
        amps = json.loads(row["amplifiers"])
        assert len(amps) == 2 and row["extensions"] in ("1,2",)
        assert row["imagetyp"] == "science" and row["exptime"] == single["exptime"]
        assert row["mid_utc"] == single["mid_utc"]      # DATE-OBS from the primary header
        product = preprocess_frame(row, cfg)
        # the same electrons, variance and saturation mask, whatever the HDU order or DETSEC binning
        assert product.data.shape == expected.data.shape
        np.testing.assert_allclose(product.data, expected.data, rtol=0, atol=1e-3)
        np.testing.assert_allclose(product.variance, expected.variance, rtol=1e-6)
        assert np.array_equal(product.mask, expected.mask)


def test_multi_extension_files_the_profile_does_not_describe_are_quarantined(night):
    _, mefs, _, simulator = night
    table = take_inventory([(str(mefs[0]), "simulator")], {"simulator": simulator}, NightRule())
    row = table.iloc[0]
    assert row["status"] == "quarantined"
    assert "holds 2 images" in row["reason"] and "extensions: amplifiers" in row["reason"]


def test_extensions_as_detectors_are_frames_of_their_own(night, tmp_path, profiles):
    """``extensions: detectors``: each image extension is one frame of its own detector
    (own frame id, calibration group and checksum), reduced from its own pixels."""
    frame, _, _, simulator = night
    with fits.open(frame) as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    primary = fits.Header({k: header[k] for k in ("IMAGETYP", "EXPTIME", "DATE-OBS", "FILTER", "DETECTOR")})
    extensions = []
    for name, offset in (("CCD1", 0), ("CCD2", 7)):
        ext = header.copy()
        for key in ("IMAGETYP", "EXPTIME", "DATE-OBS", "FILTER", "DETECTOR"):
            del ext[key]
        ext["EXTNAME"] = name
        extensions.append(fits.ImageHDU(data + np.uint16(offset), ext))
    path = tmp_path / "two_ccds.fits"
    fits.HDUList([fits.PrimaryHDU(header=primary), *extensions]).writeto(path)
    spec = {**simulator.spec, "name": "ccds", "extensions": "detectors"}
    (tmp_path / "ccds.yaml").write_text(yaml.safe_dump(spec))
    table = take_inventory([(str(path), "ccds")], {"ccds": load_profile(tmp_path / "ccds.yaml")}, NightRule())
    assert list(table["status"]) == ["ok", "ok"], table["reason"].tolist()
    assert table["frame_id"].is_unique and table["content_sha1"].is_unique
    assert sorted(table["detector"]) == ["SIMCCD-1:CCD1", "SIMCCD-1:CCD2"]
    assert table["cal_group"].nunique() == 2 and set(table["extensions"]) == {"1", "2"}
    single = take_inventory([(str(frame), "simulator")], {"simulator": simulator}, NightRule()).iloc[0]
    assert (table["mid_utc"] == single["mid_utc"]).all() and (table["exptime"] == single["exptime"]).all()
    cfg = CalibrationConfig.from_config({"cosmic_rays": {"enabled": False}})
    one, two = (preprocess_frame(row, cfg) for row in table.sort_values("detector").to_dict("records"))
    # the second CCD reads 7 ADU more everywhere: the overscan takes it out, to the electron
    np.testing.assert_allclose(two.data, one.data, atol=1e-3)
    assert not np.array_equal(fits.getdata(path, 1), fits.getdata(path, 2))
