"""Atomic file output: a product appears under its final name complete, or not at all.

Snakemake removes the outputs of a failed job, but a killed interpreter or a
crashed node can still leave a half-written file; writing to a temporary name in
the same directory and renaming it (atomic on POSIX) closes that gap.
"""

from __future__ import annotations

import contextlib
import os
import shutil
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


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temporary sibling folder; it becomes ``final`` when the block succeeds.

    For a job whose output is a folder of many files (a batch of frames, a
    field's light curves): a killed job leaves only the hidden sibling
    (``.<name>.part-XXXXXX``), which no product pattern matches and the next run
    of the same job removes, so the final name exists only complete and
    Snakemake sees the output missing, not half-made.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.part-"
    for stale in final.parent.glob(f"{prefix}*"):  # left by a killed run of this job
        shutil.rmtree(stale, ignore_errors=True)
    temp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o777 & ~umask)  # mkdtemp makes it private; the product is not
    try:
        yield temp
        if final.exists():  # an empty folder made for us, or a product being replaced by hand
            shutil.rmtree(final)
        os.replace(temp, final)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def set_aside(final: str | os.PathLike) -> Path:
    """Rename a damaged product folder to a hidden sibling that the next run of
    its job removes (as :func:`atomic_dir` does a killed run's); returns it."""
    final = Path(final)
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.part-damaged-", dir=final.parent))
    os.replace(final, aside)
    return aside
