"""Batch drivers behind the calibration rules: loop over frames, never stop the night.

A frame that fails (unreadable pixels, no usable master) is recorded in the
batch's ``_status.json`` with the reason, and the batch carries on; the
calibration report gathers these and fails loudly at the end of the run, after
every other product has been made.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from astropy.io import fits

from .atomic import write_text
from .calibrate import CalibrationConfig, build_master, calibrate_frame, load_master, preprocess_frame
from .calibselect import KINDS, choose_master, criteria_text, group_column, plan_masters

log = logging.getLogger(__name__)
STATUS = "_status.json"


def _write_status(outdir: Path, status: dict) -> None:
    write_text(outdir / STATUS, json.dumps(status, indent=1, sort_keys=True))


def preprocess_batch(rows: list[dict], outdir, cfg: CalibrationConfig) -> dict:
    """Pre-process calibration frames into ``<outdir>/<frame_id>.fits``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    status = {}
    for row in rows:
        try:
            preprocess_frame(row, cfg).write(outdir / f"{row['frame_id']}.fits")
            status[row["frame_id"]] = {"status": "ok"}
        except (OSError, ValueError) as err:
            log.error("%s", err)
            status[row["frame_id"]] = {"status": "error", "reason": str(err)}
    _write_status(outdir, status)
    return status


def master_for(kind: str, master_id: str, table: pd.DataFrame, proc_dirs, cfg: CalibrationConfig,
               output, config_hash: str = "", bias_paths=(), dark_paths=()) -> dict:
    """Build one planned master from the pre-processed frames found in ``proc_dirs``."""
    plan = plan_masters(table, cfg.dark_mode)[kind][master_id]
    by_id = table.set_index("frame_id")
    found = product_paths(proc_dirs, plan.frame_ids)
    paths, rows = [], []
    for fid in plan.frame_ids:
        if fid not in found:
            log.warning("%s: no pre-processed frame (see its batch's %s)", fid, STATUS)
            continue
        row = by_id.loc[fid].to_dict()
        row.update(frame_id=fid, sha1=fits.getval(found[fid], "RAWSHA1"))
        paths.append(found[fid])
        rows.append(row)
    used = {}
    for needed, candidates in (("bias", bias_paths), ("dark", dark_paths)):
        if kind == "bias" or (kind == "dark" and needed == "dark"):
            continue
        reference = rows[0] if rows else by_id.loc[plan.frame_ids[0]].to_dict()
        path, reason = choose_master(list(candidates), plan.mjd, reference[group_column(needed, cfg.dark_mode)],
                                     cfg.window_days)
        if path is None:
            log.warning("master %s %s: %s %s; step skipped", kind, master_id, needed, reason)
        used[needed] = load_master(path) if path else None
    product = build_master(kind, paths, rows, cfg, config_hash, used.get("bias"), used.get("dark"), plan.group)
    product.write(output)
    log.info("master %s %s: %d frames, QC %s %s", kind, master_id, len(rows),
             product.header["QCSTATUS"], product.header["QCREASON"])
    return {"qc": product.header["QCSTATUS"], "frames": len(rows)}


def calibrate_batch(rows: list[dict], masters: dict[str, list[str]], outdir, cfg: CalibrationConfig,
                    config_hash: str = "") -> dict:
    """Calibrate science frames into ``<outdir>/<frame_id>.fits`` with the best masters.

    For each frame and step, the nearest master of the right group within the
    window that passed QC is used; none -> the step is skipped (recorded in the
    header) or the frame is left out with an error, as ``on_missing`` says.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cache: dict[str, object] = {}
    status = {}
    for row in rows:
        chosen, skipped, errors = {}, {}, []
        for kind in KINDS:
            path, reason = choose_master(masters.get(kind, []), float(row["mjd_mid"]),
                                         row[group_column(kind, cfg.dark_mode)], cfg.window_days)
            if path is None:
                message = f"{reason} ({criteria_text(row, kind, cfg.window_days, cfg.dark_mode)})"
                if cfg.on_missing[kind] == "skip":
                    skipped[kind] = message
                else:
                    errors.append(f"{row['filename']}: {message}")
                chosen[kind] = None
            else:
                if path not in cache:
                    cache[path] = load_master(path)
                chosen[kind] = cache[path]
        entry = {"masters": {k: (v.header["MFILE"] if v is not None else None) for k, v in chosen.items()},
                 "skipped": skipped, "path": row["path"]}
        if errors:
            entry.update(status="error", reason="; ".join(errors))
            log.error("%s", entry["reason"])
        else:
            try:
                calibrate_frame(row, chosen, skipped, cfg, config_hash).write(outdir / f"{row['frame_id']}.fits")
                entry["status"] = "ok"
            except (OSError, ValueError) as err:
                entry.update(status="error", reason=str(err))
                log.error("%s", err)
        status[row["frame_id"]] = entry
    _write_status(outdir, status)
    return status


def report(table: pd.DataFrame, master_paths, calibrated_dirs) -> tuple[str, list[str]]:
    """Human-readable calibration report and the list of frame errors."""
    lines = ["ccdflow calibration report", "", "Masters:"]
    for path in master_paths:
        header = fits.getheader(path)
        lines.append(f"  {path}: {header['OBSTYPE']} n={header['NCOMBINE']} QC={header['QCSTATUS']}"
                     + (f" ({header['QCREASON']})" if header.get("QCREASON") else ""))
    errors, counts = [], {"ok": 0, "error": 0}
    lines += ["", "Science frames:"]
    for folder in calibrated_dirs:
        status = json.loads((Path(folder) / STATUS).read_text())
        for fid, entry in sorted(status.items()):
            counts[entry["status"]] += 1
            masters = ", ".join(f"{k}={v}" for k, v in entry["masters"].items() if v)
            skipped = "; ".join(f"{k} skipped: {v}" for k, v in entry.get("skipped", {}).items())
            lines.append(f"  [{entry['status']}] {entry['path']}: {masters}" + (f" | {skipped}" if skipped else ""))
            if entry["status"] == "error":
                lines.append(f"      ERROR {entry['reason']}")
                errors.append(entry["reason"])
    lines.insert(1, f"{counts['ok']} science frames calibrated, {counts['error']} left uncalibrated")
    return "\n".join(lines) + "\n", errors


def product_paths(folders, frame_ids) -> dict[str, str]:
    """``{frame_id: path}`` of the per-frame products present in batch folders.

    Frames that failed (see the batch's ``_status.json``) are simply absent.
    """
    wanted = set(frame_ids)
    found = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*.fits")):
            if path.stem in wanted:
                found.setdefault(path.stem, str(path))
    return {fid: found[fid] for fid in frame_ids if fid in found}
