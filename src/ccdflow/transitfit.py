"""Detrending and transit fits of differential light curves, with red-noise-aware errors.

Model (multiplicative baseline): ``flux = transit(t) * (c0 + sum_i c_i z_i)``
with ``z_i`` standardised decorrelation vectors (time, airmass, FWHM, sky,
pointing x/y; :func:`decorrelation_vectors`) and ``transit`` a quadratically
limb-darkened batman model on a circular orbit of fixed period, integrated over
the exposure when one is given.

* Variable projection: for a given transit shape the baseline is linear, so its
  coefficients come from a weighted linear least-squares solve inside the
  residual function; ``scipy.optimize.least_squares`` only moves the transit
  parameters (2-4 of them). The mid-time starts from the best few minima of a
  chi2 scan across the data, so a wrong ``t0_guess`` does not trap the fit.
* Free transit parameters: ``t0`` and ``rp`` (``depth = rp**2``), plus the
  shape. With ``a_rs`` and ``inc_deg`` both free the shape is (T14, b): T14 is
  what the data measure directly and nearly uncorrelated with t0 and rp, while
  (a_rs, inc) or (a_rs, b) are strongly correlated along the curve of constant
  duration. a_rs and inc follow in closed form (circular orbit):
  ``a sin i = sqrt((1+k)^2 - b^2) / sin(pi T14 / P)``, ``b = a cos i``. With
  ``a_rs`` fixed the shape is b (``cos i = b / a``); with ``inc_deg`` fixed it is
  T14 (``a = (1+k) / sqrt(sin^2(pi T14/P) sin^2 i + cos^2 i)``). b is bounded to
  [0, 1 + rp) (grazing allowed, beyond that no transit).
* Terms: greedy forward selection from ``c0`` alone, adding the candidate that
  lowers the criterion most (BIC = chi2 + k ln n, k = every free parameter)
  until none does. BIC assumes correct errors; ``flux_err`` of small-telescope
  light curves seldom are, and underestimated errors let BIC keep spurious
  terms, so by default chi2 in the criterion is divided by the reduced chi2 of
  the model with every candidate (the reported ``chi2``/``red_chi2`` are not).
* Model averaging (``average``): the chosen terms are one answer among
  several the data nearly equally allow, and on short baselines collinear
  terms (airmass and seeing both grow through a setting field) trade against
  the ingress and egress times; their errors alone ignore that choice (on
  white noise with airmass + FWHM terms, mid-time pulls had rms 1.5).
  Every subset of the candidate terms is fitted and weighted by
  exp(-criterion / 2); a transit parameter is the weighted mean. Its error:
  each term set's estimate is (linearised) a weighted sum of the same data
  points, so the averaged estimate is too, and its variance is the squared
  norm of the weighted mean response (each set's on its own noise scale,
  beta included), plus the between-set spread only where it exceeds what
  that noise makes (sum w |response_i - mean response|^2): disagreement
  beyond the noise. The usual formula, sum w (error^2 + (value - mean)^2)
  (Buckland et al. 1997; e.g. Gibson 2014, MNRAS 445, 3401), treats the
  sets' estimates as independent and counts the noise-made spread twice:
  for nested linear sets of weights w and 1 - w it gives
  sigma_A^2 + (1 - w^2) D where the truth is sigma_A^2 + (1 - w)^2 D
  (D = sigma_B^2 - sigma_A^2), depth errors ~10 % too large on simulated
  nights' own vectors with white noise (benchmarks/study_model_average.py).
  A term set whose fit leaves the mid-time unconstrained (its error wider than
  the range the mid-time is sought in: the baseline took the transit) is left
  out of the average.
* Errors: covariance from the Jacobian of the full model (transit parameters
  and baseline coefficients together, so the baseline's uncertainty reaches t0
  and depth), scaled by max(1, reduced chi2), then multiplied by the red-noise
  factor beta of the residuals on 0.5-2x the ingress duration (Winn et al.
  2008; :mod:`ccdflow.rednoise`). Both sets are kept (``errors``,
  ``errors_white``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from .atomic import atomic_path
from .rednoise import DEFAULT_BIN_MINUTES, noise_score, rms_by_bin, time_averaged_beta

log = logging.getLogger(__name__)

__all__ = ["CANDIDATE_COLUMNS", "FitResult", "TransitSpec", "decorrelation_vectors", "fit_light_curve",
           "noise_score", "plot_fit", "rms_by_bin", "time_averaged_beta"]

CANDIDATE_COLUMNS = ("airmass", "fwhm", "bkg", "x", "y")
BETA_INGRESS_MULTIPLES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # bin lengths for beta, in ingress durations
N_STARTS = 3  # mid-time starts: the lowest minima of the chi2 scan
MAX_AVERAGED_TERMS = 6  # model averaging fits 2^n term sets
POINTING_DETREND_DEGREE = 2  # x, y decorrelate as their wander about this polynomial in time
_STEP = {"t0": 1e-4, "rp": 1e-5, "t14": 1e-4, "b": 1e-4}  # central-difference steps, fit units


@dataclass(frozen=True)
class TransitSpec:
    """What is known of the transit and how to model it.

    ``period_d`` is fixed; ``t0_guess`` (BJD_TDB), ``duration_guess_d`` (T14)
    and ``depth_guess`` start the fit. ``u``: quadratic limb darkening, fixed.
    ``a_rs`` (a / R_star) and ``inc_deg`` are held fixed when given, else fitted
    (module notes). ``exp_time_s`` > 0 integrates the model over each exposure
    with ``supersample`` sub-points (default: one per 20 s, odd, at least 3).
    ``t0_window_d``: the mid-time is sought only within this of ``t0_guess``
    (the ephemeris' uncertainty); None: anywhere the data allow. Without it a
    baseline term can absorb the transit and a dip be "found" at the series' end.
    """

    period_d: float
    t0_guess: float
    duration_guess_d: float
    depth_guess: float
    u: tuple[float, float] = (0.4, 0.25)
    a_rs: float | None = None
    inc_deg: float | None = None
    exp_time_s: float = 0.0
    supersample: int | None = None
    t0_window_d: float | None = None


def decorrelation_vectors(table, *, time: bool = True, time2: bool = False) -> dict[str, np.ndarray]:
    """Standardised decorrelation vectors (minus mean, over std) from a light-curve table.

    ``table``: a DataFrame with any of ``airmass, fwhm, bkg, x, y`` and
    ``bjd_tdb`` (for ``time``, linear; ``time2``, its square, is off by default:
    over a night airmass is nearly quadratic in time and the two would compete).
    Columns that are absent, all-NaN or constant are skipped; NaN stays NaN
    (:func:`fit_light_curve` drops those rows).

    ``x`` and ``y`` are the star's wander on the pixel grid about a quadratic in
    time (:data:`POINTING_DETREND_DEGREE`): what pixel-phase and flat-field errors
    follow from frame to frame. Their slow drift is a trend in time, which the
    airmass term already models; left in, a pointing that drifts steadily through
    the night stands in for time, and a straight line fitted to extinction's
    airmass curve takes a third of a transit's depth (a simulated night: depth
    pull -3.8 with ``y`` chosen, -1.1 with its wander).
    """
    raw = {}
    t = np.asarray(table["bjd_tdb"], dtype=float) if "bjd_tdb" in table else None
    if t is not None and (time or time2):
        zt = _standardise(t)
        if zt is not None:
            if time:
                raw["time"] = zt
            if time2:
                raw["time2"] = zt**2
    for col in CANDIDATE_COLUMNS:
        if col in table:
            raw[col] = np.asarray(table[col], dtype=float)
            if col in ("x", "y") and t is not None:
                raw[col] = _wander(raw[col], t)
    out = {}
    for name, v in raw.items():
        z = _standardise(v)
        if z is not None:
            out[name] = z
    return out


def _wander(v, t, degree=None):
    """``v`` minus its least-squares polynomial in time (``v`` unchanged with too few points)."""
    degree = POINTING_DETREND_DEGREE if degree is None else degree
    ok = np.isfinite(v) & np.isfinite(t)
    if ok.sum() <= degree + 2:
        return v
    tt = (t - t[ok].mean()) / max(float(np.ptp(t[ok])), 1e-12)
    return v - np.polyval(np.polyfit(tt[ok], v[ok], degree), tt)


def _standardise(v):
    finite = np.isfinite(v)
    if finite.sum() < 2:
        return None
    mean, std = v[finite].mean(), v[finite].std()
    if not std > 1e-12 * max(1.0, abs(mean)):
        return None
    return (v - mean) / std


# --------------------------------------------------------------------------- transit shape
class _Shape:
    """The batman model of one spec on the fitted times; maps fit vectors to parameters.

    Fit vector: t0 and T14 in units of ``duration_guess_d`` (t0 from ``tref``),
    rp and b as they are, so every component is of order 0.1-1.
    """

    def __init__(self, spec: TransitSpec, times, tref):
        import batman

        self.spec, self.tref, self.scale, self.period = spec, tref, spec.duration_guess_d, spec.period_d
        self.names = ["t0", "rp"] + (["t14"] if spec.a_rs is None else []) + (["b"] if spec.inc_deg is None else [])
        p = batman.TransitParams()
        p.t0, p.per, p.rp, p.ecc, p.w = 0.0, spec.period_d, np.sqrt(spec.depth_guess), 0.0, 90.0
        p.a, p.inc = 10.0, 90.0
        p.u, p.limb_dark = [float(c) for c in spec.u], "quadratic"
        self.params = p
        self.times = np.ascontiguousarray(np.asarray(times, dtype=float) - tref)
        n_sub = spec.supersample or max(3, int(np.ceil(spec.exp_time_s / 20.0)) | 1)
        self.model = (batman.TransitModel(p, self.times, supersample_factor=n_sub, exp_time=spec.exp_time_s / 86400)
                      if spec.exp_time_s > 0 else batman.TransitModel(p, self.times))

    def geometry(self, x):
        """(t0 from tref in days, rp, a_rs, inc_deg) of a fit vector."""
        v = dict(zip(self.names, x))
        k, s = v["rp"], self.spec
        if s.a_rs is not None and s.inc_deg is not None:
            a, inc = s.a_rs, s.inc_deg
        elif s.a_rs is not None:  # b free
            a = s.a_rs
            inc = np.degrees(np.arccos(np.clip(v["b"] / a, -1.0, 1.0)))
        else:
            sin_t = np.sin(np.pi * min(v["t14"] * self.scale / self.period, 0.5))
            if s.inc_deg is not None:
                i = np.radians(s.inc_deg)
                a, inc = (1 + k) / np.hypot(sin_t * np.sin(i), np.cos(i)), s.inc_deg
            else:
                b = min(abs(v["b"]), (1 + k) * (1 - 1e-9))
                a = np.hypot(np.sqrt((1 + k) ** 2 - b**2) / sin_t, b)
                inc = np.degrees(np.arccos(b / a))
        return v["t0"] * self.scale, k, a, inc

    def flux(self, x, model=None):
        t0, rp, a, inc = self.geometry(x)
        p = self.params
        p.t0, p.rp, p.a, p.inc = float(t0), float(rp), float(a), float(inc)
        return (model or self.model).light_curve(p)

    def derived(self, x) -> dict:
        """Physical parameters: t0 (BJD_TDB), rp, depth, a_rs, inc_deg, b, t14_d, ingress_d."""
        t0, k, a, inc = self.geometry(x)
        sin_i, b = np.sin(np.radians(inc)), a * np.cos(np.radians(inc))

        def span(r):
            return self.period / np.pi * np.arcsin(min(1.0, np.sqrt(max(r**2 - b**2, 0.0)) / (a * sin_i)))

        t14, t23 = span(1 + k), span(1 - k)
        return {"t0": self.tref + t0, "rp": k, "depth": k**2, "a_rs": a, "inc_deg": inc, "b": b,
                "t14_d": t14, "ingress_d": 0.5 * (t14 - t23)}

    def start(self):
        s = self.spec
        x = {"t0": (s.t0_guess - self.tref) / self.scale, "rp": np.sqrt(s.depth_guess), "t14": 1.0, "b": 0.3}
        if s.a_rs is not None and s.inc_deg is None:  # b from the guessed duration
            x["b"] = np.sqrt(max((1 + x["rp"]) ** 2 - (s.a_rs * np.sin(np.pi * s.duration_guess_d / s.period_d)) ** 2,
                                 0.0))
        return np.array([x[n] for n in self.names])

    def t0_range(self, t_lo, t_hi, margin=1.0):
        """Allowed mid-times, in fit units: the data +- ``margin`` durations, within the window."""
        lo, hi = (t_lo - self.tref) / self.scale - margin, (t_hi - self.tref) / self.scale + margin
        if self.spec.t0_window_d is not None:
            guess, half = (self.spec.t0_guess - self.tref) / self.scale, self.spec.t0_window_d / self.scale
            lo, hi = max(lo, guess - half), min(hi, guess + half)
            if lo >= hi:   # the predicted transit lies outside the data: say so, do not fit noise
                raise ValueError("the ephemeris puts the transit outside the data (t0_window)")
        return lo, hi

    def bounds(self, t_lo, t_hi):
        top_b = 1.5 if self.spec.a_rs is None else min(1.5, self.spec.a_rs)
        lim = {"t0": self.t0_range(t_lo, t_hi), "rp": (1e-3, 0.5),
               "t14": (0.25, min(4.0, 0.5 * self.period / self.scale)), "b": (0.0, top_b)}
        return np.array([lim[n][0] for n in self.names]), np.array([lim[n][1] for n in self.names])

    def dflux(self, x):
        """Central-difference derivatives of the transit model, one column per fit parameter."""
        cols = []
        for j, name in enumerate(self.names):
            h = np.zeros_like(x)
            h[j] = _STEP[name]
            cols.append((self.flux(x + h) - self.flux(x - h)) / (2 * _STEP[name]))
        return np.column_stack(cols)


# --------------------------------------------------------------------------- fitting
@dataclass
class _Trial:
    terms: tuple
    x: np.ndarray | None
    coef: np.ndarray
    chi2: float
    k: int


def _solve(transit, design, w, y):
    a = transit[:, None] * design * w[:, None]
    coef = np.linalg.lstsq(a, y * w, rcond=None)[0]
    return coef, y * w - a @ coef


class _Problem:
    """The data of one fit and the fits of term sets on it."""

    def __init__(self, t, f, e, vectors, shape):
        self.t, self.f, self.w, self.shape = t, f, 1.0 / e, shape
        self.vectors = vectors
        self.ones = np.ones_like(t)

    def design(self, terms):
        return np.column_stack([self.ones] + [self.vectors[n] for n in terms])

    def trial(self, terms, starts=()):
        design = self.design(terms)
        if self.shape is None:
            coef, r = _solve(self.ones, design, self.w, self.f)
            return _Trial(tuple(terms), None, coef, float(r @ r), design.shape[1])

        def resid(x):
            return _solve(self.shape.flux(x), design, self.w, self.f)[1]

        def jac(x):
            cols = []
            for j, name in enumerate(self.shape.names):
                h = np.zeros_like(x)
                h[j] = _STEP[name]
                cols.append((resid(x + h) - resid(x - h)) / (2 * _STEP[name]))
            return np.column_stack(cols)

        lo, hi = self.shape.bounds(self.t.min(), self.t.max())
        best = None
        for x0 in starts:
            sol = least_squares(resid, np.clip(x0, lo, hi), jac=jac, bounds=(lo, hi), x_scale="jac", max_nfev=200)
            chi2 = float(sol.fun @ sol.fun)
            if best is None or chi2 < best[1]:
                best = (sol.x, chi2)
        coef = _solve(self.shape.flux(best[0]), design, self.w, self.f)[0]
        return _Trial(tuple(terms), best[0], coef, best[1], design.shape[1] + len(best[0]))

    def scan_starts(self, terms):
        """Fit vectors at the lowest minima of chi2 over a grid of mid-times (shape at its guess)."""
        shape, design = self.shape, self.design(terms)
        x0 = shape.start()
        step = 0.125  # in durations
        lo, hi = shape.t0_range(self.t.min(), self.t.max(), margin=0.5)
        grid = np.linspace(lo, hi, int(min(200, np.ceil((hi - lo) / step) + 1)))
        chi2 = np.empty(grid.size)
        for i, g in enumerate(grid):
            x0[0] = g
            r = _solve(shape.flux(x0), design, self.w, self.f)[1]
            chi2[i] = r @ r
        padded = np.r_[np.inf, chi2, np.inf]
        minima = np.flatnonzero((chi2 <= padded[:-2]) & (chi2 <= padded[2:]))
        starts = [shape.start()]
        for i in minima[np.argsort(chi2[minima])][:N_STARTS]:
            x = shape.start()
            x[0] = grid[i]
            starts.append(x)
        return starts


def _criterion(trial, scale, n, criterion):
    return trial.chi2 / scale + trial.k * (np.log(n) if criterion == "bic" else 2.0)


def _select(problem, names, criterion, max_terms, rescale):
    """Greedy forward selection; returns (trial, scale, history)."""
    starts = problem.scan_starts(names) if problem.shape is not None else ()
    full = problem.trial(names, starts)
    if criterion is None:
        return full, 1.0, []
    n = problem.t.size
    scale = full.chi2 / (n - full.k) if rescale and n > full.k else 1.0
    if not scale > 0:
        scale = 1.0

    def fit(terms, warm):  # from the last step's solution and from the all-terms one
        return problem.trial(terms, () if problem.shape is None else [warm.x, full.x])

    best = fit([], full)
    history = [{"terms": [], "criterion": float(_criterion(best, scale, n, criterion))}]
    remaining = list(names)
    while remaining and (max_terms is None or len(best.terms) < max_terms):
        trials = [fit(list(best.terms) + [name], best) for name in remaining]
        history += [{"terms": list(t.terms), "criterion": float(_criterion(t, scale, n, criterion))} for t in trials]
        top = min(trials, key=lambda t: _criterion(t, scale, n, criterion))
        if _criterion(top, scale, n, criterion) >= _criterion(best, scale, n, criterion):
            break
        best = top
        remaining.remove(top.terms[-1])
    return best, scale, history


# --------------------------------------------------------------------------- result
@dataclass
class FitResult:
    """A detrending or transit fit. Arrays have the input's length, NaN where a point was not used.

    ``params``/``errors``/``errors_white``: transit parameters (t0 BJD_TDB, rp,
    depth = rp^2, a_rs, inc_deg, b, t14_d, ingress_d; held-fixed ones with
    error 0) and baseline coefficients (``c0``, ``c_<term>``, per unit of the
    standardised vector); ``errors`` = ``errors_white`` x ``beta``.
    ``model = transit_model * baseline``, ``residuals = flux - model``; ``good``:
    the points used (``n`` of them). ``chi2``/``red_chi2`` with the given errors;
    ``bic`` = chi2 / ``error_scale`` + k ln n of the chosen model, ``selection``
    every term set tried with its criterion value; ``free``: the fitted transit
    parameters (t14/b: module notes); ``rms_table``: :func:`rms_by_bin` of the
    residuals from the cadence to a third of the span; ``beta_bin_minutes``: the
    bin lengths beta was averaged over; ``averaged``: with model averaging, every term set
    fitted with its weight, mid-time and depth (heaviest first), and then ``params``/``errors``
    of the transit are the averaged ones (the baseline, model and residuals stay the chosen terms').
    """

    params: dict
    errors: dict
    errors_white: dict
    beta: float
    red_chi2: float
    chi2: float
    terms: list
    bic: float
    n: int
    model: np.ndarray
    baseline: np.ndarray
    transit_model: np.ndarray
    residuals: np.ndarray
    rms_table: pd.DataFrame
    good: np.ndarray
    times: np.ndarray
    criterion: str | None = "bic"
    error_scale: float = 1.0
    free: list = field(default_factory=list)
    beta_bin_minutes: list = field(default_factory=list)
    selection: list = field(default_factory=list)
    spec: TransitSpec | None = None
    averaged: list = field(default_factory=list)

    def transit_at(self, times_d) -> np.ndarray:
        """The fitted transit model at other times (ones for a detrend-only fit)."""
        t = np.asarray(times_d, dtype=float)
        if self.spec is None:
            return np.ones_like(t)
        p = self.params
        spec = TransitSpec(self.spec.period_d, p["t0"], self.spec.duration_guess_d, p["depth"], self.spec.u,
                           p["a_rs"], p["inc_deg"], self.spec.exp_time_s, self.spec.supersample)
        shape = _Shape(spec, t, p["t0"])
        return shape.flux(np.array([0.0, p["rp"]]))

    def to_table(self) -> pd.DataFrame:
        """One row per parameter: name, value, error, error_white (scalars in ``.attrs``)."""
        table = pd.DataFrame({"name": list(self.params), "value": list(self.params.values()),
                              "error": [self.errors[k] for k in self.params],
                              "error_white": [self.errors_white[k] for k in self.params]})
        table.attrs.update({k: v for k, v in self.to_dict().items() if k not in ("params", "errors", "errors_white",
                                                                                "rms_table")})
        return table

    @property
    def residual_rms(self) -> float:
        """Standard deviation of the residuals of the points used."""
        return float(np.nanstd(self.residuals))

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-point arrays; NaN becomes None)."""
        out = {"params": self.params, "errors": self.errors, "errors_white": self.errors_white, "beta": self.beta,
               "red_chi2": self.red_chi2, "chi2": self.chi2, "terms": self.terms, "bic": self.bic, "n": self.n,
               "residual_rms": self.residual_rms, "criterion": self.criterion, "error_scale": self.error_scale,
               "free": self.free, "beta_bin_minutes": self.beta_bin_minutes, "selection": self.selection,
               "rms_table": self.rms_table.to_dict(orient="records"), "averaged": self.averaged[:8],
               "spec": None if self.spec is None else asdict(self.spec)}
        return json.loads(json.dumps(out, default=_plain), parse_constant=lambda _: None)

    def points(self) -> pd.DataFrame:
        """Per point: bjd_tdb, used, model, baseline, transit_model, residual."""
        return pd.DataFrame({"bjd_tdb": self.times, "used": self.good, "model": self.model, "baseline": self.baseline,
                             "transit_model": self.transit_model, "residual": self.residuals})


def _plain(v):
    """numpy scalars and arrays as JSON values."""
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _covariance(jac):
    """(J^T J)^-1 with the columns normalised first; NaN when J is rank-deficient."""
    norm = np.linalg.norm(jac, axis=0)
    norm[norm == 0] = 1.0
    scaled = jac / norm
    if np.linalg.matrix_rank(scaled) < scaled.shape[1]:
        log.warning("transit fit: degenerate parameters (rank-deficient Jacobian), errors are NaN")
        return np.full((jac.shape[1],) * 2, np.nan)
    return np.linalg.inv(scaled.T @ scaled) / np.outer(norm, norm)


def fit_light_curve(times_d, flux, flux_err, vectors=None, transit: TransitSpec | None = None, *, good=None,
                    criterion: str | None = "bic", max_terms: int | None = None, rescale: bool = True,
                    average: bool = False) -> FitResult:
    """Fit a light curve: baseline alone (``transit=None``) or jointly with a transit.

    ``times_d`` BJD_TDB, ``flux`` relative flux and its 1-sigma ``flux_err``;
    ``vectors``: candidate decorrelation vectors by name (:func:`decorrelation_vectors`),
    ``good``: optional mask of usable points (e.g. ``flag == 0``). Points with a
    non-finite time, flux, error (or error <= 0) or vector value are dropped.
    ``criterion``: "bic" or "aic" for greedy forward selection of terms (at most
    ``max_terms``), None to use every vector. ``rescale``: divide chi2 in the
    criterion by the reduced chi2 of the all-terms model (module notes).
    beta: over 0.5-2x the fitted ingress duration (at least 2 cadences), or
    :data:`ccdflow.rednoise.DEFAULT_BIN_MINUTES` for a detrend-only fit.
    ``average`` (a transit, a criterion, at most MAX_AVERAGED_TERMS candidates):
    transit parameters and errors averaged over every subset of the terms,
    weighted by the criterion (module notes); the baseline, model and
    residuals stay those of the chosen terms.
    """
    if criterion not in ("bic", "aic", None):
        raise ValueError(f"criterion must be 'bic', 'aic' or None, not {criterion!r}")
    t_all, f_all, e_all = (np.asarray(v, dtype=float) for v in (times_d, flux, flux_err))
    vectors = {k: np.asarray(v, dtype=float) for k, v in (vectors or {}).items()}
    use = np.isfinite(t_all) & np.isfinite(f_all) & np.isfinite(e_all) & (e_all > 0)
    if good is not None:
        use &= np.asarray(good, dtype=bool)
    for v in vectors.values():
        use &= np.isfinite(v)
    t, f, e = t_all[use], f_all[use], e_all[use]
    n = t.size
    if n < len(vectors) + 8:
        raise ValueError(f"only {n} usable points for {len(vectors)} candidate terms")
    shape = None if transit is None else _Shape(transit, t, transit.t0_guess)
    problem = _Problem(t, f, e, {k: v[use] for k, v in vectors.items()}, shape)
    best, scale, history = _select(problem, list(vectors), criterion, max_terms, rescale)
    if shape is not None and criterion is not None:  # the chosen terms, from the scan's minima and the warm start
        best = problem.trial(best.terms, problem.scan_starts(best.terms) + [best.x])
    chosen = _summary(problem, best)
    params, errors = chosen["params"], {k: v * chosen["beta"] for k, v in chosen["errors"].items()}
    averaged = []
    if average and shape is not None and criterion is not None and len(vectors) <= MAX_AVERAGED_TERMS:
        params, errors, averaged = _average(problem, list(vectors), best, scale, criterion, chosen)

    def full(v):
        out = np.full(t_all.shape, np.nan)
        out[use] = v
        return out

    cadence = float(np.median(np.diff(t))) * 1440
    span = (t.max() - t.min()) * 1440
    wide = np.unique(np.round(np.geomspace(max(cadence, 0.5), max(cadence, 0.5, span / 3), 16), 3))
    residuals = chosen["residuals"]
    return FitResult(params=params, errors=errors, errors_white=chosen["errors"], beta=chosen["beta"],
                     red_chi2=chosen["red_chi2"], chi2=chosen["chi2"], terms=list(best.terms),
                     bic=float(_criterion(best, scale, n, "bic")), n=n, model=full(chosen["model"]),
                     baseline=full(chosen["baseline"]), transit_model=full(chosen["transit"]),
                     residuals=full(residuals), rms_table=rms_by_bin(t, residuals, wide, best.k), good=use,
                     times=t_all, criterion=criterion, error_scale=scale,
                     free=[] if shape is None else list(shape.names), beta_bin_minutes=chosen["bins"],
                     selection=history, spec=transit, averaged=averaged)


def _summary(problem: _Problem, trial: _Trial) -> dict:
    """Parameters, white errors (covariance of the full model, scaled by max(1, reduced chi2)),
    beta and the model arrays of one fitted term set."""
    shape, t, f, n = problem.shape, problem.t, problem.f, problem.t.size
    design = problem.design(trial.terms)
    tr = np.ones(n) if shape is None else shape.flux(trial.x)
    base = design @ trial.coef
    model, w = tr * base, problem.w
    jac = (tr[:, None] * design) * w[:, None]  # the full model's Jacobian, weighted
    if shape is not None:
        jac = np.column_stack([shape.dflux(trial.x) * (base * w)[:, None], jac])
    chi2 = float(np.sum(((f - model) * w) ** 2))
    red_chi2 = chi2 / (n - trial.k) if n > trial.k else np.nan
    unit_cov = _covariance(jac)
    cov = unit_cov * max(1.0, red_chi2)
    n_shape = jac.shape[1] - design.shape[1]
    coef_names = ["c0"] + [f"c_{k}" for k in trial.terms]
    params = dict(zip(coef_names, trial.coef.tolist()))
    errors = dict(zip(coef_names, np.sqrt(np.diag(cov)[n_shape:]).tolist()))
    cadence = float(np.median(np.diff(t))) * 1440
    bins = list(DEFAULT_BIN_MINUTES)
    if shape is not None:
        phys = shape.derived(trial.x)
        grad = np.empty((len(phys), n_shape))  # d(physical parameter) / d(fit parameter)
        for j, name in enumerate(shape.names):
            h = np.zeros(n_shape)
            h[j] = _STEP[name]
            up, down = shape.derived(trial.x + h), shape.derived(trial.x - h)
            grad[:, j] = [(up[k] - down[k]) / (2 * _STEP[name]) for k in phys]
        phys_err = np.sqrt(np.einsum("ij,jk,ik->i", grad, cov[:n_shape, :n_shape], grad))
        # d(physical parameter) / d(weighted data point), on the same noise scale as the errors:
        # estimates from different term sets are linear in the same data (model averaging)
        response = grad @ (unit_cov @ jac.T)[:n_shape] * np.sqrt(max(1.0, red_chi2))
        sensitivity = dict(zip(phys, response))
        params = {**{k: float(v) for k, v in phys.items()}, **params}
        errors = {**dict(zip(phys, phys_err.tolist())), **errors}
        ingress = phys["ingress_d"] * 1440
        if np.isfinite(ingress) and ingress > 0:
            bins = sorted({round(float(max(m * ingress, 2 * cadence)), 3) for m in BETA_INGRESS_MULTIPLES})
    else:
        sensitivity = {}
    residuals = f - model
    beta = time_averaged_beta(t, residuals, bins, n_params=trial.k)
    return {"params": params, "errors": errors, "beta": beta, "chi2": chi2, "red_chi2": red_chi2, "model": model,
            "baseline": base, "transit": tr, "residuals": residuals, "bins": bins, "sensitivity": sensitivity}


def _average(problem: _Problem, names, best: _Trial, scale: float, criterion: str, chosen: dict):
    """Transit parameters averaged over every subset of the candidate terms (module notes):
    (params, errors, the term sets with their weights and mid-times, heaviest first)."""
    from itertools import combinations

    n = problem.t.size
    trials = {best.terms: (best, chosen)}
    for size in range(len(names) + 1):
        for terms in combinations(names, size):
            key = tuple(t for t in best.terms if t in terms) + tuple(t for t in terms if t not in best.terms)
            if set(key) == set(best.terms):
                continue
            trial = problem.trial(list(terms), [best.x])
            trials[key] = (trial, _summary(problem, trial))
    ic = np.array([_criterion(trial, scale, n, criterion) for trial, _ in trials.values()])
    weight = np.exp(-0.5 * (ic - ic.min()))
    # a term set whose fit leaves the mid-time unconstrained (its error wider than the range it
    # is sought in: the baseline took the transit) says nothing of the transit's parameters, and
    # its linearised errors (tens of days on one simulated night) would swamp the average
    lo, hi = problem.shape.t0_range(problem.t.min(), problem.t.max())
    width = (hi - lo) * problem.shape.scale
    identified = np.array([key == best.terms or (np.isfinite(s["errors"]["t0"]) and s["errors"]["t0"] < width)
                           for key, (_, s) in trials.items()])
    weight = np.where(identified, weight, 0.0)
    weight /= weight.sum()
    transit_names = [k for k in chosen["params"] if not k.startswith("c")]
    params, errors = dict(chosen["params"]), {k: v * chosen["beta"] for k, v in chosen["errors"].items()}
    summaries = [s for (_, s), used in zip(trials.values(), identified) if used]  # NaN-free: 0 x NaN is NaN
    w = weight[identified]
    for name in transit_names:
        value = np.array([s["params"][name] for s in summaries])
        # each term set's response to the data, on its noise scale (red_chi2 and beta)
        response = np.array([s["sensitivity"][name] * s["beta"] for s in summaries])
        mean = float(np.sum(w * value))
        averaged = w @ response
        # noise alone spreads the estimates by sum w |response_i - averaged|^2 (already in the
        # averaged estimate's variance |averaged|^2); a larger spread is the term sets' disagreement
        expected = float(np.sum(w * np.sum((response - averaged) ** 2, axis=1)))
        spread = float(np.sum(w * (value - mean) ** 2))
        params[name] = mean
        errors[name] = float(np.sqrt(averaged @ averaged + max(0.0, spread - expected)))
    table = [{"terms": list(key), "weight": float(wt), "t0": s["params"]["t0"], "depth": s["params"]["depth"],
              "t0_err": s["errors"]["t0"] * s["beta"], "depth_err": s["errors"]["depth"] * s["beta"]}
             for (key, (_, s)), wt in zip(trials.items(), weight)]
    return params, errors, sorted(table, key=lambda r: -r["weight"])


# --------------------------------------------------------------------------- plot
def plot_fit(times_d, flux, result: FitResult, path, title, *, bin_minutes=10.0) -> None:
    """PNG of a fit, three panels: relative flux with the full model; detrended
    flux (flux / baseline) with the transit model and ``bin_minutes`` bins; rms
    of the binned residuals against bin length (log-log) with the white-noise
    expectation. Written atomically."""
    # Agg canvas, no pyplot: no global backend switch
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    t, f = np.asarray(times_d, dtype=float), np.asarray(flux, dtype=float)
    use = result.good
    t0 = np.floor(np.nanmin(t[use]))
    x = t[use] - t0
    detr = f[use] / result.baseline[use]
    fig = Figure(figsize=(8, 9), dpi=110, layout="constrained")
    ax1, ax2, ax3 = fig.subplots(3, 1, gridspec_kw={"height_ratios": [1, 1, 0.8]})
    ax1.plot(x, f[use], ".", color="0.6", ms=3, label="frames")
    ax1.plot(x, result.model[use], "-", color="C3", lw=1.2, label="transit x baseline")
    ax1.set(ylabel="relative flux", title=title)
    ax2.plot(x, detr, ".", color="0.6", ms=3, label="detrended")
    fine = np.linspace(t[use].min(), t[use].max(), 1000)
    ax2.plot(fine - t0, result.transit_at(fine), "-", color="C3", lw=1.2, label="transit model")
    idx = np.floor((x - x.min()) / (bin_minutes / 1440.0)).astype(int)
    cnt = np.bincount(idx)
    ok = cnt > 1
    xb, yb = np.bincount(idx, x)[ok] / cnt[ok], np.bincount(idx, detr)[ok] / cnt[ok]
    sd = np.sqrt(np.maximum(np.bincount(idx, detr**2)[ok] / cnt[ok] - yb**2, 0.0) / (cnt[ok] - 1))
    ax2.errorbar(xb, yb, yerr=sd, fmt="o", color="C0", ms=4, label=f"{bin_minutes:g}-min bins")
    ax2.set(ylabel="flux / baseline")
    terms = " + ".join(["c0"] + list(result.terms))
    text = f"baseline: {terms}\nbeta = {result.beta:.2f}, red. chi2 = {result.red_chi2:.2f}, n = {result.n}"
    if "depth" in result.params:
        p, e = result.params, result.errors
        text += (f"\ndepth = {p['depth'] * 1e3:.2f} +/- {e['depth'] * 1e3:.2f} ppt,"
                 f" t0 = {p['t0']:.5f} +/- {e['t0'] * 1440:.2f} min")
    ax2.text(0.01, 0.03, text, transform=ax2.transAxes, fontsize=7.5, va="bottom")
    for ax in (ax1, ax2):
        ax.set_xlabel(f"BJD_TDB - {t0:.0f}")
        ax.legend(loc="best", fontsize=7.5)
    table = result.rms_table
    if len(table):
        ax3.loglog(table["bin_minutes"], table["rms"] * 1e3, "o-", color="C0", ms=4, label="residuals")
        ax3.loglog(table["bin_minutes"], table["white_rms"] * 1e3, "--", color="0.3", label="white noise")
        for m in result.beta_bin_minutes:
            ax3.axvline(m, color="C1", lw=0.5, alpha=0.5)
    ax3.set(xlabel="bin length (min)", ylabel="rms of bin means (ppt)",
            title="time-averaged residuals (orange: bin lengths for beta)")
    for axis in (ax3.xaxis, ax3.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    ax3.legend(loc="best", fontsize=7.5)
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png")
