"""Logging set-up shared by the rule scripts and the command line."""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass


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


@dataclass(frozen=True)
class Job:
    """What a rule script gets from :func:`start_job`."""

    log: logging.Logger
    config_hash: str   # hash of the whole workflow config, for provenance keywords


def start_job(smk) -> Job:
    """Start a rule script: log to the job's log file and leave the job's record beside it.

    ``smk`` is the ``snakemake`` object of a rule script; this is the one place
    that reads its whole config, and only to hash it for provenance (a job's
    inputs are its ``params``). The record
    (``<log>.job.json``: rule, wildcards, inputs, outputs, params, software,
    code commit and whether its tree was dirty, config hash) is what a campaign manifest reads to say which rule made a
    product from which inputs; Snakemake's own metadata is internal to it.
    """
    import json
    import socket
    from datetime import datetime, timezone

    from .atomic import write_text
    from .provenance import code_identity, config_hash, software_version

    log = log_to(smk.log[0])
    digest = config_hash(smk.config)
    record = {
        "rule": smk.rule,
        "wildcards": dict(smk.wildcards.items()),
        "input": [str(p) for p in smk.input],
        "output": [str(p) for p in smk.output],
        "params": dict(smk.params.items()),
        "software": software_version(),
        "commit": code_identity()["commit"],
        "dirty": code_identity()["dirty"],
        "config_hash": digest,
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text(f"{smk.log[0]}.job.json", json.dumps(record, indent=1, default=str))
    return Job(log, digest)
