"""Placing the configured targets and comparison stars on a field's reference catalogue.

A position is a sky position (``ra``/``dec``, degrees or sexagesimal; needs the
field's plate solution) or a pixel in one frame of the field (``x``/``y``; by
default the first frame of the field in time order, or the raw file named by
``frame``). Pixel conventions (``pixels``):

- ``raw`` (default): what DS9 shows on the raw file: 1-based, before overscan
  and trim;
- ``calibrated``: what DS9 shows on the calibrated frame: 1-based, trimmed;
- ``numpy``: 0-based pixel of the calibrated frame (ccdflow's tables).

A position becomes the nearest catalogue source within ``match_arcsec`` /
``match_px``, and only when the light at the given position agrees with that
source (:func:`check_flux`): a loose tolerance must never turn a target into a
faint neighbour. Anything else is an error naming the target, the nearest
source's distance and flux.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from .align import Transform
from .fitsheader import fits_stem
from .instrument import parse_angle
from .overscan import amplifiers_from_json, raw_to_output
from .stats import robust_std

PIXEL_CONVENTIONS = ("raw", "calibrated", "numpy")
# Light at the given position against the matched source's (same aperture):
# beyond these ratios something else is there, or nothing is.
BRIGHTER_AT_POSITION = 2.5
NOTHING_AT_POSITION = 0.1


@dataclass
class FieldFrames:
    """What placing a position needs to know of a field's frames."""

    transforms: Table                 # per frame: frame_id, ok, the 2x3 matrix
    frames: dict[str, dict] = field(default_factory=dict)   # frame_id -> {"filename", "amplifiers"} (time order)
    stack: np.ndarray | None = None   # the stacked reference (e-), for the flux check
    wcs: object | None = None         # the stack's celestial WCS, if any
    fwhm: float = 3.0


@dataclass
class Placement:
    found: dict[str, int] = field(default_factory=dict)              # target -> source_id
    comparisons: dict[str, list[int]] = field(default_factory=dict)  # target -> named comparison source_ids
    errors: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    elsewhere: list[str] = field(default_factory=list)               # targets of another field's frame


class NotInField(ValueError):
    """The position is given in a frame of another field: not an error here."""


def resolve_targets(targets: list[dict], catalogue: Table, field_frames: FieldFrames) -> Placement:
    """Catalogue ids of the configured targets and of their named comparison stars.

    A target that cannot be placed is reported by name with the reason, and the
    others go on. A named comparison star that cannot be placed is an error of
    its target (the ensemble asked for is never quietly replaced); one flagged
    saturated, blended or at an edge is used, with a warning.
    """
    out = Placement()
    for target in targets:
        name = target["name"]
        try:
            out.found[name] = place(target, catalogue, field_frames, f"target {name}")
            comparisons, notes = [], []
            for n, star in enumerate(target.get("comparisons", []), 1):
                what = f"comparison star {n} of {name}"
                source = place({**target_defaults(target), **star}, catalogue, field_frames, what)
                comparisons.append(source)
                notes += _flag_notes(catalogue, source, what)
            if target.get("comparisons"):
                out.comparisons[name] = comparisons
            if notes:
                out.warnings[name] = notes
        except NotInField:
            out.found.pop(name, None)
            out.elsewhere.append(name)
        except ValueError as err:
            out.found.pop(name, None)
            out.errors[name] = str(err)
    return out


def target_defaults(target: dict) -> dict:
    """What a comparison star inherits from its target: frame, convention, tolerances."""
    return {k: target[k] for k in ("frame", "pixels", "match_px", "match_arcsec") if k in target}


def _flag_notes(catalogue: Table, source_id: int, what: str) -> list[str]:
    row = catalogue[np.flatnonzero(np.asarray(catalogue["source_id"]) == source_id)[0]]
    flags = [flag for flag in ("saturated", "blended", "edge") if bool(row[flag])]
    if not flags:
        return []
    note = (f"{what} (source {source_id}) is flagged {' and '.join(flags)}: used as asked, but its light "
            "curve noise is not the photon noise")
    return [note]


def place(spec: dict, catalogue: Table, field_frames: FieldFrames, what: str) -> int:
    """The catalogue source at one configured position, or ValueError saying why not."""
    x, y = np.asarray(catalogue["x"], float), np.asarray(catalogue["y"], float)
    flux = np.asarray(catalogue["flux"], float)
    if "ra" in spec:
        position = _sky_to_reference(spec, catalogue, field_frames, what)
        sky = _sky_separations(catalogue, spec)
        best, limit, unit = int(np.nanargmin(sky)), float(spec.get("match_arcsec", 3.0)), "arcsec"
        distance = sky[best]
    else:
        position = pixel_to_reference(spec, field_frames, what)
        d = np.hypot(x - position[0], y - position[1])
        best, limit, unit = int(np.argmin(d)), float(spec.get("match_px", 3.0)), "px"
        distance = d[best]
    here = f"at reference pixel ({position[0]:.1f}, {position[1]:.1f})" if position is not None else ""
    nearest = f"nearest source {int(catalogue['source_id'][best])} at {distance:.1f} {unit}, flux {flux[best]:.3g} e-"
    if distance > limit:
        raise ValueError(f"{what}: no catalogue source within {limit:g} {unit} {here} ({nearest}); "
                         f"check the position or its convention (pixels: {'/'.join(PIXEL_CONVENTIONS)})")
    if position is not None and field_frames.stack is not None:
        problem = check_flux(field_frames.stack, position, (x[best], y[best]), field_frames.fwhm)
        if problem:
            raise ValueError(f"{what}: refused the match to source {int(catalogue['source_id'][best])} "
                             f"({distance:.1f} {unit} away, flux {flux[best]:.3g} e-): {problem}")
    return int(catalogue["source_id"][best])


def _sky_separations(catalogue: Table, spec: dict) -> np.ndarray:
    from astropy.coordinates import SkyCoord

    sources = SkyCoord(np.asarray(catalogue["ra"], float), np.asarray(catalogue["dec"], float), unit="deg")
    return sources.separation(sky_coord(spec)).arcsec


def sky_coord(spec: dict):
    """A configured ``ra``/``dec``: degrees, or sexagesimal strings (RA in hours)."""
    from astropy.coordinates import SkyCoord

    ra = float(spec["ra"]) if not isinstance(spec["ra"], str) else parse_angle(spec["ra"], "hourangle")
    return SkyCoord(ra, parse_angle(spec["dec"]), unit="deg")


def _sky_to_reference(spec, catalogue, field_frames: FieldFrames, what) -> tuple[float, float] | None:
    if not np.isfinite(np.asarray(catalogue["ra"], float)).any():
        raise ValueError(f"{what}: sky coordinates given but the field has no plate solution (WCS); "
                         "give its pixel position instead (x, y as DS9 shows them on the first raw frame)")
    if field_frames.wcs is None:
        return None
    px, py = field_frames.wcs.world_to_pixel(sky_coord(spec))
    return float(px), float(py)


def pixel_to_reference(spec: dict, field_frames: FieldFrames, what: str) -> tuple[float, float]:
    """A configured pixel position in the field's reference frame (0-based, calibrated)."""
    convention = spec.get("pixels", "raw")
    if convention not in PIXEL_CONVENTIONS:
        raise ValueError(f"{what}: pixels must be one of {', '.join(PIXEL_CONVENTIONS)}, not {convention!r}")
    frame_id = _frame_of(spec, field_frames, what)
    row = next(r for r in field_frames.transforms if r["frame_id"] == frame_id)
    if not row["ok"]:
        raise ValueError(f"{what}: its frame {field_frames.frames[frame_id]['filename']} is not aligned "
                         f"({row['reason']}); name another frame of the field with `frame:`")
    x, y = float(spec["x"]), float(spec["y"])
    if convention == "raw":
        amps = amplifiers_from_json(field_frames.frames[frame_id]["amplifiers"])
        x, y = raw_to_output(amps, x - 1.0, y - 1.0)
    elif convention == "calibrated":
        x, y = x - 1.0, y - 1.0
    (px, py), = Transform.from_row(row).apply([[x, y]])
    return float(px), float(py)


def _frame_of(spec: dict, field_frames: FieldFrames, what: str) -> str:
    """The frame a pixel position is given in: the named raw file, else the field's first."""
    frames = field_frames.frames
    name = spec.get("frame")
    if not name:
        if not frames:
            raise ValueError(f"{what}: the field has no frames")
        return next(iter(frames))
    for frame_id, info in frames.items():
        if name in (frame_id, info["filename"], fits_stem(info["filename"]), frame_id.rsplit("-", 1)[0]):
            return frame_id
    raise NotInField(name)


def check_flux(stack: np.ndarray, position, source_xy, fwhm: float) -> str:
    """Why the light at ``position`` is not the matched source's (empty when it is).

    Both are measured in the same aperture (radius 1.5 FWHM, sky from an
    annulus) on the stacked reference: a position on a bright star that the
    catalogue missed, matched to a faint neighbour, measures far brighter than
    that neighbour; a position on empty sky measures next to nothing.
    """
    radius = max(1.5 * fwhm, 2.0)
    at_position, noise = _aperture_flux(stack, position, radius)
    at_source, _ = _aperture_flux(stack, source_xy, radius)
    if not (np.isfinite(at_position) and np.isfinite(at_source)):
        return ""  # off the stack: nothing to compare
    if at_position - BRIGHTER_AT_POSITION * max(at_source, 0.0) > 5.0 * noise:
        return (f"the given position holds {at_position:.3g} e- in a {radius:.1f} px aperture, "
                f"{at_position / max(at_source, noise):.0f}x the source's {at_source:.3g} e-: another "
                "(uncatalogued, perhaps saturated) star is there")
    if at_source > 10.0 * noise and at_position < NOTHING_AT_POSITION * at_source:
        return (f"the given position holds {at_position:.3g} e- in a {radius:.1f} px aperture, under "
                f"{NOTHING_AT_POSITION:g}x the source's {at_source:.3g} e-: nothing is there")
    return ""


def _aperture_flux(image: np.ndarray, xy, radius: float) -> tuple[float, float]:
    """Sky-subtracted sum within ``radius`` of ``xy`` (0-based), and its sky noise."""
    x, y = float(xy[0]), float(xy[1])
    outer = 3.0 * radius
    y0, y1 = max(int(y - outer), 0), min(int(y + outer) + 2, image.shape[0])
    x0, x1 = max(int(x - outer), 0), min(int(x + outer) + 2, image.shape[1])
    if y0 >= y1 or x0 >= x1:
        return np.nan, np.nan
    cut = image[y0:y1, x0:x1]
    yy, xx = np.mgrid[y0:y1, x0:x1]
    r = np.hypot(xx - x, yy - y)
    inside, sky = (r <= radius) & np.isfinite(cut), (r >= 2.0 * radius) & (r <= outer) & np.isfinite(cut)
    if inside.sum() < 3 or sky.sum() < 10:
        return np.nan, np.nan
    level = np.median(cut[sky])
    spread = robust_std(cut[sky])
    return float(np.sum(cut[inside] - level)), float(spread * np.sqrt(inside.sum()))
