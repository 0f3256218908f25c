"""What made a product: software version, code commit, config hash, input checksums."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path

from . import __version__


def config_hash(config: dict) -> str:
    """Short SHA-256 of the config, independent of key order."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (as stored, i.e. of the compressed file)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def sha1_file(path: str | Path) -> str:
    return file_digest(path, "sha1")


def software_version() -> str:
    return f"ccdflow {__version__}"


def _git(root: Path, *args: str) -> str:
    # safe.directory: a checkout owned by another user (a shared install on a cluster)
    # is still read, never written
    result = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(root), *args], capture_output=True,
                            text=True, timeout=30, check=True)
    return result.stdout.strip()


def _installed_commit() -> str | None:
    """The commit pip recorded when ccdflow was installed from a git URL (PEP 610)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        text = distribution("ccdflow").read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    try:
        return json.loads(text or "{}").get("vcs_info", {}).get("commit_id")
    except ValueError:
        return None


@functools.cache
def code_identity(root: str | Path | None = None) -> dict:
    """Which code made a product: ``commit`` (40 hex digits, or None when unknown),
    ``dirty`` (tracked files changed since that commit; None when unknown) and
    ``source`` (``git``: the checkout the package runs from, its ``src/`` or an
    editable install; ``pip``: the commit pip recorded installing from git;
    ``unknown``). ``root``: the checkout to ask (default: the package's own).

    Asked at run time by each job, never passed as a rule parameter: a new commit
    that changes no code a job runs does not rerun it (Snakemake reruns on
    parameter changes), and its products say the commit that really made them.
    """
    package = Path(__file__).resolve().parent
    # the package's own checkout only when it runs from one (src/ccdflow): an installed copy
    # in a virtualenv inside some checkout is not that checkout's code
    if root is None and package.parent.name == "src":
        root = package.parents[1]
    if root is not None:
        try:
            commit = _git(Path(root), "rev-parse", "HEAD")
            dirty = bool(_git(Path(root), "status", "--porcelain", "--untracked-files=no"))
            return {"commit": commit, "dirty": dirty, "source": "git"}
        except (OSError, subprocess.SubprocessError):
            pass  # no git, not a checkout (a copied tree), or a checkout without commits
    commit = _installed_commit()
    return {"commit": commit, "dirty": False if commit else None, "source": "pip" if commit else "unknown"}


def code_commit() -> str:
    """One line for logs and summaries: the commit, ``+dirty`` where the tree had
    uncommitted changes, or ``unknown``."""
    ident = code_identity()
    if not ident["commit"]:
        return "unknown"
    return ident["commit"] + ("+dirty" if ident["dirty"] else "")


def identify_code(header) -> None:
    """PIPEVER, GITCOMIT and GITDIRTY of the code making this FITS header's file."""
    ident = code_identity()
    header["PIPEVER"] = (software_version(), "software that made this file")
    header["GITCOMIT"] = (ident["commit"] or "unknown", "commit of the workflow that made it")
    if ident["dirty"] is not None:
        header["GITDIRTY"] = (bool(ident["dirty"]), "uncommitted changes to that commit")


def fits_text(text: str, limit: int = 68) -> str:
    """A string FITS headers accept: printable ASCII (others escaped), at most ``limit`` chars."""
    safe = str(text).encode("ascii", "backslashreplace").decode("ascii")
    safe = "".join(c if 32 <= ord(c) < 127 else "?" for c in safe)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."
