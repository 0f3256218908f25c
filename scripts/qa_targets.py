"""Rule qa_targets: finder chart of a field and the masked pixels in its targets' apertures."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ccdflow.qa import aperture_mask_plot, finder_chart
from ccdflow.runlog import start_job
from ccdflow.tables import write_table

job = start_job(snakemake)
log = job.log
label = snakemake.params.label
marked = finder_chart(snakemake.input.stack, snakemake.input.catalogue, snakemake.input.lightcurves,
                      snakemake.output.finder, f"{label}: finder chart")
table = aperture_mask_plot(snakemake.input.table, snakemake.input.lightcurves, snakemake.output.masks,
                           f"{label}: masked pixels in the targets' apertures")
write_table(table, snakemake.output.table)
log.info("%s: finder chart with %d target(s) %s", label, len(marked), marked)
