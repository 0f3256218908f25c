"""Raw inventory: find raw FITS files, read their headers, classify, quarantine.

One row per file, whatever happens to it. A file that cannot be used is not an
error for the night: it gets ``status='quarantined'`` and a ``reason`` naming
the file and the problem, and every other frame goes on.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd

from .biaslevel import assign_bias_levels
from .fitsheader import UNCOMPRESSED_SUFFIXES, FrameReadError, fits_stem, is_fits_name
from .instrument import Profile, keyword_sources, normalise_header
from .mosaic import joined_header
from .rawscan import scan_raw
from .timeutil import parse_iso_utc

log = logging.getLogger(__name__)

OK, QUARANTINED, IGNORED = "ok", "quarantined", "ignored"
DUPLICATE_OF = "duplicate of "  # how an ignored copy's reason starts

# Column order of the inventory table (also its documentation: see README).
COLUMNS = [
    "frame_id", "path", "filename", "size_bytes", "content_sha1", "status", "reason", "instrument",
    "imagetyp", "raw_type", "object", "filter", "exptime", "binning", "detector",
    "naxis1", "naxis2", "gain", "read_noise", "saturation", "date_obs_raw", "mid_utc",
    "mjd_mid", "night", "data_section", "overscan_section", "ra_deg", "dec_deg",
    "site_lon", "site_lat", "site_height", "amplifiers", "extensions", "absent_keywords",
    "noise_estimated", "cal_group", "dark_group", "flat_group", "bias_source",
]


@dataclass(frozen=True)
class RawSource:
    """One configured raw location: a directory or glob, read with one profile."""

    path: str
    instrument: str


@dataclass(frozen=True)
class NightRule:
    """How UTC times map to an observing night.

    The night is named after the local date on which it began: a frame belongs
    to the night whose local ``boundary_hour`` (noon by default) precedes it.
    Local time is mean solar time at the site longitude unless a fixed
    ``utc_offset_hours`` is configured.
    """

    boundary_hour: float = 12.0
    utc_offset_hours: float | None = None

    def night_of(self, mid_utc: str, longitude: float | None) -> str:
        offset = self.utc_offset_hours
        if offset is None:
            offset = (longitude or 0.0) / 15.0
        local = parse_iso_utc(mid_utc) + timedelta(hours=offset - self.boundary_hour)
        return local.date().isoformat()


def find_raw_files(sources: Iterable[RawSource], empty: list[str] | None = None) -> list[tuple[str, str]]:
    """All FITS files under the configured sources, recursively, sorted.

    A source is a directory (walked recursively) or a glob pattern (``**``
    allowed); matches that are directories are walked too. Symbolic links to
    folders are followed, each real folder once: a link back up the tree (a
    loop) or a second link to a folder adds nothing. A file listed by two
    sources is kept once, with the first source's instrument. Links to files
    and copies are kept here and found as duplicates by content at inventory.
    Returns ``(path, instrument)`` pairs; ``empty``, when given, receives a
    message for each source that holds no FITS file at all.
    """
    seen: dict[str, str] = {}
    entries: set[tuple[str, str]] = set()  # (real folder, name): one directory entry, however reached
    for number, source in enumerate(sources, 1):
        roots = [source.path] if os.path.isdir(source.path) else sorted(glob.glob(source.path, recursive=True))
        before = len(entries)
        for root in roots:
            candidates = _walk_files(root) if os.path.isdir(root) else [root]
            for candidate in candidates:
                name = os.path.basename(candidate)
                if not is_fits_name(candidate) or name.startswith("."):
                    continue
                entry = (os.path.realpath(os.path.dirname(candidate) or "."), name)
                if entry not in entries:
                    entries.add(entry)
                    seen.setdefault(os.path.normpath(candidate), source.instrument)
        if empty is not None and len(entries) == before and roots:
            empty.append(f"raw source {number} ({source.instrument}): {source.path!r} holds no FITS file "
                         "(*.fits, *.fit, *.fts, plain or compressed); check the `raw:` paths in your config")
    return sorted(seen.items())


def checked_raw_files(sources: Sequence[RawSource]) -> list[tuple[str, str]]:
    """:func:`find_raw_files`, or FileNotFoundError with one line for each source that
    names nothing or holds no FITS file: a typo must not pass as an empty night."""
    empty: list[str] = []
    files = find_raw_files(sources, empty)
    problems = source_problems(sources) or empty
    if problems:
        raise FileNotFoundError("\n".join(problems))
    return files


def _walk_files(root: str) -> Iterable[str]:
    """Files under ``root``, following links to folders but entering each real folder once."""
    visited: set[str] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders.sort()
        yield from (os.path.join(folder, name) for name in sorted(names))


def source_problems(sources: Iterable[RawSource]) -> list[str]:
    """A message for each configured raw source that names nothing: a folder that
    does not exist, a pattern that matches no file (a typo, an unmounted disk)."""
    problems = []
    for number, source in enumerate(sources, 1):
        if os.path.isdir(source.path) or glob.glob(source.path, recursive=True):
            continue
        problems.append(f"raw source {number} ({source.instrument}): {source.path!r} is not a folder and, "
                        "as a pattern, matches nothing. Check the `raw:` paths in your config "
                        "(a typo? a disk not mounted?)")
    return problems


def raw_state(paths: Iterable[str]) -> str:
    """One digest of every raw file's :func:`stat_signature` (a parameter of the inventory)."""
    digest = hashlib.sha1()
    for path in paths:
        digest.update(f"{printable(path)}\x1f{stat_signature(path)}\x1e".encode())
    return digest.hexdigest()


def snakemake_inputs(paths: Iterable[str]) -> list[str]:
    """The raw files Snakemake can take as a job's inputs (so that adding,
    removing or touching one reruns the job): those that exist, can be read and
    have names Snakemake can handle. The others are still inventoried (and
    quarantined where they cannot be used), and their changes still rerun the
    inventory through :func:`raw_state`, its parameter. Snakemake reads braces
    in an input name as a wildcard, even from an input function, and has no
    escape for it there: such files are left out too (their rows' digests,
    parameters of every job that reads them, carry their changes).
    """
    return [path for path in paths if is_snakemake_input(path)]


def is_snakemake_input(path: str) -> bool:
    """One path of :func:`snakemake_inputs`."""
    return (_name_problem(path) is None and "{" not in path and "}" not in path
            and os.path.isfile(path) and os.access(path, os.R_OK))


def _original_first(path: str) -> tuple:
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        mtime = 0
    return os.path.islink(path), not path.lower().endswith(UNCOMPRESSED_SUFFIXES), mtime, path


def _name_problem(path: str) -> str | None:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename it, e.g. with convmv)"
    return None


def printable(path: str) -> str:
    """A path as text any table format can hold (undecodable bytes as \\xNN)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def stat_signature(path: str) -> list[int] | None:
    """Size, modification and change times (ns), inode: what changes when a file
    does. The change time cannot be set back, so an edit that restores the
    modification time (``touch -r``, ``rsync -t``) still shows."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def frame_id(path: str) -> str:
    """A stable, shell- and URL-safe identifier for a raw file.

    The readable part comes from the file name (accents folded, anything but
    letters, digits, ``.``, ``_`` and ``-`` replaced); a hash of the full path
    keeps two files of the same name in different folders apart.
    """
    name = Path(path).name
    stem = fits_stem(name)
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_stem).strip("_.")[:60] or "frame"
    digest = hashlib.sha1(os.path.normpath(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug}-{digest}"


def inventory_file(path: str, profile: Profile, nights: NightRule) -> list[dict]:
    """The inventory rows of one file (read once, end to end): one, or one per image
    extension with ``extensions: detectors``; never raises for a bad file."""
    name = printable(Path(path).name)
    row: dict = {"frame_id": frame_id(path), "path": printable(path), "filename": name,
                 "instrument": profile.name, "status": OK, "reason": ""}
    try:
        problem = _name_problem(path)
        if problem:
            raise FrameReadError(problem)
        if os.path.islink(path) and not os.path.exists(path):
            raise FrameReadError(f"dangling symbolic link (to {printable(os.readlink(path))}, which does not exist)")
        row["size_bytes"] = os.path.getsize(path)
        scan = scan_raw(path)
        row["content_sha1"] = scan.content_sha1
        mode = profile.get("extensions")
        if scan.images > 1 and mode == "detectors":
            return [_finished(_detector_row(row, scan, n, path, profile), nights, profile)
                    for n in range(scan.images)]
        if scan.images > 1 and mode == "amplifiers":
            header, offsets = joined_header(scan.image_headers)
            row.update(normalise_header(header, path, profile, scan.image_headers, offsets))
            row["extensions"] = ",".join(str(i) for i in scan.image_indices)
        elif scan.images > 1:
            raise FrameReadError(
                f"holds {scan.images} images (multi-extension file), which profile {profile.name} does not "
                "describe: add `extensions: amplifiers` to the profile if they are the amplifiers of one "
                "detector, `extensions: detectors` if each is a detector of its own (README: Amplifiers)")
        else:
            row.update(normalise_header(scan.header, path, profile))
    except FrameReadError as err:
        return [row | {"status": QUARANTINED, "reason": f"{name}: {err}"}]
    except Exception as err:  # a header astropy chokes on must not stop the night
        return [row | {"status": QUARANTINED, "reason": f"{name}: unreadable header ({type(err).__name__}: {err})"}]
    return [_finished(row, nights, profile)]


def _detector_row(base: dict, scan, n: int, path: str, profile: Profile) -> dict:
    """Image extension ``n`` as a frame of its own detector (``extensions: detectors``):
    its own frame id, detector (the profile's, with the extension's EXTNAME, so each
    detector gets its own masters and fields) and content checksum."""
    header, hdu = scan.image_headers[n], scan.image_indices[n]
    extname = str(header.get("EXTNAME", "") or f"hdu{hdu}").strip()
    row = {**base, "frame_id": f"{base['frame_id']}-{hdu}", "content_sha1": f"{scan.content_sha1}:{hdu}",
           "extensions": str(hdu)}
    try:
        row.update(normalise_header(header, path, profile))
    except FrameReadError as err:
        return row | {"status": QUARANTINED, "reason": f"{base['filename']} [{extname}]: {err}"}
    row["detector"] = f"{row['detector']}:{extname}"
    return row


def _finished(row: dict, nights: NightRule, profile: Profile) -> dict:
    if row["status"] != OK:
        return row
    if row["imagetyp"] is None:
        return row | {"status": IGNORED,
                      "reason": f"{row['filename']}: frame type {row['raw_type']!r} is ignored by profile {profile.name}"}
    return row | {"night": nights.night_of(row["mid_utc"], row.get("site_lon"))}


def mark_duplicates(frame: pd.DataFrame) -> pd.DataFrame:
    """Files with the same content as another usable one are ignored, listed as
    ``duplicate of <path>``. The one kept is the likeliest original: a file
    before a link to it, uncompressed before compressed, then the oldest, then
    the first path."""
    usable = frame[(frame["status"] == OK) & (frame["content_sha1"] != "")]
    for _, group in usable.groupby("content_sha1", sort=False):
        if len(group) > 1:
            ordered = sorted(group.index, key=lambda i: _original_first(frame.loc[i, "path"]))
            kept = frame.loc[ordered[0], "path"]
            for index in ordered[1:]:
                frame.loc[index, "status"] = IGNORED
                frame.loc[index, "reason"] = f"{frame.loc[index, 'filename']}: {DUPLICATE_OF}{kept} (same content)"
    return frame


INTEGER = ["size_bytes", "naxis1", "naxis2"]
NUMERIC = ["exptime", "gain", "read_noise", "saturation", "mjd_mid",
           "ra_deg", "dec_deg", "site_lon", "site_lat", "site_height"]


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as floats (NaN where unknown), everything else as strings ("" where unknown).

    Quarantined rows lack most fields; fixed column types keep the ECSV and
    Parquet files readable whatever mix of good and bad files a night holds.
    """
    for column in frame.columns:
        if column in INTEGER:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
        elif column in NUMERIC:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        else:
            values = frame[column].astype(object)
            frame[column] = values.where(values.notna(), "").astype(str)
    return frame


def _group_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Calibration-group keys: frames that can share masters have equal keys.

    ``cal_group`` (all types): instrument, detector, binning and raw shape;
    darks add exposure time, flats add filter. The night is a separate column,
    so the calibration stage can match across nights within a time window.
    """
    if frame.empty:
        return frame.assign(cal_group="", dark_group="", flat_group="")
    base = (
        frame["instrument"].astype(str) + "|" + frame["detector"].astype(str) + "|"
        + frame["binning"].astype(str) + "|" + frame["naxis1"].map(_int_text)
        + "x" + frame["naxis2"].map(_int_text)
    )
    frame["cal_group"] = base
    frame["dark_group"] = base + "|" + frame["exptime"].map(lambda t: f"{t:g}s")
    unusable = frame["status"] != OK
    frame.loc[unusable, ["cal_group", "dark_group", "flat_group"]] = ""
    frame["flat_group"] = base + "|" + frame["filter"].astype(str)
    return frame


def _int_text(value: float) -> str:
    return "" if pd.isna(value) else str(int(value))


def quarantine_odd_shapes(frame: pd.DataFrame, outlier_fraction: float) -> pd.DataFrame:
    """Quarantine frames whose shape is rare within their night and setup.

    Within one (night, instrument, detector, binning), the most common shape is
    the group's shape; a different shape held by fewer than ``outlier_fraction``
    of the group's frames is a damaged or stray file, not a deliberate
    sub-frame series, and is quarantined. Returns the updated frame.
    """
    ok = frame["status"] == OK
    keys = ["night", "instrument", "detector", "binning"]
    for _, group in frame[ok].groupby(keys, dropna=False):
        shapes = group.groupby(["naxis1", "naxis2"]).size().sort_values(ascending=False)
        if len(shapes) < 2:
            continue
        main_shape = shapes.index[0]
        for shape, count in shapes.iloc[1:].items():
            if count < outlier_fraction * len(group):
                rows = group.index[(group["naxis1"] == shape[0]) & (group["naxis2"] == shape[1])]
                for index in rows:
                    frame.loc[index, "status"] = QUARANTINED
                    frame.loc[index, "reason"] = (
                        f"{frame.loc[index, 'filename']}: shape {shape[0]}x{shape[1]} does not match "
                        f"its group's {main_shape[0]}x{main_shape[1]} "
                        f"({count} of {len(group)} frames on night {group['night'].iloc[0]})"
                    )
    return frame


class RowCache:
    """Inventory rows of the last inventory, reused for files that have not changed.

    A row is reused when the file's :func:`stat_signature`, its profile, the
    night rule and the code that makes rows are all as they were; anything else
    reads the file again. So a campaign of years re-reads only new or changed
    files when a night is added, and a file edited in place, even with its old
    modification time put back, is read again (its change time moved).
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.rows: dict[str, dict] = {}
        self.kept: dict[str, dict] = {}
        self.reused = 0
        if self.path is not None and self.path.exists():
            try:
                self.rows = json.loads(self.path.read_text())["rows"]
            except (ValueError, KeyError, TypeError, OSError):
                log.warning("row cache %s unreadable: every file is read again", self.path)

    def rows_of(self, path: str, profile: Profile, nights: NightRule) -> list[dict]:
        key = [stat_signature(path), _profile_key(profile), [nights.boundary_hour, nights.utc_offset_hours], _CODE]
        cached = self.rows.get(printable(path))
        if cached is not None and cached.get("key") == key and "rows" in cached:
            self.reused += 1
            rows = [dict(row) for row in cached["rows"]]
        else:
            rows = inventory_file(path, profile, nights)
        if key[0] is not None:
            self.kept[printable(path)] = {"key": key, "rows": rows}
        return rows

    def save(self) -> None:
        """Write the rows of this inventory's files (vanished files drop out)."""
        if self.path is not None:
            from .atomic import atomic_path

            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as temp:
                Path(temp).write_text(json.dumps({"rows": self.kept}, default=_json_default))


def _json_default(value):
    return None if pd.isna(value) else str(value)


def _profile_key(profile: Profile) -> str:
    return hashlib.sha1(json.dumps([profile.name, profile.spec], sort_keys=True, default=str).encode()).hexdigest()


def _code_digest() -> str:
    """Of the modules that make inventory rows: new code reads every file again."""
    from . import fitsheader, instrument, rawscan, timeutil

    digest = hashlib.sha1()
    for module in (fitsheader, instrument, rawscan, timeutil):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


_CODE = _code_digest()


def take_inventory(
    files: Sequence[tuple[str, str]],
    profiles: dict[str, Profile],
    nights: NightRule = NightRule(),
    shape_outlier_fraction: float = 0.2,
    cache: RowCache | None = None,
) -> pd.DataFrame:
    """Inventory ``(path, instrument)`` pairs into a table with :data:`COLUMNS`."""
    cache = cache or RowCache()
    rows = [row for path, instrument in files for row in cache.rows_of(path, profiles[instrument], nights)]
    frame = _typed(pd.DataFrame(rows, columns=COLUMNS))
    frame = mark_duplicates(frame)
    frame = quarantine_odd_shapes(frame, shape_outlier_fraction)
    frame = _group_keys(frame)
    frame = assign_bias_levels(frame)
    check_profile_keywords(frame, {p.name: p for p in profiles.values()})
    bad = frame["status"] == QUARANTINED
    for reason in frame.loc[bad, "reason"]:
        log.warning("quarantined %s", reason)
    frame = frame.sort_values(["night", "mjd_mid", "path"], na_position="last", kind="stable")
    return frame.reset_index(drop=True)


class ProfileError(ValueError):
    """The instrument profile, not a frame, is wrong: no frame can be read right."""


def check_profile_keywords(frame: pd.DataFrame, profiles: dict[str, Profile]) -> None:
    """Raise :class:`ProfileError` for the optional fields whose keyword no usable
    header holds (target coordinates: no science header): a misspelt keyword or a
    constant written bare would otherwise leave the field silently empty.
    ``profiles``: by name (the rows' ``instrument``)."""
    usable = frame[frame["status"] == OK]
    for instrument, rows in usable.groupby("instrument"):
        profile, problems = profiles[instrument], []
        for field, keywords in keyword_sources(profile).items():
            among = rows[rows["imagetyp"] == "science"] if field.startswith("target.") else rows
            entry = f"{field}={'|'.join(keywords)}"
            if len(among) and all(entry in str(a).split(";") for a in among["absent_keywords"]):
                problems.append(
                    f"  {field}: keyword {' or '.join(keywords)} is in none of the {len(among)} headers; a constant "
                    f"is written `{{value: {keywords[0].lower()}}}`, a keyword with a fallback `{{keyword: "
                    f"{keywords[0]}, default: ...}}`")
        if problems:
            raise ProfileError(f"instrument profile {instrument} ({profile.source}) reads keywords no header holds:\n"
                               + "\n".join(problems))


def batches(frame: pd.DataFrame, size: int, types: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Split usable frames into batches of at most ``size`` for one job each.

    Batches never cross nights and follow time order, so adding a night (or a
    frame late in a night) leaves every other batch, and its products, as it
    was. Returns ``{batch_id: [frame_id, ...]}`` with ids like ``2025-03-14.b000``.
    """
    usable = frame[frame["status"] == OK]
    if types is not None:
        usable = usable[usable["imagetyp"].isin(types)]
    result: dict[str, list[str]] = {}
    for night, group in usable.groupby("night", sort=True):
        ids = list(group.sort_values(["mjd_mid", "path"])["frame_id"])
        for start in range(0, len(ids), size):
            result[f"{night}.b{start // size:03d}"] = ids[start : start + size]
    return result


def rows_of(frame: pd.DataFrame, frame_ids: Iterable[str]) -> list[dict]:
    """Inventory rows of the given frames, in that order, as dicts (what a job reads)."""
    return frame.set_index("frame_id", drop=False).loc[list(frame_ids)].to_dict("records")


def summarise(frame: pd.DataFrame) -> str:
    """Human-readable counts by night, type, filter, exposure time and binning."""
    lines = [f"ccdflow inventory: {len(frame)} files, "
             + ", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().sort_index().items())]
    usable = frame[frame["status"] == OK].copy()
    if len(usable):
        usable["exptime_s"] = usable["exptime"].map(lambda t: f"{t:g}")
        counts = (
            usable.groupby(["night", "instrument", "imagetyp", "filter", "exptime_s", "binning"])
            .size().rename("frames").reset_index()
        )
        lines += ["", "Usable frames by night, type, filter, exposure time (s) and binning:",
                  counts.to_string(index=False)]
        first_last = usable.groupby("night")["mid_utc"].agg(["min", "max", "count"])
        lines += ["", "Nights (mid-exposure UTC of first and last frame):", first_last.to_string()]
        lines += _time_warnings(usable[usable["imagetyp"] == "science"])
        lines += _bias_lines(usable)
    bad = frame[frame["status"] != OK]
    if len(bad):
        lines += ["", f"Quarantined or ignored ({len(bad)}):"]
        lines += [f"  [{row.status}] {row.path} -- {row.reason}" for row in bad.itertuples()]
    return "\n".join(lines) + "\n"


def _bias_lines(usable: pd.DataFrame) -> list[str]:
    """Where the bias level comes from when neither an overscan nor a profile gives it."""
    sources = usable["bias_source"].fillna("").astype(str)
    lines = [f"{'WARNING: ' if text.startswith('none') else ''}bias level of {n} {instrument} frame(s): {text}"
             + (" -- the bias counts as signal in every error bar; give `bias_level` in the instrument "
                "profile (`ccdflow init` estimates it) or take bias frames" if text.startswith("none") else "")
             for (instrument, text), n in usable[sources.str.match("estimated|none")].groupby(
                 ["instrument", "bias_source"]).size().items()]
    return [""] + lines if lines else []


def _time_warnings(science: pd.DataFrame) -> list[str]:
    """What the science frames lack for BJD_TDB and airmass, per instrument."""
    lines = []
    for instrument, frames in science.groupby("instrument"):
        no_site = int((frames["site_lon"].isna() | frames["site_lat"].isna()).sum())
        if no_site:
            lines.append(f"WARNING: {no_site} {instrument} science frame(s) with no known site: BJD_TDB will be "
                         "computed at the geocentre (within 0.021 s) and airmass left out; give `site` in the "
                         "instrument profile")
        no_target = int((frames["ra_deg"].isna() | frames["dec_deg"].isna()).sum())
        if no_target:
            lines.append(f"WARNING: {no_target} {instrument} science frame(s) with no target RA/Dec: their BJD_TDB "
                         "cannot be computed (NaN); give `target` keywords in the instrument profile")
    return [""] + lines if lines else []


def write_inventory(frame: pd.DataFrame, ecsv_path: str | Path, parquet_path: str | Path | None = None,
                meta: dict | None = None) -> None:
    """Write the inventory as ECSV (astropy, pandas via astropy) and Parquet.

    Not :func:`ccdflow.tables.write_table`: the inventory keeps pandas' nullable
    integers (unknown sizes of quarantined files), which pandas writes to Parquet
    as such and astropy's Parquet writer would split into a ``.mask`` column.
    """
    from astropy.table import Table

    from .atomic import atomic_path
    from .tables import INVENTORY

    table = INVENTORY.annotate(Table.from_pandas(frame))
    table.meta.update(meta or {})
    with atomic_path(ecsv_path) as temp:
        table.write(temp, format="ascii.ecsv")
    if parquet_path is not None:
        with atomic_path(parquet_path) as temp:
            frame.to_parquet(temp, index=False)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read an inventory written by :func:`write_inventory` (ECSV or Parquet)."""
    path = str(path)
    if path.endswith(".parquet"):
        return _typed(pd.read_parquet(path))
    from astropy.table import Table

    # ECSV stores "" as a masked value; _typed turns it back into "".
    return _typed(Table.read(path, format="ascii.ecsv").to_pandas())


def row_digests(frame: pd.DataFrame) -> dict[str, str]:
    """frame_id -> a short hash of that frame's inventory row (every column).

    A job that reads only some frames' rows takes the digest of those rows as
    a parameter instead of the inventory file's time stamp: adding a night
    rewrites the inventory but leaves the other nights' rows, and so their
    jobs, alone.
    """
    import hashlib

    columns = sorted(frame.columns)
    values = frame[columns].to_numpy(dtype=object)  # NaN (quarantined frames) stays a value, printed
    return {fid: hashlib.sha1("\x1f".join(map(str, row)).encode()).hexdigest()[:16]
            for fid, row in zip(frame["frame_id"], values)}


def rows_digest(digests: dict[str, str], frame_ids: Iterable[str]) -> str:
    """One hash of the rows of ``frame_ids`` (order-independent)."""
    import hashlib

    return hashlib.sha1("".join(sorted(digests[f] for f in frame_ids)).encode()).hexdigest()[:16]
