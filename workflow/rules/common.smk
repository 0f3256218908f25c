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


def inventory_table():
    """The inventory, once the checkpoint has run (re-evaluates the DAG after it)."""
    return read_table(checkpoints.inventory.get().output.table)


def frame_batches():
    return batches(inventory_table(), BATCH_SIZE)


def batch_frames(wildcards):
    """Raw files of one batch (inputs of a batched per-frame job)."""
    table = inventory_table().set_index("frame_id")
    return list(table.loc[frame_batches()[wildcards.batch], "path"])


def framestats_dirs(wildcards):
    return [f"{RESULTS}/framestats/{batch}" for batch in frame_batches()]
