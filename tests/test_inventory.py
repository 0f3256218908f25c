"""Inventory of a simulated night (with every kind of damaged file) against its truth."""

from collections import Counter

import pandas as pd
import pytest
from astropy.table import Table

from ccdflow.inventory import (NightRule, RawSource, batches, find_raw_files, frame_id, read_table,
                               summarise, take_inventory, write_inventory)

TYPE_NAMES = {"BIAS": "bias", "DARK": "dark", "FLAT": "flat", "OBJECT": "science"}
EXPECTED_REASON = {
    "zero_length": "empty",
    "truncated": "truncated",
    "not_fits": "not a FITS file",
    "missing_exptime": "missing required keyword EXPTIME",
    # the simulator keeps the full-size BIASSEC/TRIMSEC on the cut frame, so the
    # section check fires first; a frame with consistent sections meets the group check
    "wrong_shape": ("lies outside the 104x64 frame", "does not match its group's"),
}


@pytest.fixture(scope="module")
def inventory(tiny_night, profiles):
    outdir, truth = tiny_night
    files = find_raw_files([RawSource(str(outdir / "raw"), "simulator")])
    return take_inventory(files, {"simulator": profiles["simulator"]}), truth, outdir


def test_counts_by_type_match_truth(inventory):
    table, truth, _ = inventory
    ok = table[table["status"] == "ok"]
    expected = {TYPE_NAMES[k]: v for k, v in truth["counts"].items() if v}
    assert Counter(ok["imagetyp"]) == expected


def test_each_damaged_kind_is_quarantined_with_its_reason(inventory):
    table, truth, _ = inventory
    assert {d["kind"] for d in truth["damaged"]} == set(EXPECTED_REASON)
    for damaged in truth["damaged"]:
        row = table[table["filename"] == damaged["filename"]].iloc[0]
        assert row["status"] == "quarantined", damaged
        assert damaged["filename"] in row["reason"], "the reason names the file"
        expected = EXPECTED_REASON[damaged["kind"]]
        expected = (expected,) if isinstance(expected, str) else expected
        assert any(text in row["reason"] for text in expected), (damaged["kind"], row["reason"])
    assert (table["status"] == "quarantined").sum() == len(truth["damaged"])


def test_shape_outliers_in_a_group_are_quarantined():
    from ccdflow.inventory import quarantine_odd_shapes

    rows = [{"filename": f"f{i}.fits", "status": "ok", "reason": "", "night": "2025-01-01",
             "instrument": "x", "detector": "d", "binning": "1x1", "naxis1": 100, "naxis2": 80}
            for i in range(10)]
    rows[3].update(naxis1=50, naxis2=40)
    rows.append({**rows[0], "filename": "other_night.fits", "night": "2025-01-02", "naxis1": 50, "naxis2": 40})
    table = quarantine_odd_shapes(pd.DataFrame(rows), outlier_fraction=0.2)
    bad = table[table["status"] == "quarantined"]
    assert list(bad["filename"]) == ["f3.fits"]
    assert "shape 50x40 does not match its group's 100x80" in bad["reason"].iloc[0]
    # a deliberate sub-frame series (here 30 % of the night) is kept
    for i in range(3):
        rows[i].update(naxis1=50, naxis2=40)
    table = quarantine_odd_shapes(pd.DataFrame(rows), outlier_fraction=0.2)
    assert (table["status"] == "ok").all()


def test_mid_exposure_times_match_truth(inventory):
    table, _, outdir = inventory
    frames = Table.read(outdir / "truth" / "frames.ecsv").to_pandas().set_index("filename")
    ok = table[table["status"] == "ok"].set_index("filename")
    assert len(ok) > 0
    for name, row in ok.iterrows():
        assert row["mid_utc"] == frames.loc[name, "mid_utc"], name
        assert abs(row["mjd_mid"] - frames.loc[name, "mjd_mid"]) * 86400 < 1e-3


def test_name_with_space_quote_and_accent_works(inventory):
    table, _, _ = inventory
    odd = table[table["filename"].str.contains(" ")]
    assert len(odd) >= 1 and (odd["status"] == "ok").all()
    for fid in odd["frame_id"]:
        assert fid.isascii() and " " not in fid and "'" not in fid


def test_night_is_local_evening_date_at_site(inventory):
    table, truth, _ = inventory
    ok = table[table["status"] == "ok"]
    # the simulator's site is at -111.5 deg: local mean time is UTC - 7.4 h; its night
    # starts at 02:00 UTC, i.e. the evening before in local time
    first = pd.Timestamp(truth["spec"]["night_start_utc"])
    expected = (first + pd.Timedelta(hours=truth["spec"]["site"]["lon"] / 15 - 12)).date().isoformat()
    assert set(ok["night"]) == {expected}


def test_night_rule_boundary():
    rule = NightRule(boundary_hour=12, utc_offset_hours=-7)
    assert rule.night_of("2025-03-14T18:59:59.000", None) == "2025-03-13"  # 11:59 local
    assert rule.night_of("2025-03-14T19:00:01.000", None) == "2025-03-14"  # 12:00 local
    assert NightRule().night_of("2025-03-14T06:00:00.000", 150.0) == "2025-03-14"  # east: 16:00 local


def test_round_trip_through_ecsv_and_parquet(inventory, tmp_path):
    table, _, _ = inventory
    write_inventory(table, tmp_path / "inv.ecsv", tmp_path / "inv.parquet", {"config_hash": "abc"})
    for path in ("inv.ecsv", "inv.parquet"):
        back = read_table(tmp_path / path)
        pd.testing.assert_frame_equal(back.reset_index(drop=True), table.reset_index(drop=True),
                                      check_dtype=False, check_exact=False)
    ecsv = Table.read(tmp_path / "inv.ecsv")
    assert ecsv.meta["config_hash"] == "abc"
    # units and descriptions travel with the ECSV (astropy shows them)
    assert str(ecsv["exptime"].unit) == "s" and str(ecsv["gain"].unit) == "electron / adu"
    assert str(ecsv["site_lon"].unit) == "deg" and "east positive" in ecsv["site_lon"].description
    assert pd.read_parquet(tmp_path / "inv.parquet")["frame_id"].is_unique


def test_batches_respect_size_and_nights_and_are_stable(inventory):
    table, _, _ = inventory
    first = batches(table, size=4)
    assert all(len(members) <= 4 for members in first.values())
    assert sorted(sum(first.values(), [])) == sorted(table.loc[table["status"] == "ok", "frame_id"])
    # a new night appended leaves every existing batch untouched
    later = table[table["status"] == "ok"].head(3).copy()
    later["night"], later["frame_id"] = "2099-01-01", [f"new{i}" for i in range(3)]
    grown = batches(pd.concat([table, later]), size=4)
    assert {k: v for k, v in grown.items() if not k.startswith("2099")} == first
    assert grown["2099-01-01.b000"] == ["new0", "new1", "new2"]


def test_frame_ids_are_unique_per_path():
    assert frame_id("a/x.fits") != frame_id("b/x.fits")
    assert frame_id("a/x.fits").startswith("x-")
    assert frame_id("a/Tëst frame 'q'.FITS.gz").startswith("Test_frame_q-")


def test_summary_lists_counts_and_quarantine(inventory):
    table, truth, _ = inventory
    text = summarise(table)
    assert f"{len(table)} files" in text
    for damaged in truth["damaged"]:
        assert damaged["filename"] in text
    assert "science" in text and "bias" in text


def test_inventory_skips_non_fits_files_and_hidden_files(tmp_path, profiles, tiny_night):
    outdir, _ = tiny_night
    (tmp_path / "night.log").write_text("telescope log")
    (tmp_path / ".hidden.fits").write_text("x")
    (tmp_path / "sub").mkdir()
    source = next((outdir / "raw").glob("bias_*.fits"))
    (tmp_path / "sub" / "UPPER.FITS").write_bytes(source.read_bytes())
    files = find_raw_files([RawSource(str(tmp_path), "simulator")])
    assert [p.rsplit("/", 1)[-1] for p, _ in files] == ["UPPER.FITS"]
    # a glob source works as well as a folder
    assert find_raw_files([RawSource(str(tmp_path / "**" / "*.FITS"), "simulator")]) == files


def test_row_digests_follow_a_frames_own_row_only():
    import numpy as np
    import pandas as pd

    from ccdflow.inventory import row_digests, rows_digest

    table = pd.DataFrame({"frame_id": ["a", "b", "c"], "exptime": [1.0, np.nan, 3.0], "filter": ["R", None, "V"]})
    before = row_digests(table)  # NaN and None (quarantined frames) are values too
    changed = table.copy()
    changed.loc[2, "exptime"] = 4.0
    after = row_digests(changed)
    assert before["a"] == after["a"] and before["b"] == after["b"] and before["c"] != after["c"]
    assert rows_digest(before, ["a", "b"]) == rows_digest(after, ["b", "a"])
    assert rows_digest(before, ["a", "c"]) != rows_digest(after, ["a", "c"])
