"""Rule lightcurves: differential light curves of a field's targets."""
from ccdflow.fieldwork import light_curves
from ccdflow.runlog import start_job

job = start_job(snakemake)
log = job.log
summary = light_curves(snakemake.input.table, snakemake.input.catalogue, snakemake.input.transforms,
                       snakemake.output[0], snakemake.params.lightcurves, snakemake.params.label)
log.info("%d light curves", sum("error" not in v for v in summary.values()))
