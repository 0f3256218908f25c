"""DAG build time: a dry run (``snakemake -n``) of a 20,000-frame, 100-night campaign.

Builds, in ``--workdir`` (a temp dir by default; reused when already there):

* a raw tree of tiny but *valid* FITS frames (20x16 pixels, real
  simulator-style headers), one folder per night: 10 biases, 10 darks and
  10 flats in each of R and V, then the science frames of two fields (one in
  R, one in V) -- 200 frames a night by default;
* a config (``simulate.enabled: false``, ``raw`` -> that tree, instrument
  ``simulator``, absolute ``instruments_dir``, no light-curve targets).

Then, not timed, it runs the real ``inventory`` checkpoint through snakemake
on those files. The placeholders are real FITS files so the checkpoint can run
as it would on a telescope's night: the inventory table is the one ccdflow
writes and snakemake records its metadata, so the timed dry run uses the
default ``--rerun-triggers`` (mtime, params, input, software-env, code) with
nothing faked, and the script checks that the checkpoint is not planned again.

Timed: ``python -m snakemake -n --cores 2`` with the same workdir and config,
which plans frame statistics, pre-processing, masters, calibrated batches and
fields for every night. Prints the number of jobs, the wall time and its ratio
to the 60 s target, and the CPU time (what the dry run, which runs on one core,
takes alone when the machine is busy with other work). ``--profile FILE`` runs the dry run under cProfile (slower;
the time printed is then not the benchmark's).

Where the time goes (py-spy, snakemake 9.27): about half is snakemake
checking, for each of the ~4000 jobs that take the inventory as input, whether
that file is among the checkpoint's own inputs -- a linear scan of its 20,000
raw files, so it grows as jobs x raw files. Master look-ups in the input
functions (common.smk) used to take another ~40 % before they were indexed.

    python benchmarks/bench_dag.py [--frames 20000] [--nights 100] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 60.0
NY, NX, NDATA = 16, 20, 16  # tiny frames: 16 data columns + 4 overscan columns
PER_CAL = 10                # biases, darks and flats per filter, each night
FIELDS = [("FIELD-A", "R", "10:00:00.00", "+30:00:00.0"), ("FIELD-B", "V", "14:30:00.00", "-05:00:00.0")]
START = dt.date(2025, 1, 1)


def night_plan(per_night: int) -> list[tuple[str, str, str, float, tuple | None]]:
    """(imagetyp, object, filter, exptime, field) of each frame of a night, in time order."""
    plan = [("BIAS", "bias", "R", 0.0, None)] * PER_CAL + [("DARK", "dark", "R", 60.0, None)] * PER_CAL
    for _, filt, _, _ in FIELDS:
        plan += [("FLAT", "flat", filt, 5.0, None)] * PER_CAL
    science = per_night - len(plan)
    if science < 2 * len(FIELDS):
        raise SystemExit(f"need more than {len(plan)} frames a night")
    for index, field in enumerate(FIELDS):
        count = science // len(FIELDS) + (index < science % len(FIELDS))
        plan += [("OBJECT", field[0], field[1], 60.0, field)] * count
    return plan


def header(kind, obj, filt, exptime, field, date_obs) -> fits.Header:
    ra, dec = (field[2], field[3]) if field else ("12:00:00.00", "+00:00:00.0")
    return fits.Header([
        ("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", NX), ("NAXIS2", NY),
        ("BZERO", 32768), ("BSCALE", 1),
        ("IMAGETYP", kind), ("OBJECT", obj), ("EXPTIME", exptime), ("FILTER", filt),
        ("DATE-OBS", date_obs), ("GAIN", 1.5), ("RDNOISE", 6.0), ("SATURATE", 60000),
        ("BIASSEC", f"[{NDATA + 1}:{NX},1:{NY}]"), ("TRIMSEC", f"[1:{NDATA},1:{NY}]"), ("NAMPS", 1),
        ("DATASEC1", f"[1:{NDATA},1:{NY}]"), ("BIASSEC1", f"[{NDATA + 1}:{NX},1:{NY}]"),
        ("GAIN1", 1.5), ("RDNOISE1", 6.0), ("CCDSUM", "1 1"), ("DETECTOR", "SIMCCD-1"),
        ("RA", ra), ("DEC", dec), ("SITELAT", 31.96), ("SITELONG", -111.6), ("SITEELEV", 2096.0),
    ])


def make_raw(raw: Path, frames: int, nights: int) -> None:
    """Write ``frames`` tiny FITS files over ``nights`` consecutive nights."""
    data = np.full((NY, NX), 1000 - 32768, dtype=">i2").tobytes()  # BZERO 32768: 1000 ADU
    data += b"\0" * (-len(data) % 2880)
    for night in range(nights):
        per_night = frames // nights + (night < frames % nights)
        date = START + dt.timedelta(days=night)
        folder = raw / date.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        # first frame at 01:00 UTC (~17:30 local at the site), one every 2 min
        start = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(1, 0))
        for index, (kind, obj, filt, exptime, field) in enumerate(night_plan(per_night)):
            date_obs = (start + dt.timedelta(minutes=2 * index)).isoformat(timespec="milliseconds")
            text = header(kind, obj, filt, exptime, field, date_obs).tostring()
            (folder / f"{kind.lower()}_{index:04d}.fits").write_bytes(text.encode() + data)


def snakemake(work: Path, config: Path, *args: str, log: Path, profile: str | None = None) -> tuple[float, float]:
    """Run snakemake in ``work`` (under cProfile if ``profile``), output to ``log``.

    Returns its wall time and CPU time (user + system): on a busy machine the
    CPU time is what the dry run would take alone (it runs on one core).
    """
    python = [sys.executable] + (["-m", "cProfile", "-o", str(Path(profile).resolve())] if profile else [])
    command = [*python, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--directory", str(work), "--configfile", str(config), "--cores", "2", *args]
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        sys.exit(f"snakemake failed ({result.returncode}), see {log}:\n{log.read_text()[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def job_counts(text: str) -> dict[str, int]:
    """Rule -> jobs from the 'Job stats' table snakemake prints."""
    table = text.split("Job stats:", 1)[-1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--nights", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--workdir", default=None, help="kept and reused (default: a temp dir, removed)")
    parser.add_argument("--profile", default=None, help="write a cProfile of the dry run to this file")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ccdflow-bench-dag-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw"
    if len(list(raw.rglob("*.fits"))) != args.frames:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(work / "results", ignore_errors=True)
        t0 = time.perf_counter()
        make_raw(raw, args.frames, args.nights)
        print(f"wrote {args.frames} raw frames over {args.nights} nights in {time.perf_counter() - t0:.1f} s")
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({
        "campaign": "bench", "results_dir": str(work / "results"),
        "instruments_dir": str(ROOT / "config" / "instruments"),
        "simulate": {"enabled": False}, "raw": [{"path": str(raw), "instrument": "simulator"}],
        "batch": {"size": args.batch_size}, "lightcurves": {"targets": []},
    }))
    inventory = work / "results" / "bench" / "inventory" / "inventory.ecsv"
    setup, _ = snakemake(work, config, str(inventory), log=work / "setup.log")
    print(f"setup: inventory checkpoint run for real by snakemake in {setup:.1f} s (not timed)")

    load = os.getloadavg()[0]
    wall, cpu = snakemake(work, config, "-n", log=work / "dryrun.log", profile=args.profile)
    jobs = job_counts((work / "dryrun.log").read_text())
    if "inventory" in jobs:
        sys.exit("the inventory checkpoint was planned again: the dry run does not measure what it should")
    print("jobs by rule: " + ", ".join(f"{rule} {n}" for rule, n in sorted(jobs.items()) if rule != "total"))
    print(f"dry run ({args.frames} frames, {args.nights} nights): {jobs.get('total', 0)} jobs, {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU (load average {load:.1f} before it, {os.cpu_count()} cores)")
    print(f"wall / {TARGET_S:.0f} s target = {wall / TARGET_S:.2f} ({'met' if wall < TARGET_S else 'MISSED'})")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
