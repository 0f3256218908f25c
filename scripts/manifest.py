"""Rule manifest: every product of the campaign with its checksums and the job that made it."""
from ccdflow.manifest import write_manifest
from ccdflow.runlog import start_job

job = start_job(snakemake)
log = job.log
manifest = write_manifest(snakemake.params.campaign_dir, snakemake.params.campaign, snakemake.params.config,
                          snakemake.output[0])
log.info("%d products, %d jobs, %d raw files", manifest["n_products"], len(manifest["jobs"]), len(manifest["raw"]))
