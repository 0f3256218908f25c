"""FITS at the level of 2880-byte blocks: file names, header blocks, data-unit sizes.

What :mod:`ccdflow.rawscan` reads raw files with, without astropy opening them:
``astropy.io.fits`` stops at the end of the last data unit it needs (so never
sees a corrupt gzip stream's CRC) and cannot hash what it reads.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from astropy.io import fits

BLOCK = 2880
CARD = 80
UNCOMPRESSED_SUFFIXES = (".fits", ".fit", ".fts")
_BASES = UNCOMPRESSED_SUFFIXES
FITS_SUFFIXES = (*_BASES, *(b + ".gz" for b in _BASES), *(b + ".bz2" for b in _BASES), ".fits.fz", ".fz")
# Compressions Python cannot read without extra tools: found, and listed as
# unsupported with the command that fixes them, never skipped silently.
UNSUPPORTED = {".z": "Unix compress (.Z): run `uncompress` or `gzip -d` on it",
               ".zip": "zip: unzip it", ".xz": "xz: run `unxz` on it",
               ".zst": "zstandard: run `unzstd` on it", ".lz4": "lz4: run `unlz4` on it",
               ".7z": "7-zip: extract it"}
UNSUPPORTED_SUFFIXES = tuple(b + c for b in _BASES for c in UNSUPPORTED)


class FrameReadError(Exception):
    """A raw file that cannot be used; the message names the problem."""


def fits_stem(name: str) -> str:
    """A raw file name without its FITS and compression suffixes (``a.fits.gz`` -> ``a``)."""
    return re.sub(r"\.(fits|fit|fts)(\.gz|\.bz2|\.fz)?$|\.fz$", "", name, flags=re.IGNORECASE)


def is_fits_name(path: str | os.PathLike) -> bool:
    """True for the file-name endings of FITS files, compressed in any way ccdflow
    reads or knows it cannot (any case): these are all inventoried."""
    return str(path).lower().endswith(FITS_SUFFIXES + UNSUPPORTED_SUFFIXES)


def unsupported_compression(path: str | os.PathLike) -> str | None:
    """Why ccdflow cannot read this file's compression (and the fix), or None."""
    name = str(path).lower()
    if name.endswith(UNSUPPORTED_SUFFIXES):
        return UNSUPPORTED[os.path.splitext(name)[1]]
    return None


def read_header_blocks(stream) -> bytes | None:
    """Header bytes up to and including the block holding ``END``; None at EOF."""
    blocks = []
    while True:
        block = stream.read(BLOCK)
        if not block:
            return None if not blocks else _truncated()
        if len(block) < BLOCK:
            _truncated()
        blocks.append(block)
        for start in range(0, BLOCK, CARD):
            if block[start : start + 8] == b"END     ":
                return b"".join(blocks)


def _truncated():
    raise FrameReadError("file ends inside a FITS header (truncated)")


def data_unit_bytes(header: fits.Header, padded: bool = True) -> int:
    """Size of the data unit of an HDU, padded to whole blocks unless ``padded`` is False."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    count = 1
    for axis in range(1, naxis + 1):
        count *= int(header.get(f"NAXIS{axis}", 0))
    count = abs(int(header.get("BITPIX", 8))) // 8 * count
    count += int(header.get("PCOUNT", 0))
    return -(-count // BLOCK) * BLOCK if padded else count


class Prefixed:
    """A stream with bytes already read put back in front."""

    def __init__(self, prefix: bytes, stream):
        self.prefix, self.stream = prefix, stream

    def read(self, size: int) -> bytes:
        head, self.prefix = self.prefix[:size], self.prefix[size:]
        return head + self.stream.read(size - len(head)) if len(head) < size else head


def parse_header(raw: bytes, path: Path) -> fits.Header:
    if not raw.startswith(b"SIMPLE  =") and not raw.startswith(b"XTENSION="):
        raise FrameReadError("not a FITS file (no SIMPLE card)")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise FrameReadError("FITS header holds non-ASCII bytes") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fits.Header.fromstring(text)
