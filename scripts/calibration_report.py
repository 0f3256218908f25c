"""Rule calibration_report: list masters and frames, with the reason for every frame left uncalibrated.

Frames left uncalibrated do not stop the run here: the photometry of the others
goes on, and the run's last rule (check_run) fails naming them.
"""
from ccdflow.atomic import write_text
from ccdflow.runlog import start_job
from ccdflow.stages import report

job = start_job(snakemake)
text, errors = report(snakemake.input.masters, snakemake.input.calibrated)
for error in errors:
    job.log.error("uncalibrated: %s", error)
write_text(snakemake.output[0], text)
