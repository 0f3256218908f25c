"""FITS sections and time stamps: the two places off-by-one and time-zone bugs hide."""

from datetime import datetime

import numpy as np
import pytest

from ccdflow.sections import parse_section
from ccdflow.timeutil import mid_exposure, parse_date, parse_date_and_time, parse_iso_utc, to_mjd, from_mjd


def test_section_to_numpy_slices_lowell_trimsec():
    section = parse_section("[18:1382,1:1370]")
    assert section.slices == (slice(0, 1370), slice(17, 1382))
    assert section.shape == (1370, 1365)
    assert section.to_fits() == "[18:1382,1:1370]"


def test_section_selects_the_named_pixels():
    image = np.arange(20 * 30).reshape(20, 30)  # 20 rows, 30 columns
    section = parse_section("[3:5,2:4]")  # columns 3..5, rows 2..4, 1-based
    assert image[section.slices].tolist() == image[1:4, 2:5].tolist()


@pytest.mark.parametrize("bad", ["", "[1:10]", "[0:10,1:5]", "1:10,1:5", "[a:b,c:d]"])
def test_bad_sections_are_rejected_with_the_text(bad):
    with pytest.raises(ValueError, match="section|1-based"):
        parse_section(bad)


def test_reversed_section_is_normalised():
    assert parse_section("[100:1,50:1]").slices == (slice(0, 50), slice(0, 100))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2025-06-02T04:10:14.288", datetime(2025, 6, 2, 4, 10, 14, 288000)),
        ("2025-06-02T04:10:14.288Z", datetime(2025, 6, 2, 4, 10, 14, 288000)),
        ("2025-06-02T04:10:14.288 UTC", datetime(2025, 6, 2, 4, 10, 14, 288000)),
        ("2025-06-02T04:10:14UT", datetime(2025, 6, 2, 4, 10, 14)),
        ("2025-06-02T04:10:14+00:00", datetime(2025, 6, 2, 4, 10, 14)),
        ("2025-06-02 04:10:14 GMT", datetime(2025, 6, 2, 4, 10, 14)),
        ("2019-03-25T19:27:31-07:00", datetime(2019, 3, 26, 2, 27, 31)),
        ("2019-03-25T19:27:31 -0700", datetime(2019, 3, 26, 2, 27, 31)),
        ("2025-06-02T04:10:14.123456789", datetime(2025, 6, 2, 4, 10, 14, 123456)),
    ],
)
def test_iso_with_time_zone_suffixes(text, expected):
    assert parse_iso_utc(text) == expected


def test_date_alone_is_not_read_as_an_offset():
    assert parse_iso_utc("2019-03-26") == datetime(2019, 3, 26)


def test_date_plus_time_keywords_and_old_date_form():
    assert parse_date_and_time("2019-03-26", "02:27:31.13") == datetime(2019, 3, 26, 2, 27, 31, 130000)
    assert parse_date("02/06/25") == datetime(2025, 6, 2)  # MaxIm DL's DATE: DD/MM/YY


def test_mjd_round_trip_and_known_value():
    moment = datetime(2025, 6, 2, 4, 10, 14, 288000)
    # astropy: Time('2025-06-02T04:10:14.288', scale='utc').mjd
    assert to_mjd(moment) == pytest.approx(60828.17377648148, abs=1e-9)
    assert abs((from_mjd(to_mjd(moment)) - moment).total_seconds()) < 1e-3


def test_mid_exposure_anchor():
    start = datetime(2020, 1, 1, 0, 0, 0)
    assert mid_exposure(start, 300, "start") == datetime(2020, 1, 1, 0, 2, 30)
    assert mid_exposure(start, 300, "middle") == start
    assert mid_exposure(start, 300, "end") == datetime(2019, 12, 31, 23, 57, 30)
    with pytest.raises(ValueError):
        mid_exposure(start, 1, "begin")
