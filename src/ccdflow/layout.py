"""The results tree: every product path of a campaign comes from here.

One campaign lives under ``<results_dir>/<campaign>/``. The workflow's rules
take their output patterns from a :class:`Layout` (called with wildcard
placeholders such as ``"{batch}"``), input functions and jobs call the same
methods with real values, and code that needs to know what kind of product a
path is asks :meth:`Layout.kind_of` instead of looking at path parts.

    inventory/inventory.ecsv|.parquet|summary.txt|framestats.ecsv
    framestats/<batch>/<frame_id>.json      pixel statistics (one job per batch)
    proc/<batch>/<frame_id>.fits            pre-processed calibration frames (plain: read by memory
                                            map; temporary, deleted once the masters are made)
    masters/<kind>/<night>/<group_id>.fits.fz  master bias, dark, flat (tile-compressed, ccdflow.ccdio)
    calibrated/<batch>/<frame_id>.fits.fz   calibrated science frames (tile-compressed)
    calibrated/report.txt
    fields/<night>/<field_hash>/            transforms, stack, catalogue, tables
    photometry/<night>/<field_hash>/c<chunk>/<frame_id>.parquet
    lightcurves/<night>/<field_hash>/       one light curve per target
    qa/<night>/masters.png, qa/<night>/night.html (the night's page)
    qa/<night>/<field_hash>/{conditions,noise,finder,masks}.png, noise.ecsv, masks.ecsv
    logs/, benchmarks/                      per job; not products
    manifest.json, summary.txt              what was made, from what; what was not, and why

Batch folders also hold the stage's ``_status.json`` (:mod:`ccdflow.stage`).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from .ccdio import PRODUCT_SUFFIX

STATUS_FILE = "_status.json"
MANIFEST = "manifest.json"
SUMMARY = "summary.txt"
# Per-job bookkeeping, not products: what ran and how long it took.
BOOKKEEPING = ("logs", "benchmarks")
# Batched per-frame stages: folder name and the suffix of each frame's product.
BATCH_STAGES = {"framestats": ".json", "proc": ".fits", "calibrated": PRODUCT_SUFFIX}
# Batched stages whose folders Snakemake deletes once read (temp): inputs of masters only.
TEMPORARY_STAGES = ("proc",)


class Layout:
    """Paths of one campaign's products below ``root`` (``results_dir/campaign``)."""

    def __init__(self, root: str | Path):
        self.root = str(root).rstrip("/") or "/"

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- inventory --------------------------------------------------------------
    @property
    def inventory(self) -> str:
        return self._path("inventory", "inventory.ecsv")

    @property
    def inventory_parquet(self) -> str:
        return self._path("inventory", "inventory.parquet")

    @property
    def inventory_inputs(self) -> str:
        """Digest of what the inventory was made from (raw files' states, sources, profiles)."""
        return self._path("inventory", "inputs.sha1")

    @property
    def inventory_rows_cache(self) -> str:
        """Rows of the last inventory, reused for unchanged files (not a product)."""
        return self._path("inventory", ".rows-cache.json")

    @property
    def inventory_summary(self) -> str:
        return self._path("inventory", "summary.txt")

    @property
    def framestats_table(self) -> str:
        return self._path("inventory", "framestats.ecsv")

    # -- batched per-frame stages -------------------------------------------------
    def batch(self, stage: str, batch: str) -> str:
        """Folder of one batch of a per-frame stage (``framestats``, ``proc``, ``calibrated``)."""
        if stage not in BATCH_STAGES:
            raise ValueError(f"unknown batched stage {stage!r}; one of {sorted(BATCH_STAGES)}")
        return self._path(stage, batch)

    def frame(self, stage: str, batch: str, frame_id: str) -> str:
        """One frame's product of a batched stage."""
        return f"{self.batch(stage, batch)}/{frame_id}{BATCH_STAGES[stage]}"

    @staticmethod
    def status(folder: str | Path) -> str:
        """The status file of a batch (or photometry chunk) folder."""
        return f"{folder}/{STATUS_FILE}"

    @property
    def calibration_report(self) -> str:
        return self._path("calibrated", "report.txt")

    # -- masters ----------------------------------------------------------------
    def master(self, kind: str, master_id: str) -> str:
        """``master_id`` is ``<night>/<group_id>`` (:class:`ccdflow.calibselect.PlannedMaster`)."""
        return self._path("masters", kind, f"{master_id}{PRODUCT_SUFFIX}")

    # -- fields -----------------------------------------------------------------
    def field(self, field_id: str, name: str) -> str:
        """A per-field product: ``transforms.ecsv``, ``stack.fits``, ``catalogue.ecsv``,
        ``photometry.parquet``, ``photometry.ecsv``, ``frames.ecsv``."""
        return self._path("fields", field_id, name)

    def photometry_chunk(self, field_id: str, chunk: str) -> str:
        return self._path("photometry", field_id, f"c{chunk}")

    def photometry_frame(self, field_id: str, chunk: str, frame_id: str) -> str:
        return f"{self.photometry_chunk(field_id, chunk)}/{frame_id}.parquet"

    def lightcurves(self, field_id: str) -> str:
        return self._path("lightcurves", field_id)

    # -- QA, bookkeeping ----------------------------------------------------------
    def qa_masters(self, night: str) -> str:
        return self._path("qa", night, "masters.png")

    def qa_field(self, field_id: str, name: str) -> str:
        return self._path("qa", field_id, name)

    def qa_night(self, night: str) -> str:
        """The night's page of the QA report (:mod:`ccdflow.nightpage`)."""
        return self._path("qa", night, "night.html")

    def log(self, rule: str, key: str = "") -> str:
        return self._path("logs", f"{rule}/{key}.log" if key else f"{rule}.log")

    def benchmark(self, rule: str, key: str = "") -> str:
        return self._path("benchmarks", f"{rule}/{key}.tsv" if key else f"{rule}.tsv")

    @property
    def manifest(self) -> str:
        return self._path(MANIFEST)

    @property
    def summary(self) -> str:
        """What the last run made and did not (:mod:`ccdflow.runsummary`)."""
        return self._path(SUMMARY)

    @property
    def run_problems(self) -> str:
        return self._path("logs", "run_problems.json")

    @property
    def run_ok(self) -> str:
        """Exists once a run ended with every requested product made."""
        return self._path("logs", "run_ok")



def master_name(path: str | Path) -> str:
    """A master's name in provenance keywords: its path below ``masters/``
    (``<kind>/<night>/<group_id>.fits.fz``), wherever the campaign tree lives."""
    parts = PurePosixPath(Path(path).as_posix()).parts
    if len(parts) < 4 or parts[-4] != "masters":
        return Path(path).name  # a master made outside a campaign tree (tests, notebooks)
    return "/".join(parts[-3:])


def kind_of(relative: str) -> str:
    """What a product is, from its path relative to the campaign folder:
    ``master``, ``light_curve``, ``bookkeeping`` (logs, benchmarks), ``run_record``
    (the manifest and the run summary: about the products, not products) or ``other``."""
    parts = PurePosixPath(relative).parts
    if not parts:
        return "other"
    if parts[0] in BOOKKEEPING:
        return "bookkeeping"
    if relative in (MANIFEST, SUMMARY):
        return "run_record"
    if parts[0] == "masters" and relative.endswith((PRODUCT_SUFFIX, ".fits")):
        return "master"
    if parts[0] == "lightcurves" and relative.endswith(".ecsv") and parts[-1] != "transparency.ecsv":
        return "light_curve"
    return "other"
