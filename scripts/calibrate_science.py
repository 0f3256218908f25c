"""Rule calibrate_science: one batch of science frames to calibrated products."""
from ccdflow.calibrate import CalibrationConfig
from ccdflow.inventory import read_table, rows_of
from ccdflow.runlog import start_job
from ccdflow.stages import calibrate_batch

job = start_job(snakemake)
rows = rows_of(read_table(snakemake.input.inventory), snakemake.params.frames)
status = calibrate_batch(rows, snakemake.params.candidates, snakemake.output[0],
                         CalibrationConfig.from_config(snakemake.params.calibration), job.config_hash)
job.log.info("batch %s: %d calibrated, %d not", snakemake.wildcards.batch,
             sum(s["status"] == "ok" for s in status.values()), sum(s["status"] != "ok" for s in status.values()))
