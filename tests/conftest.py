"""Shared fixtures: the project root, the real frames beside it, a tiny simulated night."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ARCSAT = SHARED_DATA / "arcsat-xo1b-20250602" / "raw"
LOWELL = SHARED_DATA / "lowell42-20190326" / "raw"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def arcsat_raw() -> Path:
    if not ARCSAT.is_dir():
        pytest.skip(f"real ARCSAT frames not present at {ARCSAT} (../shared/data is optional)")
    return ARCSAT


@pytest.fixture(scope="session")
def lowell_raw() -> Path:
    if not LOWELL.is_dir():
        pytest.skip(f"real Lowell frames not present at {LOWELL} (../shared/data is optional)")
    return LOWELL


@pytest.fixture(scope="session")
def profiles():
    from ccdflow.instrument import load_profile

    folder = ROOT / "config" / "instruments"
    return {path.stem: load_profile(path) for path in folder.glob("*.yaml")}


@pytest.fixture(scope="session")
def tiny_night(tmp_path_factory):
    """A tiny simulated night with every kind of damaged file, made once per run."""
    from ccdflow.simulate import NightSpec, simulate_night

    outdir = tmp_path_factory.mktemp("tiny_night")
    spec = NightSpec.from_dict(
        {"damaged": ["zero_length", "truncated", "not_fits", "missing_exptime", "wrong_shape"]}, base="tiny"
    )
    truth = simulate_night(outdir, spec)
    return outdir, truth


def write_real_config(work: Path) -> Path:
    """Both real nights in one campaign (see :func:`real_campaign`)."""
    import yaml
    from astropy.coordinates import SkyCoord

    xo1 = SkyCoord("16:02:11.83 +28:10:10.7", unit=("hourangle", "deg"))
    config = work / "real.yaml"
    config.write_text(yaml.safe_dump({
        "campaign": "real", "results_dir": str(work / "results"), "simulate": {"enabled": False},
        "raw": [{"path": str(ARCSAT), "instrument": "arcsat"}, {"path": str(LOWELL), "instrument": "lowell42"}],
        "batch": {"size": 50}, "calibration": {"cosmic_rays": {"enabled": False}},
        "lightcurves": {"targets": [{"name": "XO-1", "ra": float(xo1.ra.deg), "dec": float(xo1.dec.deg)}],
                        "all_sources": True, "max_sources": 200},
    }))
    return config


@pytest.fixture(scope="session")
def real_campaign(tmp_path_factory, arcsat_raw, lowell_raw) -> Path:
    """Both real nights in one campaign, run once through the real workflow for every
    test that reads their products (tests/test_workflow.py, tests/test_real_lightcurves.py);
    started in the background at collection when those tests are selected.

    Cosmic-ray detection is off: it would dominate the run time, and the checks rest
    on bright stars (an unflagged hit on a comparison would show in the Lowell check,
    which bounds every comparison). XO-1 is the ARCSAT target by its sky position;
    the 200 brightest unflagged sources get a light curve (the Lowell checks use the
    brightest 30 clean ones; all 2,289 would take the light-curve job 160 s).
    """
    from workflow_run import background_run, run_snakemake

    run = background_run("real")
    if run is not None:
        run.wait()
        print(f"real nights: workflow {run.seconds:.0f} s (in the background)")
        return run.config.parent / "results" / "real"
    work = tmp_path_factory.mktemp("real")
    run_snakemake(config=write_real_config(work))
    return work / "results" / "real"


def pytest_collection_finish(session):
    """Start long end-to-end runs now, in the background, when their tests were
    selected: the SLURM runs are mostly waiting on the scheduler, and the real
    nights' run fills the cores the short Snakemake runs of other tests leave idle."""
    if session.config.option.collectonly:
        return
    if any(item.nodeid.startswith("tests/test_slurm.py") and "runs" in getattr(item, "fixturenames", ())
           for item in session.items):
        from slurm_run import start_background

        start_background()
    if ARCSAT.is_dir() and LOWELL.is_dir() and any(
            "real_campaign" in getattr(item, "fixturenames", ()) for item in session.items):
        import tempfile

        from workflow_run import BACKGROUND_RUNS, BackgroundRun

        work = Path(tempfile.mkdtemp(prefix="ccdflow-real-nights-"))
        BACKGROUND_RUNS["real"] = BackgroundRun(write_real_config(work), work / "workflow").start()
    _start_module_runs(session.items)


def _start_module_runs(items) -> None:
    """A test module may declare ``BACKGROUND(work) -> config`` (or a dict of them by
    name): its night is made and run through the workflow in the background from now
    on (its fixture waits for it)."""
    import functools
    import tempfile

    from workflow_run import BACKGROUND_RUNS, BackgroundRun

    # only for the module's end-to-end (slow) tests: its unit tests alone need no run
    for module in {item.module for item in items if hasattr(getattr(item, "module", None), "BACKGROUND")
                   and item.get_closest_marker("slow")}:
        # one run, or several by name: {"arcsat": make_config, ...} -> runs "<module>:<name>"
        runs = module.BACKGROUND if isinstance(module.BACKGROUND, dict) else {"": module.BACKGROUND}
        for name, make in runs.items():
            key = f"{module.__name__}:{name}" if name else module.__name__
            work = Path(tempfile.mkdtemp(prefix=f"ccdflow-{key.replace(':', '-')}-"))
            BACKGROUND_RUNS[key] = BackgroundRun(functools.partial(make, work), work / "workflow").start()


def pytest_sessionfinish(session, exitstatus):
    from slurm_run import background_runs

    runs = background_runs()
    if runs is not None:
        runs.stop()
    from workflow_run import BACKGROUND_RUNS

    for run in BACKGROUND_RUNS.values():
        run.stop()
