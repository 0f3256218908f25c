"""Rule qa_field: conditions and noise plots of one field."""
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

import numpy as np

from ccdflow.tables import write_table
from ccdflow.inventory import read_table
from ccdflow.qa import conditions_plot, noise_plot
from ccdflow.runlog import start_job

job = start_job(snakemake)
log = job.log
label = snakemake.params.label
inventory = read_table(snakemake.input.inventory)
science = inventory[(inventory["imagetyp"] == "science") & (inventory["status"] == "ok")]
read_noise = float(np.nanmedian(science["read_noise"])) if len(science) else 0.0
conditions_plot(snakemake.input.frames, snakemake.output.conditions, label,
                Path(snakemake.input.lightcurves) / "transparency.ecsv")
table = noise_plot(snakemake.input.table, snakemake.params.aperture, read_noise, snakemake.output.noise, label)
write_table(table, snakemake.output.table)
log.info("%s: %d stars in the noise plot", label, len(table))
