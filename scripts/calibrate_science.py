"""Rule calibrate_science: one batch of science frames to calibrated products."""
from ccdflow.calibrate import CalibrationConfig
from ccdflow.inventory import batches, read_table
from ccdflow.provenance import config_hash
from ccdflow.runlog import start_job
from ccdflow.stages import calibrate_batch

log = start_job(snakemake)
table = read_table(snakemake.input.inventory)
members = batches(table, snakemake.config["batch"]["size"], types=["science"])[snakemake.wildcards.batch]
rows = table.set_index("frame_id").loc[members].reset_index().to_dict("records")
masters = {kind: list(snakemake.input.get(kind, [])) for kind in ("bias", "dark", "flat")}
status = calibrate_batch(rows, masters, snakemake.output[0], CalibrationConfig.from_config(snakemake.params.calibration),
                         config_hash(snakemake.config))
log.info("batch %s: %d calibrated, %d errors", snakemake.wildcards.batch,
         sum(s["status"] == "ok" for s in status.values()), sum(s["status"] != "ok" for s in status.values()))
