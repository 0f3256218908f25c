"""Where the project's own files live (schemas, instrument profiles)."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The ccdflow checkout: ``$CCDFLOW_ROOT`` or the tree this package sits in.

    ccdflow is a workflow repository installed editable (``pip install -e .``),
    so the schemas and profiles are read from the checkout rather than copied
    into the package.
    """
    env = os.environ.get("CCDFLOW_ROOT")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "workflow" / "schemas").is_dir():
            return parent
    raise FileNotFoundError(
        "cannot find the ccdflow checkout (workflow/schemas); install with "
        "'pip install -e .' from the repository or set CCDFLOW_ROOT"
    )


def schema_path(name: str) -> Path:
    return project_root() / "workflow" / "schemas" / name


def instruments_dir() -> Path:
    return project_root() / "config" / "instruments"
