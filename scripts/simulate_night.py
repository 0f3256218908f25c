"""Rule simulate_night: write the simulated raw night and its truth."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

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
