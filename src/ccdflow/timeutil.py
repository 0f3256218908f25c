"""Observation time stamps from FITS headers, normalised to UTC.

Headers write time in many ways: ISO ``DATE-OBS`` (with or without ``Z``,
``UTC``, ``+00:00`` or an explicit offset), a date keyword plus a separate
time keyword (Lowell's ``DATE-OBS`` + ``UTCSTART``), the old ``DD/MM/YY`` form,
or MJD/JD numbers. This module turns all of them into a naive UTC
:class:`datetime.datetime`, with plain Python so that inventorying ten thousand
headers stays fast (an :class:`astropy.time.Time` per file costs ~1 ms).
Precise time scales (TDB, barycentric) are applied later with astropy.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

MJD_EPOCH = datetime(1858, 11, 17)
JD_MINUS_MJD = 2400000.5

# Suffixes that all mean UTC; anything matching _OFFSET is an explicit offset.
_UTC_SUFFIXES = re.compile(r"\s*(z|utc|ut|gmt|\(utc\))\s*$", re.IGNORECASE)
_OFFSET = re.compile(r"\s*(?:utc|gmt)?\s*([+-])(\d{1,2}):?(\d{2})?\s*$", re.IGNORECASE)
_OLD_DATE = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{2})\s*$")
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2}):(\d{2}(?:\.\d*)?)\s*$")


def _split_offset(text: str) -> tuple[str, timedelta]:
    """Remove a time-zone suffix; return the rest and the offset to subtract."""
    stripped = _UTC_SUFFIXES.sub("", text)
    if stripped != text:
        return stripped, timedelta(0)
    # Only treat +hh[:mm] as an offset after a time of day, never inside a date.
    match = _OFFSET.search(text)
    if match and re.search(r"\d:\d{2}(:\d{2}(\.\d*)?)?\s*(?:utc|gmt)?\s*[+-]", text, re.IGNORECASE):
        sign = -1 if match.group(1) == "-" else 1
        offset = timedelta(hours=int(match.group(2)), minutes=int(match.group(3) or 0))
        return text[: match.start()], sign * offset
    return text, timedelta(0)


def parse_iso_utc(value: str) -> datetime:
    """Parse an ISO-8601 date-time (any common time-zone suffix) to naive UTC.

    >>> parse_iso_utc('2025-06-02T04:10:14.288Z')
    datetime.datetime(2025, 6, 2, 4, 10, 14, 288000)
    >>> parse_iso_utc('2019-03-26T19:27:31 -07:00')
    datetime.datetime(2019, 3, 27, 2, 27, 31)
    """
    text = str(value).strip()
    if not text:
        raise ValueError("empty date-time string")
    body, offset = _split_offset(text)
    body = body.strip().replace(" ", "T", 1) if "T" not in body else body.strip()
    # datetime.fromisoformat accepts at most 6 fractional digits; trim extras.
    body = re.sub(r"(\.\d{6})\d+", r"\1", body)
    try:
        parsed = datetime.fromisoformat(body)
    except ValueError as err:
        raise ValueError(f"cannot parse date-time {value!r}: {err}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed - offset


def parse_date(value: str) -> datetime:
    """Parse a date alone: ISO ``YYYY-MM-DD`` or the pre-2000 FITS ``DD/MM/YY``."""
    text = str(value).strip()
    old = _OLD_DATE.match(text)
    if old:
        day, month, year = (int(v) for v in old.groups())
        # FITS standard (1997): two-digit years in DD/MM/YY mean 19YY; MaxIm DL
        # still writes DD/MM/YY today, so read 00-49 as 20YY.
        year += 2000 if year < 50 else 1900
        return datetime(year, month, day)
    return parse_iso_utc(text[:10]) if len(text) >= 10 else parse_iso_utc(text)


def parse_date_and_time(date_value: str, time_value: str) -> datetime:
    """Combine a date keyword with a separate ``hh:mm:ss[.s]`` time keyword."""
    day = parse_date(date_value)
    body, offset = _split_offset(str(time_value).strip())
    match = _TIME.match(body)
    if not match:
        raise ValueError(f"cannot parse time of day {time_value!r}")
    hours, minutes, seconds = int(match.group(1)), int(match.group(2)), float(match.group(3))
    return day + timedelta(hours=hours, minutes=minutes, seconds=seconds) - offset


def from_mjd(mjd: float) -> datetime:
    """Naive UTC datetime for an MJD (UTC) number."""
    return MJD_EPOCH + timedelta(days=float(mjd))


def to_mjd(moment: datetime) -> float:
    """MJD (UTC) of a naive UTC datetime, microsecond precision."""
    delta = moment - MJD_EPOCH
    return delta.days + (delta.seconds + delta.microseconds / 1e6) / 86400.0


def mid_exposure(stamp: datetime, exptime: float, anchor: str) -> datetime:
    """Mid-exposure time from a stamp marking the ``start``, ``middle`` or ``end``."""
    half = timedelta(seconds=float(exptime) / 2.0)
    if anchor == "start":
        return stamp + half
    if anchor == "middle":
        return stamp
    if anchor == "end":
        return stamp - half
    raise ValueError(f"time anchor must be start, middle or end, not {anchor!r}")


def iso(moment: datetime) -> str:
    """ISO-8601 string with millisecond precision (what the inventory stores)."""
    return moment.isoformat(timespec="milliseconds")
