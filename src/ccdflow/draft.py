"""Draft an instrument profile and a night config from raw FITS headers (``ccdflow init``).

Only headers are read, never pixels. :func:`draft_profile` decides each field of a
profile (``config/instruments/*.yaml``) from the keywords the frames carry and
returns a :class:`Draft`: the profile mapping, a note per decision (``guess``
when nothing in the headers confirms it), ``TODO`` items for what it could not
decide, and a preview: every header run through the drafted profile
(:func:`ccdflow.instrument.normalise_header`), as the inventory would.
:mod:`ccdflow.drafttime` decides the time block, :mod:`ccdflow.draftsite` the site and
target; :mod:`ccdflow.draftio` finds the files, reads their headers and writes the
profile, the night config and the report (``ccdflow init`` calls its :func:`init_night`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from astropy.io import fits

from .draftsite import decide_site, decide_target
from .drafttime import decide_time
from .fitsheader import FrameReadError
from .instrument import (
    DEFAULT_ALIASES,
    FRAME_TYPES,
    Profile,
    classify,
    normalise_header,
)
from .inventory import NightRule
from .sections import parse_section

TYPE_KEYWORDS = ("IMAGETYP", "OBSTYPE", "IMGTYPE", "FRAMETYP", "EXPTYPE", "ESO DPR TYPE")
KNOWN_TYPES = {
    "bias": {"BIAS", "ZERO", "BIAS FRAME", "BIASFRAME", "ZERO FRAME"},
    "dark": {"DARK", "DARK FRAME", "DARKFRAME", "DARK CURRENT"},
    "flat": {"FLAT", "FLAT FIELD", "FLATFIELD", "FLAT FRAME", "SKYFLAT", "SKY FLAT", "DOMEFLAT", "DOME FLAT",
             "TWILIGHT", "TWIFLAT", "TWILIGHT FLAT", "FLAT SKY", "FLAT LAMP", "FLAT DOME", "FLAT TWILIGHT",
             "LAMPFLAT", "LAMP FLAT", "SFLAT", "DFLAT"},
    "science": {"LIGHT", "LIGHT FRAME", "LIGHTFRAME", "OBJECT", "SCIENCE", "SCI", "TARGET", "STANDARD", "STD"},
}
IGNORE_TYPES = {"FOCUS", "TEST", "ACQUISITION", "ACQ", "POINTING", "ARC", "COMP", "COMPARISON", "LAMP",
                "ENGINEERING", "JUNK", "GUIDE", "SETUP", "FOCUS FRAME", "TEST FRAME"}
NAME_RULES = [("bias*", "bias"), ("zero*", "bias"), ("dark*", "dark"), ("*flat*", "flat")]
EXPTIME_KEYWORDS = ("EXPTIME", "EXPOSURE", "ITIME", "EXPOSED", "EXP_TIME", "EXPTIM", "TEXPTIME")
FILTER_KEYWORDS = ("FILTER", "FILTNAME", "FILTER1", "INSFILTE", "FILTERS", "FILTER2", "FILT", "ESO INS FILT1 NAME")
OBJECT_KEYWORDS = ("OBJECT", "OBJNAME", "TARGNAME", "ESO OBS TARG NAME")
DETECTOR_KEYWORDS = ("DETECTOR", "INSTRUME", "CCDNAME", "CAMERA")
GAIN_KEYWORDS = ("GAIN", "EGAIN", "CCDGAIN", "ESO DET OUT1 CONAD", "GAIN1", "GAIN01", "GAIN_1", "AGAIN_01")
NOISE_KEYWORDS = ("RDNOISE", "READNOIS", "RON", "RDNOIS", "ENOISE", "ESO DET OUT1 RON", "RDNOISE1", "RDNOISE01",
                  "ARDNS_01")
SATURATION_KEYWORDS = ("SATURATE", "SATLEVEL", "DATAMAX", "MAXLIN")
COUNT_KEYWORDS = ("NAMPS", "NAMPLIF", "NUMAMPS", "NUMAMP", "NAMP")
AMP_BASES = {"data": ("TRIMSEC", "DATASEC", "TRIM", "DSEC"), "overscan": ("BIASSEC", "BIAS", "OVSCSEC", "BSEC"),
             "gain": ("GAIN", "AGAIN_", "EGAIN", "GAIN_"), "read_noise": ("RDNOISE", "ARDNS_", "RDNOIS", "RON")}
NUMBERING = ("{n}", "{n:02d}", "_{n}", "_{n:02d}")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Frame:
    path: str
    name: str
    header: fits.Header
    kind: str | None = None        # frame type by the drafted frame_type block
    exptime: float | None = None   # by the drafted exptime source


@dataclass(frozen=True)
class Todo:
    key: str            # the profile key to fill in ("gain", "frame_type.aliases", "site"...)
    text: str
    values: tuple = ()  # the header values concerned (unknown frame types)


@dataclass
class Draft:
    name: str
    spec: dict
    notes: dict = field(default_factory=dict)   # dotted key -> (text, is_guess)
    todos: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)  # (path, reason)
    rows: list = field(default_factory=list)        # preview: normalised records, or {"error": ...}

    def guesses(self) -> list[str]:
        return [f"{key}: {text}" for key, (text, guess) in self.notes.items() if guess]


def _text(frame, keyword) -> str:
    value = frame.header.get(keyword)
    return "" if value is None else str(value).strip()


def _pick(frames, candidates) -> list[str]:
    """Keywords to read, best first: the one most frames carry, then any that fill the gaps."""
    counts = {k: sum(1 for f in frames if _text(f, k)) for k in candidates}
    ranked = sorted((k for k in candidates if counts[k]), key=lambda k: -counts[k])
    chosen, covered = [], set()
    for keyword in ranked:
        gain = {f.path for f in frames if _text(f, keyword)} - covered
        if gain:
            chosen.append(keyword)
            covered |= gain
    return chosen


def _source(keywords, default=None):
    """A profile source: a bare keyword, ``{keywords: [...]}``, with ``default`` when given."""
    if default is None:
        return keywords[0] if len(keywords) == 1 else {"keywords": keywords}
    key = {"keyword": keywords[0]} if len(keywords) == 1 else {"keywords": keywords}
    return {**key, "default": default}


def _norm(value: str) -> str:
    return re.sub(r"[\s_,;-]+", " ", value.upper()).strip()


def decide_frame_type(d: Draft) -> None:
    frames, keywords = d.frames, _pick(d.frames, TYPE_KEYWORDS)
    seen = Counter(_text(f, k).upper() for f in frames for k in keywords if _text(f, k))
    aliases, ignore, unknown = {}, [], []
    for value in sorted(seen):
        kind = next((t for t, names in KNOWN_TYPES.items() if _norm(value) in names), None)
        if kind:
            aliases.setdefault(kind, []).append(value)
        elif _norm(value) in IGNORE_TYPES:
            ignore.append(value)
        else:
            unknown.append(value)
    spec = {"keywords": keywords or ["IMAGETYP"]}
    if aliases:
        spec["aliases"] = {t: list(dict.fromkeys([*DEFAULT_ALIASES[t], *aliases[t]])) for t in FRAME_TYPES if t in aliases}
    if ignore:
        spec["ignore"] = ignore
    untyped = [f for f in frames if not any(_text(f, k) for k in keywords)]
    if untyped:
        rules = [{"field": "filename", "pattern": p, "type": t} for p, t in NAME_RULES]
        rules += [{"field": "object", "pattern": p, "type": t} for p, t in NAME_RULES
                  if any(_match(p, _text(f, "OBJECT")) and not _match(p, f.name) for f in untyped)]
        spec.update(rules=rules, default="science")
        typed = sum(1 for f in untyped if any(_match(r["pattern"], f.name if r["field"] == "filename"
                                                     else _text(f, "OBJECT")) for r in rules))
        d.notes["frame_type.default"] = ((f"{len(untyped)} files have no type keyword: typed by file name or "
                                          "OBJECT (bias*, zero*, dark*, *flat*), any other is science"), True)
        if not typed:
            d.todos.append(Todo("frame_type.rules", "no type keyword, and no file name or OBJECT says bias, dark "
                                "or flat: add frame_type.rules ({field: filename, pattern: ..., type: ...})"))
    d.spec["frame_type"] = spec
    for value in unknown:
        files = [f.name for f in frames if value in (_text(f, k).upper() for k in keywords)]
        d.todos.append(Todo("frame_type.aliases", f"frame type {value!r} ({'/'.join(keywords)}; {len(files)} file{'s' * (len(files) != 1)}, "
                            f"e.g. {files[0]}) is not a known type: add it to frame_type.aliases.<bias|dark|flat|"
                            "science> or frame_type.ignore (until then those files are quarantined)", (value,)))
    probe = Profile(d.name, {"frame_type": spec}, "<draft>")
    for f in frames:
        try:
            f.kind = classify(f.header, f.name, probe)[0]
        except FrameReadError:
            f.kind = None


def _match(pattern: str, text: str) -> bool:
    import fnmatch

    return bool(text) and fnmatch.fnmatch(text.lower(), pattern.lower())


def decide_keywords(d: Draft) -> None:
    frames = d.frames
    exptime = _pick(frames, EXPTIME_KEYWORDS)
    if not exptime:
        d.spec["exptime"] = "EXPTIME"
        d.todos.append(Todo("exptime", f"no exposure-time keyword ({', '.join(EXPTIME_KEYWORDS)}): name the "
                            "keyword holding seconds (every frame is quarantined until then)"))
    else:
        missing = [f for f in frames if not any(_text(f, k) for k in exptime)]
        zero = missing and all(f.kind == "bias" for f in missing)
        d.spec["exptime"] = _source(exptime, 0 if zero else None)
        if zero:
            d.notes["exptime"] = (f"{len(missing)} bias frames have no {exptime[0]}: read as 0 s", True)
    for f in frames:
        f.exptime = next(iter(_numbers([f], k) for k in exptime if _numbers([f], k)), [None])[0]
    imaged = [f for f in frames if f.kind in ("flat", "science")] or frames
    filt = _pick(imaged, FILTER_KEYWORDS) or _pick(frames, FILTER_KEYWORDS)
    d.spec["filter"] = _source(filt, "NONE") if filt else {"value": "NONE"}
    if not filt:
        d.notes["filter"] = ("no filter keyword: every frame is filter NONE", True)
    d.spec["object"] = _source(_pick(frames, OBJECT_KEYWORDS) or ["OBJECT"], "")
    detector = next((k for k in DETECTOR_KEYWORDS if all(_text(f, k) for f in frames)), None)
    d.spec["detector"] = {"keyword": detector, "default": d.name} if detector else {"value": d.name}


def decide_noise(d: Draft, noise, amp_template: dict) -> None:
    for key, candidates, attr, unit in (("gain", GAIN_KEYWORDS, "gain", "e-/ADU"),
                                        ("read_noise", NOISE_KEYWORDS, "read_noise", "e-")):
        keywords = [k for k in _pick(d.frames, candidates) if _numbers(d.frames, k)]
        estimate = getattr(noise, attr, None) if noise is not None else None
        if keywords:
            d.spec[key] = _source(keywords)
            if estimate is not None:
                d.notes[key] = (f"the frames say {estimate:.3g} {unit} ({noise.describe()})", False)
        elif estimate is not None:
            error = getattr(noise, f"{attr}_err", None)
            d.spec[key] = {"value": round(float(estimate), 3),
                           "estimated": f"{noise.method} +/- {error:.2g}" if error is not None else noise.method}
            d.notes[key] = (f"estimated from the frames: {noise.describe()}", False)
        elif key not in amp_template:
            d.todos.append(Todo(key, f"no {key.replace('_', ' ')} keyword ({', '.join(candidates[:5])}...): measure "
                                f"it (photon transfer from two flats and two biases) and write `{key}: {{value: ...}}` "
                                f"({unit})"))


def _numbers(frames, keyword) -> list[float]:
    values = []
    for f in frames:
        try:
            values.append(float(f.header[keyword]))
        except (KeyError, TypeError, ValueError):
            pass
    return values


def decide_saturation(d: Draft) -> None:
    for keyword in SATURATION_KEYWORDS:
        values = _numbers(d.frames, keyword)
        if len(values) == len(d.frames) and len(set(values)) <= 3 and min(values) > 0:
            d.spec["saturation"] = keyword
            return
    header = d.frames[0].header
    bitpix, bzero = int(header.get("BITPIX", 16)), float(header.get("BZERO", 0) or 0)
    top = {8: 255, 16: 65535 if bzero == 32768 else 32767, 32: 4294967295 if bzero == 2**31 else 2147483647}
    if bitpix not in top:
        d.todos.append(Todo("saturation", f"no saturation keyword and BITPIX {bitpix} (floating point): write "
                            "`saturation: {value: ...}` (ADU)"))
        return
    d.spec["saturation"] = {"value": round(0.95 * top[bitpix])}
    unsigned = ", BZERO 32768: unsigned 16-bit" if bitpix == 16 and bzero == 32768 else ""
    d.notes["saturation"] = ((f"no saturation keyword: 0.95 x {top[bitpix]} (BITPIX {bitpix}{unsigned}); "
                              "set the level where the detector stops being linear"), True)


def decide_binning(d: Draft) -> None:
    frames = d.frames
    if all(len(_text(f, "CCDSUM").split()) == 2 for f in frames):
        d.spec["binning"] = {"keyword": "CCDSUM"}
        return
    for kx, ky in (("XBINNING", "YBINNING"), ("BINX", "BINY"), ("CCDXBIN", "CCDYBIN"), ("XBIN", "YBIN")):
        if any(_text(f, kx) for f in frames):
            d.spec["binning"] = {"x": {"keyword": kx, "default": 1}, "y": {"keyword": ky, "default": 1}}
            return
    d.spec["binning"] = {"x": {"value": 1}, "y": {"value": 1}}
    d.notes["binning"] = ("no binning keyword (CCDSUM, XBINNING...): 1x1", True)


def decide_sections(d: Draft) -> dict:
    """The sections block; returns the per-amplifier templates found (for gain and read noise)."""
    frames, sections = d.frames, {}
    for key, candidates in (("data", ("TRIMSEC", "DATASEC")), ("overscan", ("BIASSEC", "OVSCSEC"))):
        keyword = next((k for k in candidates if all(_section(f, k) for f in frames)), None)
        sections[key] = keyword
        partial = [k for k in candidates if any(_section(f, k) for f in frames)]
        if keyword is None and partial:
            d.todos.append(Todo(f"sections.{key}", f"{partial[0]} is in only some files: give sections.{key} "
                                "as a literal '[x1:x2,y1:y2]' (FITS, 1-based) valid for all"))
    if not sections["data"] and not sections["overscan"]:
        d.notes["sections.data"] = (("no section keywords: the whole frame is data and there is no overscan; "
                                     "if the chip has prescan or overscan columns give them as '[x1:x2,y1:y2]'"), True)
    elif sections["overscan"]:
        over = parse_section(_text(frames[0], sections["overscan"]))
        data = parse_section(_text(frames[0], sections["data"])) if sections["data"] else None
        # serial overscan (columns beside each row) is read per row; parallel overscan per column
        sections["readout_axis"] = "columns" if data and (over.x0, over.x1) == (data.x0, data.x1) else "rows"
    count_key = next((k for k in COUNT_KEYWORDS if _numbers(frames, k)), None)
    count = int(max(_numbers(frames, count_key))) if count_key else 0
    templates = {}
    for part, bases in AMP_BASES.items():
        n_amps = max(count, 1)
        templates[part] = next((b + fmt for b in bases for fmt in NUMBERING
                                if all((b + fmt).format(n=n) in f.header for f in frames for n in range(1, n_amps + 1))
                                and (part not in ("data", "overscan")
                                     or _section(frames[0], (b + fmt).format(n=1)))), None)
    templates = {k: v for k, v in templates.items() if v}
    if not count_key and templates.get("data"):
        while all(templates["data"].format(n=count + 1) in f.header for f in frames):
            count += 1
    if count > 1:
        amps = {"count": {"keyword": count_key, "default": 1} if count_key else {"value": count}, **templates}
        if not count_key:
            first, last = templates["data"].format(n=1), templates["data"].format(n=count)
            d.notes["sections.amplifiers.count"] = (f"no amplifier-count keyword: {first}..{last} counted", True)
        if "data" not in templates:
            amps["data"] = "DATASEC{n}"
            d.todos.append(Todo("sections.amplifiers", f"{count_key} = {count} amplifiers, but no per-amplifier "
                                "section keywords (DATASEC1, TRIM01...): fill sections.amplifiers data/overscan"))
        sections["amplifiers"] = amps
    d.spec["sections"] = sections
    return templates if count > 1 else {}


def decide_bias_level(d: Draft, templates: dict) -> None:
    """No overscan and no bias frames: say that the run estimates the level (ccdflow.biaslevel)."""
    if d.spec["sections"].get("overscan") or templates.get("overscan"):
        return
    if any(f.kind == "bias" for f in d.frames):
        return
    text = ("no overscan and no bias frames: each night's bias level is estimated from pairs of its science "
            "frames when the workflow runs (inventory column bias_source, header BIASSRC); if the camera's "
            "level is known, write bias_level: {value: <ADU>}")
    d.notes["bias_level"] = (text, False)


def _section(frame, keyword) -> bool:
    try:
        return parse_section(_text(frame, keyword)) is not None
    except (ValueError, TypeError):
        return False


def draft_profile(frames: list[Frame], name: str, noise: object | None = None) -> Draft:
    """Decide every field of a profile from ``frames``' headers.

    ``noise``, when given, is a gain/read-noise estimate from the frames (attributes
    ``gain, gain_err, read_noise, read_noise_err, method`` and ``describe()``): used
    where the headers carry no gain or read noise, written as ``{value, estimated}``.
    """
    if not frames:
        raise ValueError("no readable FITS headers to draft a profile from")
    if not NAME_PATTERN.match(name):
        raise ValueError(f"profile name {name!r} must be letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    shape = Counter(f"{_text(f, 'NAXIS1')}x{_text(f, 'NAXIS2')}" for f in frames).most_common(1)[0][0]
    names = ", ".join(f"{k} {_text(frames[0], k)!r}" for k in ("TELESCOP", "INSTRUME") if _text(frames[0], k))
    d = Draft(name, {"name": name, "description": f"drafted by ccdflow init from {len(frames)} files"
                     f"{' (' + names + ')' if names else ''}, {shape}"}, frames=frames)
    decide_frame_type(d)
    decide_keywords(d)
    templates = decide_sections(d)
    decide_bias_level(d, templates)
    decide_noise(d, noise, templates)
    decide_saturation(d)
    decide_binning(d)
    for key, decide in (("time", decide_time), ("site", decide_site), ("target", decide_target)):
        spec, notes, todos = decide(frames)
        if spec:
            d.spec[key] = spec
        d.notes.update({f"{key}.{k}": v for k, v in notes.items()})
        d.todos += [Todo(key, text) for text in todos]
    d.rows = preview(d)
    return d


def preview(d: Draft) -> list[dict]:
    """Each header through the drafted profile, as the inventory would read it (night included)."""
    profile, nights, rows = Profile(d.name, d.spec, "<draft>"), NightRule(), []
    for f in d.frames:
        try:
            row = normalise_header(f.header, f.path, profile)
            row["night"] = nights.night_of(row["mid_utc"], row["site_lon"]) if row["imagetyp"] else ""
        except (FrameReadError, ValueError, TypeError) as err:
            row = {"error": str(err)}
        rows.append({"filename": f.name, **row})
    return rows
