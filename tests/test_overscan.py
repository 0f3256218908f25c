"""Overscan and trim: synthetic truth, several amplifiers, and the real Lowell frames."""


import numpy as np
import pytest
from astropy.io import fits

from ccdflow.rawscan import scan_raw
from ccdflow.instrument import normalise_header
from ccdflow.overscan import Amplifier, OverscanOptions, amplifiers_from_json, overscan_level, preprocess
from ccdflow.sections import parse_section


def _frame(rng, rows=400, level=1000.0, drift_amp=3.0, noise=4.0, gain=2.0, signal=500.0):
    """Prescan 4 | data 100 | overscan 20 columns; a row drift shared by every column."""
    drift = drift_amp * np.sin(np.linspace(0, 6, rows))
    image = level + drift[:, None] + rng.normal(0, noise, (rows, 124))
    image[:, 4:104] += signal / gain
    amp = Amplifier(data=parse_section(f"[5:104,1:{rows}]"), overscan=parse_section(f"[105:124,1:{rows}]"),
                    gain=gain, read_noise=noise * gain)
    return image, amp, level + drift


def test_per_row_median_follows_the_drift_within_its_stated_noise():
    rng = np.random.default_rng(3)
    image, amp, truth = _frame(rng)
    result = overscan_level(image, amp)
    normalised = (result.level - truth) / np.sqrt(result.variance)
    assert abs(normalised.mean()) < 0.2
    assert 0.85 < normalised.std() < 1.15  # the stated uncertainty is the real one
    assert result.pixel_sigma == pytest.approx(4.0, rel=0.05)


def test_fit_rejects_outlier_lines_and_beats_per_row_noise():
    rng = np.random.default_rng(4)
    image, amp, truth = _frame(rng, drift_amp=0.0)
    truth = truth + np.linspace(-5, 5, len(truth))  # a smooth slope
    image += np.linspace(-5, 5, image.shape[0])[:, None]
    image[200, 104:] += 500  # one hot line in the overscan
    per_row = overscan_level(image, amp)
    fitted = overscan_level(image, amp, OverscanOptions(fit_order=1))
    assert fitted.meta["rejected_lines"] >= 1
    assert np.abs(fitted.level - truth).max() < 1.0
    assert np.std(fitted.level - truth) < 0.5 * np.std(np.delete(per_row.level - truth, 200))


def test_excluded_column_stays_out_of_the_estimate():
    rng = np.random.default_rng(5)
    image, amp, truth = _frame(rng)
    image[:, 123] = 300  # a dead last column, as on the Lowell camera
    biased = overscan_level(image, amp, OverscanOptions(statistic="mean"))
    clean_amp = Amplifier(amp.data, amp.overscan, amp.gain, amp.read_noise, exclude_columns=(123,))
    clean = overscan_level(image, clean_amp, OverscanOptions(statistic="mean"))
    assert np.median(truth - biased.level) > 20
    assert abs(np.median(clean.level - truth)) < 0.3


def test_two_amplifiers_joined_in_electrons():
    rng = np.random.default_rng(6)
    rows, width = 200, 50
    # amp 1: overscan left of its data; amp 2: data then overscan on the right
    image = np.zeros((rows, 10 + 2 * width + 10))
    gains, levels = (1.5, 2.5), (900.0, 1300.0)
    sky_e = 3000.0
    image[:, :10] = levels[0]
    image[:, 10 : 10 + width] = levels[0] + sky_e / gains[0]
    image[:, 10 + width : 10 + 2 * width] = levels[1] + sky_e / gains[1]
    image[:, 10 + 2 * width :] = levels[1]
    image += rng.normal(0, 2.0, image.shape)
    amps = [
        Amplifier(parse_section(f"[11:{10 + width},1:{rows}]"), parse_section(f"[1:10,1:{rows}]"), gains[0], 3.0),
        Amplifier(parse_section(f"[{11 + width}:{10 + 2 * width},1:{rows}]"),
                  parse_section(f"[{11 + 2 * width}:{20 + 2 * width},1:{rows}]"), gains[1], 5.0),
    ]
    result = preprocess(image, amps)
    assert result.data.shape == (rows, 2 * width)
    left, right = result.data[:, :width], result.data[:, width:]
    assert np.median(left) == pytest.approx(sky_e, abs=5) and np.median(right) == pytest.approx(sky_e, abs=8)
    # each amplifier's own read noise (e-) sets its variance floor
    assert result.variance[:, :width].min() >= 9.0 and result.variance[:, width:].min() >= 25.0


def test_lowell_overscan_near_bias_level_and_trim_shape(lowell_raw, profiles):
    path = lowell_raw / "zero" / "20190326.0004.fits.gz"
    record = normalise_header(scan_raw(path).header, path, profiles["lowell42"])
    amps = amplifiers_from_json(record["amplifiers"])
    assert len(amps) == 1 and amps[0].exclude_columns == (1431,)
    raw = fits.getdata(path).astype(np.float32)
    assert np.median(raw[:, 1431]) < 1200  # the bad column really is bad
    level = overscan_level(raw, amps[0])
    bias_level = np.median(raw[parse_section(record["data_section"]).slices])
    assert abs(np.median(level.level) - bias_level) < 2.0  # ADU; the bad column would pull it down
    out = preprocess(raw, amps)
    assert out.data.shape == (1370, 1365)  # TRIMSEC [18:1382,1:1370]
    # a bias after overscan subtraction is flat at the read noise (e-), give or take fixed pattern
    assert abs(np.median(out.data)) < 0.5 * 9.3
    centre = out.data[100:-100, 100:-100]
    robust_std = 1.4826 * np.median(np.abs(centre - np.median(centre)))
    assert robust_std < 1.5 * 9.3
