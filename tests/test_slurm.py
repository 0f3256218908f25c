"""A simulated night through a real SLURM cluster (profiles/slurm) gives the same science as a local run.

The night is the simulator's "tiny" preset (every rule of the workflow runs,
the same SLURM groups are formed, in a quarter of the demo night's time).

Stands up a single-node cluster on localhost with tests/slurm/cluster.sh (and
stops it afterwards if it was not already running). Skipped where SLURM is not
installed, unless CCDFLOW_REQUIRE_SLURM=1 (CI), where that is a failure.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from compare_trees import compare_trees
from slurm_run import background_runs


@pytest.fixture(scope="module")
def runs():
    """The tiny night through SLURM, then again locally (started at collection, tests/slurm_run.py)."""
    outcome = background_runs()
    assert outcome is not None, "the SLURM runs were not started at collection (tests/conftest.py)"
    outcome.wait()
    if outcome.unavailable:
        if os.environ.get("CCDFLOW_REQUIRE_SLURM") == "1":
            pytest.fail(f"CCDFLOW_REQUIRE_SLURM=1 but {outcome.unavailable}")
        pytest.skip(outcome.unavailable)
    if outcome.failure:
        pytest.fail(outcome.failure)
    print("tiny night: " + ", ".join(f"{k} {v:.0f} s" for k, v in outcome.seconds.items()))
    return outcome.slurm, outcome.local, outcome.output, outcome.logdir


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
    assert list(slurm.glob("calibrated/*/*.fits.fz")) and list(slurm.glob("masters/*/*/*.fits.fz"))
    assert list(slurm.rglob("lightcurves/*/*/src*.ecsv"))
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
