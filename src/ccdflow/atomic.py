"""Atomic file output: a product appears under its final name complete, or not at all.

Snakemake removes the outputs of a failed job, but a killed interpreter or a
crashed node can still leave a half-written file; writing to a temporary name in
the same directory and renaming it (atomic on POSIX) closes that gap.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike):
    """Yield a temporary path beside ``final``; rename it into place on success.

    The temporary name keeps the final suffix so that writers which infer the
    format from the extension (astropy's ``Table.write``) still work.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    handle, temp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{suffix}", dir=final.parent)
    os.close(handle)
    os.unlink(temp)  # writers create it themselves (some refuse to overwrite)
    try:
        yield Path(temp)
        os.replace(temp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def write_text(final: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(final) as temp:
        Path(temp).write_text(text, encoding="utf-8")
