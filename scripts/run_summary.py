"""Rule run_summary: what the run made and what it did not, and why."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import json

from ccdflow.atomic import write_text
from ccdflow.inventory import read_table
from ccdflow.runlog import start_job
from pathlib import Path

from ccdflow.runsummary import products_bytes, summarise_run

job = start_job(snakemake)
report = f"snakemake --report {snakemake.params.campaign}-report.html (with the same --configfile)"
summary = summarise_run(snakemake.params.campaign, read_table(snakemake.input.inventory), snakemake.input.masters,
                        snakemake.input.calibrated, snakemake.params.fields, report,
                        snakemake.params.missing_target, products_bytes(Path(snakemake.output.text).parent))
write_text(snakemake.output.problems, json.dumps(summary.problems, indent=1))
write_text(snakemake.output.text, summary.text)
job.log.info("%d problem(s)", len(summary.problems))
