"""Rules master_bias, master_dark, master_flat (one per recipe): one master from its group's frames."""
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
