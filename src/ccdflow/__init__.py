"""ccdflow: CCD reduction and photometry, from raw FITS nights to light curves."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ccdflow")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
