"""Logging set-up shared by the rule scripts and the command line."""

from __future__ import annotations

import logging
import sys
import warnings


def log_to(path: str | None, level: int = logging.INFO) -> logging.Logger:
    """Send ccdflow's log (and Python warnings) to ``path``, or stderr when None."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8") if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    return logging.getLogger("ccdflow")
