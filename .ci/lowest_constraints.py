#!/usr/bin/env python3
"""The lowest versions pyproject.toml's ranges allow, for .ci/floors.

    python3 .ci/lowest_constraints.py constraints   # name==floor for each runtime dependency
    python3 .ci/lowest_constraints.py test-tools    # the test extra the fast tests need
    python  .ci/lowest_constraints.py check         # the installed versions are the floors

The floor of a runtime dependency is its ``>=`` bound, pinned exactly, so it must be
a released version (``scipy>=1.11.1``, not ``>=1.11`` when 1.11.0 was yanked). The
test tools are installed at their normal (newest allowed) versions, less those in
NOT_AT_FLOORS, which no fast test needs. Standard library only: it runs before any
venv exists.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# test-extra packages left out of the floor venv, and why
NOT_AT_FLOORS = {
    "snakemake-executor-plugin-slurm": "needs numpy>=2.4.5; only the SLURM tests (slow) use it",
    "ccdproc": "only benchmarks/ import it (and its dask, scikit-image... cost a minute to install)",
}

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(?:;.*)?$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def split(requirement: str) -> tuple[str, str]:
    """``"numpy>=1.26,<3"`` -> ``("numpy", ">=1.26,<3")``."""
    match = _REQUIREMENT.match(requirement)
    if not match:
        raise ValueError(f"cannot read the requirement {requirement!r}")
    return canonical(match.group(1)), match.group(2).replace(" ", "")


def floor(requirement: str) -> str:
    name, spec = split(requirement)
    lower = [s[2:] for s in spec.split(",") if s.startswith(">=")]
    if len(lower) != 1 or not re.fullmatch(r"\d+(\.\d+)*", lower[0]):
        raise ValueError(f"{requirement!r}: needs one '>=X.Y' lower bound to test as a floor")
    return lower[0]


def _project(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]


def constraints(root: Path = ROOT) -> list[str]:
    """``name==floor`` for every runtime dependency, in pyproject's order."""
    return [f"{split(r)[0]}=={floor(r)}" for r in _project(root)["dependencies"]]


def test_tools(root: Path = ROOT) -> list[str]:
    """The test extra as pyproject gives it, less NOT_AT_FLOORS."""
    return [r for r in _project(root)["optional-dependencies"]["test"] if split(r)[0] not in NOT_AT_FLOORS]


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.match(r"\d+(?:\.\d+)*", version).group(0).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def check(root: Path = ROOT) -> list[str]:
    """Problems: a runtime dependency installed here at another version than its floor."""
    from importlib.metadata import PackageNotFoundError, version

    problems = []
    for line in constraints(root):
        name, wanted = line.split("==")
        try:
            have = version(name)
        except PackageNotFoundError:
            problems.append(f"{name}: not installed (floor {wanted})")
            continue
        status = "" if _release(have) == _release(wanted) else "  <- not the floor"
        print(f"floors: {name}=={have}{status}")
        if status:
            problems.append(f"{name}: {have} installed, floor {wanted}")
    return problems


def main(argv: list[str]) -> int:
    if argv == ["constraints"]:
        print("\n".join(constraints()))
    elif argv == ["test-tools"]:
        print("\n".join(test_tools()))
    elif argv == ["check"]:
        problems = check()
        for problem in problems:
            print(f"floors: {problem}", file=sys.stderr)
        return 1 if problems else 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
