"""Rule preprocess_calibrations: overscan, trim and gain for one batch of calibration frames."""
from ccdflow.calibrate import CalibrationConfig
from ccdflow.inventory import read_table, rows_of
from ccdflow.runlog import start_job
from ccdflow.stages import preprocess_batch

job = start_job(snakemake)
rows = rows_of(read_table(snakemake.input.inventory), snakemake.params.frames)
status = preprocess_batch(rows, snakemake.output[0], CalibrationConfig.from_config(snakemake.params.calibration))
job.log.info("batch %s: %d frames pre-processed", snakemake.wildcards.batch,
             sum(s["status"] == "ok" for s in status.values()))
