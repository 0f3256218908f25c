"""Rule photometry: forced aperture photometry on one chunk of a field's frames."""
from ccdflow.fieldwork import photometry_frames
from ccdflow.photometry import ApertureSpec
from ccdflow.runlog import start_job

job = start_job(snakemake)
frames = [{"frame_id": fid, "path": path} for fid, path in snakemake.params.frames.items()]
status = photometry_frames(frames, snakemake.input.transforms, snakemake.input.catalogue, snakemake.output[0],
                           ApertureSpec(**snakemake.params.apertures), snakemake.input.hot_pixels)
job.log.info("chunk %s: %d frames measured", snakemake.wildcards.chunk,
             sum(s["status"] == "ok" for s in status.values()))
