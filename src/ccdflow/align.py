"""Frame-to-reference registration without resampling.

Every science frame gets a :class:`Transform` (a 3x3 matrix mapping its pixel
coordinates onto a chosen reference frame); photometry then places forced
apertures with :meth:`Transform.inverse_apply` on the frame's own pixels, so
pixels are resampled only in :func:`stack_reference`.

How a transform is found (:func:`find_transform`):

1. astroalign matches asterisms of the two source lists; its answer is only a
   starting point: all sources are then matched by nearest neighbour and the
   transform is re-fitted by weighted least squares with outlier clipping, which
   takes the error from ~0.3 px down to the centroid noise / sqrt(matches);
2. the fit is checked against :class:`AlignLimits` (rotation, scale, shift of
   the field centre); a well-supported transform outside the limits is a
   genuine failure (e.g. the telescope lost the field) and is not second-guessed;
3. if astroalign found nothing usable and images are given, a translation is
   taken from the FFT cross-correlation of the thresholded images and refined
   on the matched sources;
4. otherwise the transform fails with ``ok=False``, a NaN matrix and a reason:
   an identity is never returned for a frame that was not aligned.

Conventions: 0-based pixel coordinates, ``x`` = column, ``y`` = row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from scipy import fft, ndimage, optimize
from scipy.spatial import cKDTree

from . import bitmask

__all__ = ["AlignLimits", "Transform", "detect_sources", "measure_fwhm", "find_transform",
           "choose_reference", "align_field", "stack_reference"]

MATCH_RADIUS_PX = 2.0      # first nearest-neighbour match radius after astroalign / xcorr
POS_ERR_FLOOR = 0.01       # px; keeps a few very bright stars from owning the fit
XCORR_MAX_SECOND = 0.6     # second correlation peak must be below this fraction of the first
XCORR_MIN_SNR = 8.0        # correlation peak height over the surface's robust noise


@dataclass
class AlignLimits:
    """What a frame may differ from the reference by and still count as aligned.

    Rotation defaults to 2 deg: equatorial mounts rotate the field by far less
    in a night, so more means the pointing was lost (the simulator's
    ``pointing_lost`` frame is rotated by 5 deg and fails on this limit).
    """

    max_rotation_deg: float = 2.0
    max_scale_dev: float = 0.02      # |scale - 1|
    max_shift_px: float = 300.0      # displacement of the field centre
    min_matches: int = 5
    kind: str = "similarity"         # or "affine"


@dataclass
class Transform:
    """``matrix`` maps frame pixel coords (x, y, 1) to reference coords."""

    matrix: np.ndarray
    method: str                      # 'astroalign' | 'xcorr' | 'identity-reference'
    n_matches: int = 0
    residual_rms: float = np.nan     # px, RMS of matched-source residuals after the fit
    ok: bool = False
    reason: str = ""

    def apply(self, xy) -> np.ndarray:
        """(N, 2) frame -> reference coordinates."""
        return _apply(self.matrix, xy)

    def inverse_apply(self, xy) -> np.ndarray:
        """(N, 2) reference -> frame coordinates (to place forced apertures)."""
        return _apply(np.linalg.inv(self.matrix) if np.all(np.isfinite(self.matrix)) else self.matrix, xy)

    @property
    def rotation_deg(self) -> float:
        m = self.matrix   # the rotation part of a similarity; the mean one of an affine
        return float(np.degrees(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))

    @property
    def scale(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:2, :2]))))

    @property
    def shift(self) -> tuple[float, float]:
        """Translation column of the matrix (displacement of pixel (0, 0))."""
        return float(self.matrix[0, 2]), float(self.matrix[1, 2])

    def offset_at(self, x: float, y: float) -> tuple[float, float]:
        """Displacement frame -> reference of the point (x, y)."""
        (rx, ry), = self.apply([[x, y]])
        return float(rx - x), float(ry - y)

    @classmethod
    def from_row(cls, row) -> "Transform":
        """Rebuild from a row of the :func:`align_field` table."""
        m = np.array([[row["a"], row["b"], row["c"]], [row["d"], row["e"], row["f"]], [0, 0, 1]], float)
        return cls(m, str(row["method"]), int(row["n_matches"]), float(row["residual_rms"]),
                   bool(row["ok"]), str(row["reason"]))


def _apply(m: np.ndarray, xy) -> np.ndarray:
    xy = np.atleast_2d(np.asarray(xy, float))
    return xy @ m[:2, :2].T + m[:2, 2]


def _background(data, valid) -> tuple[float, float]:
    """Sigma-clipped sky median and std, from a subsample on large frames (speed)."""
    step = max(1, int(np.sqrt(data.size / 250_000)))
    sub, ok = data[::step, ::step], valid[::step, ::step]
    _, med, std = sigma_clipped_stats(sub[ok], sigma=3.0, maxiters=5)
    return float(med), float(std)


def _window_centroid(img, valid, x, y, sigma, niter=12):
    """SExtractor-style windowed centroids (XWIN), vectorised over all sources.

    Iterates x += 2 sum(w I dx) / sum(w I) with a Gaussian window; it converges
    to the centre of any symmetric profile and is far less noisy than
    isophotal or marginal-fit centroids. Masked / off-image pixels get no weight.
    """
    ny, nx = img.shape
    r = int(np.ceil(4 * sigma))
    off = np.arange(-r, r + 1)
    x, y = x.astype(float).copy(), y.astype(float).copy()
    for _ in range(niter):
        rows, cols = np.rint(y)[:, None].astype(int) + off, np.rint(x)[:, None].astype(int) + off
        inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
        rc, cc = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
        cut = img[rc[:, :, None], cc[:, None, :]]
        use = inside & valid[rc[:, :, None], cc[:, None, :]]
        dx, dy = (cols - x[:, None])[:, None, :], (rows - y[:, None])[:, :, None]
        r2 = dx ** 2 + dy ** 2
        w = np.where(use & (r2 < (4 * sigma) ** 2), np.exp(-r2 / (2 * sigma ** 2)), 0.0) * cut
        s = w.sum(axis=(1, 2))
        good = s > 0
        sx = np.where(good, 2 * (w * dx).sum(axis=(1, 2)) / np.where(good, s, 1), 0.0)
        sy = np.where(good, 2 * (w * dy).sum(axis=(1, 2)) / np.where(good, s, 1), 0.0)
        x, y = x + np.clip(sx, -1, 1), y + np.clip(sy, -1, 1)   # damped: never jump to a neighbour
        if np.all(np.hypot(sx, sy) < 1e-4):
            break
    return x, y


def detect_sources(data, variance=None, mask=None, *, threshold_sigma=5.0, fwhm=3.0,
                   max_sources=300) -> Table:
    """Point sources, brightest first: x, y (windowed centroids), flux, peak,
    sharpness, roundness1/2, pos_err (px, rough 1-sigma), saturated.

    DAOStarFinder finds them above ``threshold_sigma`` x the sky noise
    (sigma-clipped, or sqrt of the median variance when given); its
    sharpness cut drops most cosmic rays and hot pixels. Masked pixels are
    replaced by the sky first, except SATURATED ones, which keep their value so
    saturated stars are still found; those are flagged ``saturated`` (their
    centroids are unreliable) but kept, e.g. for asterism matching.
    """
    from photutils.detection import DAOStarFinder

    data = np.asarray(data, dtype=float)
    mask = np.zeros(data.shape, bitmask.DTYPE) if mask is None else np.asarray(mask)
    valid = (mask == 0) & np.isfinite(data)
    med, std = _background(data, valid)
    if variance is not None:
        std = float(np.sqrt(np.median(np.asarray(variance)[valid][::7])))
    sat = (mask & bitmask.SATURATED) != 0
    img = np.where(valid | (sat & np.isfinite(data)), data - med, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # NoDetectionsWarning: an empty table is the answer
        found = DAOStarFinder(threshold_sigma * std, fwhm)(img)
    cols = ["x", "y", "flux", "peak", "sharpness", "roundness1", "roundness2", "pos_err", "saturated"]
    if found is None or len(found) == 0:
        return Table({c: np.zeros(0, bool if c == "saturated" else float) for c in cols})
    found.sort("flux", reverse=True)
    found = found[:max_sources]
    xname = "x_centroid" if "x_centroid" in found.colnames else "xcentroid"
    x0, y0 = np.asarray(found[xname], float), np.asarray(found[xname.replace("x", "y", 1)], float)
    sigma = fwhm / 2.3548
    x, y = _window_centroid(np.where(valid, img, 0.0), valid, x0, y0, sigma)
    far = np.hypot(x - x0, y - y0) > fwhm   # wandered off (blend, artefact): keep the finder's value
    x, y = np.where(far, x0, x), np.where(far, y0, y)
    flux = np.asarray(found["flux"], float)
    if "daofind_mag" not in found.colnames:   # photutils < 3: flux is a peak/threshold ratio
        flux = np.asarray(found["peak"], float) * 2 * np.pi * sigma ** 2
    # centroid error ~ sigma_psf / S/N; noise from sky over ~4 pi sigma^2 px (+ Poisson if e-)
    noise = np.sqrt(4 * np.pi * sigma ** 2 * std ** 2 + (np.clip(flux, 0, None) if variance is not None else 0))
    pos_err = np.hypot(sigma * noise / np.clip(flux, 1e-9, None), POS_ERR_FLOOR)
    r = int(np.ceil(fwhm))   # a saturated pixel within ~1 FWHM taints the centroid
    sat_near = ndimage.maximum_filter(sat, size=2 * r + 1)
    iy, ix = np.clip(np.rint(y).astype(int), 0, data.shape[0] - 1), np.clip(np.rint(x).astype(int), 0, data.shape[1] - 1)
    return Table({"x": x, "y": y, "flux": flux, "peak": np.asarray(found["peak"], float),
                  "sharpness": found["sharpness"], "roundness1": found["roundness1"],
                  "roundness2": found["roundness2"], "pos_err": pos_err, "saturated": sat_near[iy, ix]},
                 meta={"sky": med, "sky_std": std, "fwhm_guess": fwhm})


def _moffat_fwhm(cut, use, x0, y0, sub=3) -> float:
    """FWHM of a circular Moffat (free beta, pixel-integrated) fitted to a cutout."""
    n = cut.shape[0]
    fine = (np.arange(sub) + 0.5) / sub - 0.5
    yy = (np.arange(n)[:, None] + fine).ravel()
    xx = yy.copy()

    def model(p):
        amp, xc, yc, alpha, beta, bkg = p
        q = 1 + ((yy - yc)[:, None] ** 2 + (xx - xc)[None, :] ** 2) / alpha ** 2
        return amp * (q ** -beta).reshape(n, sub, n, sub).mean(axis=(1, 3)) + bkg

    p0 = [cut.max(), x0, y0, 2.0, 3.0, np.median(cut[use])]
    lo, hi = [0, x0 - 2, y0 - 2, 0.3, 1.1, -np.inf], [np.inf, x0 + 2, y0 + 2, 3 * n, 30, np.inf]
    try:
        p = optimize.least_squares(lambda p: (model(p) - cut)[use], p0, bounds=(lo, hi), x_scale="jac").x
    except (ValueError, np.linalg.LinAlgError):
        return np.nan
    return float(2 * p[3] * np.sqrt(2 ** (1 / p[4]) - 1))


def measure_fwhm(data, sources, mask=None, *, n_stars=15, min_snr_peak=20.0) -> float:
    """Median FWHM (px) of bright, isolated, unsaturated stars; NaN if none.

    A pixel-integrated Moffat with free beta is fitted to each of the
    ``n_stars`` brightest candidates: image moments or an un-integrated
    Gaussian would be biased by several per cent at FWHM ~ 3 px.
    """
    data = np.asarray(data, float)
    valid = np.isfinite(data) if mask is None else (np.asarray(mask) == 0) & np.isfinite(data)
    if len(sources) == 0:
        return np.nan
    guess = float(sources.meta.get("fwhm_guess", 3.0))
    half = int(np.ceil(max(5, 2.5 * guess)))
    std = sources.meta.get("sky_std") or _background(data, valid)[1]
    xy = np.c_[sources["x"], sources["y"]]
    dist, _ = cKDTree(xy).query(xy, k=2) if len(xy) > 1 else (np.full((1, 2), np.inf), None)
    ny, nx = data.shape
    x, y = xy[:, 0], xy[:, 1]
    keep = (~np.asarray(sources["saturated"], bool) & (dist[:, 1] > 2 * half)
            & (x >= half) & (x < nx - half - 1) & (y >= half) & (y < ny - half - 1)
            & (np.asarray(sources["peak"]) > min_snr_peak * std))
    values = []
    for k in np.flatnonzero(keep)[:n_stars]:   # sources are brightest first
        ix, iy = int(round(x[k])), int(round(y[k]))
        sl = np.s_[iy - half:iy + half + 1, ix - half:ix + half + 1]
        if valid[sl].mean() > 0.9:
            values.append(_moffat_fwhm(data[sl], valid[sl], x[k] - ix + half, y[k] - iy + half))
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else np.nan


def _fit(src, dst, w, kind) -> np.ndarray:
    """Weighted least-squares 3x3 matrix src -> dst ('translation'|'similarity'|'affine')."""
    m = np.eye(3)
    if kind == "translation":
        m[:2, 2] = np.average(dst - src, axis=0, weights=w)
        return m
    sw = np.sqrt(w)
    x, y, one, zero = src[:, 0], src[:, 1], np.ones(len(src)), np.zeros(len(src))
    if kind == "similarity":   # X = a x - b y + tx, Y = b x + a y + ty
        A = np.vstack([np.c_[x, -y, one, zero], np.c_[y, x, zero, one]]) * np.r_[sw, sw][:, None]
        a, b, tx, ty = np.linalg.lstsq(A, np.r_[dst[:, 0] * sw, dst[:, 1] * sw], rcond=None)[0]
        m[:2] = [[a, -b, tx], [b, a, ty]]
    elif kind == "affine":
        A = np.c_[x, y, one] * sw[:, None]
        m[0] = np.linalg.lstsq(A, dst[:, 0] * sw, rcond=None)[0]
        m[1] = np.linalg.lstsq(A, dst[:, 1] * sw, rcond=None)[0]
    else:
        raise ValueError(f"unknown transform kind {kind!r}; use 'similarity' or 'affine'")
    return m


def _refine(frame_xy, ref_xy, m0, w, kind, min_n):
    """Match every frame source to its nearest reference source under the
    current matrix, re-fit on all matches, clip outliers; repeat.

    Returns (matrix, n_matches, residual_rms); matrix is None below ``min_n`` matches.
    """
    tree, m, radius = cKDTree(ref_xy), m0, MATCH_RADIUS_PX
    n, rms = 0, np.nan
    for _ in range(6):
        d, j = tree.query(_apply(m, frame_xy), distance_upper_bound=radius)
        hit = np.flatnonzero(np.isfinite(d))
        # one reference source takes only its closest frame source
        hit = hit[np.argsort(d[hit])]
        hit = hit[np.unique(j[hit], return_index=True)[1]]
        if hit.size < max(min_n, 2 if kind == "translation" else 3):
            return None, int(hit.size), np.nan
        src, dst, ww = frame_xy[hit], ref_xy[j[hit]], w[hit]
        for _ in range(3):   # clip outliers (blends, artefacts) beyond 3x the robust scatter
            m = _fit(src, dst, ww, kind)
            res = np.hypot(*(_apply(m, src) - dst).T)
            cut = max(3 * 1.4826 * np.median(res) * 1.2, 0.05)
            if np.all(res <= cut) or (res <= cut).sum() < max(min_n, 3):
                break
            src, dst, ww = src[res <= cut], dst[res <= cut], ww[res <= cut]
        m = _fit(src, dst, ww, kind)
        n, rms = len(src), float(np.sqrt(np.mean(np.sum((_apply(m, src) - dst) ** 2, axis=1))))
        radius = float(np.clip(5 * rms, 0.5, MATCH_RADIUS_PX))
    return m, n, rms


def _limit_violations(m, pivot, limits) -> str:
    t = Transform(m, "")
    dx, dy = t.offset_at(*pivot)
    bad = []
    if abs(t.rotation_deg) > limits.max_rotation_deg:
        bad.append(f"rotation {t.rotation_deg:.2f} deg exceeds max_rotation_deg={limits.max_rotation_deg}")
    if abs(t.scale - 1) > limits.max_scale_dev:
        bad.append(f"scale {t.scale:.4f} deviates more than max_scale_dev={limits.max_scale_dev}")
    if np.hypot(dx, dy) > limits.max_shift_px:
        bad.append(f"shift {np.hypot(dx, dy):.1f} px exceeds max_shift_px={limits.max_shift_px}")
    return "; ".join(bad)


def _xcorr_image(img) -> np.ndarray:
    """Sky-subtracted image in noise units, thresholded at 3 sigma and clipped at 30:
    only stars correlate, and no single bright star dominates."""
    img = np.asarray(img, float)
    ok = np.isfinite(img)
    med, std = _background(img, ok)
    z = np.where(ok, (img - med) / max(std, 1e-12), 0.0)
    return np.where(z > 3, np.minimum(z, 30), 0.0)


def _xcorr_shift(frame_image, ref_image, max_shift):
    """Translation frame -> reference from the cross-correlation peak.

    Returns (shift_xy or None, reason). The peak must stand out: XCORR_MIN_SNR
    above the surface's noise and the best other peak below XCORR_MAX_SECOND of it.
    """
    a, b = _xcorr_image(ref_image), _xcorr_image(frame_image)
    s = int(np.ceil(max_shift))
    shape = [fft.next_fast_len(max(a.shape[k], b.shape[k]) + s) for k in (0, 1)]
    c = fft.irfft2(fft.rfft2(a, shape) * np.conj(fft.rfft2(b, shape)), shape)
    # c[k] = sum_x a(x + k) b(x): peaks where reference = frame + k; keep |k| <= max_shift
    c = np.roll(c, (s, s), axis=(0, 1))[:2 * s + 1, :2 * s + 1]
    ky, kx = np.unravel_index(np.argmax(c), c.shape)
    peak = c[ky, kx]
    _, med, std = sigma_clipped_stats(c[::max(1, s // 100), ::max(1, s // 100)], sigma=3, maxiters=3)
    around = c.copy()
    around[max(ky - 3, 0):ky + 4, max(kx - 3, 0):kx + 4] = -np.inf
    second = float(around.max())
    snr = (peak - med) / max(std, 1e-12)
    if peak <= 0 or snr < XCORR_MIN_SNR or second > XCORR_MAX_SECOND * peak:
        return None, (f"cross-correlation peak not significant (S/N {snr:.1f}, "
                      f"second peak {second / peak if peak > 0 else np.nan:.2f} of the first)")

    def parabola(lo, mid, hi):   # sub-pixel vertex, only a start for the source refinement
        den = lo - 2 * mid + hi
        return 0.0 if den >= 0 else 0.5 * (lo - hi) / den

    fy = parabola(*c[ky - 1:ky + 2, kx]) if 0 < ky < 2 * s else 0.0
    fx = parabola(*c[ky, kx - 1:kx + 2]) if 0 < kx < 2 * s else 0.0
    return np.array([kx - s + fx, ky - s + fy]), ""
