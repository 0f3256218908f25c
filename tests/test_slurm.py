"""A simulated night through a real SLURM cluster (profiles/slurm) gives the same science as a local run.

The night is the simulator's "tiny" preset (every rule of the workflow runs,
the same SLURM groups are formed, in a quarter of the demo night's time).

Stands up a single-node cluster on localhost with tests/slurm/cluster.sh (and
stops it afterwards if it was not already running). Skipped where SLURM is not
installed, unless CCDFLOW_REQUIRE_SLURM=1 (CI), where that is a failure.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from compare_trees import compare_trees
from workflow_run import ROOT, run_snakemake

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"

SLURM_LIMIT = 900  # s; the tiny night takes ~1.5 min through SLURM on 2 cores


def _unavailable(reason: str):
    if os.environ.get("CCDFLOW_REQUIRE_SLURM") == "1":
        pytest.fail(f"CCDFLOW_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _cluster(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER), command], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def cluster():
    missing = [b for b in ("sbatch", "squeue", "slurmctld", "slurmd", "munged") if shutil.which(b) is None]
    if missing:
        _unavailable(f"SLURM is not installed (no {', '.join(missing)}; see tests/slurm/cluster.sh install)")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        _unavailable("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    was_running = _cluster("status").returncode == 0
    if not was_running:
        if os.geteuid() != 0:
            _unavailable("the test cluster is down and starting it needs root")
        start = time.monotonic()
        result = _cluster("start")
        assert result.returncode == 0, f"cluster.sh start failed:\n{result.stdout}{result.stderr}"
        print(f"cluster started in {time.monotonic() - start:.1f} s")
    yield
    if not was_running:  # leave a cluster someone else started alone
        _cluster("stop")


def _write_config(path: Path, results: Path, night: Path) -> Path:
    # the demo config on the tiny night, every output in the test's folder; both runs
    # share one simulated night, so raw paths (and the frame ids hashed from them) agree
    path.write_text(yaml.safe_dump({
        "results_dir": str(results),
        "simulate": {"outdir": str(night), "preset": "tiny", "overrides": {"damaged": ["truncated"]}},
        "raw": [{"path": str(night / "raw"), "instrument": "simulator"}],
        "batch": {"size": 4},
        "calibration": {"flat": {"min_frames": 2}},  # 4 flats per filter, one saturated and one faint
        "lightcurves": {"targets": [], "all_sources": True},  # the demo's targets belong to the demo night
    }))
    return path


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The tiny night through SLURM, then again locally; their results folders and the SLURM output."""
    work = tmp_path_factory.mktemp("slurm")
    night = work / "night"
    slurm_cfg = _write_config(work / "slurm.yaml", work / "slurm", night)
    local_cfg = _write_config(work / "local.yaml", work / "local", night)

    start = time.monotonic()
    # Snakemake ignores SIGTERM while it waits on cluster jobs: -k kills it after 30 s
    slurm = subprocess.run(
        ["timeout", "-k", "30", str(SLURM_LIMIT), sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
         "--configfile", str(slurm_cfg), "--slurm-logdir", str(work / "slurm_logs"), "--slurm-keep-successful-logs"],
        cwd=ROOT, capture_output=True, text=True,
    )
    slurm_s = time.monotonic() - start
    output = slurm.stdout + slurm.stderr
    (work / "slurm.log").write_text(output)
    if slurm.returncode in (124, 137):
        pytest.fail(f"SLURM run hit the {SLURM_LIMIT} s limit (lost track of jobs?):\n{output[-4000:]}")
    if slurm.returncode != 0:
        # a job that fails before its script runs leaves its reason in the SLURM log only
        failed = [p for p in (work / "slurm_logs").rglob("*.log") if "Error" in p.read_text()]
        details = "".join(f"\n--- {p}:\n{p.read_text()[-2500:]}" for p in failed[:3])
        pytest.fail(f"SLURM run failed ({slurm.returncode}):\n{output[-3000:]}{details}")

    start = time.monotonic()
    run_snakemake(config=local_cfg)
    local_s = time.monotonic() - start
    print(f"tiny night: {slurm_s:.0f} s through SLURM, {local_s:.0f} s locally (simulation reused)")
    return work / "slurm" / "demo", work / "local" / "demo", output, work / "slurm_logs"


@pytest.mark.slow
def test_every_job_ran_as_a_slurm_job(runs):
    _, _, output, logdir = runs
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: (.+?)\)", output)
    assert len(submitted) >= 5, output[-3000:]
    for jobid, log in submitted:
        text = Path(log).read_text()  # kept by --slurm-keep-successful-logs
        assert "--executor slurm-jobstep" in text, f"SLURM job {jobid} did not run the workflow: {log}"
    # nothing ran in the submitting process except the target rule
    local_rules = set(re.findall(r"^local(?:rule|checkpoint) (\w+):", output, re.MULTILINE))
    assert local_rules <= {"all", "check_run"}, local_rules  # check_run prints the summary on the console
    assert {p.name for p in logdir.iterdir()} >= {"rule_simulate_night", "rule_inventory", "rule_calibrate_science"}


@pytest.mark.slow
def test_same_science_as_local_run(runs):
    slurm, local, _, _ = runs
    assert len(list(slurm.rglob("*.fits"))) > 20 and list(slurm.rglob("lightcurves/*/*/src*.ecsv"))
    differences = compare_trees(slurm, local)
    assert not differences, "\n".join(differences[:50])


# -- compare_trees itself (fast, no SLURM) -----------------------------------------


def _tree(root: Path, pixel: float, date: str) -> Path:
    (root / "masters").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "logs" / "a.log").write_text(date)  # logs are not compared
    data = np.array([[1.0, np.nan], [3.0, pixel]], dtype=np.float32)
    header = fits.Header({"DATE": date, "CFGHASH": date, "GAIN": 1.5, "MFILE": f"{root}/masters/x.fits"})
    fits.HDUList([fits.PrimaryHDU(data, header), fits.ImageHDU(np.arange(4))]).writeto(root / "masters" / "x.fits")
    (root / "t.ecsv").write_text(f"# %ECSV 1.0\n# ---\n# datatype:\n# - {{name: flux, datatype: float64}}\nflux\n{pixel}\nnan\n")
    return root


def test_compare_trees_ignores_run_details_but_not_data(tmp_path):
    a = _tree(tmp_path / "a", 4.0, "2025-01-01T00:00:00")
    assert compare_trees(a, _tree(tmp_path / "b", 4.0, "2026-02-02T12:00:00")) == []
    found = compare_trees(a, _tree(tmp_path / "c", 4.5, "2025-01-01T00:00:00"))
    assert found == ["masters/x.fits[0]: data differ", "t.ecsv: column 'flux' differs"]
