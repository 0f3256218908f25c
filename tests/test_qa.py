"""QA noise curve (issue 12 point 8): it exists for any number of amplifiers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ccdflow.qa import noise_plot, noise_table


def _photometry(path, read_noise_by_amp, n_frames=40, seed=2):
    """Stars on the halves of a detector read by amplifiers of different read noise:
    fluxes scattered by exactly the noise their error bars give."""
    rng = np.random.default_rng(seed)
    n = 60
    amp = np.arange(n) % len(read_noise_by_amp)
    flux = 10 ** rng.uniform(2.5, 5, n)
    sky, area = 20.0, 30.0
    err = np.sqrt(flux + area * (sky + np.asarray(read_noise_by_amp)[amp] ** 2))
    rows = []
    for f in range(n_frames):
        transparency = 1 - 0.05 * rng.random()
        measured = (flux + rng.normal(0, err)) * transparency
        rows.append(pd.DataFrame({"frame_id": f"f{f:03d}", "source_id": np.arange(n), "aperture": "r2fwhm",
                                  "flux": measured, "flux_err": err * transparency, "bkg": sky, "area": area,
                                  "flag": 0}))
    pd.concat(rows).to_parquet(path)
    return amp


def test_noise_curve_for_four_amplifiers_follows_the_error_bars(tmp_path):
    amp = _photometry(tmp_path / "phot.parquet", [4.0, 9.0, 15.0, 30.0])
    table = noise_table(tmp_path / "phot.parquet", "r2fwhm", np.nan)
    assert len(table) == 60 and np.isfinite(table["predicted"]).all()
    assert not np.isfinite(table["ccd_equation"]).any()   # no single read noise to draw it with
    table["amp"] = amp[table["source_id"]]
    ratio = (table["scatter"] / table["predicted"]).groupby(table["amp"]).median()
    print("measured / predicted scatter per amplifier:", ratio.round(3).to_dict())
    assert np.all(np.abs(ratio - 1) < 0.1)
    noise_plot(tmp_path / "phot.parquet", "r2fwhm", np.nan, tmp_path / "noise.png", "four amplifiers")
    assert (tmp_path / "noise.png").stat().st_size > 10_000
