"""Placing targets and comparison stars: pixel conventions, sky positions, the flux check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from ccdflow.overscan import amplifiers_from_json, raw_to_output
from ccdflow.simulate import render_stars
from ccdflow.targets import FieldFrames, place, resolve_targets

SHAPE = (200, 300)
# one amplifier, 8 prescan columns, data [9:308,1:200]
ONE_AMP = json.dumps([{"data": "[9:308,1:200]", "overscan": "[309:340,1:200]", "gain": 1, "read_noise": 5}])
# two amplifiers: left half [5:154] read to the prescan side, right half [155:304]
TWO_AMPS = json.dumps([{"data": "[5:154,1:200]", "overscan": "[1:4,1:200]", "gain": 1, "read_noise": 5},
                       {"data": "[155:304,1:200]", "overscan": "[305:340,1:200]", "gain": 1, "read_noise": 5}])


def _identity(frame_id, ok=True, dx=0.0, dy=0.0):
    return {"frame_id": frame_id, "ok": ok, "reason": "" if ok else "too few matches", "method": "astroalign",
            "n_matches": 20, "residual_rms": 0.05, "a": 1.0, "b": 0.0, "c": dx, "d": 0.0, "e": 1.0, "f": dy}


def _field(stars, amplifiers=ONE_AMP, catalogue_rows=None, shift=(0.0, 0.0), first_ok=True, wcs=None):
    """A stack with Moffat stars, its catalogue (``catalogue_rows``: indices of the stars
    the catalogue holds, default all), and two frames: f1 (first) and f2 shifted."""
    x, y, flux = (np.array(c, float) for c in zip(*stars))
    rng = np.random.default_rng(3)
    stack = render_stars(SHAPE[1], SHAPE[0], x, y, flux, 3.0, 3.0) + 100.0 + rng.normal(0, 3.0, SHAPE)
    keep = list(range(len(stars))) if catalogue_rows is None else catalogue_rows
    catalogue = Table({"source_id": np.arange(1, len(keep) + 1), "x": x[keep], "y": y[keep], "flux": flux[keep],
                       "saturated": np.zeros(len(keep), bool), "edge": np.zeros(len(keep), bool),
                       "blended": np.zeros(len(keep), bool), "ra": np.full(len(keep), np.nan),
                       "dec": np.full(len(keep), np.nan)})
    if wcs is not None:
        ra, dec = wcs.pixel_to_world_values(catalogue["x"], catalogue["y"])
        catalogue["ra"], catalogue["dec"] = ra, dec
    # f1 maps to the reference by +shift (its pixel p is reference pixel p + shift)
    transforms = Table(rows=[_identity("f1-aaaa", first_ok, *shift), _identity("f2-bbbb")])
    frames = {"f1-aaaa": {"filename": "night_0001.fits.gz", "amplifiers": amplifiers},
              "f2-bbbb": {"filename": "night_0002.fits", "amplifiers": amplifiers}}
    return catalogue, FieldFrames(transforms, frames, stack, wcs, 3.0)


STARS = [(50.3, 60.7, 20000.0), (120.0, 150.2, 8000.0), (200.5, 40.1, 30000.0), (250.0, 170.0, 5000.0)]


def test_ds9_raw_pixel_of_the_first_frame_is_the_default():
    catalogue, frames = _field(STARS, shift=(2.0, -1.0))
    # star 2 at reference (120.0, 150.2) is at f1's (118.0, 151.2), 0-based trimmed:
    # DS9 on the raw file shows it at (118 + 8 + 1, 151.2 + 1)
    assert place({"x": 127.0, "y": 152.2}, catalogue, frames, "t") == 2
    assert place({"x": 119.0, "y": 152.2, "pixels": "calibrated"}, catalogue, frames, "t") == 2
    assert place({"x": 118.0, "y": 151.2, "pixels": "numpy"}, catalogue, frames, "t") == 2
    # the same numbers read in the wrong convention miss by the prescan and are refused
    with pytest.raises(ValueError, match="no catalogue source within 3 px"):
        place({"x": 127.0, "y": 152.2, "pixels": "numpy"}, catalogue, frames, "t")
    # a named frame: f2 has no shift
    assert place({"x": 129.0, "y": 151.2, "frame": "night_0002"}, catalogue, frames, "t") == 2
    assert place({"x": 129.0, "y": 151.2, "frame": "night_0002.fits"}, catalogue, frames, "t") == 2


def test_ds9_raw_pixel_with_two_amplifiers():
    amps = amplifiers_from_json(TWO_AMPS)
    assert raw_to_output(amps, 4.0, 10.0) == (0.0, 10.0)        # first data column of amplifier 1
    assert raw_to_output(amps, 154.0, 10.0) == (150.0, 10.0)    # first data column of amplifier 2
    with pytest.raises(ValueError, match="lies in no data section"):
        raw_to_output(amps, 1.0, 10.0)                          # the prescan
    catalogue, frames = _field(STARS, amplifiers=TWO_AMPS)
    # star 3 at trimmed (200.5, 40.1): raw 0-based (204.5, 40.1), DS9 (205.5, 41.1)
    assert place({"x": 205.5, "y": 41.1}, catalogue, frames, "t") == 3


def test_a_loose_tolerance_never_matches_a_faint_neighbour_of_an_uncatalogued_star():
    # a bright star (the real target) that the catalogue missed, 8 px from a faint one it holds
    stars = [(100.0, 100.0, 200000.0), (108.0, 100.0, 300.0), (250.0, 170.0, 5000.0)]
    catalogue, frames = _field(stars, catalogue_rows=[1, 2])
    spec = {"x": 100.0, "y": 100.0, "pixels": "numpy", "match_px": 12.0}
    with pytest.raises(ValueError, match="refused the match to source 1 .*another"):
        place(spec, catalogue, frames, "target T")


def test_a_position_on_empty_sky_is_refused():
    catalogue, frames = _field(STARS)
    with pytest.raises(ValueError, match="nothing is there"):
        place({"x": 40.3, "y": 60.7, "pixels": "numpy", "match_px": 15.0}, catalogue, frames, "t")
    # within tolerance of the star, a small offset is accepted
    assert place({"x": 51.5, "y": 61.5, "pixels": "numpy"}, catalogue, frames, "t") == 1


def test_errors_name_target_distance_and_flux_and_others_go_on():
    catalogue, frames = _field(STARS)
    placed = resolve_targets([{"name": "lost", "x": 10.0, "y": 190.0, "pixels": "numpy"},
                              {"name": "ok", "x": 50.3, "y": 60.7, "pixels": "numpy"},
                              {"name": "other-field", "x": 1.0, "y": 1.0, "frame": "someone_else_0001"}],
                             catalogue, frames)
    assert placed.found == {"ok": 1}
    assert placed.elsewhere == ["other-field"]
    message = placed.errors["lost"]
    assert "target lost" in message and "nearest source 2 at 117.0 px, flux 8e+03 e-" in message


def test_unaligned_first_frame_is_an_error_naming_it():
    catalogue, frames = _field(STARS, first_ok=False)
    placed = resolve_targets([{"name": "t", "x": 59.3, "y": 61.7}], catalogue, frames)
    assert "night_0001.fits.gz is not aligned" in placed.errors["t"]


def test_named_comparison_stars_are_used_and_flagged_ones_warned():
    catalogue, frames = _field(STARS)
    catalogue["saturated"][2] = True
    target = {"name": "t", "x": 50.3, "y": 60.7, "pixels": "numpy",
              "comparisons": [{"x": 120.0, "y": 150.2}, {"x": 200.5, "y": 40.1}]}   # inherit pixels: numpy
    placed = resolve_targets([target], catalogue, frames)
    assert placed.found == {"t": 1} and placed.comparisons == {"t": [2, 3]}
    assert len(placed.warnings["t"]) == 1 and "source 3) is flagged saturated" in placed.warnings["t"][0]
    # a named comparison that cannot be placed is an error of its target, not a silent drop
    target["comparisons"].append({"x": 10.0, "y": 190.0})
    placed = resolve_targets([target], catalogue, frames)
    assert "t" not in placed.found and "comparison star 3 of t" in placed.errors["t"]


def test_sky_positions_with_a_plate_solution():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [240.549292, 28.169639]
    wcs.wcs.crpix = [151.0, 101.0]
    wcs.wcs.cdelt = [-0.5 / 3600, 0.5 / 3600]
    catalogue, frames = _field(STARS, wcs=wcs)
    ra, dec = wcs.pixel_to_world_values(120.0, 150.2)
    assert place({"ra": float(ra), "dec": float(dec)}, catalogue, frames, "t") == 2
    from astropy.coordinates import SkyCoord
    text = SkyCoord(float(ra), float(dec), unit="deg").to_string("hmsdms", sep=":", precision=3).split()
    assert place({"ra": text[0], "dec": text[1]}, catalogue, frames, "t") == 2
    # without a plate solution: an error that says what to give instead
    catalogue["ra"] = np.nan
    with pytest.raises(ValueError, match="no plate solution .* DS9"):
        place({"ra": float(ra), "dec": float(dec)}, catalogue, frames, "t")
