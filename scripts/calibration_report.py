"""Rule calibration_report: list masters and frames; fail, naming them, if frames were left uncalibrated."""
import sys

from ccdflow.atomic import write_text
from ccdflow.runlog import start_job
from ccdflow.stages import report

job = start_job(snakemake)
text, errors = report(snakemake.input.masters, snakemake.input.calibrated)
if errors:
    # Every other product exists by now (this rule runs last); fail so nobody misses it.
    for error in errors:
        job.log.error("uncalibrated: %s", error)
    print(text, file=sys.stderr)
    raise SystemExit(f"{len(errors)} science frame(s) could not be calibrated:\n  " + "\n  ".join(errors))
write_text(snakemake.output[0], text)
