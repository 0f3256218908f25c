"""Rule preprocess_calibrations: overscan, trim and gain for one batch of calibration frames."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ccdflow.calibrate import CalibrationConfig
from ccdflow.inventory import read_table, rows_of
from ccdflow.runlog import start_job
from ccdflow.stages import preprocess_batch

job = start_job(snakemake)
rows = rows_of(read_table(snakemake.input.inventory), snakemake.params.frames)
status = preprocess_batch(rows, snakemake.output[0], CalibrationConfig.from_config(snakemake.params.calibration))
job.log.info("batch %s: %d frames pre-processed", snakemake.wildcards.batch,
             sum(s["status"] == "ok" for s in status.values()))
