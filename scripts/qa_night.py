"""Rule qa_night: the night's page of the QA report."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ccdflow.inventory import read_table
from ccdflow.nightpage import write_night_page
from ccdflow.runlog import start_job

job = start_job(snakemake)
night = snakemake.wildcards.night
done = write_night_page(snakemake.output[0], night, snakemake.params.campaign, read_table(snakemake.input.inventory),
                        snakemake.input.masters, snakemake.input.calibrated, snakemake.params.fields)
job.log.info("night %s: page of %d field(s), %d bytes", night, done["fields"], done["bytes"])
