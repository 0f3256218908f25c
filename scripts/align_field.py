"""Rule align_field: transforms table and stacked reference of one field."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ccdflow.fieldwork import align
from ccdflow.runlog import start_job

job = start_job(snakemake)
table = align(snakemake.params.frames, snakemake.output.transforms, snakemake.output.stack, snakemake.params.align)
job.log.info("%d of %d frames aligned", sum(table["ok"]), len(table))
