"""Calibration inputs are validated before use: bad ones give a QC FAIL master with
the reason, never a crash and never a master that passes with nonsense in it."""

import numpy as np
import pytest
from astropy.io import fits

from ccdflow.calibrate import CalibrationConfig, build_master, load_master, preprocess_frame
from ccdflow.ccdio import Product
from ccdflow.inventory import RawSource, find_raw_files, take_inventory


@pytest.fixture(scope="module")
def frames(tiny_night, profiles, tmp_path_factory):
    """Pre-processed bias and dark frames of the tiny night, with their inventory rows."""
    outdir, _ = tiny_night
    table = take_inventory(find_raw_files([RawSource(str(outdir / "raw"), "simulator")]),
                           {"simulator": profiles["simulator"]})
    table = table[table["status"] == "ok"]
    proc = tmp_path_factory.mktemp("proc")
    cfg = CalibrationConfig()
    found = {}
    for kind in ("bias", "dark"):
        rows = [dict(r, sha1="-") for r in table[table["imagetyp"] == kind].to_dict("records")]
        paths = []
        for row in rows:
            paths.append(str(proc / f"{row['frame_id']}.fits"))
            preprocess_frame(row, cfg).write(paths[-1])
        found[kind] = (paths, rows)
    return found, proc


def test_a_group_of_one_frame_gives_a_failed_master_not_a_crash(frames, tmp_path):
    paths, rows = frames[0]["bias"]
    master = build_master("bias", paths[:1], rows[:1], CalibrationConfig(), group=rows[0]["cal_group"])
    master.write(tmp_path / "bias.fits")  # FITS takes no NaN: unknown statistics are left undefined
    header = fits.getheader(tmp_path / "bias.fits")
    assert header["QCSTATUS"] == "FAIL" and "1 usable frames, fewer than 3" in header["QCREASON"]


def test_a_dark_of_zero_exposure_is_rejected_and_a_group_of_them_fails(frames, tmp_path):
    found, _ = frames
    bias_paths, bias_rows = found["bias"]
    bias = build_master("bias", bias_paths, bias_rows, CalibrationConfig(min_frames={"bias": 2, "dark": 2, "flat": 2}),
                        group=bias_rows[0]["cal_group"])
    bias.write(tmp_path / "bias.fits")
    bias = load_master(tmp_path / "bias.fits")
    paths, rows = found["dark"]
    cfg = CalibrationConfig(min_frames={"bias": 2, "dark": 2, "flat": 2})
    zero = [dict(rows[0], exptime=0.0), *rows[1:]]
    master = build_master("dark", paths, zero, cfg, bias=bias, group=rows[0]["cal_group"])
    assert master.header["NCOMBINE"] == len(rows) - 1
    assert "EXPTIME = 0.0 s" in master.header["REJ001"]
    assert np.isfinite(master.data).all() and np.isfinite(master.variance).all()
    only_zero = [dict(r, exptime=0.0) for r in rows]
    failed = build_master("dark", paths, only_zero, cfg, bias=bias, group=rows[0]["cal_group"])
    failed.write(tmp_path / "dark.fits")
    assert fits.getval(tmp_path / "dark.fits", "QCSTATUS") == "FAIL"


def test_a_master_with_non_finite_variance_fails_qc(frames, tmp_path):
    found, proc = frames
    paths, rows = found["bias"]
    broken = Product.read(paths[0])
    broken.variance[5, 5] = np.inf  # a corrupt input: the propagated variance is not finite there
    broken.write(tmp_path / "broken.fits")
    master = build_master("bias", [str(tmp_path / "broken.fits"), *paths[1:]], rows, CalibrationConfig(),
                          group=rows[0]["cal_group"])
    assert master.header["QCSTATUS"] == "FAIL" and "variance not finite" in master.header["QCREASON"]
