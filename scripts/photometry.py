"""Rule photometry: forced aperture photometry on one chunk of a field's frames."""
from ccdflow.fieldwork import photometry_frames
from ccdflow.fields import plan_fields
from ccdflow.inventory import read_table
from ccdflow.photometry import ApertureSpec
from ccdflow.runlog import start_job
from ccdflow.stages import product_paths

log = start_job(snakemake)
wc = snakemake.wildcards
field = plan_fields(read_table(snakemake.input.inventory))[f"{wc.night}/{wc.fid}"]
size = snakemake.config["batch"]["size"]
ids = field.frame_ids[int(wc.chunk) * size : (int(wc.chunk) + 1) * size]
paths = product_paths(snakemake.input.calibrated, ids)
status = photometry_frames([{"frame_id": f, "path": p} for f, p in paths.items()], snakemake.input.transforms,
                           snakemake.input.catalogue, snakemake.output[0], ApertureSpec(**snakemake.params.apertures))
log.info("%s chunk %s: %d frames measured", field.label, wc.chunk, sum(s["status"] == "ok" for s in status.values()))
