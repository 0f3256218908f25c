"""Frame-to-reference registration without resampling.

Each science frame gets a :class:`Transform`, a 3x3 matrix from its pixel
coordinates to the reference frame's; photometry places forced apertures with
:meth:`Transform.inverse_apply` on the frame's own pixels, so pixels are
resampled only by :func:`stack_reference`. :func:`find_transform`:

1. astroalign matches asterisms of the two source lists; that is only a start:
   every source is then matched by nearest neighbour and the transform re-fitted
   by weighted least squares with outlier clipping (error ~ centroid noise /
   sqrt(matches), a few thousandths of a pixel on good frames);
2. the fit must respect :class:`AlignLimits`; a well-supported transform
   outside them is a genuine failure (lost pointing), not second-guessed;
3. if astroalign found nothing usable and images are given, an FFT
   cross-correlation gives a translation, refined on the sources it matches;
4. otherwise ``ok=False`` with a NaN matrix and a reason: a frame that was not
   aligned never gets an identity.

Conventions: 0-based pixel coordinates, ``x`` = column, ``y`` = row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy import fft, ndimage
from scipy.spatial import cKDTree

from . import bitmask
from .sources import _background, detect_sources, measure_fwhm

__all__ = ["AlignLimits", "Transform", "detect_sources", "measure_fwhm", "find_transform",
           "choose_reference", "align_field", "stack_reference"]

MATCH_RADIUS_PX = 2.0    # nearest-neighbour radius for the first match after astroalign / xcorr
XCORR_MAX_SECOND = 0.6   # the best other correlation peak must be below this fraction of the peak


@dataclass
class AlignLimits:
    """How far a frame may be from the reference and still count as aligned.

    Rotation defaults to 2 deg: a tracking mount rotates the field far less in
    a night, so more means the pointing was lost (the simulator's
    ``pointing_lost`` frame, rotated by 5 deg, fails on this limit).
    """

    max_rotation_deg: float = 2.0
    max_scale_dev: float = 0.02     # |scale - 1|
    max_shift_px: float = 300.0     # displacement of the field centre
    min_matches: int = 5
    kind: str = "similarity"        # or "affine"


@dataclass
class Transform:
    """``matrix`` maps frame pixel coordinates (x, y, 1) to reference coordinates."""

    matrix: np.ndarray
    method: str                     # 'astroalign' | 'xcorr' | 'identity-reference'
    n_matches: int = 0
    residual_rms: float = np.nan    # px, RMS residual of the matched sources after the fit
    ok: bool = False
    reason: str = ""

    def apply(self, xy) -> np.ndarray:
        """(N, 2) frame -> reference coordinates."""
        return _apply(self.matrix, xy)

    def inverse_apply(self, xy) -> np.ndarray:
        """(N, 2) reference -> frame coordinates (where to put forced apertures)."""
        finite = np.all(np.isfinite(self.matrix))
        return _apply(np.linalg.inv(self.matrix) if finite else self.matrix, xy)

    @property
    def rotation_deg(self) -> float:
        m = self.matrix   # exact for a similarity, the mean rotation of an affine
        return float(np.degrees(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))

    @property
    def scale(self) -> float:
        m = self.matrix
        return float(np.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])))

    @property
    def shift(self) -> tuple[float, float]:
        """Translation column of the matrix (where pixel (0, 0) lands)."""
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


def _apply(m, xy) -> np.ndarray:
    xy = np.atleast_2d(np.asarray(xy, float))
    return xy @ m[:2, :2].T + m[:2, 2]


def _fit(src, dst, w, kind) -> np.ndarray:
    """Weighted least-squares 3x3 matrix src -> dst ('translation'|'similarity'|'affine')."""
    m = np.eye(3)
    if kind == "translation":
        m[:2, 2] = np.average(dst - src, axis=0, weights=w)
        return m
    sw = np.sqrt(w)[:, None]
    x, y, one, zero = src[:, :1], src[:, 1:], np.ones((len(src), 1)), np.zeros((len(src), 1))
    if kind == "similarity":   # X = a x - b y + tx, Y = b x + a y + ty
        A = np.vstack([np.hstack([x, -y, one, zero]) * sw, np.hstack([y, x, zero, one]) * sw])
        a, b, tx, ty = np.linalg.lstsq(A, np.r_[dst[:, 0] * sw[:, 0], dst[:, 1] * sw[:, 0]], rcond=None)[0]
        m[:2] = [[a, -b, tx], [b, a, ty]]
    elif kind == "affine":
        m[:2] = np.linalg.lstsq(np.hstack([x, y, one]) * sw, dst * sw, rcond=None)[0].T
    else:
        raise ValueError(f"unknown transform kind {kind!r}; use 'similarity' or 'affine'")
    return m


def _refine(frame_xy, ref_xy, m0, frame_err, ref_err, kind, min_n):
    """Match every frame source to its nearest reference source under the
    current matrix, re-fit on all matches, clip outliers; repeat.

    Returns (matrix, n_matches, residual_rms); matrix None below ``min_n`` matches.
    """
    tree, m, radius, n, rms = cKDTree(ref_xy), m0, MATCH_RADIUS_PX, 0, np.nan
    for _ in range(6):
        d, j = tree.query(_apply(m, frame_xy), distance_upper_bound=radius)
        hit = np.flatnonzero(np.isfinite(d))
        hit = hit[np.argsort(d[hit])]   # a reference source takes only its closest frame source
        hit = hit[np.unique(j[hit], return_index=True)[1]]
        if hit.size < max(min_n, 2 if kind == "translation" else 3):
            return None, int(hit.size), np.nan
        src, dst = frame_xy[hit], ref_xy[j[hit]]
        w = 1.0 / (frame_err[hit] ** 2 + ref_err[j[hit]] ** 2)
        for _ in range(5):
            # clip in units of each match's expected error: a bright blend 0.3 px off is a
            # worse outlier than a faint star 0.5 px off; 3 x median radial chi ~ 3.5 sigma
            m = _fit(src, dst, w, kind)
            res = np.hypot(*(_apply(m, src) - dst).T)
            chi = res * np.sqrt(w)
            keep = (chi <= 3 * np.median(chi)) | (res < 0.02)
            if keep.all() or keep.sum() < max(min_n, 3):
                break
            src, dst, w = src[keep], dst[keep], w[keep]
        m = _fit(src, dst, w, kind)
        n, rms = len(src), float(np.sqrt(np.mean(np.sum((_apply(m, src) - dst) ** 2, axis=1))))
        radius = float(np.clip(5 * rms, 0.5, MATCH_RADIUS_PX))
    return m, n, rms


def _limit_violations(m, pivot, limits) -> str:
    t = Transform(m, "")
    shift = np.hypot(*t.offset_at(*pivot))
    checks = [(abs(t.rotation_deg) > limits.max_rotation_deg,
               f"rotation {t.rotation_deg:.2f} deg exceeds max_rotation_deg={limits.max_rotation_deg}"),
              (abs(t.scale - 1) > limits.max_scale_dev,
               f"scale {t.scale:.4f} deviates more than max_scale_dev={limits.max_scale_dev}"),
              (shift > limits.max_shift_px,
               f"shift {shift:.1f} px exceeds max_shift_px={limits.max_shift_px}")]
    return "; ".join(text for bad, text in checks if bad)


def _xcorr_shift(frame_image, ref_image, max_shift):
    """Translation frame -> reference at the cross-correlation peak, or (None, reason)
    when the peak is missing or ambiguous (another above XCORR_MAX_SECOND of it).

    Each image is 3x3-median filtered (hot pixels and cosmic-ray residues would
    pin the peak at zero shift), put in sky-noise units, zeroed below 3 and
    clipped at 5: every star counts by its footprint, not its brightness.
    """
    def prepare(img):
        img = np.asarray(img, float)
        med, std = _background(img, np.isfinite(img))
        z = ndimage.median_filter(np.nan_to_num((img - med) / max(std, 1e-12), nan=0.0), size=3)
        return np.where(z > 3, np.minimum(z, 5), 0.0)

    a, b = prepare(ref_image), prepare(frame_image)
    s = int(np.ceil(max_shift))
    shape = [fft.next_fast_len(max(a.shape[k], b.shape[k]) + s) for k in (0, 1)]   # no wrap-around
    c = fft.irfft2(fft.rfft2(a, shape) * np.conj(fft.rfft2(b, shape)), shape)
    # c[k] = sum_x a(x + k) b(x) peaks where reference = frame + k; keep |k| <= max_shift
    c = np.roll(c, (s, s), axis=(0, 1))[:2 * s + 1, :2 * s + 1]
    ky, kx = np.unravel_index(np.argmax(c), c.shape)
    peak, others = c[ky, kx], c.copy()
    others[max(ky - 6, 0):ky + 7, max(kx - 6, 0):kx + 7] = -np.inf   # the peak's own wings
    if peak <= 0:
        return None, "no common signal in the cross-correlation"
    if others.max() > XCORR_MAX_SECOND * peak:
        return None, f"cross-correlation peak ambiguous (second peak {others.max() / peak:.2f} of it)"

    def vertex(lo, mid, hi):   # parabolic sub-pixel peak; the source fit refines it anyway
        den = lo - 2 * mid + hi
        return 0.0 if den >= 0 else 0.5 * (lo - hi) / den

    fy = vertex(*c[ky - 1:ky + 2, kx]) if 0 < ky < 2 * s else 0.0
    fx = vertex(*c[ky, kx - 1:kx + 2]) if 0 < kx < 2 * s else 0.0
    return np.array([kx - s + fx, ky - s + fy]), ""


def find_transform(frame_xy, ref_xy, *, frame_image=None, ref_image=None, limits=AlignLimits(),
                   frame_err=None, ref_err=None, center=None) -> Transform:
    """Transform from frame pixel coordinates to reference coordinates (steps: module docstring).

    ``frame_xy``/``ref_xy``: (N, 2) positions, brightest first (astroalign uses
    the first 50); ``frame_err``/``ref_err``: optional 1-sigma position errors
    that weight the fit (default 0.05 px each); ``center``: where the shift
    limit is measured (default: centre of ``ref_image``, else of the reference
    sources). Images (NaN = masked) enable the cross-correlation fallback.
    """
    import astroalign

    frame_xy, ref_xy = np.asarray(frame_xy, float).reshape(-1, 2), np.asarray(ref_xy, float).reshape(-1, 2)
    ef = np.full(len(frame_xy), 0.05) if frame_err is None else np.asarray(frame_err, float)
    er = np.full(len(ref_xy), 0.05) if ref_err is None else np.asarray(ref_err, float)
    if center is None:
        center = ((np.array(ref_image.shape[::-1]) - 1) / 2 if ref_image is not None
                  else (ref_xy.min(axis=0) + ref_xy.max(axis=0)) / 2 if len(ref_xy) else (0.0, 0.0))
    nan, reasons, guess = np.full((3, 3), np.nan), [], None
    try:
        if min(len(frame_xy), len(ref_xy)) < 3:
            raise ValueError(f"{min(len(frame_xy), len(ref_xy))} sources, astroalign needs >= 3")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            guess = astroalign.find_transform(frame_xy, ref_xy)[0].params
    except Exception as err:   # MaxIterError, ValueError (too few stars), ...
        reasons.append(f"astroalign failed ({type(err).__name__}: {err})")
    if guess is not None:
        m, n, rms = _refine(frame_xy, ref_xy, guess, ef, er, limits.kind, limits.min_matches)
        if m is None:
            reasons.append(f"astroalign: only {n} sources matched (min_matches={limits.min_matches})")
        else:
            bad = _limit_violations(m, center, limits)
            # enough stars agree on a transform outside the limits: the frame really is off
            return Transform(m, "astroalign", n, rms, not bad, f"outside limits: {bad}" if bad else "")

    if frame_image is None or ref_image is None:
        reasons.append("no images for the cross-correlation fallback")
        return Transform(nan, "astroalign", 0, np.nan, False, "; ".join(reasons))
    shift, why = _xcorr_shift(frame_image, ref_image, limits.max_shift_px)
    if shift is None:
        reasons.append(f"xcorr: {why}")
        return Transform(nan, "xcorr", 0, np.nan, False, "; ".join(reasons))
    m0 = np.eye(3)
    m0[:2, 2] = shift
    # the correlation peak already vouches for the shift: in a sparse field 60 % of the
    # sources (at least 3, or all of 2) suffice; a source may lie off the other frame
    need = min(limits.min_matches, max(3, int(np.ceil(0.6 * min(len(frame_xy), len(ref_xy))))))
    need = max(2, min(need, len(frame_xy), len(ref_xy)))
    m, n, rms = _refine(frame_xy, ref_xy, m0, ef, er, "translation", need)
    if m is None:
        reasons.append(f"xcorr: only {n} sources matched after the shift (need {need})")
        return Transform(nan, "xcorr", n, np.nan, False, "; ".join(reasons))
    if n >= max(limits.min_matches, 4):   # enough matches to free rotation and scale too
        m2, n2, rms2 = _refine(frame_xy, ref_xy, m, ef, er, limits.kind, limits.min_matches)
        m, n, rms = (m2, n2, rms2) if m2 is not None else (m, n, rms)
    bad = _limit_violations(m, center, limits)
    return Transform(m, "xcorr", n, rms, not bad, f"outside limits: {bad}" if bad else "")


def choose_reference(stats: list[dict], *, min_sources: int = 5, tolerance: float = 0.8) -> int:
    """Index of the reference frame.

    Rule: among frames with ``n_sources >= min_sources`` and a finite FWHM, keep
    those with at least ``tolerance`` x the largest source count (transparent
    sky, field on the chip), then take the smallest FWHM (sharpest centroids);
    ties go to more sources, then to the earlier frame. ``ValueError`` if no
    frame qualifies.
    """
    n = np.array([s.get("n_sources", 0) for s in stats], float)
    fwhm = np.array([s.get("fwhm", np.nan) for s in stats], float)
    usable = (n >= min_sources) & np.isfinite(fwhm) & (fwhm > 0)
    if not usable.any():
        raise ValueError(f"no frame has >= {min_sources} sources and a measured FWHM")
    cand = np.flatnonzero(usable & (n >= tolerance * n[usable].max()))
    return int(min(cand, key=lambda i: (fwhm[i], -n[i], i)))


def _load(frame: dict):
    """(data, variance, mask) of a frame dict; a 'path' is read with Product.read."""
    if frame.get("path") is not None:
        from .ccdio import Product

        p = Product.read(frame["path"])
        return p.data, p.variance, p.mask
    return np.asarray(frame["data"]), frame.get("variance"), frame.get("mask")


def _finding_mask(mask):
    """The mask that finding stars to align on uses: without cosmic-ray flags.

    L.A.Cosmic takes the cores of undersampled stars for cosmic rays (a real
    3x3-binned night: most frames' brightest stars); masked, those stars vanish and
    the alignment with them. A real hit is one sharp pixel group, which the star
    finder's sharpness cut drops anyway; photometry still sees every flag.
    """
    return None if mask is None else np.asarray(mask) & ~np.asarray(bitmask.COSMIC_RAY, np.asarray(mask).dtype)


def _image(frame: dict):
    """The frame's pixels with masked ones NaN (for the cross-correlation)."""
    data, _, mask = _load(frame)
    mask = _finding_mask(mask)
    return np.where(mask == 0, data, np.nan) if mask is not None else np.asarray(data, float)


def align_field(frames: list[dict], limits: AlignLimits = AlignLimits(), *, threshold_sigma=5.0,
                fwhm=3.0, max_sources=300, reference: int | None = None):
    """Detect sources in every frame, choose the reference, fit every transform.

    ``frames``: dicts with ``frame_id`` and either ``data`` (+ optional
    ``variance``, ``mask``) or ``path`` to a product file (read again only when
    needed, so a long night never sits in memory). Detection is repeated with
    the measured FWHM when it differs from ``fwhm`` by > 15 %; saturated
    sources are left out of the fits. Returns ``(reference_index, table)``
    with one row per frame: frame_id, ok, method, n_sources, fwhm, n_matches,
    residual_rms, rotation_deg, scale (of the frame -> reference matrix), dx,
    dy (frame -> reference displacement of the image centre: minus the pointing
    drift), a..f (matrix rows [[a, b, c], [d, e, f]], NaN if none was found)
    and reason.
    """
    sources, stats, shape = [], [], None
    for fr in frames:
        data, var, mask = _load(fr)
        mask = _finding_mask(mask)
        shape = shape or data.shape
        kw = dict(threshold_sigma=threshold_sigma, max_sources=max_sources)
        src = detect_sources(data, var, mask, fwhm=fwhm, **kw)
        seeing = measure_fwhm(data, src, mask)
        if np.isfinite(seeing) and abs(seeing / fwhm - 1) > 0.15:
            # kernel and centroid window matched to the seeing: less centroid noise
            src = detect_sources(data, var, mask, fwhm=seeing, **kw)
        sources.append(src[~np.asarray(src["saturated"], bool)])
        stats.append({"n_sources": len(sources[-1]), "fwhm": seeing})
    ref = choose_reference(stats, min_sources=limits.min_matches) if reference is None else reference
    centre, r = ((shape[1] - 1) / 2, (shape[0] - 1) / 2), sources[ref]
    ref_image, rows = None, []
    for i, fr in enumerate(frames):
        s = sources[i]
        kw = dict(limits=limits, frame_err=s["pos_err"], ref_err=r["pos_err"], center=centre)
        if i == ref:
            t = Transform(np.eye(3), "identity-reference", len(s), 0.0, True, "reference frame")
        else:
            t = find_transform(np.c_[s["x"], s["y"]], np.c_[r["x"], r["y"]], **kw)
            if not t.ok and not t.reason.startswith("outside limits"):
                ref_image = _image(frames[ref]) if ref_image is None else ref_image   # only if needed
                t = find_transform(np.c_[s["x"], s["y"]], np.c_[r["x"], r["y"]], **kw,
                                   frame_image=_image(fr), ref_image=ref_image)
        m = t.matrix
        dx, dy = t.offset_at(*centre) if np.all(np.isfinite(m)) else (np.nan, np.nan)
        rows.append({"frame_id": str(fr.get("frame_id") or str(fr.get("path", i)).rsplit("/", 1)[-1]),
                     "ok": t.ok, "method": t.method, "n_sources": stats[i]["n_sources"],
                     "fwhm": stats[i]["fwhm"], "n_matches": t.n_matches, "residual_rms": t.residual_rms,
                     "rotation_deg": t.rotation_deg, "scale": t.scale, "dx": dx, "dy": dy,
                     **dict(zip("abcdef", m[:2].ravel())), "reason": t.reason})
    table = Table(rows=rows)
    table.meta.update(reference_index=ref, reference_frame_id=rows[ref]["frame_id"])
    return ref, table


def stack_reference(frames, transforms, reference_shape, *, max_frames=20):
    """Mean of the sharpest aligned frames, resampled onto the reference grid.

    ``transforms``: the :func:`align_field` table (its ``ok`` rows, lowest FWHM
    first) or a list of :class:`Transform` parallel to ``frames`` (its ``ok``
    ones, in order). Bilinear resampling; a frame contributes to an output pixel
    only if none of the pixels interpolated there is masked. Each frame's sky
    (clipped median) is subtracted first, so the background does not step where
    frames end. Returns ``(stack, weight, saturated)``: weight = number of
    frames per pixel, stack NaN where 0, saturated = number of stacked frames
    whose saturated pixels reach the output pixel. The only place ccdflow
    resamples pixels.

    A star that saturates only in the sharpest frames would leave a hole in
    their mean: holes inside the field (no valid frame, neighbours all valid)
    are filled from the next-sharpest frames that have a valid value there, so
    the star stays in the reference catalogue (flagged saturated from
    ``saturated``). Only a star saturated in every frame keeps its hole.
    """
    if isinstance(transforms, Table):
        tlist = [Transform.from_row(row) for row in transforms]
        order = [i for i in np.argsort(np.asarray(transforms["fwhm"], float), kind="stable") if tlist[i].ok]
    else:
        tlist = list(transforms)
        order = [i for i, t in enumerate(tlist) if t.ok]
    if not order:
        raise ValueError("no aligned frame to stack")
    total, weight = np.zeros(reference_shape), np.zeros(reference_shape, np.int32)
    saturated = np.zeros(reference_shape, np.int32)
    for i in order[:max_frames]:
        data, valid, sat, mat, off = _resampling(frames[i], tlist[i])
        img = ndimage.affine_transform(np.where(valid, data, 0.0), mat, off, reference_shape, order=1)
        good = ndimage.affine_transform(valid.astype(float), mat, off, reference_shape, order=1) > 0.999
        total += np.where(good, img, 0.0)
        weight += good
        saturated += ndimage.affine_transform(sat.astype(float), mat, off, reference_shape, order=1) > 0.001
    fwhm = np.asarray(transforms["fwhm"], float)[order[:max_frames]] if isinstance(transforms, Table) else [2.5]
    _fill_holes(total, weight, [(frames[i], tlist[i]) for i in order[max_frames:]],
                max(3, int(np.ceil(2 * np.nanmax(fwhm)))), max_frames)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, np.nan), weight, saturated


def _fill_holes(total, weight, later, grow, max_frames) -> None:
    """Replace each star around a stack hole by the mean of the next-sharpest
    frames valid over its whole hole (in place): the star keeps one PSF, so its
    centroid is not pulled by a core from other seeing than its wings."""
    labels, _ = ndimage.label(ndimage.binary_fill_holes(weight > 0) & (weight == 0))
    regions = []   # (row, col) pixels of each hole grown by `grow`
    for k, box in enumerate(ndimage.find_objects(labels), 1):
        sub = np.s_[max(box[0].start - grow, 0):box[0].stop + grow, max(box[1].start - grow, 0):box[1].stop + grow]
        rr, cc = np.nonzero(ndimage.binary_dilation(labels[sub] == k, iterations=grow))
        regions.append((rr + sub[0].start, cc + sub[1].start))
    sums, counts = [np.zeros(rr.size) for rr, _ in regions], np.zeros(len(regions), int)
    for frame, transform in later:
        todo = np.flatnonzero(counts < max_frames)
        if not todo.size:
            break
        data, valid, _, mat, off = _resampling(frame, transform)
        for k in todo:
            at = mat @ np.vstack(regions[k]) + off[:, None]   # region pixels -> this frame's (row, col)
            if np.all(ndimage.map_coordinates(valid.astype(float), at, order=1, cval=0.0) > 0.999):
                sums[k] += ndimage.map_coordinates(np.where(valid, data, 0.0), at, order=1)
                counts[k] += 1
    for (rr, cc), acc, n in zip(regions, sums, counts):
        if n:
            total[rr, cc], weight[rr, cc] = acc / n, 1


def _resampling(frame: dict, transform: Transform):
    """Sky-subtracted data, valid and saturated pixels of a frame, and the
    ndimage (row, col) matrix and offset that map reference pixels onto it."""
    data, _, mask = _load(frame)
    valid = np.isfinite(data) if mask is None else (np.asarray(mask) == 0) & np.isfinite(data)
    sat = np.zeros(data.shape, bool) if mask is None else (np.asarray(mask) & bitmask.SATURATED) != 0
    sky, _ = _background(data, valid)
    inv = np.linalg.inv(transform.matrix)   # output (reference) pixel -> frame pixel
    # ndimage indexes (row, col): swap the x/y roles in the 2x2 part and the offset
    return data - sky, valid, sat, inv[:2, :2][::-1, ::-1], inv[:2, 2][::-1]
