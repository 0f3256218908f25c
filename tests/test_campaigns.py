"""Reprocessing campaigns through the real workflow: manifest, diff, rerun semantics,
a SIGKILL in the middle of calibration, a second run refused, a read-only raw tree.

Two tiny simulated nights (8 science frames each) in ``raw/<date>/``; the campaigns
read ``raw/*`` globs or one night.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ccdflow.layout import kind_of
from ccdflow.manifest import read_manifest
from ccdflow.provenance import config_hash, file_digest
from ccdflow.simulate import NightSpec, simulate_night
from compare_trees import compare_trees
from workflow_run import ROOT, local_env, run_snakemake

pytestmark = pytest.mark.slow
UPSTREAM_OF_PHOTOMETRY = {"simulate_night", "inventory", "inventory_summary", "frame_stats", "preprocess_calibrations",
                          "master_bias", "master_dark", "master_flat", "calibrate_science", "calibration_report",
                          "align_field", "qa_masters"}


def snakemake(config: Path, *args, snakefile: Path | None = None, check=True) -> subprocess.CompletedProcess:
    return run_snakemake(*args, config=config, snakefile=snakefile, check=check)


def planned_rules(config: Path, *args, snakefile: Path | None = None) -> dict[str, int]:
    """Rule -> job count of what a dry run would run now (Snakemake's 'Job stats')."""
    out = snakemake(config, "-n", *args, snakefile=snakefile).stdout
    if "Nothing to be done" in out:
        return {}
    block = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = (line.split() for line in block.splitlines()[3:])
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[0] != "total"}


def write_config(work: Path, name: str, raw: str, stem: str | None = None, **extra) -> Path:
    """A user's config: it says nothing of simulation or targets, and must inherit
    nothing of the demo's (tests/test_campaigns.py::test_manifest...)."""
    settings = {
        "campaign": name, "results_dir": str(work / "results"),
        "raw": [{"path": raw, "instrument": "simulator"}], "batch": {"size": 8},
        "calibration": {"flat": {"min_frames": 2}},
        "lightcurves": {"all_sources": True},
        # profiles by a path relative to the working directory (the repository): a copy
        # of the workflow elsewhere (test_a_changed_script_reruns_its_rule) then reads the
        # same file, where by default it would read its own copy and rerun the inventory
        "instruments_dir": "config/instruments",
    }
    for key, value in extra.items():
        settings[key] = {**settings.get(key, {}), **value}
    path = work / f"{stem or name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("campaigns")
    for night, (seed, start) in {"2025-03-14": (1, "2025-03-14T02:00:00"),
                                 "2025-03-15": (2, "2025-03-15T02:00:00")}.items():
        simulate_night(work / "sim" / night, NightSpec.from_dict({"seed": seed, "night_start_utc": start}, base="tiny"))
        shutil.move(work / "sim" / night / "raw", work / "raw" / night)
    return work


@pytest.fixture(scope="module")
def v1(work):
    config = write_config(work, "v1", str(work / "raw" / "2025-03-14"))
    snakemake(config)
    return config, work / "results" / "v1"


# ------------------------------------------------------------------------------ manifest
def test_manifest_lists_every_product_with_its_job_and_checksums(v1, work):
    config, campaign = v1
    manifest = read_manifest(campaign)
    on_disk = {str(p.relative_to(campaign)) for p in campaign.rglob("*") if p.is_file()
               and kind_of(p.relative_to(campaign).as_posix()) not in ("bookkeeping", "run_record")
               and not p.name.startswith(".")}
    assert set(manifest["products"]) == on_disk
    # the pre-processed calibration frames are temporary: gone once the masters were made
    assert not list(campaign.glob("proc/*/*.fits")) and list(campaign.glob("masters/*/*/*.fits.fz"))
    # the run summary prints the products' size against the raw files' (bounded on a larger
    # night in test_pipeline_photometry.py: on this one's 1 MB the tables and plots weigh most)
    assert re.search(r"disk: \d+ MB of products for \d+ MB of raw files \(\d+\.\d+x\)",
                     (campaign / "summary.txt").read_text()), (campaign / "summary.txt").read_text()
    assert manifest["campaign"] == "v1" and manifest["software"].startswith("ccdflow ")
    assert manifest["config_hash"] == config_hash(manifest["config"])
    # the demo is the default run, not a layer under a user's config
    used = manifest["config"]
    assert not used["simulate"]["enabled"] and used["lightcurves"]["targets"] == [], used
    assert not {"simulate_night"} & {job["rule"] for job in manifest["jobs"].values()}
    for rel, entry in manifest["products"].items():
        assert entry["sha256"] == file_digest(campaign / rel), rel
        job = manifest["jobs"][entry["job"]]
        assert job["rule"] and job["config_hash"] == manifest["config_hash"] and job["inputs"], (rel, job)
    # a calibrated frame: made by calibrate_science from its raw file and the masters
    frame = next(r for r in manifest["products"] if r.startswith("calibrated/") and r.endswith(".fits.fz"))
    job = manifest["jobs"][manifest["products"][frame]["job"]]
    assert job["rule"] == "calibrate_science"
    assert any(i.startswith("masters/flat/") for i in job["inputs"])
    raw_inputs = [i for i in job["inputs"] if i.startswith(str(work / "raw"))]
    assert raw_inputs and all(manifest["raw"][i]["sha256"] == file_digest(i) for i in raw_inputs)


def test_every_job_and_fits_product_records_the_commit_that_made_it(v1):
    """The commit of the workflow's checkout, asked of git independently, in the
    manifest, in every job's record and in the calibrated frames' and masters' headers."""
    from astropy.io import fits

    _, campaign = v1
    git = ["git", "-c", "safe.directory=*", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the workflow is not a git checkout here: nothing to compare the commit with")
    commit = head.stdout.strip()
    manifest = read_manifest(campaign)
    assert manifest["commit"] == commit and isinstance(manifest["dirty"], bool)
    assert {job["commit"] for job in manifest["jobs"].values()} == {commit}
    assert sum(manifest["job_commits"].values()) == len(manifest["jobs"])
    fits_products = [r for r in manifest["products"] if r.endswith(".fits.fz") and r.startswith(("calibrated/", "masters/"))]
    assert any(r.startswith("masters/") for r in fits_products) and any(r.startswith("calibrated/") for r in fits_products)
    for rel in fits_products:
        header = fits.getheader(campaign / rel)
        assert header["GITCOMIT"] == commit and isinstance(header["GITDIRTY"], bool), rel


def test_campaign_diff_reports_masters_and_light_curves(v1, work):
    _, campaign_a = v1
    # B: the same raw data, flats combined by median instead of mean
    config_b = write_config(work, "v2", str(work / "raw" / "2025-03-14"),
                            calibration={"flat": {"min_frames": 2}, "combine": {"method": "median"}})
    snakemake(config_b)
    report_json = work / "diff.json"
    result = subprocess.run([sys.executable, "-m", "ccdflow.cli", "campaign", "diff", "v1", "v2",
                             "--results-dir", str(work / "results"), "--json", str(report_json)],
                            capture_output=True, text=True, check=True)
    print(result.stdout)
    report = json.loads(report_json.read_text())
    assert "A: v1" in result.stdout and "B: v2" in result.stdout
    # every master changed (mean -> median), each with the statistics of B - A
    masters = {p: s for p, s in report["changed"].items() if p.startswith("masters/")}
    assert len(masters) == 4 and all(s["n_pixels"] > 0 and s["std"] > 0 for s in masters.values()), masters
    assert all(s["std"] < 0.01 for p, s in masters.items() if "/flat/" in p), masters  # normalised flats
    curves = {p: s for p, s in report["changed"].items() if "/src" in p and p.endswith(".ecsv")}
    assert curves and all(s["n_frames"] > 0 and s["rms"] >= abs(s["median"]) for s in curves.values()), curves
    assert "masters/bias/" in result.stdout and "rel_flux B-A median" in result.stdout
    # raw data and their inventory are the same: nothing upstream of the masters changed its numbers
    assert "inventory/inventory.ecsv" not in report["changed"]
    assert not [p for p in report["changed"] if p.startswith(("proc/", "framestats/"))]


# ------------------------------------------------------------------------------ rerun semantics
def test_photometry_parameters_rerun_only_photometry_and_later(v1):
    config, _ = v1
    assert planned_rules(config) == {}
    changed = write_config(config.parent, "v1", str(config.parent / "raw" / "2025-03-14"), stem="v1-recentroid",
                           photometry={"apertures": {"recentroid_max_px": 1.0}})
    plan = planned_rules(changed)
    assert plan.get("photometry") and not (set(plan) & (UPSTREAM_OF_PHOTOMETRY | {"reference_catalogue"})), plan
    radii = write_config(config.parent, "v1", str(config.parent / "raw" / "2025-03-14"), stem="v1-radii",
                         photometry={"apertures": {"radii_px": [3.0, 6.0]}})
    plan = planned_rules(radii)
    assert plan.get("reference_catalogue") and not set(plan) & UPSTREAM_OF_PHOTOMETRY, plan
    curves = write_config(config.parent, "v1", str(config.parent / "raw" / "2025-03-14"), stem="v1-bootstrap",
                          lightcurves={"bootstrap": 20})
    # and the QA products made from the light curves (the finder chart's comparison stars, the night page)
    assert set(planned_rules(curves)) == {"lightcurves", "qa_targets", "qa_night", "manifest", "run_summary",
                                          "check_run", "all"}


CALIBRATION = {"preprocess_calibrations", "master_bias", "master_dark", "master_flat", "calibrate_science"}
# (changed config key, value) -> rules that must rerun, and rules that must not.
# A master that reruns has its pre-processed frames made again: they are temporary (deleted once
# the masters are made, 411 of the demo's 607 MB), so only the masters' own changes remake them.
RERUN_SCOPES = [
    (("calibration", "bias", "qc", "std_max"), 1e9, {"master_bias"}, {"inventory"}),
    (("calibration", "dark", "hot_sigma"), 12.0, {"master_dark"}, {"master_bias"}),
    (("calibration", "flat", "low_response"), 0.4, {"master_flat"}, {"master_bias", "master_dark"}),
    (("calibration", "cosmic_rays", "sigclip"), 5.0, {"calibrate_science"},
     CALIBRATION - {"calibrate_science"}),
    (("photometry", "align", "max_shift_px"), 400.0, {"align_field"}, CALIBRATION),
    (("photometry", "catalogue", "threshold_sigma"), 6.0, {"reference_catalogue"}, CALIBRATION | {"align_field"}),
    (("photometry", "apertures", "recentroid_max_px"), 1.0, {"photometry"},
     CALIBRATION | {"align_field", "reference_catalogue"}),
    (("photometry", "qa_aperture"), "r1.5fwhm", {"qa_field"},
     CALIBRATION | {"align_field", "reference_catalogue", "photometry", "field_photometry", "lightcurves"}),
    (("lightcurves", "bootstrap"), 20, {"lightcurves"}, CALIBRATION | {"photometry", "field_photometry", "qa_field"}),
]


@pytest.mark.parametrize("key, value, must, must_not", RERUN_SCOPES, ids=[".".join(k) for k, *_ in RERUN_SCOPES])
def test_rerun_scope_of_each_config_group(v1, key, value, must, must_not):
    """A changed config key reruns the rules that read it and what depends on their
    products; never a rule that does not read it (checked by a dry run)."""
    config, _ = v1
    settings = yaml.safe_load(config.read_text())
    block = settings
    for part in key[:-1]:
        block = block.setdefault(part, {})
    block[key[-1]] = value
    changed = config.parent / f"v1-{'-'.join(key)}.yaml"
    changed.write_text(yaml.safe_dump(settings))
    plan = planned_rules(changed)
    assert must <= set(plan) and not set(plan) & (must_not | {"inventory", "frame_stats", "simulate_night"}), plan


def test_a_changed_script_reruns_its_rule(v1, tmp_path):
    config, _ = v1
    copy = tmp_path / "workflow-copy"
    copy.mkdir()
    for part in ("Snakefile", "workflow", "scripts", "config", "envs", "profiles"):
        source = ROOT / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, copy / part)
    assert planned_rules(config, snakefile=copy / "Snakefile") == {}  # copies keep their mtimes
    script = copy / "scripts" / "qa_masters.py"
    script.write_text(script.read_text() + "\n# edited\n")
    plan = planned_rules(config, snakefile=copy / "Snakefile")
    assert set(plan) <= {"qa_masters", "manifest", "run_summary", "check_run", "all"} and plan.get("qa_masters"), plan


# ------------------------------------------------------------------------------ crash and concurrency
def _wait_for(predicate, timeout=300, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# A power cut, the OOM killer or a lost node kills the jobs with snakemake: the
# whole process group, at each of these points in turn (each run resumes the last).
KILL_POINTS = ("preprocess_calibrations", "calibrate_science", "photometry", "lightcurves")
BATCH_FOLDERS = ("framestats/*", "proc/*", "calibrated/*", "photometry/*/*/c*")


def test_killed_process_group_at_every_stage_resumes_to_identical_products(v1, work):
    from astropy.io import fits

    _, reference = v1
    config = write_config(work, "crash", str(work / "raw" / "2025-03-14"))
    campaign = work / "results" / "crash"
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(config)]
    for rule in KILL_POINTS:
        run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=local_env())
        try:
            _wait_for(lambda: any((campaign / "logs" / rule).rglob("*.log")) or run.poll() is not None,
                      what=f"{rule} to start")
            assert run.poll() is None, f"the run ended before {rule} could be killed: {run.stderr.read()[-2000:]}"
            if rule == "calibrate_science":
                # a second run on the same campaign while the first is alive: refused, with the holder named
                second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=local_env())
                assert second.returncode != 0 and "being processed by another run" in second.stderr, second.stderr[-2000:]
            os.killpg(run.pid, signal.SIGKILL)  # snakemake and every job it started
            run.wait()
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
        # nothing half-made under a final name: batch folders are whole (their status
        # file is written last), every FITS product opens
        for pattern in BATCH_FOLDERS:
            for folder in campaign.glob(pattern):
                if not folder.is_dir() or folder.name.startswith("."):
                    continue  # a killed job's hidden temporary folder is not a product
                assert (folder / "_status.json").exists(), f"killed in {rule}: {folder} is incomplete"
        for path in campaign.rglob("*.fits*"):
            if not any(part.startswith(".") for part in path.relative_to(campaign).parts):
                with fits.open(path) as hdul:
                    assert all(hdu.data is None or hdu.data.size >= 0 for hdu in hdul), path
    snakemake(config)  # the same command again, nothing else
    assert not list(campaign.rglob(".*.part-*")), "a killed job's temporary folder was left behind"
    differing = compare_trees(campaign, reference)  # products of both, their data, headers and tables
    assert not differing, "\n".join(differing[:50])

    # products deleted by hand after the run: a master, one frame of a batch folder, a photometry chunk
    deleted = [next(campaign.glob("masters/flat/*/*.fits.fz")), next(campaign.glob("calibrated/*/*.fits.fz")),
               next(campaign.glob("photometry/*/*/c000"))]
    for path in deleted:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    result = snakemake(config)  # the same command again rebuilds them and what depends on them
    assert "product(s) of an earlier run are missing or incomplete" in result.stderr + result.stdout
    assert all(path.exists() for path in deleted)
    differing = compare_trees(campaign, reference)
    assert not differing, "\n".join(differing[:50])


@contextlib.contextmanager
def read_only(raw: Path):
    """``raw`` and everything under it without write permission, for the block."""
    modes = {p: p.stat().st_mode for p in [raw, *raw.rglob("*")]}
    try:
        for path in [*sorted(raw.rglob("*"), key=lambda p: -len(p.parts)), raw]:
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        yield raw
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))


def _small_disk(folder: Path) -> str:
    """Mount a 1 MB tmpfs on ``folder``; the reason when that cannot be done here."""
    if os.geteuid() != 0:
        return "mounting a small file system needs root"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    return "" if mounted.returncode == 0 else f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}"


def test_a_read_only_raw_tree_and_a_full_disk(v1, work, tmp_path):
    """A read-only raw tree is reduced and nothing is written beside it, not a byte or a
    time stamp changed. With the results on a 1 MB file system (the night's products
    need ~3 MB, tile-compressed) the run fails with the out-of-space error and the file it was writing,
    not a per-frame error inside a job that succeeds; after space is freed the same
    command gives the products of an uninterrupted run. (One run for both: each is a
    full night. Without root there is no small disk: the results go to a normal folder.)"""
    raw = work / "raw" / "2025-03-14"
    files = sorted(p for p in raw.rglob("*") if p.is_file())
    before = {p: (file_digest(p), p.stat().st_mtime_ns) for p in files}
    disk = tmp_path / "disk"
    no_disk = _small_disk(disk)
    config = write_config(work, "full", str(raw), stem="full")
    results = (work if no_disk else disk) / "results"
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "results_dir": str(results)}))
    try:
        with read_only(raw):
            if not no_disk:
                result = snakemake(config, check=False)
                output = result.stdout + result.stderr
                assert result.returncode != 0, output[-3000:]
                assert re.search(r"No space left on device|Not enough space on disk", output), output[-3000:]
                assert str(results / "full") in output, output[-3000:]
                for status in (results / "full").rglob("_status.json"):  # no frame "failed" for want of space
                    assert "space" not in status.read_text(), status.read_text()
                subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            snakemake(config)  # the same command, once there is room
        assert sorted(p for p in raw.rglob("*") if p.is_file()) == files  # nothing written beside the raw data
        assert {p: (file_digest(p), p.stat().st_mtime_ns) for p in files} == before
        differing = compare_trees(results / "full", v1[1])
        assert not differing, "\n".join(differing[:50])
    finally:
        if not no_disk:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    if no_disk:
        pytest.skip(f"read-only raw tree checked; the full disk not: {no_disk}")


def test_a_new_night_reruns_only_its_products_and_campaign_wide_ones(v1, work):
    config, campaign = v1
    before = {p: p.stat().st_mtime_ns for p in campaign.rglob("*") if p.is_file()
              and p.relative_to(campaign).parts[0] not in ("logs", "benchmarks")}
    both = write_config(work, "v1", str(work / "raw" / "*"), stem="v1-two-nights")
    snakemake(both)
    after = {p: p.stat().st_mtime_ns for p in campaign.rglob("*") if p.is_file()
             and p.relative_to(campaign).parts[0] not in ("logs", "benchmarks")}
    nights = {re.search(r"\d{4}-\d{2}-\d{2}", str(p.relative_to(campaign))) for p in after}
    nights = sorted({m.group(0) for m in nights if m})
    assert len(nights) == 2, nights
    old_night, new_night = nights
    rewritten = {str(p.relative_to(campaign)) for p in before if after.get(p) != before[p]}
    new = {str(p.relative_to(campaign)) for p in after if p not in before}
    assert new and all(new_night in p or "/" not in p for p in new), sorted(new)
    # campaign-wide products are remade; nothing of the first night is
    assert not [p for p in rewritten if old_night in p], sorted(rewritten)
    assert {"inventory/inventory.ecsv", "calibrated/report.txt", "manifest.json"} <= rewritten, sorted(rewritten)
