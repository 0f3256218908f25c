# Thin input functions over one plan and one layout. Which frames each job
# reads is decided once per inventory version by ccdflow.plan.Plan; every path
# comes from ccdflow.layout.Layout. Jobs receive their share of the plan through
# params and never plan again.
import dataclasses
import functools
import hashlib
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from ccdflow.atomic import set_aside
from ccdflow.completeness import QA_FIELD_PRODUCTS, find_damage, planned_products
from ccdflow.instrument import load_profile
from ccdflow.inventory import (
    RawSource,
    checked_raw_files,
    is_snakemake_input,
    raw_state,
    read_table,
)
from ccdflow.layout import Layout
from ccdflow.nightpage import night_rows
from ccdflow.plan import Plan, PlanSettings
from ccdflow.recipes import RECIPES
from ccdflow.runlock import reads_only

RESULTS = f"{config['results_dir']}/{config['campaign']}"
LAYOUT = Layout(RESULTS)
INVENTORY = LAYOUT.inventory
SIMULATE = config["simulate"]
SIM_RAW = f"{SIMULATE['outdir']}/raw"
SIM_TRUTH = f"{SIMULATE['outdir']}/truth"
CAL = config["calibration"]
PHOT = config["photometry"]
LC = config["lightcurves"]


wildcard_constraints:
    batch=r"\d{4}-\d{2}-\d{2}\.([a-z]+\.)?b\d{3}",  # proc batches hold one kind: <night>.flat.b000
    night=r"\d{4}-\d{2}-\d{2}",
    gid=r"[0-9a-f]{10}",
    fid=r"[0-9a-f]{10}",
    chunk=r"\d{3}",


def _is_simulated(source):
    return SIMULATE["enabled"] and os.path.normpath(source["path"]).startswith(
        os.path.normpath(SIM_RAW)
    )


def profile_dirs():
    """Where a profile *name* is looked up: the config's instruments_dir (relative to
    the working directory, like every path a user writes), then the workflow's own
    profiles (config/instruments beside the Snakefile), wherever the run is."""
    user = [config["instruments_dir"]] if config["instruments_dir"] else []
    return user + ([WORKFLOW_PROFILES] if WORKFLOW_PROFILES else [])


def _shown(path):
    """A profile's file as the jobs get it. One of the workflow's own profiles is
    written relative to the working directory when it lies inside it (the demo run
    from the checkout: config/instruments/simulator.yaml, as before), else absolute;
    a profile of the user's stays as found."""
    own = WORKFLOW_PROFILES and Path(path).is_relative_to(WORKFLOW_PROFILES)
    if own and Path(path).is_relative_to(Path.cwd()):
        return os.path.relpath(path)
    return path


def profile_files():
    """Instrument profiles in use, name -> file; editing one reruns the inventory.

    Loading them here validates every profile against its schema at start-up.
    """
    names = sorted({s["instrument"] for s in config["raw"]})
    return {n: _shown(load_profile(n, profile_dirs()).source) for n in names}


REAL_SOURCES = [
    RawSource(s["path"], s["instrument"]) for s in config["raw"] if not _is_simulated(s)
]


@functools.cache
def real_raw():
    """Raw files found now (walked once per Snakemake process). A mistyped raw path,
    or one with no FITS file, must not pass as an empty (or smaller) night."""
    try:
        return [path for path, _ in checked_raw_files(REAL_SOURCES)]
    except FileNotFoundError as err:
        raise WorkflowError(str(err)) from None


if workflow.is_main_process:
    real_raw()  # a bad raw path stops the run here, before anything starts


# Asked of every raw file by several rules while the DAG is built: stat each once.
usable_input = functools.cache(is_snakemake_input)


def raw_inputs(wildcards):
    """Raw files found now (so adding one reruns the inventory), or the simulator's output."""
    return ([SIM_RAW] if SIMULATE["enabled"] else []) + [
        p for p in real_raw() if usable_input(p)
    ]


@functools.cache
def current_raw_state():
    """Size, times and inode of every raw file (see ccdflow.inventory.stat_signature), once."""
    return raw_state(real_raw())


def raw_files_state(wildcards):
    return current_raw_state()


def inventory_inputs_digest(wildcards=None):
    """One digest of everything the inventory is made from: the raw files' states,
    the sources, the profiles' contents, the night and inventory settings (and the
    simulator's output folder). Equal to the one the inventory wrote: it is current."""
    parts = [current_raw_state(), config["raw"], config["night"], config["inventory"]]
    parts += [Path(p).read_bytes().hex() for p in profile_files().values()]
    if SIMULATE["enabled"] and os.path.exists(SIM_RAW):
        parts.append(os.stat(SIM_RAW).st_mtime_ns)
    return hashlib.sha1(repr(parts).encode()).hexdigest()


_PLANS = {}


def plan():
    """The plan of the current inventory, built once per inventory file version.

    Input functions run for every job while the DAG is built; re-reading the
    inventory and re-planning each time would make a campaign of thousands of
    frames slow to even start.
    """
    return plan_of(checkpoints.inventory.get().output.table)


def plan_of(path):
    key = (path, os.stat(path).st_mtime_ns)
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = Plan(read_table(path), PlanSettings.from_config(config))
    return _PLANS[key]


# -- what one job reads: a list of frame ids for each kind of wildcard ----------------
def batch_ids(stage):
    return lambda wc: plan().batches[stage][wc.batch]


def master_of(kind, wc):
    return plan().masters[kind][f"{wc.night}/{wc.gid}"]


def field_of(wc):
    return plan().fields[f"{wc.night}/{wc.fid}"]


def field_ids(wc):
    """The frames of a field, or of one photometry chunk of it."""
    if hasattr(wc, "chunk"):
        return plan().field_chunks(f"{wc.night}/{wc.fid}")[wc.chunk]
    return list(field_of(wc).frame_ids)


def master_ids(kind):
    return lambda wc: list(master_of(kind, wc).frame_ids)


# -- inputs -------------------------------------------------------------------------
def raw_frames(frames_of):
    return lambda wc: [p for p in plan().raw_paths(frames_of(wc)) if usable_input(p)]


def batch_dirs(stage, frames_of=None):
    """Batch folders of ``stage`` holding the frames (all batches when frames_of is None)."""

    def inputs(wc):
        batches = (
            plan().batches_holding(stage, frames_of(wc))
            if frames_of
            else plan().batches[stage]
        )
        return [LAYOUT.batch(stage, b) for b in batches]

    return inputs


def candidate_master_files(kind, frame_ids):
    return [
        LAYOUT.master(kind, m.master_id) for m in plan().candidates_for(kind, frame_ids)
    ]


def subtracted_masters(kind):
    """Input function: the masters a recipe subtracts from its inputs, by kind."""

    def inputs(wc):
        ids = master_ids(kind)(wc)
        return {
            needed: candidate_master_files(needed, ids)
            for needed in RECIPES[kind].subtracts
        }

    return inputs


def science_batch_inputs(wc):
    ids = plan().batches["calibrated"][wc.batch]
    return {
        "frames": [p for p in plan().raw_paths(ids) if usable_input(p)],
        **{kind: candidate_master_files(kind, ids) for kind in RECIPES},
    }


def field_photometry_dirs(wc):
    field_id = f"{wc.night}/{wc.fid}"
    return [
        LAYOUT.photometry_chunk(field_id, chunk)
        for chunk in plan().field_chunks(field_id)
    ]


def field_summaries(wc):
    """``{field label: (transforms table, light-curve folder)}`` for the run summary."""
    if not PHOT["enabled"]:
        return {}
    return {
        field.label: (
            LAYOUT.field(field_id, "transforms.ecsv"),
            LAYOUT.lightcurves(field_id),
        )
        for field_id, field in plan().fields.items()
    }


def all_masters(wc=None):
    return [
        LAYOUT.master(kind, mid)
        for kind, planned in plan().masters.items()
        for mid in planned
    ]


def night_masters(wc):
    return [
        LAYOUT.master(kind, mid)
        for kind, planned in plan().masters.items()
        for mid, m in planned.items()
        if m.night == wc.night
    ]


# -- params: the job's share of the plan ------------------------------------------------
def rows_digest(frames_of):
    """Digest of the job's inventory rows. Jobs take the inventory as ancient() input
    (its time stamp changes whenever any night is added) and this as a param, so
    Snakemake reruns a job exactly when its own frames' rows change."""
    return lambda wc: plan().rows_digest(frames_of(wc))


def master_plan(kind):
    return lambda wc: dataclasses.asdict(master_of(kind, wc))


def frame_products(stage, frames_of):
    """``{frame_id: path}`` of the frames' products of a batched stage."""
    return lambda wc: plan().frame_products(LAYOUT, stage, frames_of(wc))


def frame_candidates(wc):
    """``{frame_id: {kind: [master file, ...]}}``: the masters that may serve each frame, nearest first."""
    ids = plan().batches["calibrated"][wc.batch]
    return {
        fid: {
            kind: [
                LAYOUT.master(kind, m.master_id)
                for m in plan().frame_candidates(kind, fid)
            ]
            for kind in RECIPES
        }
        for fid in ids
    }


def cal_params(*blocks):
    """The parts of the calibration config a rule depends on (so only they rerun it)."""
    return {block: CAL[block] for block in blocks}


def field_label(wc):
    return field_of(wc).label


def field_title(wc):
    """The field as an observer names it: its target (the frames' OBJECT) and filter."""
    field = field_of(wc)
    return f"{field.target} {field.filter}"


# -- one night's share, for its QA page ----------------------------------------------
def night_ids(wc):
    """Every inventory row of the night (with the unreadable files of its folder)."""
    return list(night_rows(plan().table, wc.night)["frame_id"])


def night_rows_digest(wc):
    return plan().rows_digest(night_ids(wc))


def night_calibrated_dirs(wc):
    return [
        LAYOUT.batch("calibrated", b)
        for b in plan().batches_holding("calibrated", night_ids(wc))
    ]


def night_fields(wc):
    """``{field label: {title, transforms, lightcurves, catalogue}}`` of the night's fields."""
    if not PHOT["enabled"]:
        return {}
    return {
        field.label: {
            "title": f"{field.target} {field.filter}",
            **{
                name: LAYOUT.field(field_id, f"{name}.ecsv")
                for name in ("transforms", "catalogue")
            },
            "lightcurves": LAYOUT.lightcurves(field_id),
        }
        for field_id, field in plan().fields.items()
        if field.night == wc.night
    }


def night_field_products(wc):
    return [
        path
        for field in night_fields(wc).values()
        for key, path in field.items()
        if key != "title"
    ]


# -- labels of the report's entries (report(labels=...)): names, not hashes --------------
def field_report_labels(figure):
    """A field's entry: its target and filter, what the figure shows, the night."""
    return lambda wildcards: {
        "field": field_title(wildcards),
        "figure": figure,
        "night": wildcards.night,
    }


def light_curve_report_labels(wildcards):
    """A light curve's entry (its folder's {name}.png and {name}_fit.png): the target,
    its field, the plot (toggled: light curve / fit), the night."""
    fit = wildcards.name.endswith("_fit")
    return {
        "target": wildcards.name.removesuffix("_fit"),
        "field": field_title(wildcards),
        "plot": "model fit" if fit else "light curve",  # sorted: the light curve first
        "night": wildcards.night,
    }


# -- resources sized to the frames a job reads ---------------------------------------
# Coefficients measured with the benchmarks/ scripts and the demo night's benchmark
# files (max_rss, s), then doubled: a 4k x 4k camera asks for 16x the memory of a
# 1k x 1k one, and a batch of 25 frames for 25x the time of one.
def sized_mem_mb(frames_of, base_mb, bytes_per_pixel):
    """Resource function: base + bytes_per_pixel x the largest frame of the job (MB)."""
    return lambda wc: int(
        base_mb + bytes_per_pixel * max(plan().pixels(frames_of(wc)) + [0]) / 2**20
    )


def sized_runtime(frames_of, base_minutes, seconds_per_megapixel):
    """Resource function: base + seconds_per_megapixel x all the job's pixels (minutes)."""
    return (
        lambda wc: int(
            base_minutes
            + seconds_per_megapixel * sum(plan().pixels(frames_of(wc))) / 1e6 / 60
        )
        + 1
    )


# -- targets of the run ----------------------------------------------------------------
def all_field_products(wc):
    if not PHOT["enabled"]:
        return []
    return [
        p
        for field_id in plan().fields
        for p in (
            LAYOUT.field(field_id, "photometry.parquet"),
            LAYOUT.lightcurves(field_id),
        )
    ]


def all_qa_products(wc):
    products = [LAYOUT.qa_masters(night) for night in plan().nights_with_masters]
    products += [LAYOUT.qa_night(night) for night in plan().nights]
    if PHOT["enabled"]:
        products += [
            LAYOUT.qa_field(field_id, name)
            for field_id in plan().fields
            for name in QA_FIELD_PRODUCTS
        ]
    return products


def products_to_rebuild():
    """Products of an earlier run that are now missing or incomplete (deleted by
    hand, a batch folder emptied): explicit targets of ``rule all``, which
    Snakemake rebuilds with everything after them (see ccdflow.completeness).
    Only while the inventory is current: otherwise it reruns and all is planned anew.
    """
    if not (os.path.exists(INVENTORY) and os.path.exists(LAYOUT.inventory_inputs)):
        return []
    if Path(LAYOUT.inventory_inputs).read_text().strip() != inventory_inputs_digest():
        return []
    damage = find_damage(planned_products(plan_of(INVENTORY), LAYOUT, PHOT["enabled"]))
    if not damage:
        return []
    logger.warning(
        f"ccdflow: {len(damage.missing) + len(damage.incomplete)} product(s) of an earlier run "
        "are missing or incomplete; rebuilding them and what depends on them:\n  "
        + "\n  ".join(damage.lines()[:20])
    )
    if not reads_only(sys.argv):  # a dry run changes nothing
        for folder in damage.incomplete:
            set_aside(folder)  # so that Snakemake sees it missing
    return damage.missing + list(damage.incomplete)


def planned_for_manifest(wildcards):
    """Every planned product, for the manifest's completeness check (plain lists)."""
    planned = planned_products(plan(), LAYOUT, PHOT["enabled"])
    return {"files": planned.files, "folders": planned.folders}
