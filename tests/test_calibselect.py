"""Master selection: criteria as data, nearest in time, across nights, never a failed master."""

import numpy as np
import pandas as pd
from astropy.io import fits

from ccdflow.calibselect import candidates, choose_master, group_id, input_candidates, plan_masters


def _table():
    rows = []
    for night, mjd in (("2025-01-01", 60676.2), ("2025-01-05", 60680.2)):
        for kind, n, exptime, filt in (("bias", 3, 0.0, "NONE"), ("dark", 3, 60.0, "NONE"), ("flat", 3, 5.0, "R")):
            for i in range(n):
                rows.append({"frame_id": f"{night}-{kind}-{i}", "status": "ok", "imagetyp": kind, "night": night,
                             "mjd_mid": mjd + 0.001 * i, "exptime": exptime, "filter": filt,
                             "cal_group": "cam|1x1|100x100", "dark_group": f"cam|1x1|100x100|{exptime:g}s",
                             "flat_group": f"cam|1x1|100x100|{filt}"})
    rows.append({"frame_id": "sci", "status": "ok", "imagetyp": "science", "night": "2025-01-05", "mjd_mid": 60680.3,
                 "exptime": 120.0, "filter": "R", "cal_group": "cam|1x1|100x100",
                 "dark_group": "cam|1x1|100x100|120s", "flat_group": "cam|1x1|100x100|R"})
    return pd.DataFrame(rows)


def test_plan_has_one_master_per_group_and_night():
    plans = plan_masters(_table())
    assert {k: len(v) for k, v in plans.items()} == {"bias": 2, "dark": 2, "flat": 2}
    assert all(len(m.frame_ids) == 3 for m in plans["flat"].values())


def test_candidates_nearest_first_within_window_and_matched_darks():
    table = _table()
    science = table.set_index("frame_id").loc["sci"]
    found = candidates(science, "bias", plan_masters(table)["bias"], window_days=30)
    assert [m.night for m in found] == ["2025-01-05", "2025-01-01"]
    assert candidates(science, "bias", plan_masters(table)["bias"], window_days=1)[0].night == "2025-01-05"
    # matched darks must share the exposure time: none has 120 s
    assert candidates(science, "dark", plan_masters(table, "matched")["dark"], 30, "matched") == []
    assert len(candidates(science, "dark", plan_masters(table, "rate")["dark"], 30, "rate")) == 2


def _master(path, group, mjd, qc="PASS"):
    header = fits.Header({"GROUPID": group_id(group), "MJD-MID": mjd, "QCSTATUS": qc, "QCREASON": "" if qc == "PASS" else "too few"})
    fits.PrimaryHDU(np.zeros((2, 2), np.float32), header).writeto(path)
    return str(path)


def test_choose_master_skips_failed_qc_and_crosses_nights(tmp_path):
    group = "cam|1x1|100x100|R"
    tonight = _master(tmp_path / "tonight.fits", group, 60680.2, qc="FAIL")
    earlier = _master(tmp_path / "earlier.fits", group, 60676.2)
    other = _master(tmp_path / "other.fits", "cam|1x1|100x100|V", 60680.3)
    path, reason = choose_master([tonight, earlier, other], 60680.3, group, window_days=30)
    assert path == earlier and reason == ""
    path, reason = choose_master([tonight, other], 60680.3, group, window_days=30)
    assert path is None and "tonight.fits failed QC" in reason
    path, reason = choose_master([earlier], 60680.3, group, window_days=2)
    assert path is None and "no usable master" in reason


def test_job_inputs_take_fallbacks_from_the_same_or_earlier_nights_only():
    """Masters of a later night are never inputs of an earlier night's frames when
    that night has its own (or an earlier) master: adding a night reruns nothing before it."""
    plans = plan_masters(_table())["bias"]
    later, earlier = sorted(plans.values(), key=lambda m: m.night, reverse=True)
    found = [later, earlier]  # as if the later one were nearer in time
    assert input_candidates(found, "2025-01-01") == [earlier]
    assert input_candidates(found, "2025-01-05") == [later, earlier]
    assert input_candidates([later], "2025-01-01") == [later]  # no own or earlier master: the later one
