"""No bias frames and no overscan (issue 12 point 5): the bias is never counted as signal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import ROOT

from ccdflow.calibrate import CalibrationConfig, preprocess_frame
from ccdflow.instrument import load_profile
from ccdflow.inventory import RawSource, find_raw_files, summarise, take_inventory
from ccdflow.simsky import SKIES
from ccdflow.simulate import NightSpec, simulate_night

SPEC = {**SKIES["science_only"], "overscan": 0, "prescan": 0, "n_science": 10, "nx": 256, "ny": 256,
        "n_stars": 60, "bad_column": 100}


def _profile(tmp_path, **extra):
    """The simulator's profile for a camera without overscan."""
    spec = yaml.safe_load((ROOT / "config" / "instruments" / "simulator.yaml").read_text())
    del spec["sections"]["overscan"], spec["sections"]["amplifiers"]["overscan"]
    spec.update(name="sim_no_overscan", **extra)
    path = tmp_path / "sim_no_overscan.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_profile(path)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("no_bias")
    spec = NightSpec.from_dict(SPEC, base="tiny")
    return outdir, spec, simulate_night(outdir, spec)


def test_bias_level_estimated_from_science_pairs(night, tmp_path):
    outdir, spec, _ = night
    profile = _profile(tmp_path)
    frame = take_inventory(find_raw_files([RawSource(str(outdir / "raw"), profile.name)]), {profile.name: profile})
    assert (frame["status"] == "ok").all() and not (frame["imagetyp"] == "bias").any()
    assert frame["bias_source"].str.startswith("estimated").all(), frame["bias_source"].iloc[0]
    level = json.loads(frame["amplifiers"].iloc[0])[0]["bias_level"]
    sky_adu = spec.sky_e_per_s * spec.science_exptime / spec.gain
    print(f"bias level {level:.2f} ADU (truth {spec.bias_level}, sky {sky_adu:.0f} ADU): {frame['bias_source'].iloc[0]}")
    assert abs(level - spec.bias_level) < 0.01 * sky_adu      # 1 % of the sky: variance right to 1 %
    assert "bias level of 10 sim_no_overscan frame(s): estimated" in summarise(frame)
    # calibrated data are sky and stars only: the median is the sky, not bias + sky
    row = frame.iloc[0].to_dict()
    product = preprocess_frame(row, CalibrationConfig.from_config({}))
    sky_e = spec.sky_e_per_s * spec.science_exptime
    assert abs(np.median(product.data) - sky_e) < 0.05 * sky_e
    assert "ABIAS_01" in product.header and product.header["BIASSRC"].startswith("estimated")


def test_profile_bias_level_wins_and_a_failed_estimate_says_so(night, tmp_path):
    outdir, spec, _ = night
    profile = _profile(tmp_path, bias_level={"value": 990.0})
    files = find_raw_files([RawSource(str(outdir / "raw"), profile.name)])
    frame = take_inventory(files, {profile.name: profile})
    assert (frame["bias_source"] == "profile").all()
    assert json.loads(frame["amplifiers"].iloc[0])[0]["bias_level"] == 990.0
    one = take_inventory(files[:1], {profile.name: _profile(tmp_path)})
    assert one["bias_source"].iloc[0].startswith("none")
    assert "WARNING: bias level of 1 sim_no_overscan frame(s): none" in summarise(one)
