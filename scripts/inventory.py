"""Checkpoint inventory: raw headers -> inventory table (ECSV and Parquet)."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ccdflow.atomic import write_text
from ccdflow.instrument import load_profile
from ccdflow.inventory import NightRule, RawSource, RowCache, find_raw_files, take_inventory, write_inventory
from ccdflow.provenance import software_version
from ccdflow.runlog import start_job

job = start_job(snakemake)
log = job.log
sources = [RawSource(s["path"], s["instrument"]) for s in snakemake.params.sources]
profiles = {name: load_profile(path) for name, path in snakemake.params.profiles.items()}
files = find_raw_files(sources)
log.info("found %d raw FITS files in %d source(s)", len(files), len(sources))
night = snakemake.params.night
cache = RowCache(snakemake.params.rows_cache)
table = take_inventory(
    files,
    profiles,
    NightRule(night["boundary_hour"], night["utc_offset_hours"]),
    snakemake.params.inventory["shape_outlier_fraction"],
    cache,
)
cache.save()
log.info("read %d files, reused the rows of %d unchanged ones", len(files) - cache.reused, cache.reused)
meta = {"software": software_version(), "config_hash": job.config_hash,
        "profiles": {n: p.source for n, p in profiles.items()}}
write_inventory(table, snakemake.output.table, snakemake.output.parquet, meta)
write_text(snakemake.output.inputs, snakemake.params.inputs + "\n")  # what it was made from (see common.smk)
log.info("inventory: %s", table["status"].value_counts().to_dict())
