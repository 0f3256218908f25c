"""Rules master_bias, master_dark, master_flat: one master from its group's frames."""
from ccdflow.calibrate import CalibrationConfig
from ccdflow.inventory import read_table
from ccdflow.provenance import config_hash
from ccdflow.runlog import start_job
from ccdflow.stages import master_for

log = start_job(snakemake)
wc = snakemake.wildcards
master_for(
    snakemake.params.kind,
    f"{wc.night}/{wc.gid}",
    read_table(snakemake.input.inventory),
    snakemake.input.proc,
    CalibrationConfig.from_config(snakemake.params.calibration),
    snakemake.output[0],
    config_hash(snakemake.config),
    bias_paths=snakemake.input.get("bias", []),
    dark_paths=snakemake.input.get("dark", []),
)
