"""Rule lightcurves: differential light curves of a field's targets."""
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
