"""Rule reference_catalogue: sources of a field's stacked reference image."""
from astropy.io import fits

from ccdflow.fieldwork import reference_catalogue
from ccdflow.photometry import ApertureSpec
from ccdflow.runlog import start_job

job = start_job(snakemake)
reference = fits.getval(snakemake.input.stack, "REFFRAME")
path = snakemake.params.frames[reference] if reference else None
catalogue = reference_catalogue(snakemake.input.stack, snakemake.input.transforms, path, snakemake.output[0],
                                snakemake.params.catalogue, ApertureSpec(**snakemake.params.apertures))
job.log.info("%d sources, %d saturated, %d at the edge, %d blended", len(catalogue), sum(catalogue["saturated"]),
             sum(catalogue["edge"]), sum(catalogue["blended"]))
