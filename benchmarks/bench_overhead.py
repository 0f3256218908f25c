"""Orchestration overhead: the demo night's wall time against its jobs' own time.

Runs the real workflow on the demo night (config/config.yaml, with results_dir
and the simulator's outdir moved into a temp workdir; the night is simulated
by the workflow's first job) as ``python -m snakemake --cores 2``, then reads
every job's ``benchmark:`` file (snakemake's TSV: one header line, then
``s  h:m:s  max_rss ...``; ``s`` is the job's wall time in seconds, including
its script's Python start-up and imports) and prints:

* wall / sum(job s): the run against the same jobs run one after another with
  no orchestration at all; below 1 when the 2 cores overlap jobs, so it shows
  the parallel gain and the overhead together;
* wall - sum(job s) / cores: the time the jobs' own work does not explain even
  if it were spread perfectly over the cores -- an upper bound on snakemake's
  own cost (start-up, DAG building and the checkpoint's re-evaluation,
  scheduling, spawning jobs, file checks, metadata), which also holds cores
  left idle by dependencies (a master waits for its batches);
* to tell those two apart, from the time stamps of snakemake's log: the time
  with no job running at all (snakemake's own serial cost) and the time with
  fewer jobs than cores (dependencies leaving a core idle);
* the number of jobs and, per rule, jobs and summed / mean time, largest first.

Job times grow when the machine is busy with other work: the load average
before the run is printed with the result.

    python benchmarks/bench_overhead.py [--cores 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def job_seconds(tsv: Path, column: str = "s") -> float:
    """A column of a snakemake benchmark file (summed if the job was repeated; "NA" counts 0)."""
    with open(tsv) as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    return sum(float(row[column]) for row in rows if row.get(column, "NA") not in ("NA", ""))


def seconds_below(log_text: str, start: float, end: float, jobs: int) -> float:
    """Seconds with fewer than ``jobs`` jobs running, from the time stamps (1 s resolution)
    snakemake prints as it starts (``rule x:``) and finishes (``Finished jobid``) each job."""
    stamps = re.findall(r"^\[(.+?)\]\n(Finished|(?:local)?(?:rule|checkpoint))", log_text, re.M)
    events = sorted((dt.datetime.strptime(stamp, "%a %b %d %H:%M:%S %Y").timestamp(), -1 if kind == "Finished" else 1)
                    for stamp, kind in stamps)
    idle, running, last = 0.0, 0, start
    for when, step in events + [(end, 0)]:
        if running < jobs:
            idle += max(0.0, when - last)
        running, last = running + step, max(last, when)
    return idle


def rules_by_benchmark(log_text: str) -> dict[str, str]:
    """Benchmark file -> rule, from the job descriptions snakemake prints as it runs them."""
    found = {}
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", log_text):
        rule = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        bench = re.search(r"^\s+benchmark: (.+)$", block, re.M)
        if rule and bench:
            found[str(Path(bench[1].strip()).resolve())] = rule[1]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="a new or empty folder, kept (default: a temp dir, removed)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ccdflow-bench-overhead-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        sys.exit(f"{work} is not empty: the run must start from nothing")

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    sim_out = work / "demo"
    config.update(results_dir=str(work / "results"), instruments_dir=str(ROOT / "config" / "instruments"))
    config["simulate"]["outdir"] = str(sim_out)
    config["raw"] = [{**source, "path": str(sim_out / "raw")} if source["path"].startswith("demo") else source
                     for source in config["raw"]]
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
               "--configfile", str(config_path), "--cores", str(args.cores)]
    log = work / "snakemake.log"
    print("running:", " ".join(command))
    load, start, t0 = os.getloadavg()[0], time.time(), time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if result.returncode:
        sys.exit(f"snakemake failed ({result.returncode}), see {log}:\n{log.read_text()[-3000:]}")

    text = log.read_text()
    bench_dir = work / "results" / config["campaign"] / "benchmarks"
    rules = rules_by_benchmark(text)
    per_rule, cpu = defaultdict(list), 0.0
    for tsv in sorted(bench_dir.rglob("*.tsv")):
        per_rule[rules.get(str(tsv.resolve()), tsv.relative_to(bench_dir).parts[0])].append(job_seconds(tsv))
        cpu += job_seconds(tsv, "cpu_time")
    total = sum(sum(times) for times in per_rule.values())
    jobs = sum(len(times) for times in per_rule.values())

    print(f"\n{'rule':<24} {'jobs':>5} {'sum s':>9} {'mean s':>8} {'share':>6}")
    for rule, times in sorted(per_rule.items(), key=lambda item: -sum(item[1])):
        print(f"{rule:<24} {len(times):>5} {sum(times):>9.1f} {sum(times) / len(times):>8.2f} "
              f"{sum(times) / total:>6.1%}")
    print(f"{'total':<24} {jobs:>5} {total:>9.1f}")
    steps = re.findall(r"(\d+) of (\d+) steps", text)
    print(f"\ndemo night, --cores {args.cores}: {steps[-1][1] if steps else '?'} jobs run by snakemake, {jobs} with a "
          f"benchmark file; wall {wall:.1f} s; sum of job times {total:.1f} s (their CPU time {cpu:.1f} s); "
          f"load average {load:.1f} before the run")
    print(f"wall / sum(job s) = {wall / total:.2f}   (1.00 = as long as running the jobs back to back)")
    unexplained = wall - total / args.cores
    print(f"wall - sum(job s) / {args.cores} cores = {unexplained:.1f} s ({unexplained / wall:.0%} of the wall "
          f"time not explained by job time on {args.cores} cores)")
    idle = seconds_below(text, start, start + wall, 1)
    short = seconds_below(text, start, start + wall, args.cores)
    print(f"no job running for {idle:.0f} s ({idle / wall:.0%} of the wall time: snakemake's start-up, DAG, "
          f"checkpoint re-evaluation and gaps between jobs); fewer than {args.cores} jobs for {short:.0f} s "
          f"(jobs waiting on others)")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
