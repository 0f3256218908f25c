"""Rule field_photometry: merge a field's per-frame photometry into one table with BJD_TDB."""
from ccdflow.fieldwork import merge_field
from ccdflow.inventory import read_table, rows_of
from ccdflow.runlog import start_job

job = start_job(snakemake)
rows = rows_of(read_table(snakemake.input.inventory), snakemake.params.frames)
long = merge_field(snakemake.input.photometry, rows, snakemake.input.transforms, snakemake.output.table,
                   snakemake.output.frames)
job.log.info("%d photometry rows", len(long))
