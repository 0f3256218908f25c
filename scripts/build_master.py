"""Rules master_bias, master_dark, master_flat (one per recipe): one master from its group's frames."""
from ccdflow.calibrate import CalibrationConfig
from ccdflow.calibselect import PlannedMaster
from ccdflow.inventory import read_table, rows_of
from ccdflow.recipes import RECIPES
from ccdflow.runlog import start_job
from ccdflow.stages import master_for

job = start_job(snakemake)
master = PlannedMaster(**snakemake.params.master)
master_for(
    master,
    rows_of(read_table(snakemake.input.inventory), master.frame_ids),
    snakemake.params.frames,
    CalibrationConfig.from_config(snakemake.params.calibration),
    snakemake.output[0],
    job.config_hash,
    subtract={kind: list(snakemake.input.get(kind, [])) for kind in RECIPES[master.kind].subtracts},
)
