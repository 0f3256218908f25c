"""A transit through the real workflow on a hostile sky (issue 12 point 4), against truth.

The night (``SPEC``): undersampled stars (FWHM 1.3-2.2 px) whose seeing grows
with airmass and time, pointing that random-walks, a red host among bluer
comparison stars in a field setting from airmass 1.1 to 2 (the raw ratio
trends with airmass), and a limb-darkened (batman) 1 % transit. The target is
configured as an observer would: the literature ephemeris (here 2 min off the
truth, twenty orbits back), a/Rs, inclination and limb darkening. The pipeline
chooses the aperture (red-noise aware), detrends (terms by BIC) and fits; its
mid-time and depth must agree with the truth within their (beta-inflated)
errors. ``benchmarks/study_transit_pulls.py`` runs the same night over many
seeds and prints the pull statistics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.table import Table
from workflow_run import background_run, run_snakemake

from ccdflow.simsky import merge_options, sky_options
from ccdflow.simulate import NightSpec, simulate_night
from ccdflow.timescale import barycentric_times

pytestmark = pytest.mark.slow

SKIES = ("undersampled", "extinction", "drifting", "limb_darkened")
# a deep-well, high-gain camera: undersampled stars reach saturation with few electrons, so
# the host would otherwise give ~1 % per frame and a 1 % transit's mid-time to ~6 min
SPEC = {"nx": 384, "ny": 384, "n_stars": 120, "n_science": 100, "cadence_s": 90.0, "bad_column": 150,
        "gain": 4.0, "read_noise": 8.0, "full_well": 250000.0,
        "transit": {"depth": 0.01, "duration_s": 5400.0, "t_mid_frac": 0.45}, "spoiled": [], "damaged": []}
EPHEMERIS_ERROR_MIN = 2.0   # the configured t0 is this far from the truth: the fit must find it
FIRST_FRAME = "sci_R_0001"


def night_spec(seed: int = 42, skies=SKIES, **extra) -> NightSpec:
    return NightSpec.from_dict(merge_options(sky_options(*skies), SPEC, extra, {"seed": seed}), base="demo")


def truth_bjd(truth: dict, mjd_utc: float) -> float:
    """A UTC MJD of the simulated night as BJD_TDB (the pipeline's time scale)."""
    spec, site = truth["spec"], truth["spec"]["site"]
    times = barycentric_times(np.array([mjd_utc]), np.array([spec["ra_deg"]]), np.array([spec["dec_deg"]]),
                              np.array([site["lon"]]), np.array([site["lat"]]), np.array([site["height"]]))
    return float(times["bjd_tdb"].iloc[0])


def write_night(work: Path, spec: NightSpec, campaign: str = "transit") -> Path:
    """Simulate ``spec`` into work/night and write the workflow config naming the host."""
    truth = simulate_night(work / "night", spec)
    stars = Table.read(work / "night" / "truth" / "stars.ecsv", fill_values=[])
    host = list(stars["role"]).index("transit")
    tr = truth["transit"]
    t0 = truth_bjd(truth, tr["t_mid_mjd"]) + EPHEMERIS_ERROR_MIN / 1440 - 20 * tr["period_d"]
    target = {"name": "host", "x": float(stars["x"][host]), "y": float(stars["y"][host]), "frame": FIRST_FRAME,
              "pixels": "numpy",
              "transit": {"period_d": tr["period_d"], "t0_bjd": t0, "duration_h": tr["duration_s"] / 3600,
                          "depth": 0.008, "u": list(tr["u"]), "a_rs": tr["a_rs"], "inc_deg": tr["inc_deg"]}}
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({
        "campaign": campaign, "results_dir": str(work / "results"), "simulate": {"enabled": False},
        "raw": [{"path": str(work / "night" / "raw"), "instrument": "simulator"}],
        "lightcurves": {"targets": [target]}}))
    return config


def fit_pulls(work: Path, campaign: str = "transit") -> dict:
    """The workflow's fit of the host against the truth: values, errors and pulls."""
    truth = json.loads((work / "night" / "truth" / "truth.json").read_text())
    (folder,) = (work / "results" / campaign / "lightcurves").glob("*/*")
    summary = json.loads((folder / "summary.json").read_text())["host"]
    fit = summary["fit"]
    p, e = fit["params"], fit["errors"]
    t_true = truth_bjd(truth, truth["transit"]["t_mid_mjd"])
    depth_true = truth["transit"]["rp"] ** 2
    return {"dt_min": (p["t0"] - t_true) * 1440, "dt_err_min": e["t0"] * 1440,
            "t0_pull": (p["t0"] - t_true) / e["t0"], "depth": p["depth"], "depth_err": e["depth"],
            "depth_pull": (p["depth"] - depth_true) / e["depth"], "beta": fit["beta"], "terms": fit["terms"],
            "aperture": summary["aperture"], "n_good": summary["n_good"], "n": fit["n"], "folder": folder}


def BACKGROUND(work: Path) -> Path:  # noqa: N802 (the name tests/conftest.py looks for)
    return write_night(work, night_spec())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    run = background_run(__name__)
    if run is not None:
        run.wait()
        work = run.config.parent
    else:
        work = tmp_path_factory.mktemp("transit_night")
        start = time.perf_counter()
        run_snakemake(config=BACKGROUND(work))
        print(f"workflow: {time.perf_counter() - start:.0f} s")
    return fit_pulls(work)


def test_mid_time_and_depth_agree_with_truth(fitted):
    f = fitted
    print(f"mid-time {f['dt_min']:+.2f} +- {f['dt_err_min']:.2f} min ({f['t0_pull']:+.2f} sigma), depth "
          f"{f['depth']:.5f} +- {f['depth_err']:.5f} ({f['depth_pull']:+.2f} sigma), beta {f['beta']:.2f}, "
          f"terms {f['terms']}, aperture {f['aperture']}, {f['n']} points")
    # one night is one realisation: 3 sigma here; the pull study measures the distribution
    assert abs(f["t0_pull"]) <= 3 and abs(f["depth_pull"]) <= 3
    # depth error: averaged over the term sets it holds the spread between them (0.0017 on this
    # night for a 1.15 % depth; 0.0014 with the chosen terms alone)
    assert f["beta"] >= 1.0 and f["dt_err_min"] < 3.0 and f["depth_err"] < 0.2 * f["depth"]


def test_undersampled_host_keeps_its_frames_and_the_trend_is_detrended(fitted):
    """Cosmic-ray flags no longer eat the undersampled host (>= 95 of 100 frames good), and
    the colour extinction's airmass trend is taken out by a chosen term."""
    assert fitted["n_good"] >= 95 and fitted["n"] >= 95
    assert set(fitted["terms"]) & {"airmass", "time", "fwhm"}


def test_fit_products_written(fitted):
    folder = fitted["folder"]
    for suffix in ("_fit.json", "_fit.ecsv", "_fit.png"):
        assert (folder / f"host{suffix}").stat().st_size > 0
    points = Table.read(folder / "host_fit.ecsv")
    assert {"frame_id", "bjd_tdb", "rel_flux", "detrended", "model", "residual"} <= set(points.colnames)
    rms = json.loads((folder / "host_fit.json").read_text())["rms_table"]
    assert len(rms) >= 3 and all(r["beta"] > 0 for r in rms)
