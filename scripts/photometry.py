"""Rule photometry: forced aperture photometry on one chunk of a field's frames."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ccdflow.fieldwork import photometry_frames
from ccdflow.photometry import ApertureSpec
from ccdflow.runlog import start_job

job = start_job(snakemake)
frames = [{"frame_id": fid, "path": path} for fid, path in snakemake.params.frames.items()]
status = photometry_frames(frames, snakemake.input.transforms, snakemake.input.catalogue, snakemake.output[0],
                           ApertureSpec(**snakemake.params.apertures), snakemake.input.hot_pixels)
job.log.info("chunk %s: %d frames measured", snakemake.wildcards.chunk,
             sum(s["status"] == "ok" for s in status.values()))
