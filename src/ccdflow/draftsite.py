"""Site and target coordinates for ``ccdflow init`` (see :mod:`ccdflow.draft`).

The site is written into the drafted profile as constants (east-positive
longitude in degrees, latitude, height in metres), each with where it came from:
a pair of site keywords, geocentric ``OBSGEO-X/Y/Z``, or a known observatory
(``data/observatories.yaml``) named in ``TELESCOP``/``OBSERVAT``/``SITENAME``.
Header longitudes come in both sign conventions (Lowell's LOIS and many NOAO
headers write ``LONGITUD`` positive west); the sign is decided by the known
observatories, then by the keyword's comment, then by convention.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from .instrument import parse_angle

# (latitude, longitude, height) keywords, in the order they are tried.
SITE_GROUPS = [
    ("SITELAT", "SITELONG", ("SITEELEV", "SITEALT")),
    ("LAT-OBS", "LONG-OBS", ("ALT-OBS",)),
    ("OBSLAT", "OBSLONG", ("OBSALT", "OBSELEV")),
    ("ESO TEL GEOLAT", "ESO TEL GEOLON", ("ESO TEL GEOELEV",)),
    ("LATITUDE", "LONGITUD", ("ALTITUDE", "ELEVATIO")),
]
NAME_KEYWORDS = ("TELESCOP", "OBSERVAT", "SITENAME")
US_SITE = re.compile(r"lowell|noao|kpno|kitt|arizona|flagstaff|u\.?s\.?a|hall|perkins|wiyn|mcdonald|palomar|lick",
                     re.IGNORECASE)
# Target position keywords (RA, Dec), best first; CRVAL1/2 is the plate centre, never the target.
TARGET_PAIRS = [("OBJCTRA", "OBJCTDEC"), ("RA_OBJ", "DEC_OBJ"), ("OBJRA", "OBJDEC"), ("TARG_RA", "TARG_DEC"),
                ("CAT-RA", "CAT-DEC"), ("RA", "DEC"), ("TELRA", "TELDEC")]


@dataclass(frozen=True)
class Observatory:
    name: str
    aliases: tuple
    lon: float
    lat: float
    height: float


@cache
def observatories() -> tuple[Observatory, ...]:
    """The known observatories (package data), east-positive longitudes."""
    rows = yaml.safe_load((Path(__file__).parent / "data" / "observatories.yaml").read_text())
    return tuple(Observatory(r["name"], tuple(r["aliases"]), float(r["lon"]), float(r["lat"]), float(r["height"]))
                 for r in rows)


def _alias_in(alias: str, text: str) -> bool:
    if len(alias) <= 4:
        return re.search(rf"(?<![A-Za-z0-9]){re.escape(alias)}(?![A-Za-z0-9])", text, re.IGNORECASE) is not None
    return alias.lower() in text.lower()


def match_name(frames) -> tuple[Observatory, str] | None:
    """The known observatory named in the headers, and the card that named it."""
    for keyword in NAME_KEYWORDS:
        texts = sorted({str(f.header.get(keyword, "")).strip() for f in frames} - {""})
        hits = [(len(a), obs, f"{keyword}={text!r}") for text in texts for obs in observatories()
                for a in obs.aliases if _alias_in(a, text)]
        if hits:
            _, obs, card = max(hits, key=lambda h: h[0])
            return obs, card
    return None


def nearest(lon: float, lat: float, within: float = 0.5) -> Observatory | None:
    """The known observatory within ``within`` degrees (in both coordinates), if any."""
    near = [o for o in observatories()
            if abs((lon - o.lon + 180) % 360 - 180) <= within and abs(lat - o.lat) <= within]
    return min(near, key=lambda o: abs(o.lon - lon) + abs(o.lat - lat)) if near else None


def _median(frames, keyword, unit="deg") -> tuple[float | None, float, str]:
    """Median value of an angle (or number) keyword, its spread, and one card's comment."""
    values, comment = [], ""
    for f in frames:
        raw = f.header.get(keyword)
        if raw is None or str(raw).strip() == "":
            continue
        try:
            values.append(parse_angle(raw if not isinstance(raw, str) else raw.strip(), unit))
        except ValueError:
            continue
        comment = comment or f.header.comments[keyword]
    if not values:
        return None, 0.0, ""
    return statistics.median(values), max(values) - min(values), comment


def _sign(keyword: str, lon: float, lat: float, comment: str, frames) -> tuple[float, str, bool]:
    """East-positive longitude, the reason, and whether it is a guess."""
    east, west = nearest(lon, lat), nearest(-lon, lat)
    if east and not west:
        return lon, f"east-positive: matches known observatory {east.name!r}", False
    if west and not east:
        return -lon, f"{keyword} in these headers is positive west (matches {west.name!r} only so): converted", False
    if re.search(r"\bwest\b|\+w\b|positive w", comment, re.IGNORECASE):
        return -lon, f"{keyword} is positive west (its comment says {comment!r}): converted", False
    if re.search(r"\beast\b|\+e\b|positive e", comment, re.IGNORECASE):
        return lon, f"east-positive (its comment says {comment!r})", False
    names = " ".join(str(f.header.get(k, "")) for f in frames[:1] for k in (*NAME_KEYWORDS, "ORIGIN"))
    if keyword == "LONGITUD" and lon > 0 and (US_SITE.search(names) or (18 < lat < 50 and 65 < lon < 160)):
        return -lon, f"unsigned {keyword} at a US site: read as positive west (NOAO/LOIS habit) and converted", True
    return lon, f"sign convention of {keyword} not stated: read as east-positive (the FITS convention)", True


def decide_site(frames) -> tuple[dict, dict, list[str]]:
    """``(site spec, notes {key: (text, guess)}, todos)`` for the drafted profile."""
    name_match = match_name(frames)
    for lat_key, lon_key, height_keys in SITE_GROUPS:
        lat, lat_spread, _ = _median(frames, lat_key)
        lon, lon_spread, comment = _median(frames, lon_key)
        if lat is None or lon is None:
            continue
        lon, why, guess = _sign(lon_key, lon, lat, comment, frames)
        spec = {"longitude": {"value": round(lon, 6)}, "latitude": {"value": round(lat, 6)}}
        notes = {"longitude": (f"from {lon_key} ({_coverage(frames, lon_key)}); {why}", guess),
                 "latitude": (f"from {lat_key} ({_coverage(frames, lat_key)})", False)}
        todos = []
        if max(lat_spread, lon_spread) > 0.01:
            todos.append(f"site: {lat_key}/{lon_key} differ by up to {max(lat_spread, lon_spread):.3f} deg "
                         "between files: check which site these frames come from and fix site.longitude/latitude")
        _height(frames, spec, notes, height_keys, lon, lat)
        return spec, notes, todos
    geo = _geocentric(frames)
    if geo is not None:
        lon, lat, height, source = geo
        spec = {"longitude": {"value": lon}, "latitude": {"value": lat}, "height": {"value": height}}
        notes = {k: (f"from OBSGEO-X/Y/Z (geocentric metres) of {source}", False) for k in spec}
        return spec, notes, []
    if name_match is not None:
        obs, card = name_match
        spec = {"longitude": {"value": obs.lon}, "latitude": {"value": obs.lat}, "height": {"value": obs.height}}
        notes = {k: (f"known observatory {obs.name!r} matched on {card}", False) for k in spec}
        return spec, notes, []
    names = sorted({f"{k}={str(f.header[k]).strip()!r}" for f in frames for k in NAME_KEYWORDS if k in f.header})
    return {}, {}, [(f"no site keywords and no known observatory in {', '.join(names) or 'TELESCOP/OBSERVAT (absent)'}"
                     ": give site.longitude (deg east), site.latitude and site.height as {value: ...}; without "
                     "them times are barycentric from the geocentre and nights are the UTC date of UTC - 12 h")]


def _height(frames, spec, notes, height_keys, lon, lat) -> None:
    """The site height: the group's own keyword, else another site group's present in the headers
    (never ALTITUDE without LATITUDE: MaxIm writes the pointing altitude there), else a known observatory's."""
    others = [k for la, _, keys in SITE_GROUPS if any(la in f.header for f in frames) for k in keys]
    for key in dict.fromkeys([*height_keys, *others]):
        value, spread, _ = _median(frames, key, unit="number")
        if value is not None and spread < 1.0 and -100 < value < 6000:
            spec["height"] = {"value": round(value, 1)}
            notes["height"] = (f"from {key} ({_coverage(frames, key)})", False)
            return
    obs = nearest(lon, lat, within=0.1)
    if obs is not None:
        spec["height"] = {"value": obs.height}
        notes["height"] = (f"no height keyword: that of known observatory {obs.name!r}", True)


def _coverage(frames, keyword) -> str:
    n = sum(1 for f in frames if str(f.header.get(keyword, "")).strip())
    return f"in all {n} files" if n == len(frames) else f"in {n} of {len(frames)} files"


def _geocentric(frames):
    keys = ("OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z")
    for f in frames:
        if all(k in f.header for k in keys):
            import astropy.units as u
            from astropy.coordinates import EarthLocation

            x, y, z = (float(f.header[k]) for k in keys)
            geo = EarthLocation.from_geocentric(x, y, z, unit=u.m).to_geodetic()
            return round(float(geo.lon.deg), 6), round(float(geo.lat.deg), 6), round(float(geo.height.to_value(u.m)), 1), f.name
    return None


def decide_target(frames) -> tuple[dict, dict, list[str]]:
    """``(target spec, notes, todos)``: RA/Dec keywords and the RA unit."""
    for ra_key, dec_key in TARGET_PAIRS:
        ras = [(f.header[ra_key], f.header.comments[ra_key]) for f in frames
               if str(f.header.get(ra_key, "")).strip() and str(f.header.get(dec_key, "")).strip()]
        if not ras:
            continue
        texts = [str(v).strip() for v, _ in ras]
        notes = {}
        if any(":" in t or " " in t for t in texts):
            unit = "hourangle"
            notes["ra_unit"] = (f"{ra_key} is sexagesimal ({texts[0]!r}): hours", False)
        else:
            numbers = [float(t) for t in texts]
            comment = ras[0][1].lower()
            if max(numbers) > 24 or "deg" in comment:
                unit, why, guess = "deg", f"plain numbers up to {max(numbers):g}: degrees", False
            elif "hour" in comment or "hms" in comment:
                unit, why, guess = "hourangle", f"its comment says {ras[0][1]!r}: hours", False
            else:
                unit, why, guess = "hourangle", f"every {ra_key} is <= 24: read as hours", True
            notes["ra_unit"] = (why, guess)
        spec = {"ra": ra_key, "dec": dec_key, "ra_unit": unit}
        return spec, notes, []
    return {}, {}, []
