"""Instrument profiles against synthetic headers and the real frames in ../shared/data."""

from collections import Counter

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.io import fits
from astropy.time import Time

from ccdflow.rawscan import scan_raw
from ccdflow.instrument import MissingKeyword, load_profile, normalise_header, parse_angle, validate_profile
from ccdflow.inventory import RawSource, find_raw_files, take_inventory
from ccdflow.sections import parse_section


def _normalised(path, profile):
    return normalise_header(scan_raw(path).header, path, profile)


def test_every_shipped_profile_validates(profiles):
    assert {"simulator", "arcsat", "lowell42"} <= set(profiles)


def test_invalid_profile_names_the_key(tmp_path, profiles):
    spec = dict(profiles["arcsat"].spec)
    spec["time"] = {"iso": "DATE-OBS", "anchor": "beginning"}
    spec["exptme"] = "EXPTIME"
    with pytest.raises(ValueError) as info:
        validate_profile(spec, "broken.yaml")
    message = str(info.value)
    assert "broken.yaml" in message and "time/anchor" in message and "exptme" in message


def test_profile_not_found_lists_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="nosuch.*looked in"):
        load_profile("nosuch", [tmp_path])


def _header(**cards):
    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"] = 100
    header["NAXIS2"] = 80
    for key, value in cards.items():
        header[key.replace("_", "-")] = value
    return header


def test_frame_type_rules_without_type_keyword(tmp_path):
    spec = {
        "name": "notype",
        "frame_type": {
            "keywords": [],
            "rules": [
                {"field": "filename", "pattern": "*bias*", "type": "bias"},
                {"field": "object", "pattern": "*flat*", "type": "flat"},
            ],
            "default": "science",
        },
        "exptime": "EXPTIME",
        "time": {"mjd": "MJD-OBS", "anchor": "middle"},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    profile = load_profile(path)
    common = {"EXPTIME": 1.0, "MJD_OBS": 60000.5, "FILTER": "V"}
    assert normalise_header(_header(**common), "night1/Bias_003.fits", profile)["imagetyp"] == "bias"
    assert normalise_header(_header(OBJECT="Dome FLAT V", **common), "f.fits", profile)["imagetyp"] == "flat"
    record = normalise_header(_header(OBJECT="M67", **common), "m67.fits", profile)
    assert record["imagetyp"] == "science"
    assert record["mid_utc"] == "2023-02-25T12:00:00.000"


def test_aliases_are_case_insensitive_and_unknown_type_is_named(profiles):
    common = {"EXPTIME": 10.0, "DATE_OBS": "2024-01-01T00:00:00", "FILTER": "R",
              "TRIMSEC": "[1:90,1:80]", "BIASSEC": "[91:100,1:80]"}
    profile = profiles["simulator"]
    assert normalise_header(_header(IMAGETYP="zero", **common), "a.fits", profile)["imagetyp"] == "bias"
    assert normalise_header(_header(IMAGETYP="Twilight", **common), "a.fits", profile)["imagetyp"] == "flat"
    with pytest.raises(MissingKeyword, match="unknown frame type 'FOCUS'"):
        normalise_header(_header(IMAGETYP="FOCUS", **common), "a.fits", profile)


def test_missing_exposure_keyword_is_named(profiles):
    with pytest.raises(MissingKeyword, match="EXPTIME"):
        normalise_header(_header(IMAGETYP="BIAS", DATE_OBS="2024-01-01T00:00:00"), "a.fits", profiles["simulator"])


def test_sexagesimal_angles():
    assert parse_angle("16 02 11.83", "hourangle") == pytest.approx(240.549291666, abs=1e-8)
    assert parse_angle("+28:10:10.7") == pytest.approx(28.169638888, abs=1e-8)
    assert parse_angle("-00 30 00") == pytest.approx(-0.5)
    assert parse_angle(-105.82) == -105.82


# -- the real frames ------------------------------------------------------------------


def test_arcsat_every_frame_classified(arcsat_raw, profiles):
    files = find_raw_files([RawSource(str(arcsat_raw), "arcsat")])
    table = take_inventory(files, {"arcsat": profiles["arcsat"]})
    assert (table["status"] == "ok").all(), table.loc[table["status"] != "ok", "reason"].tolist()
    assert Counter(table["imagetyp"]) == {"bias": 5, "dark": 5, "flat": 5, "science": 81}
    # the telescope logs sit beside the frames and must not be picked up
    assert not any(name.endswith(".log") for name in table["filename"])
    assert "43Bet Com_z_20250602_033902.fits.gz" in set(table["filename"])  # the name with a space
    assert set(table["night"]) == {"2025-06-01"}  # local evening date at Apache Point


def test_arcsat_mid_exposure_against_jd_keyword(arcsat_raw, profiles):
    """MaxIm DL's JD keyword marks the exposure start: an independent check of DATE-OBS parsing."""
    path = arcsat_raw / "XO1-b_z_20250602_041008.fits.gz"
    header = fits.getheader(path)
    record = _normalised(path, profiles["arcsat"])
    expected_mid = Time(header["JD"], format="jd", scale="utc") + header["EXPTIME"] / 2 * u.s
    assert abs(Time(record["mid_utc"], scale="utc") - expected_mid).sec < 0.1
    assert record["exptime"] == 60.0 and record["filter"] == "z" and record["binning"] == "1x1"
    assert record["ra_deg"] == pytest.approx(240.549291666, abs=1e-6)
    assert record["site_lon"] == pytest.approx(-105.820277778, abs=1e-6)


def test_lowell_time_gain_and_sections(lowell_raw, profiles):
    profile = profiles["lowell42"]
    path = lowell_raw / "object" / "20190326.0126.fits.gz"
    header = fits.getheader(path)
    record = _normalised(path, profile)
    assert header["DATE-OBS"] == "2019-03-26"  # the trap: no time of day here
    start = Time(f"{header['DATE-OBS']}T{header['UTCSTART']}", scale="utc")
    assert abs(Time(record["mid_utc"], scale="utc") - (start + 150.0 * u.s)).sec < 0.1
    assert record["mid_utc"] == "2019-03-26T02:30:01.130"
    assert record["gain"] == 4.95 and record["read_noise"] == 9.3
    assert record["filter"] == "VR" and record["binning"] == "3x3" and record["imagetyp"] == "science"
    assert parse_section(record["data_section"]).slices == (slice(0, 1370), slice(17, 1382))
    assert parse_section(record["overscan_section"]).slices == (slice(0, 1370), slice(1387, 1432))
    assert profile.spec["sections"]["overscan_exclude_columns"] == [1432]
    # the overscan slice really is bias: compare it with a data-section level of a bias frame
    bias = fits.getdata(lowell_raw / "zero" / "20190326.0001.fits.gz").astype(float)
    overscan = bias[parse_section(record["overscan_section"]).slices][:, :-1]  # drop the bad last column
    assert abs(np.median(overscan) - np.median(bias[parse_section(record["data_section"]).slices])) < 5


def test_lowell_flats_are_skyflats_with_filter_from_filtname(lowell_raw, profiles):
    files = find_raw_files([RawSource(str(lowell_raw), "lowell42")])
    table = take_inventory(files, {"lowell42": profiles["lowell42"]})
    assert Counter(table["imagetyp"]) == {"bias": 11, "flat": 7, "science": 16}
    flats = table[table["imagetyp"] == "flat"]
    assert set(flats["filter"]) == {"VR"} and set(flats["raw_type"]) == {"SKYFLAT"}
    assert set(table["night"]) == {"2019-03-25"}


# -- constants, keywords no header holds, amplifiers alone, sites ------------------------
def _tiny_files(tmp_path, n_amps=1, drop=(), **spec):
    """A tiny simulated night (few frames) with header cards ``drop`` removed."""
    from ccdflow.simulate import NightSpec, simulate_night

    simulate_night(tmp_path, NightSpec.from_dict({"n_amps": n_amps, "n_science": 3, "n_stars": 5, **spec},
                                                 base="tiny"))
    paths = sorted((tmp_path / "raw").glob("*.fits"))
    for path in paths:
        with fits.open(path, mode="update") as hdul:
            for key in drop:
                hdul[0].header.remove(key, ignore_missing=True)
    return paths


def _profile_file(tmp_path, profiles, **changes):
    spec = {**profiles["simulator"].spec, **changes}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": "mine"}))
    return load_profile(path)


def test_a_constant_written_bare_is_a_keyword_no_header_holds_and_stops_the_inventory(tmp_path, profiles):
    from ccdflow.inventory import NightRule, ProfileError

    paths = _tiny_files(tmp_path / "night")
    files = [(str(p), "mine") for p in paths]
    bare = _profile_file(tmp_path, profiles, detector="my-ccd")
    with pytest.raises(ProfileError, match=r"detector: keyword my-ccd is in none of the \d+ headers.*\{value: my-ccd\}"):
        take_inventory(files, {"mine": bare}, NightRule())
    explicit = _profile_file(tmp_path, profiles, detector={"value": "my-ccd"})
    table = take_inventory(files, {"mine": explicit}, NightRule())
    assert set(table.loc[table["status"] == "ok", "detector"]) == {"my-ccd"}
    # a keyword some headers lack (target coordinates on calibration frames) is fine
    assert (table["absent_keywords"] == "").all()


def test_two_amplifiers_need_no_top_level_sections(tmp_path, profiles):
    """The simulator profile, copied for a camera whose headers hold only the numbered
    per-amplifier sections (no TRIMSEC/BIASSEC), reads both amplifiers."""
    import json

    from ccdflow.inventory import NightRule

    paths = _tiny_files(tmp_path / "night", n_amps=2, drop=("TRIMSEC", "BIASSEC"))
    table = take_inventory([(str(p), "simulator") for p in paths], {"simulator": profiles["simulator"]}, NightRule())
    ok = table[table["status"] == "ok"]
    assert len(ok) == len(paths), table.loc[table["status"] != "ok", "reason"].tolist()
    amps = json.loads(ok["amplifiers"].iloc[0])
    assert len(amps) == 2 and all(a["overscan"] for a in amps)
    left, right = (parse_section(a["data"]) for a in amps)
    box = parse_section(ok["data_section"].iloc[0])
    assert (box.x0, box.x1) == (left.x0, right.x1)
    # a one-amplifier frame with neither kind of section keyword is named, not reduced whole
    one = _tiny_files(tmp_path / "one", drop=("TRIMSEC", "BIASSEC", "DATASEC1", "BIASSEC1"))
    with pytest.raises(MissingKeyword, match="missing section keyword TRIMSEC and amplifier keyword DATASEC1"):
        _normalised(one[0], profiles["simulator"])


def test_site_signs_and_the_fits_geocentric_keywords(tmp_path, profiles):
    header = _header(IMAGETYP="LIGHT", EXPTIME=10.0, DATE_OBS="2024-01-01T00:00:00", FILTER="R",
                     LONGITUD=111.5355, LATITUDE=35.09675, ALTITUDE=2206.0)
    base = {"name": "s", "frame_type": {"keywords": ["IMAGETYP"]}, "exptime": "EXPTIME",
            "time": {"iso": "DATE-OBS", "anchor": "start"}}
    west = load_profile(_write(tmp_path / "w.yaml", {**base, "site": {
        "longitude": "LONGITUD", "latitude": "LATITUDE", "height": "ALTITUDE", "longitude_positive": "west"}}))
    record = normalise_header(header, "a.fits", west)
    assert record["site_lon"] == pytest.approx(-111.5355) and record["site_lat"] == pytest.approx(35.09675)
    # no site in the profile: OBSGEO-X/Y/Z (FITS standard, geocentric metres)
    from astropy.coordinates import EarthLocation

    apo = EarthLocation.from_geodetic(-105.820278 * u.deg, 32.780278 * u.deg, 2788 * u.m)
    for axis, value in zip("XYZ", (apo.x, apo.y, apo.z)):
        header[f"OBSGEO-{axis}"] = value.to_value(u.m)
    record = normalise_header(header, "a.fits", load_profile(_write(tmp_path / "g.yaml", base)))
    assert record["site_lon"] == pytest.approx(-105.820278, abs=1e-6)
    assert record["site_lat"] == pytest.approx(32.780278, abs=1e-6)
    assert record["site_height"] == pytest.approx(2788, abs=0.01)


def _write(path, spec):
    path.write_text(yaml.safe_dump(spec))
    return path
