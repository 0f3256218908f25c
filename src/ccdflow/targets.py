"""Placing the configured targets on a field's reference catalogue.

A target is given by sky position (needs the field's plate solution) or by
pixel position in a named frame of the field (default: the reference frame);
it becomes the nearest catalogue source within a tolerance, or an error that
names the target and the nearest source's distance.
"""

from __future__ import annotations

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from .align import Transform


def resolve_targets(targets: list[dict], catalogue: Table, transforms: Table) -> tuple[dict[str, int], dict[str, str]]:
    """Catalogue ids of the configured targets: by sky position (needs a WCS) or by
    pixel position in a named frame (default: the reference frame).

    Returns ``(found, errors)``: a target that cannot be placed is reported by
    name with the reason, and the others go on.
    """
    found, errors = {}, {}
    for target in targets:
        try:
            found[target["name"]] = _resolve(target, catalogue, transforms)
        except ValueError as err:
            errors[target["name"]] = str(err)
    return found, errors


def _resolve(target: dict, catalogue: Table, transforms: Table) -> int:
    x, y = np.asarray(catalogue["x"], float), np.asarray(catalogue["y"], float)
    name = target["name"]
    if "ra" in target:
        if not np.isfinite(catalogue["ra"]).any():
            raise ValueError(f"target {name}: sky coordinates given but the field has no WCS; give x, y")
        sources = SkyCoord(np.asarray(catalogue["ra"], float), np.asarray(catalogue["dec"], float), unit="deg")
        sep = sources.separation(SkyCoord(target["ra"], target["dec"], unit="deg")).arcsec
        best, limit, unit = int(np.nanargmin(sep)), target.get("match_arcsec", 3.0), "arcsec"
        distance = sep[best]
    else:
        px, py = float(target["x"]), float(target["y"])
        frame = target.get("frame")
        if frame:
            rows = [r for r in transforms if frame in (r["frame_id"], r["frame_id"].rsplit("-", 1)[0])]
            if not rows or not rows[0]["ok"]:
                raise ValueError(f"target {name}: frame {frame!r} is not an aligned frame of this field")
            (px, py), = Transform.from_row(rows[0]).apply([[px, py]])
        d = np.hypot(x - px, y - py)
        best, limit, unit = int(np.argmin(d)), target.get("match_px", 3.0), "px"
        distance = d[best]
    if distance > limit:
        raise ValueError(f"target {name}: no catalogue source within {limit} {unit} (nearest {distance:.1f})")
    return int(catalogue["source_id"][best])
