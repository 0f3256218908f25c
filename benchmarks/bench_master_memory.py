"""Peak memory of the master-building path (``calibrate.build_master``) against its budget.

Writes N pre-processed bias-like 2048x2048 frames as the workflow's ``preprocess``
rule does (``Product.write`` to plain ``.fits``: float32 data, variance, int16
mask) into ``--workdir`` (reused when there), then builds a master bias from
25 and 100 of them at ``calibration.combine.mem_budget_mb`` = 128 and 1024, each
in a fresh subprocess, and prints its peak RSS (``ru_maxrss`` of the child,
``VmHWM`` as a cross-check).

What must hold (issue 14.2): the peak does not grow with the number of frames
beyond the budget. The figures printed are the growth per added frame,
(peak(100) - peak(25)) / 75, against the 24 MB a frame that stays resident if
every input's pages stay mapped (data and mask planes of a 2048^2 frame), and
the peak over the budget.

    python benchmarks/bench_master_memory.py [--workdir DIR] [--frames 25 100] [--budgets 128 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SIZE = 2048
MAPPED_MB_PER_FRAME = SIZE * SIZE * (4 + 2) / 2**20  # data float32 + mask int16


def make_frames(workdir: Path, count: int) -> None:
    import numpy as np

    from ccdflow.ccdio import Product

    rng = np.random.default_rng(7)
    for index in range(count):
        path = workdir / f"bias_{index:03d}.fits"
        if path.exists():
            continue
        data = (5.0 * rng.standard_normal((SIZE, SIZE), dtype=np.float32)).astype(np.float32)
        Product(data, np.full(data.shape, 25.0, np.float32), np.zeros(data.shape, np.int16)).write(path)


def rows(paths: list[Path]) -> list[dict]:
    return [{"frame_id": p.stem, "filename": p.name, "sha1": "-", "mjd_mid": 60000.0 + i / 1440, "exptime": 0.0,
             "saturation": 65535.0, "cal_group": "bench"} for i, p in enumerate(paths)]


def build(workdir: Path, nframes: int, budget: int) -> dict:
    import resource
    import time

    from ccdflow.calibrate import CalibrationConfig, build_master

    paths = sorted(workdir.glob("bias_*.fits"))[:nframes]
    cfg = CalibrationConfig.from_config({"combine": {"mem_budget_mb": budget}})
    start = time.perf_counter()
    product = build_master("bias", [str(p) for p in paths], rows(paths), cfg, group="bench")
    wall = time.perf_counter() - start
    hwm = next((int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM")), float("nan"))
    return {"frames": nframes, "budget_mb": budget, "wall_s": round(wall, 1), "qc": product.header["QCSTATUS"],
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "vmhwm_mb": round(hwm, 1)}


def child(*argv: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *argv], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--frames", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        task, *rest = args.child
        if task == "make":
            make_frames(Path(rest[0]), int(rest[1]))
            print("{}")
        else:
            print(json.dumps(build(Path(rest[0]), int(rest[1]), int(rest[2]))))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_master_memory_"))
    workdir.mkdir(parents=True, exist_ok=True)
    child("make", str(workdir), str(max(args.frames)))
    results = {}
    for budget in args.budgets:
        for n in args.frames:
            results[budget, n] = r = child("build", str(workdir), str(n), str(budget))
            print(f"budget {budget:5d} MB  {n:4d} frames: peak {r['peak_mb']:7.1f} MB (VmHWM {r['vmhwm_mb']:.1f}), "
                  f"{r['wall_s']} s, QC {r['qc']}")
    low, high = min(args.frames), max(args.frames)
    for budget in args.budgets:
        growth = (results[budget, high]["peak_mb"] - results[budget, low]["peak_mb"]) / (high - low)
        print(f"budget {budget} MB: {growth:+.2f} MB per added frame (every input's pages kept mapped: "
              f"{MAPPED_MB_PER_FRAME:.0f} MB); peak at {high} frames = {results[budget, high]['peak_mb'] / budget:.2f}"
              " x the budget")

if __name__ == "__main__":
    main()
