"""Plate solutions carried from raw headers to products."""

from __future__ import annotations

import re
import warnings

from astropy.io import fits

_WCS_NUMBERS = re.compile(r"^(CRVAL|CRPIX|CDELT|CROTA|CD\d_|PC\d_|PV\d_|EQUINOX|EPOCH|LONPOLE|LATPOLE)")
# to_header adds times it derived (MJD-OBS from a date-only DATE-OBS, say): the
# frame's own time keywords stay the only ones
_TIME_KEYS = ("DATE-OBS", "MJD-OBS", "MJDREF", "DATEREF", "MJD-BEG", "MJD-END", "DATE-BEG", "DATE-END", "TIMESYS")


def numeric_wcs(header: fits.Header) -> fits.Header:
    """A copy with WCS numbers written as strings turned into numbers.

    Some acquisition systems (Lowell's LOIS) quote every value, ``CRVAL1 =
    '124.618'``; astropy.wcs then ignores the keyword and the plate solution
    is silently lost.
    """
    header = header.copy()
    for card in header.cards:
        if isinstance(card.value, str) and _WCS_NUMBERS.match(card.keyword):
            try:
                header[card.keyword] = float(card.value)
            except ValueError:
                pass
    return header


def celestial_header(header: fits.Header, slices=None) -> fits.Header:
    """The header's celestial WCS (TAN, TPV with its PV terms, SIP...) as header
    cards, optionally cut to ``slices`` (numpy order) of the image; empty when
    there is none or it cannot be read."""
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(numeric_wcs(header))
            if not wcs.has_celestial:
                return fits.Header()
            celestial = wcs.celestial if slices is None else wcs.celestial[slices]
            out = celestial.to_header(relax=True)
    except Exception:  # a malformed plate solution must not stop the pipeline
        return fits.Header()
    for key in _TIME_KEYS:
        out.remove(key, ignore_missing=True)
    return out
