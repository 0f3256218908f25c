"""Rule lightcurves: differential light curves of a field's targets."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ccdflow.fieldwork import light_curves
from ccdflow.inventory import read_table
from ccdflow.runlog import start_job

job = start_job(snakemake)
log = job.log
inventory = read_table(snakemake.input.inventory)  # in time order: a pixel target's default frame is the first
frames = {row.frame_id: {"filename": row.filename, "amplifiers": row.amplifiers, "exptime": row.exptime}
          for row in inventory.itertuples() if row.imagetyp == "science"}
summary = light_curves(snakemake.input.table, snakemake.input.catalogue, snakemake.input.transforms,
                       snakemake.input.stack, frames, snakemake.output[0], snakemake.params.lightcurves,
                       snakemake.params.label)
log.info("%d light curves", sum("error" not in v for v in summary.values()))
