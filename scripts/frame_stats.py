"""Rule frame_stats: pixel statistics for one batch of frames."""
from ccdflow.framestats import run_batch
from ccdflow.inventory import read_table, rows_of
from ccdflow.runlog import start_job

job = start_job(snakemake)
rows = rows_of(read_table(snakemake.input.inventory), snakemake.params.frames)
results = run_batch(rows, snakemake.output[0])
job.log.info("batch %s: %d frames", snakemake.wildcards.batch, len(results))
