"""Rule preprocess_calibrations: overscan, trim and gain for one batch of calibration frames."""
from ccdflow.calibrate import CalibrationConfig
from ccdflow.inventory import batches, read_table
from ccdflow.runlog import start_job
from ccdflow.stages import preprocess_batch

log = start_job(snakemake)
table = read_table(snakemake.input.inventory)
members = batches(table, snakemake.config["batch"]["size"], types=["bias", "dark", "flat"])[snakemake.wildcards.batch]
rows = table.set_index("frame_id").loc[members].reset_index().to_dict("records")
cfg = CalibrationConfig.from_config(snakemake.params.calibration)
status = preprocess_batch(rows, snakemake.output[0], cfg)
log.info("batch %s: %d frames pre-processed", snakemake.wildcards.batch, sum(s["status"] == "ok" for s in status.values()))
