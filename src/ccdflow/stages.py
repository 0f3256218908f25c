"""Batch drivers behind the calibration rules: loop over frames, never stop the night.

A frame that fails (unreadable pixels, no usable master) is recorded in the
batch's status file with the reason (:mod:`ccdflow.frameloop`), and the batch carries on; the
calibration report gathers these and fails loudly at the end of the run, after
every other product has been made.
"""

from __future__ import annotations

import logging
from pathlib import Path

from astropy.io import fits

from .calibrate import CalibrationConfig, PreparedMaster, build_master, calibrate_frame, load_master, preprocess_frame
from .calibselect import KINDS, PlannedMaster, choose_master, criteria_text, group_column
from .frameloop import FAILED, OK, FrameFailed, read_status, run_frames
from .layout import BATCH_STAGES
from .recipes import RECIPES

log = logging.getLogger(__name__)


def preprocess_batch(rows: list[dict], outdir, cfg: CalibrationConfig) -> dict:
    """Pre-process calibration frames into ``<outdir>/<frame_id>.fits`` (plain FITS: the
    masters read them in row chunks by memory map)."""
    outdir = Path(outdir)

    def process(frame_id, row, folder):
        preprocess_frame(row, cfg).write(folder / f"{frame_id}{BATCH_STAGES['proc']}")

    return run_frames(((r["frame_id"], r) for r in rows), process, outdir)


def master_for(master: PlannedMaster, rows: list[dict], frames: dict[str, str], cfg: CalibrationConfig,
               output, config_hash: str = "", subtract: dict[str, list[str]] | None = None) -> dict:
    """Build one planned master from its frames' pre-processed products.

    ``rows`` are the inventory rows of the master's frames (in time order),
    ``frames`` their pre-processed files (``{frame_id: path}``; a frame whose
    file is missing failed pre-processing and is left out), ``subtract`` the
    candidate masters of each kind the recipe subtracts, nearest first.
    """
    kind, master_id = master.kind, master.master_id
    recipe = RECIPES[kind]
    paths, used_rows = [], []
    for row in rows:
        path = frames.get(row["frame_id"])
        if path is None or not Path(path).exists():
            log.warning("%s: no pre-processed frame (see its batch's status file)", row["frame_id"])
            continue
        paths.append(path)
        used_rows.append(dict(row, sha1=fits.getval(path, "RAWSHA1")))
    reference = used_rows[0] if used_rows else rows[0]
    used = {}
    for needed in recipe.subtracts:
        path, reason = choose_master(list((subtract or {}).get(needed, [])), master.mjd,
                                     reference[group_column(needed, cfg.dark_mode)], cfg.window_days)
        if path is None:
            log.warning("master %s %s: %s %s; step skipped", kind, master_id, needed, reason)
        used[needed] = load_master(path) if path else None
    product = build_master(kind, paths, used_rows, cfg, config_hash, used.get("bias"), used.get("dark"),
                           master.group)
    product.write(output, cfg.quantize_level)
    log.info("master %s %s: %d frames, QC %s %s", kind, master_id, len(used_rows),
             product.header["QCSTATUS"], product.header["QCREASON"])
    return {"qc": product.header["QCSTATUS"], "frames": len(used_rows)}


def calibrate_batch(rows: list[dict], candidates: dict[str, dict[str, list[str]]], outdir, cfg: CalibrationConfig,
                    config_hash: str = "") -> dict:
    """Calibrate science frames into ``<outdir>/<frame_id>.fits.fz`` with the best masters.

    ``candidates[frame_id][kind]`` lists the master files that may serve the
    frame. For each frame and step, the nearest master of the right group
    within the window that passed QC is used; none -> the step is skipped
    (recorded in the header) or the frame fails with the reason, as
    ``on_missing`` says.
    """
    outdir = Path(outdir)
    prepared: dict[str, PreparedMaster] = {}

    def master(kind, path):
        if path not in prepared:
            prepared[path] = PreparedMaster.of(kind, load_master(path))
        return prepared[path]

    def process(frame_id, row, folder):
        chosen, skipped, errors = {}, {}, []
        for kind in KINDS:
            path, reason = choose_master(candidates.get(frame_id, {}).get(kind, []), float(row["mjd_mid"]),
                                         row[group_column(kind, cfg.dark_mode)], cfg.window_days)
            if path is None:
                message = f"{reason} ({criteria_text(row, kind, cfg.window_days, cfg.dark_mode)})"
                if cfg.on_missing[kind] == "skip":
                    skipped[kind] = message
                else:
                    errors.append(f"{row['filename']}: {message}")
            chosen[kind] = master(kind, path) if path else None
        names = {k: (v.product.header["MFILE"] if v is not None else None) for k, v in chosen.items()}
        info = {"masters": names, "skipped": skipped}
        if errors:
            raise FrameFailed("; ".join(errors), info)
        calibrate_frame(row, chosen, skipped, cfg, config_hash).write(folder / f"{frame_id}{BATCH_STAGES['calibrated']}",
                                                                     cfg.quantize_level)
        return info

    return run_frames(((r["frame_id"], r) for r in rows), process, outdir,
                      extra=lambda frame_id, row: {"path": row["path"], "masters": {}, "skipped": {}})


def report(master_paths, calibrated_dirs) -> tuple[str, list[str]]:
    """Human-readable calibration report and the list of frame errors."""
    lines = ["ccdflow calibration report", "", "Masters:"]
    for path in master_paths:
        header = fits.getheader(path)
        lines.append(f"  {path}: {header['OBSTYPE']} n={header['NCOMBINE']} QC={header['QCSTATUS']}"
                     + (f" ({header['QCREASON']})" if header.get("QCREASON") else ""))
    errors, counts = [], {OK: 0, FAILED: 0}
    lines += ["", "Science frames:"]
    for folder in calibrated_dirs:
        for fid, entry in sorted(read_status(folder).items()):
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
            masters = ", ".join(f"{k}={v}" for k, v in entry["masters"].items() if v)
            skipped = "; ".join(f"{k} skipped: {v}" for k, v in entry.get("skipped", {}).items())
            lines.append(f"  [{entry['status']}] {entry['path']}: {masters}" + (f" | {skipped}" if skipped else ""))
            if entry["status"] == FAILED:
                lines.append(f"      ERROR {entry['reason']}")
                errors.append(entry["reason"])
    lines.insert(1, f"{counts[OK]} science frames calibrated, {counts[FAILED]} left uncalibrated")
    return "\n".join(lines) + "\n", errors
