"""Raw inventory: find raw FITS files, read their headers, classify, quarantine.

One row per file, whatever happens to it. A file that cannot be used is not an
error for the night: it gets ``status='quarantined'`` and a ``reason`` naming
the file and the problem, and every other frame goes on.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd

from .fitsheader import FrameReadError, check_complete, is_fits_name, read_raw_header
from .instrument import Profile, normalise_header
from .timeutil import parse_iso_utc

log = logging.getLogger(__name__)

OK, QUARANTINED, IGNORED = "ok", "quarantined", "ignored"

# Column order of the inventory table (also its documentation: see README).
COLUMNS = [
    "frame_id", "path", "filename", "size_bytes", "status", "reason", "instrument",
    "imagetyp", "raw_type", "object", "filter", "exptime", "binning", "detector",
    "naxis1", "naxis2", "gain", "read_noise", "saturation", "date_obs_raw", "mid_utc",
    "mjd_mid", "night", "data_section", "overscan_section", "ra_deg", "dec_deg",
    "site_lon", "site_lat", "site_height", "amplifiers", "cal_group", "dark_group", "flat_group",
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


def find_raw_files(sources: Iterable[RawSource]) -> list[tuple[str, str]]:
    """All FITS files under the configured sources, recursively, sorted.

    A source is a directory (walked recursively) or a glob pattern (``**``
    allowed); matches that are directories are walked too. Returns
    ``(path, instrument)`` pairs; a file listed by two sources is kept once,
    with the first source's instrument.
    """
    seen: dict[str, str] = {}
    for source in sources:
        roots = [source.path] if os.path.isdir(source.path) else sorted(glob.glob(source.path, recursive=True))
        for root in roots:
            if os.path.isdir(root):
                candidates = (
                    os.path.join(folder, name)
                    for folder, _, names in os.walk(root)
                    for name in names
                )
            else:
                candidates = [root]
            for candidate in candidates:
                if is_fits_name(candidate) and not os.path.basename(candidate).startswith("."):
                    seen.setdefault(os.path.normpath(candidate), source.instrument)
    return sorted(seen.items())


def frame_id(path: str) -> str:
    """A stable, shell- and URL-safe identifier for a raw file.

    The readable part comes from the file name (accents folded, anything but
    letters, digits, ``.``, ``_`` and ``-`` replaced); a hash of the full path
    keeps two files of the same name in different folders apart.
    """
    name = Path(path).name
    stem = re.sub(r"\.(fits|fit|fts)(\.gz|\.fz)?$|\.fz$", "", name, flags=re.IGNORECASE)
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_stem).strip("_.")[:60] or "frame"
    digest = hashlib.sha1(os.path.normpath(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug}-{digest}"


def inventory_file(path: str, profile: Profile, nights: NightRule) -> dict:
    """The inventory row of one file; never raises for a bad file."""
    row: dict = {"frame_id": frame_id(path), "path": path, "filename": Path(path).name,
                 "instrument": profile.name, "status": OK, "reason": ""}
    try:
        row["size_bytes"] = os.path.getsize(path)
        raw = read_raw_header(path)
        check_complete(raw, path)
        row.update(normalise_header(raw.header, path, profile))
    except FrameReadError as err:
        row.update(status=QUARANTINED, reason=f"{Path(path).name}: {err}")
        return row
    except Exception as err:  # a header astropy chokes on must not stop the night
        row.update(status=QUARANTINED, reason=f"{Path(path).name}: unreadable header ({type(err).__name__}: {err})")
        return row
    if row["imagetyp"] is None:
        row.update(status=IGNORED, reason=f"{Path(path).name}: frame type {row['raw_type']!r} is ignored by profile {profile.name}")
        return row
    row["night"] = nights.night_of(row["mid_utc"], row.get("site_lon"))
    return row


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


def take_inventory(
    files: Sequence[tuple[str, str]],
    profiles: dict[str, Profile],
    nights: NightRule = NightRule(),
    shape_outlier_fraction: float = 0.2,
) -> pd.DataFrame:
    """Inventory ``(path, instrument)`` pairs into a table with :data:`COLUMNS`."""
    rows = [inventory_file(path, profiles[instrument], nights) for path, instrument in files]
    frame = _typed(pd.DataFrame(rows, columns=COLUMNS))
    frame = quarantine_odd_shapes(frame, shape_outlier_fraction)
    frame = _group_keys(frame)
    bad = frame["status"] == QUARANTINED
    for reason in frame.loc[bad, "reason"]:
        log.warning("quarantined %s", reason)
    frame = frame.sort_values(["night", "mjd_mid", "path"], na_position="last", kind="stable")
    return frame.reset_index(drop=True)


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
    bad = frame[frame["status"] != OK]
    if len(bad):
        lines += ["", f"Quarantined or ignored ({len(bad)}):"]
        lines += [f"  [{row.status}] {row.path} -- {row.reason}" for row in bad.itertuples()]
    return "\n".join(lines) + "\n"


def write_inventory(frame: pd.DataFrame, ecsv_path: str | Path, parquet_path: str | Path | None = None,
                meta: dict | None = None) -> None:
    """Write the inventory as ECSV (astropy, pandas via astropy) and Parquet.

    Not :func:`ccdflow.tables.write_table`: the inventory keeps pandas' nullable
    integers (unknown sizes of quarantined files), which pandas writes to Parquet
    as such and astropy's Parquet writer would split into a ``.mask`` column.
    """
    from astropy.table import Table

    from .atomic import atomic_path

    table = Table.from_pandas(frame)
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
