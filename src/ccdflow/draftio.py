"""``ccdflow init``'s input and output: find the raw files, read their headers (never
their pixels), and write what :mod:`ccdflow.draft` decided: the profile, the night
config and the report.

YAML is written by hand so that every decision keeps its comment on its line
(``# guess: ...`` where nothing in the headers confirms it); the text is checked
to load back (``yaml.safe_load``) to exactly the drafted mapping.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import warnings
import zlib
from collections import Counter
from pathlib import Path

import yaml
from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from .draft import NAME_PATTERN, Draft, Frame, Todo, draft_profile
from .fitsheader import (
    FrameReadError,
    data_unit_bytes,
    parse_header,
    read_header_blocks,
    unsupported_compression,
)
from .inventory import RawSource, checked_raw_files
from .rawscan import open_stream, with_primary
from .sections import parse_section

ORDER = ("name", "description", "frame_type", "exptime", "filter", "object", "detector", "gain", "read_noise",
         "saturation", "binning", "time", "sections", "site", "target")
BLOCKS = {"frame_type", "frame_type.aliases", "time", "sections", "sections.amplifiers", "site", "target"}
LIST_BLOCKS = {"frame_type.rules"}
TYPE_ORDER = {"bias": 0, "dark": 1, "flat": 2, "science": 3}
_PLAIN = re.compile(r"^[A-Za-z0-9_.+/-][A-Za-z0-9_. +/-]*$")


def collect_files(raw_paths) -> list[str]:
    """FITS files under each RAW (folders recursively, or globs); an error names a RAW
    that names nothing or holds no FITS file."""
    return [path for path, _ in checked_raw_files([RawSource(str(raw), "draft") for raw in raw_paths])]


def read_headers(paths) -> tuple[list[Frame], list[tuple[str, str]]]:
    """The image header of each file (the first 2-D HDU, primary cards merged).

    Header blocks are read off the (decompressing) stream up to ``END``: pixels are
    never read or decompressed. Unreadable files are listed with the reason, never fatal.
    """
    frames, unreadable = [], []
    for path in paths:
        try:
            frames.append(Frame(path, Path(path).name, _image_header(Path(path))))
        except (FrameReadError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError, zlib.error,
                VerifyError) as err:  # the inventory quarantines these files
            unreadable.append((path, f"{err}" if isinstance(err, FrameReadError) else f"{type(err).__name__}: {err}"))
    return frames, unreadable


def _image_header(path: Path) -> fits.Header:
    reason = unsupported_compression(path)
    if reason:
        raise FrameReadError(f"compressed with {reason}")
    if path.name.lower().endswith(".fz"):  # tile-compressed: headers are stored plain, astropy decodes them
        with warnings.catch_warnings(), fits.open(path, lazy_load_hdus=True, memmap=False) as hdul:
            warnings.simplefilter("ignore")
            primary = hdul[0].header
            if int(primary.get("NAXIS", 0)) >= 2 or len(hdul) < 2:
                return primary.copy()
            return with_primary(hdul[1].header, primary)
    with open_stream(path) as stream:
        raw = read_header_blocks(stream)
        if raw is None:
            raise FrameReadError("file is empty")
        primary = parse_header(raw, path)
        if int(primary.get("NAXIS", 0)) >= 2:
            return primary
        stream.read(data_unit_bytes(primary))  # normally nothing: an empty primary before the image
        raw = read_header_blocks(stream)
        return with_primary(parse_header(raw, path), primary) if raw else primary.copy()


def scalar(value) -> str:
    """One YAML scalar, quoted only where plain text would read back as something else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
        text = f"{value:.12g}"
        mantissa, _, exponent = text.partition("e")
        return f"{mantissa if '.' in mantissa else mantissa + '.0'}{'e' + exponent if exponent else ''}"
    text = str(value)
    if _PLAIN.match(text) and text == text.strip() and yaml.safe_load(text) == text:
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def flow(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{scalar(k)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return scalar(value)


def _lines(key, value, path, indent, notes, used) -> list[str]:
    pad, note = " " * indent, notes.get(path)
    comment = f"  # {'guess: ' if note[1] else ''}{note[0]}" if note else ""
    if note:
        used.add(path)
    if isinstance(value, dict) and path in BLOCKS:
        lines = [f"{pad}{key}:{comment}"]
        for sub, item in value.items():
            lines += _lines(sub, item, f"{path}.{sub}", indent + 2, notes, used)
        return lines
    if isinstance(value, list) and path in LIST_BLOCKS:
        return [f"{pad}{key}:{comment}"] + [f"{pad}  - {flow(item)}" for item in value]
    return [f"{pad}{key}: {flow(value)}{comment}"]


def render_profile(d: Draft, sources=()) -> str:
    """The drafted profile as commented YAML."""
    when = datetime.date.today().isoformat()
    lines = [f"# Instrument profile drafted by `ccdflow init` on {when} from the headers of {len(d.frames)} files",
             f"# ({', '.join(str(s) for s in sources) or 'raw files'}); no pixel was read. Each decision says where",
             "# it came from; '# guess:' marks what nothing in the headers confirms: check those.",
             "# Format: a bare string is a header keyword; constants are {value: ...}; schema:",
             "# workflow/schemas/instrument.schema.yaml (README: \"Instrument profiles\")."]
    if d.todos:
        lines += [f"# TODO ({len(d.todos)}), fill in before reducing:"] + [f"#   {t.key}: {t.text}" for t in d.todos]
    used: set = set()
    for key in [*ORDER, *(k for k in d.spec if k not in ORDER)]:
        if key in d.spec:
            lines += _lines(key, d.spec[key], key, 0, d.notes, used)
    lines += [f"# {'guess: ' if guess else ''}{key}: {text}" for key, (text, guess) in d.notes.items()
              if key not in used]
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != d.spec:
        raise RuntimeError("ccdflow init wrote a profile that does not read back as drafted (a bug)")
    return text


def _usable(d: Draft) -> list[dict]:
    return [r for r in d.rows if "error" not in r and r.get("imagetyp")]


def _target_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "target"


def render_config(d: Draft, raw_paths, profile_path) -> str:
    """The night config: campaign, raw sources read with the drafted profile, targets to fill in."""
    kinds = Counter(r["imagetyp"] for r in _usable(d))
    science = [r for r in _usable(d) if r["imagetyp"] == "science"]
    main = Counter(r["object"] for r in science).most_common(1)[0][0] if science else None
    first = min((r for r in science if r["object"] == main), key=lambda r: r["mjd_mid"], default=None)
    lines = [f"# Night config drafted by `ccdflow init` on {datetime.date.today().isoformat()}; run it with",
             f"#   snakemake --cores all --configfile {Path(profile_path).with_name(d.name + '-night.yaml')}",
             "# Every key: workflow/schemas/config.schema.yaml.",
             f"campaign: {scalar(d.name)}", "simulate: {enabled: false}", "raw:"]
    for raw in raw_paths:
        lines += [f"  - path: {scalar(str(Path(raw).absolute()))}",
                  f"    instrument: {scalar(str(Path(profile_path).absolute()))}"]
    missing = [k for k in ("bias", "dark", "flat") if not kinds.get(k)]
    if missing:
        lines.append("calibration:")
        lines += [f"  {k}: {{on_missing: skip}}  # no {k} frames in these files" for k in missing]
    lines += ["lightcurves:", "  targets: []",
              "  # Name the stars to follow, by sky position (degrees or sexagesimal; needs a plate",
              "  # solution in the frames) or by the pixel DS9 shows on a raw frame (1-based):"]
    if first:
        name = _target_name(first.get("object") or "target")
        if first.get("ra_deg") is not None and not math.isnan(first["ra_deg"]):
            lines.append(f"  # - {{name: {name}, ra: {first['ra_deg']:.6f}, dec: {first['dec_deg']:.6f}}}")
        stem = re.sub(r"(\.fits|\.fit|\.fts)(\.gz|\.bz2|\.fz)?$|\.fz$", "", first["filename"], flags=re.IGNORECASE)
        data = parse_section(first["data_section"])
        lines.append(f"  # - {{name: {name}, x: {(data.x0 + data.x1 + 1) / 2:.1f}, y: {(data.y0 + data.y1 + 1) / 2:.1f}, "
                     f"frame: {scalar(stem)}}}")
    else:
        lines.append("  # - {name: star, ra: 150.0, dec: 30.0}\n  # - {name: star, x: 512.0, y: 512.0, frame: <file>}")
    text = "\n".join(lines) + "\n"
    yaml.safe_load(text)  # must parse
    return text


def render_report(d: Draft, profile_path=None, config_path=None) -> str:
    """The table of what the draft would do, then its guesses and TODO lines."""
    usable = _usable(d)
    estimated = sorted({text for key, (text, _) in d.notes.items() if key in ("gain", "read_noise")
                        and text.startswith("estimated from the frames")})
    pixels = "pixels of bias, flat or science frames read for gain and read noise" if estimated else "no pixels"
    lines = [f"ccdflow init: {len(d.frames) + len(d.unreadable)} FITS files, headers read ({pixels})"]
    if profile_path:
        lines.append(f"wrote {profile_path} (profile) and {config_path} (night config)")
    lon = d.spec.get("site", {}).get("longitude", {}).get("value")
    local = (f"mean solar time at longitude {lon:g}" if lon is not None else "no site: UTC - 12 h")
    counts = Counter((r["night"], r["imagetyp"], r["filter"], r["exptime"]) for r in usable)
    lines += ["", f"What the drafted profile makes of them (night: local date of the evening, {local}):",
              f"  {'night':10s}  {'type':8s} {'filter':10s} {'exptime (s)':>11s} {'files':>6s}"]
    for (night, kind, filt, exptime), n in sorted(counts.items(), key=lambda c: (c[0][0], TYPE_ORDER[c[0][1]],
                                                                                  c[0][2], c[0][3])):
        lines.append(f"  {night:10s}  {kind:8s} {filt:10s} {exptime:11g} {n:6d}")
    ignored = [r["filename"] for r in d.rows if "error" not in r and not r.get("imagetyp")]
    if ignored:
        lines.append(f"  ignored ({len(ignored)}, frame_type.ignore): {', '.join(ignored[:6])}"
                     f"{' ...' if len(ignored) > 6 else ''}")
    bad = [(r["filename"], r["error"]) for r in d.rows if "error" in r]
    bad += [(Path(p).name, f"unreadable header ({why})") for p, why in d.unreadable]
    if bad:
        lines.append(f"  would be quarantined ({len(bad)}):")
        lines += [f"    {name}: {why}" for name, why in bad[:20]] + (["    ..."] if len(bad) > 20 else [])
    where = f" in {profile_path}" if profile_path else ""
    if estimated:  # not a guess, a measurement: shown with its uncertainty
        lines += ["", "Measured (the headers have no gain or read noise; written as `estimated:` in the profile):"]
        lines += [f"  {text.removeprefix('estimated from the frames: ')}" for text in estimated]
    guesses = d.guesses()
    if guesses:
        lines += ["", f"Guesses to check (marked '# guess:'{where}):"] + [f"  {g}" for g in guesses]
    lines.append("")
    lines += [f"TODO: {t.key}{where}: {t.text}" for t in d.todos] or ["Nothing left to fill in."]
    return "\n".join(lines) + "\n"


def default_name(frames, raw_paths) -> str:
    for keyword in ("TELESCOP", "INSTRUME"):
        values = Counter(str(f.header.get(keyword, "")).strip() for f in frames) - Counter({"": len(frames)})
        words = values.most_common(1)[0][0].split() if values else []
        slug = re.sub(r"[^a-z0-9_.-]+", "-", words[0].lower()).strip("-.") if words else ""
        if slug and NAME_PATTERN.match(slug):
            return slug
    folder = re.sub(r"[^a-z0-9_.-]+", "-", Path(str(raw_paths[0])).absolute().name.lower()).strip("-.")
    return folder if NAME_PATTERN.match(folder) else "draft"


def estimate_from_frames(d: Draft):
    """Gain and read noise from the night's own pixels (:mod:`ccdflow.noise_estimate`):
    photon transfer from bias and flat pairs, else the sky of the science frames.
    Returns ``(estimate, "")`` or ``(None, why not)``."""
    from .noise_estimate import estimate_noise

    by_kind = {kind: [f.path for f in d.frames if f.kind == kind] for kind in ("bias", "flat", "science")}
    sections = d.spec.get("sections") or {}
    header = d.frames[0].header

    def section(source):
        if not source or not isinstance(source, str):
            return None
        return source if source.lstrip().startswith("[") else header.get(source)

    saturation = d.spec.get("saturation")
    level = saturation.get("value") if isinstance(saturation, dict) else None
    try:
        estimate = estimate_noise(by_kind["bias"], by_kind["flat"], by_kind["science"],
                                  data_section=section(sections.get("data")),
                                  overscan_section=section(sections.get("overscan")),
                                  saturation=float(level) if level else 65000.0)
    except (ValueError, OSError) as err:
        return None, str(err)
    return estimate, ""


def init_night(raw_paths, name: str | None = None, out_dir=".", force: bool = False, noise=None):
    """Draft a profile and a night config for ``raw_paths``; write them to ``out_dir``.

    Returns ``(draft, profile_path, config_path)``. Raises FileNotFoundError naming a
    RAW with no FITS file, FileExistsError rather than overwrite (unless ``force``).
    """
    frames, unreadable = read_headers(collect_files(raw_paths))
    if not frames:
        raise FileNotFoundError(f"no readable FITS header in {', '.join(map(str, raw_paths))} "
                                f"({len(unreadable)} files, all unreadable: {unreadable[0][1]})")
    name = name or default_name(frames, raw_paths)
    d = draft_profile(frames, name, noise=noise)
    if noise is None and {t.key for t in d.todos} & {"gain", "read_noise"}:
        noise, problem = estimate_from_frames(d)
        if noise is not None:
            d = draft_profile(frames, name, noise=noise)
        else:
            d.todos = [Todo(t.key, f"{t.text}; the frames could not tell: {problem}") if t.key in ("gain", "read_noise")
                       else t for t in d.todos]
    d.unreadable = unreadable
    out = Path(out_dir)
    profile_path, config_path = out / f"{d.name}.yaml", out / f"{d.name}-night.yaml"
    for path in (profile_path, config_path):
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists; give another --name or --out, or --force to overwrite it")
    profile_text = render_profile(d, raw_paths)
    config_text = render_config(d, raw_paths, profile_path)
    out.mkdir(parents=True, exist_ok=True)
    profile_path.write_text(profile_text)
    config_path.write_text(config_text)
    return d, profile_path, config_path
