"""The plan, the layout and the batch drivers on a tiny simulated night, without Snakemake.

What the workflow's jobs do, called as the rule scripts call them: the plan
cuts the night into batches and masters, each driver writes its products where
the layout says and one status entry per frame in the shared vocabulary.
"""

import errno
import json

import pytest
from astropy.io import fits

from ccdflow.calibrate import CalibrationConfig
from ccdflow.frameloop import EXCLUDED, FAILED, OK, SKIPPED, FrameExcluded, FrameSkipped, read_status, run_frames
from ccdflow.framestats import run_batch
from ccdflow.inventory import RawSource, find_raw_files, take_inventory
from ccdflow.layout import Layout, kind_of, master_name
from ccdflow.plan import BATCH_FACTOR, Plan, PlanSettings
from ccdflow.recipes import RECIPES
from ccdflow.stages import calibrate_batch, master_for, preprocess_batch, report


@pytest.fixture(scope="module")
def planned(tiny_night, profiles):
    outdir, _ = tiny_night
    table = take_inventory(find_raw_files([RawSource(str(outdir / "raw"), "simulator")]),
                           {"simulator": profiles["simulator"]})
    return table, Plan(table, PlanSettings(batch_size=4))


def test_plan_batches_cover_each_usable_frame_once(planned):
    table, plan = planned
    usable = table[table["status"] == "ok"]
    for stage, types in (("framestats", None), ("proc", tuple(RECIPES)), ("calibrated", ("science",))):
        wanted = usable if types is None else usable[usable["imagetyp"].isin(types)]
        members = [fid for ids in plan.batches[stage].values() for fid in ids]
        assert sorted(members) == sorted(wanted["frame_id"]), stage
        assert all(len(ids) <= 4 * BATCH_FACTOR[stage] for ids in plan.batches[stage].values())
        assert plan.batches_holding(stage, members) == sorted(plan.batches[stage])


def test_plan_masters_fields_and_candidates(planned):
    table, plan = planned
    assert set(plan.masters) == set(RECIPES)
    for kind, masters in plan.masters.items():
        for master in masters.values():
            rows = table.set_index("frame_id").loc[list(master.frame_ids)]
            assert set(rows["imagetyp"]) == {kind}
            assert rows[RECIPES[kind].group_column("rate")].nunique() == 1
    science = plan.batches["calibrated"]
    frame = next(iter(science.values()))[0]
    for kind in RECIPES:
        found = plan.frame_candidates(kind, frame)
        assert found, kind  # the tiny night has a master of every kind for its science filter
        assert plan.candidates_for(kind, [frame]) == found
    field_id, field = next(iter(plan.fields.items()))
    chunks = plan.field_chunks(field_id)
    assert [fid for ids in chunks.values() for fid in ids] == list(field.frame_ids)
    assert plan.rows_digest(field.frame_ids) == plan.rows_digest(list(reversed(field.frame_ids)))


def test_layout_is_the_one_place_for_paths(tmp_path):
    layout = Layout(tmp_path / "camp")
    path = layout.master("flat", "2026-01-01/0123456789")
    assert path == f"{tmp_path}/camp/masters/flat/2026-01-01/0123456789.fits.fz"
    assert master_name(path) == "flat/2026-01-01/0123456789.fits.fz"
    assert kind_of("masters/flat/2026-01-01/0123456789.fits.fz") == "master"
    assert kind_of("lightcurves/2026-01-01/abc/target.ecsv") == "light_curve"
    assert kind_of("lightcurves/2026-01-01/abc/transparency.ecsv") == "other"
    assert kind_of("logs/inventory.log") == "bookkeeping"
    assert kind_of("manifest.json") == kind_of("summary.txt") == "run_record"
    assert layout.frame("calibrated", "2026-01-01.b000", "f1") == f"{tmp_path}/camp/calibrated/2026-01-01.b000/f1.fits.fz"
    with pytest.raises(ValueError, match="unknown batched stage"):
        layout.batch("nonsense", "b")
    # patterns for the workflow's rules come from the same methods
    assert layout.batch("proc", "{batch}").endswith("proc/{batch}")


def test_frame_loop_vocabulary_and_disk_full(tmp_path):
    def process(frame_id, item, folder):
        if item == "exclude":
            raise FrameExcluded("not aligned")
        if item == "skip":
            raise FrameSkipped("switched off")
        if item == "bad":
            raise ValueError(f"{frame_id}.fits: broken")
        return {"value": 1}

    items = [("a", "ok"), ("b", "exclude"), ("c", "skip"), ("d", "bad")]
    status = run_frames(items, process, tmp_path / "batch")
    assert [status[k]["status"] for k in "abcd"] == [OK, EXCLUDED, SKIPPED, FAILED]
    assert status["a"]["value"] == 1 and "d.fits: broken" in status["d"]["reason"]
    assert read_status(tmp_path / "batch") == json.loads(json.dumps(status))

    def full(frame_id, item, folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.fits"))

    with pytest.raises(OSError, match="No space left"):
        run_frames([("a", None)], full, tmp_path / "full")

    def full_as_astropy_says(frame_id, item, folder):  # astropy re-raises ENOSPC without its errno
        try:
            raise OSError("16384 requested and 5856 written")  # numpy's short write: no errno
        except OSError as exc:
            raise OSError("Not enough space on disk: requested 8000, available 0. " + str(exc))  # noqa: B904

    with pytest.raises(OSError, match=r"No space left on device while writing a into .*full"):
        run_frames([("a", None)], full_as_astropy_says, tmp_path / "full")


@pytest.fixture(scope="module")
def calibrated(planned, tmp_path_factory):
    """The tiny night through the calibration drivers, as the rule scripts call them."""
    table, plan = planned
    layout = Layout(tmp_path_factory.mktemp("drivers"))
    cfg = CalibrationConfig(cosmic_rays={"enabled": False})
    proc = {batch: preprocess_batch(plan.rows(ids), layout.batch("proc", batch), cfg)
            for batch, ids in plan.batches["proc"].items()}
    for kind, masters in plan.masters.items():  # recipe order: what a master subtracts exists first
        for master in masters.values():
            subtract = {needed: [layout.master(needed, m.master_id) for m in plan.candidates_for(needed, master.frame_ids)]
                        for needed in RECIPES[kind].subtracts}
            master_for(master, plan.rows(master.frame_ids), plan.frame_products(layout, "proc", master.frame_ids),
                       CalibrationConfig(cosmic_rays={"enabled": False}, min_frames={"bias": 3, "dark": 3, "flat": 2}),
                       layout.master(kind, master.master_id), subtract=subtract)
    status = {}
    for batch, ids in plan.batches["calibrated"].items():
        candidates = {fid: {kind: [layout.master(kind, m.master_id) for m in plan.frame_candidates(kind, fid)]
                            for kind in RECIPES} for fid in ids}
        status[batch] = calibrate_batch(plan.rows(ids), candidates, layout.batch("calibrated", batch), cfg)
    return plan, layout, proc, status


def test_drivers_make_masters_and_calibrated_frames(calibrated):
    plan, layout, proc, status = calibrated
    assert {s["status"] for batch in proc.values() for s in batch.values()} == {OK}
    for kind, masters in plan.masters.items():
        for master in masters.values():
            header = fits.getheader(layout.master(kind, master.master_id))
            assert header["OBSTYPE"] == f"MASTER_{kind.upper()}"
    for batch, entries in status.items():
        for fid, entry in entries.items():
            if entry["status"] == OK:
                header = fits.getheader(layout.frame("calibrated", batch, fid))
                assert header["MBIAS"] == entry["masters"]["bias"]
            else:  # the tiny night's saturated or faint flats can leave a filter with no flat
                assert entry["status"] == FAILED and "flat" in entry["reason"]
    text, errors = report([layout.master(k, m) for k, ms in plan.masters.items() for m in ms],
                          [layout.batch("calibrated", b) for b in plan.batches["calibrated"]])
    assert "science frames calibrated" in text
    assert len(errors) == sum(e["status"] == FAILED for entries in status.values() for e in entries.values())


def test_field_drivers_align_measure_and_make_light_curves(calibrated):
    """Alignment, catalogue, photometry, field table and light curves of the tiny
    night's field; every table in the declared vocabulary."""
    from ccdflow import tables
    from ccdflow.fieldwork import align, light_curves, merge_field, photometry_frames, reference_catalogue
    from ccdflow.photometry import ApertureSpec

    plan, layout, _, _ = calibrated
    field_id, field = next(iter(plan.fields.items()))
    frames = plan.frame_products(layout, "calibrated", field.frame_ids)
    transforms, stack = layout.field(field_id, "transforms.ecsv"), layout.field(field_id, "stack.fits")
    aligned = align(frames, transforms, stack, {"max_shift_px": 100.0})
    assert aligned["ok"].sum() >= len(frames) - 1, aligned["frame_id", "ok", "reason"]
    catalogue_path = layout.field(field_id, "catalogue.ecsv")
    catalogue = reference_catalogue(stack, transforms, frames[fits.getval(stack, "REFFRAME")], catalogue_path,
                                    {}, ApertureSpec())
    tables.CATALOGUE.check(catalogue)
    assert len(catalogue) >= 10
    chunks = {}
    for chunk, ids in plan.field_chunks(field_id).items():
        outdir = layout.photometry_chunk(field_id, chunk)
        chunks[outdir] = photometry_frames([{"frame_id": f, "path": frames[f]} for f in ids if f in frames],
                                           transforms, catalogue_path, outdir, ApertureSpec())
    assert {e["status"] for entries in chunks.values() for e in entries.values()} <= {OK, EXCLUDED}
    long = merge_field(list(chunks), plan.rows(field.frame_ids), transforms, layout.field(field_id, "photometry.parquet"),
                       layout.field(field_id, "frames.ecsv"))
    tables.FIELD_PHOTOMETRY.check(long)
    measured = sum(e["status"] == OK for entries in chunks.values() for e in entries.values())
    assert long["frame_id"].nunique() == measured and long["source_id"].nunique() == len(catalogue)
    geometry = {row["frame_id"]: {"filename": row["filename"], "amplifiers": row["amplifiers"]}
                for row in plan.rows(field.frame_ids)}
    summary = light_curves(layout.field(field_id, "photometry.parquet"), catalogue_path, transforms, stack, geometry,
                           layout.lightcurves(field_id), {"all_sources": True, "max_sources": 8}, field.label)
    # the 8 brightest unflagged sources: a curve each, or the reason (the brightest of a
    # 40-star 128x128 field can lack comparisons of their brightness)
    assert len(summary) == 8 and all("aperture" in info or info["error"] for info in summary.values()), summary
    made = [name for name, info in summary.items() if "error" not in info]
    assert made, summary
    lc = tables.Table.read(f"{layout.lightcurves(field_id)}/{made[0]}.ecsv")
    tables.LIGHT_CURVE.check(lc)
    assert str(lc["bjd_tdb"].unit) == "d"


def test_frame_stats_marks_unreadable_frames_failed(planned, tmp_path):
    table, plan = planned
    rows = plan.rows(next(iter(plan.batches["framestats"].values())))
    broken = dict(rows[0], path=str(tmp_path / "missing.fits"), frame_id="missing")
    results = run_batch([*rows, broken], tmp_path / "stats")
    status = read_status(tmp_path / "stats")
    assert status["missing"]["status"] == FAILED and "missing.fits" in status["missing"]["reason"]
    assert {status[r["frame_id"]]["status"] for r in rows} == {OK}
    assert len(results) == len(rows) + 1


def test_completeness_names_missing_and_incomplete_products(tmp_path):
    from ccdflow.completeness import Planned, find_damage
    from ccdflow.frameloop import run_frames

    folder = tmp_path / "calibrated" / "b000"
    run_frames([("a", 1), ("b", 2)], lambda fid, item, out: (out / f"{fid}.fits").write_text("x") and None, folder)
    planned = Planned(files=[str(tmp_path / "master.fits")], folders={str(folder): ".fits"})
    (tmp_path / "master.fits").write_text("m")
    assert not find_damage(planned)
    (folder / "b.fits").unlink()
    (tmp_path / "master.fits").unlink()
    damage = find_damage(planned)
    assert damage.missing == [str(tmp_path / "master.fits")] and damage.incomplete == {str(folder): ["b.fits"]}
    (folder / "_status.json").unlink()
    assert find_damage(planned).incomplete == {str(folder): ["_status.json"]}
