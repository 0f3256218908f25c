"""Rule qa_field: conditions and noise plots of one field."""
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
conditions_plot(snakemake.input.frames, snakemake.output.conditions, label)
table = noise_plot(snakemake.input.table, snakemake.params.aperture, read_noise, snakemake.output.noise, label)
write_table(table, snakemake.output.table)
log.info("%s: %d stars in the noise plot", label, len(table))
