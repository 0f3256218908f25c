"""Rule field_photometry: merge a field's per-frame photometry into one table with BJD_TDB."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ccdflow.fieldwork import merge_field
from ccdflow.inventory import read_table, rows_of
from ccdflow.runlog import start_job

job = start_job(snakemake)
rows = rows_of(read_table(snakemake.input.inventory), snakemake.params.frames)
long = merge_field(snakemake.input.photometry, rows, snakemake.input.transforms, snakemake.output.table,
                   snakemake.output.frames)
job.log.info("%d photometry rows", len(long))
