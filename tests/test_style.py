"""The Snakefile and the rules stay formatted by snakefmt (settings: pyproject's [tool.snakefmt])."""

import subprocess
import sys

import pytest

WORKFLOW_FILES = ("Snakefile", "workflow/")


def _snakefmt(root, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakefmt", *args, *WORKFLOW_FILES], cwd=root, check=False,
                          capture_output=True, text=True, timeout=120)


def test_workflow_files_are_snakefmt_formatted(root):
    pytest.importorskip("snakefmt")
    check = _snakefmt(root, "--check")
    if check.returncode != 0:
        diff = _snakefmt(root, "--compact-diff")
        pytest.fail(f"snakefmt --check failed ({check.returncode}); run `snakefmt Snakefile workflow/`:\n"
                    f"{check.stderr}\n{diff.stdout}{diff.stderr}")
