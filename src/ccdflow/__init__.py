"""ccdflow: CCD reduction and photometry, from raw FITS nights to light curves."""

from importlib.metadata import PackageNotFoundError, version


def _source_version() -> str:
    """The version in the checkout's pyproject.toml: the package imported from the
    workflow's own ``src/`` (a job environment without ccdflow installed, see
    scripts/*.py) is the same code as the installed one and says the same version."""
    import tomllib
    from pathlib import Path

    try:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        project = tomllib.loads(pyproject.read_text())["project"]
        return project["version"] if project.get("name") == "ccdflow" else "0.0.0+unknown"
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0.0.0+unknown"


try:
    __version__ = version("ccdflow")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = _source_version()

__all__ = ["__version__"]
