"""Forced-photometry speed: ccdflow.photometry against photutils doing the same job.

Builds a 2048x2048 synthetic frame (3,000 Moffat stars from
``ccdflow.simulate.render_stars``, FWHM 3 px, sky 1000 e-, read noise 5 e-,
Poisson noise, variance = model + rn^2, a few cosmic-ray pixels masked) and
times, best of ``--repeat`` runs each, in one process:

* ccdflow: ``forced_photometry`` with the default ``ApertureSpec`` -- 3 fixed +
  4 FWHM radii (7 apertures), sigma-clipped annulus sky, re-centroiding, errors
  from the variance plane and flags;
* photutils (the peer): ``aperture_photometry`` with the same 7
  ``CircularAperture`` (method='exact', error=sqrt(variance), mask) plus
  ``ApertureStats`` on the same ``CircularAnnulus`` with ``SigmaClip(3)``
  (median + std), then the background subtraction and error propagation;
* for information, the peer plus ``centroid_sources(centroid_com)`` so that it
  also re-centroids like ccdflow does.

Prints both times, the ratio, and how far apart the two flux sets are
(measured at the predicted positions, i.e. with re-centroiding off, so the
comparison checks the geometry and sky, not the centroids).

    python benchmarks/bench_photometry.py [--repeat 3] [--nstars 3000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SIZE, FWHM, BETA, SKY, RN = 2048, 3.0, 3.0, 1000.0, 5.0


def make_frame(nstars: int, seed: int = 7):
    from ccdflow import bitmask
    from ccdflow.simulate import render_stars

    rng = np.random.default_rng(seed)
    x, y = rng.uniform(25, SIZE - 25, nstars), rng.uniform(25, SIZE - 25, nstars)
    flux = 10 ** rng.uniform(3, 6, nstars)
    model = render_stars(SIZE, SIZE, x, y, flux, FWHM, BETA) + SKY
    data = (rng.poisson(model) + rng.normal(0, RN, model.shape)).astype(np.float32)
    variance = (model + RN ** 2).astype(np.float32)
    mask = bitmask.empty(data.shape)
    hits = rng.integers(0, SIZE * SIZE, 2000)
    mask.flat[hits] |= bitmask.COSMIC_RAY
    # predicted positions: truth + alignment-like error of ~0.2 px
    pred = np.column_stack([x, y]) + rng.normal(0, 0.2, (nstars, 2))
    return data, variance, mask, pred


def run_ccdflow(data, variance, mask, pred, recentroid=True):
    from ccdflow.photometry import ApertureSpec, forced_photometry

    spec = ApertureSpec() if recentroid else ApertureSpec(recentroid_max_px=0)
    return forced_photometry(data, variance, mask, pred, FWHM, spec)


def run_photutils(data, variance, mask, pred, centroid=False):
    from astropy.stats import SigmaClip
    from photutils.aperture import (ApertureStats, CircularAnnulus, CircularAperture,
                                    aperture_photometry)
    from photutils.centroids import centroid_com, centroid_sources

    from ccdflow.photometry import ApertureSpec

    spec = ApertureSpec()
    radii = [r for _, r in spec.radii(FWHM)]
    inner, outer = spec.annulus(FWHM)
    bad = mask != 0
    positions = pred
    if centroid:
        cx, cy = centroid_sources(data, pred[:, 0], pred[:, 1], box_size=7, mask=bad,
                                  centroid_func=centroid_com)
        positions = np.column_stack([cx, cy])
    apertures = [CircularAperture(positions, r) for r in radii]
    phot = aperture_photometry(data, apertures, error=np.sqrt(variance), mask=bad, method="exact")
    stats = ApertureStats(data, CircularAnnulus(positions, inner, outer), mask=bad,
                          sigma_clip=SigmaClip(sigma=3.0, maxiters=5))
    bkg, std, nsky = stats.median, stats.std, stats.sum_aper_area.value
    out = []
    for k, ap in enumerate(apertures):
        area = ap.area_overlap(data, mask=bad)
        flux = phot[f"aperture_sum_{k}"] - bkg * area
        err = np.sqrt(phot[f"aperture_sum_err_{k}"] ** 2 + area ** 2 * std ** 2 / nsky)
        out.append((radii[k], np.asarray(flux), np.asarray(err)))
    return out


def best_of(func, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nstars", type=int, default=3000)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    data, variance, mask, pred = make_frame(args.nstars)
    print(f"frame {SIZE}x{SIZE}, {args.nstars} stars, 7 apertures + annulus "
          f"(made in {time.perf_counter() - t0:.1f} s); best of {args.repeat}")

    t_ccd, table = best_of(lambda: run_ccdflow(data, variance, mask, pred), args.repeat)
    t_ccd0, table0 = best_of(lambda: run_ccdflow(data, variance, mask, pred, False), args.repeat)
    t_pu, peer = best_of(lambda: run_photutils(data, variance, mask, pred), args.repeat)
    t_puc, _ = best_of(lambda: run_photutils(data, variance, mask, pred, True), args.repeat)
    print(f"ccdflow forced_photometry (centroid+sky+7 apertures+flags): {t_ccd:8.3f} s")
    print(f"ccdflow forced_photometry, re-centroiding off:              {t_ccd0:8.3f} s")
    print(f"photutils aperture_photometry + ApertureStats(annulus):     {t_pu:8.3f} s")
    print(f"photutils same + centroid_sources(centroid_com):            {t_puc:8.3f} s")
    print(f"ratio photutils / ccdflow: {t_pu / t_ccd:.1f}x (like for like, no centroid: "
          f"{t_pu / t_ccd0:.1f}x; both centroiding: {t_puc / t_ccd:.1f}x)")

    # Agreement at the predicted positions (sky: ccdflow clipped mean, photutils clipped median).
    names = list(dict.fromkeys(table0["aperture"]))
    for k, (r, f_pu, e_pu) in enumerate(peer):
        rows = table0[table0["aperture"] == names[k]]
        ok = (rows["flag"] == 0) & np.isfinite(f_pu)
        dflux = (rows["flux"][ok] - f_pu[ok]) / rows["flux_err"][ok]
        print(f"  {names[k]:>9} (r={r:4.1f}px): median |dflux|/err = {np.median(np.abs(dflux)):.3f}, "
              f"median err ratio = {np.median(rows['flux_err'][ok] / e_pu[ok]):.3f}")


if __name__ == "__main__":
    main()
