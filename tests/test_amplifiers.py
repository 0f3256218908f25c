"""N amplifiers through calibration (issue 12 point 8): a quadrant read-out, each amplifier
with its own gain, read noise and bias offset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT

from ccdflow.calibrate import CalibrationConfig, preprocess_frame
from ccdflow.instrument import load_profile
from ccdflow.inventory import RawSource, find_raw_files, take_inventory
from ccdflow.simsky import sky_options
from ccdflow.simulate import NightSpec, simulate_night


@pytest.fixture(scope="module")
def quadrants(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("four_amps")
    spec = NightSpec.from_dict({**sky_options("four_amps"), "n_science": 3, "n_stars": 20}, base="tiny")
    truth = simulate_night(outdir, spec)
    profile = load_profile(ROOT / "config" / "instruments" / "simulator.yaml")
    frame = take_inventory(find_raw_files([RawSource(str(outdir / "raw"), "simulator")]), {"simulator": profile})
    return spec, truth, frame


def test_every_amplifier_is_read_with_its_own_sections_gain_and_noise(quadrants):
    spec, truth, frame = quadrants
    science = frame[(frame["imagetyp"] == "science") & (frame["status"] == "ok")]
    amps = json.loads(science["amplifiers"].iloc[0])
    assert len(amps) == 4
    assert [a["gain"] for a in amps] == pytest.approx([a["gain"] for a in truth["geometry"]["amplifiers"]])
    product = preprocess_frame(science.iloc[0].to_dict(), CalibrationConfig.from_config({}))
    assert product.header["NAMPS"] == 4
    assert [product.header[f"ARDNS_{n:02d}"] for n in range(1, 5)] == pytest.approx(
        [a["read_noise"] for a in truth["geometry"]["amplifiers"]])
    # each quadrant: overscan-corrected, in electrons -> the same sky (x flat ~ 1, + dark)
    half_y, half_x = spec.ny // 2, spec.nx // 2
    sky_e = spec.sky_e_per_s * spec.science_exptime
    levels = [np.median(product.data[sy, sx]) for sy in (np.s_[:half_y], np.s_[half_y:])
              for sx in (np.s_[:half_x], np.s_[half_x:])]
    print("sky per quadrant (e-):", np.round(levels, 1), "expected ~", sky_e)
    assert np.allclose(levels, sky_e, rtol=0.05)
    # the variance plane carries each amplifier's read noise
    rn2 = [np.min(product.variance[sy, sx]) for sy in (np.s_[:half_y], np.s_[half_y:])
           for sx in (np.s_[:half_x], np.s_[half_x:])]
    assert len({round(float(v)) for v in rn2}) == 4
