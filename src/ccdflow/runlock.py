"""One run per campaign at a time, and no stale lock after a crash.

Snakemake's own lock refuses a second run on the same outputs, but it does not
know whether its holder is alive: after a SIGKILL or a power cut the next run
stops with "Directory cannot be locked" until someone runs ``--unlock``. An
``flock`` on a file of the campaign is released by the kernel whenever its
holder dies, so it tells the two cases apart: while the workflow holds it,
any Snakemake lock on this campaign's outputs belongs to a dead run and is
removed; when another process holds it, the run stops with its PID.
"""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".ccdflow-run.lock"


class CampaignBusy(RuntimeError):
    """Another live run holds the campaign."""


def hold_campaign_lock(campaign_dir: str | Path):
    """Take the campaign's run lock for the life of this process; return its open file.

    Raises :class:`CampaignBusy` naming the holder when another process has it.
    Keep the returned object referenced: closing it releases the lock.
    """
    campaign_dir = Path(campaign_dir)
    campaign_dir.mkdir(parents=True, exist_ok=True)
    path = campaign_dir / LOCK_NAME
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown process"
        handle.close()
        raise CampaignBusy(
            f"campaign folder {campaign_dir} is being processed by another run ({holder}); "
            "wait for it to finish or stop it, then run again"
        ) from None
    handle.seek(0)
    handle.truncate()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    handle.flush()
    return handle


def remove_stale_snakemake_locks(lock_dir: str | Path, campaign_dir: str | Path) -> list[Path]:
    """Remove Snakemake lock pairs whose locked outputs all lie in ``campaign_dir``.

    Call only while holding :func:`hold_campaign_lock`: then no live run can
    own them. Locks of other campaigns in the same working directory are kept.
    """
    lock_dir, campaign = Path(lock_dir), Path(os.path.abspath(campaign_dir))
    removed = []
    for output_lock in sorted(lock_dir.glob("*.output.lock")):
        keys = [line.strip() for line in output_lock.read_text().splitlines() if line.strip()]
        if keys and all(Path(os.path.abspath(k)).is_relative_to(campaign) for k in keys):
            for path in (output_lock, output_lock.with_name(output_lock.name.replace(".output.", ".input."))):
                if path.exists():
                    path.unlink()
                    removed.append(path)
    return removed


# Invocations that only read state: they may run beside a live run (a warning, not an error).
_READ_ONLY_FLAGS = ("--dry-run", "--dryrun", "--dry_run", "--report", "--lint", "--summary", "--detailed-summary",
                    "--list", "--list-rules", "--dag", "--rulegraph", "--filegraph", "--unlock", "--list-changes")


def reads_only(argv: list[str]) -> bool:
    """True for Snakemake invocations that change nothing (a dry run, a report, a listing)."""
    for arg in argv[1:]:
        if arg.split("=")[0] in _READ_ONLY_FLAGS or arg.startswith("--list"):
            return True
        if arg.startswith("-") and not arg.startswith("--") and "n" in arg[1:] and arg[1:].isalpha():
            return True  # -n, -np, -pn ...
    return False


def guard_campaign(campaign_dir: str | Path, lock_dir: str | Path, argv: list[str], log=None):
    """At workflow start: hold the campaign lock and clear stale Snakemake locks.

    Snakemake has not told the Snakefile yet whether this is a dry run, so the
    command line decides: a run that only reads (``-n``, ``--report``, ...)
    beside a live one gets a warning, an executing one :class:`CampaignBusy`.
    Returns the lock's file object (keep it referenced) or None.
    """
    try:
        handle = hold_campaign_lock(campaign_dir)
    except CampaignBusy as busy:
        if reads_only(argv):
            if log:
                log.warning(str(busy))
            return None
        raise
    for stale in remove_stale_snakemake_locks(lock_dir, campaign_dir):
        if log:
            log.info(f"removed {stale}: left by a run that no longer exists")
    return handle
