"""Alignment time per 2048x2048 frame: ccdflow.align against astroalign.register.

Simulates a small benchmark-geometry night (2048x2048, 1000 stars, few
calibration frames) in ``--workdir`` (reused when already there), takes the
science frames from the raw data sections (bias from the overscan, gain from
the spec, saturated pixels and the true cosmic-ray pixels masked, as a
calibration would), and then times per non-reference frame:

* ccdflow: ``detect_sources`` + ``find_transform`` against the reference source
  list (the reference's own detection is timed once and reported apart); no
  pixel is resampled;
* astroalign: ``register(frame, reference)`` (detects in both images, finds
  the transform and resamples the frame), the usual one-call peer.

Both are also scored against the true transform (RMS over catalogue stars of
the reference -> frame mapping; astroalign's via ``find_transform``, which is
what ``register`` uses).

    python benchmarks/bench_align.py [--frames 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table

from ccdflow import align
from ccdflow.simulate import NightSpec, simulate_night, star_positions, truth_calibrated


def load_night(workdir: Path, n_frames: int):
    spec = NightSpec.from_dict({"n_science": n_frames, "n_bias": 3, "n_dark_per_exptime": 2,
                                "n_flat_per_filter": 3, "dark_exptimes": [60.0]}, base="benchmark")
    if not (workdir / "truth" / "frames.ecsv").exists():
        t0 = time.perf_counter()
        simulate_night(workdir, spec)
        print(f"simulated {n_frames} science frames in {time.perf_counter() - t0:.0f} s")
    truth = Table.read(workdir / "truth" / "frames.ecsv", fill_values=[])
    truth = truth[truth["imagetyp"] == "OBJECT"][:n_frames]
    frames = [truth_calibrated(workdir, spec, name) for name in truth["filename"]]
    stars = Table.read(workdir / "truth" / "stars.ecsv")
    return spec, truth, stars, frames


def true_xy(spec, row, stars):
    return star_positions(spec.nx, spec.ny, stars["x"], stars["y"], row["dx"], row["dy"], row["rotation_deg"])


def rms_vs_truth(inverse_apply, spec, truth, stars, i, ref):
    p_ref, p = true_xy(spec, truth[ref], stars), true_xy(spec, truth[i], stars)
    lo, hi = 20, spec.nx - 21
    use = (np.all((p > lo) & (p < hi), axis=1) & np.all((p_ref > lo) & (p_ref < hi), axis=1)
           & ~np.asarray(stars["is_saturated"]))
    d = inverse_apply(p_ref[use]) - p[use]
    return float(np.sqrt(np.mean(np.sum(d ** 2, axis=1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    import astroalign
    import photutils.detection  # noqa: F401  (imported before timing starts)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_align_"))
    spec, truth, stars, frames = load_night(workdir, args.frames)
    ref = 0
    img = lambda f: np.where(f["mask"] == 0, f["data"], np.nan)

    def detect(f):
        s = align.detect_sources(f["data"], f["variance"], f["mask"], fwhm=3.0)
        return s[~s["saturated"]]

    t0 = time.perf_counter()
    rsrc = detect(frames[ref])
    t_ref = time.perf_counter() - t0
    ref_xy = np.c_[rsrc["x"], rsrc["y"]]
    print(f"{spec.nx}x{spec.ny}, {len(frames)} frames; "
          f"reference detection {t_ref:.2f} s ({len(rsrc)} sources)")
    print(f"{'frame':16s} {'ours_s':>7s} {'detect_s':>8s} {'fit_s':>6s} {'n_match':>7s} {'rms_true':>8s}"
          f" {'register_s':>10s} {'aa_rms_true':>11s}")
    ours, peers, errs, aa_errs = [], [], [], []
    for i, f in enumerate(frames):
        if i == ref:
            continue
        t0 = time.perf_counter()
        src = detect(f)
        t1 = time.perf_counter()
        t = align.find_transform(np.c_[src["x"], src["y"]], ref_xy, frame_err=src["pos_err"],
                                 ref_err=rsrc["pos_err"], frame_image=img(f), ref_image=img(frames[ref]))
        t2 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t3 = time.perf_counter()
            astroalign.register(f["data"], frames[ref]["data"])
            t4 = time.perf_counter()
            aa = astroalign.find_transform(f["data"], frames[ref]["data"])[0]
        err = rms_vs_truth(t.inverse_apply, spec, truth, stars, i, ref) if t.ok else np.nan
        aa_err = rms_vs_truth(lambda xy: aa.inverse(xy), spec, truth, stars, i, ref)
        ours.append(t2 - t0), peers.append(t4 - t3), errs.append(err), aa_errs.append(aa_err)
        print(f"{f['frame_id']:16s} {t2 - t0:7.2f} {t1 - t0:8.2f} {t2 - t1:6.2f} {t.n_matches:7d} {err:8.4f}"
              f" {t4 - t3:10.2f} {aa_err:11.4f}")
    mean_ours, mean_peer = float(np.mean(ours)), float(np.mean(peers))
    print(f"mean per frame: ccdflow {mean_ours:.2f} s (detection + transform, no resampling), "
          f"astroalign.register {mean_peer:.2f} s; ratio register/ccdflow = {mean_peer / mean_ours:.2f}")
    print(f"alignment error vs truth (RMS px): ccdflow median {np.nanmedian(errs):.4f}, "
          f"astroalign median {np.median(aa_errs):.4f}")
    # the whole stage: + FWHM per frame (Moffat fits), re-detection at the measured seeing
    t0 = time.perf_counter()
    ref, table = align.align_field(frames)
    per_frame = (time.perf_counter() - t0) / len(frames)
    errs = [rms_vs_truth(align.Transform.from_row(r).inverse_apply, spec, truth, stars, i, ref)
            for i, r in enumerate(table) if r["ok"] and i != ref]
    print(f"align_field: {per_frame:.2f} s per frame (all steps), {int(np.sum(table['ok']))}/{len(table)} ok, "
          f"reference {table['frame_id'][ref]}, median error vs truth {np.median(errs):.4f} px")


if __name__ == "__main__":
    main()
