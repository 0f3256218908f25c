"""Per-frame pixel statistics: the first per-frame product, run in batches.

Each frame gets its own small JSON file (so one frame's product can be
replaced on its own), but frames are processed many to a job: starting a
Snakemake job costs about a second, reading a frame a few milliseconds.
Reading the pixels also catches what a header-only inventory cannot: a data
unit that is corrupt although the file has the right length.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import write_text
from .ccdio import read_raw
from .frameloop import FrameFailed, run_frames
from .layout import STATUS_FILE
from .sections import parse_section
from .stats import robust_std

def frame_statistics(path: str, data_section: str, overscan_section: str = "",
                     saturation: float | None = None, extensions: str = "") -> dict:
    """Robust level and spread of the data (and overscan) region, in ADU.

    Returns ``status='ok'`` with ``median``, ``robust_std`` (1.4826 MAD),
    ``min``, ``max``, ``saturated_fraction`` and ``overscan_median``, or
    ``status='unreadable'`` with a ``reason`` naming the file and problem.
    """
    try:
        image = read_raw(path, extensions)[0].astype(np.float32)
    except (OSError, ValueError) as err:  # corrupt data must not stop the batch; the message names the file
        return {"status": "unreadable", "reason": str(err)}
    data = image[parse_section(data_section).slices]
    median = float(np.median(data))
    stats = {
        "status": "ok",
        "reason": "",
        "median": median,
        "robust_std": float(robust_std(data)),
        "min": float(data.min()),
        "max": float(data.max()),
        "saturated_fraction": float(np.mean(data >= saturation)) if saturation else 0.0,
        "overscan_median": None,
    }
    if overscan_section:
        stats["overscan_median"] = float(np.median(image[parse_section(overscan_section).slices]))
    return stats


def run_batch(rows: list[dict], outdir: str | Path) -> list[dict]:
    """Write ``<outdir>/<frame_id>.json`` for every inventory row given.

    A frame whose pixels cannot be read still gets its file (``status:
    unreadable`` with the reason, for the inventory summary) and is marked
    failed in the batch's status file.
    """
    outdir = Path(outdir)
    results = []

    def process(frame_id, row, folder):
        stats = frame_statistics(row["path"], row["data_section"], row.get("overscan_section") or "",
                                 row.get("saturation"), row.get("extensions") or "")
        stats = {"frame_id": frame_id, "path": row["path"], **stats}
        write_text(folder / f"{frame_id}.json", json.dumps(stats, indent=1))
        results.append(stats)
        if stats["status"] != "ok":
            raise FrameFailed(stats["reason"])

    run_frames(((r["frame_id"], r) for r in rows), process, outdir)
    return results


def collect(batch_dirs: list[str | Path]) -> list[dict]:
    """All per-frame statistics found in the given batch folders."""
    return [json.loads(p.read_text()) for d in batch_dirs for p in sorted(Path(d).glob("*.json"))
            if p.name != STATUS_FILE]
