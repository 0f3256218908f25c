"""Bad inputs a hostile (or unlucky) user gives the inventory: each is read, or listed
with a reason naming the file, and costs nothing else.

Built from the tiny simulated night's good frames, in seconds; the end-to-end
counterparts (through Snakemake) are in tests/test_workflow.py.
"""

from __future__ import annotations

import bz2
import gzip
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits

from ccdflow.inventory import (DUPLICATE_OF, RawSource, RowCache, find_raw_files, raw_state, snakemake_inputs,
                               source_problems, take_inventory, write_inventory)


@pytest.fixture
def raw(tmp_path, tiny_night):
    """A folder with two good science frames and one bias of the tiny night."""
    outdir, _ = tiny_night
    folder = tmp_path / "raw"
    folder.mkdir()
    for source in [*sorted((outdir / "raw").glob("sci_*.fits"))[:2], next((outdir / "raw").glob("bias_*.fits"))]:
        shutil.copy2(source, folder / source.name)
    return folder


def inventory(folder, profiles, cache=None):
    files = find_raw_files([RawSource(str(folder), "simulator")])
    table = take_inventory(files, {"simulator": profiles["simulator"]}, cache=cache)
    return table.set_index("filename", drop=False)


def good(folder):
    return sorted(p for p in folder.iterdir() if p.name.startswith("sci_"))


def test_the_same_frame_under_other_names_is_one_frame(raw, profiles):
    first, second = good(raw)
    shutil.copy(first, raw / "copy_of_first.fits")  # a later copy: the original is kept
    with open(first, "rb") as src, gzip.open(raw / f"{first.name}.gz", "wb") as dst:
        dst.write(src.read())
    (raw / "link_to_second.fits").symlink_to(second)
    table = inventory(raw, profiles)
    assert table.loc[first.name, "status"] == "ok" and table.loc[second.name, "status"] == "ok"
    for name, original in (("copy_of_first.fits", first), (f"{first.name}.gz", first), ("link_to_second.fits", second)):
        row = table.loc[name]
        assert row["status"] == "ignored" and f"{DUPLICATE_OF}{original}" in row["reason"], row["reason"]
        assert row["reason"].startswith(name)
    assert (table["status"] == "ok").sum() == 3  # two science frames and the bias, each once


def test_symlink_loops_and_linked_folders_are_followed_once(raw, profiles):
    (raw / "loop").symlink_to(raw, target_is_directory=True)
    night = raw.parent / "night2"
    night.mkdir()
    shutil.copy2(good(raw)[0], night / "late.fits")
    (raw / "night2_link").symlink_to(night, target_is_directory=True)
    for source in (str(raw), str(raw / "**" / "*.fits")):
        files = [p for p, _ in find_raw_files([RawSource(source, "simulator")])]
        names = sorted(os.path.basename(p) for p in files)
        assert names == sorted([*(p.name for p in raw.glob("*.fits")), "late.fits"]), (source, files)


def test_a_corrupt_gzip_stream_is_quarantined(raw, profiles):
    first = good(raw)[0]
    packed = bytearray(gzip.compress(first.read_bytes()))
    packed[len(packed) // 2] ^= 0x10  # one flipped bit, as a bad transfer leaves it
    (raw / "flipped.fits.gz").write_bytes(bytes(packed))
    first.unlink()
    row = inventory(raw, profiles).loc["flipped.fits.gz"]
    assert row["status"] == "quarantined" and row["reason"].startswith("flipped.fits.gz: corrupt"), row["reason"]


def test_compressions_are_read_or_named_as_unsupported(raw, profiles):
    first, second = good(raw)
    (raw / f"{first.name}.bz2").write_bytes(bz2.compress(first.read_bytes()))
    first.unlink()
    (raw / "old_archive.fits.Z").write_bytes(b"\x1f\x9d\x90" + b"\0" * 100)  # compress(1) magic
    (raw / "packed.fits.xz").write_bytes(b"\xfd7zXZ\0" + b"\0" * 100)
    table = inventory(raw, profiles)
    assert table.loc[f"{first.name}.bz2", "status"] == "ok"
    assert table.loc[f"{first.name}.bz2", "content_sha1"] != table.loc[second.name, "content_sha1"]
    assert "Unix compress" in table.loc["old_archive.fits.Z", "reason"]
    assert "unxz" in table.loc["packed.fits.xz", "reason"]
    assert set(table.loc[["old_archive.fits.Z", "packed.fits.xz"], "status"]) == {"quarantined"}


def test_a_contradicting_second_exptime_card_is_quarantined(raw, profiles):
    first, second = good(raw)
    for path, value in ((first, 999.0), (second, None)):
        with fits.open(path, mode="update") as hdul:
            exptime = hdul[0].header["EXPTIME"]
            hdul[0].header.add_history("a second EXPTIME card follows")
            hdul[0].header.append(fits.Card("EXPTIME", exptime if value is None else value), useblanks=False)
    table = inventory(raw, profiles)
    assert table.loc[first.name, "status"] == "quarantined"
    assert "EXPTIME" in table.loc[first.name, "reason"] and "999" in table.loc[first.name, "reason"]
    assert table.loc[second.name, "status"] == "ok"  # the same value twice is only untidy


def test_multi_extension_files_are_never_reduced_by_their_first_image_alone(raw, profiles):
    first, second = good(raw)
    with fits.open(first) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data.copy()
    two = fits.HDUList([fits.PrimaryHDU(header=header.copy()), fits.ImageHDU(data, header), fits.ImageHDU(data, header)])
    two[0].header["NAXIS"] = 0
    two.writeto(raw / "two_amps.fits")
    one = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data + np.uint16(1), header)])
    one[0].header["OBSERVER"] = "in the primary only"
    one.writeto(raw / "one_image_in_extension.fits")
    table = inventory(raw, profiles)
    assert table.loc["two_amps.fits", "status"] == "quarantined"
    assert "2 images" in table.loc["two_amps.fits", "reason"]
    assert table.loc["one_image_in_extension.fits", "status"] == "ok"


def test_odd_file_names_are_read_or_quarantined_and_the_table_still_writes(raw, profiles, tmp_path):
    first, second = good(raw)
    os.rename(first, raw / "sci_{x}_0001.fits")
    undecodable = os.fsdecode(b"sci_caf\xe9.fits")  # Latin-1 bytes: not UTF-8
    shutil.copy2(second, os.path.join(raw, undecodable))
    (raw / "gone.fits").symlink_to(raw / "never_there.fits")
    table = inventory(raw, profiles)
    assert table.loc["sci_{x}_0001.fits", "status"] == "ok"
    dangling = table.loc["gone.fits"]
    assert dangling["status"] == "quarantined" and "dangling symbolic link" in dangling["reason"]
    bad_name = table[table["reason"].str.contains("not valid UTF-8")]
    assert len(bad_name) == 1 and bad_name["status"].iloc[0] == "quarantined"
    write_inventory(table.reset_index(drop=True), tmp_path / "inv.ecsv", tmp_path / "inv.parquet")
    # what Snakemake is given as inputs: no dangling link, no undecodable name,
    # no braces (it would read {x} as a wildcard); the good frame is there
    inputs = snakemake_inputs([p for p, _ in find_raw_files([RawSource(str(raw), "simulator")])])
    assert str(second) in inputs
    assert not [p for p in inputs if "gone" in p or "caf" in p or "{" in p]


def test_unreadable_files_are_not_given_to_snakemake(raw, monkeypatch):
    first = str(good(raw)[0])
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path != first and real_access(path, mode))
    inputs = snakemake_inputs([first, str(good(raw)[1])])
    assert inputs == [str(good(raw)[1])]


def test_raw_sources_that_name_nothing_are_errors(raw):
    problems = source_problems([RawSource(str(raw), "simulator"), RawSource(str(raw.parent / "nigth2"), "simulator"),
                                RawSource(str(raw / "*.fts"), "simulator")])
    assert len(problems) == 2 and "nigth2" in problems[0] and "*.fts" in problems[1]


def test_an_edit_that_keeps_the_modification_time_is_noticed(raw, profiles, tmp_path):
    first, second = good(raw)
    cache = RowCache(tmp_path / "cache.json")
    before = inventory(raw, profiles, cache)
    cache.save()
    state = raw_state([str(first), str(second)])
    stamp = os.stat(first)
    with fits.open(first, mode="update") as hdul:
        hdul[0].header["OBJECT"] = "renamed"
    os.utime(first, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # as `touch -r` or `rsync -t` leaves it
    assert raw_state([str(first), str(second)]) != state  # the inventory's parameter: it reruns
    again = RowCache(tmp_path / "cache.json")
    after = inventory(raw, profiles, again)
    assert again.reused == len(after) - 1  # only the edited file is read again
    assert after.loc[first.name, "object"] == "renamed"
    assert after.loc[first.name, "content_sha1"] != before.loc[first.name, "content_sha1"]
    assert after.loc[second.name].equals(before.loc[second.name])


def test_a_profile_section_missing_its_bracket_is_refused_at_start(profiles):
    import copy

    from ccdflow.instrument import validate_profile

    spec = copy.deepcopy(profiles["lowell42"].spec)
    spec["sections"]["data"] = "1:2048,1:2048]"
    with pytest.raises(ValueError, match=r"sections/data: '1:2048,1:2048\]' is not header keyword"):
        validate_profile(spec, "lowell42.yaml")
    spec["sections"]["data"] = "[1:2048, 1:2048]"
    validate_profile(spec, "lowell42.yaml")


def test_a_night_with_nothing_usable_is_a_failed_run(raw, profiles):
    from ccdflow.runsummary import summarise_run

    for path in raw.iterdir():
        path.write_bytes(b"SIMPLE  = not really")
    table = inventory(raw, profiles).reset_index(drop=True)
    summary = summarise_run("x", table, [], [], {}, "snakemake --report")
    assert summary.problems and "none of the 3 raw files is usable" in summary.problems[0]
    empty = summarise_run("x", table.iloc[:0], [], [], {}, "snakemake --report")
    assert "no raw FITS files found" in empty.problems[0]


def test_a_configured_transit_that_could_not_be_fitted_fails_the_run(raw, profiles, tmp_path):
    """A cloudy night leaves a target's light curve too few points for its transit fit:
    the light curve is made, but the fit that was asked for is not, so the summary says
    why and where to look and the run exits non-zero (``missing_target: warn`` makes it
    a warning); a detrending-only fit that fails is not a failed request."""
    import json

    from astropy.table import Table

    from ccdflow.runsummary import summarise_run

    table = inventory(raw, profiles).reset_index(drop=True)
    lightcurves = tmp_path / "lightcurves"
    lightcurves.mkdir()
    Table({"frame_id": ["a", "b"], "ok": [True, True], "reason": ["", ""]}).write(tmp_path / "transforms.ecsv")
    summary = {"host": {"source_id": 1, "fit": {"error": "only 12 usable points for 6 candidate terms",
                                                "transit": True}},
               "check": {"source_id": 2, "fit": {"error": "only 8 unflagged points: too few to fit",
                                                 "transit": False}}}
    (lightcurves / "summary.json").write_text(json.dumps(summary))
    fields = {"field-1": (tmp_path / "transforms.ecsv", lightcurves)}
    failed = summarise_run("x", table, [], [], fields, "snakemake --report")
    assert len(failed.problems) == 1, failed.problems
    assert "target host (field field-1): no transit fit: only 12 usable points" in failed.problems[0]
    assert f"{lightcurves}/host.ecsv" in failed.problems[0]
    assert not any("check" in line for line in failed.lines if "no transit fit" in line)
    warned = summarise_run("x", table, [], [], fields, "snakemake --report", missing_target="warn")
    assert not warned.problems
    assert any("warning: target host (field field-1): no transit fit" in line for line in warned.lines)
