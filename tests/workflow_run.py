"""Running the real workflow from tests: `python -m snakemake` in the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_snakemake(*args, config: Path | None = None, snakefile: Path | None = None, check: bool = True,
                  timeout: float = 1200) -> subprocess.CompletedProcess:
    """``snakemake --cores 2 [--configfile config] [--snakefile ...] *args`` from the repository root;
    a failure raises with the end of Snakemake's log."""
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    if config is not None:
        command += ["--configfile", str(config)]
    if snakefile is not None:
        command += ["--snakefile", str(snakefile)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result
