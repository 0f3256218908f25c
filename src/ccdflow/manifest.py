"""Campaign manifests: every product, its checksum, the job that made it, and its inputs.

A campaign is a name, a config and raw globs; its products live under
``results/<campaign>/``. The manifest (``manifest.json`` there) lists each
product with

* ``sha256`` of its bytes and ``data_sha256`` of its science content only
  (FITS data arrays, table values, JSON values), so two campaigns can tell
  "the numbers changed" from "only a header date or config hash changed";
* the job that made it: rule, wildcards, inputs, software version, the commit
  of the workflow's code and whether its tree had uncommitted changes
  (:func:`ccdflow.provenance.code_identity`, asked by the job itself), config hash,
  read from the record every rule script leaves beside its log
  (:func:`ccdflow.runlog.start_job`);

and every raw input with its sha256. Checksums of files whose size and mtime
have not changed since the previous manifest are reused, so re-writing the
manifest of a large campaign costs a directory walk, not a re-read.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .atomic import write_text
from .layout import MANIFEST, kind_of
from .provenance import code_identity, config_hash, file_digest, software_version



def _update_array(digest, array) -> None:
    array = np.asarray(array)
    if array.dtype.kind in "OUS":
        # "\x1f".join of every value, fed in chunks (the same bytes, not one huge string)
        flat = array.ravel()
        for start in range(0, flat.size, 65536):
            chunk = "\x1f".join(map(str, flat[start:start + 65536].tolist()))
            digest.update((chunk if start == 0 else "\x1f" + chunk).encode())
    else:
        # byte order and masked values made canonical: the same numbers give the same digest
        filled = np.ma.filled(array, np.nan if array.dtype.kind == "f" else 0)
        digest.update(str(filled.dtype.newbyteorder("<").str).encode())
        digest.update(np.ascontiguousarray(filled, dtype=filled.dtype.newbyteorder("<")).tobytes())


def science_digest(path: str | Path) -> str:
    """sha256 of a product's science content, blind to headers and metadata.

    FITS: each HDU's name and data; Parquet: column names and values; ECSV: its
    column-name row and value rows as written (not the header);
    JSON: the values (keys sorted); anything else (PNG, text): its bytes.
    """
    path = Path(path)
    name = path.name.lower()
    digest = hashlib.sha256()
    if name.endswith((".fits", ".fits.gz", ".fits.fz", ".fit", ".fts")):
        from astropy.io import fits

        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                digest.update(hdu.name.encode())
                if hdu.data is not None:
                    # a tile-compressed image is a binary table to older astropy: its pixels count
                    if not isinstance(hdu, fits.CompImageHDU) and isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                        for column in hdu.columns.names:
                            digest.update(column.encode())
                            _update_array(digest, hdu.data[column])
                    else:
                        _update_array(digest, hdu.data)
    elif name.endswith(".ecsv"):
        # the column-name row and the values, as written; not the YAML header (units,
        # descriptions, dates). 100x faster than parsing it (light curves: 30 ms each).
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.startswith("#"):
                    digest.update(line.encode())
    elif name.endswith(".parquet"):
        import pandas as pd
        import pyarrow.parquet as pq

        # one column in memory at a time, not the table (a campaign's photometry table is
        # the largest product); the same digest as reading the whole table
        for column in pq.ParquetFile(path).schema_arrow.names:
            digest.update(str(column).encode())
            _update_array(digest, pd.read_parquet(path, columns=[column])[column].to_numpy())
    elif name.endswith(".json"):
        digest.update(json.dumps(json.loads(path.read_text()), sort_keys=True).encode())
    else:
        return file_digest(path)
    return digest.hexdigest()


# -- building ----------------------------------------------------------------------------------


def _job_records(campaign_dir: Path) -> list[dict]:
    records = []
    for path in sorted((campaign_dir / "logs").rglob("*.job.json")):
        record = json.loads(path.read_text())
        record["key"] = str(path.relative_to(campaign_dir / "logs"))[: -len(".job.json")]
        records.append(record)
    return records


def _owner_index(records: list[dict]) -> dict[str, dict]:
    """Output path (file or directory, normalised) -> the job record that made it."""
    owners = {}
    for record in records:
        for output in record["output"]:
            owners[os.path.normpath(os.path.abspath(output))] = record
    return owners


def _owner(path: Path, owners: dict[str, dict]) -> dict | None:
    """The job whose output is ``path`` or a directory holding it."""
    here = os.path.normpath(os.path.abspath(path))
    while True:
        if here in owners:
            return owners[here]
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


class _Checksums:
    """sha256 and science digest per file, reused from a previous manifest when unchanged."""

    def __init__(self, previous: dict[str, dict]):
        self.previous = previous

    def __call__(self, path: Path, key: str, science: bool = True) -> dict:
        stat = path.stat()
        old = self.previous.get(key)
        if old and old.get("bytes") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
            return {k: old[k] for k in ("sha256", "data_sha256", "bytes", "mtime_ns") if k in old}
        entry = {"sha256": file_digest(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if science:
            try:
                entry["data_sha256"] = science_digest(path)
            except Exception as err:  # an unreadable product is still listed, with why
                entry["data_sha256"] = f"unreadable: {err}"
        return entry


def build_manifest(campaign_dir: str | Path, campaign: str, config: dict, threads: int = 1) -> dict:
    """The manifest of the products now under ``campaign_dir`` (see the module docstring).

    Checksums are computed in ``threads`` threads (hashing and file reads release
    the GIL: two threads take ~0.55 of the time of one on the real nights)."""
    campaign_dir = Path(campaign_dir)
    previous_path = campaign_dir / MANIFEST
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    checksums = _Checksums({**previous.get("products", {}), **previous.get("raw", {})})
    records = _job_records(campaign_dir)
    owners = _owner_index(records)
    root = campaign_dir.resolve()

    products, jobs, raw = {}, {}, {}
    to_hash: dict[str, tuple[Path, bool]] = {}  # key -> (file, with its science digest)
    for path in sorted(p for p in campaign_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(campaign_dir)
        if kind_of(rel.as_posix()) in ("bookkeeping", "run_record") or path.name.startswith("."):
            continue
        record = _owner(path, owners)
        products[str(rel)] = {"job": record["key"] if record else None}
        to_hash[str(rel)] = (path, True)
        if record and record["key"] not in jobs:
            jobs[record["key"]] = {k: record.get(k) for k in ("rule", "wildcards", "software", "commit", "dirty",
                                                              "config_hash", "started")}
            inputs = []
            for item in record["input"]:
                item_path = Path(item).resolve()
                if item_path.is_relative_to(root):
                    inputs.append(str(item_path.relative_to(root)))
                else:  # outside the campaign: raw data (or the simulator's output)
                    inputs.append(str(item_path))
                    for file in ([item_path] if item_path.is_file() else sorted(item_path.rglob("*"))):
                        if file.is_file() and str(file) not in raw:
                            raw[str(file)] = {}
                            to_hash[str(file)] = (file, False)
            jobs[record["key"]]["inputs"] = inputs
    with ThreadPoolExecutor(max(1, threads)) as pool:
        sums = dict(zip(to_hash, pool.map(lambda item: checksums(item[1][0], item[0], item[1][1]), to_hash.items())))
    for key, entry in products.items():
        products[key] = {**sums[key], **entry}
    for key in raw:
        raw[key] = sums[key]
    return {
        "campaign": campaign,
        "software": software_version(),
        "commit": code_identity()["commit"],
        "dirty": code_identity()["dirty"],
        # products kept from an earlier run were made by earlier code: every commit, with its jobs
        "job_commits": _job_commits(jobs),
        "config_hash": config_hash(config),
        "config": config,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_products": len(products),
        "products": products,
        "jobs": jobs,
        "raw": raw,
    }


def _job_commits(jobs: dict) -> dict[str, int]:
    """``{commit (+dirty) or unknown: number of jobs}`` over a manifest's jobs."""
    counts: dict[str, int] = {}
    for job in jobs.values():
        key = (job.get("commit") or "unknown") + ("+dirty" if job.get("dirty") else "")
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def write_manifest(campaign_dir: str | Path, campaign: str, config: dict, output: str | Path | None = None,
                   threads: int = 1) -> dict:
    manifest = build_manifest(campaign_dir, campaign, config, threads)
    write_text(output or Path(campaign_dir) / MANIFEST, json.dumps(manifest, indent=1, default=str))
    return manifest


def read_manifest(campaign_dir: str | Path) -> dict:
    path = Path(campaign_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest (run the campaign's workflow to the end first)")
    return json.loads(path.read_text())
