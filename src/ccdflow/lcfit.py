"""A target's light curve, detrended and (for a configured transit) fitted: the workflow's glue.

:mod:`ccdflow.transitfit` does the numbers; this module turns the config into a
:class:`~ccdflow.transitfit.TransitSpec`, scores apertures by red noise and
writes the fit products beside the light curve:

``<name>_fit.json``  parameters with errors (inflated by the red-noise factor
                     beta; the white-only ones kept), beta, reduced chi2, terms
                     chosen (BIC), residual rms by bin size;
``<name>_fit.ecsv``  per frame: relative flux, full model, baseline, detrended
                     flux, transit model, residual;
``<name>_fit.png``   raw and detrended light curve with the model, and the
                     residual rms against bin size with the white-noise line.

Aperture choice (:func:`aperture_score`): the lowest point-to-point scatter
picks apertures whose errors are white on short timescales but drift with
airmass and seeing, which moves a transit's mid-time by many minutes. The score
is instead :func:`ccdflow.rednoise.noise_score` (robust rms x time-averaged
beta), so an aperture is judged by the noise on the transit's own timescale, of
the comparison stars' own light curves, each detrended like the target
(:func:`check_star_score`): the target's residuals would choose an aperture
partly for the noise its fit absorbed, and its errors would be too small.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_text
from .transitfit import (
    FitResult,
    TransitSpec,
    decorrelation_vectors,
    fit_light_curve,
    noise_score,
    plot_fit,
)

__all__ = ["DEFAULT_TERMS", "aperture_score", "check_star_score", "fit_target", "residual_score", "transit_spec", "write_fit"]

# time is left out by default: over a night it is nearly collinear with airmass, and BIC then
# picks either by chance; a straight line in time fits extinction's airmass curve worse and
# the difference leaks into the depth (-30 % on one simulated night). Add it for drifts.
DEFAULT_TERMS = ("airmass", "fwhm", "bkg", "x", "y")
SCORE_BIN_MINUTES = (5.0, 10.0, 15.0, 20.0, 30.0)
CLIP_SIGMA = 5.0      # residuals beyond this many robust sigmas are clipped from the fit ...
MAX_CLIP_ROUNDS = 3   # ... refitting up to this many times


def transit_spec(cfg: dict | None, times_d, exptime_s: float) -> TransitSpec | None:
    """The target's ``transit:`` block as a TransitSpec at the epoch nearest the data (None without one)."""
    if not cfg:
        return None
    period = float(cfg["period_d"])
    middle = float(np.nanmedian(times_d))
    t0 = float(cfg["t0_bjd"]) + round((middle - float(cfg["t0_bjd"])) / period) * period
    duration = float(cfg["duration_h"]) / 24.0
    return TransitSpec(period_d=period, t0_guess=t0, duration_guess_d=duration,
                       depth_guess=float(cfg.get("depth", 0.01)), u=tuple(cfg.get("u", (0.4, 0.25))),
                       a_rs=cfg.get("a_rs"), inc_deg=cfg.get("inc_deg"), exp_time_s=float(exptime_s),
                       t0_window_d=float(cfg.get("t0_window_h", 0.5 * float(cfg["duration_h"]))) / 24.0)


def fit_target(lc: pd.DataFrame, spec: TransitSpec | None, detrend: dict, *, average: bool | None = None) -> FitResult:
    """Joint transit + baseline fit (or baseline only) of a light curve's unflagged points,
    points beyond CLIP_SIGMA robust sigmas of the model clipped (``result.good`` False);
    the result's arrays are parallel to ``lc``. A transit's parameters are averaged over the
    term sets (``detrend['average']``, default true; ``average`` overrides it)."""
    t, f, e = (lc[c].to_numpy(float) for c in ("bjd_tdb", "rel_flux", "rel_flux_err"))
    good = (lc["flag"].to_numpy() == 0) & np.isfinite(f) & np.isfinite(e) & (e > 0) & np.isfinite(t)
    if good.sum() < 10:
        raise ValueError(f"only {int(good.sum())} unflagged points: too few to fit")
    terms = detrend.get("terms", DEFAULT_TERMS)
    vectors = {k: v for k, v in decorrelation_vectors(lc).items() if k in terms}
    criterion = detrend.get("criterion", "bic")
    average = detrend.get("average", True) if average is None else average
    result = fit_light_curve(t, f, e, vectors, spec, good=good, criterion=criterion)
    # points far off the model: a cosmic ray on the star's core that L.A.Cosmic spared as part
    # of the star (+15 % in one frame on a simulated night), a satellite: clipped, then refitted
    for _ in range(MAX_CLIP_ROUNDS):
        pull = result.residuals / e
        used = np.asarray(result.good, bool) & np.isfinite(pull)
        centre = np.median(pull[used])
        spread = 1.4826 * np.median(np.abs(pull[used] - centre))
        outliers = used & (np.abs(pull - centre) > CLIP_SIGMA * spread)
        if not outliers.any():
            break
        good = good & ~outliers
        result = fit_light_curve(t, f, e, vectors, spec, good=good, criterion=criterion)
    if average and spec is not None and criterion is not None:  # once, on the points kept
        result = fit_light_curve(t, f, e, vectors, spec, good=good, criterion=criterion, average=True)
    return result


def aperture_score(lc: pd.DataFrame, info: dict, spec: TransitSpec | None, detrend: dict) -> float:
    """Red-noise-aware noise of one aperture's light curve (lower is better).

    By the comparison stars (:func:`check_star_score`) when there are at least three;
    otherwise, for a transit, by the fit's own residuals (:func:`residual_score`), and
    inf without one (the caller then falls back to point-to-point scatter)."""
    curves = info.get("check_curves") or []
    if curves:
        return check_star_score(curves, lc, detrend)
    return residual_score(lc, spec, detrend) if spec is not None else np.inf


def residual_score(lc: pd.DataFrame, spec: TransitSpec | None, detrend: dict) -> float:
    """noise_score of the residuals of the light curve's own fit; inf when it cannot be fitted.
    Chosen by it, an aperture is partly chosen for a noise pattern the model absorbed: over
    simulated nights the mid-time pulls' rms was 1.30 against 0.97-1.02 at a fixed aperture."""
    try:
        result = fit_target(lc, spec, detrend, average=False)  # the chosen terms' residuals are scored
    except (ValueError, np.linalg.LinAlgError):
        return np.inf
    used = np.asarray(result.good, bool) & np.isfinite(result.residuals)
    n_params = len(result.free) + len(result.terms) + 1
    return float(noise_score(result.times[used], result.residuals[used], SCORE_BIN_MINUTES, n_params=n_params))


def check_star_score(curves, lc: pd.DataFrame, detrend: dict) -> float:
    """An aperture's noise on the transit's timescale, judged by constant stars (lower is better).

    ``curves``: the comparison stars' own differential light curves at this aperture
    (:func:`ccdflow.lightcurve.check_star_curves`), each detrended against the target's
    conditions (``lc``'s airmass, FWHM, sky, x/y; terms by the criterion) and scored by
    :func:`ccdflow.rednoise.noise_score` over its median error: the factor by which
    that aperture's noise exceeds the error bars on ingress timescales. The score is the
    target's median error times the median factor. The target's own residuals are never
    looked at, so its transit's parameters are not chosen for a lucky noise pattern.
    inf when no check star can be fitted.
    """
    factors = []
    vectors_lc = lc.copy()
    for rel, err in curves:
        vectors_lc["rel_flux"], vectors_lc["rel_flux_err"] = rel, err
        vectors_lc["flag"] = np.where(np.isfinite(rel) & np.isfinite(err), 0, 1)
        try:
            result = fit_target(vectors_lc, None, detrend, average=False)
        except (ValueError, np.linalg.LinAlgError):
            continue
        used = np.asarray(result.good, bool) & np.isfinite(result.residuals)
        n_params = len(result.terms) + 1
        score = noise_score(result.times[used], result.residuals[used], SCORE_BIN_MINUTES, n_params=n_params)
        factors.append(score / float(np.median(err[used])))
    good = lc["flag"].to_numpy() == 0
    if not factors or not good.any():
        return np.inf
    return float(np.nanmedian(lc.loc[good, "rel_flux_err"])) * float(np.median(factors))


def write_fit(result: FitResult, lc: pd.DataFrame, outdir: Path, name: str, title: str) -> dict:
    """The fit products of one target; returns the summary written to JSON."""
    from .tables import FIT_POINTS, write_table

    summary = result.to_dict()
    write_text(outdir / f"{name}_fit.json", json.dumps(summary, indent=1, default=float))
    points = result.points()
    points.insert(0, "frame_id", lc["frame_id"].to_numpy() if "frame_id" in lc else lc.index.to_numpy())
    points.insert(2, "rel_flux", lc["rel_flux"].to_numpy(float))
    points.insert(3, "detrended", lc["rel_flux"].to_numpy(float) / result.baseline)
    write_table(points, outdir / f"{name}_fit.ecsv", schema=FIT_POINTS)
    plot_fit(lc["bjd_tdb"].to_numpy(float), lc["rel_flux"].to_numpy(float), result, outdir / f"{name}_fit.png",
             title)
    return summary
