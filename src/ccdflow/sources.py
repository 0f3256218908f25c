"""Point sources and seeing of one image: detection, centroids, FWHM.

Used for alignment (:mod:`ccdflow.align`) and for a field's reference
catalogue (:mod:`ccdflow.catalogue`). Conventions: 0-based pixel coordinates,
``x`` = column, ``y`` = row.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from scipy import ndimage, optimize
from scipy.spatial import cKDTree

from . import bitmask

__all__ = ["detect_sources", "measure_fwhm"]
POS_ERR_FLOOR = 0.02     # px: systematics (blends, flat field); no single bright star owns a fit


def _background(data, valid) -> tuple[float, float]:
    """Sigma-clipped sky median and std, from a ~250k-pixel subsample (speed).
    No valid pixel: (0, inf), so nothing is ever detected or correlated."""
    if not np.any(valid):
        return 0.0, np.inf
    step = max(1, int(np.sqrt(data.size / 250_000)))
    _, med, std = sigma_clipped_stats(data[::step, ::step][valid[::step, ::step]], sigma=3.0, maxiters=5)
    return float(med), float(std)


def _window_centroid(img, valid, x, y, sigma, niter=12):
    """SExtractor-style windowed centroids (XWIN_IMAGE), vectorised over sources.

    Iterates x += 2 sum(w I dx) / sum(w I) with a Gaussian window: converges to
    the centre of any symmetric profile, with far less noise than isophotal or
    marginal-fit centroids. Masked and off-image pixels get no weight.
    """
    ny, nx = img.shape
    off = np.arange(-int(np.ceil(4 * sigma)), int(np.ceil(4 * sigma)) + 1)
    x, y = np.array(x, float), np.array(y, float)
    for _ in range(niter):
        rows, cols = np.rint(y)[:, None].astype(int) + off, np.rint(x)[:, None].astype(int) + off
        inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
        rc, cc = np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]
        dx, dy = (cols - x[:, None])[:, None, :], (rows - y[:, None])[:, :, None]
        r2 = dx ** 2 + dy ** 2
        window = np.where(r2 < 16 * sigma ** 2, np.exp(-r2 / (2 * sigma ** 2)), 0.0)
        w = np.where(inside & valid[rc, cc], window, 0.0) * img[rc, cc]
        s = w.sum(axis=(1, 2))
        s = np.where(s > 0, s, np.inf)   # no signal: stay put
        sx, sy = 2 * (w * dx).sum(axis=(1, 2)) / s, 2 * (w * dy).sum(axis=(1, 2)) / s
        x, y = x + np.clip(sx, -1, 1), y + np.clip(sy, -1, 1)   # damped: never jump to a neighbour
        if np.all(np.hypot(sx, sy) < 1e-4):
            break
    return x, y


def detect_sources(data, variance=None, mask=None, *, threshold_sigma=5.0, fwhm=3.0,
                   max_sources=300) -> Table:
    """Point sources, brightest first: x, y (windowed centroids), flux, peak,
    sharpness, roundness1/2, pos_err (rough 1-sigma radial error, px), saturated.

    DAOStarFinder finds them above ``threshold_sigma`` x the sky noise
    (sigma-clipped, or sqrt of the median variance when given); its sharpness
    cut drops most cosmic rays and hot pixels. Masked pixels count as sky,
    except SATURATED ones: the finder misses or splits flat, bled cores, so
    each connected saturated blob becomes one source at its centre, flagged
    ``saturated`` (good to ~1 px only, pos_err 1) but kept, e.g. for asterism
    matching; finder detections on or next to a blob are dropped.
    """
    from photutils.detection import DAOStarFinder

    data = np.asarray(data, dtype=float)
    mask = np.zeros(data.shape, bitmask.DTYPE) if mask is None else np.asarray(mask)
    valid = (mask == 0) & np.isfinite(data)
    med, std = _background(data, valid)
    if variance is not None:
        std = float(np.sqrt(np.median(np.asarray(variance)[valid][::7])))
    img = np.where(valid, data - med, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # NoDetectionsWarning: an empty table is the answer
        # min_separation=0: photutils' circular-footprint peak search is ~6x slower;
        # double peaks are merged below, after centroiding
        found = DAOStarFinder(threshold_sigma * std, fwhm, min_separation=0)(img)
    sat = ((mask & bitmask.SATURATED) != 0) & np.isfinite(data)
    blobs, _ = ndimage.label(sat)
    grow = int(np.ceil(fwhm))
    zone = np.zeros(data.shape, bool)   # saturated blobs grown by ~1 FWHM
    sat_rows = []
    for k, sl in enumerate(ndimage.find_objects(blobs), 1):
        box = tuple(slice(max(a.start - grow, 0), a.stop + grow) for a in sl)
        own = blobs[box] == k
        zone[box] |= ndimage.binary_dilation(own, iterations=grow)
        yy, xx = np.nonzero(own)
        sat_rows.append({"x": xx.mean() + box[1].start, "y": yy.mean() + box[0].start,
                         "flux": float(np.sum(np.where(own, data[box] - med, img[box]))),
                         "peak": float(np.max(data[box][own]) - med)})
    names = ("x", "y", "flux", "peak", "sharpness", "roundness1", "roundness2")
    cols = {c: np.zeros(0) for c in names}
    if found is not None and len(found):
        xname = "x_centroid" if "x_centroid" in found.colnames else "xcentroid"   # photutils 3 / 2
        found["x"], found["y"] = found[xname], found[xname.replace("x", "y", 1)]
        found = found[~zone[np.rint(found["y"]).astype(int), np.rint(found["x"]).astype(int)]]
        cols = {c: np.asarray(found[c], float) for c in names}
    n_found = len(cols["x"])
    out = Table({c: np.r_[v, [r.get(c, np.nan) for r in sat_rows]] for c, v in cols.items()},
                meta={"sky": med, "sky_std": std, "fwhm_guess": fwhm})
    out["saturated"] = np.arange(len(out)) >= n_found
    out.sort("flux", reverse=True)
    out = out[:2 * max_sources]   # room for the double peaks dropped below
    sigma, free = fwhm / 2.3548, ~out["saturated"]
    out["x"][free], out["y"][free] = _window_centroid(img, valid, out["x"][free], out["y"][free], sigma)
    # double peaks of one star converge to one position: keep the brighter (rows are sorted)
    pairs = cKDTree(np.c_[out["x"], out["y"]]).query_pairs(0.5 * fwhm, output_type="ndarray")
    out = out[np.setdiff1d(np.arange(len(out)), pairs.max(axis=1) if len(pairs) else [])][:max_sources]
    # radial centroid error ~ 2 sigma_psf / (S/N) (factor measured on simulated frames); noise:
    # sky over ~4 pi sigma^2 px, plus Poisson when a variance says the data are electrons
    flux = np.clip(np.asarray(out["flux"]), 1e-9, None)
    noise = np.sqrt(4 * np.pi * sigma ** 2 * std ** 2 + (flux if variance is not None else 0))
    out["pos_err"] = np.where(out["saturated"], 1.0, np.hypot(2 * sigma * noise / flux, POS_ERR_FLOOR))
    return out


def _moffat_fwhm(cut, use, x0, y0, sub=3) -> float:
    """FWHM of a circular Moffat (free beta, integrated over pixels) fitted to a cutout."""
    n = cut.shape[0]
    fine = (np.arange(n)[:, None] + (np.arange(sub) + 0.5) / sub - 0.5).ravel()

    def model(p):
        amp, xc, yc, alpha, beta, bkg = p
        q = 1 + ((fine - yc)[:, None] ** 2 + (fine - xc)[None, :] ** 2) / alpha ** 2
        return amp * (q ** -beta).reshape(n, sub, n, sub).mean(axis=(1, 3)) + bkg

    p0 = [cut.max(), x0, y0, 2.0, 3.0, np.median(cut[use])]
    bounds = ([0, x0 - 2, y0 - 2, 0.3, 1.1, -np.inf], [np.inf, x0 + 2, y0 + 2, 3 * n, 30, np.inf])
    try:
        p = optimize.least_squares(lambda p: (model(p) - cut)[use], p0, bounds=bounds, x_scale="jac").x
    except (ValueError, np.linalg.LinAlgError):
        return np.nan
    return float(2 * p[3] * np.sqrt(2 ** (1 / p[4]) - 1))


def measure_fwhm(data, sources, mask=None, *, n_stars=15, min_stars=3, min_snr_peak=20.0) -> float:
    """Median FWHM (px) of bright, isolated, unsaturated stars; NaN unless at
    least ``min_stars`` give a plausible (>= 0.8 px) value.

    Each of the ``n_stars`` brightest candidates gets a pixel-integrated Moffat
    fit with free beta: image moments, or a Gaussian evaluated at pixel centres,
    are biased by several per cent at FWHM ~ 3 px. Needing a few stars keeps a
    lone cosmic ray or hot pixel from setting the seeing.
    """
    if len(sources) == 0:
        return np.nan
    data = np.asarray(data, float)
    valid = np.isfinite(data) if mask is None else (np.asarray(mask) == 0) & np.isfinite(data)
    half = int(np.ceil(max(5, 2.5 * float(sources.meta.get("fwhm_guess", 3.0)))))
    std = sources.meta.get("sky_std") or _background(data, valid)[1]
    x, y = np.asarray(sources["x"], float), np.asarray(sources["y"], float)
    nearest = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=2)[0][:, 1] if len(x) > 1 else np.full(1, np.inf)
    ny, nx = data.shape
    keep = (~np.asarray(sources["saturated"], bool) & (nearest > 2 * half)
            & (x >= half) & (x < nx - half - 1) & (y >= half) & (y < ny - half - 1)
            & (np.asarray(sources["peak"]) > min_snr_peak * std))
    values = []
    for k in np.flatnonzero(keep)[:n_stars]:   # sources are brightest first
        ix, iy = int(round(x[k])), int(round(y[k]))
        sl = np.s_[iy - half:iy + half + 1, ix - half:ix + half + 1]
        if valid[sl].mean() > 0.9:
            values.append(_moffat_fwhm(data[sl], valid[sl], x[k] - ix + half, y[k] - iy + half))
    values = np.asarray(values)
    values = values[np.isfinite(values) & (values >= 0.8)]
    return float(np.median(values)) if values.size >= min_stars else np.nan
