"""Write envs/<env>.linux-64.pin.txt beside every envs/<env>.yaml.

Run with the project's virtual environment, on linux-64, after changing an env
file or upgrading the venv::

    .venv/bin/python envs/make_pins.py

Each pin file lists the packages its env file names, at the versions installed in
the interpreter that runs this (the .venv: pip wheels for linux-64), as conda specs
(``conda-forge::numpy==2.4.6``). Snakemake's conda integration uses
``<env>.<platform>.pin.txt`` beside an env file first (``conda create --file``)
and falls back to the env file if that fails. The pins fix the named packages, not
their own dependencies (conda still solves those): a conda-lock style ``@EXPLICIT``
list of every package needs a conda solver, e.g. ``snakedeploy pin-conda-env
envs/core.yaml`` or ``conda list --explicit`` in a created env, and this script
does not need conda. tests/test_envs.py checks that each pin file names the env
file's packages at versions inside its ranges.
"""

from __future__ import annotations

import platform
import re
import sys
from importlib.metadata import version
from pathlib import Path

import yaml

ENVS = Path(__file__).resolve().parent
PLATFORM = "linux-64"


def package_names(env_file: Path) -> list[str]:
    """The conda package names an env file lists (its dependency strings)."""
    env = yaml.safe_load(env_file.read_text())
    return [re.match(r"[A-Za-z0-9_.-]+", dep).group(0) for dep in env["dependencies"] if isinstance(dep, str)]


def pins(env_file: Path) -> list[str]:
    lines = []
    for name in package_names(env_file):
        installed = platform.python_version() if name == "python" else version(name)
        lines.append(f"conda-forge::{name}=={installed}")
    return lines


def render(env_file: Path) -> str:
    header = [
        f"# Exact versions for {PLATFORM} of envs/{env_file.name}, for `conda create --file`: Snakemake",
        "# uses <env>.<platform>.pin.txt beside an env file first, the env file if that fails.",
        "# Made by `.venv/bin/python envs/make_pins.py` from the versions installed in the",
        f"# project's .venv (pip wheels, {PLATFORM}, Python {platform.python_version()}): the packages the",
        "# env file names, not their dependencies (conda solves those); see envs/make_pins.py.",
    ]
    return "\n".join(header + pins(env_file)) + "\n"


def main() -> int:
    if not (sys.platform == "linux" and platform.machine() == "x86_64"):
        print(f"make_pins: pins are for {PLATFORM}; this is {sys.platform} {platform.machine()}", file=sys.stderr)
        return 1
    for env_file in sorted(ENVS.glob("*.yaml")):
        target = env_file.with_name(f"{env_file.stem}.{PLATFORM}.pin.txt")
        target.write_text(render(env_file))
        print(f"wrote {target.relative_to(ENVS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
