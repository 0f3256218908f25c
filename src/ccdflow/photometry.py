"""Forced aperture photometry of many sources at once, with honest errors and flags.

``forced_photometry(data, variance, mask, positions, fwhm)`` measures every
source at its predicted position (from the alignment), optionally refined by a
re-centroid, through a set of circular apertures (fixed radii in px and
multiples of the frame FWHM) with a local sigma-clipped sky from an annulus.
It returns a LONG table, one row per (source, radius).

Method (all sources are handled together in NumPy arrays, in chunks, instead of
one aperture object per source -- this is what makes it fast):

* Sky: pixels whose centres lie in the annulus ``[r_in, r_out)`` around the
  *predicted* position (any mask bit or non-finite value excluded), sigma-
  clipped about the median (``sky_sigma``, 5 iterations); the level is the
  clipped mean (default; unbiased for Poisson sky, matches the error below) or
  median; ``bkg_err`` (per pixel) = clipped std; error on the level =
  std / sqrt(n) (x sqrt(pi/2) for the median).
* Centroid: Gaussian-windowed first moment (SExtractor's XWIN), iterated on the
  sky-subtracted pixels around the predicted position; unlike a plain centre of
  mass it is not pulled toward the box centre by truncated wings.  Only for
  sources with window S/N >= ``centroid_min_snr``: fainter ones keep the
  predicted position WITHOUT a flag (their own centroid would be noisier than
  the alignment; column ``centroided`` is False); when the centroid fails or
  moves more than ``recentroid_max_px`` the predicted position is kept and
  ``CENTROID_FAILED`` is set (the source may be blended or misidentified).
* Apertures: exact circle/pixel overlap weights ``w`` computed analytically
  (same geometry as photutils ``method='exact'``).  flux = sum w (data - bkg)
  over usable pixels; flux_err^2 = sum w^2 variance + area^2 err(bkg)^2, with
  area = sum w over usable pixels.  (photutils sums w variance; w^2 is the
  variance of the weighted sum actually reported -- ~1 % smaller error.)
* HOT pixels are measured like any other: the master dark took their charge
  out and the variance plane keeps its Poisson noise (``usable_bits``); a
  well-calibrated warm pixel at an aperture's edge must not cost a light curve
  every frame the star drifts over it.
* Masked (any other bit) or non-finite pixels inside an aperture, saturated
  ones excepted, are REPAIRED from the star's own radial profile while they
  hold at most ``repair_max_fraction`` of its flux (:mod:`ccdflow.repair`;
  ``n_repaired``, ``repaired_frac``; the row stays good). Beyond that they are
  EXCLUDED from flux and area: flux is then biased low, so the row gets
  ``MASKED`` plus ``n_masked`` and ``masked_frac`` (fraction of pi r^2 not
  measured, masked or off the image) and light-curve code rejects it.
* ``flag == 0`` means good: every bit marks a measurement to reject.

The annulus stays on the predicted position (the centroid needs its sky first);
the >= 2 px gap to the largest aperture covers the <= 1.5 px centroid shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import bottleneck as bn
import numpy as np
from astropy.table import Table

from ccdflow import bitmask

from .repair import MAX_REPAIR_FRACTION, repair_aperture_pixels

__all__ = ["ApertureSpec", "forced_photometry", "radius_names", "FLAG_NAMES",
           "MASKED", "SATURATED", "EDGE", "FEW_SKY", "CENTROID_FAILED"]

# ``flag`` column bits (per source and radius); 0 = good, any bit = reject
MASKED = 1            # >= 1 masked / non-finite pixel in the aperture (excluded from the sum)
SATURATED = 2         # a pixel with a saturation bit overlaps the aperture
EDGE = 4              # the aperture extends beyond the image (those pixels are missing)
FEW_SKY = 8           # < half of the annulus usable (or < 10 px); bkg/flux NaN if < 3 px
CENTROID_FAILED = 16  # centroid failed / diverged / moved > recentroid_max_px: predicted used
FLAG_NAMES = {MASKED: "MASKED", SATURATED: "SATURATED", EDGE: "EDGE", FEW_SKY: "FEW_SKY",
              CENTROID_FAILED: "CENTROID_FAILED"}

_CHUNK_PIXELS = 2_000_000   # pixels gathered per block of sources: bounds memory (~100 MB)
_MIN_SKY_PIXELS = 10
_GAUSS_SIGMA_PER_FWHM = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass
class ApertureSpec:
    """Apertures and sky annulus.

    ``radii_px``: fixed radii (px); ``radii_fwhm``: radii in units of the frame
    FWHM; ``annulus_fwhm``: sky annulus (inner, outer) in FWHM units, the inner
    radius raised to at least (largest aperture + 2 px) keeping the annulus
    width; ``recentroid_max_px``: largest accepted centroid shift (<= 0 turns
    re-centroiding off, no flag); ``centroid_box``: minimum side (px) of the
    centroid cutout (it grows to 2 ceil(1.5 FWHM) + 1); ``centroid_min_snr``:
    windowed S/N needed to centroid; ``sky_sigma``: clipping threshold;
    ``sky_stat``: ``"mean"`` or ``"median"`` of the clipped annulus;
    ``repair_max_fraction``: masked pixels in an aperture are repaired from the
    star's radial profile while they hold at most this fraction of its flux
    (:mod:`ccdflow.repair`; 0 turns repair off).
    """

    radii_px: tuple = (3.0, 5.0, 8.0)
    radii_fwhm: tuple = (1.0, 1.5, 2.0, 3.0)
    annulus_fwhm: tuple = (4.0, 6.0)
    recentroid_max_px: float = 1.5
    centroid_box: int = 7
    sky_sigma: float = 3.0
    centroid_min_snr: float = 10.0
    sky_stat: str = "mean"
    repair_max_fraction: float = MAX_REPAIR_FRACTION

    def radii(self, fwhm: float) -> list[tuple[str, float]]:
        """``[(name, radius_px), ...]``: fixed radii first, then FWHM multiples."""
        return ([(f"r{_fmt(r)}px", float(r)) for r in self.radii_px]
                + [(f"r{_fmt(m)}fwhm", float(m) * fwhm) for m in self.radii_fwhm])

    def annulus(self, fwhm: float) -> tuple[float, float]:
        """Sky annulus (inner, outer) in px for this FWHM."""
        r_max = max(r for _, r in self.radii(fwhm))
        inner_f, outer_f = (float(a) * fwhm for a in self.annulus_fwhm)
        inner = max(inner_f, r_max + 2.0)
        return inner, inner + max(outer_f - inner_f, 1.0)


def _fmt(value: float) -> str:
    """Stable radius label: one decimal (``3.0``, ``1.5``) unless more are needed."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


def radius_names(spec: ApertureSpec = ApertureSpec()) -> list[str]:
    """The ``aperture`` names produced for ``spec`` (independent of FWHM)."""
    return [name for name, _ in spec.radii(1.0)]


def forced_photometry(data, variance, mask, positions, fwhm, spec: ApertureSpec = ApertureSpec(), *,
                      saturation_bits: int = bitmask.SATURATED, usable_bits: int = bitmask.HOT,
                      ids=None) -> Table:
    """Aperture photometry of ``positions`` ((N, 2) 0-based x, y) on one frame.

    ``data`` (e-, sky not subtracted), ``variance`` (e^2) and ``mask`` (bitmask,
    nonzero = bad) share one 2-D shape; ``fwhm`` is the frame FWHM in px.
    Returns one row per (source, radius), source-major, with the columns of
    :data:`ccdflow.tables.PHOTOMETRY` but ``frame_id``: source_id, x, y
    (position used), x_pred, y_pred, centroided (x, y come from the centroid),
    aperture, radius_px, flux, flux_err, bkg, bkg_err (per pixel), n_sky,
    area (px actually summed), n_masked, masked_frac, mask_bits (the bitmask bits of
    every pixel the aperture overlaps, OR-ed: why pixels were repaired, left out
    or, HOT, measured), flag (0 = good; bits
    are the module constants ``MASKED`` ... ``CENTROID_FAILED``). Pixels whose
    only mask bits are in ``usable_bits`` (default HOT: dark-subtracted, their
    noise in ``variance``) are measured, not excluded.
    """
    data, variance, mask = np.asarray(data), np.asarray(variance), np.asarray(mask)
    if data.ndim != 2 or variance.shape != data.shape or mask.shape != data.shape:
        raise ValueError("data, variance and mask must be 2-D arrays of one shape")
    pos = np.asarray(positions, dtype=float).reshape(-1, 2)
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions must be finite")
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise ValueError(f"fwhm must be a positive number, got {fwhm!r}")
    if spec.sky_stat not in ("mean", "median"):
        raise ValueError(f"sky_stat must be 'mean' or 'median', got {spec.sky_stat!r}")
    ids = np.arange(len(pos)) if ids is None else np.asarray(ids)
    if len(ids) != len(pos):
        raise ValueError("ids and positions differ in length")

    radii = spec.radii(float(fwhm))
    if not all(np.isfinite(r) and r > 0 for _, r in radii):
        raise ValueError(f"aperture radii must be positive: {radii}")
    # One pass of the image for the "usable" test: a mask bit outside usable_bits or a non-finite value.
    unusable = (mask & ~np.asarray(usable_bits, dtype=mask.dtype)) != 0 if mask.dtype.kind in "ui" else mask != 0
    state = (unusable | ~np.isfinite(data) | ~np.isfinite(variance)).view(np.uint8)
    state |= ((mask & saturation_bits) != 0).view(np.uint8) << 1
    img = _Image(data, variance, state, mask if mask.dtype.kind in "ui" else None)
    # Sources go in blocks so that memory does not grow with N (or explode for a huge
    # FWHM); beyond a few hundred sources per block the speed no longer changes.
    per_source = (2 * math.ceil(spec.annulus(float(fwhm))[1]) + 3) ** 2
    chunk = int(np.clip(_CHUNK_PIXELS // per_source, 8, 512))
    parts = [_measure(img, pos[s:s + chunk], float(fwhm), radii, spec)
             for s in range(0, len(pos), chunk)]
    cols = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros((0, len(radii)))
            for k in ("x", "y", "centroided", "bkg", "bkg_err", "n_sky", "flux", "flux_err", "area",
                      "n_masked", "n_repaired", "repaired_frac", "mask_bits", "flags")}

    n, nr = len(pos), len(radii)
    rep = lambda a: np.repeat(np.asarray(a).reshape(n), nr)  # noqa: E731 - per-source -> per-row
    r_px = np.array([r for _, r in radii])
    area = cols["area"].ravel()
    table = Table({
        "source_id": rep(ids), "x": rep(cols["x"]), "y": rep(cols["y"]),
        "x_pred": rep(pos[:, 0]), "y_pred": rep(pos[:, 1]),
        "centroided": rep(cols["centroided"]).astype(bool),
        "aperture": np.tile(np.array([nm for nm, _ in radii]), n),
        "radius_px": np.tile(r_px, n),
        "flux": cols["flux"].ravel(), "flux_err": cols["flux_err"].ravel(),
        "bkg": rep(cols["bkg"]), "bkg_err": rep(cols["bkg_err"]),
        "n_sky": rep(cols["n_sky"]).astype(np.int32),
        "area": area, "n_masked": cols["n_masked"].ravel().astype(np.int32),
        "n_repaired": cols["n_repaired"].ravel().astype(np.int32),
        "repaired_frac": cols["repaired_frac"].ravel(),
        "masked_frac": np.clip(1.0 - area / np.tile(np.pi * r_px ** 2, n), 0.0, 1.0),
        "mask_bits": cols["mask_bits"].ravel().astype(np.int32),
        "flag": cols["flags"].ravel().astype(np.int32),
    })
    inner, outer = spec.annulus(float(fwhm))
    table.meta.update({"fwhm": float(fwhm), "annulus_px": [inner, outer], "sky_stat": spec.sky_stat,
                       "flag_bits": {v: k for k, v in FLAG_NAMES.items()}})
    return table


@dataclass
class _Image:
    data: np.ndarray
    variance: np.ndarray
    state: np.ndarray        # uint8 per pixel: 1 = unusable (mask bit / non-finite), 2 = saturated
    bits: np.ndarray | None = None   # the calibration bitmask (ccdflow.bitmask), for mask_bits

    def gather_bits(self, iy, ix, oy, ox):
        """The bitmask at rows iy + oy, cols ix + ox per source, (N, len(oy), len(ox)); 0 off the image."""
        if self.bits is None:
            return np.zeros((len(iy), len(oy), len(ox)), dtype=np.int64)
        ny, nx = self.bits.shape
        rows, cols = iy[:, None] + oy, ix[:, None] + ox
        off = ((rows < 0) | (rows >= ny))[:, :, None] | ((cols < 0) | (cols >= nx))[:, None, :]
        flat = (np.clip(rows, 0, ny - 1) * nx)[:, :, None] + np.clip(cols, 0, nx - 1)[:, None, :]
        return np.where(off, 0, self.bits.ravel().take(flat).astype(np.int64))

    def gather(self, iy, ix, oy, ox, square=True, variance=True):
        """Pixels at rows iy + oy, cols ix + ox per source: every (oy, ox) pair of the
        outer product -> (N, len(oy), len(ox)) if ``square``, else the paired offset
        lists -> (N, M).  Returns data, variance (or None), bad, saturated, off-image;
        off-image pixels count as bad."""
        ny, nx = self.data.shape
        rows, cols = iy[:, None] + oy, ix[:, None] + ox
        if square:
            off = ((rows < 0) | (rows >= ny))[:, :, None] | ((cols < 0) | (cols >= nx))[:, None, :]
            flat = (np.clip(rows, 0, ny - 1) * nx)[:, :, None] + np.clip(cols, 0, nx - 1)[:, None, :]
        else:
            off = (rows < 0) | (rows >= ny) | (cols < 0) | (cols >= nx)
            flat = np.clip(rows, 0, ny - 1) * nx + np.clip(cols, 0, nx - 1)
        state = self.state.ravel().take(flat)
        d = self.data.ravel().take(flat).astype(float)
        v = self.variance.ravel().take(flat).astype(float) if variance else None
        return d, v, ((state & 1) != 0) | off, ((state & 2) != 0) & ~off, off


def _measure(img: _Image, pos, fwhm, radii, spec: ApertureSpec) -> dict:
    """Sky, centroid and apertures for one chunk of sources."""
    n = len(pos)
    flags = np.zeros(n, dtype=np.int64)
    bkg, bkg_err, level_err, n_sky, few = _sky(img, pos, fwhm, spec)
    flags[few] |= FEW_SKY
    used, centroided, failed = _centroid(img, pos, bkg, fwhm, spec)
    flags[failed] |= CENTROID_FAILED

    r_all = [r for _, r in radii]
    h = math.ceil(max(r_all))                 # centre is within 0.5 px of the cutout centre
    ix, iy = np.rint(used[:, 0]).astype(int), np.rint(used[:, 1]).astype(int)
    dx, dy = used[:, 0] - ix, used[:, 1] - iy
    off = np.arange(-h, h + 1)
    d, v, bad, sat, outside = img.gather(iy, ix, off, off)
    good = ~bad
    d = np.where(good, d - bkg[:, None, None], 0.0)
    v = np.where(good, v, 0.0)
    col_off, row_off = off[None, :] - dx[:, None], off[None, :] - dy[:, None]   # from the centroid
    in_reach = np.hypot(row_off[:, :, None], col_off[:, None, :]) <= max(r_all) + 1
    repairable = bad & ~sat & ~outside & in_reach if spec.repair_max_fraction > 0 else np.zeros_like(bad)
    fix_d, fix_v, fixable = repair_aperture_pixels(d, v, good, repairable, col_off, row_off)

    out = {k: np.empty((n, len(radii))) for k in ("flux", "flux_err", "area", "n_masked", "n_repaired",
                                                   "repaired_frac")}
    out["flags"] = np.repeat(flags[:, None], len(radii), axis=1)
    bits = img.gather_bits(iy, ix, off, off)
    out["mask_bits"] = np.zeros((n, len(radii)), dtype=np.int64)
    for k, r in enumerate(r_all):
        hr = math.ceil(r)
        sl = (slice(None), slice(h - hr, h + hr + 1), slice(h - hr, h + hr + 1))
        w = _overlap_weights(dx, dy, r, hr)
        touched = w > 0
        wg = np.where(good[sl], w, 0.0)
        wf = np.where(fixable[sl], w, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            flux_good = np.einsum("nij,nij->n", wg, d[sl])
            flux_fix = np.einsum("nij,nij->n", wf, fix_d[sl])
            frac = np.abs(flux_fix) / (flux_good + flux_fix)
            noise = np.sqrt(np.einsum("nij,nij->n", wg * wg, v[sl]))
        # repaired pixels are kept while they hold a small part of the flux, or (faint
        # stars) a small part of its noise, and only if every masked pixel could be repaired
        unfixable = (touched & bad[sl] & ~outside[sl] & ~fixable[sl]).any(axis=(1, 2))
        keep = (wf.sum(axis=(1, 2)) > 0) & ~unfixable & (((frac >= 0) & (frac <= spec.repair_max_fraction))
                                                         | (np.abs(flux_fix) <= 0.5 * noise))
        wf = np.where(keep[:, None, None], wf, 0.0)
        area = wg.sum(axis=(1, 2)) + wf.sum(axis=(1, 2))
        masked = touched & bad[sl] & ~outside[sl] & ~(wf > 0)   # off-image is EDGE, not "masked"
        out["area"][:, k] = area
        out["n_masked"][:, k] = masked.sum(axis=(1, 2))
        out["n_repaired"][:, k] = (wf > 0).sum(axis=(1, 2))
        out["repaired_frac"][:, k] = np.where(keep, frac, 0.0)
        out["mask_bits"][:, k] = np.bitwise_or.reduce(np.where(touched, bits[sl], 0), axis=(1, 2))
        with np.errstate(invalid="ignore"):
            flux = flux_good + np.where(keep, flux_fix, 0.0)
            err = np.sqrt(np.einsum("nij,nij->n", wg * wg, v[sl]) + np.einsum("nij,nij->n", wf * wf, fix_v[sl])
                          + area ** 2 * level_err ** 2)
        empty = area <= 0
        out["flux"][:, k] = np.where(empty, np.nan, flux)
        out["flux_err"][:, k] = np.where(empty, np.nan, err)
        f = out["flags"][:, k]
        f[masked.any(axis=(1, 2))] |= MASKED
        f[(touched & sat[sl]).any(axis=(1, 2))] |= SATURATED
        f[(touched & outside[sl]).any(axis=(1, 2))] |= EDGE
    out.update(x=used[:, 0], y=used[:, 1], centroided=centroided, bkg=bkg, bkg_err=bkg_err, n_sky=n_sky)
    return out


def _overlap_weights(dx, dy, r, hr):
    """Exact overlap of circles (radius r, centres dx, dy from pixel (0, 0)) with the
    pixels at offsets -hr..hr: shape (N, 2hr+1, 2hr+1), [source, row, col].

    With F(x, y) = signed area of circle ∩ [0, x] x [0, y] (circle at the origin),
    a pixel's overlap is F at its 4 corners combined by inclusion-exclusion.  For
    x, y >= 0 (clipped to r): F = x y inside the circle, else
    y sqrt(r^2 - y^2) + G(x) - G(sqrt(r^2 - y^2)) with G(u) = integral_0^u sqrt(r^2 - t^2).
    Every transcendental term depends on x or on y alone, so they are 1-D.
    """
    edges = np.arange(-hr, hr + 2) - 0.5
    cx, cy = edges - dx[:, None], edges - dy[:, None]          # (N, K) corners rel. to centre
    ax, ay = np.minimum(np.abs(cx), r), np.minimum(np.abs(cy), r)
    r2 = r * r
    g = lambda u: 0.5 * (u * np.sqrt(r2 - u * u) + r2 * np.arcsin(u / r))  # noqa: E731
    sy = np.sqrt(r2 - ay * ay)                                  # circle's half-width at height y
    gx, gsy = g(ax), g(sy)
    axb, ayb, syb = ax[:, None, :], ay[:, :, None], sy[:, :, None]
    f = np.where(axb <= syb, axb * ayb, ayb * syb + gx[:, None, :] - gsy[:, :, None])
    f *= np.sign(cx)[:, None, :] * np.sign(cy)[:, :, None]
    w = f[:, 1:, 1:] - f[:, :-1, 1:] - f[:, 1:, :-1] + f[:, :-1, :-1]
    # F is O(r^2), so pixels just outside the circle get ~1e-14 of round-off: zero
    # them, or they would count as "touched" (masked / edge flags) by the aperture.
    w[w < 1e-12 * max(r2, 1.0)] = 0.0
    return np.minimum(w, 1.0)


def _sky(img: _Image, pos, fwhm, spec: ApertureSpec):
    """Sigma-clipped annulus statistics around the predicted positions.

    Returns level, per-pixel std, error of the level, pixel count, few-pixels flag.
    """
    inner, outer = spec.annulus(fwhm)
    # Candidate offsets: every pixel whose centre can fall in the annulus for a
    # source centre within 0.5 px of the pixel grid (|shift| <= 0.71 px).
    ho = math.ceil(outer) + 1
    oy, ox = np.mgrid[-ho:ho + 1, -ho:ho + 1]
    rr = np.hypot(oy, ox)
    keep = (rr >= inner - 0.75) & (rr < outer + 0.75)
    oy, ox = oy[keep], ox[keep]
    ix, iy = np.rint(pos[:, 0]).astype(int), np.rint(pos[:, 1]).astype(int)
    dx, dy = pos[:, 0] - ix, pos[:, 1] - iy
    vals, _, bad, _, _ = img.gather(iy, ix, oy, ox, square=False, variance=False)
    r2 = (ox[None, :] - dx[:, None]) ** 2 + (oy[None, :] - dy[:, None]) ** 2
    in_ann = (r2 >= inner ** 2) & (r2 < outer ** 2)
    n_geom = in_ann.sum(axis=1)
    vals[bad | ~in_ann] = np.nan
    # astropy SigmaClip defaults (about the median, population std, <= 5 passes),
    # but each pass only revisits the rows that lost pixels in the previous one.
    active = np.arange(n_geom.size)
    for _ in range(5):
        sub = vals[active]
        med, std = bn.nanmedian(sub, axis=1), bn.nanstd(sub, axis=1)
        with np.errstate(invalid="ignore"):
            clip = np.abs(sub - med[:, None]) > spec.sky_sigma * std[:, None]
        sub[clip] = np.nan
        vals[active] = sub
        active = active[clip.any(axis=1)]
        if active.size == 0:
            break
    n_sky = np.isfinite(vals).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = bn.nanstd(vals, axis=1, ddof=1)
        if spec.sky_stat == "mean":
            level, level_err = bn.nanmean(vals, axis=1), std / np.sqrt(n_sky)
        else:   # the median of n Gaussian values scatters sqrt(pi/2) more than the mean
            level, level_err = bn.nanmedian(vals, axis=1), std * math.sqrt(math.pi / 2) / np.sqrt(n_sky)
    unusable = n_sky < 3
    level[unusable] = std[unusable] = level_err[unusable] = np.nan
    few = (n_sky < 0.5 * n_geom) | (n_sky < _MIN_SKY_PIXELS)
    return level, std, level_err, n_sky, few


def _centroid(img: _Image, pos, bkg, fwhm, spec: ApertureSpec):
    """Gaussian-windowed centroids (XWIN) -> positions used, centroided?, failed?"""
    n = len(pos)
    used, centroided, failed = pos.copy(), np.zeros(n, bool), np.zeros(n, bool)
    if spec.recentroid_max_px <= 0 or n == 0:
        return used, centroided, failed
    hb = max(int(spec.centroid_box) // 2, math.ceil(1.5 * fwhm))
    ix, iy = np.rint(pos[:, 0]).astype(int), np.rint(pos[:, 1]).astype(int)
    off = np.arange(-hb, hb + 1, dtype=float)
    d, v, bad, sat, outside = img.gather(iy, ix, off.astype(int), off.astype(int))
    good = ~bad & np.isfinite(bkg)[:, None, None]
    im = np.where(good, d - np.nan_to_num(bkg)[:, None, None], 0.0)
    v = np.where(good, v, 0.0)
    if spec.repair_max_fraction > 0:
        # a masked pixel left at zero pulls the centroid away from it (by ~0.1 px for a
        # cosmic ray next to an undersampled core): centroid on the repaired star instead
        col_off, row_off = off[None, :] - (pos[:, 0] - ix)[:, None], off[None, :] - (pos[:, 1] - iy)[:, None]
        fix_d, _, fixable = repair_aperture_pixels(im, v, good, bad & ~sat & ~outside & np.isfinite(bkg)[:, None, None],
                                                   col_off, row_off)
        im = np.where(fixable, fix_d, im)
    s2 = 2.0 * (_GAUSS_SIGMA_PER_FWHM * fwhm) ** 2

    def window(cx, cy):
        ex, ey = off - cx[:, None], off - cy[:, None]               # (N, B) offsets from centre
        return np.exp(-ey ** 2 / s2)[:, :, None] * np.exp(-ex ** 2 / s2)[:, None, :], ex, ey

    cx, cy = pos[:, 0] - ix, pos[:, 1] - iy
    w, _, _ = window(cx, cy)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.einsum("nij,nij->n", w, im) / np.sqrt(np.einsum("nij,nij->n", w * w, v))
    try_ = np.nan_to_num(snr, nan=-1.0) >= spec.centroid_min_snr
    cx, cy, im = cx[try_], cy[try_], im[try_]
    step = np.zeros(len(cx))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for _ in range(30):
            w, ex, ey = window(cx, cy)
            wi = w * im
            norm = wi.sum(axis=(1, 2))
            # The factor 2 makes the update exact for a Gaussian; the fixed point
            # (symmetric window about a symmetric source) does not depend on it.
            sx = 2.0 * np.einsum("nij,nj->n", wi, ex) / norm
            sy = 2.0 * np.einsum("nij,ni->n", wi, ey) / norm
            sx = np.where(norm > 0, np.clip(sx, -1.0, 1.0), np.nan)   # damp wild steps
            sy = np.where(norm > 0, np.clip(sy, -1.0, 1.0), np.nan)
            cx, cy = cx + sx, cy + sy
            step = np.hypot(sx, sy)
            if not np.any(step > 1e-4):    # NaN entries stay NaN and fail below
                break
    new = np.column_stack([ix[try_] + cx, iy[try_] + cy])
    shift = np.hypot(*(new - pos[try_]).T)
    ok = np.isfinite(shift) & (shift <= spec.recentroid_max_px) & (step <= 1e-3)
    idx = np.flatnonzero(try_)
    used[idx[ok]] = new[ok]
    centroided[idx[ok]] = True
    failed[idx[~ok]] = True
    return used, centroided, failed
