"""Rule manifest: every product of the campaign with its checksums and the job that made it."""
from ccdflow.completeness import Planned, find_damage
from ccdflow.manifest import write_manifest
from ccdflow.runlog import start_job

job = start_job(snakemake)
log = job.log
damage = find_damage(Planned(**snakemake.params.planned))
if damage:  # a product the plan makes is not there: say which, list nothing as complete
    raise SystemExit("planned products are missing or incomplete (rerun the same command to rebuild them):\n  "
                     + "\n  ".join(damage.lines()))
manifest = write_manifest(snakemake.params.campaign_dir, snakemake.params.campaign, snakemake.params.config,
                          snakemake.output[0], threads=snakemake.threads)
log.info("%d products, %d jobs, %d raw files", manifest["n_products"], len(manifest["jobs"]), len(manifest["raw"]))
