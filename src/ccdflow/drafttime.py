"""The time block of a drafted profile (``ccdflow init``, see :mod:`ccdflow.draft`).

Which keywords hold the time stamp (``iso: DATE-OBS``; ``date: DATE-OBS`` +
``time: UTCSTART`` when DATE-OBS holds only the date; ``mjd: MJD-OBS``), and
which instant of the exposure it marks: checked against an end or middle time
the headers also carry (DATE-END, UTCEND, MJD-END, DATE-AVG, MJD-AVG...), else
read from the stamp card's comment, else ``start`` as a marked guess.
"""

from __future__ import annotations

import re
import statistics

from . import timeutil

DATE_KEYWORDS = ("DATE-OBS", "DATE-BEG", "DATE_OBS")
TIME_KEYWORDS = ("UTCSTART", "UT", "TIME-OBS", "UTC-OBS", "UTSTART", "UT-START", "TIME_OBS", "UTC")
MJD_KEYWORDS = ("MJD-OBS", "MJD_OBS", "MJDSTART", "MJD-BEG")
JD_KEYWORDS = ("JD-OBS", "JD_OBS", "JD")
# Other instants of the exposure, to tell what the stamp marks: (instant, keyword, how to read it).
OTHER_INSTANTS = [("end", "DATE-END", "iso"), ("end", "UTCEND", "time"), ("end", "UT-END", "time"),
                  ("end", "UTEND", "time"), ("end", "TIME-END", "time"), ("end", "MJD-END", "mjd"),
                  ("middle", "DATE-AVG", "iso"), ("middle", "MJD-AVG", "mjd"), ("middle", "MJD-MID", "mjd"),
                  ("middle", "TIME-MID", "time"), ("middle", "MIDTIMJD", "jd")]
# (other instant - stamp) / exposure time, for a stamp at each anchor
EXPECTED = {"end": {"start": 1.0, "middle": 0.5, "end": 0.0}, "middle": {"start": 0.5, "middle": 0.0, "end": -0.5}}


def _text(frame, keyword) -> str:
    value = frame.header.get(keyword)
    return "" if value is None else str(value).strip()


def stamp_mjd(frame, spec) -> float | None:
    """MJD (UTC) of a frame's stamp under a time block ``spec``; None if unreadable."""
    try:
        if "iso" in spec:
            return timeutil.to_mjd(timeutil.parse_iso_utc(_text(frame, spec["iso"])))
        if "date" in spec:
            return timeutil.to_mjd(timeutil.parse_date_and_time(_text(frame, spec["date"]), _text(frame, spec["time"])))
        if "mjd" in spec:
            return float(frame.header[spec["mjd"]])
        return float(frame.header[spec["jd"]]) - timeutil.JD_MINUS_MJD
    except (KeyError, TypeError, ValueError):
        return None


def _scheme(frames) -> dict:
    """The keywords of the stamp: iso, date + time, mjd or jd ({} when none is readable)."""
    def count(k):
        return sum(1 for f in frames if _text(f, k))

    date_key = next((k for k in DATE_KEYWORDS if 2 * count(k) > len(frames)), None)
    if date_key and all(re.search(r"\d:\d\d", _text(f, date_key)) for f in frames if _text(f, date_key)):
        return {"iso": date_key}
    if date_key:
        for time_key in TIME_KEYWORDS:
            if all(stamp_mjd(f, {"date": date_key, "time": time_key}) is not None for f in frames):
                return {"date": date_key, "time": time_key}
    for key in (*MJD_KEYWORDS, *JD_KEYWORDS):
        if all(stamp_mjd(f, {"mjd": key}) is not None for f in frames):
            return {("mjd" if key in MJD_KEYWORDS else "jd"): key}
    return {}


def _anchor(frames, spec, stamp_key) -> tuple[str, str, bool]:
    """What the stamp marks (start, middle or end), why, and whether that is a guess."""
    for instant, keyword, how in OTHER_INSTANTS:
        other_spec = ({"date": spec.get("date") or spec.get("iso", "DATE-OBS"), "time": keyword} if how == "time"
                      else {how: keyword})
        scores = {a: [] for a in ("start", "middle", "end")}
        for f in frames:
            other, stamp = stamp_mjd(f, other_spec), stamp_mjd(f, spec)
            if f.exptime is None or f.exptime < 1 or other is None or stamp is None:
                continue
            delta = (other - stamp) * 86400.0
            delta += 86400.0 if delta < -43200 else 0.0  # a time of day past midnight
            for anchor, fraction in EXPECTED[instant].items():
                scores[anchor].append(abs(delta - fraction * f.exptime) / f.exptime)
        if scores["start"]:
            best = min(scores, key=lambda a: statistics.median(scores[a]))
            if statistics.median(scores[best]) < 0.25:
                return best, (f"checked against {keyword} ({instant} of the exposure) in "
                              f"{len(scores[best])} frames"), False
    comment = str(frames[0].header.comments[stamp_key]) if stamp_key in frames[0].header else ""
    for word, anchor in (("start", "start"), ("begin", "start"), ("mid", "middle"), ("end", "end")):
        if re.search(rf"\b{word}", comment, re.IGNORECASE):
            return anchor, f"the {stamp_key} card's comment says {comment.strip()!r}", False
    return "start", f"nothing in the headers says which instant {stamp_key} marks: start assumed", True


def decide_time(frames) -> tuple[dict, dict, list[str]]:
    """``(time block, notes {key: (text, guess)}, todos)`` for the drafted profile."""
    spec = _scheme(frames)
    if not spec:
        return {"iso": "DATE-OBS", "anchor": "start"}, {}, [
            ("no readable time stamp (DATE-OBS with a time, DATE-OBS + UT/UTCSTART, MJD-OBS): name the keywords "
             "in the time block (iso:, or date: + time:, or mjd:)")]
    todos, notes = [], {}
    bad = [f.name for f in frames if stamp_mjd(f, spec) is None]
    if bad:
        todos.append(f"{len(bad)} files have no readable {'/'.join(spec.values())} (e.g. {bad[0]}): they will be "
                     "quarantined; fix their headers or remove them")
    stamp_key = spec.get("time") or next(iter(spec.values()))
    anchor, why, guess = _anchor(frames, spec, stamp_key)
    notes["anchor"] = (why, guess)
    zones = sorted({m.group(1) for f in frames
                    if (m := re.search(r"(Z|UTC|UT|GMT|[+-]\d\d:?\d\d)\s*$", _text(f, stamp_key)))})
    if zones:
        notes[next(iter(spec))] = (f"stamps carry a time zone ({', '.join(zones)}): converted to UTC", False)
    systems = sorted({_text(f, "TIMESYS").upper() for f in frames} - {"", "UTC", "UT"})
    if systems:
        todos.append(f"TIMESYS = {', '.join(systems)}: ccdflow reads the stamps as UTC; convert them "
                     "(TT - UTC is 69 s) or confirm they are UTC")
    return {**spec, "anchor": anchor}, notes, todos
