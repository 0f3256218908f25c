"""Differential light curves against a weighted comparison ensemble.

The target is divided by an artificial comparison star: the weighted mean of
the comparison stars' fluxes, each first normalised to its own median so that
a star missing from a frame can be left out without a jump. Weights follow
Broeg, Fernandez & Neuhaeuser (2005, AN 326, 134): w_i = 1/sigma_i^2, where
sigma_i is the scatter of star i against the ensemble of the *other* stars,
iterated until the weights stop changing. Stars whose scatter is far above
what their own errors and the ensemble's predict are variables and are
dropped. Without a given aperture every aperture is tried and the one with the
lowest point-to-point scatter wins (that statistic ignores slow trends and a
transit, so it does not reward an aperture that flattens the signal).

Frames through cloud are flagged, not used: where the field's stars together
keep less than ``MIN_TRANSPARENCY`` (75 %) of their clear-sky flux (the upper
envelope of the night's frames, a line in airmass when airmass is known, so
extinction alone never counts as cloud), the frame gets ``FLAG_TRANSPARENCY``
and takes no part in choosing or weighting the comparison stars, in the
normalisation or in the scatter. Its error bar would be honest, but
differential photometry through clouds is not: their extinction is neither
grey nor uniform across the field (on the ARCSAT XO-1 night, frames at 55-80 %
of the clear flux put 1-1.5 % steps into the target against two comparisons).

Input: a long table, one row per (frame_id, source_id, aperture), with columns
``frame_id, bjd_tdb, source_id, aperture, flux, flux_err, flag`` (0 = good; :data:`ccdflow.tables.FIELD_PHOTOMETRY`)
and optionally the per-frame ``airmass, fwhm, bkg``.
"""

from __future__ import annotations

import logging
import re
import warnings

import bottleneck as bn  # nan-statistics along an axis, ~10x numpy's on these small matrices
import numpy as np
import pandas as pd

from . import stats
from .outliers import single_frame_excess
from .tables import FIELD_PHOTOMETRY

log = logging.getLogger(__name__)

# Output ``flag`` bits of a light curve.
FLAG_TARGET = 1  # no relative flux (target flagged/missing/non-positive, or no comparison): NaN
FLAG_ENSEMBLE = 2  # < 25 % of the ensemble weight (or < 2 stars) present in this frame
FLAG_TRANSPARENCY = 4  # the field's stars kept < MIN_TRANSPARENCY of their clear-sky flux (cloud)
FLAG_EXCESS = 8  # light added to the target in this frame only (a spared cosmic ray: ccdflow.outliers)
MIN_ENSEMBLE_WEIGHT = 0.25
MIN_TRANSPARENCY = 0.75
FRAME_COLUMNS = ("airmass", "fwhm", "bkg")
TARGET_COLUMNS = ("x", "y")   # the target's aperture centre in each frame (decorrelation against pointing)
MIN_COMPARISONS = 2
# An ensemble this small is widened in magnitude until it holds this many stars:
# two comparisons cannot tell which of them varies, and a brighter or fainter
# star still helps once Broeg weighting has measured its scatter.
WANTED_COMPARISONS = 5
MAX_MAG_RANGE = 5.0


def robust_std(values) -> float:
    """1.4826 x median absolute deviation, ignoring NaN."""
    return float(stats.robust_std(np.asarray(values, dtype=float), ignore_nan=True))


def point_to_point_scatter(values) -> float:
    """Robust white-noise scatter: MAD of successive differences / sqrt(2).

    Differences cancel anything slower than the cadence (airmass trends, a
    transit), so apertures are compared on their noise alone.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return robust_std(np.diff(v)) / np.sqrt(2.0) if v.size > 2 else np.nan


def ccd_equation_sigma(flux_e, sky_e_per_pix, npix, read_noise_e, dark_e_per_pix=0.0, n_sky=None):
    """Relative 1-sigma noise of an aperture flux from the CCD equation.

    sigma/F = sqrt(F + npix (1 + npix/n_sky) (S + D + RN^2)) / F with F the
    source electrons, S and D sky and dark electrons per pixel and RN the read
    noise in electrons (Merline & Howell 1995). ``n_sky`` is the number of
    pixels the sky level was estimated from (None = perfectly known sky).
    """
    flux = np.asarray(flux_e, dtype=float)
    npix = np.asarray(npix, dtype=float)
    sky_term = 1.0 if n_sky is None else 1.0 + npix / np.asarray(n_sky, dtype=float)
    variance = flux + npix * sky_term * (sky_e_per_pix + dark_e_per_pix + np.square(read_noise_e))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(variance) / flux


# --------------------------------------------------------------------------- tables
REQUIRED = FIELD_PHOTOMETRY.required


def _as_table(table) -> pd.DataFrame:
    """Accept a DataFrame or an astropy Table; insist on the required columns."""
    table = table if isinstance(table, pd.DataFrame) else table.to_pandas()
    FIELD_PHOTOMETRY.check(table, "photometry")
    return table


class PhotometryTable:
    """A field's long photometry table with what every light curve of it needs
    (the per-frame conditions, each aperture's frames x sources matrices, its
    clear frames), computed on first use and kept.

    Light curves of every source of a field (``all_sources``) made from one
    object cost one pivot per aperture instead of one per star: thousands of
    stars take minutes, not hours. The table is wrapped, not copied, and must
    not change while the object is in use. Every function here accepts a plain
    table too (then nothing is kept between calls).
    """

    def __init__(self, table):
        self.data = _as_table(table)
        self._kept: dict = {}

    def kept(self, key, make):
        if key not in self._kept:
            self._kept[key] = make()
        return self._kept[key]


def _wrap(table) -> PhotometryTable:
    return table if isinstance(table, PhotometryTable) else PhotometryTable(table)


def _source_ids(phot: PhotometryTable) -> list:
    """Plain Python ids (not numpy scalars), in order of appearance."""
    return phot.kept("ids", lambda: pd.unique(phot.data["source_id"]).tolist())


def _frames(phot: PhotometryTable, target_id=None) -> pd.DataFrame:
    """Per-frame time and conditions, ordered by BJD; the target's own row wins."""
    table = phot.data
    cols = ["bjd_tdb"] + [c for c in FRAME_COLUMNS + ("bjd_geocentric",) if c in table.columns]
    frames = phot.kept("frames", lambda: table.groupby("frame_id")[cols].first())
    own = None
    if target_id is not None:
        rows = phot.kept("rows", lambda: table.groupby("source_id").indices).get(target_id, [])
        own = table.iloc[rows].groupby("frame_id")[cols + [c for c in TARGET_COLUMNS if c in table.columns]].first()
        frames = own.drop(columns=[c for c in TARGET_COLUMNS if c in own]).combine_first(frames)
    for col in FRAME_COLUMNS:
        if col not in frames.columns:
            frames[col] = np.nan
    for col in TARGET_COLUMNS:   # the target's own position only, never another star's
        frames[col] = own[col].reindex(frames.index) if own is not None and col in own else np.nan
    return frames.sort_values("bjd_tdb")


def _matrices(phot: PhotometryTable, aperture, frame_ids, source_ids, with_excess=False):
    """Flux and error matrices (frames x sources) for one aperture; bad points -> NaN, and so
    are single-frame excesses (a spared cosmic ray on the star), unless ``with_excess``, which
    keeps them and returns their mask as well."""

    def pivot():
        table = phot.data
        sub = table[table["aperture"] == aperture]
        if sub.duplicated(["frame_id", "source_id"]).any():
            raise ValueError(f"duplicate (frame_id, source_id) rows in aperture {aperture!r}")
        return [sub.pivot(index="frame_id", columns="source_id", values=v) for v in ("flux", "flux_err", "flag")]

    pivots = phot.kept(("pivot", aperture), pivot)
    flux, err, flags = (m.reindex(index=frame_ids, columns=source_ids) for m in pivots)
    f, e = flux.to_numpy(float), err.to_numpy(float)
    good = (flags.to_numpy(float) == 0) & np.isfinite(f) & (f > 0) & np.isfinite(e) & (e > 0)
    excess = phot.kept(("excess", aperture), lambda: _excess(phot, pivots))
    hit = excess.reindex(index=frame_ids, columns=source_ids, fill_value=False).to_numpy(bool) & good
    if with_excess:  # the caller decides: a comparison star's hit leaves the ensemble, the target's is flagged
        return np.where(good, f, np.nan), np.where(good, e, np.nan), hit
    return np.where(good & ~hit, f, np.nan), np.where(good & ~hit, e, np.nan)


def _excess(phot: PhotometryTable, pivots) -> pd.DataFrame:
    """Every source's single-frame excesses (:mod:`ccdflow.outliers`) in one aperture, over
    the whole field at once (the per-frame transparency from all its stars)."""
    order = _frames(phot).index
    flux, err, flags = (m.reindex(index=order) for m in pivots)
    good = flags.to_numpy(float) == 0
    hit = single_frame_excess(np.where(good, flux.to_numpy(float), np.nan), np.where(good, err.to_numpy(float), np.nan))
    return pd.DataFrame(hit, index=order, columns=flux.columns)


def transparency(flux, airmass=None) -> np.ndarray:
    """Per frame: the flux the field's stars kept, relative to a clear sky.

    ``flux`` is a frames x sources matrix (NaN = missing); stars measured in
    fewer than half the frames are left out. A frame's ratio is the median,
    over the brighter half of the stars measured in it, of each star's flux
    over its median: a median, not a flux-weighted sum, because the brightest
    stars are the ones that saturate in the sharpest frames and lose light
    there (a sum over a night whose seeing varied calls its sharp clear frames
    cloudy), and the brighter half because faint stars add noise. The
    clear-sky level is the upper envelope of these ratios: a line
    ln(ratio) = a + k airmass (k <= 0, extinction) fitted to every frame, then
    again to the frames above or within 5 % of it until they stay the same
    (clouds only ever take light away), or the 90th percentile of the ratios
    when airmass is unknown or hardly changes.
    """
    flux = np.asarray(flux, dtype=float)
    # only stars measured in most frames have a clear-sky median: a star saturated in every
    # clear frame is measured only through cloud, and its "median" would be that frame
    flux = flux[:, np.isfinite(flux).mean(axis=0) >= 0.5] if len(flux) else flux
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sources never measured in this aperture
        median = np.nanmedian(flux, axis=0)
    usable_star = np.isfinite(median) & (median > 0)
    if usable_star.sum() >= 2:
        usable_star &= median >= np.median(median[usable_star])
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames with no star measured
        ratio = np.nanmedian(flux[:, usable_star] / median[usable_star], axis=1) \
            if usable_star.any() else np.full(len(flux), np.nan)
    ratio = np.where(np.isfinite(ratio) & (ratio > 0), ratio, np.nan)
    good = np.isfinite(ratio)
    if not good.any():
        return ratio
    log_ratio = np.log(np.where(good, ratio, 1.0))
    level = np.full(len(ratio), np.log(np.percentile(ratio[good], 90)))
    x = np.full(len(ratio), np.nan) if airmass is None else np.asarray(airmass, dtype=float)
    usable = good & np.isfinite(x)
    if usable.sum() >= 5 and np.ptp(x[usable]) > 0.05:
        keep = usable  # the first line goes through every frame, clouds drag it down
        for _ in range(10):
            if keep.sum() < 3:
                break
            k, a = np.polyfit(x[keep], log_ratio[keep], 1)
            if k > 0:  # more light at higher airmass: clouds clearing, not negative extinction
                k, a = 0.0, float(np.mean(log_ratio[keep]))
            line = np.where(np.isfinite(x), a + k * x, level)
            new = usable & (log_ratio >= line - np.log(1 / 0.95))
            if np.array_equal(new, keep):
                break
            keep = new
        level = line
    return ratio / np.exp(level)


def _clear(flux, airmass=None) -> np.ndarray:
    """Frames whose transparency is at least MIN_TRANSPARENCY (unknown counts as clear)."""
    return ~(transparency(flux, airmass) < MIN_TRANSPARENCY)


def transparency_aperture(apertures) -> str:
    """The aperture that transparency is measured in: the largest one scaled to each
    frame's FWHM, whose share of a star's light the seeing does not change (in a
    fixed 3 px aperture a clear frame of 1.5x the FWHM keeps ~25 % less), else the
    largest fixed one."""
    def size(name):
        return float(re.sub(r"[^0-9.]", "", name) or 0)

    apertures = list(apertures)
    scaled = [a for a in apertures if str(a).endswith("fwhm")]
    return max(scaled or apertures, key=size)


def _clear_frames(phot: PhotometryTable, frames: pd.DataFrame) -> np.ndarray:
    """The clear frames of the field, in the order of ``frames``: one verdict per frame
    for every aperture and target (:func:`transparency_aperture`)."""
    def verdict():
        all_frames = _frames(phot)
        aperture = transparency_aperture(pd.unique(phot.data["aperture"]))
        flux = _matrices(phot, aperture, all_frames.index, _source_ids(phot))[0]
        return pd.Series(_clear(flux, all_frames["airmass"].to_numpy(float)), index=all_frames.index)

    return phot.kept("clear", verdict).reindex(frames.index).fillna(True).to_numpy(bool)


def field_transparency(table, aperture=None) -> pd.DataFrame:
    """Per frame of a photometry table: ``transparency`` and ``cloudy`` (< MIN_TRANSPARENCY),
    in ``aperture`` (default :func:`transparency_aperture`, what the light curves use).

    The same measure that keeps cloudy frames out of every light curve, so a
    field's summary can list them with the figure that excluded them.
    """
    phot = _wrap(table)
    frames = _frames(phot)
    aperture = aperture or transparency_aperture(pd.unique(phot.data["aperture"]))
    flux, _ = _matrices(phot, aperture, frames.index, _source_ids(phot))
    value = transparency(flux, frames["airmass"].to_numpy(float))
    return pd.DataFrame({"transparency": value, "cloudy": value < MIN_TRANSPARENCY}, index=frames.index)


# --------------------------------------------------------------------------- Broeg weights
def _leave_one_out(norm, norm_var, weights):
    """Ensemble of the other stars for every star: value and relative variance (T x N)."""
    present = np.isfinite(norm)
    w = np.where(present, weights, 0.0)
    wf = np.where(present, w * norm, 0.0)
    wv = np.where(present, w**2 * norm_var, 0.0)
    sw = w.sum(1, keepdims=True) - w
    with np.errstate(invalid="ignore", divide="ignore"):
        ens = (wf.sum(1, keepdims=True) - wf) / sw
        ens_var = (wv.sum(1, keepdims=True) - wv) / sw**2 / ens**2
    return np.where(sw > 0, ens, np.nan), np.where(sw > 0, ens_var, np.nan)


def _broeg(flux, err, max_iter=20, tol=1e-4):
    """Iterated weights; also each star's scatter and the scatter its errors predict.

    Stars with fewer than 3 good points get weight 0 (and NaN scatter).
    """
    n_stars = flux.shape[1]
    weights, sigma, expected = np.zeros(n_stars), np.full(n_stars, np.nan), np.full(n_stars, np.nan)
    use = np.isfinite(flux).sum(0) >= 3
    if use.sum() < 2:
        raise ValueError("need at least 2 stars with 3 or more good points")
    flux, err = flux[:, use], err[:, use]
    scale = bn.nanmedian(flux, axis=0)
    norm, norm_var = flux / scale, (err / scale) ** 2  # each star normalised to ~1
    w = 1.0 / bn.nanmedian(norm_var, axis=0)  # start from the photometric errors
    for _ in range(max_iter):
        ens, ens_var = _leave_one_out(norm, norm_var, w)
        diff = norm / ens
        diff = diff / bn.nanmedian(diff, axis=0)
        sig = bn.nanstd(diff, axis=0)
        new = 1.0 / np.maximum(sig, 1e-12) ** 2
        new = np.where(np.isfinite(new), new, 0.0)
        converged = np.allclose(new / new.sum(), w / w.sum(), rtol=tol, atol=1e-12)
        w = new
        if converged:
            break
    weights[use], sigma[use] = w / w.sum(), sig
    expected[use] = np.sqrt(np.nanmean((err / flux) ** 2 + ens_var, axis=0))
    return weights, sigma, expected


def ensemble_weights(flux_matrix, err_matrix, *, max_iter=20):
    """Broeg (2005) weights of comparison stars, normalised to sum 1.

    ``flux_matrix`` and ``err_matrix`` are (frames x stars); NaN marks a
    missing or flagged point. w_i = 1/sigma_i^2 where sigma_i is the scatter of
    star i's differential light curve against the weighted ensemble of the
    other stars; iterated until the normalised weights change by < 1e-4.
    Stars with fewer than 3 good points get weight 0.
    """
    flux = np.asarray(flux_matrix, dtype=float)
    err = np.asarray(err_matrix, dtype=float)
    if flux.ndim != 2 or flux.shape != err.shape:
        raise ValueError("flux and error must be matching (frames x stars) matrices")
    bad = ~(np.isfinite(flux) & np.isfinite(err) & (flux > 0) & (err > 0))
    flux, err = np.where(bad, np.nan, flux), np.where(bad, np.nan, err)
    return _broeg(flux, err, max_iter=max_iter)[0]


# --------------------------------------------------------------------------- selection
def _select(table, target_id, aperture, n_max=20, mag_range=2.5, exclude_ids=(), min_coverage=0.9):
    phot = _wrap(table)
    frames = _frames(phot)
    ids = _source_ids(phot)
    if target_id not in ids:
        raise KeyError(f"target {target_id!r} not in the table")
    flux, err = _matrices(phot, aperture, frames.index, ids)
    clear = _clear_frames(phot, frames)
    flux, err = flux[clear], err[clear]  # cloudy frames choose and weigh nothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: sources absent in this aperture
        median = bn.nanmedian(flux, axis=0)
    target_flux = median[ids.index(target_id)]
    if not np.isfinite(target_flux):
        raise ValueError(f"target {target_id!r} has no unflagged flux in aperture {aperture!r}")
    coverage = np.isfinite(flux).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dmag = -2.5 * np.log10(median / target_flux)
    excluded = set(exclude_ids) | {target_id}
    usable = np.array([s not in excluded for s in ids]) & (coverage >= min_coverage) & np.isfinite(dmag)
    window = mag_range
    pool = np.flatnonzero(usable & (np.abs(dmag) <= window))
    while pool.size < WANTED_COMPARISONS and window < MAX_MAG_RANGE:
        window = min(window + 0.5, MAX_MAG_RANGE)
        pool = np.flatnonzero(usable & (np.abs(dmag) <= window))
    if window > mag_range:
        log.info("%d comparison stars within %.1f mag of %s (window widened from %.1f)",
                 pool.size, window, target_id, mag_range)
    if pool.size < MIN_COMPARISONS:  # too few of similar brightness: take the nearest in magnitude
        log.warning("only %d comparison stars within %.1f mag of %s; using the nearest", pool.size, mag_range, target_id)
        pool = np.flatnonzero(usable)
        pool = pool[np.argsort(np.abs(dmag[pool]))][: 2 * n_max]
    pool = pool[np.argsort(median[pool])[::-1]][: 2 * n_max]  # brightest first
    if pool.size < MIN_COMPARISONS:
        raise ValueError(f"fewer than {MIN_COMPARISONS} usable comparison stars for {target_id!r} in {aperture!r}")

    rejected = []
    while True:  # drop the worst variable, re-weight, until none stands out
        weights, sigma, expected = _broeg(flux[:, pool], err[:, pool])
        # Noise common to all stars but missing from flux_err (scintillation,
        # flat-field errors) is a relative floor; without it the brightest,
        # best comparisons would look "variable".
        floor2 = np.median(np.maximum(sigma**2 - expected**2, 0.0))
        excess = sigma / np.sqrt(expected**2 + floor2)
        med = np.median(excess)
        limit = med * max(1.5, 1.0 + 5.0 * robust_std(excess / med))
        worst = int(np.argmax(excess))
        if excess[worst] <= limit or pool.size <= MIN_COMPARISONS + 1:
            break
        rejected.append({"source_id": ids[pool[worst]], "excess": float(excess[worst])})
        pool = np.delete(pool, worst)
    order = np.argsort(weights)[::-1][:n_max]
    details = {
        "rejected_variables": rejected,
        "scatter_excess": {ids[i]: float(x) for i, x in zip(pool, excess)},
        "clear": clear,
        "mag_window": window,
    }
    return [ids[i] for i in pool[order]], details


def select_comparisons(table, target_id, aperture, *, n_max=20, mag_range=2.5, exclude_ids=()) -> list:
    """Choose comparison stars for ``target_id`` in ``aperture``.

    Candidates: not the target or ``exclude_ids``, unflagged in >= 90 % of
    frames, median flux within ``mag_range`` magnitudes of the target's
    (brightest first, at most 2 n_max); a window holding fewer than
    ``WANTED_COMPARISONS`` stars is widened by 0.5 mag steps up to
    ``MAX_MAG_RANGE``. Broeg weighting is then iterated and the
    star whose scatter most exceeds the prediction from its errors, the
    ensemble's and a noise floor common to all stars is dropped as variable if
    that excess is > 1.5x and > 5 robust sigma above the median excess; repeat
    until none stands out. Frames through cloud (``transparency`` <
    ``MIN_TRANSPARENCY``) are left out. Returns up to ``n_max`` ids, largest
    weight first.
    """
    return _select(table, target_id, aperture, n_max, mag_range, exclude_ids)[0]


# --------------------------------------------------------------------------- light curve
def _relative_flux(t_flux, t_err, c_flux, c_err, weights, clear=None):
    """Target / ensemble normalised to median 1 on good frames; relative error and flags.

    ``clear``: frames not through cloud (default all); the others are
    flagged FLAG_TRANSPARENCY and left out of the comparison medians.
    """
    clear = np.ones(len(t_flux), bool) if clear is None else np.asarray(clear, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a comparison seen only in cloudy frames
        c_median = bn.nanmedian(np.where(clear[:, None], c_flux, np.nan), axis=0)
    norm = c_flux / c_median
    present = np.isfinite(norm)
    w = np.where(present, weights, 0.0)
    sw = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ens = np.where(present, w * norm, 0.0).sum(1) / sw
        ens_var = np.where(present, (w * c_err / c_median) ** 2, 0.0).sum(1) / sw**2
        ratio = t_flux / ens
        rel_err_frac = np.sqrt((t_err / t_flux) ** 2 + ens_var / ens**2)
    # A frame whose ensemble is only a sliver of the planned one rests on a few
    # stars' systematics: its error bar is honest, but mark it.
    thin = (sw < MIN_ENSEMBLE_WEIGHT * np.sum(weights)) | (present.sum(1) < min(MIN_COMPARISONS, len(weights)))
    flags = np.where(np.isfinite(t_flux), 0, FLAG_TARGET) | np.where(thin, FLAG_ENSEMBLE, 0)
    flags = np.where(sw > 0, flags, flags | FLAG_TARGET | FLAG_ENSEMBLE)  # no ensemble at all
    flags = np.where(clear, flags, flags | FLAG_TRANSPARENCY)
    ratio = np.where(flags & FLAG_TARGET, np.nan, ratio)
    level = np.nanmedian(ratio[flags == 0]) if np.any(flags == 0) else np.nanmedian(ratio)
    return ratio / level, rel_err_frac * ratio / level, flags.astype(int)


def check_star_curves(c_flux, c_err, weights, clear, n_max: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Differential light curves ``(rel_flux, rel_flux_err)`` of up to ``n_max`` comparison
    stars (the highest-weighted), each against the ensemble of the others (its own light
    left out): what the photometry at one aperture does to constant stars, seen without the
    target's own data (an aperture chosen by the target's residuals is chosen partly for its
    noise, which biases the fit's errors low)."""
    n = c_flux.shape[1]
    if n < 3:  # a check star needs at least two others for an ensemble
        return []
    out = []
    for j in np.argsort(-np.asarray(weights, float), kind="stable")[:n_max]:
        others = np.arange(n) != j
        rel, rel_err, flags = _relative_flux(c_flux[:, j], c_err[:, j], c_flux[:, others], c_err[:, others],
                                             np.asarray(weights, float)[others], clear)
        out.append((np.where(flags == 0, rel, np.nan), rel_err))
    return out


def _one_aperture(phot: PhotometryTable, target_id, aperture, comparisons, bootstrap, rng, frames, exclude_ids=(),
                  checks=0):
    details = {}
    if comparisons is None:
        comparisons, details = _select(phot, target_id, aperture, exclude_ids=exclude_ids)
        clear = details.pop("clear")
    else:
        clear = _clear_frames(phot, frames)
    comparisons = list(comparisons)
    if target_id in comparisons:
        raise ValueError("the target cannot be its own comparison star")
    unknown = set(comparisons) - set(_source_ids(phot))
    if unknown:
        raise KeyError(f"comparison stars not in the table: {sorted(unknown)}")
    flux, err, excess = _matrices(phot, aperture, frames.index, [target_id] + comparisons, with_excess=True)
    c_flux, c_err = (np.where(excess[:, 1:], np.nan, m[:, 1:]) for m in (flux, err))
    weights = ensemble_weights(c_flux[clear], c_err[clear]) if len(comparisons) > 1 else np.ones(1)
    rel, rel_err, flags = _relative_flux(flux[:, 0], err[:, 0], c_flux, c_err, weights, clear)
    if checks:
        details["check_curves"] = check_star_curves(c_flux, c_err, weights, clear, checks)
    flags = np.where(excess[:, 0], flags | FLAG_EXCESS, flags)  # kept, for the eye; out of every fit
    lc = pd.DataFrame(
        {
            "bjd_tdb": frames["bjd_tdb"].to_numpy(float),
            "rel_flux": rel,
            "rel_flux_err": rel_err,
            **{col: frames[col].to_numpy(float) for col in FRAME_COLUMNS + TARGET_COLUMNS},
            "flag": flags,
        },
        index=frames.index,
    )
    if "bjd_geocentric" in frames:  # no site known: the tables say so on every row
        lc.insert(1, "bjd_geocentric", frames["bjd_geocentric"].fillna(False).to_numpy(bool))
    if bootstrap > 0:
        # Resample the comparison stars: the spread of the resulting light curves
        # is the ensemble's contribution, measured instead of propagated.
        rng = np.random.default_rng(rng)
        n = len(comparisons)
        draws = np.empty((bootstrap, len(lc)))
        for b in range(bootstrap):
            pick = rng.integers(0, n, n)
            draws[b] = _relative_flux(flux[:, 0], err[:, 0], c_flux[:, pick], c_err[:, pick], weights[pick], clear)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # frames without a target flux
            ens_boot = np.nanstd(draws, axis=0, ddof=1)
        lc["rel_flux_err_boot"] = np.hypot(rel * err[:, 0] / flux[:, 0], ens_boot)
    info = {
        "aperture": aperture,
        "comparisons": comparisons,
        "weights": dict(zip(comparisons, weights.tolist())),
        "n_frames": len(lc),
        "n_good": int(np.sum(lc["flag"] == 0)),
        "n_cloudy": int(np.sum(~clear)),
        "scatter": point_to_point_scatter(lc.loc[lc["flag"] == 0, "rel_flux"]),
        "median_err": float(np.nanmedian(lc.loc[lc["flag"] == 0, "rel_flux_err"])),
        **details,
    }
    return lc, info


def differential_light_curve(table, target_id, aperture=None, *, comparisons=None, bootstrap=0, rng=None,
                             exclude_ids=(), score=None, checks=0):
    """Differential light curve of ``target_id``: (DataFrame, info).

    Columns: ``bjd_tdb, rel_flux, rel_flux_err, airmass, fwhm, bkg, flag`` (:data:`ccdflow.tables.LIGHT_CURVE`)
    (+ ``rel_flux_err_boot`` when ``bootstrap`` > 0), one row per frame in time
    order, index ``frame_id``. ``rel_flux`` is target / weighted ensemble,
    normalised to median 1 over unflagged frames; ``rel_flux_err`` combines the
    target's ``flux_err`` with the ensemble's (sum of w_j^2 err_j^2). Frames
    where the target is flagged or missing keep their row with NaN flux and
    ``flag & FLAG_TARGET``; ``FLAG_ENSEMBLE`` marks frames with less than 25 %
    of the ensemble weight (or fewer than 2 comparison stars) present;
    ``FLAG_TRANSPARENCY`` frames through cloud (the field's stars below
    ``MIN_TRANSPARENCY`` of their clear-sky flux), which are also left out of the
    choice and weights of the comparison stars and of the normalisation.
    ``rel_flux_err_boot`` = target error (+) the frame-by-frame spread over
    ``bootstrap`` resamplings (with replacement, weights kept) of the
    comparison stars: the ensemble's share measured rather than propagated.

    ``exclude_ids``: sources never used as comparison stars (blended ones:
    a neighbour's light in the aperture changes with the seeing, which is
    time-correlated noise the error bars do not hold).

    ``aperture=None`` tries every aperture and keeps the lowest ``score(lc, info)``
    (default, or when every score is inf: point-to-point scatter; the workflow
    passes a red-noise-aware one, :func:`ccdflow.lcfit.aperture_score`, with
    ``checks`` > 0, which puts the light curves of that many comparison stars,
    each against the others, in ``info['check_curves']`` while scoring:
    :func:`check_star_curves`): ``info['aperture']``,
    ``info['scatter_by_aperture']``, ``info['score_by_aperture']``.
    ``info`` also holds the comparisons, their weights and rejected variables.
    """
    phot = _wrap(table)
    frames = _frames(phot, target_id)
    apertures = [aperture] if aperture is not None else list(pd.unique(phot.data["aperture"]))
    results = {}
    for name in apertures:
        try:
            results[name] = _one_aperture(phot, target_id, name, comparisons, bootstrap, rng, frames, exclude_ids,
                                          checks if score is not None else 0)
        except ValueError as err:
            if aperture is not None:
                raise
            log.warning("aperture %r skipped: %s", name, err)
    if not results:
        raise ValueError(f"no aperture gives a light curve for {target_id!r}")
    scatter = {name: res[1]["scatter"] for name, res in results.items()}
    scores = scatter if score is None or len(results) == 1 else {name: float(score(*res))
                                                                  for name, res in results.items()}
    if not any(np.isfinite(v) for v in scores.values()):  # nothing the score could judge by
        scores = scatter
    best = min(scores, key=lambda k: np.inf if not np.isfinite(scores[k]) else scores[k])
    lc, info = results[best]
    for _, other in results.values():
        other.pop("check_curves", None)
    info["scatter_by_aperture"] = scatter
    info["score_by_aperture"] = scores
    return lc, info


def plot_light_curve(lc, path, title, *, bin_minutes=10.0) -> None:
    """PNG of relative flux against BJD_TDB (days after its integer part): unflagged
    frames with error bars, means of ``bin_minutes`` bins of them (error = std /
    sqrt(n)) on top, and every flagged frame drawn as its own mark, named in the
    legend with its flag (cloud, excess light, thin ensemble; a target without flux
    as a tick on the lower edge). The flux axis spans the unflagged frames: a
    flagged frame beyond it is drawn on the edge as a triangle pointing out."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot: no global backend switch

    t = lc["bjd_tdb"].to_numpy(float)
    flux = lc["rel_flux"].to_numpy(float)
    err = lc["rel_flux_err"].to_numpy(float)
    flags = lc["flag"].to_numpy(int)
    timed = np.isfinite(t)
    offset = float(np.floor(np.nanmin(t))) if timed.any() else 2400000.0
    good = (flags == 0) & np.isfinite(flux) & timed
    x, y = t[good] - offset, flux[good]
    fig = Figure(figsize=(8, 4.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.errorbar(x, y, yerr=err[good], fmt=".", color="C0", ecolor="0.75", ms=3, lw=0.6,
                label=f"frames ({int(good.sum())})")
    if x.size:
        idx = np.floor((x - x.min()) / (bin_minutes / 1440.0)).astype(int)
        n = np.bincount(idx)
        keep = n > 0
        xb, yb = np.bincount(idx, x)[keep] / n[keep], np.bincount(idx, y)[keep] / n[keep]
        var = np.maximum(np.bincount(idx, y**2)[keep] / n[keep] - yb**2, 0.0)
        ax.errorbar(xb, yb, yerr=np.sqrt(var / np.maximum(n[keep] - 1, 1)), fmt="o", color="C3", ms=5,
                    label=f"{bin_minutes:g}-min bins")
    # the flux range of the unflagged frames: a frame through thick cloud must not squash them
    shown = y if y.size else flux[np.isfinite(flux) & timed]
    if shown.size:
        lo, hi = np.percentile(shown, [0.5, 99.5])
        spread = 3 * float(np.nanmedian(err[good])) if np.isfinite(err[good]).any() else 0.0
        pad = max(0.12 * (hi - lo), spread, 1e-3)
        low, high = lo - pad, hi + pad
        ax.set_ylim(low, high)
    else:
        low, high = -np.inf, np.inf
    marks = [  # a frame with several flags is drawn as the first of them
        (FLAG_TRANSPARENCY, f"cloud (transparency < {MIN_TRANSPARENCY:.0%})", "x", "0.45"),
        (FLAG_EXCESS, "excess light (cosmic ray?)", "*", "C1"),
        (FLAG_ENSEMBLE, f"thin ensemble (< {MIN_ENSEMBLE_WEIGHT:.0%} weight)", "+", "C4"),
        (~0, "other flag", "d", "0.3"),   # any bit not named above
    ]
    drawn, beyond = good.copy(), False
    for bit, text, marker, colour in marks:
        these = ((flags & bit) != 0) & np.isfinite(flux) & timed & ~drawn
        drawn |= these
        if not these.any():
            continue
        value = np.clip(flux[these], low, high)
        inside = value == flux[these]
        ax.plot(t[these][inside] - offset, value[inside], marker, ls="none", color=colour, ms=6, mew=1.2,
                label=f"flagged: {text} ({int(these.sum())})")
        for side, arrow in ((low, "v"), (high, "^")):
            out = ~inside & (value == side)
            ax.plot(t[these][out] - offset, value[out], arrow, ls="none", color=colour, ms=6, label="_beyond")
            beyond |= bool(out.any())
    if beyond:  # one legend entry for the triangles, whatever their flag (their colour says it)
        ax.plot([], [], "^", ls="none", color="0.45", ms=6, label="flagged, off the axis")
    missing = ((flags & FLAG_TARGET) != 0) & timed
    if missing.any():
        edge = low if np.isfinite(low) else 0.0
        ax.plot(t[missing] - offset, np.full(int(missing.sum()), edge), "|", color="C3", ms=12, mew=1.5,
                label=f"no target flux ({int(missing.sum())})")
    ax.set(xlabel=f"BJD_TDB - {offset:.0f} (days)", ylabel="relative flux", title=title)
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.grid(alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()  # errorbars (frames, bins) come last: put them first
    order = sorted(range(len(handles)), key=lambda i: not hasattr(handles[i], "has_yerr"))
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncol=3,
               fontsize=7, frameon=False)
    fig.savefig(path, format="png")
