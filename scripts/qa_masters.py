"""Rule qa_masters: thumbnails of a night's masters."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ccdflow.qa import masters_plot
from ccdflow.runlog import start_job

job = start_job(snakemake)
log = job.log
masters_plot(snakemake.input.masters, snakemake.output[0], f"masters, night {snakemake.wildcards.night}")
log.info("%d masters", len(snakemake.input.masters))
