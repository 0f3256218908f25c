"""Rule field_photometry: merge a field's per-frame photometry into one table with BJD_TDB."""
from ccdflow.fieldwork import merge_field
from ccdflow.fields import plan_fields
from ccdflow.inventory import read_table
from ccdflow.runlog import start_job

log = start_job(snakemake)
table = read_table(snakemake.input.inventory)
field = plan_fields(table)[f"{snakemake.wildcards.night}/{snakemake.wildcards.fid}"]
rows = table.set_index("frame_id").loc[list(field.frame_ids)].reset_index().to_dict("records")
long = merge_field(snakemake.input.photometry, rows, snakemake.input.transforms, snakemake.output.table,
                   snakemake.output.frames)
log.info("%s: %d photometry rows", field.label, len(long))
