"""Rule simulate_night: write the simulated raw night and its truth."""
from pathlib import Path

from ccdflow.runlog import start_job
from ccdflow.simulate import NightSpec, simulate_night

job = start_job(snakemake)
log = job.log
spec = NightSpec.from_dict(dict(snakemake.params.spec["overrides"]), base=snakemake.params.spec["preset"])
outdir = Path(snakemake.output.raw).parent
truth = simulate_night(outdir, spec)
# simulate_night writes <outdir>/raw and <outdir>/truth, which are this rule's outputs.
assert Path(snakemake.output.truth) == outdir / "truth", "truth folder must sit beside raw/"
log.info("simulated %s files into %s (seed %s)", sum(truth["counts"].values()), outdir, spec.seed)
