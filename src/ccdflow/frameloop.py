"""The per-frame stage loop: every batched stage runs its frames through this.

A job of a batched stage (frame statistics, pre-processing, calibration,
photometry) handles many frames; one frame that cannot be done must not cost
the others. :func:`run_frames` calls the stage's function on each frame and
records one outcome per frame in the batch folder's ``_status.json``, the only
writer of that file, with one vocabulary:

``ok``        the frame's product was written
``skipped``   nothing to do for this frame (e.g. switched off), by design
``excluded``  left out on purpose by an earlier decision (e.g. not aligned)
``failed``    it should have been made and could not be: the reason names the file

A stage function writes the frame's products into the folder it is given and
returns a dict of extra fields for its status entry (or None), or raises :class:`FrameExcluded` / :class:`FrameSkipped`; an ``OSError``
or ``ValueError`` marks the frame failed. Running out of disk space is not a
property of the frame: it fails the whole job, naming the path, so that the
rerun after space is freed makes every frame again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .atomic import atomic_dir, write_text
from .layout import Layout

log = logging.getLogger(__name__)

OK, SKIPPED, EXCLUDED, FAILED = "ok", "skipped", "excluded", "failed"
STATUSES = (OK, SKIPPED, EXCLUDED, FAILED)
# errors of the machine, not of a frame: the job fails
_JOB_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _machine_errno(err: BaseException) -> int | None:
    """The errno of an error of the machine (disk full, quota, read-only file system),
    not of the frame, or None. A full disk does not always carry its errno: numpy's
    writer raises "16384 requested and 5856 written", which astropy re-raises as
    "Not enough space on disk: requested ..., available 0" (no errno either)."""
    while err is not None:
        if isinstance(err, OSError):
            if err.errno in _JOB_ERRNOS:
                return err.errno
            if "Not enough space on disk" in str(err):
                return errno.ENOSPC
        err = err.__cause__ or err.__context__
    return None


class FrameExcluded(Exception):
    """Raise from a stage function: the frame is left out on purpose, for this reason."""


class FrameSkipped(Exception):
    """Raise from a stage function: there is nothing to do for this frame."""


class FrameFailed(Exception):
    """Raise from a stage function: the frame could not be done (the reason names it).

    ``info`` holds fields for its status entry all the same (e.g. what was tried).
    """

    def __init__(self, reason: str, info: dict | None = None):
        super().__init__(reason)
        self.info = info or {}


def run_frames(items: Iterable[tuple[str, object]], process: Callable[[str, object, Path], dict | None],
               outdir: str | Path, extra: Callable[[str, object], dict] | None = None) -> dict[str, dict]:
    """Run ``process(frame_id, item, folder)`` for each item, writing its products into
    ``folder``; write and return the status of each frame.

    ``folder`` is a temporary sibling of ``outdir`` that becomes ``outdir`` once
    every frame is done (:func:`ccdflow.atomic.atomic_dir`): a killed job leaves
    no batch folder to be taken for complete. ``extra(frame_id, item)``, when
    given, adds fields to every entry whatever the outcome (e.g. the raw path,
    so a report can name the file).
    """
    with atomic_dir(outdir) as folder:
        status = _run(items, process, folder, extra)
    counts = {s: sum(e["status"] == s for e in status.values()) for s in STATUSES}
    log.info("%s: %s", Path(outdir).name, ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return status


def _run(items, process, folder: Path, extra) -> dict[str, dict]:
    status: dict[str, dict] = {}
    for frame_id, item in items:
        entry = dict(extra(frame_id, item)) if extra else {}
        try:
            entry.update(process(frame_id, item, folder) or {})
            entry.update(status=OK, reason="")
        except FrameExcluded as why:
            entry.update(status=EXCLUDED, reason=str(why))
        except FrameSkipped as why:
            entry.update(status=SKIPPED, reason=str(why))
        except (FrameFailed, OSError, ValueError) as err:
            code = _machine_errno(err)
            if code is not None:  # the rest of the batch would fail the same way: fail the job, naming where
                raise OSError(code, f"{os.strerror(code)} while writing {frame_id} into {folder}: {err}") from err
            entry.update(getattr(err, "info", {}), status=FAILED, reason=str(err))
            log.error("%s", err)
        status[frame_id] = entry
    write_text(Layout.status(folder), json.dumps(status, indent=1, sort_keys=True))
    return status


def read_status(folder: str | Path) -> dict[str, dict]:
    """The status entries of a batch folder written by :func:`run_frames`."""
    return json.loads(Path(Layout.status(folder)).read_text())
