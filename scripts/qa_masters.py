"""Rule qa_masters: thumbnails of a night's masters."""
from ccdflow.qa import masters_plot
from ccdflow.runlog import log_to

log = log_to(snakemake.log[0])
masters_plot(snakemake.input.masters, snakemake.output[0], f"masters, night {snakemake.wildcards.night}")
log.info("%d masters", len(snakemake.input.masters))
