"""A field's reference catalogue: which sources are saturated, at the edge or blended,
and where they are on the sky.

The flags decide who may be a comparison star (:mod:`ccdflow.lightcurve` never
takes a flagged one) and are kept in the catalogue for the user. Pixel
conventions: 0-based, ``x`` = column, ``y`` = row.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from astropy.table import Table

log = logging.getLogger(__name__)

COLUMNS = {"source_id": int, "x": float, "y": float, "flux": float, "flux_rank": int, "saturated": bool, "edge": bool,
           "blended": bool, "ra": float, "dec": float}
BLEND_RADIUS_FWHM = 3.0     # a neighbour this close ...
BLEND_FLUX_FRACTION = 0.05  # ... and this bright (of the source's flux) makes it blended
SATURATION_RADIUS_FWHM = 2.0
# plate scales a real solution can have: 0.036" to 3' per pixel
MIN_SCALE_DEG, MAX_SCALE_DEG = 1e-5, 0.05


def empty_catalogue() -> Table:
    return Table({name: np.array([], dtype) for name, dtype in COLUMNS.items()})


def stack_detection_mask(weight: np.ndarray, saturated: np.ndarray) -> np.ndarray:
    """Bitmask for finding sources on a stacked reference.

    Outside the field's footprint (pixels fewer than half the stacked frames
    cover; holes inside it filled) is BAD. A hole inside the footprint where
    frames were saturated (a core saturated in every frame) is SATURATED, so
    the finder makes it one flagged source, not a ring of fragments or nothing.
    """
    from scipy import ndimage

    from . import bitmask

    covered = ndimage.binary_fill_holes(weight >= max(1, int(0.5 * weight.max())))
    mask = np.where(covered, 0, bitmask.BAD) | np.where(covered & (weight == 0) & saturated, bitmask.SATURATED, 0)
    return mask.astype(bitmask.DTYPE)


def near_saturation(x, y, saturated: np.ndarray, fwhm: float) -> np.ndarray:
    """Sources with a SATURATED pixel of the reference frame within 2 FWHM."""
    near = np.zeros(len(x), bool)
    r = int(np.ceil(SATURATION_RADIUS_FWHM * fwhm))
    for i, (xi, yi) in enumerate(zip(x, y)):
        x0, y0 = int(round(xi)), int(round(yi))
        near[i] = saturated[max(0, y0 - r):y0 + r + 1, max(0, x0 - r):x0 + r + 1].any()
    return near


def at_edge(x, y, shape: tuple[int, int], margin: float) -> np.ndarray:
    """Sources whose outer sky annulus (``margin`` px) leaves the image."""
    ny, nx = shape
    return (x < margin) | (y < margin) | (x > nx - 1 - margin) | (y > ny - 1 - margin)


def blended(x, y, flux, fwhm: float) -> np.ndarray:
    """Sources with a neighbour within 3 FWHM brighter than 5 % of their own flux:
    its light in the aperture or annulus varies with the seeing."""
    result = np.zeros(len(x), bool)
    if len(x) > 1:
        from scipy.spatial import cKDTree

        xy = np.column_stack([x, y])
        for i, neighbours in enumerate(cKDTree(xy).query_ball_point(xy, BLEND_RADIUS_FWHM * fwhm)):
            result[i] = any(flux[j] > BLEND_FLUX_FRACTION * flux[i] for j in neighbours if j != i)
    return result


def sky_positions(header, x, y) -> tuple[np.ndarray, np.ndarray]:
    """RA and Dec (deg) of pixel positions from the header's plate solution; NaN without one.

    A plate solution whose numbers were lost on the way (e.g. written as strings)
    comes back from astropy as a default WCS, 1 deg per pixel at (0, 0): sky
    coordinates from it would be nonsense, so a pixel scale outside 0.036"-3'
    counts as no WCS.
    """
    nan = np.full(len(x), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from astropy.wcs import WCS

        wcs = WCS(header)
        if not wcs.has_celestial or not len(x):
            return nan, nan.copy()
        scale = wcs.celestial.proj_plane_pixel_scales()
        scale = np.array([getattr(v, "value", v) for v in scale], float)
        if not np.all((scale > MIN_SCALE_DEG) & (scale < MAX_SCALE_DEG)):
            log.warning("the reference frame's WCS is ignored: %s deg per pixel is no plate solution",
                        np.round(scale, 6).tolist())
            return nan, nan.copy()
        sky = wcs.celestial.pixel_to_world(x, y)
        return sky.ra.deg, sky.dec.deg
