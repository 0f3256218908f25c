"""One full read of each raw file at inventory: structure, integrity and content checksum.

The inventory reads every byte of a raw file once (and never again while the
file keeps its size, times and inode, see :mod:`ccdflow.inventory`), because
four promises need the whole file and one pass serves them all:

- **integrity**: a gzip or bzip2 stream is decoded to its end, where its CRC
  is checked (astropy stops reading at the end of the data unit and never sees
  a corrupt stream); every HDU's data unit must be there;
- **structure**: the number of image HDUs, so a multi-extension file is never
  reduced as if its first image were all of it;
- **content checksum**: SHA1 of the decoded FITS bytes, so the same frame under
  two names (a copy, a symlink, ``.fits`` beside ``.fits.gz``) is found, and a
  file changed in place, even keeping its time stamp, is noticed;
- the image header (of the primary HDU, or of the first image extension when
  the primary holds no data, with the primary's keywords it lacks).

Cost: SHA1 runs at ~1.2 GB/s here, gzip decoding at ~0.3 GB/s of output; the
file is read from disk once more later by pre-processing (from the page cache
on a laptop-sized night). ``benchmarks/bench_inventory.py`` measures it.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits

from .fitsheader import (
    BLOCK,
    FrameReadError,
    Prefixed,
    data_unit_bytes,
    parse_header,
    read_header_blocks,
    unsupported_compression,
)

CHUNK = 1 << 22


@dataclass
class RawScan:
    """What one read of a raw file tells."""

    content_sha1: str  # SHA1 of the FITS bytes, decompressed
    fits_bytes: int  # length of the FITS bytes, decompressed
    image_headers: list  # every image HDU's header, the primary's keywords it lacks added
    image_indices: list  # and their HDU numbers (0: primary)

    @property
    def header(self) -> fits.Header:
        """The first image HDU's header."""
        return self.image_headers[0]

    @property
    def hdu_index(self) -> int:
        return self.image_indices[0]

    @property
    def images(self) -> int:
        """HDUs holding image data."""
        return len(self.image_indices)


class _Hashing:
    """A stream that hashes and counts what is read through it."""

    def __init__(self, stream):
        self.stream, self.sha1, self.count = stream, hashlib.sha1(), 0

    def read(self, size: int) -> bytes:
        data = self.stream.read(size)
        self.sha1.update(data)
        self.count += len(data)
        return data

    def skip(self, size: int) -> int:
        """Read (and hash) up to ``size`` bytes; the number read."""
        done = 0
        while done < size:
            data = self.read(min(CHUNK, size - done))
            if not data:
                break
            done += len(data)
        return done

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def open_stream(path: Path):
    """The decompressed bytes of a raw file (gzip, bzip2 or plain), as a binary stream."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def _is_image(header: fits.Header, index: int) -> bool:
    if index and str(header.get("XTENSION", "")).strip().upper() != "IMAGE":
        return False
    return int(header.get("NAXIS", 0)) >= 2 and data_unit_bytes(header) > 0


def scan_raw(path: str | os.PathLike) -> RawScan:
    """Read ``path`` once, end to end; raise :class:`FrameReadError` with a short
    reason for an empty, non-FITS, truncated, corrupt or unsupported file."""
    path = Path(path)
    reason = unsupported_compression(path)
    if reason:
        raise FrameReadError(f"compressed with {reason}; ccdflow cannot read this compression")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise FrameReadError(f"cannot stat file: {err.strerror}") from None
    if size == 0:
        raise FrameReadError("file is empty (0 bytes)")
    if path.name.lower().endswith(".fz"):
        return _scan_tile_compressed(path)
    try:
        with open_stream(path) as raw_stream:
            stream = _Hashing(raw_stream)
            headers = _read_hdus(stream, path)
            stream.drain()  # to the end of the stream, where gzip and bzip2 check their CRC
    except FrameReadError:
        raise
    except (OSError, EOFError, zlib.error) as err:
        text = str(err) or type(err).__name__
        if "CRC" in text or "crc" in text or isinstance(err, zlib.error):
            raise FrameReadError(f"corrupt compressed stream ({text}): damaged in transfer? fetch it again") from None
        if isinstance(err, EOFError):
            raise FrameReadError("truncated: the compressed stream ends early") from None
        raise FrameReadError(f"cannot read file: {text}") from None
    images = [i for i, h in enumerate(headers) if _is_image(h, i)]
    if not images:
        raise FrameReadError("no image HDU in file")
    merged = [with_primary(headers[i], headers[0]) if i else headers[i] for i in images]
    return RawScan(stream.sha1.hexdigest(), stream.count, merged, images)


def with_primary(header: fits.Header, primary: fits.Header) -> fits.Header:
    """An extension's header with the primary keywords it lacks (DATE-OBS, EXPTIME...)."""
    header = header.copy()
    for card in primary.cards:
        if card.keyword not in header and card.keyword not in ("", "COMMENT", "HISTORY"):
            header.append(card)
    return header


def _read_hdus(stream: _Hashing, path: Path) -> list[fits.Header]:
    start = stream.read(9)
    if start not in (b"SIMPLE  =", b"XTENSION="):
        raise FrameReadError(f"not a FITS file (starts with {start[:9]!r}, not SIMPLE)")
    headers = []
    raw = read_header_blocks(Prefixed(start, stream))
    while raw is not None:
        header = parse_header(raw, path)
        headers.append(header)
        need = data_unit_bytes(header, padded=False)
        got = stream.skip(data_unit_bytes(header))
        if got < need:
            raise FrameReadError(f"truncated: HDU {len(headers) - 1}'s data unit needs {need} bytes, "
                                 f"the file holds {got}")
        following = stream.read(BLOCK)
        if not following.startswith(b"XTENSION="):
            break  # the end, or bytes after the last HDU (astropy ignores them too)
        raw = read_header_blocks(Prefixed(following, stream))
    return headers


def _scan_tile_compressed(path: Path) -> RawScan:
    """Tile-compressed (``.fz``) files: astropy decodes the image headers; the
    checksum is of the file as stored (its tiles are the content)."""
    sha1 = hashlib.sha1()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha1.update(chunk)
    try:
        with fits.open(path, lazy_load_hdus=True) as hdul:
            images = [i for i, hdu in enumerate(hdul) if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2]
            if not images:
                raise FrameReadError("no image HDU in file")
            info = hdul.fileinfo(len(hdul) - 1)
            if info["datLoc"] + (info["datSpan"] or 0) > path.stat().st_size:
                raise FrameReadError("truncated: the last HDU's data unit is cut short")
            merged = [with_primary(hdul[i].header, hdul[0].header) if i else hdul[i].header.copy() for i in images]
    except (OSError, ValueError, TypeError) as err:
        raise FrameReadError(f"cannot read tile-compressed file: {err}") from None
    return RawScan(sha1.hexdigest(), path.stat().st_size, merged, images)
