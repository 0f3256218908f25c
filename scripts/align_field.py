"""Rule align_field: transforms table and stacked reference of one field."""
from ccdflow.fieldwork import align
from ccdflow.runlog import start_job

job = start_job(snakemake)
table = align(snakemake.params.frames, snakemake.output.transforms, snakemake.output.stack, snakemake.params.align)
job.log.info("%d of %d frames aligned", sum(table["ok"]), len(table))
