"""Rule manifest: every product of the campaign with its checksums and the job that made it."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

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
