"""Gain (e-/ADU) and read noise (e-) of a CCD from its raw frames, by photon transfer.

For instruments whose headers carry neither (Janesick, *Photon Transfer*, 2007): read
noise = std(bias1 - bias2) / sqrt(2) (else of two frames' overscan strips); gain from
pairs of frames at similar level, ``g = (m1 + s^2 m2) / (var(f1 - s f2) - (1 + s^2) rn^2)``
with ``s = m1 / m2`` (``s = 1``: the textbook ``(m1 + m2) / (var - 2 rn^2)``). The pairs
are flats when any two pair up, else consecutive science frames, with the sky as the
signal and the sources of either frame masked.

Why differences: the flat pattern and the bias structure are fixed to the detector and
cancel (no alignment needed); ``s``, per tile, cancels a level mismatch or a changed
twilight gradient. On single sky frames the simulator's flat structure adds 27 % to the
variance (gain 21 % low). All is measured in tiles, median over tiles, so vignetting moves
the level from tile to tile, never a tile's variance. With no bias level (no bias frames,
no overscan) the gain is 1 / slope of variance against level; the intercept
``~2 (rn^2 - bias / g)`` leaves the read noise degenerate: NaN, noted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.stats import norm

from .ccdio import read_raw
from .sections import Section, parse_section
from .stats import robust_std

__all__ = ["NoiseEstimate", "estimate_noise"]

CLIP_SIGMA = 4.0          # symmetric clip: hot pixels, cosmics, dust-ring cores, dead columns go
# a 4-sigma clip also trims the normal tails: divide the clipped variance by this (0.9989)
_TRUNCATION = 1 - 2 * CLIP_SIGMA * norm.pdf(CLIP_SIGMA) / (2 * norm.cdf(CLIP_SIGMA) - 1)
PAIR_TOLERANCE = 0.10     # frames pair when their levels differ by at most 10 %
NEAR_SATURATION = 0.7     # tiles and frames above 0.7 x saturation: non-linear, rejected
EDGE_FRACTION = 0.05      # dropped on each side of the data section (steepest vignetting)
SOURCE_SIGMA = 5.0        # sky pairs: sources are 5 sigma above the 3x3-smoothed sky (noise alone
SOURCE_GROW = 5           # never gets there, so the mask does not bias the variance), grown 5 px
MAX_SLOPE_ERROR = 0.2     # a variance-mean slope known worse than 20 % constrains nothing, and so
MIN_LEVEL_SPAN = 0.15     # does one over levels spanning < 15 % (p5-p95): contamination that grows
                          # with level (star light) then sets it (simulator sky: 0.67 for 1.5 e-/ADU)


@dataclass(frozen=True)
class NoiseEstimate:
    """Measured gain and read noise with 1-sigma (statistical) errors and how they were measured."""

    gain: float            # e-/ADU
    gain_err: float        # 1-sigma
    read_noise: float      # electrons (NaN when no bias level is known)
    read_noise_err: float  # electrons, 1-sigma
    method: str            # one line
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        # enough decimals that each error shows at least one significant digit
        dg, dr = (int(np.clip(-np.floor(np.log10(e)) if e > 0 else lo, lo, 4))
                  for e, lo in ((self.gain_err, 2), (self.read_noise_err, 1)))
        return (f"gain {self.gain:.{dg}f} +/- {self.gain_err:.{dg}f} e-/ADU, read noise {self.read_noise:.{dr}f} "
                f"+/- {self.read_noise_err:.{dr}f} e- ({self.method})")


class _Frame(NamedTuple):
    pix: np.ndarray | None        # central data region: ADU - overscan median (- mean bias); saturated NaN
    overscan: np.ndarray | None   # overscan strip minus its median
    filter: str
    level: float                  # median of pix
    ceiling: float                # NEAR_SATURATION x saturation on the scale of pix

    @property
    def usable(self) -> bool:
        return 0 < self.level < self.ceiling


@dataclass
class _Reader:
    data: Section | None
    overscan: Section | None
    saturation: float
    master: np.ndarray | None = None   # mean bias, subtracted pixel by pixel once known
    tile: int = 0

    def load(self, path: str) -> _Frame:
        raw, header = read_raw(path)
        raw = raw.astype(np.float64)
        for name, sec in (("data", self.data), ("overscan", self.overscan)):
            if sec is not None and not sec.fits_within(raw.shape):
                raise ValueError(f"{path}: {name} section {sec.to_fits()} lies outside the {raw.shape} frame")
        zero = float(np.median(raw[self.overscan.slices])) if self.overscan else 0.0
        strip = raw[self.overscan.slices] - zero if self.overscan else None
        region = raw[self.data.slices] if self.data else raw
        my, mx = (int(EDGE_FRACTION * n) for n in region.shape)
        region = region[my:region.shape[0] - my, mx:region.shape[1] - mx]
        # >= 16 tiles on small frames, 64 px tiles (4096 px: 2 % on a variance) on large ones
        self.tile = self.tile or int(np.clip(min(region.shape) // 4, 16, 64))
        ny, nx = (n - n % self.tile for n in region.shape)
        pix = np.where(region[:ny, :nx] >= self.saturation, np.nan, region[:ny, :nx]) - zero
        if self.master is not None:
            if pix.shape != self.master.shape:
                raise ValueError(f"{path}: {raw.shape} frame, unlike the bias frames")
            pix, zero = pix - self.master, zero + float(np.median(self.master))   # zero: for the ceiling
        return _Frame(pix, strip,
                      str(header.get("FILTER", header.get("FILTNAME", ""))),
                      float(np.median(np.where(np.isnan(pix), np.inf, pix))),   # mostly saturated: inf
                      NEAR_SATURATION * self.saturation - zero)


def _tiles(img: np.ndarray, ty: int, tx: int) -> np.ndarray:
    """(n_tiles, ty * tx) copy of ``img`` cut into ty x tx blocks (a ragged remainder dropped)."""
    ny, nx = img.shape[0] // ty, img.shape[1] // tx
    return img[:ny * ty, :nx * tx].reshape(ny, ty, nx, tx).swapaxes(1, 2).reshape(ny * nx, ty * tx)


def _row_median(t: np.ndarray) -> np.ndarray:
    """np.nanmedian(t, axis=1, keepdims=True) without its slow per-row loop (sorting puts NaN last)."""
    n = np.isfinite(t).sum(axis=1, keepdims=True)
    ordered = np.sort(t, axis=1)
    return (np.take_along_axis(ordered, np.maximum(n - 1, 0) // 2, 1) + np.take_along_axis(ordered, n // 2, 1)) / 2


def _clip(t: np.ndarray) -> np.ndarray:
    """Per row of ``t``, values beyond CLIP_SIGMA x std from the median set to NaN (iterated)."""
    med = _row_median(t)   # once: clipping the tails barely moves it
    t = t.copy()
    for _ in range(5):
        bad = np.abs(t - med) > CLIP_SIGMA * np.nanstd(t, axis=1, keepdims=True)
        if not bad.any():
            break
        t[bad] = np.nan
    return t


def _var(t: np.ndarray, ty: int, tx: int) -> np.ndarray:
    """Per-tile variance about a fitted plane (it takes out smooth structure that is not pixel
    noise: bias row drifts differing between frames, a residual gradient), clip-corrected."""
    basis = np.stack([np.ones(ty * tx), *(c.ravel() - c.mean() for c in np.mgrid[0:ty, 0:tx].astype(float))])
    w = np.isfinite(t)
    z = np.where(w, t, 0.0)
    normal = np.einsum("ip,jp,tp->tij", basis, basis, w.astype(float)) + 1e-9 * np.eye(3)
    coef = np.linalg.solve(normal, np.einsum("ip,tp->ti", basis, z)[..., None])[..., 0]
    n = w.sum(axis=1)
    v = np.sum(np.where(w, z - coef @ basis, 0.0) ** 2, axis=1) / np.maximum(n - 3, 1) / _TRUNCATION
    return np.where(n >= t.shape[1] / 2, v, np.nan)


def _median_err(values) -> tuple[float, float]:
    """Median of per-tile values and its standard error (1.2533 x scatter / sqrt(n))."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return (float(np.median(v)), float(1.2533 * robust_std(v) / np.sqrt(v.size))) if v.size else (np.nan, np.nan)


def _combine(estimates: list[tuple[float, float]]) -> tuple[float, float]:
    """Median of per-pair estimates; error: the larger of the propagated and the scatter one."""
    values, errors = np.array([e for e in estimates if np.isfinite(e[0])], float).reshape(-1, 2).T
    if values.size < 2:
        return (float(values[0]), float(errors[0])) if values.size else (np.nan, np.nan)
    scatter = np.std(values, ddof=1) / np.sqrt(values.size)
    return float(np.median(values)), float(max(np.sqrt(np.sum(errors ** 2)) / values.size, scatter))


def _read_noise(images: list[np.ndarray], ty: int, tx: int) -> list[tuple[float, float]]:
    """Read noise (ADU) of disjoint consecutive pairs of zero-signal images: std(a - b) / sqrt(2)."""
    return [_median_err(np.sqrt(_var(_clip(_tiles(a - b, ty, tx)), ty, tx) / 2))
            for a, b in zip(images[::2], images[1::2])]


def _pair_tiles(a: _Frame, b: _Frame, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tile of a pair: x = m1 + s^2 m2, v = var(f1 - s f2), k = 1 + s^2 (s = m1 / m2)."""
    A, B = _tiles(a.pix, tile, tile), _tiles(b.pix, tile, tile)
    bad = np.isnan(_clip(A)) | np.isnan(_clip(B))   # either frame's outliers leave the difference
    A[bad] = B[bad] = np.nan
    m1, m2 = np.nanmean(A, axis=1), np.nanmean(B, axis=1)
    s = m1 / m2
    v = _var(_clip(A - s[:, None] * B), tile, tile)
    ok = (m1 < a.ceiling) & (m2 < b.ceiling) & (m2 > 0) & np.isfinite(v)
    return (m1 + s * s * m2)[ok], v[ok], (1 + s * s)[ok]


def _mask_sources(f: _Frame, tile: int) -> _Frame:
    """Sources (SOURCE_SIGMA in the 3x3-smoothed frame, grown SOURCE_GROW px) set to NaN."""
    smooth = ndimage.uniform_filter(np.where(np.isnan(f.pix), np.nanmedian(f.pix), f.pix), 3)   # ~3x a star's S/N
    st = _clip(_tiles(smooth, tile, tile))
    limit = (_row_median(st) + SOURCE_SIGMA * np.nanstd(st, axis=1, keepdims=True)).ravel()
    ny, nx = f.pix.shape[0] // tile, f.pix.shape[1] // tile
    limit = np.broadcast_to(limit.reshape(ny, 1, nx, 1), (ny, tile, nx, tile)).reshape(f.pix.shape)
    return f._replace(pix=np.where(ndimage.binary_dilation(smooth > limit, iterations=SOURCE_GROW), np.nan, f.pix))


def _pair_stats(frames, reader: _Reader) -> tuple[list, list[_Frame]]:
    """Tile stats of disjoint neighbours (in iteration order) of one filter, levels within
    PAIR_TOLERANCE, and the frames seen (pixels dropped: a lazy ``frames`` keeps two in memory)."""
    stats, seen, prev = [], [], None
    for f in frames:
        seen.append(f._replace(pix=None))
        if (prev is not None and prev.filter == f.filter and prev.usable and f.usable
                and abs(prev.level - f.level) <= PAIR_TOLERANCE * max(prev.level, f.level)):
            stats.append(_pair_tiles(prev, f, reader.tile))
            f = None
        prev = f
    return stats, seen


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _slope_gain(x: np.ndarray, v: np.ndarray, what: str) -> tuple[float, float]:
    """Gain = 1 / slope of variance against level: line fit with 3 rounds of 3-sigma rejection."""
    keep, fit = np.isfinite(x) & np.isfinite(v), None
    for _ in range(3):
        if keep.sum() < 5 or np.ptp(x[keep]) == 0:
            break
        fit = np.polyfit(x[keep], v[keep], 1, cov=True)
        resid = v - np.polyval(fit[0], x)
        keep &= np.abs(resid) <= 3 * robust_std(resid[keep])
    slope, err = (fit[0][0], np.sqrt(fit[1][0, 0])) if fit else (np.nan, np.nan)
    p5, p50, p95 = np.nanpercentile(x, [5, 50, 95])
    if not (slope > 0 and err < MAX_SLOPE_ERROR * slope and p95 - p5 >= MIN_LEVEL_SPAN * p50):
        raise ValueError(f"cannot constrain the gain: no bias level is known and the {what}s do not span enough "
                         "levels for a variance-mean slope; give bias frames or an overscan section, or frames "
                         "at clearly different levels (e.g. twilight flats)")
    return float(1 / slope), float(err / slope ** 2)


def _gain(stats: list, rn: float, rn_err: float) -> tuple[float, float]:
    """Median tile gain per pair, combined over pairs; plus the error the read noise's error brings."""
    per_pair, from_rn = [], []
    for x, v, k in stats:
        per_pair.append(_median_err(x / (v - k * rn * rn)))
        # g = x / (v - k rn^2) moves by g k d(rn^2) / (v - k rn^2)
        from_rn.append(per_pair[-1][0] * np.median(k * 2 * rn * rn_err / (v - k * rn * rn)))
    g, g_err = _combine(per_pair)
    return g, float(np.hypot(g_err, np.nanmedian(from_rn)))


def estimate_noise(bias: list[str], flats: list[str], science: list[str] = (), *, data_section: str | None = None,
                   overscan_section: str | None = None, saturation: float = 65000.0) -> NoiseEstimate:
    """Gain and read noise of one amplifier from raw bias, flat and (optionally) science frames.

    Sections are FITS strings (``'[18:1382,1:1370]'``); the data section defaults to
    the whole frame. Flat pairs are used when any two flats pair up, else pairs of
    consecutive science frames (give them in time order). Errors are statistical.
    Raises ``ValueError`` when the frames cannot constrain the gain.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN tiles (saturated, masked) stay NaN
        return _estimate(list(bias), list(flats), list(science), data_section, overscan_section, saturation)


def _read_noise_adu(reader: _Reader, biases: list[_Frame], others: list[_Frame], notes: list[str]):
    """Read noise (ADU) and its error from bias pairs, else overscan pairs, else one bias; and a label."""
    t = reader.tile
    others = [f for f in others if f.usable]   # a saturated frame bleeds into its overscan
    if len(biases) >= 2:
        pairs = _read_noise([b.pix for b in biases], t, t)
        return (*_combine(pairs), _count(len(pairs), "bias pair"))
    if reader.overscan is not None and len(others) >= 2:
        strips = [f.overscan for f in others]
        pairs = _read_noise(strips, int(np.clip(strips[0].shape[0] // 8, 16, 64)), strips[0].shape[1])
        return (*_combine(pairs), f"read noise from the overscan of {2 * len(pairs)} frames")
    if biases:
        notes.append("read noise from a single bias frame includes its fixed pattern: an upper bound")
        return (*_median_err(np.sqrt(_var(_clip(_tiles(biases[0].pix, t, t)), t, t))), "read noise from one bias")
    notes.append("read noise needs two bias frames or the overscan of two usable frames: reported as NaN")
    return np.nan, np.nan, "read noise not measured"


def _estimate(bias, flats, science, data_section, overscan_section, saturation) -> NoiseEstimate:
    reader = _Reader(parse_section(data_section) if data_section else None,
                     parse_section(overscan_section) if overscan_section else None, float(saturation))
    biases = [reader.load(p) for p in bias]
    if biases:   # pixel by pixel: removes the 2-D bias structure too
        reader.master = np.mean([b.pix for b in biases], axis=0)
    notes: list[str] = []
    flat_frames = sorted((reader.load(p) for p in flats), key=lambda f: (f.filter, f.level))
    (stats, others), what = _pair_stats(flat_frames, reader), "flat pair"
    from_flats = bool(stats)
    if not from_flats:
        if flats:
            notes.append(f"no two of the {len(flats)} flats pair up (same filter, level within "
                         f"{PAIR_TOLERANCE:.0%}, below {NEAR_SATURATION:.0%} of saturation)")
        sky = (_mask_sources(reader.load(p), reader.tile) for p in science)
        (stats, others), what = _pair_stats(sky, reader), "science-frame pair"
    if not stats:
        raise ValueError(f"cannot constrain the gain: need two flats of one filter within {PAIR_TOLERANCE:.0%} "
                         f"in level (below {NEAR_SATURATION:.0%} of saturation), or consecutive science "
                         "frames of similar sky level")
    rn, rn_err, rn_src = _read_noise_adu(reader, biases, others, notes)
    if biases or reader.overscan is not None:
        g, g_err = _gain(stats, np.nan_to_num(rn), np.nan_to_num(rn_err))
    else:
        g, g_err = _slope_gain(*(np.concatenate([s[i] for s in stats]) for i in (0, 1)), what)
        notes.append("no bias level (no bias frames, no overscan): gain from the variance-mean slope; "
                     "its intercept ~2 (rn^2 - bias/g) leaves the read noise degenerate")
    if not from_flats:
        notes.append("sky-pair gain: within ~2 % on the simulator, but 9-23 % above photon transfer on the "
                     "real ARCSAT and Lowell frames (tests/test_noise_estimate.py): prefer flats")
        share = float(np.median(np.concatenate([k * np.nan_to_num(rn) ** 2 / v for _, v, k in stats])))
        if share > 0.2:   # the gain then hangs on rn^2 and the bias level: dg/g = share / (1 - share) drn^2/rn^2
            notes.append(f"read noise is {share:.0%} of the sky variance: 1 % on rn^2 moves the gain "
                         f"{share / (1 - share):.1f} %")
    method = f"{'photon transfer' if from_flats else 'science sky'}: {_count(len(stats), what)}, {rn_src}"
    return NoiseEstimate(float(g), float(g_err), float(rn * g), float(rn * g * np.hypot(rn_err / rn, g_err / g)),
                         method, tuple(notes))


def estimate_bias_level(science: list[str], gain: float, read_noise: float, *, data_section: str | None = None,
                        saturation: float = 65000.0) -> tuple[float, float, str]:
    """Bias level (ADU) of frames with no overscan, from pairs of consecutive science frames.

    For a pair at levels ``m_i = S_i + B`` (ADU), ``var(f1 - s f2) = (S1 + s^2 S2) / g + (1 + s^2) rn^2``
    with ``g`` and ``rn`` (ADU) known, so ``B = (x - g (v - k rn^2)) / k`` per tile (``x = m1 + s^2 m2``,
    ``k = 1 + s^2``); the differences cancel the flat pattern, so the sky's own Poisson noise
    measures how much of the level is signal. Its error is ~ (sky level) x (gain error): use the
    darkest sky. Returns ``(level, error, method)``; raises ``ValueError`` without two frames
    of similar sky.
    """
    rn = read_noise / gain
    reader = _Reader(parse_section(data_section) if data_section else None, None, float(saturation))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sky = (_mask_sources(reader.load(p), reader.tile) for p in science)
        stats, _ = _pair_stats(sky, reader)
        per_pair = [_median_err((x - gain * (v - k * rn * rn)) / k) for x, v, k in stats]
    if not per_pair:
        raise ValueError("cannot estimate the bias level: need two consecutive science frames of similar sky "
                         f"(within {PAIR_TOLERANCE:.0%}) below {NEAR_SATURATION:.0%} of saturation")
    level, err = _combine(per_pair)
    return level, err, f"estimated from {_count(len(per_pair), 'science-frame pair')} (photon transfer)"
