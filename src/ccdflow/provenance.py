"""What made a product: software version, config hash, input checksums."""

from __future__ import annotations

import hashlib
import json
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


def fits_text(text: str, limit: int = 68) -> str:
    """A string FITS headers accept: printable ASCII (others escaped), at most ``limit`` chars."""
    safe = str(text).encode("ascii", "backslashreplace").decode("ascii")
    safe = "".join(c if 32 <= ord(c) < 127 else "?" for c in safe)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."
