"""Rule reference_catalogue: sources of a field's stacked reference image."""
from astropy.io import fits

from ccdflow.fieldwork import reference_catalogue
from ccdflow.photometry import ApertureSpec
from ccdflow.runlog import start_job
from ccdflow.stages import product_paths

log = start_job(snakemake)
reference = fits.getval(snakemake.input.stack, "REFFRAME")
path = product_paths(snakemake.input.calibrated, [reference])[reference] if reference else None
spec = ApertureSpec(**snakemake.params.apertures)
catalogue = reference_catalogue(snakemake.input.stack, snakemake.input.transforms, path, snakemake.output[0],
                                snakemake.params.catalogue, spec)
log.info("%d sources, %d saturated, %d at the edge, %d blended", len(catalogue), sum(catalogue["saturated"]),
         sum(catalogue["edge"]), sum(catalogue["blended"]))
