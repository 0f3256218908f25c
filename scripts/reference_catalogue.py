"""Rule reference_catalogue: sources of a field's stacked reference image."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from astropy.io import fits

from ccdflow.fieldwork import hot_pixel_map, reference_catalogue
from ccdflow.photometry import ApertureSpec
from ccdflow.runlog import start_job

job = start_job(snakemake)
reference = fits.getval(snakemake.input.stack, "REFFRAME")
path = snakemake.params.frames[reference] if reference else None
catalogue = reference_catalogue(snakemake.input.stack, snakemake.input.transforms, path, snakemake.output.catalogue,
                                snakemake.params.catalogue, ApertureSpec(**snakemake.params.apertures))
job.log.info("%d sources, %d saturated, %d at the edge, %d blended", len(catalogue), sum(catalogue["saturated"]),
             sum(catalogue["edge"]), sum(catalogue["blended"]))
n_hot = hot_pixel_map(snakemake.params.frames, snakemake.input.transforms, snakemake.output.catalogue, path,
                      snakemake.output.hot_pixels)
job.log.info("%d hot pixels found from the science frames", n_hot)
