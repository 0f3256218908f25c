# Shared values and input functions. Per-frame work is batched: a job handles
# up to config["batch"]["size"] frames of one night, each frame keeping its own
# product file inside the batch's folder (see ccdflow.inventory.batches).
import os
from pathlib import Path

from ccdflow.inventory import RawSource, batches, find_raw_files, read_table
from ccdflow.instrument import load_profile

RESULTS = f"{config['results_dir']}/{config['campaign']}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
INVENTORY = f"{RESULTS}/inventory/inventory.ecsv"
SIMULATE = config["simulate"]
SIM_RAW = f"{SIMULATE['outdir']}/raw"
SIM_TRUTH = f"{SIMULATE['outdir']}/truth"
BATCH_SIZE = config["batch"]["size"]

wildcard_constraints:
    batch=r"\d{4}-\d{2}-\d{2}\.b\d{3}",
    night=r"\d{4}-\d{2}-\d{2}",
    gid=r"[0-9a-f]{10}",
    fid=r"[0-9a-f]{10}",
    chunk=r"\d{3}",


def _is_simulated(source):
    return SIMULATE["enabled"] and os.path.normpath(source["path"]).startswith(os.path.normpath(SIM_RAW))


def profile_files():
    """Instrument profiles in use, name -> file; editing one reruns the inventory.

    Loading them here validates every profile against its schema at start-up.
    """
    names = sorted({s["instrument"] for s in config["raw"]})
    return {n: load_profile(n, [config["instruments_dir"]]).source for n in names}


def raw_inputs(wildcards):
    """Raw files found now (so adding one reruns the inventory), or the simulator's output."""
    inputs = [SIM_RAW] if SIMULATE["enabled"] else []
    real = [RawSource(s["path"], s["instrument"]) for s in config["raw"] if not _is_simulated(s)]
    inputs += [path for path, _ in find_raw_files(real)]
    return inputs


_DERIVED = {}


def _memo(name, compute):
    """Values derived from the inventory, computed once per inventory file version.

    Input functions run for every job while the DAG is built; re-reading the
    inventory and re-planning batches and masters each time would make a
    campaign of thousands of frames slow to even start.
    """
    path = checkpoints.inventory.get().output.table
    key = (name, path, os.stat(path).st_mtime_ns)
    if key not in _DERIVED:
        _DERIVED[key] = compute(path)
    return _DERIVED[key]


def inventory_table():
    """The inventory, once the checkpoint has run (re-evaluates the DAG after it)."""
    return _memo("table", read_table)


def _raw_paths(frame_ids):
    """Raw files of the given frames, in that order."""
    paths = _memo("paths", lambda path: dict(zip(inventory_table()["frame_id"], inventory_table()["path"])))
    return [paths[fid] for fid in frame_ids]


def frame_batches():
    return _memo("frame_batches", lambda path: batches(inventory_table(), BATCH_SIZE))


def batch_frames(wildcards):
    """Raw files of one batch (inputs of a batched per-frame job)."""
    return _raw_paths(frame_batches()[wildcards.batch])


def framestats_dirs(wildcards):
    return [f"{RESULTS}/framestats/{batch}" for batch in frame_batches()]


# -- calibration ------------------------------------------------------------------
from ccdflow.calibselect import MasterIndex, group_column, input_candidates, plan_masters

CAL = config["calibration"]
CAL_TYPES = ["bias", "dark", "flat"]


def cal_params(*blocks):
    """The parts of the calibration config a rule depends on (so only they rerun it)."""
    return {block: CAL[block] for block in blocks}


def proc_batches():
    return _memo("proc_batches", lambda path: batches(inventory_table(), BATCH_SIZE, types=CAL_TYPES))


def science_batches():
    return _memo("science_batches", lambda path: batches(inventory_table(), BATCH_SIZE, types=["science"]))


def _batch_of(frame_ids, all_batches):
    """Batches (of ``all_batches``, a function above) holding any of the frames, sorted."""
    def index(path):
        return {fid: batch for batch, members in all_batches().items() for fid in members}

    batch_of = _memo(f"{all_batches.__name__}_index", index)
    return sorted({batch_of[fid] for fid in frame_ids if fid in batch_of})


def proc_batch_frames(wildcards):
    return _raw_paths(proc_batches()[wildcards.batch])


def master_plans():
    return _memo("master_plans", lambda path: plan_masters(inventory_table(), CAL["dark"]["mode"]))


def master_path(kind, master_id):
    return f"{RESULTS}/masters/{kind}/{master_id}.fits"


def master_proc_dirs(kind):
    """Input function: pre-processed batches holding the frames of one master."""
    def inputs(wildcards):
        master = master_plans()[kind][f"{wildcards.night}/{wildcards.gid}"]
        return [f"{RESULTS}/proc/{b}" for b in _batch_of(master.frame_ids, proc_batches)]
    return inputs


def _frame_times():
    """frame_id -> (mid-exposure MJD, {group column: key}, night) of every frame."""
    def compute(path):
        table = inventory_table()
        columns = ["cal_group", "dark_group", "flat_group"]
        keys = [dict(zip(columns, values)) for values in zip(*(table[c] for c in columns))]
        return dict(zip(table["frame_id"], zip(table["mjd_mid"], keys, table["night"])))

    return _memo("frame_times", compute)


def candidate_masters_for_frames(kind, frame_ids):
    """Masters that may serve any of the frames (nearest first per frame; see input_candidates)."""
    index = _memo(f"master_index_{kind}", lambda path: MasterIndex(master_plans()[kind]))
    column = group_column(kind, CAL["dark"]["mode"])
    frames = _frame_times()
    paths = {}  # ordered: a frame's candidates nearest first, frame after frame
    for fid in frame_ids:
        mjd, keys, night = frames[fid]
        for master in input_candidates(index.candidates(keys[column], mjd, CAL["window_days"]), night):
            paths.setdefault(master_path(kind, master.master_id))
    return list(paths)


def masters_for_master(needed_kind, kind):
    """Input function: e.g. master biases a master dark may subtract."""
    def inputs(wildcards):
        master = master_plans()[kind][f"{wildcards.night}/{wildcards.gid}"]
        return candidate_masters_for_frames(needed_kind, master.frame_ids)
    return inputs


def science_batch_inputs(wildcards):
    frame_ids = science_batches()[wildcards.batch]
    inputs = {"frames": _raw_paths(frame_ids)}
    for kind in CAL_TYPES:
        inputs[kind] = candidate_masters_for_frames(kind, frame_ids)
    return inputs


def all_masters(wildcards):
    plans = master_plans()
    return [master_path(kind, mid) for kind in CAL_TYPES for mid in plans[kind]]


def calibrated_dirs(wildcards):
    return [f"{RESULTS}/calibrated/{b}" for b in science_batches()]


# -- fields: alignment, photometry, light curves ---------------------------------------
from ccdflow.fields import plan_fields

PHOT = config["photometry"]
LC = config["lightcurves"]
FIELDS = f"{RESULTS}/fields"


def field_plans():
    return _memo("field_plans", lambda path: plan_fields(inventory_table(), PHOT["min_frames"]))


def _field(wildcards):
    return field_plans()[f"{wildcards.night}/{wildcards.fid}"]


def field_chunks(field):
    ids = list(field.frame_ids)
    return {f"{i // BATCH_SIZE:03d}": ids[i : i + BATCH_SIZE] for i in range(0, len(ids), BATCH_SIZE)}


def field_calibrated_dirs(wildcards):
    """Calibrated batch folders holding a field's frames (or one chunk of them)."""
    field = _field(wildcards)
    ids = field_chunks(field)[wildcards.chunk] if hasattr(wildcards, "chunk") else field.frame_ids
    return [f"{RESULTS}/calibrated/{b}" for b in _batch_of(ids, science_batches)]


def field_photometry_dirs(wildcards):
    return [f"{RESULTS}/photometry/{wildcards.night}/{wildcards.fid}/c{chunk}" for chunk in field_chunks(_field(wildcards))]


def all_field_products(wildcards):
    if not PHOT["enabled"]:
        return []
    products = []
    for field_id in field_plans():
        products += [f"{FIELDS}/{field_id}/photometry.parquet", f"{RESULTS}/lightcurves/{field_id}"]
    return products


# -- QA ---------------------------------------------------------------------------------


def night_masters(wildcards):
    plans = master_plans()
    return [master_path(kind, mid) for kind in CAL_TYPES for mid in plans[kind] if mid.startswith(wildcards.night)]


def all_qa_products(wildcards):
    nights = sorted({mid.split("/")[0] for kind in CAL_TYPES for mid in master_plans()[kind]})
    products = [f"{RESULTS}/qa/{night}/masters.png" for night in nights]
    if PHOT["enabled"]:
        products += [f"{RESULTS}/qa/{field_id}/{name}.png" for field_id in field_plans() for name in ("conditions", "noise")]
    return products
