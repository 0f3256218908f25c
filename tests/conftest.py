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
