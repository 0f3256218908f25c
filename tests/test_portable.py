"""The workflow runs unchanged from anywhere: with ``--directory ELSEWHERE --snakefile
PATH/Snakefile``, and as a ``module`` of a host workflow. Its own files (the demo config,
schemas, instrument profiles, report captions, scripts, envs) are found from the
Snakefile's folder; the paths a config gives (raw:, results_dir, the simulator's
outdir) stay relative to the working directory.

Both runs reduce the demo night made tiny (the default config with the ``tiny``
simulator preset), each in its own copy of the workflow and working directory, at
the same time, and must make the same products (the manifests' science digests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_run import copy_workflow, local_env

pytestmark = pytest.mark.slow
TIMEOUT = 1200  # s: a guard against a hang; each run takes ~1-2 min on 2 cores


def tiny_demo(workflow: Path) -> dict:
    """The demo config (the workflow's config/config.yaml), on the tiny simulated night:
    128x128 frames, 8 science frames, the demo's damaged files. Its named targets belong to
    the demo night, so light curves of the five brightest sources instead; the tiny night's
    flats are 4 per filter, one saturated and one too faint."""
    config = yaml.safe_load((workflow / "config" / "config.yaml").read_text())
    config["simulate"]["preset"] = "tiny"
    config["calibration"] = {"flat": {"min_frames": 2}, "cosmic_rays": {"enabled": False}}
    config["lightcurves"] = {"targets": [], "all_sources": True, "max_sources": 5}
    return config


HOST_SNAKEFILE = """\
# A host workflow that uses ccdflow as a module, with its own config.
configfile: "ccdflow.yaml"


module ccdflow:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from ccdflow as ccdflow_*
"""


class _Run:
    """``snakemake --cores 2 *args`` started in ``cwd``, its output in a file (two runs at
    once must not wait on each other's pipes)."""

    def __init__(self, args, cwd: Path, log: Path):
        self.log, self.what = log, " ".join(args) or f"snakemake in {cwd.name}"
        command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
        with log.open("w") as out:
            self.process = subprocess.Popen(command, cwd=cwd, env=local_env(), stdout=out,
                                            stderr=subprocess.STDOUT, text=True)

    def finish(self) -> str:
        try:
            self.process.wait(timeout=TIMEOUT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        output = self.log.read_text()
        assert self.process.returncode == 0, f"{self.what}: snakemake failed ({self.process.returncode}):\n{output[-6000:]}"
        return output


def _run(args, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    return subprocess.run(command, cwd=cwd, env=local_env(), capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(a) ``--directory elsewhere --snakefile workflow/Snakefile`` started from a third
    folder; (b) a host Snakefile beside its config that loads the workflow as a module
    by a relative path. Both at once, each with its own working directory."""
    base = tmp_path_factory.mktemp("portable")
    workflow_a = copy_workflow(base / "a" / "workflow")
    elsewhere = base / "a" / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tiny-demo.yaml").write_text(yaml.safe_dump(tiny_demo(workflow_a)))
    launch = base / "a" / "launch"  # the shell's folder: neither the workflow's nor the run's
    launch.mkdir()

    workflow_b = copy_workflow(base / "b" / "ccdflow")
    host = base / "b" / "host"
    host.mkdir()
    (host / "ccdflow.yaml").write_text(yaml.safe_dump(tiny_demo(workflow_b)))
    (host / "Snakefile").write_text(HOST_SNAKEFILE.format(snakefile="../ccdflow/Snakefile"))

    directory_args = ["--directory", str(elsewhere), "--snakefile", str(workflow_a / "Snakefile")]
    # --configfile, like any path on the command line, is the shell's: given absolute here
    a = _Run([*directory_args, "--configfile", str(elsewhere / "tiny-demo.yaml")], launch, base / "a.log")
    b = _Run([], host, base / "b.log")
    try:
        out_a = a.finish()
    finally:
        out_b = b.finish()
    return {"a": (workflow_a, elsewhere, launch, out_a, directory_args), "b": (workflow_b, host, out_b)}


def _products(campaign: Path) -> dict[str, str]:
    """Product -> science digest, from the run's manifest."""
    products = json.loads((campaign / "manifest.json").read_text())["products"]
    return {path: entry.get("data_sha256") or entry["sha256"] for path, entry in products.items()}


def _expected_products(campaign: Path) -> None:
    assert (campaign / "inventory" / "inventory.ecsv").is_file()
    assert "8 science frames calibrated, 0 left uncalibrated" in (campaign / "calibrated" / "report.txt").read_text()
    assert len(list((campaign / "calibrated").rglob("*.fits.fz"))) == 8
    assert len(list((campaign / "masters").rglob("*.fits.fz"))) >= 3
    assert 1 <= len(list((campaign / "lightcurves").rglob("src*.ecsv"))) <= 5  # the brightest unflagged
    assert list((campaign / "qa").rglob("noise.png")) and (campaign / "logs" / "run_ok").exists()


def _untouched(workflow: Path) -> None:
    """Nothing of a run lands in the workflow's own folder."""
    made = {p.name for p in workflow.iterdir()} - {"Snakefile", "workflow", "scripts", "config", "envs", "profiles"}
    assert not made, f"the run wrote {sorted(made)} into the workflow's folder"


def test_directory_elsewhere_makes_the_products_there(runs):
    workflow, elsewhere, launch, output, _ = runs["a"]
    campaign = elsewhere / "results" / "demo"
    _expected_products(campaign)
    assert (elsewhere / "demo" / "raw").is_dir() and (elsewhere / ".snakemake").is_dir()
    _untouched(workflow)
    assert not list(launch.iterdir()), "the run wrote into the folder it was started from"
    assert "ccdflow run summary: campaign demo" in output
    # the shipped profile was found beside the Snakefile, not in the working directory
    manifest = json.loads((campaign / "manifest.json").read_text())
    assert manifest["campaign"] == "demo" and not (elsewhere / "config").exists()


def test_module_makes_the_same_products(runs):
    workflow, host, output = runs["b"]
    campaign = host / "results" / "demo"
    _expected_products(campaign)
    _untouched(workflow)
    assert "ccdflow_calibrate_science" in output  # the module's rules, renamed by `use rule`
    a, b = _products(runs["a"][1] / "results" / "demo"), _products(campaign)
    assert set(a) == set(b)
    # every product's science digest agrees, but for the digest of the raw files' states
    # (sizes, times and inodes of two separately simulated nights)
    differ = sorted(p for p in a if a[p] != b[p] and p != "inventory/inputs.sha1")
    assert not differ, f"products differ between the --directory and the module run: {differ[:10]}"


def test_default_config_and_report_from_elsewhere(runs):
    """Without --configfile the demo config is the workflow's own config/config.yaml,
    wherever the run is; the report finds its captions beside the rules."""
    workflow, elsewhere, launch, _, directory_args = runs["a"]
    fresh = elsewhere.parent / "default-run"
    fresh.mkdir()
    dry = _run(["--dry-run", "--directory", str(fresh), "--snakefile", str(workflow / "Snakefile")], launch)
    assert dry.returncode == 0, dry.stderr[-4000:]
    assert "simulate_night" in dry.stdout and "results/demo/inventory/inventory.ecsv" in dry.stdout
    report = elsewhere / "report.html"
    made = _run([*directory_args, "--configfile", str(elsewhere / "tiny-demo.yaml"), "--report", str(report)],
                launch)
    assert made.returncode == 0, made.stderr[-4000:]
    html = report.read_text()
    assert "reduced the raw frames of campaign" in html  # workflow/report/workflow.rst
    assert "RMS residual of the alignment fit" in html  # workflow/report/conditions.rst, a rule's caption
    _untouched(workflow)
