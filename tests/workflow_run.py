"""Running the real workflow from tests: `python -m snakemake` in the repository."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The SLURM executor plugin (a test dependency, tests/test_slurm.py) runs
# `scontrol show config` whenever Snakemake starts, whatever the executor. Where
# SLURM is installed but its controller is not running (CI between SLURM tests),
# that waits 10 s for the controller at every start: ~50 Snakemake runs in this
# suite would spend 8 minutes idle. Local runs get an `scontrol` that fails at
# once (the plugin then takes its default); the SLURM test uses the real one.
_SHIM = Path(tempfile.mkdtemp(prefix="ccdflow-noslurm-"))
(_SHIM / "scontrol").write_text("#!/bin/sh\necho 'no SLURM controller for local test runs' >&2\nexit 1\n")
(_SHIM / "scontrol").chmod(0o755)


def local_env() -> dict[str, str]:
    """The environment for a local (not SLURM) Snakemake run from a test."""
    return {**os.environ, "PATH": f"{_SHIM}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_snakemake(*args, config: Path | None = None, snakefile: Path | None = None, check: bool = True,
                  timeout: float = 1200, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``snakemake --cores 2 [--configfile config] [--snakefile ...] *args`` from the repository root
    (or ``cwd``, e.g. a :func:`copy_workflow`); a failure raises with the end of Snakemake's log."""
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    if config is not None:
        command += ["--configfile", str(config)]
    if snakefile is not None:
        command += ["--snakefile", str(snakefile)]
    result = subprocess.run(command, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=local_env())
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


WORKFLOW_PARTS = ("Snakefile", "workflow", "scripts", "config", "envs", "profiles")


def copy_workflow(target: Path) -> Path:
    """The workflow's files (not the package, which is installed) copied to ``target``,
    mtimes kept: a Snakemake working directory of its own (its own ``.snakemake``)."""
    target.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = ROOT / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target / part)
    return target


class BackgroundRun:
    """``snakemake --cores 2 --configfile config`` started now, in a thread, in its own
    copy of the workflow: a long end-to-end fixture that runs beside the other tests
    (Snakemake runs are half idle between jobs on 2 cores) and never shares a
    ``.snakemake`` with them. :meth:`wait` returns its result or raises with its log."""

    def __init__(self, config: Path | Callable[[], Path], workdir: Path, timeout: float = 2700):
        # config: the config file, or what makes it (a simulated night first, say), called in the thread.
        # timeout: a guard against a hang, not a speed target; ten runs share two cores from collection on
        self.config, self.workdir, self.timeout = config, workdir, timeout
        self.result: subprocess.CompletedProcess | None = None
        self.error = ""
        self.seconds = 0.0
        self._process: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> BackgroundRun:
        self._thread.start()
        return self

    def _run(self) -> None:
        import time

        start = time.monotonic()
        try:
            if callable(self.config):
                self.config = self.config()
            copy_workflow(self.workdir)
            command = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(self.config)]
            self._process = subprocess.Popen(command, cwd=self.workdir, env=local_env(), stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True, start_new_session=True)
            stdout, stderr = self._process.communicate(timeout=self.timeout)
            self.result = subprocess.CompletedProcess(command, self._process.returncode, stdout, stderr)
        except Exception as err:  # reported by wait(), not lost in the thread
            self.error = f"{type(err).__name__}: {err}"
        self.seconds = time.monotonic() - start

    def wait(self) -> subprocess.CompletedProcess:
        self._thread.join()
        if self.error:
            raise AssertionError(f"background snakemake run failed to run: {self.error}")
        if self.result.returncode != 0:
            raise AssertionError(f"snakemake failed ({self.result.returncode}):\n{self.result.stderr[-6000:]}")
        return self.result

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
        self._thread.join(timeout=60)


# Runs started at collection (tests/conftest.py), by name: "real" for the real
# nights, a test module's __name__ for a module that declares BACKGROUND(work) -> config.
BACKGROUND_RUNS: dict[str, BackgroundRun] = {}


def background_run(name: str) -> BackgroundRun | None:
    return BACKGROUND_RUNS.get(name)
