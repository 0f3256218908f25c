"""Rule qa_masters: thumbnails of a night's masters."""
from ccdflow.qa import masters_plot
from ccdflow.runlog import start_job

job = start_job(snakemake)
log = job.log
masters_plot(snakemake.input.masters, snakemake.output[0], f"masters, night {snakemake.wildcards.night}")
log.info("%d masters", len(snakemake.input.masters))
