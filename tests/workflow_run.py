"""Running the real workflow from tests: `python -m snakemake` in the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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
                  timeout: float = 1200) -> subprocess.CompletedProcess:
    """``snakemake --cores 2 [--configfile config] [--snakefile ...] *args`` from the repository root;
    a failure raises with the end of Snakemake's log."""
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    if config is not None:
        command += ["--configfile", str(config)]
    if snakefile is not None:
        command += ["--snakefile", str(snakefile)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=local_env())
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result
