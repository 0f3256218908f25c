"""End to end: the real workflow, run through `snakemake`, on a tiny simulated night."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from astropy.io import fits

from ccdflow.inventory import read_table
from ccdflow.plan import BATCH_FACTOR
from workflow_run import run_snakemake

pytestmark = pytest.mark.slow
DAMAGED = ["zero_length", "truncated", "not_fits", "missing_exptime", "wrong_shape"]


def snakemake(*args, config: Path | None = None, check=True):
    return run_snakemake(*args, config=config, check=check, timeout=900)


def write_config(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    config = write_config(
        work / "config.yaml",
        campaign="e2e",
        results_dir=str(work / "results"),
        simulate={"enabled": True, "outdir": str(work / "night"), "preset": "tiny",
                  "overrides": {"damaged": DAMAGED}},
        raw=[{"path": str(work / "night" / "raw"), "instrument": "simulator"}],
        batch={"size": 4},
        # the tiny night has 4 flats per filter, one saturated and one too faint
        calibration={"flat": {"min_frames": 2}},
        # the demo config's targets belong to the demo night; light curves of 5 stars
        lightcurves={"targets": [], "all_sources": True, "max_sources": 5},
    )
    result = snakemake(config=config)
    return work, config, result


def test_inventory_matches_truth(simulated_run):
    work, _, _ = simulated_run
    truth = json.loads((work / "night" / "truth" / "truth.json").read_text())
    table = read_table(work / "results" / "e2e" / "inventory" / "inventory.ecsv")
    names = {"BIAS": "bias", "DARK": "dark", "FLAT": "flat", "OBJECT": "science"}
    ok = table[table["status"] == "ok"]
    assert Counter(ok["imagetyp"]) == {names[k]: v for k, v in truth["counts"].items() if v}
    quarantined = set(table.loc[table["status"] == "quarantined", "filename"])
    assert quarantined == {d["filename"] for d in truth["damaged"]}
    # the Parquet twin holds the same rows
    assert len(read_table(work / "results" / "e2e" / "inventory" / "inventory.parquet")) == len(table)


def test_per_frame_products_in_batches(simulated_run):
    work, _, _ = simulated_run
    table = read_table(work / "results" / "e2e" / "inventory" / "inventory.ecsv")
    ok_ids = set(table.loc[table["status"] == "ok", "frame_id"])
    batch_dirs = sorted((work / "results" / "e2e" / "framestats").iterdir())
    products = {p.stem: p for d in batch_dirs for p in d.glob("*.json") if p.name != "_status.json"}
    assert set(products) == ok_ids
    size = 4 * BATCH_FACTOR["framestats"]  # batch.size 4; pixel statistics take four batches a job
    assert all(len(list(d.glob("*.json"))) <= size + 1 for d in batch_dirs)  # + the batch's status file
    assert len(batch_dirs) == -(-len(ok_ids) // size)  # one night: ceil(n / size) jobs, not n
    stats = json.loads(next(iter(products.values())).read_text())
    assert stats["status"] == "ok" and stats["median"] > 0


def test_summary_names_quarantined_files(simulated_run):
    work, _, result = simulated_run
    text = (work / "results" / "e2e" / "inventory" / "summary.txt").read_text()
    for kind in DAMAGED:
        assert f"damaged_{kind}" in text
    assert "Median pixel statistics" in text
    # the run's own summary, on the console and in summary.txt
    run = (work / "results" / "e2e" / "summary.txt").read_text()
    assert "ccdflow run summary: campaign e2e" in result.stderr and "PROBLEMS" not in run
    for kind in DAMAGED:
        assert f"damaged_{kind}" in run
    assert "8 calibrated, 0 not" in run and "light curves: " in run and "frames aligned" in run, run


def test_every_job_left_a_log_and_a_benchmark(simulated_run):
    work, _, _ = simulated_run
    logs = list((work / "results" / "e2e" / "logs").rglob("*.log"))
    bench = list((work / "results" / "e2e" / "benchmarks").rglob("*.tsv"))
    assert len(logs) == len(bench) >= 4


def test_second_run_does_nothing(simulated_run):
    _, config, _ = simulated_run
    result = snakemake("--dry-run", config=config)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_lint_is_clean(simulated_run):
    _, config, _ = simulated_run
    result = snakemake("--lint", config=config, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in output, output[-3000:]


def test_wrong_config_key_is_named(tmp_path):
    config = write_config(tmp_path / "bad.yaml", campaign="bad", batch={"sise": 3},
                          raw=[{"path": str(tmp_path), "instrument": "simulator"}])
    result = snakemake("--dry-run", config=config, check=False)
    assert result.returncode != 0
    assert "sise" in result.stderr + result.stdout


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b"])
def test_campaign_names_are_single_plain_folder_names(tmp_path, name):
    """'..' would write into the repository itself (and its manifest list .git)."""
    config = write_config(tmp_path / "bad.yaml", campaign=name, results_dir=str(tmp_path / "results"),
                          raw=[{"path": str(tmp_path), "instrument": "simulator"}])
    result = snakemake("--dry-run", config=config, check=False)
    assert result.returncode != 0 and "campaign" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


def test_unknown_instrument_is_named(tmp_path):
    config = write_config(tmp_path / "bad.yaml", campaign="bad", simulate={"enabled": False},
                          raw=[{"path": str(tmp_path), "instrument": "nosuchcam"}])
    result = snakemake("--dry-run", config=config, check=False)
    assert result.returncode != 0
    assert "nosuchcam" in result.stderr + result.stdout


# -- calibration through snakemake ----------------------------------------------------


def _job_counts(output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats"):
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                counts[parts[0]] = int(parts[1])
            elif parts and parts[0] == "total":
                break
    return counts


def test_calibrated_products_and_masters(simulated_run):
    work, _, _ = simulated_run
    results = work / "results" / "e2e"
    table = read_table(results / "inventory" / "inventory.ecsv")
    science = table[(table["status"] == "ok") & (table["imagetyp"] == "science")]
    products = {p.name.removesuffix(".fits.fz") for p in (results / "calibrated").rglob("*.fits.fz")}
    assert products == set(science["frame_id"])
    masters = list((results / "masters").rglob("*.fits.fz"))
    assert {m.parts[-3] for m in masters} == {"bias", "dark", "flat"}
    report = (results / "calibrated" / "report.txt").read_text()
    assert f"{len(science)} science frames calibrated, 0 left uncalibrated" in report


def test_changing_a_flat_parameter_reruns_flats_not_biases(simulated_run, tmp_path):
    work, config, _ = simulated_run
    settings = yaml.safe_load(config.read_text())
    settings["calibration"]["flat"]["low_response"] = 0.4
    changed = write_config(tmp_path / "changed.yaml", **settings)
    jobs = _job_counts(snakemake("--dry-run", config=changed).stdout)
    assert jobs.get("master_flat", 0) == 2 and jobs.get("calibrate_science", 0) >= 1
    # the pre-processed frames are temporary: the flats' batches are made again, and only
    # theirs (batched by kind), so the biases and darks and their masters are untouched
    assert 1 <= jobs.get("preprocess_calibrations", 0) <= 2, jobs
    for untouched in ("master_bias", "master_dark", "inventory", "simulate_night"):
        assert untouched not in jobs, jobs


def _run_tiny(tmp_path, name, overrides, calibration, raw_glob=None, check=False, keep_going=True):
    night = tmp_path / "night"
    raw = str(night / "raw") if raw_glob is None else str(night / "raw" / raw_glob)
    config = write_config(
        tmp_path / f"{name}.yaml", campaign=name, results_dir=str(tmp_path / "results"),
        simulate={"enabled": True, "outdir": str(night), "preset": "tiny", "overrides": overrides},
        raw=[{"path": raw, "instrument": "simulator"}], batch={"size": 8}, calibration=calibration,
        lightcurves={"targets": []},  # the demo config's targets belong to the demo night
    )
    result = snakemake(*(["--keep-going"] if keep_going else []), config=config, check=check)
    return tmp_path / "results" / name, result


def test_no_matching_flat_and_too_few_flats_are_named_and_lose_nothing_else(tmp_path):
    # science in B has no flat at all; the V and R flat groups have too few usable frames
    results, result = _run_tiny(tmp_path, "noflat", {"science_filter": "B", "damaged": []}, {})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "could not be calibrated" in output and "sci_B_0001.fits" in output
    assert "flat_group" in output and "|B'" in output  # the criteria are spelled out
    # everything else was made: inventory, every master (flat QC recorded as failed)
    assert (results / "inventory" / "summary.txt").exists()
    flats = list((results / "masters" / "flat").rglob("*.fits.fz"))
    assert len(flats) == 2 and all(fits.getval(f, "QCSTATUS") == "FAIL" for f in flats)
    assert "fewer than 3" in fits.getval(flats[0], "QCREASON")
    assert len(list((results / "masters" / "bias").rglob("*.fits.fz"))) == 1
    statuses = [json.loads(p.read_text()) for p in (results / "calibrated").rglob("_status.json")]
    assert sum(len(s) for s in statuses) == 8


def test_one_frame_that_cannot_be_calibrated_costs_only_itself(tmp_path):
    """The default command, no --keep-going: a science frame with no flat for its filter
    is named at the end, the exit is non-zero, and the other field's light curves exist."""
    from ccdflow.simulate import NightSpec, simulate_night

    other = simulate_night(tmp_path / "blue", NightSpec.from_dict({"science_filter": "B", "damaged": [],
                                                                   "n_science": 3}, base="tiny"))
    assert other["counts"]
    night = tmp_path / "night"
    simulate_night(night, NightSpec.from_dict({"damaged": []}, base="tiny"))
    stray = night / "raw" / "sci_B_0001.fits"
    stray.write_bytes((tmp_path / "blue" / "raw" / "sci_B_0001.fits").read_bytes())
    # file names and links that once stopped Snakemake before any job ran, and
    # duplicates that were counted twice (tests/test_hostile_inputs.py has the rest)
    raw = night / "raw"
    first = sorted(raw.glob("sci_R_*.fits"))[0]
    shutil.copy(first, raw / "copy_{x}_of_first.fits")  # braces: not a wildcard
    shutil.copy(first, os.path.join(raw, os.fsdecode(b"caf\xe9.fits")))  # not UTF-8
    (raw / "gone.fits").symlink_to(raw / "never_there.fits")
    (raw / "loop").symlink_to(raw, target_is_directory=True)
    config = write_config(
        tmp_path / "stray.yaml", campaign="stray", results_dir=str(tmp_path / "results"), simulate={"enabled": False},
        raw=[{"path": str(night / "raw"), "instrument": "simulator"}], batch={"size": 4},
        calibration={"flat": {"min_frames": 2}}, lightcurves={"targets": [], "all_sources": True, "max_sources": 3},
    )
    result = snakemake(config=config, check=False)
    output = result.stdout + result.stderr
    results = tmp_path / "results" / "stray"
    assert result.returncode != 0, output[-3000:]
    assert "1 science frame(s) could not be calibrated" in output and "sci_B_0001.fits" in output, output[-3000:]
    assert list((results / "lightcurves").rglob("src*.ecsv")), "the R field's light curves were not made"
    assert (results / "manifest.json").exists() and "sci_B_0001.fits" in (results / "summary.txt").read_text()
    inventory = read_table(results / "inventory" / "inventory.ecsv").set_index("filename")
    assert inventory.loc["copy_{x}_of_first.fits", "reason"].endswith(f"duplicate of {first} (same content)")
    assert "dangling symbolic link" in inventory.loc["gone.fits", "reason"]
    assert inventory["reason"].str.contains("not valid UTF-8").sum() == 1
    assert not inventory.index.str.contains("loop").any() and inventory.index.is_unique
    # the same command again: still non-zero while the frame cannot be calibrated, nothing else redone
    again = snakemake(config=config, check=False)
    assert again.returncode != 0 and "could not be calibrated" in again.stdout + again.stderr


def test_raw_paths_that_name_nothing_stop_the_run_before_it_starts(tmp_path):
    """A mistyped raw path, alone or beside a good one, is an error naming it (a
    typo must not pass as a smaller night)."""
    from ccdflow.simulate import NightSpec, simulate_night

    simulate_night(tmp_path / "night", NightSpec.from_dict({"damaged": []}, base="tiny"))
    for raws in ([str(tmp_path / "nigth")], [str(tmp_path / "night" / "raw"), str(tmp_path / "night" / "rwa" / "*.fits")]):
        config = write_config(tmp_path / "typo.yaml", campaign="typo", results_dir=str(tmp_path / "results"),
                              simulate={"enabled": False}, raw=[{"path": r, "instrument": "simulator"} for r in raws])
        result = snakemake("--dry-run", config=config, check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0 and f"{raws[-1]!r} is not a folder" in output, output[-2000:]
        assert "Traceback" not in output
    # a folder that exists but holds no FITS file: the same, one line naming it (workflow and CLI)
    (tmp_path / "empty").mkdir()
    config = write_config(tmp_path / "empty.yaml", campaign="empty", results_dir=str(tmp_path / "results"),
                          raw=[{"path": str(tmp_path / "empty"), "instrument": "simulator"}])
    result = snakemake("--dry-run", config=config, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and f"{str(tmp_path / 'empty')!r} holds no FITS file" in output, output[-2000:]
    cli = subprocess.run([sys.executable, "-m", "ccdflow.cli", "inventory", str(tmp_path / "empty"),
                          "--instrument", "simulator"], capture_output=True, text=True)
    assert cli.returncode == 2 and "holds no FITS file" in cli.stderr and "Traceback" not in cli.stderr


def test_science_only_night_is_reduced_with_steps_skipped(tmp_path):
    # with the defaults, one line names what is missing and the setting that allows it
    _, result = _run_tiny(tmp_path, "scidefault", {"damaged": []}, {}, raw_glob="sci_*.fits")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    fix = "no bias or flat frames among the raw files, so 8 science frame(s) were left uncalibrated"
    assert fix in output and "calibration: {bias: {on_missing: skip}, flat: {on_missing: skip}}" in output, output[-3000:]
    assert output.count("could not be calibrated") == 0 and "... and 3 more" in output  # not one line per frame
    skip = {k: {"on_missing": "skip"} for k in ("bias", "dark", "flat")}
    results, result = _run_tiny(tmp_path, "scionly", {"damaged": []}, skip, raw_glob="sci_*.fits", check=True)
    products = list((results / "calibrated").rglob("*.fits.fz"))
    assert len(products) == 8
    header = fits.getheader(products[0])
    assert header["STEPS"].startswith("overscan,trim,gain,cosmic_rays")
    for key in ("SKIPBIAS", "SKIPDARK", "SKIPFLAT"):
        assert "no usable master" in header[key]
    assert "skipped" in (results / "calibrated" / "report.txt").read_text()


def test_report_builds_with_qa_plots(simulated_run, tmp_path):
    work, config, _ = simulated_run
    results = work / "results" / "e2e"
    assert list((results / "qa").rglob("masters.png")) and list((results / "qa").rglob("conditions.png"))
    report = tmp_path / "report.html"
    snakemake("--report", str(report), config=config)
    text = report.read_text(errors="ignore")
    assert report.stat().st_size > 10_000
    for category in ("Master calibrations", "Observing conditions", "Noise against magnitude"):
        assert category in text, category


def test_product_tables_follow_the_declared_schemas(simulated_run):
    """Photometry, field, frame, catalogue and light-curve tables carry their schema's
    units and descriptions, read in astropy without a warning and in pandas, and no
    column shadows a DataFrame attribute (``df.flags``, ``df.filter``...)."""
    import warnings

    import pandas as pd
    from astropy import units as u
    from astropy.table import Table

    from ccdflow import tables

    work, _, _ = simulated_run
    results = work / "results" / "e2e"
    field = next(p for p in (results / "fields").glob("*/*") if (p / "photometry.parquet").exists())
    lightcurves = results / "lightcurves" / field.parent.name / field.name
    products = [(field / "catalogue.ecsv", tables.CATALOGUE), (field / "frames.ecsv", tables.FRAMES),
                (field / "photometry.ecsv", tables.FIELD_PHOTOMETRY), (field / "photometry.parquet", tables.FIELD_PHOTOMETRY),
                (next((results / "photometry").rglob("*.parquet")), tables.PHOTOMETRY)]
    products += [(p, tables.LIGHT_CURVE) for p in lightcurves.glob("src*.ecsv")][:2]
    assert len(products) == 7, products
    for path, schema in products:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            table = Table.read(path)
        schema.check(table, str(path))
        for column in schema.columns:
            if column.name in table.colnames:
                expected = u.Unit(column.unit) if column.unit else None
                assert table[column.name].unit == expected, (path, column.name, table[column.name].unit)
                assert table[column.name].description == column.description, (path, column.name)
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else table.to_pandas()
        assert not [c for c in frame.columns if hasattr(pd.DataFrame, c)], (path, list(frame.columns))
        assert not [c for c in frame.columns if c.endswith(".mask")], path
