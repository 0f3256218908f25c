"""FITS section strings (``[x1:x2,y1:y2]``, 1-based, inclusive) and numpy slices.

FITS counts columns first and from 1, both ends included; numpy indexes rows
first and from 0, end excluded. Every conversion in ccdflow goes through here so
the off-by-one lives in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SECTION = re.compile(r"^\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*$")


@dataclass(frozen=True)
class Section:
    """A rectangular region as 0-based, end-exclusive numpy bounds."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(row_slice, column_slice)`` for indexing a 2-D numpy array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def to_fits(self) -> str:
        """The FITS 1-based inclusive string for this region."""
        return f"[{self.x0 + 1}:{self.x1},{self.y0 + 1}:{self.y1}]"

    def fits_within(self, shape: tuple[int, int]) -> bool:
        """True when the region lies inside an array of ``shape`` (rows, cols)."""
        return 0 <= self.y0 < self.y1 <= shape[0] and 0 <= self.x0 < self.x1 <= shape[1]


def parse_section(text: str) -> Section:
    """Parse a FITS section string such as ``'[18:1382,1:1370]'``.

    Reversed ranges (``[100:1,...]``, meaning a flipped readout) are normalised to
    increasing order: ccdflow only needs the region, not the read direction.

    >>> parse_section('[18:1382,1:1370]').slices
    (slice(0, 1370, None), slice(17, 1382, None))
    """
    match = _SECTION.match(str(text))
    if not match:
        raise ValueError(f"not a FITS section string '[x1:x2,y1:y2]': {text!r}")
    xa, xb, ya, yb = (int(v) for v in match.groups())
    if min(xa, xb, ya, yb) < 1:
        raise ValueError(f"FITS sections are 1-based; got {text!r}")
    return Section(y0=min(ya, yb) - 1, y1=max(ya, yb), x0=min(xa, xb) - 1, x1=max(xa, xb))
