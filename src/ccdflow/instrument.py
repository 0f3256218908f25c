"""Instrument profiles: from any instrument's FITS header to normalised fields.

A profile (``config/instruments/<name>.yaml``, validated against
``workflow/schemas/instrument.schema.yaml``) says which keyword holds what.
:func:`normalise_header` applies it and returns one flat record per frame;
everything downstream reads that record, never raw keywords.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import timeutil
from .configcheck import error_line
from .fitsheader import FrameReadError
from .paths import schema_path
from .sections import parse_section

FRAME_TYPES = ("bias", "dark", "flat", "science")
DEFAULT_ALIASES = {
    "bias": ["BIAS", "ZERO", "BIAS FRAME"],
    "dark": ["DARK", "DARK FRAME"],
    "flat": ["FLAT", "SKYFLAT", "DOMEFLAT", "TWILIGHT", "TWIFLAT", "FLAT FIELD", "FLATFIELD"],
    "science": ["LIGHT", "OBJECT", "SCIENCE", "LIGHT FRAME"],
}


class MissingKeyword(FrameReadError):
    """A keyword the profile requires is absent or unreadable."""


@dataclass(frozen=True)
class Profile:
    """A validated instrument profile."""

    name: str
    spec: dict
    source: str  # file it came from

    def get(self, key: str, default: Any = None) -> Any:
        return self.spec.get(key, default)


def validate_profile(spec: dict, origin: str = "<profile>") -> None:
    """Validate a profile mapping against the schema; each error is one line naming the
    key, the value given and what is allowed (:func:`ccdflow.configcheck.error_line`)."""
    import jsonschema

    schema = yaml.safe_load(schema_path("instrument.schema.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(spec), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [f"  {error_line(err, schema)}" for err in errors]
        raise ValueError(f"instrument profile {origin} is invalid:\n" + "\n".join(lines))


def load_profile(name_or_path: str | Path, search_dirs: list[str | Path] = ()) -> Profile:
    """Load and validate a profile by file path or by name in ``search_dirs``."""
    candidate = Path(name_or_path)
    if not candidate.suffix:
        for folder in search_dirs:
            path = Path(folder) / f"{name_or_path}.yaml"
            if path.exists():
                candidate = path
                break
    if not candidate.exists():
        where = ", ".join(str(d) for d in search_dirs) or "."
        raise FileNotFoundError(f"instrument profile {name_or_path!r} not found (looked in {where})")
    spec = yaml.safe_load(candidate.read_text())
    validate_profile(spec, str(candidate))
    return Profile(spec["name"], spec, str(candidate))


# -- reading values ---------------------------------------------------------------

_MISSING = object()


def _lookup(header, source, what: str, required: bool):
    """Resolve a profile "source" (keyword, constant or mapping) on a header."""
    if source is None:
        if required:
            raise MissingKeyword(f"profile gives no source for {what}")
        return None
    if isinstance(source, (int, float)) and not isinstance(source, bool):
        return source
    if isinstance(source, str):
        source = {"keyword": source}
    if "value" in source:
        return source["value"]
    keywords = source.get("keywords") or ([source["keyword"]] if "keyword" in source else [])
    for keyword in keywords:
        try:
            value = header.get(keyword, _MISSING)
        except Exception as err:  # malformed card: astropy raises on access
            raise MissingKeyword(f"keyword {keyword} is malformed: {err}") from None
        if value is not _MISSING and value is not None and str(value).strip() != "":
            _check_single(header, keyword, what)
            return value.strip() if isinstance(value, str) else value
    if "default" in source:
        return source["default"]
    if required:
        raise MissingKeyword(f"missing required keyword {' or '.join(keywords)} ({what})")
    return None


def _check_single(header, keyword: str, what: str) -> None:
    """A keyword written twice with different values (a second EXPTIME card, say)
    leaves the frame's value unknown: astropy would quietly take the first."""
    if header.count(keyword) > 1:
        values = {str(card.value).strip() for card in header.cards if card.keyword == keyword.upper()}
        if len(values) > 1:
            raise MissingKeyword(f"keyword {keyword} ({what}) appears {header.count(keyword)} times with "
                                 f"different values ({', '.join(sorted(values))}); remove the wrong card")


def _number(value, what: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MissingKeyword(f"{what} is not a number: {value!r}") from None


_SEXAGESIMAL = re.compile(r"^\s*([+-]?)\s*(\d+)[\s:hd]+(\d+)[\s:m']+(\d+(?:\.\d*)?)\s*[s\"]?\s*$")


def parse_angle(value, unit: str = "deg") -> float | None:
    """Degrees from a number or a sexagesimal string ('16 02 11.83', '+28:10:10.7').

    ``unit='hourangle'`` multiplies sexagesimal or numeric hours by 15.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _SEXAGESIMAL.match(str(value))
        if match:
            sign = -1.0 if match.group(1) == "-" else 1.0
            number = sign * (int(match.group(2)) + int(match.group(3)) / 60 + float(match.group(4)) / 3600)
        else:
            number = float(value)
            if unit == "hourangle" and ":" not in str(value) and " " not in str(value).strip():
                return number  # a plain decimal RA is degrees by convention
    return number * 15.0 if unit == "hourangle" else number


def classify(header, filename: str, profile: Profile) -> tuple[str | None, str]:
    """Return ``(frame type or None if ignored, raw type text)``."""
    spec = profile.get("frame_type", {})
    aliases = {kind: [a.upper() for a in names] for kind, names in DEFAULT_ALIASES.items()}
    for kind, names in (spec.get("aliases") or {}).items():
        aliases[kind] = [a.upper() for a in names]
    ignore = {v.upper() for v in spec.get("ignore", [])}
    raw_text = ""
    for keyword in spec.get("keywords", ["IMAGETYP"]):
        value = header.get(keyword)
        if value is None or str(value).strip() == "":
            continue
        raw_text = str(value).strip()
        upper = raw_text.upper()
        if upper in ignore:
            return None, raw_text
        for kind in FRAME_TYPES:
            if upper in aliases[kind]:
                return kind, raw_text
    obj = str(header.get("OBJECT", "") or "")
    for rule in spec.get("rules", []):
        target = filename if rule["field"] == "filename" else obj
        if fnmatch.fnmatch(target.lower(), rule["pattern"].lower()):
            return rule["type"], raw_text or f"rule:{rule['pattern']}"
    if spec.get("default"):
        return spec["default"], raw_text or "default"
    if raw_text:
        raise MissingKeyword(f"unknown frame type {raw_text!r} (not in the profile's aliases)")
    raise MissingKeyword("no frame-type keyword and no profile rule matched")


def _binning(header, profile: Profile) -> str:
    spec = profile.get("binning") or {"keyword": "CCDSUM", "x": {"keyword": "XBINNING", "default": 1}}
    if "keyword" in spec and header.get(spec["keyword"]) is not None:
        parts = str(header[spec["keyword"]]).split()
        if len(parts) == 2:
            return f"{int(parts[0])}x{int(parts[1])}"
    bx = _lookup(header, spec.get("x", {"keyword": "XBINNING", "default": 1}), "x binning", False) or 1
    by = _lookup(header, spec.get("y", {"keyword": "YBINNING", "default": bx}), "y binning", False) or bx
    return f"{int(float(bx))}x{int(float(by))}"


def _observation_time(header, profile: Profile, exptime: float):
    spec = profile.get("time")
    if spec.get("iso"):
        stamp_text = _lookup(header, spec["iso"], "observation time", True)
        stamp = timeutil.parse_iso_utc(stamp_text)
    elif spec.get("date") and spec.get("time"):
        day = _lookup(header, spec["date"], "observation date", True)
        tod = _lookup(header, spec["time"], "observation time of day", True)
        stamp_text = f"{day} {tod}"
        stamp = timeutil.parse_date_and_time(str(day), str(tod))
    elif spec.get("mjd") or spec.get("jd"):
        keyword = spec.get("mjd") or spec.get("jd")
        number = _number(_lookup(header, keyword, "observation time", True), keyword)
        stamp_text = str(number)
        stamp = timeutil.from_mjd(number if spec.get("mjd") else number - timeutil.JD_MINUS_MJD)
    else:
        raise MissingKeyword("profile time block names no keyword")
    return stamp_text, timeutil.mid_exposure(stamp, exptime, spec["anchor"])


def _site(header, profile: Profile) -> dict:
    """Site longitude (deg, east positive, -180..180), latitude and height from the
    profile; failing those, from the FITS-standard OBSGEO-X/Y/Z (geocentric metres)."""
    site = profile.get("site") or {}
    lon = parse_angle(_lookup(header, site.get("longitude"), "site longitude", False))
    lat = parse_angle(_lookup(header, site.get("latitude"), "site latitude", False))
    height = _number(_lookup(header, site.get("height"), "site height", False), "site height")
    if lon is not None and site.get("longitude_positive", "east") == "west":
        lon = -lon
    if (lon is None or lat is None) and all(header.get(f"OBSGEO-{c}") is not None for c in "XYZ"):
        import erfa
        import numpy as np

        xyz = np.array([_number(header[f"OBSGEO-{c}"], f"OBSGEO-{c}") for c in "XYZ"])
        if np.hypot(*xyz[:2]) > 1e6:  # metres from the Earth's centre, not a placeholder 0
            elon, phi, height = erfa.gc2gd(1, xyz)  # WGS84
            lon, lat = float(np.degrees(elon)), float(np.degrees(phi))
    if lon is not None:
        lon = (float(lon) + 180.0) % 360.0 - 180.0
    return {"site_lon": lon, "site_lat": lat, "site_height": height}


def _section_text(header, source, shape_xy, required: bool = True) -> str | None:
    """A section as its FITS string; validated against the frame shape.

    ``required=False``: a missing keyword gives None (the profile's amplifiers
    block describes the sections instead).
    """
    if source is None:
        return None
    text = source if str(source).lstrip().startswith("[") else header.get(source)
    if text is None and not required:
        return None
    if text is None:
        raise MissingKeyword(f"missing section keyword {source}")
    section = parse_section(str(text))
    if not section.fits_within((shape_xy[1], shape_xy[0])):
        raise MissingKeyword(f"section {text} lies outside the {shape_xy[0]}x{shape_xy[1]} frame")
    return section.to_fits()


def _template(header, template, n: int, what: str, numeric: bool):
    """Resolve an amplifier template: a keyword pattern with {n}, a literal, or a number."""
    if isinstance(template, (int, float)):
        return float(template)
    text = str(template).format(n=n)
    if text.lstrip().startswith("["):
        return text
    value = header.get(text)
    if value is None:
        raise MissingKeyword(f"missing amplifier keyword {text} ({what} of amplifier {n})")
    return _number(value, text) if numeric else str(value)


def _amplifiers(header, profile: Profile, record: dict, shape_xy, extensions=None, offsets=None) -> str:
    """The amplifier list as JSON (see :class:`ccdflow.overscan.Amplifier`)."""
    sections = profile.get("sections") or {}
    exclude = sections.get("overscan_exclude_columns", [])
    axis = sections.get("readout_axis", "rows")
    spec = sections.get("amplifiers")
    count = (int(_number(_lookup(header, spec.get("count", {"value": 1}), "amplifier count", True), "amplifier count"))
             if spec and not extensions else 1)
    if extensions:
        amps = _extension_amplifiers(extensions, offsets, spec, record)
    # A one-amplifier frame without the numbered keywords falls back to the plain fields.
    elif not spec or (count == 1 and str(spec["data"]).format(n=1) not in header):
        if record["data_section"] is None:
            raise MissingKeyword(f"missing section keyword {sections.get('data')} and amplifier keyword "
                                 f"{str(spec['data']).format(n=1)}")
        amps = [{"data": record["data_section"], "overscan": record["overscan_section"],
                 "gain": record["gain"], "read_noise": record["read_noise"], "output": "",
                 "bias_level": record["bias_level"]}]
    else:
        amps = []
        for n in range(1, count + 1):
            amp = {"data": _section_text(header, _template(header, spec["data"], n, "data section", False), shape_xy),
                   "overscan": "", "output": "",
                   "gain": _template(header, spec.get("gain", record["gain"] or 1.0), n, "gain", True),
                   "read_noise": _template(header, spec.get("read_noise", record["read_noise"] or 0.0), n,
                                           "read noise", True)}
            if spec.get("overscan"):
                amp["overscan"] = _section_text(
                    header, _template(header, spec["overscan"], n, "overscan section", False), shape_xy)
            if spec.get("output"):
                amp["output"] = str(_template(header, spec["output"], n, "output section", False))
            if spec.get("bias_level", record["bias_level"]) is not None:
                amp["bias_level"] = _template(header, spec.get("bias_level", record["bias_level"]), n, "bias level",
                                              True)
            amps.append(amp)
    for amp in amps:
        amp.update(exclude_columns=exclude, readout_axis=axis)
    return json.dumps(amps, separators=(",", ":"))


def _extension_amplifiers(extensions, offsets, spec, record) -> list[dict]:
    """One amplifier per image extension (``extensions: amplifiers``): the profile's
    amplifier keywords read from each extension's own header, sections shifted to
    where the extension sits in the joined frame (see :mod:`ccdflow.mosaic`)."""
    from .mosaic import output_sections, shifted

    if not spec:
        raise MissingKeyword("the profile says `extensions: amplifiers` but has no `sections: amplifiers:` block "
                             "naming each extension's data section keyword (e.g. `data: DATASEC`)")
    amps, detsecs, shapes = [], [], []
    for n, (ext, dx) in enumerate(zip(extensions, offsets), 1):
        shape = (int(ext["NAXIS1"]), int(ext["NAXIS2"]))
        data = _section_text(ext, _template(ext, spec["data"], n, "data section", False), shape)
        amp = {"data": shifted(data, dx), "overscan": "", "output": "",
               "gain": _template(ext, spec.get("gain", record["gain"] or 1.0), n, "gain", True),
               "read_noise": _template(ext, spec.get("read_noise", record["read_noise"] or 0.0), n, "read noise",
                                       True)}
        if spec.get("overscan"):
            amp["overscan"] = shifted(_section_text(ext, _template(ext, spec["overscan"], n, "overscan section",
                                                                   False), shape), dx)
        if spec.get("output"):
            detsecs.append(str(_template(ext, spec["output"], n, "output section", False)))
            shapes.append(parse_section(data).shape)
        amps.append(amp)
    for amp, out in zip(amps, output_sections(detsecs, shapes) if detsecs else []):
        amp["output"] = out
    return amps


# Optional fields a profile may read from a keyword: one that no header of the
# night holds is a profile mistake (a constant written bare, `detector: my-ccd`,
# is read as the keyword MY-CCD), found by :func:`ccdflow.inventory.check_profile_keywords`.
OPTIONAL_FIELDS = (("object",), ("detector",), ("gain",), ("read_noise",), ("saturation",), ("filter",),
                   ("site", "longitude"), ("site", "latitude"), ("site", "height"),
                   ("binning", "x"), ("binning", "y"), ("target", "ra"), ("target", "dec"))


def keyword_sources(profile: Profile) -> dict[str, list[str]]:
    """``field -> keywords`` for the optional fields read from keywords alone
    (no ``value``, no ``default``): those a night's headers must hold somewhere."""
    out = {}
    for path in OPTIONAL_FIELDS:
        source = profile.spec
        for part in path:
            source = source.get(part) if isinstance(source, dict) else None
        if isinstance(source, str):
            out[".".join(path)] = [source]
        elif isinstance(source, dict) and "value" not in source and "default" not in source:
            keywords = source.get("keywords") or ([source["keyword"]] if "keyword" in source else [])
            if keywords:
                out[".".join(path)] = list(keywords)
    return out


def absent_keywords(header, profile: Profile) -> list[str]:
    """The optional fields whose keywords this header lacks (``field=KEY|KEY``)."""
    return [f"{name}={'|'.join(keywords)}" for name, keywords in keyword_sources(profile).items()
            if not any(header.get(k) not in (None, "") for k in keywords)]


def normalise_header(header, path: str | Path, profile: Profile, extensions=None, offsets=None) -> dict:
    """Map one raw header to ccdflow's normalised record.

    Raises :class:`MissingKeyword` (a :class:`FrameReadError`) naming the
    keyword or value at fault. ``imagetyp`` is None for frames the profile
    ignores. ``extensions``/``offsets``: the image extensions' headers of a
    multi-extension file read as one frame, and their column offsets in it
    (:mod:`ccdflow.mosaic`).
    """
    filename = Path(path).name
    imagetyp, raw_type = classify(header, filename, profile)
    shape_xy = (int(header.get("NAXIS1", 0)), int(header.get("NAXIS2", 0)))
    if int(header.get("NAXIS", 0)) != 2 or 0 in shape_xy:
        raise MissingKeyword(f"not a 2-D image (NAXIS={header.get('NAXIS')}, shape {shape_xy})")
    exptime = _number(_lookup(header, profile.get("exptime"), "exposure time", True), "exposure time")
    if exptime < 0:
        raise MissingKeyword(f"negative exposure time {exptime}")
    stamp_text, mid = _observation_time(header, profile, exptime)
    needs_filter = imagetyp in ("flat", "science")
    filt = _lookup(header, profile.get("filter", {"keyword": "FILTER", "default": "NONE"}), "filter", needs_filter)
    sections = profile.get("sections") or {}
    # with an amplifiers block the top-level sections are optional
    amplified = bool(sections.get("amplifiers")) or bool(extensions)
    target = profile.get("target") or {}
    ra_unit = target.get("ra_unit", "hourangle")
    try:
        ra = parse_angle(_lookup(header, target.get("ra"), "target RA", False), ra_unit)
        dec = parse_angle(_lookup(header, target.get("dec"), "target Dec", False), "deg")
    except ValueError:
        ra = dec = None  # coordinates are optional; a bad one must not lose the frame
    record = {
        "imagetyp": imagetyp,
        "raw_type": raw_type,
        "object": str(_lookup(header, profile.get("object", {"keyword": "OBJECT", "default": ""}), "object", False) or ""),
        "exptime": exptime,
        "filter": str(filt if filt is not None else "NONE").strip() or "NONE",
        "binning": _binning(header, profile),
        "detector": str(_lookup(header, profile.get("detector", {"value": profile.name}), "detector", False)),
        "gain": _number(_lookup(header, profile.get("gain"), "gain", False), "gain"),
        "read_noise": _number(_lookup(header, profile.get("read_noise"), "read noise", False), "read noise"),
        "saturation": _number(_lookup(header, profile.get("saturation"), "saturation", False), "saturation"),
        "bias_level": _number(_lookup(header, profile.get("bias_level"), "bias level", False), "bias level"),
        "naxis1": shape_xy[0],
        "naxis2": shape_xy[1],
        "date_obs_raw": stamp_text,
        "mid_utc": timeutil.iso(mid),
        "mjd_mid": timeutil.to_mjd(mid),
        "data_section": _section_text(header, sections.get("data"), shape_xy, not amplified)
        or (None if amplified and sections.get("data") else f"[1:{shape_xy[0]},1:{shape_xy[1]}]"),
        "overscan_section": _section_text(header, sections.get("overscan"), shape_xy, not amplified) or "",
        "ra_deg": ra,
        "dec_deg": dec,
        **_site(header, profile),
        "instrument": profile.name,
    }
    record["amplifiers"] = _amplifiers(header, profile, record, shape_xy, extensions, offsets)
    record["absent_keywords"] = ";".join(absent_keywords(header, profile))
    record["noise_estimated"] = "; ".join(f"{key} {profile.get(key)['estimated']}"
                                          for key in ("gain", "read_noise", "bias_level")
                                          if isinstance(profile.get(key), dict) and profile.get(key).get("estimated"))
    if record["data_section"] is None:  # amplifiers only: the box around their data sections
        record["data_section"] = _bounding_section(json.loads(record["amplifiers"]))
    return record


def _bounding_section(amps: list[dict]) -> str:
    boxes = [parse_section(a["data"]) for a in amps]
    return (f"[{min(b.x0 for b in boxes) + 1}:{max(b.x1 for b in boxes)},"
            f"{min(b.y0 for b in boxes) + 1}:{max(b.y1 for b in boxes)}]")
