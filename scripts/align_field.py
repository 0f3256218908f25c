"""Rule align_field: transforms table and stacked reference of one field."""
from ccdflow.fieldwork import align
from ccdflow.fields import plan_fields
from ccdflow.inventory import read_table
from ccdflow.runlog import start_job
from ccdflow.stages import product_paths

log = start_job(snakemake)
field = plan_fields(read_table(snakemake.input.inventory))[f"{snakemake.wildcards.night}/{snakemake.wildcards.fid}"]
paths = product_paths(snakemake.input.calibrated, field.frame_ids)
table = align(paths, snakemake.output.transforms, snakemake.output.stack, snakemake.params.align)
log.info("%s: %d of %d frames aligned", field.label, sum(table["ok"]), len(table))
