"""The SLURM end-to-end run of tests/test_slurm.py, started in the background at collection.

A SLURM run is mostly waiting (submission, job start-up, status polls): ~4 min of
wall time for ~1 min of CPU. Started as soon as pytest has collected the suite, it
runs beside the other tests, and tests/test_slurm.py only collects its result.

It runs in a copy of the workflow (its own working directory, so its own
``.snakemake`` with its locks and metadata): Snakemake refuses a second run in one
working directory whose outputs it cannot tell apart, and the rest of the suite runs
Snakemake in the repository at the same time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from workflow_run import ROOT, copy_workflow, local_env

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
SLURM_LIMIT = 2400  # s; a guard, not a target: the tiny night takes ~2 min through SLURM on 2 cores, and
# over 15 min with the suite's other background runs beside it (a CI check, 2 cores)


def _cluster(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER), command], capture_output=True, text=True, timeout=120)


def write_config(path: Path, results: Path, night: Path) -> Path:
    """A campaign like the demo's on the tiny night, every output in the test's folder; both
    runs share one simulated night, so raw paths (and the frame ids hashed from them) agree."""
    path.write_text(yaml.safe_dump({
        "campaign": "demo", "results_dir": str(results),
        "simulate": {"enabled": True, "outdir": str(night), "preset": "tiny", "overrides": {"damaged": ["truncated"]}},
        "raw": [{"path": str(night / "raw"), "instrument": "simulator"}],
        "batch": {"size": 4},
        "calibration": {"flat": {"min_frames": 2}},  # 4 flats per filter, one saturated and one faint
        "lightcurves": {"targets": [], "all_sources": True},  # the demo's targets belong to the demo night
    }))
    return path


@dataclass
class SlurmRuns:
    """Outcome of the background runs: SLURM, then the same night locally."""

    work: Path
    unavailable: str = ""  # why SLURM could not be used here (skip, or fail under CI)
    failure: str = ""  # why a run failed
    output: str = ""  # the SLURM run's console output
    started_cluster: bool = False
    seconds: dict = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _process: subprocess.Popen | None = None
    _stopped: bool = False

    @property
    def slurm(self) -> Path:
        return self.work / "slurm" / "demo"

    @property
    def local(self) -> Path:
        return self.work / "local" / "demo"

    @property
    def logdir(self) -> Path:
        return self.work / "slurm_logs"

    def start(self) -> SlurmRuns:
        self._thread = threading.Thread(target=self._run, name="slurm-run", daemon=True)
        self._thread.start()
        return self

    def wait(self) -> SlurmRuns:
        if self._thread is not None:
            self._thread.join()
        return self

    def stop(self) -> None:
        """End of the session: kill a run still going (the suite stopped early), stop our cluster."""
        self._stopped = True
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
        self.wait()
        if self.started_cluster:  # leave a cluster someone else started alone
            _cluster("stop")

    def _call(self, command: list[str], cwd: Path, timeout: float, env: dict | None = None):
        """Run ``command`` in a session of its own (so :meth:`stop` can kill all of it)."""
        if self._stopped:
            raise RuntimeError("the test session ended before the SLURM runs could")
        self._process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, start_new_session=True)
        try:
            stdout, stderr = self._process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            stdout, stderr = self._process.communicate()
        return subprocess.CompletedProcess(command, self._process.returncode, stdout, stderr)

    def _run(self) -> None:
        try:
            self._check_and_start_cluster()
            if not self.unavailable:
                self._run_both()
        except Exception as err:  # reported by the test, not lost in a thread
            self.failure = f"{type(err).__name__}: {err}"

    def _check_and_start_cluster(self) -> None:
        missing = [b for b in ("sbatch", "squeue", "slurmctld", "slurmd", "munged") if shutil.which(b) is None]
        if missing:
            self.unavailable = f"SLURM is not installed (no {', '.join(missing)}; see tests/slurm/cluster.sh install)"
        elif importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
            self.unavailable = "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
        elif _cluster("status").returncode != 0:
            if os.geteuid() != 0:
                self.unavailable = "the test cluster is down and starting it needs root"
                return
            start = time.monotonic()
            result = _cluster("start")
            if result.returncode != 0:
                self.failure = f"cluster.sh start failed:\n{result.stdout}{result.stderr}"
                return
            self.started_cluster = True
            self.seconds["cluster start"] = time.monotonic() - start

    def _run_both(self) -> None:
        work, night = self.work, self.work / "night"
        workflow = copy_workflow(work / "workflow")
        slurm_cfg = write_config(work / "slurm.yaml", work / "slurm", night)
        local_cfg = write_config(work / "local.yaml", work / "local", night)
        start = time.monotonic()
        # Snakemake ignores SIGTERM while it waits on cluster jobs: -k kills it after 30 s
        slurm = self._call(
            ["timeout", "-k", "30", str(SLURM_LIMIT), sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
             "--configfile", str(slurm_cfg), "--slurm-logdir", str(self.logdir), "--slurm-keep-successful-logs"],
            cwd=workflow, timeout=SLURM_LIMIT + 60,
        )
        self.seconds["slurm"] = time.monotonic() - start
        self.output = slurm.stdout + slurm.stderr
        (work / "slurm.log").write_text(self.output)
        if slurm.returncode in (124, 137):
            self.failure = f"SLURM run hit the {SLURM_LIMIT} s limit (lost track of jobs?):\n{self.output[-4000:]}"
            return
        if slurm.returncode != 0:
            # a job that fails before its script runs leaves its reason in the SLURM log only
            failed = [p for p in self.logdir.rglob("*.log") if "Error" in p.read_text()]
            details = "".join(f"\n--- {p}:\n{p.read_text()[-2500:]}" for p in failed[:3])
            self.failure = f"SLURM run failed ({slurm.returncode}):\n{self.output[-3000:]}{details}"
            return
        start = time.monotonic()
        local = self._call([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(local_cfg)],
                           cwd=workflow, timeout=900, env=local_env())
        self.seconds["local"] = time.monotonic() - start
        if local.returncode != 0:
            self.failure = f"local run of the tiny night failed ({local.returncode}):\n{local.stderr[-4000:]}"


_RUNS: SlurmRuns | None = None


def start_background() -> SlurmRuns:
    """Start the runs (once per session), in a fresh temporary folder."""
    global _RUNS
    if _RUNS is None:
        _RUNS = SlurmRuns(Path(tempfile.mkdtemp(prefix="ccdflow-slurm-test-"))).start()
    return _RUNS


def background_runs() -> SlurmRuns | None:
    """The runs started at collection, if any."""
    return _RUNS
