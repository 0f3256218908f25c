"""Deterministic simulator of a raw CCD observing night.

``simulate_night(outdir, spec)`` writes ``outdir/raw/*.fits`` (biases, darks,
twilight flats, science frames, optionally damaged files) and ``outdir/truth/``
(the noiseless calibration truth, the star catalogue, per-frame parameters,
cosmic-ray pixels and a JSON summary) so that every later pipeline stage can be
tested against known answers.

Conventions
-----------
* Raw frame layout along columns: ``[prescan | data | overscan]``; the pixel
  geometry in :class:`NightSpec` is already binned (``binning`` only sets headers).
* Data-section coordinates are 0-based, ``x`` = column, ``y`` = row, with the
  centre of pixel ``[y, x]`` at integer ``(x, y)``.
* All times are UTC; frame times are seconds from ``night_start_utc``.
* Randomness: every fixed pattern and every frame has its own stream
  ``np.random.default_rng([seed, tag, index])`` so results do not depend on the
  order in which frames are produced or on which optional frames exist.

Truth products (``outdir/truth``): ``truth.fits`` (BIAS, DARK_RATE, FLAT_<filter>,
BADPIX, HOT), ``stars.ecsv`` (id, x, y, flux_e, is_saturated, role, pair_id,
colour), ``frames.ecsv`` (one row per raw file; science rows also carry
host_peak_e, host_saturated, host_transit_factor), ``cosmics.ecsv`` (hit pixels
of dark and science frames) and ``truth.json``.  Empty strings in the ECSV files
(role, spoiled, damaged) come back masked from a plain ``Table.read``; read with
``Table.read(path, fill_values=[])`` to keep ``''``.

Hostile skies (undersampled stars, 12-bit ADC, no calibrations, warm chip,
saturated host, close pairs, extinction, drifts, four amplifiers, limb-darkened
transit) are NightSpec options; named sets of them live in
:data:`ccdflow.simsky.SKIES` (``NightSpec.from_dict(d, skies=("extinction",))``).
With every such option at its default the output is bit-identical to the
simulator before they existed.
"""

from __future__ import annotations

import json
import warnings
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack

from . import simsky
from .simsky import SKIES, sky_options

__all__ = ["DAMAGE_KINDS", "SKIES", "SPOIL_KINDS", "NightSpec", "simulate_night", "sky_options"]

DAMAGE_KINDS = ("zero_length", "truncated", "not_fits", "missing_exptime", "wrong_shape")
SPOIL_KINDS = ("pointing_lost", "cloud")

READOUT_S = 20.0        # dead time between consecutive calibration exposures
FLAT_EXPTIME = 5.0      # twilight flats: fixed exposure, the sky level varies instead
SCIENCE_GAP_S = 900.0   # pause between the last calibration frame and the first science frame
DEAD_RESPONSE = 0.05    # the bad column keeps 5 % of its charge -> reads ~bias level
EDGE_MARGIN = 20        # stars are kept this far from the data-section edges
ISOLATION_PX = 30.0     # transit host / variable have no neighbour closer than this
EXTRA_BIAS_NAME = "bias extra 'ü'.fits"   # exercises quoting / unicode in file handling

# stream tags for np.random.default_rng([seed, tag, index]); simsky uses 8 (colours),
# 9 (close pairs) and 10 (pointing walk), so the options never touch these streams
_T_BIAS, _T_DARK, _T_FLAT, _T_CAT, _T_SERIES, _T_JITTER, _T_FRAME = 1, 2, 3, 4, 5, 6, 7
_TRANSIT_DEFAULTS = {"depth": 0.01, "duration_s": 2400.0, "t_mid_frac": 0.45, "shape": "trapezoid",
                     "u": (0.4, 0.25), "b": 0.3, "period_d": 2.5}


@dataclass
class NightSpec:
    """Everything that defines a simulated night; defaults are the "demo" night.

    Detector: ``nx``/``ny`` data-section width/height (px); ``prescan``/``overscan``
    columns left/right of it (one amplifier may have both 0: a camera without
    overscan, no BIASSEC in the headers, TRIMSEC the whole frame); ``binning``
    (headers only); ``gain`` (e-/ADU); ``read_noise`` (e- rms); ``bias_level``
    (ADU); ``bias_structure_amp`` (ADU, fixed 2-D pattern: gradient + column
    pattern, same in every frame); ``overscan_drift_amp`` (ADU, per-frame smooth
    random walk along rows, added to whole rows incl. overscan); ``saturation_adu``
    (digital ceiling, SATURATE header, <= 2**adc_bits - 1); ``adc_bits`` (converter
    resolution, 8-16; raw values never exceed 2**adc_bits - 1); ``full_well`` (e-,
    charge above it bleeds along the column); ``dark_rate`` (mean e-/s/px);
    ``hot_pixel_fraction`` (pixels with 50-500x dark rate; truth.fits HOT marks
    rate > 20x median); ``bad_column`` (0-based data-section column, dead in every
    frame).

    Amplifiers: ``n_amps`` 1, 2 (left half read towards the prescan columns, right
    half towards the overscan) or 4 (quadrants: rows split at ny/2 as well; amplifier
    1 lower left, 2 lower right, 3 upper left, 4 upper right; BIASSECn covers only
    that amplifier's rows).  Amplifier 2 has ``amp2_gain_ratio`` x gain, 1.2 x read
    noise and ``amp2_bias_offset`` ADU; amplifiers 3/4 have 0.94/1.06 x gain,
    0.9/1.1 x read noise and -60/+90 ADU.  ``amp_table`` (one mapping per amplifier
    with any of gain, read_noise, bias_offset) overrides these values.

    Calibrations: ``n_bias`` (0 = none, and no end-of-night bias either);
    ``dark_exptimes`` x ``n_dark_per_exptime`` (either empty/0 = no darks);
    ``flat_filters`` x ``n_flat_per_filter`` twilight flats (0 or >= 3; first one
    saturated, last one ~1 % of ``flat_level_e``, the others 0.5-1.5x ``flat_level_e``).

    Science: ``science_filter``; ``n_science`` frames of ``science_exptime`` s every
    ``cadence_s`` s; ``night_start_utc`` (first calibration frame);
    ``n_stars`` catalogue stars (+ ``n_saturated_stars`` extra bright ones);
    ``sky_e_per_s``; ``fwhm_range`` (px, Moffat FWHM varies smoothly + jitter; down
    to ~1.3 px is rendered exactly, the pixel integration sub-samples finer below
    2 px); ``moffat_beta``; ``drift_px_per_frame`` (dx, dy per frame, + jitter);
    ``rotation_deg_total`` (field rotation across the series);
    ``transit`` {depth (fraction), duration_s (total), t_mid_frac (position of
    mid-transit within the science series), shape ("trapezoid": flat bottom,
    ingress = 10 % of the duration; "limb_darkened": batman quadratic limb darkening
    with rp = sqrt(depth), ``u`` (u1, u2), impact parameter ``b``, ``period_d`` (days)
    and a/Rs solved so that T14 = duration_s on a circular orbit)};
    ``variable`` {amplitude (fractional semi-amplitude), period_s, phase (rad)};
    ``n_cosmic_rays_per_frame`` (science frames; darks scale it with exptime).

    Saturation and pairs: ``host_peak_saturation`` (None, or the transit host's
    flux is set so that its expected brightest pixel in the best-seeing science
    frame, at its real sub-pixel position and FWHM there, with sky, dark, flat,
    transmission, extinction and transit included, reaches this many times the
    saturation electrons; 1.15 saturates only the sharpest frames; frames.ecsv
    host_peak_e / host_saturated say what really happened in every frame);
    ``n_close_pairs`` (pairs appended to
    the catalogue, both members share ``pair_id`` in stars.ecsv; primaries S/N
    75-250 per frame, unsaturated) with ``close_pair_separation_fwhm`` (range, in
    units of the mean of ``fwhm_range``) and ``close_pair_flux_ratio`` (companion /
    primary range); pairs stay ISOLATION_PX away from the host and variable unless
    ``host_in_pair`` gives the host a companion (an extra pair).

    Colour and extinction: every star has a ``colour`` drawn from ``colour_range``
    (B-V like), the host ``host_colour``; each star's flux in a frame is multiplied
    by 10**(-0.4 * (extinction_mag + colour_extinction_mag * colour) * airmass)
    (mag per airmass; positive colour_extinction_mag dims redder stars more).
    ``airmass_range`` (None, or (first, last) airmass of the science series: the
    RA and the cadence are solved for it; a rising range is a setting field,
    cadence_s is replaced).  The default pointing (RA 10h, Dec +30, Flagstaff,
    2025-03-14) is a rising field: airmass 1.43 -> 1.38 over the tiny series and
    1.33 -> 1.09 over the demo series.

    Drifts: ``seeing_airmass_power`` (FWHM x airmass**power; 0.6 is physical, the
    fwhm_range then means zenith seeing), ``seeing_trend`` (fractional FWHM change
    from the first to the last science frame), both clipped to FWHM >= 1 px;
    ``pointing_walk_px`` (rms px per frame of a random walk added to dx, dy).

    Defects: ``damaged`` (extra broken files, see ``DAMAGE_KINDS``); ``spoiled``
    (one science frame each, see ``SPOIL_KINDS``).

    Pointing/site: ``target_name``, ``ra_deg``, ``dec_deg``, ``site`` {lon, lat
    (deg), height (m)}.

    Every option added for hostile skies defaults to the behaviour before it
    existed; ``ccdflow.simsky.SKIES`` names useful combinations.
    """

    seed: int = 42
    nx: int = 1024
    ny: int = 1024
    prescan: int = 8
    overscan: int = 32
    binning: int = 1
    gain: float = 1.5
    read_noise: float = 6.0
    bias_level: float = 1000.0
    bias_structure_amp: float = 5.0
    overscan_drift_amp: float = 3.0
    n_amps: int = 1                    # 1, 2 (left/right halves) or 4 (quadrants), see the docstring
    amp2_gain_ratio: float = 1.12      # amplifier 2's gain relative to `gain` (2 or 4 amps)
    amp2_bias_offset: float = 150.0    # ADU added to amplifier 2's bias level (2 or 4 amps)
    saturation_adu: int = 60000
    full_well: float = 90000.0
    dark_rate: float = 0.02
    hot_pixel_fraction: float = 5e-4
    n_bias: int = 10
    dark_exptimes: tuple = (30.0, 120.0)
    n_dark_per_exptime: int = 5
    flat_filters: tuple = ("V", "R")
    n_flat_per_filter: int = 10
    flat_level_e: float = 30000.0
    science_filter: str = "R"
    n_science: int = 60
    science_exptime: float = 60.0
    cadence_s: float = 90.0
    night_start_utc: str = "2025-03-14T02:00:00"
    n_stars: int = 300
    sky_e_per_s: float = 20.0
    fwhm_range: tuple = (2.5, 4.0)
    moffat_beta: float = 3.0
    drift_px_per_frame: tuple = (0.05, -0.03)
    rotation_deg_total: float = 0.1
    transit: dict = field(default_factory=lambda: dict(_TRANSIT_DEFAULTS))
    variable: dict = field(default_factory=lambda: {"amplitude": 0.03, "period_s": 3000.0, "phase": 0.0})
    n_cosmic_rays_per_frame: int = 30
    bad_column: int = 300
    n_saturated_stars: int = 3
    damaged: tuple = ()
    spoiled: tuple = ()
    target_name: str = "SIMFIELD"
    ra_deg: float = 150.0
    dec_deg: float = 30.0
    site: dict = field(default_factory=lambda: {"lon": -111.5355, "lat": 35.09675, "height": 2206.0})
    # hostile-sky options (see the class docstring); the defaults reproduce the plain night
    adc_bits: int = 16
    amp_table: tuple = ()
    host_peak_saturation: float | None = None
    n_close_pairs: int = 0
    close_pair_separation_fwhm: tuple = (1.5, 3.0)
    close_pair_flux_ratio: tuple = (0.2, 1.0)
    host_in_pair: bool = False
    colour_range: tuple = (0.3, 1.5)
    host_colour: float = 0.65
    extinction_mag: float = 0.0
    colour_extinction_mag: float = 0.0
    airmass_range: tuple | None = None
    seeing_airmass_power: float = 0.0
    seeing_trend: float = 0.0
    pointing_walk_px: float = 0.0

    @classmethod
    def demo(cls) -> NightSpec:
        """The default night: 1024x1024, ~100 frames."""
        return cls()

    @classmethod
    def tiny(cls) -> NightSpec:
        """A minimal but complete night for unit tests (simulates in well under 3 s)."""
        return cls(nx=128, ny=128, n_bias=3, dark_exptimes=(10.0, 30.0), n_dark_per_exptime=2,
                   n_flat_per_filter=4, n_science=8, n_stars=40, bad_column=100,
                   n_saturated_stars=2, n_cosmic_rays_per_frame=10,
                   transit={**_TRANSIT_DEFAULTS, "duration_s": 300.0},
                   variable={"amplitude": 0.03, "period_s": 600.0, "phase": 0.0})

    @classmethod
    def benchmark(cls) -> NightSpec:
        """A large night for throughput benchmarks."""
        return cls(nx=2048, ny=2048, n_bias=20, n_dark_per_exptime=10, n_flat_per_filter=20,
                   n_science=300, n_stars=1000, bad_column=700)

    @classmethod
    def from_dict(cls, d: dict, base: str = "demo", skies=()) -> NightSpec:
        """Start from preset ``base``, apply the named ``skies``, then override keys from ``d``.

        ``skies`` (names of :data:`ccdflow.simsky.SKIES`, a sequence or a comma-separated
        string) may also be given as the key ``"skies"`` of ``d``; their options are
        applied first, in order, so ``d`` wins.  Nested dicts (transit, variable,
        site) are merged key by key; lists become tuples; unknown keys raise
        ``ValueError`` naming the key.
        """
        presets = {"demo": cls.demo, "tiny": cls.tiny, "benchmark": cls.benchmark}
        if base not in presets:
            raise ValueError(f"unknown NightSpec preset {base!r}; choose from {sorted(presets)}")
        spec = presets[base]()
        known = {f.name for f in fields(cls)}
        d = dict(d or {})
        names = simsky.sky_names(skies) + simsky.sky_names(d.pop("skies", None))
        if names:
            d = simsky.merge_options(sky_options(*names), d)
        for key, value in d.items():
            if key not in known:
                raise ValueError(f"unknown NightSpec key {key!r}")
            current = getattr(spec, key)
            if isinstance(current, dict):
                if not isinstance(value, dict):
                    raise ValueError(f"NightSpec key {key!r} needs a mapping")
                bad = set(value) - set(current)
                if bad:
                    raise ValueError(f"unknown NightSpec key {key}.{sorted(bad)[0]!r}")
                value = {**current, **value}
            elif isinstance(value, list):
                value = tuple(value)
            setattr(spec, key, value)
        spec.validate()
        return spec

    def validate(self) -> None:
        """Raise ``ValueError`` for settings the simulator cannot honour."""
        for kind in self.damaged:
            if kind not in DAMAGE_KINDS:
                raise ValueError(f"unknown damaged kind {kind!r}; choose from {DAMAGE_KINDS}")
        for kind in self.spoiled:
            if kind not in SPOIL_KINDS:
                raise ValueError(f"unknown spoiled kind {kind!r}; choose from {SPOIL_KINDS}")
        checks = [
            (self.nx >= 4 * EDGE_MARGIN and self.ny >= 4 * EDGE_MARGIN, "nx and ny must be >= 80"),
            (self.prescan >= 0 and self.overscan >= 0, "need prescan >= 0 and overscan >= 0"),
            (self.n_amps in (1, 2, 4), "n_amps must be 1, 2 or 4"),
            (self.n_amps != 2 or (self.prescan >= 4 and self.overscan >= 1 and self.nx % 2 == 0),
             "two amplifiers need prescan >= 4 (amplifier 1's overscan), overscan >= 1 and an even nx"),
            (self.n_amps != 4 or (self.prescan >= 4 and self.overscan >= 1 and self.nx % 2 == 0
                                  and self.ny % 2 == 0),
             ("four amplifiers (quadrants) need prescan >= 4 (the left amplifiers' overscan), "
              "overscan >= 1, an even nx and an even ny")),
            (0 <= self.bad_column < self.nx, "bad_column must lie inside the data section"),
            (self.n_bias >= 0 and self.n_dark_per_exptime >= 0 and all(t > 0 for t in self.dark_exptimes),
             "need n_bias >= 0, n_dark_per_exptime >= 0 and dark_exptimes > 0"),
            (self.n_flat_per_filter == 0 or self.n_flat_per_filter >= 3,
             "n_flat_per_filter must be 0 (no flats) or >= 3 (saturated + good + faint)"),
            (self.n_science >= 3, "n_science must be >= 3"),
            (self.cadence_s >= self.science_exptime, "cadence_s must be >= science_exptime"),
            (self.gain > 0 and self.read_noise >= 0, "gain must be > 0 and read_noise >= 0"),
            (len(self.fwhm_range) == 2 and 0 < self.fwhm_range[0] <= self.fwhm_range[1], "bad fwhm_range"),
            (self.moffat_beta > 1, "moffat_beta must be > 1"),
            (self.n_stars >= 2, "n_stars must be >= 2 (transit host + variable)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        problem = simsky.option_problem(self, _sat_electrons, _transit(self))
        if problem:
            raise ValueError(problem)


@dataclass
class _Frame:
    """One file of the night, as planned before any pixels are made."""

    index: int            # global position in the plan -> random stream
    filename: str
    imagetyp: str
    filter: str
    exptime: float
    t_start: float        # s after night_start_utc
    level: float = 0.0    # flats: mean illumination (e-)
    sci: int = -1         # science-series index (pointing, seeing, ...); -1 for calibrations
    spoiled: str = ""
    damaged: str = ""


def _geometry(spec: NightSpec) -> dict:
    """Frame shape, 0-based sections and the FITS BIASSEC/TRIMSEC strings (BIASSEC None without overscan)."""
    ncols = spec.prescan + spec.nx + spec.overscan
    d0, d1 = spec.prescan, spec.prescan + spec.nx
    return {
        "full_shape": [spec.ny, ncols],
        "data_rows": [0, spec.ny], "data_cols": [d0, d1],
        "prescan_cols": [0, spec.prescan], "overscan_cols": [d1, ncols],
        "BIASSEC": f"[{d1 + 1}:{ncols},1:{spec.ny}]" if spec.overscan else None,
        "TRIMSEC": f"[{d0 + 1}:{d1},1:{spec.ny}]",
        "amplifiers": _amplifiers(spec, d0, d1, ncols),
    }


def _amplifiers(spec: NightSpec, d0: int, d1: int, ncols: int) -> list[dict]:
    """Per-amplifier FITS sections, gain (e-/ADU), read noise (e-) and bias offset (ADU).

    One amplifier reads everything, overscan on the right (None without overscan
    columns). Two amplifiers split the columns: the left half is read towards
    the prescan columns (its overscan), the right half towards the overscan
    columns.  Four amplifiers split the rows at ny/2 as well (1 lower left,
    2 lower right, 3 upper left, 4 upper right); their dicts also carry
    ``rows`` (0-based [start, stop)), which the others leave out (all rows).
    """
    table = simsky.amplifier_table(spec)

    def amp(data_cols, over_cols, columns, n, rows=None):
        r0, r1 = rows or (0, spec.ny)
        ys = f"{r0 + 1}:{r1}"
        out = {"data": f"[{data_cols[0] + 1}:{data_cols[1]},{ys}]",
               "overscan": f"[{over_cols[0] + 1}:{over_cols[1]},{ys}]" if over_cols[1] > over_cols[0] else None,
               "columns": list(columns), **table[n]}
        if rows:
            out["rows"] = [r0, r1]
        return out

    if spec.n_amps == 1:
        return [amp((d0, d1), (d1, ncols), (0, ncols), 0)]
    mid = d0 + spec.nx // 2
    left, right = ((d0, mid), (0, d0), (0, mid)), ((mid, d1), (d1, ncols), (mid, ncols))
    if spec.n_amps == 2:
        return [amp(*left, 0), amp(*right, 1)]
    half = spec.ny // 2
    lower, upper = (0, half), (half, spec.ny)
    return [amp(*left, 0, lower), amp(*right, 1, lower), amp(*left, 2, upper), amp(*right, 3, upper)]


def _plan(spec: NightSpec) -> list[_Frame]:
    """List every file in generation order with its timing (calibrations first)."""
    frames: list[_Frame] = []
    t = 0.0

    def add(**kw):
        frames.append(_Frame(index=len(frames), **kw))

    for k in range(spec.n_bias):
        add(filename=f"bias_{k + 1:04d}.fits", imagetyp="BIAS", filter="NONE", exptime=0.0, t_start=t)
        t += READOUT_S
    for exptime in spec.dark_exptimes:
        for k in range(spec.n_dark_per_exptime):
            add(filename=f"dark_{int(round(exptime)):03d}s_{k + 1:04d}.fits", imagetyp="DARK",
                filter="NONE", exptime=float(exptime), t_start=t)
            t += exptime + READOUT_S
    for f_i, filt in enumerate(spec.flat_filters if spec.n_flat_per_filter else ()):
        # evening twilight: the sky fades, so the first flat is saturated, the last too faint
        rng = np.random.default_rng([spec.seed, _T_FLAT, 1000 + f_i])
        good = np.sort(rng.uniform(0.5, 1.5, spec.n_flat_per_filter - 2))[::-1] * spec.flat_level_e
        levels = [1.6 * spec.full_well, *good, 0.01 * spec.flat_level_e]
        for k, level in enumerate(levels):
            add(filename=f"flat_{filt}_{k + 1:04d}.fits", imagetyp="FLAT", filter=filt,
                exptime=FLAT_EXPTIME, t_start=t, level=float(level))
            t += FLAT_EXPTIME + READOUT_S
    t_sci = t + SCIENCE_GAP_S
    spoil_at = {kind: int(round(frac * (spec.n_science - 1)))
                for kind, frac in zip(SPOIL_KINDS, (0.7, 0.3)) if kind in spec.spoiled}
    spoil_of = {i: kind for kind, i in spoil_at.items()}
    for i in range(spec.n_science):
        add(filename=f"sci_{spec.science_filter}_{i + 1:04d}.fits", imagetyp="OBJECT",
            filter=spec.science_filter, exptime=spec.science_exptime,
            t_start=t_sci + i * spec.cadence_s, sci=i, spoiled=spoil_of.get(i, ""))
    # end-of-night bias (only when the night has biases); its time leaves room for every damaged frame
    if spec.n_bias:
        add(filename=EXTRA_BIAS_NAME, imagetyp="BIAS", filter="NONE", exptime=0.0,
            t_start=t_sci + (spec.n_science + len(DAMAGE_KINDS)) * spec.cadence_s)
    for k, kind in enumerate(spec.damaged):
        i = spec.n_science + k   # damaged files continue the science series
        add(filename=f"damaged_{kind}.fits", imagetyp="OBJECT", filter=spec.science_filter,
            exptime=spec.science_exptime, t_start=t_sci + i * spec.cadence_s, sci=i, damaged=kind)
    return frames


def _bias_image(spec: NightSpec) -> np.ndarray:
    """Fixed bias (ADU, full frame): level + smooth gradient + column pattern."""
    rng = np.random.default_rng([spec.seed, _T_BIAS, 0])
    ny, ncols = _geometry(spec)["full_shape"]
    gx, gy = np.linspace(-1, 1, ncols), np.linspace(-1, 1, ny)
    gradient = 0.6 * gx[None, :] + 0.4 * gy[:, None]
    columns = rng.normal(0.0, 0.3, ncols)[None, :]
    bias = spec.bias_level + spec.bias_structure_amp * (gradient + columns)
    for amp in _geometry(spec)["amplifiers"]:
        r0, r1 = amp.get("rows", (0, ny))
        bias[r0:r1, amp["columns"][0]:amp["columns"][1]] += amp["bias_offset"]
    return bias


def _dark_rate_map(spec: NightSpec) -> np.ndarray:
    """Dark current (e-/s) per data pixel: ~20 % pixel scatter plus hot pixels."""
    rng = np.random.default_rng([spec.seed, _T_DARK, 0])
    shape = (spec.ny, spec.nx)
    rate = spec.dark_rate * rng.gamma(25.0, 1 / 25.0, shape)
    hot = rng.random(shape) < spec.hot_pixel_fraction
    rate[hot] *= rng.uniform(50, 500, hot.sum())
    return rate


def _flat_field(spec: NightSpec, filt: str) -> np.ndarray:
    """Relative response for ``filt``: vignetting x dust rings x 1 % PRNU, median 1."""
    rng = np.random.default_rng([spec.seed, _T_FLAT, zlib.crc32(filt.encode())])
    yy, xx = np.mgrid[0:spec.ny, 0:spec.nx].astype(float)
    cx = (spec.nx - 1) / 2 + rng.normal(0, 0.03 * spec.nx)
    cy = (spec.ny - 1) / 2 + rng.normal(0, 0.03 * spec.ny)
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / ((spec.nx / 2) ** 2 + (spec.ny / 2) ** 2)
    flat = 1.0 - rng.uniform(0.10, 0.15) * r2          # ~10-15 % fall-off at the corners
    for _ in range(rng.integers(2, 4)):                 # out-of-focus dust: shadowed annuli
        x0, y0 = rng.uniform(35, spec.nx - 35), rng.uniform(35, spec.ny - 35)
        radius, width, depth = rng.uniform(10, 30), rng.uniform(1.5, 3.0), rng.uniform(0.02, 0.05)
        r = np.hypot(xx - x0, yy - y0)
        flat *= 1.0 - depth * np.exp(-0.5 * ((r - radius) / width) ** 2)
    flat *= 1.0 + 0.01 * rng.standard_normal(flat.shape)
    return flat / np.median(flat)


def _moffat_alpha(fwhm, beta):
    return np.asarray(fwhm) / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _peak_fraction(fwhm, beta):
    """Fraction of a Moffat star's flux in its central pixel (upper bound)."""
    return (beta - 1.0) / (np.pi * _moffat_alpha(fwhm, beta) ** 2)


def _sat_electrons(spec: NightSpec) -> float:
    """Electrons at which a pixel reads saturated (full well or digital limit, worst amplifier)."""
    adc = min((simsky.adc_ceiling(spec) - spec.bias_level - amp["bias_offset"] - 2 * spec.bias_structure_amp
               - spec.overscan_drift_amp) * amp["gain"] for amp in simsky.amplifier_table(spec))
    return float(min(spec.full_well, adc))


def _transit(spec: NightSpec) -> dict:
    """The ``transit`` dict with every key (a hand-built spec may give only depth/duration/t_mid)."""
    return {**_TRANSIT_DEFAULTS, **spec.transit}


def _host_flux(spec: NightSpec, host_xy, best: dict | None) -> float:
    """Host flux whose peak pixel in the best-seeing frame is host_peak_saturation x saturation.

    ``best`` holds that frame's fwhm, dx, dy, rotation_deg, sky (e-), the host's
    flux factor there (transmission x extinction x transit) and the flat, so the
    host's real sub-pixel position and everything that dims it count; without it
    a pixel-centred star at fwhm_range[0], flat 1, is used.
    """
    fwhm, frac, scale = spec.fwhm_range[0], np.zeros(2), 1.0
    below = (spec.sky_e_per_s + spec.dark_rate) * spec.science_exptime
    if best is not None:
        fwhm = best["fwhm"]
        pos = star_positions(spec.nx, spec.ny, [host_xy[0]], [host_xy[1]], best["dx"], best["dy"],
                             best["rotation_deg"])[0]
        frac = pos - np.rint(pos)
        ix, iy = (int(np.clip(np.rint(v), 0, n - 1)) for v, n in zip(pos, (spec.nx, spec.ny)))
        flat = float(best["flat"][iy, ix])
        scale, below = best["factor"] * flat, best["sky"] * flat + spec.dark_rate * spec.science_exptime
    one = render_stars(64, 64, np.array([32.0 + frac[0]]), np.array([32.0 + frac[1]]), np.array([1.0]),
                       fwhm, spec.moffat_beta).max()
    return float((spec.host_peak_saturation * _sat_electrons(spec) - below) / (one * scale))


def _catalogue(spec: NightSpec, best: dict | None = None) -> Table:
    """Reference-frame star list: power-law fluxes, isolated transit host and variable."""
    rng = np.random.default_rng([spec.seed, _T_CAT, 0])
    nx, ny, beta = spec.nx, spec.ny, spec.moffat_beta
    sat_e, sky = _sat_electrons(spec), spec.sky_e_per_s * spec.science_exptime
    # cap ordinary stars well below saturation so is_saturated means exactly the bright extras
    f_max = min(2e6, 0.4 * (sat_e - sky) / (1.05 * _peak_fraction(spec.fwhm_range[0], beta)))
    f_min = min(500.0, f_max / 10)

    def uniform_xy(margin):
        return rng.uniform(margin, nx - 1 - margin), rng.uniform(margin, ny - 1 - margin)

    def draw(*wishes, margin=EDGE_MARGIN, tries=5000):
        # rejection sampling against the strictest wish first; in a crowded field relax
        # to the next one, finally accept any position
        for ok in wishes:
            for _ in range(tries):
                xy = uniform_xy(margin)
                if ok(*xy):
                    return xy
        return xy

    # transit host and variable: drawn as a pair, well apart and away from the dead column
    far_bad = lambda x: abs(x - spec.bad_column) > ISOLATION_PX
    for _ in range(20000):
        host, var = uniform_xy(EDGE_MARGIN + 5), uniform_xy(EDGE_MARGIN + 5)
        if far_bad(host[0]) and far_bad(var[0]) and np.hypot(host[0] - var[0], host[1] - var[1]) > 2 * ISOLATION_PX:
            break
    else:
        raise ValueError("data section too small to place an isolated transit host and variable")
    special = np.array([host, var])
    isolated = lambda x, y, d=ISOLATION_PX: np.all(np.hypot(special[:, 0] - x, special[:, 1] - y) > d)
    xs, ys = [host[0], var[0]], [host[1], var[1]]
    for _ in range(spec.n_stars - 2):
        x, y = draw(isolated)
        xs.append(x), ys.append(y)
    a = 1.5   # dN/dF ~ F^-a: many faint stars, few bright ones
    u = rng.random(spec.n_stars - 2)
    flux = (f_min ** (1 - a) + u * (f_max ** (1 - a) - f_min ** (1 - a))) ** (1 / (1 - a))
    fluxes = [0.3 * f_max, 0.25 * f_max, *flux]
    for _ in range(spec.n_saturated_stars):
        # keep bleed trails out of the host/variable and dead columns when the field allows it
        clear = lambda x, y: isolated(x, y, 1.5 * ISOLATION_PX) and abs(x - spec.bad_column) > 15
        x, y = draw(lambda x, y: clear(x, y) and np.all(np.abs(special[:, 0] - x) > ISOLATION_PX), clear)
        xs.append(x), ys.append(y)
        fluxes.append(sat_e / _peak_fraction(spec.fwhm_range[1], beta) * rng.uniform(3, 10))
    n = len(xs)
    fluxes = np.array(fluxes)
    if spec.host_peak_saturation is not None:
        fluxes[0] = _host_flux(spec, host, best)
    pair_id = np.zeros(n, int)
    if spec.n_close_pairs or spec.host_in_pair:
        sat_x = xs[n - spec.n_saturated_stars:] if spec.n_saturated_stars else []
        px, py, pf, pid, host_pair = simsky.close_pairs(
            spec, special, [spec.bad_column, *sat_x], f_max, float(fluxes[0]), EDGE_MARGIN, ISOLATION_PX)
        xs, ys = [*xs, *px], [*ys, *py]
        fluxes, pair_id = np.concatenate([fluxes, pf]), np.concatenate([pair_id, pid])
        pair_id[0] = host_pair
        n = len(xs)
    peak = fluxes * _peak_fraction(spec.fwhm_range[0], beta) * 1.05 + sky
    role = np.array(["transit", "variable"] + [""] * (n - 2))
    return Table({"id": np.arange(1, n + 1), "x": np.array(xs), "y": np.array(ys),
                  "flux_e": fluxes, "is_saturated": peak > sat_e, "role": role,
                  "pair_id": pair_id, "colour": simsky.colours(spec, n)})


def _science_series(spec: NightSpec, n: int) -> dict:
    """Per science-frame pointing offset, rotation, seeing and transmission.

    Frame 0 is the reference frame (no offset, no rotation).  Smooth parts come
    from one stream, jitter from a per-frame stream so that appending damaged
    frames never changes earlier frames.
    """
    g = np.random.default_rng([spec.seed, _T_SERIES, 0])
    phase, period = g.uniform(0, 2 * np.pi), 1.3 * max(spec.n_science, 2)
    lo, hi = spec.fwhm_range
    out = {k: np.zeros(n) for k in ("dx", "dy", "rotation_deg", "fwhm", "transmission")}
    for i in range(n):
        j = np.random.default_rng([spec.seed, _T_JITTER, i])
        jit = j.normal(0, 0.1, 2) if i else np.zeros(2)
        out["dx"][i] = spec.drift_px_per_frame[0] * i + jit[0]
        out["dy"][i] = spec.drift_px_per_frame[1] * i + jit[1]
        out["rotation_deg"][i] = spec.rotation_deg_total * i / (spec.n_science - 1)
        smooth = 0.7 * (hi - lo) / 2 * np.sin(2 * np.pi * i / period + phase)
        out["fwhm"][i] = np.clip((lo + hi) / 2 + smooth + j.normal(0, 0.1 * (hi - lo) / 2), lo, hi)
        out["transmission"][i] = 1.0 - abs(j.normal(0, 0.01))   # thin, variable extinction
    return out


def render_stars(nx, ny, x, y, flux, fwhm, beta, oversample=None, chunk=64) -> np.ndarray:
    """Image (e-) of Moffat stars, each integrated over pixels by sub-sampling.

    Each stamp (radius 6 FWHM, at least 10 px) is normalised to the star's total
    flux, so the catalogue flux is exactly what lands on the detector (minus
    off-chip parts).  ``oversample`` (sub-pixels per pixel side) defaults to 3 for
    FWHM >= 2 px and to ceil(20 / FWHM) (>= 5) for undersampled stars, which keeps
    the peak pixel and the 3x3 core within 0.1 % of the exact pixel integral.
    """
    if oversample is None:
        oversample = 3 if fwhm >= 2.0 else max(5, int(np.ceil(20.0 / fwhm)))
        chunk = chunk if oversample == 3 else max(4, int(chunk * 9 / oversample ** 2))
    alpha2 = float(_moffat_alpha(fwhm, beta)) ** 2
    R = max(int(np.ceil(6 * fwhm)), 10)
    off = np.arange(-R, R + 1)
    S = off.size
    fine = (off[:, None] + (np.arange(oversample) + 0.5) / oversample - 0.5).ravel()
    keep = (x > -R) & (x < nx - 1 + R) & (y > -R) & (y < ny - 1 + R) & (flux > 0)
    x, y, flux = x[keep], y[keep], flux[keep]
    image = np.zeros(nx * ny)
    for s in range(0, x.size, chunk):
        cx, cy, f = x[s:s + chunk], y[s:s + chunk], flux[s:s + chunk]
        ix, iy = np.rint(cx).astype(int), np.rint(cy).astype(int)
        ddx, ddy = (ix - cx)[:, None] + fine, (iy - cy)[:, None] + fine
        q = 1.0 + (ddy[:, :, None] ** 2 + ddx[:, None, :] ** 2) / alpha2
        prof = (q ** -beta).reshape(-1, S, oversample, S, oversample).sum(axis=(2, 4))
        prof *= (f / prof.sum(axis=(1, 2)))[:, None, None]
        rows, cols = iy[:, None] + off, ix[:, None] + off
        valid = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
        idx = rows[:, :, None] * nx + cols[:, None, :]
        image += np.bincount(idx[valid], prof[valid], minlength=nx * ny)
    return image.reshape(ny, nx)


def _cosmic_rays(rng, n: int, nx: int, ny: int):
    """Pixels hit by ``n`` cosmic rays: straight 1-4 px tracks, 1.5-20 ke- per pixel.

    Returns x, y, charge (e-) and track number per hit pixel; where tracks
    overlap the charges add up and the first track is recorded.
    """
    dirs = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)])
    length = rng.integers(1, 5, n)
    x0, y0, d = rng.integers(0, nx, n), rng.integers(0, ny, n), rng.integers(0, 8, n)
    owner = np.repeat(np.arange(n), length)
    step = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    xs, ys = x0[owner] + step * dirs[d[owner], 0], y0[owner] + step * dirs[d[owner], 1]
    charge = np.exp(rng.uniform(np.log(1500), np.log(20000), xs.size))
    inside = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
    lin, first, inverse = np.unique(ys[inside] * nx + xs[inside], return_index=True,
                                    return_inverse=True)
    return lin % nx, lin // nx, np.bincount(inverse, charge[inside]), owner[inside][first]


def _spill(segment: np.ndarray, charge: float, full_well: float) -> None:
    """Fill ``segment`` (ordered away from the saturated pixels) up to full well."""
    if segment.size == 0 or charge <= 0:
        return   # charge that reaches the chip edge is lost
    cum = np.cumsum(np.clip(full_well - segment, 0, None))
    k = int(np.searchsorted(cum, charge))
    segment[:k] = np.maximum(segment[:k], full_well)
    if k < segment.size:
        segment[k] += charge - (cum[k - 1] if k else 0.0)


def _bleed(e: np.ndarray, full_well: float) -> None:
    """Move charge above full well up and down its column, half each way (in place)."""
    over = e > full_well
    for j in np.flatnonzero(over.any(axis=0)):
        col = e[:, j]
        rows = np.flatnonzero(over[:, j])
        excess = float((col[rows] - full_well).sum())
        col[rows] = full_well
        _spill(col[rows[-1] + 1:], excess / 2, full_well)
        _spill(col[:rows[0]][::-1], excess / 2, full_well)


def _drift(spec: NightSpec, rng, n_rows: int | None = None) -> np.ndarray:
    """Per-row bias offset (ADU): smoothed random walk scaled to +-overscan_drift_amp."""
    walk = np.cumsum(rng.standard_normal(spec.ny if n_rows is None else n_rows))
    kernel = np.ones(9) / 9   # smooth so it is a slow drift, not row noise
    walk = np.convolve(np.pad(walk, 4, mode="edge"), kernel, mode="valid")
    walk -= walk.mean()
    return spec.overscan_drift_amp * walk / max(np.abs(walk).max(), 1e-12)


def _readout(spec: NightSpec, bias2d: np.ndarray, electrons, rng) -> np.ndarray:
    """Digitise: data-section electrons -> full raw frame in ADU (uint16).

    Pre/overscan get only bias + drift + read noise.  Rounding (not flooring)
    keeps the digitised values unbiased; values clip at the converter ceiling
    ``min(2**adc_bits - 1, saturation_adu)``.
    """
    adu = bias2d.copy()
    signal = np.zeros(adu.shape)
    if electrons is not None:
        signal[:, spec.prescan:spec.prescan + spec.nx] = electrons
    for amp in _geometry(spec)["amplifiers"]:
        # each amplifier has its own row drift, read noise and gain
        r0, r1 = amp.get("rows", (0, adu.shape[0]))
        block = (slice(r0, r1), slice(*amp["columns"]))
        width = amp["columns"][1] - amp["columns"][0]
        adu[block] += _drift(spec, rng, r1 - r0)[:, None]
        adu[block] += rng.normal(0.0, amp["read_noise"] / amp["gain"], (r1 - r0, width))
        adu[block] += signal[block] / amp["gain"]
    return np.clip(np.rint(adu), 0, simsky.adc_ceiling(spec)).astype(np.uint16)


def _airmass(spec: NightSpec, mjd_mid: np.ndarray, ra_deg: float | None = None) -> np.ndarray:
    """Airmass (sec z) of the target (or of RA ``ra_deg``) at the given times, computed offline."""
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    if len(mjd_mid) == 0:
        return np.zeros(0)
    with iers.conf.set_temp("auto_download", False), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # IERS-table age warnings are irrelevant at this precision
        site = EarthLocation.from_geodetic(spec.site["lon"] * u.deg, spec.site["lat"] * u.deg,
                                           spec.site["height"] * u.m)
        frame = AltAz(obstime=Time(mjd_mid, format="mjd", scale="utc"), location=site)
        ra = spec.ra_deg if ra_deg is None else ra_deg
        alt = SkyCoord(ra * u.deg, spec.dec_deg * u.deg).transform_to(frame).alt.deg
    return 1.0 / np.sin(np.radians(np.maximum(alt, 1.0)))


def _header(spec: NightSpec, fr: _Frame, date_obs: str, geom: dict, airmass=None) -> fits.Header:
    """Instrument-like header for one raw frame."""
    from astropy.coordinates import Angle

    h = fits.Header()
    h["IMAGETYP"] = fr.imagetyp
    h["OBJECT"] = {"OBJECT": spec.target_name}.get(fr.imagetyp, fr.imagetyp.lower())
    h["EXPTIME"] = (float(fr.exptime), "exposure time [s]")
    h["FILTER"] = fr.filter
    h["DATE-OBS"] = (date_obs, "UTC start of exposure")
    amp1 = geom["amplifiers"][0]
    h["GAIN"] = (float(amp1["gain"]), "e-/ADU")
    h["RDNOISE"] = (float(amp1["read_noise"]), "read noise [e-]")
    h["SATURATE"] = (int(spec.saturation_adu), "ADU")
    if geom["BIASSEC"]:   # a camera without overscan has no BIASSEC
        h["BIASSEC"] = geom["BIASSEC"]
    h["TRIMSEC"] = geom["TRIMSEC"]
    h["NAMPS"] = (len(geom["amplifiers"]), "amplifiers read")
    for n, amp in enumerate(geom["amplifiers"], 1):
        h[f"DATASEC{n}"] = (amp["data"], f"data read by amplifier {n}")
        if amp["overscan"]:
            h[f"BIASSEC{n}"] = (amp["overscan"], f"overscan of amplifier {n}")
        h[f"GAIN{n}"] = (float(amp["gain"]), f"e-/ADU, amplifier {n}")
        h[f"RDNOISE{n}"] = (float(amp["read_noise"]), f"e-, amplifier {n}")
    h["CCDSUM"] = f"{spec.binning} {spec.binning}"
    h["XBINNING"], h["YBINNING"] = spec.binning, spec.binning
    h["DETECTOR"], h["INSTRUME"], h["TELESCOP"] = "SIMCCD-1", "ccdflow-sim", "SIM-1m"
    h["OBSERVER"] = ("ccdflow night simulator", "who observed")
    h["RA"] = Angle(spec.ra_deg, "deg").to_string(unit="hourangle", sep=":", precision=2, pad=True)
    h["DEC"] = Angle(spec.dec_deg, "deg").to_string(unit="deg", sep=":", precision=1, pad=True,
                                                    alwayssign=True)
    h["SITELAT"] = (float(spec.site["lat"]), "deg")
    h["SITELONG"] = (float(spec.site["lon"]), "deg, east positive")
    h["SITEELEV"] = (float(spec.site["height"]), "m")
    if airmass is not None:
        h["AIRMASS"] = (round(float(airmass), 4), "at mid-exposure")
    return h


def transit_factor(t, t_mid, duration, depth):
    """Trapezoid transit: flat bottom, ingress/egress each 10 % of the duration."""
    tau = 0.1 * duration
    frac = np.clip((duration / 2 - np.abs(t - t_mid)) / tau, 0.0, 1.0)
    return 1.0 - depth * frac


def star_positions(nx: int, ny: int, x, y, dx: float, dy: float, rotation_deg: float) -> np.ndarray:
    """(N, 2) positions in a science frame of stars at (x, y) in the reference frame.

    The field rotates about the data-section centre, then shifts by (dx, dy):
    the geometry every science frame is made with (truth: frames.ecsv).
    """
    theta = np.radians(rotation_deg)
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    x0, y0 = np.asarray(x, float) - cx, np.asarray(y, float) - cy
    return np.column_stack([cx + np.cos(theta) * x0 - np.sin(theta) * y0 + dx,
                            cy + np.sin(theta) * x0 + np.cos(theta) * y0 + dy])


def truth_calibrated(outdir, spec: NightSpec, filename: str) -> dict:
    """A raw science frame reduced with the truth alone (for module tests and benchmarks).

    Data section minus each amplifier's overscan level (the median of its
    overscan block, skipping the 2 columns next to the data), times that
    amplifier's gain, in e-; without overscan the truth bias image is subtracted
    instead.  Variance = Poisson + the amplifier's read noise; mask: saturated
    pixels, the dead column and the injected cosmic rays.
    """
    outdir = Path(outdir)
    raw = fits.getdata(outdir / "raw" / filename).astype(np.float32)
    p0, p1 = spec.prescan, spec.prescan + spec.nx
    adu = raw[:, p0:p1]
    data, variance = np.zeros(adu.shape, np.float32), np.zeros(adu.shape, np.float32)
    for amp in _geometry(spec)["amplifiers"]:
        r0, r1 = amp.get("rows", (0, spec.ny))
        c0, c1 = max(amp["columns"][0], p0), min(amp["columns"][1], p1)
        block, out = (slice(r0, r1), slice(c0, c1)), (slice(r0, r1), slice(c0 - p0, c1 - p0))
        if amp["overscan"] is None:
            level = fits.getdata(outdir / "truth" / "truth.fits", "BIAS")[block].astype(np.float32)
        else:
            lo, hi = (0, p0) if amp["columns"][0] == 0 and spec.n_amps > 1 else (p1, raw.shape[1])
            skip = 2 if hi - lo > 2 else 0
            level = np.median(raw[r0:r1, lo:hi - skip] if lo == 0 else raw[r0:r1, lo + skip:hi])
        data[out] = (raw[block] - level) * np.float32(amp["gain"])
        variance[out] = (np.clip(data[out], 0, None) + amp["read_noise"] ** 2).astype(np.float32)
    mask = np.zeros(adu.shape, np.uint16)
    mask[adu >= spec.saturation_adu] |= 2        # ccdflow.bitmask.SATURATED
    mask[:, spec.bad_column] |= 1                 # BAD
    hits = Table.read(outdir / "truth" / "cosmics.ecsv")
    hits = hits[hits["filename"] == filename]
    mask[np.asarray(hits["y"], int), np.asarray(hits["x"], int)] |= 8   # COSMIC_RAY
    return {"frame_id": filename, "data": data, "variance": variance, "mask": mask}


def _host_transit(night, fr: _Frame) -> float:
    """Transit model factor of the host's flux in frame ``fr`` (1 outside the transit); ``night``: _Night or its model."""
    tr = (night if isinstance(night, dict) else night.model)["transit"]
    if tr["shape"] == "limb_darkened":
        return float(tr["factors"][fr.sci])
    return transit_factor(fr.t_start + fr.exptime / 2, tr["t_mid_s"], tr["duration_s"], tr["depth"])


def _science_electrons(night: _Night, fr: _Frame, rng):
    """Realised electrons of a science frame (stars, sky, dark, Poisson) and the host's peak pixel."""
    spec, series, i = night.spec, night.series, fr.sci
    x, y = star_positions(spec.nx, spec.ny, night.cat["x"], night.cat["y"], series["dx"][i], series["dy"][i],
                          series["rotation_deg"][i]).T
    trans = series["transmission"][i]
    t_mid = fr.t_start + fr.exptime / 2
    flux = np.array(night.cat["flux_e"], dtype=float) * trans * fr.exptime / spec.science_exptime
    tr, var = night.model["transit"], night.model["variable"]
    flux[tr["row"]] *= _host_transit(night, fr)
    flux[var["row"]] *= 1 + var["amplitude"] * np.sin(
        2 * np.pi * (t_mid - var["t0_s"]) / var["period_s"] + var["phase"])
    if spec.extinction_mag or spec.colour_extinction_mag:
        k = spec.extinction_mag + spec.colour_extinction_mag * np.asarray(night.cat["colour"], float)
        flux *= 10 ** (-0.4 * k * night.times["airmass"][fr.index])
    stars = render_stars(spec.nx, spec.ny, x, y, flux, series["fwhm"][i], spec.moffat_beta)
    sky = spec.sky_e_per_s * fr.exptime * trans
    expected = night.flats[fr.filter] * (stars + sky) + night.dark_map * fr.exptime
    expected[:, spec.bad_column] *= DEAD_RESPONSE
    electrons = rng.poisson(expected).astype(float)
    return electrons, _host_peak(electrons, x[tr["row"]], y[tr["row"]])


def _host_peak(electrons: np.ndarray, x: float, y: float) -> dict:
    """The host's brightest pixel within 2 px of its centre (before cosmics, bleeding and readout)."""
    ix, iy = int(np.rint(x)), int(np.rint(y))
    ny, nx = electrons.shape
    if not (0 <= ix < nx and 0 <= iy < ny):
        return {}   # the host is off the chip (lost pointing)
    y0, x0 = max(iy - 2, 0), max(ix - 2, 0)
    box = electrons[y0:iy + 3, x0:ix + 3]
    j, k = np.unravel_index(int(np.argmax(box)), box.shape)
    return {"host_peak_e": float(box[j, k]), "host_px": (y0 + j, x0 + k)}


def _add_cosmics(spec: NightSpec, e: np.ndarray, exptime: float, rng):
    """Deposit cosmic rays (rate scaled by exptime) into ``e``; return their pixels.

    The dead column collects no charge, so hits there are dropped from the truth.
    """
    n = int(round(spec.n_cosmic_rays_per_frame * exptime / spec.science_exptime))
    hits = _cosmic_rays(rng, n, spec.nx, spec.ny)
    cx, cy, q, track = (a[hits[0] != spec.bad_column] for a in hits)
    e[cy, cx] += q
    return cx, cy, q, track


def _write_fits(path: Path, data: np.ndarray, header: fits.Header, damaged: str = "") -> None:
    """Write a primary-HDU uint16 file, then break it as ``damaged`` asks."""
    if damaged == "zero_length":
        path.write_bytes(b"")
        return
    if damaged == "not_fits":
        path.write_text("This is not a FITS file.\nIt is a text note that ended up in raw/.\n")
        return
    if damaged == "missing_exptime":
        del header["EXPTIME"]
    if damaged == "wrong_shape":
        cut = min(64, data.shape[0] // 2, data.shape[1] // 2)
        data = data[:-cut, :-cut]
    fits.PrimaryHDU(np.ascontiguousarray(data, dtype=np.uint16), header=header).writeto(path, overwrite=True)
    if damaged == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: int(0.6 * len(raw))])


@dataclass
class _Night:
    """Everything fixed for the night, computed once before any frame is rendered."""

    spec: NightSpec
    geom: dict
    frames: list
    bias2d: np.ndarray
    dark_map: np.ndarray
    flats: dict
    cat: Table
    series: dict
    model: dict
    times: dict


def _resolve_pointing(spec: NightSpec) -> NightSpec:
    """``spec`` with ra_deg and cadence_s solved for ``airmass_range`` (unchanged without it)."""
    if spec.airmass_range is None:
        return spec
    from astropy.time import Time

    first = next(fr for fr in _plan(spec) if fr.sci == 0)
    mjd_first = Time(spec.night_start_utc, scale="utc").mjd + (first.t_start + first.exptime / 2) / 86400.0
    ra, cadence = simsky.solve_pointing(spec, mjd_first, lambda r, mjd: _airmass(spec, mjd, ra_deg=r))
    if cadence < spec.science_exptime:
        raise ValueError(f"airmass_range {tuple(spec.airmass_range)} is crossed in {cadence:.0f} s per frame, "
                         f"less than science_exptime: widen it or use fewer science frames")
    return replace(spec, ra_deg=ra, cadence_s=cadence)


def _transit_model(spec: NightSpec, sci_mid: list) -> dict:
    """Host row, shape, timing and geometry of the transit (limb-darkened: batman factors per science frame)."""
    tr = _transit(spec)
    model = {"row": 0, "shape": tr["shape"], "depth": tr["depth"], "duration_s": tr["duration_s"],
             "t_mid_s": sci_mid[0] + tr["t_mid_frac"] * (sci_mid[-1] - sci_mid[0])}
    if tr["shape"] == "limb_darkened":
        model["geometry"] = simsky.transit_geometry(tr)
    return model


def _prepare(spec: NightSpec) -> _Night:
    """Plan the frames and build the fixed patterns, catalogue, time stamps and models."""
    from astropy.time import Time, TimeDelta

    spec = _resolve_pointing(spec)
    frames = _plan(spec)
    t0 = Time(spec.night_start_utc, scale="utc")
    starts = np.array([fr.t_start for fr in frames])
    mids = starts + np.array([fr.exptime for fr in frames]) / 2
    t_start, t_mid = t0 + TimeDelta(starts, format="sec"), t0 + TimeDelta(mids, format="sec")
    t_start.precision = t_mid.precision = 3
    is_obj = np.array([fr.imagetyp == "OBJECT" for fr in frames])
    airmass = np.full(len(frames), np.nan)
    airmass[is_obj] = _airmass(spec, t_mid.mjd[is_obj])
    times = {"mjd0": t0.mjd, "date_obs": t_start.isot, "mid_utc": t_mid.isot,
             "mjd_mid": t_mid.mjd, "airmass": airmass}

    sci_mid = [mids[fr.index] for fr in frames if fr.sci >= 0 and not fr.damaged]
    var = spec.variable
    model = {   # catalogue rows 0 and 1 are the transit host and the variable
        "transit": _transit_model(spec, sci_mid),
        "variable": {"row": 1, "amplitude": var["amplitude"], "period_s": var["period_s"],
                     "phase": var["phase"], "t0_s": sci_mid[0]},
    }
    n_series = spec.n_science + len(spec.damaged)
    sci_frames = sorted((fr for fr in frames if fr.sci >= 0), key=lambda fr: fr.sci)
    if model["transit"]["shape"] == "limb_darkened":
        model["transit"]["factors"] = simsky.limb_darkened_flux(
            [mids[fr.index] for fr in sci_frames], model["transit"]["t_mid_s"], model["transit"]["geometry"])
    series = _science_series(spec, n_series)
    simsky.drift_series(spec, series, np.array([airmass[fr.index] for fr in sci_frames]))
    for fr in frames:
        if fr.spoiled == "pointing_lost":   # telescope lost the field: big jump + rotation
            series["dx"][fr.sci] += 230.0
            series["dy"][fr.sci] -= 210.0
            series["rotation_deg"][fr.sci] += 5.0
        elif fr.spoiled == "cloud":
            series["transmission"][fr.sci] = 0.03
    filters = dict.fromkeys((*spec.flat_filters, spec.science_filter))
    flats = {f: _flat_field(spec, f) for f in filters}
    best = _best_frame(spec, sci_frames, series, model, airmass, flats[spec.science_filter])
    return _Night(spec=spec, geom=_geometry(spec), frames=frames, bias2d=_bias_image(spec),
                  dark_map=_dark_rate_map(spec), flats=flats,
                  cat=_catalogue(spec, best), series=series, model=model, times=times)


def _best_frame(spec: NightSpec, sci_frames: list, series: dict, model: dict, airmass, flat) -> dict:
    """What ``host_peak_saturation`` refers to: the best-seeing good science frame, as it will be rendered."""
    fr = min((f for f in sci_frames if not f.damaged and not f.spoiled), key=lambda f: series["fwhm"][f.sci])
    i = fr.sci
    k_host = spec.extinction_mag + spec.colour_extinction_mag * spec.host_colour
    return {**{k: series[k][i] for k in ("fwhm", "dx", "dy", "rotation_deg")}, "flat": flat,
            "sky": spec.sky_e_per_s * spec.science_exptime * series["transmission"][i],
            "factor": series["transmission"][i] * _host_transit(model, fr) * 10 ** (-0.4 * k_host * airmass[fr.index])}


def _frame_electrons(night: _Night, fr: _Frame, rng):
    """Data-section electrons of one frame (None for biases), its cosmic-ray pixels and host-peak info."""
    spec, electrons, cosmics, host = night.spec, None, None, {}
    if fr.damaged in ("zero_length", "not_fits"):
        return None, None, host   # nothing readable is written, so skip the pixel work
    if fr.imagetyp == "DARK":
        electrons = rng.poisson(night.dark_map * fr.exptime).astype(float)
    elif fr.imagetyp == "FLAT":
        expected = night.flats[fr.filter] * fr.level + night.dark_map * fr.exptime
        expected[:, spec.bad_column] *= DEAD_RESPONSE
        electrons = rng.poisson(expected).astype(float)
    elif fr.imagetyp == "OBJECT":
        electrons, host = _science_electrons(night, fr, rng)
    if fr.imagetyp in ("DARK", "OBJECT"):
        cosmics = _add_cosmics(spec, electrons, fr.exptime, rng)
    if electrons is not None:
        _bleed(electrons, spec.full_well)
    return electrons, cosmics, host


def _frame_row(night: _Night, fr: _Frame, cosmics, host: dict | None = None) -> dict:
    """The frames.ecsv row of one written file.

    Science rows also say how bright the host's brightest pixel was (e-, before
    cosmics, bleeding and readout), whether that pixel really saturated (read at
    the converter ceiling, or reached full well) and the transit factor applied
    to the host's flux.
    """
    t, s = night.times, fr.sci
    per_sci = {k: (night.series[k][s] if s >= 0 else np.nan)
               for k in ("dx", "dy", "rotation_deg", "fwhm", "transmission")}
    return {"filename": fr.filename, "imagetyp": fr.imagetyp, "filter": fr.filter,
            "exptime": fr.exptime, "date_obs": t["date_obs"][fr.index],
            "mid_utc": t["mid_utc"][fr.index], "mjd_mid": t["mjd_mid"][fr.index],
            "airmass": t["airmass"][fr.index], **per_sci,
            "flat_level_e": fr.level if fr.imagetyp == "FLAT" else np.nan,
            "n_cosmic": 0 if cosmics is None else len(np.unique(cosmics[3])),
            "n_cosmic_px": 0 if cosmics is None else len(cosmics[0]),
            "spoiled": fr.spoiled, "damaged": fr.damaged,
            "host_peak_e": (host or {}).get("host_peak_e", np.nan),
            "host_saturated": bool((host or {}).get("saturated", False)),
            "host_transit_factor": _host_transit(night, fr) if s >= 0 else np.nan}


def simulate_night(outdir, spec: NightSpec | None = None) -> dict:
    """Write outdir/raw/*.fits and outdir/truth/*; return the truth summary dict (same as truth.json)."""
    spec = NightSpec.demo() if spec is None else spec
    spec.validate()
    raw_dir, truth_dir = Path(outdir) / "raw", Path(outdir) / "truth"
    raw_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    night = _prepare(spec)
    rows, cosmics = [], []
    spec = night.spec   # airmass_range may have set the pointing and cadence
    for fr in night.frames:
        rng = np.random.default_rng([spec.seed, _T_FRAME, fr.index])
        electrons, cr, host = _frame_electrons(night, fr, rng)
        if cr is not None:
            cosmics.append(Table({"filename": [fr.filename] * len(cr[0]), "x": cr[0], "y": cr[1],
                                  "charge_e": cr[2], "track": cr[3]}))
        data = _readout(spec, night.bias2d, electrons, rng)
        if host:
            py, px = host["host_px"]
            host["saturated"] = (data[py, spec.prescan + px] >= simsky.adc_ceiling(spec)
                                 or host["host_peak_e"] >= spec.full_well)
        airmass = night.times["airmass"][fr.index] if fr.imagetyp == "OBJECT" else None
        header = _header(spec, fr, night.times["date_obs"][fr.index], night.geom, airmass)
        _write_fits(raw_dir / fr.filename, data, header, fr.damaged)
        rows.append(_frame_row(night, fr, cr, host))
    return _write_truth(night, truth_dir, rows, cosmics)


def _write_truth(night: _Night, truth_dir: Path, rows: list, cosmics: list) -> dict:
    """Write truth.fits, the ECSV tables and truth.json; return the JSON summary."""
    spec, cat, flats, model = night.spec, night.cat, night.flats, night.model
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(night.bias2d.astype(np.float32), name="BIAS"),
            fits.ImageHDU(night.dark_map.astype(np.float32), name="DARK_RATE")]
    hdus += [fits.ImageHDU(flats[f].astype(np.float32), name=f"FLAT_{f}") for f in flats]
    badpix = np.zeros((spec.ny, spec.nx), np.uint8)
    badpix[:, spec.bad_column] = 1
    hdus.append(fits.ImageHDU(badpix, name="BADPIX"))
    hot = simsky.hot_pixel_mask(night.dark_map)
    hdus.append(fits.ImageHDU(hot, name="HOT"))   # dark rate > HOT_PIXEL_FACTOR x median
    fits.HDUList(hdus).writeto(truth_dir / "truth.fits", overwrite=True)

    cat.write(truth_dir / "stars.ecsv", overwrite=True)
    Table(rows=rows).write(truth_dir / "frames.ecsv", overwrite=True)
    empty = Table({"filename": np.array([], str), "x": np.array([], int), "y": np.array([], int),
                   "charge_e": np.array([], float), "track": np.array([], int)})
    (vstack(cosmics) if cosmics else empty).write(truth_dir / "cosmics.ecsv", overwrite=True)

    mjd0 = night.times["mjd0"]
    tr, var = model["transit"], model["variable"]
    good = [r for r in rows if not r["damaged"]]
    amp1 = night.geom["amplifiers"][0]
    transit = {"host_id": int(cat["id"][tr["row"]]), "depth": tr["depth"],
               "t_mid_mjd": mjd0 + tr["t_mid_s"] / 86400, "duration_s": tr["duration_s"],
               "ingress_s": 0.1 * tr["duration_s"], "shape": tr["shape"]}
    if tr["shape"] == "limb_darkened":
        geo = tr["geometry"]
        transit.update({k: geo[k] for k in ("rp", "a_rs", "inc_deg", "b", "u", "period_d", "ingress_s")},
                       depth=geo["rp"] ** 2)
    truth = {
        "spec": asdict(spec),
        "geometry": night.geom,
        "gain": amp1["gain"], "read_noise_e": amp1["read_noise"],
        "read_noise_adu": amp1["read_noise"] / amp1["gain"],
        "saturate_adu": spec.saturation_adu, "bad_column": spec.bad_column,
        "transit": transit,
        "variable": {"id": int(cat["id"][var["row"]]), "amplitude": var["amplitude"],
                     "period_s": var["period_s"], "t0_mjd": mjd0 + var["t0_s"] / 86400,
                     "phase": var["phase"]},
        "saturated_star_ids": [int(i) for i in cat["id"][cat["is_saturated"]]],
        "counts": {k: sum(r["imagetyp"] == k for r in good) for k in ("BIAS", "DARK", "FLAT", "OBJECT")},
        "damaged": [{"filename": r["filename"], "kind": r["damaged"]} for r in rows if r["damaged"]],
        "spoiled": [{"filename": r["filename"], "kind": r["spoiled"]} for r in rows if r["spoiled"]],
        **simsky.sky_truth(spec, cat, rows, hot, _sat_electrons(spec)),
    }
    text = json.dumps(truth, indent=2, ensure_ascii=False)
    (truth_dir / "truth.json").write_text(text, encoding="utf-8")
    return json.loads(text)
