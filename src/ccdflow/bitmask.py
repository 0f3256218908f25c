"""The bad-pixel bitmask carried by every calibrated product.

Bits are only ever OR-ed in (:func:`flag`), never assigned, so no step can
erase what an earlier step found. Values follow BANZAI where they overlap.
"""

from __future__ import annotations

import numpy as np

DTYPE = np.uint16

BAD = 1            # bad in a master (too few frames, outlier, dead column)
SATURATED = 2      # at or above saturation in the raw frame, or bled charge
LOW_FLAT = 4       # flat-field response below the configured threshold
COSMIC_RAY = 8     # cosmic-ray hit (astroscrappy)
HOT = 16           # hot pixel in the master dark
NO_DATA = 32       # no valid value (not finite, outside the data, combine failed)

NAMES = {
    BAD: "BAD",
    SATURATED: "SATURATED",
    LOW_FLAT: "LOW_FLAT",
    COSMIC_RAY: "COSMIC_RAY",
    HOT: "HOT",
    NO_DATA: "NO_DATA",
}


def empty(shape: tuple[int, int]) -> np.ndarray:
    return np.zeros(shape, dtype=DTYPE)


def flag(mask: np.ndarray, where: np.ndarray, bit: int) -> np.ndarray:
    """OR ``bit`` into ``mask`` where ``where`` is true (in place; returns mask)."""
    mask[where] |= DTYPE(bit)
    return mask


def header_cards() -> list[tuple[str, int, str]]:
    """FITS cards documenting the bits (``MASKB1 = 'BAD'`` ...)."""
    return [(f"MASKB{int(np.log2(bit))}", bit, name) for bit, name in NAMES.items()]


def describe(mask: np.ndarray) -> dict[str, int]:
    """Number of pixels carrying each bit."""
    return {name: int(np.count_nonzero(mask & bit)) for bit, name in NAMES.items()}
