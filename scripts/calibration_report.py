"""Rule calibration_report: list masters and frames, with the reason for every frame left uncalibrated.

Frames left uncalibrated do not stop the run here: the photometry of the others
goes on, and the run's last rule (check_run) fails naming them.
"""
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
from ccdflow.runlog import start_job
from ccdflow.stages import report

job = start_job(snakemake)
text, errors = report(snakemake.input.masters, snakemake.input.calibrated)
for error in errors:
    job.log.error("uncalibrated: %s", error)
write_text(snakemake.output[0], text)
