"""Rule frame_stats: pixel statistics for one batch of frames."""
from ccdflow.framestats import run_batch
from ccdflow.inventory import batches, read_table
from ccdflow.runlog import start_job

log = start_job(snakemake)
table = read_table(snakemake.input.inventory)
members = batches(table, snakemake.config["batch"]["size"])[snakemake.wildcards.batch]
rows = table.set_index("frame_id").loc[members].reset_index().to_dict("records")
results = run_batch(rows, snakemake.output[0])
log.info("batch %s: %d frames", snakemake.wildcards.batch, len(results))
