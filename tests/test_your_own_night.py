"""README "Your own night", followed literally on each real night in ../shared/data:
`ccdflow init RAW --out DIR`, the edits its TODO lines ask for (none, for these
nights), the target written into the drafted config, one `snakemake` command; the
target's light curve exists and is the target's (XO-1 by its RA/Dec on the ARCSAT
night: its transit; a Lowell field star by the pixel DS9 shows on the first raw
frame: flat within its errors).

Both runs start in the background at collection (tests/conftest.py), each in its
own copy of the workflow, with every default (cosmic rays on).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

from conftest import ARCSAT, LOWELL
from workflow_run import background_run

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

# What the user writes into the drafted config (README step 3).
TARGETS = {
    "arcsat": (ARCSAT, {"name": "XO-1", "ra": "16:02:11.84", "dec": "+28:10:10.4"}),
    # read off DS9 on the first raw science frame of the night (20190326.0126): an
    # unsaturated, isolated star (peak ~28,000 ADU on a sky of ~8,700)
    "lowell42": (LOWELL, {"name": "star-a", "x": 542, "y": 513}),
}


def follow_readme(night: str, work: Path) -> Path:
    """Steps 1-3 of "Your own night"; returns the config step 4 runs."""
    raw, target = TARGETS[night]
    out = work / "mynight"
    init = subprocess.run([sys.executable, "-m", "ccdflow.cli", "init", str(raw), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    (work / "init.txt").write_text(init.stdout + init.stderr)
    if init.returncode != 0:
        raise AssertionError(f"ccdflow init failed:\n{init.stderr}")
    written = re.search(r"and (\S+-night\.yaml) \(night config\)", init.stdout)
    config_path = Path(written.group(1))
    config = yaml.safe_load(config_path.read_text())
    # step 3: the target replaces `targets: []`; results stay in the test's folder
    config["lightcurves"]["targets"] = [target]
    config["results_dir"] = str(work / "results")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path


BACKGROUND = {night: (lambda work, night=night: follow_readme(night, work))
              for night, (raw, _) in TARGETS.items() if raw.is_dir()}


def _run(night):
    raw, target = TARGETS[night]
    if not raw.is_dir():
        pytest.skip(f"real frames not present at {raw} (../shared/data is optional)")
    run = background_run(f"{__name__}:{night}")
    if run is None:  # collected without the background runs (a single test selected by id, say)
        work = Path(__import__("tempfile").mkdtemp(prefix=f"ccdflow-own-{night}-"))
        from workflow_run import run_snakemake
        run_snakemake(config=follow_readme(night, work))
        return work, target
    run.wait()
    print(f"{night}: README night {run.seconds:.0f} s (in the background)")
    return run.config.parent.parent, target


def _light_curve(work: Path, name: str):
    config = yaml.safe_load(next((work / "mynight").glob("*-night.yaml")).read_text())
    results = work / "results" / config["campaign"]
    found = sorted(results.glob(f"lightcurves/*/*/{name}.ecsv"))
    assert len(found) == 1, (found, (results / "summary.txt").read_text())
    return results, Table.read(found[0])


@pytest.mark.parametrize("night", list(TARGETS))
def test_init_asks_for_nothing_on_the_real_nights(night):
    work, _ = _run(night)
    printed = (work / "init.txt").read_text()
    assert "Nothing left to fill in." in printed and "TODO:" not in printed, printed


def test_arcsat_xo1_by_its_sky_position_shows_its_transit():
    """The source matched is XO-1 (within 3 arcsec), and its curve drops into the
    transit: the first 10 minutes (already inside the ingress) stand 1-3 % above
    the floor 35-80 minutes later (tests/test_real_lightcurves.py for the details)."""
    from astropy.coordinates import SkyCoord

    work, target = _run("arcsat")
    results, lc = _light_curve(work, "XO-1")
    info = _summary(results)["XO-1"]
    catalogue = Table.read(next(results.glob("fields/*/*/catalogue.ecsv")))
    source = catalogue[catalogue["source_id"] == info["source_id"]][0]
    where = SkyCoord(target["ra"], target["dec"], unit=("hourangle", "deg"))
    assert SkyCoord(source["ra"], source["dec"], unit="deg").separation(where).arcsec < 3
    good = lc[lc["flag"] == 0]
    t, flux = np.asarray(good["bjd_tdb"], float), np.asarray(good["rel_flux"], float)
    minutes = (t - t.min()) * 1440
    early, floor = flux[minutes < 10], flux[(minutes > 35) & (minutes < 80)]
    assert len(good) >= 50 and len(early) >= 3 and len(floor) >= 10
    assert 0.010 <= early.mean() - floor.mean() <= 0.030, (early.mean(), floor.mean())
    # gain and read noise were measured by init, and the products say so
    frame = next(results.glob("calibrated/*/*.fits.fz"))
    assert "photon transfer" in fits.getheader(frame)["NOISEEST"]


def test_lowell_star_by_its_ds9_pixel_is_that_star():
    """The source matched sits where the DS9 pixel lands (raw 1-based -> trimmed:
    TRIMSEC starts at raw column 18), carried to the reference frame by the first
    frame's transform; its light curve is flat within its errors."""
    from ccdflow.align import Transform

    work, target = _run("lowell42")
    results, lc = _light_curve(work, "star-a")
    good = lc[lc["flag"] == 0]
    flux, err = np.asarray(good["rel_flux"], float), np.asarray(good["rel_flux_err"], float)
    assert len(good) >= 10 and np.median(err) < 0.01  # of 16: a cosmic-ray flag in the aperture still costs a frame
    assert np.std(flux) < 3 * np.median(err), (np.std(flux), np.median(err))
    catalogue = Table.read(next(results.glob("fields/*/*/catalogue.ecsv")))
    source = catalogue[catalogue["source_id"] == _summary(results)["star-a"]["source_id"]][0]
    transforms = Table.read(next(results.glob("fields/*/*/transforms.ecsv")))
    frames = Table.read(next(results.glob("fields/*/*/frames.ecsv")))
    first = frames["frame_id"][list(frames["filename"]).index("20190326.0126.fits.gz")]
    row = transforms[list(transforms["frame_id"]).index(first)]
    (x, y), = Transform.from_row(row).apply([[target["x"] - 18, target["y"] - 1]])
    assert np.hypot(source["x"] - x, source["y"] - y) < 1.5, (source["x"], source["y"], x, y)


def _summary(results):
    import json

    return json.loads(next(results.glob("lightcurves/*/*/summary.json")).read_text())
