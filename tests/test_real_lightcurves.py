"""Light curves of real nights (../shared/data; skipped with a reason when absent),
made by the real workflow (``snakemake``) and checked against what is known of them.

* ARCSAT 0.5 m, 2025-06-02, z: a transit of XO-1 b. Ephemeris (Ivshina & Winn
  2022): mid-transit 2460828.7378 +- 0.0005 BJD_TDB (about 05:36 UTC), first
  contact about 04:09 UTC; the series runs 04:10-06:08 UTC, so it holds the
  ingress and the transit floor but no baseline after egress. Passing clouds
  (04:56-05:13 and after 06:00 UTC) take up to 80 % of the light.
* Lowell 42-inch, 2019-03-26, VR, 16 x 300 s: the field of the asteroid
  (5945) Roachapproach; the telescope tracks the stars and the asteroid crawls
  across the middle of the frame.

Both nights are one campaign, run once per test session (``real_campaign`` in
conftest.py, with cosmic-ray detection off).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from ccdflow.inventory import read_table
from ccdflow.lightcurve import FLAG_TRANSPARENCY

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

XO1 = SkyCoord("16:02:11.83 +28:10:10.7", unit=("hourangle", "deg"))
T_MID = 2460828.7378  # BJD_TDB, +- 0.0005
T14_MIN = 174.0  # first to last contact: 2 x (05:36 - 04:09 UTC)
T12_MIN = T14_MIN * 0.13 / 1.13  # ingress, Rp/R* = 0.13 (b ~ 0)
INGRESS_MID = T_MID - (T14_MIN - T12_MIN) / 2 / 1440  # about 04:19 UTC

# The asteroid, measured on this night's difference images (each frame minus the
# median of all 16): a moving blob, in reference-frame pixels (0-based x, y), from
# (676, 731) in the first frame (02:30 UTC) to (672, 721) in the last (03:47 UTC).
# It is elongated in the stack (11 px of motion) and so is no catalogue source.
ASTEROID_TRACK = ((676.0, 731.0), (672.0, 721.0))


def _field(results: Path, night: str):
    """The longest series of the night with photometry, and its light-curve folder."""
    fields = sorted(p for p in (results / "fields" / night).glob("*") if (p / "photometry.parquet").exists())
    assert fields, f"no field under {results / 'fields' / night}"
    field = max(fields, key=lambda p: len(Table.read(p / "frames.ecsv", fill_values=[])))  # the long series
    return field, results / "lightcurves" / night / field.name


def test_real_nights_inventory_and_calibration(real_campaign):
    """Both nights in one campaign: every frame classified, both calibrated with the masters each has."""
    results = real_campaign
    table = read_table(results / "inventory" / "inventory.ecsv")
    assert (table["status"] == "ok").all()
    assert Counter(zip(table["instrument"], table["imagetyp"])) == {
        ("arcsat", "bias"): 5, ("arcsat", "dark"): 5, ("arcsat", "flat"): 5, ("arcsat", "science"): 81,
        ("lowell42", "bias"): 11, ("lowell42", "flat"): 7, ("lowell42", "science"): 16,
    }
    # 96 + 34 frames, pixel statistics in batches of at most 4 x 50, per night: 1 + 1 jobs
    assert len(list((results / "framestats").iterdir())) == 2
    # both nights calibrated: 81 + 16 science frames, with the masters each night has
    calibrated = list((results / "calibrated").rglob("*.fits.fz"))
    assert len(calibrated) == 97
    report = (results / "calibrated" / "report.txt").read_text()
    assert "97 science frames calibrated, 0 left uncalibrated" in report
    lowell = [p for p in calibrated if p.name.startswith("20190326")]
    header = fits.getheader(lowell[0])
    assert header["STEPS"].startswith("overscan,trim,gain,bias,flat") and "no usable master" in header["SKIPDARK"]
    arcsat = [p for p in calibrated if p.name.startswith("XO1")]
    assert fits.getheader(arcsat[0])["STEPS"].startswith("trim,gain,bias,dark,flat")


# ------------------------------------------------------------------------------ ARCSAT
@pytest.fixture(scope="module")
def arcsat(real_campaign):
    field, lcdir = _field(real_campaign, "2025-06-01")
    frames = Table.read(field / "frames.ecsv", fill_values=[]).to_pandas()
    lc = Table.read(lcdir / "XO-1.ecsv").to_pandas().merge(frames[["frame_id", "mid_utc"]], on="frame_id")
    lc["hhmm"] = lc["mid_utc"].str[11:16]
    return {"field": field, "lcdir": lcdir, "frames": frames, "lc": lc,
            "summary": json.loads((lcdir / "summary.json").read_text())}


def _good(lc: pd.DataFrame) -> pd.DataFrame:
    return lc[(lc["flag"] == 0) & np.isfinite(lc["rel_flux"])]


def _window(lc, start, end) -> pd.Series:
    """Unflagged relative fluxes with mid-exposure UTC in [start, end) (HH:MM)."""
    good = _good(lc)
    return good.loc[(good["hhmm"] >= start) & (good["hhmm"] < end), "rel_flux"]


def test_xo1_is_found_by_its_sky_position(arcsat):
    info = arcsat["summary"]["XO-1"]
    assert "error" not in info, info
    catalogue = Table.read(arcsat["field"] / "catalogue.ecsv")
    source = catalogue[catalogue["source_id"] == info["source_id"]][0]
    separation = SkyCoord(source["ra"], source["dec"], unit="deg").separation(XO1).arcsec
    assert separation < 3, f"XO-1 matched source {info['source_id']} at {separation:.1f} arcsec"
    assert info["n_good"] >= 50, info


def test_xo1_shows_the_ingress_then_a_floor(arcsat):
    """04:10-04:20 UTC is already inside the ingress (first contact 04:09), so it
    stands about three quarters of the ~2 % depth above the floor (04:45-05:30)."""
    lc = arcsat["lc"]
    early, floor = _window(lc, "04:10", "04:20"), _window(lc, "04:45", "05:30")
    first, second = _window(lc, "04:35", "05:00"), _window(lc, "05:15", "05:31")
    drop, tilt = early.mean() - floor.mean(), first.mean() - second.mean()
    detail = (f"04:10-04:20 {early.mean():.4f} ({len(early)} frames), 04:45-05:30 {floor.mean():.4f} "
              f"({len(floor)}): drop {drop * 100:.2f} %; floor 04:35-05:00 vs 05:15-05:30 differs by "
              f"{tilt * 100:+.2f} %; scatter {arcsat['summary']['XO-1']['scatter']:.4f}")
    print(detail)
    assert len(early) >= 3 and len(floor) >= 10, detail
    assert 0.010 <= drop <= 0.030, detail
    assert abs(tilt) <= 0.0075, detail  # flat within limb darkening (~0.3 %) and noise


def test_xo1_ingress_time_agrees_with_the_ephemeris(arcsat):
    """Ingress ramp of the known duration (T12), then a flat floor, fitted to the
    unflagged frames before 05:30 UTC (mid-transit 05:36): for each trial mid-ingress
    time (0.1 min steps over two hours) the level before first contact and the depth
    are a linear least-squares fit; the best time wins, its 1-sigma range is where
    chi2 rises by 1 (after scaling chi2 to one per degree of freedom). The missing
    egress does not enter."""
    good = _good(arcsat["lc"])
    good = good[good["hhmm"] < "05:30"]
    t, y, e = (good[c].to_numpy(float) for c in ("bjd_tdb", "rel_flux", "rel_flux_err"))
    tau = T12_MIN / 1440
    trials = np.arange(t.min() - 60 / 1440, t.min() + 60 / 1440, 0.1 / 1440)
    chi2, params = [], []
    for t_ingress in trials:
        ramp = np.clip((t - (t_ingress - tau / 2)) / tau, 0, 1)
        design = np.column_stack([np.ones_like(t), -ramp]) / e[:, None]  # y = base - (base depth) ramp
        coef, *_ = np.linalg.lstsq(design, y / e, rcond=None)
        chi2.append(float(np.sum((design @ coef - y / e) ** 2)))
        params.append((coef[0], coef[1] / coef[0]))
    chi2 = np.array(chi2)
    best = int(np.argmin(chi2))
    t_ingress, (_, depth) = trials[best], params[best]
    scale = chi2[best] / (len(t) - 3)
    inside = trials[chi2 <= chi2[best] + max(scale, 1.0)]
    dt_min = (t_ingress - INGRESS_MID) * 1440
    detail = (f"mid-ingress {t_ingress:.5f} BJD_TDB, {dt_min:+.1f} min from the ephemeris ({INGRESS_MID:.5f}); "
              f"1-sigma range {(inside.min() - INGRESS_MID) * 1440:+.1f} to "
              f"{(inside.max() - INGRESS_MID) * 1440:+.1f} min; "
              f"depth {depth * 100:.2f} %; chi2 {chi2[best]:.0f} for {len(t) - 3} dof")
    print(detail)
    assert abs(dt_min) <= 10, detail
    assert 0.010 <= depth <= 0.030, detail


def test_cloudy_frames_are_flagged(arcsat):
    """Frames where the field's bright stars lost half their light or more (from the
    photometry itself) carry FLAG_TRANSPARENCY in the light curve."""
    long = pd.read_parquet(arcsat["field"] / "photometry.parquet")
    aperture = arcsat["summary"]["XO-1"]["aperture"]
    flux = long[long["aperture"] == aperture].pivot(index="frame_id", columns="source_id", values="flux")
    bright = flux.median().nlargest(10).index
    ratio = (flux[bright] / flux[bright].median()).median(axis=1)
    ratio /= ratio.quantile(0.9)
    thick = set(ratio.index[ratio < 0.5])
    lc = arcsat["lc"].set_index("frame_id")
    unflagged = [f for f in thick if not lc.loc[f, "flag"] & FLAG_TRANSPARENCY]
    n_flagged = int((lc["flag"] & FLAG_TRANSPARENCY != 0).sum())
    print(f"{len(thick)} frames below half the clear flux, {n_flagged} flagged for transparency")
    assert len(thick) >= 1 and not unflagged, f"cloudy frames not flagged: {unflagged} (of {sorted(thick)})"
    assert n_flagged <= 0.4 * len(lc), f"{n_flagged} of {len(lc)} frames flagged as cloudy"


# ------------------------------------------------------------------------------ Lowell
@pytest.fixture(scope="module")
def lowell(real_campaign):
    field, lcdir = _field(real_campaign, "2019-03-25")
    catalogue = Table.read(field / "catalogue.ecsv").to_pandas().set_index("source_id")
    summary = json.loads((lcdir / "summary.json").read_text())
    curves = {v["source_id"]: v for k, v in summary.items() if k.startswith("src") and "scatter" in v}
    clean = catalogue[~(catalogue["saturated"] | catalogue["edge"] | catalogue["blended"])]
    brightest = [s for s in clean.sort_values("flux", ascending=False).index if s in curves][:30]
    return {"field": field, "catalogue": catalogue, "curves": curves, "brightest": brightest,
            "photometry": pd.read_parquet(field / "photometry.parquet")}


def test_lowell_scatter_of_the_stars_is_reported(lowell):
    curves, brightest = lowell["curves"], lowell["brightest"]
    scatter = np.array([curves[s]["scatter"] for s in brightest])
    detail = (f"{len(curves)} light curves; 30 brightest clean stars: scatter median {np.median(scatter):.4f}, "
              f"max {scatter.max():.4f} (median error {np.median([curves[s]['median_err'] for s in brightest]):.4f})")
    print(detail)
    assert len(curves) >= 100 and len(brightest) == 30, detail
    assert np.all(np.isfinite(scatter)) and scatter.max() < 0.01, detail


def test_lowell_comparisons_stay_steady_and_off_the_asteroid(lowell):
    """Every comparison star of the 30 brightest stars' light curves keeps within 10 %
    of its median in every frame (after the frame's common transparency), and none
    lies within 15 px (aperture + sky annulus) of the asteroid's track."""
    long, catalogue = lowell["photometry"], lowell["catalogue"]
    worst, near_track = (0.0, None), []
    (x0, y0), (x1, y1) = ASTEROID_TRACK
    for source in lowell["brightest"]:
        info = lowell["curves"][source]
        rows = long[long["aperture"] == info["aperture"]]
        flux = rows.pivot(index="frame_id", columns="source_id", values="flux")
        good = rows.pivot(index="frame_id", columns="source_id", values="flag") == 0
        comparisons = flux[info["comparisons"]].where(good[info["comparisons"]])
        norm = comparisons / comparisons.median()
        deviation = (norm.div(norm.median(axis=1), axis=0) - 1).abs().max()
        if deviation.max() > worst[0]:
            worst = (float(deviation.max()), (source, int(deviation.idxmax())))
        for c in info["comparisons"]:
            x, y = catalogue.loc[c, "x"], catalogue.loc[c, "y"]
            u = np.clip(((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
            if np.hypot(x - x0 - u * (x1 - x0), y - y0 - u * (y1 - y0)) < 15:
                near_track.append((source, c))
    detail = (f"largest comparison excursion {worst[0] * 100:.2f} % (target, comparison {worst[1]}); "
              f"near the track {near_track}")
    print(detail)
    assert worst[0] <= 0.10, detail
    assert not near_track, detail


def test_lowell_plate_solution_survives_calibration(lowell):
    """LOIS writes its plate solution (TAN + SCAMP PV terms) as quoted strings; the
    calibrated frames keep it as numbers, so every catalogue source has real sky
    coordinates: centred on the pointing, at the header's 1.11 arcsec/px."""
    catalogue = lowell["catalogue"]
    assert np.isfinite(catalogue["ra"]).all() and np.isfinite(catalogue["dec"]).all()
    centre = SkyCoord(np.median(catalogue["ra"]), np.median(catalogue["dec"]), unit="deg")
    pointing = SkyCoord("08:18:29.9 +25:20:00", unit=("hourangle", "deg"))
    assert centre.separation(pointing).deg < 0.1, centre.to_string("hmsdms")
    a, b = catalogue.iloc[0], catalogue.iloc[1]
    sky = SkyCoord(a["ra"], a["dec"], unit="deg").separation(SkyCoord(b["ra"], b["dec"], unit="deg")).arcsec
    scale = sky / np.hypot(a["x"] - b["x"], a["y"] - b["y"])
    assert abs(scale / (0.0003076 * 3600) - 1) < 0.02, scale
