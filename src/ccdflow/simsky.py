"""Hostile skies for the night simulator: named option sets and their helpers.

:mod:`ccdflow.simulate` makes a well-behaved night by default.  The options
documented in :class:`ccdflow.simulate.NightSpec` make the nights that break
photometry on real data (undersampled stars, a 12-bit converter, no
calibration frames, a warm chip, a saturating host, close pairs, colour-
dependent extinction, drifting seeing and pointing, four amplifiers, a
limb-darkened transit).  This module holds

* ``SKIES``: named sets of those options, merged with :func:`sky_options`::

      from ccdflow.simsky import sky_options
      from ccdflow.simulate import NightSpec
      spec = NightSpec.from_dict({**sky_options("undersampled", "extinction"), "seed": 3}, base="tiny")
      # or: NightSpec.from_dict({"seed": 3}, base="tiny", skies=("undersampled", "extinction"))

* the helpers that turn the options into pixels and truth (amplifier table,
  star colours, close pairs, the airmass-range pointing, seeing/pointing drift,
  the limb-darkened transit and the hot-pixel truth mask).

Nothing here draws from a random stream the default night uses, so with every
option at its default the simulator's output stays bit-identical.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["HOT_PIXEL_FACTOR", "SKIES", "TRANSIT_SHAPES", "merge_options", "sky_options"]

TRANSIT_SHAPES = ("trapezoid", "limb_darkened")
HOT_PIXEL_FACTOR = 20.0      # truth.fits HOT: dark rate above this many times the median rate
AMP_TABLE_KEYS = ("gain", "read_noise", "bias_offset")
# amplifiers 3 and 4 of a quadrant read-out (gain and read-noise ratios to amplifier 1, bias offset in ADU);
# amplifier 2 keeps NightSpec.amp2_gain_ratio / 1.2 x read noise / amp2_bias_offset
_AMP34 = ((0.94, 0.9, -60.0), (1.06, 1.1, 90.0))
SIDEREAL = 0.9972695663      # solar seconds per sidereal second

SKIES: dict[str, dict] = {
    # stars of 1.3-2.2 px FWHM: cores fall inside one pixel, centroids and apertures suffer
    "undersampled": {"fwhm_range": (1.3, 2.2)},
    # 12-bit converter at high gain: the ADC clips (4095) long before the 30 ke- full well
    "twelve_bit": {"adc_bits": 12, "gain": 6.0, "read_noise": 12.0, "bias_level": 300.0,
                   "saturation_adu": 4095, "full_well": 30000.0, "flat_level_e": 10000.0,
                   "bias_structure_amp": 2.0, "overscan_drift_amp": 1.0},
    # science frames only: no bias, dark or flat frame (and no end-of-night bias)
    "science_only": {"n_bias": 0, "dark_exptimes": (), "n_dark_per_exptime": 0,
                     "flat_filters": (), "n_flat_per_filter": 0},
    # a camera without pre/overscan: no BIASSEC, TRIMSEC is the whole frame
    "no_overscan": {"n_amps": 1, "prescan": 0, "overscan": 0},
    # warm chip, many hot pixels, and no darks to remove them
    "warm_no_darks": {"dark_rate": 2.0, "hot_pixel_fraction": 2e-3, "dark_exptimes": (),
                      "n_dark_per_exptime": 0},
    # the transit host peaks at 1.15 x saturation in the sharpest (pixel-centred) frames only
    "saturated_host": {"host_peak_saturation": 1.15},
    # eight pairs 1.5-3 FWHM apart, companions 0.2-1 x the primary
    "close_pairs": {"n_close_pairs": 8},
    # the transit host itself has a close companion
    "host_pair": {"host_in_pair": True},
    # grey + colour extinction, a red host, a setting field from airmass 1.1 to 2.0
    "extinction": {"extinction_mag": 0.15, "colour_extinction_mag": 0.08, "host_colour": 1.4,
                   "airmass_range": (1.1, 2.0)},
    # seeing grows with airmass and time, the pointing random-walks
    "drifting": {"seeing_airmass_power": 0.6, "seeing_trend": 0.3, "pointing_walk_px": 0.3},
    # quadrant read-out, each amplifier its own gain, read noise and bias offset
    "four_amps": {"n_amps": 4},
    # a batman limb-darkened transit instead of the trapezoid
    "limb_darkened": {"transit": {"shape": "limb_darkened"}},
}


def merge_options(*dicts: dict) -> dict:
    """Merge option dicts left to right; nested dicts (transit, variable, site) key by key."""
    out: dict = {}
    for d in dicts:
        for key, value in (d or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = dict(value) if isinstance(value, dict) else value
    return out


def sky_names(skies) -> tuple:
    """``skies`` as a tuple of names: a name, a comma-separated string or a sequence."""
    if skies is None:
        return ()
    if isinstance(skies, str):
        return tuple(s.strip() for s in skies.split(",") if s.strip())
    return tuple(skies)


def sky_options(*names: str) -> dict:
    """The merged NightSpec options of the named ``SKIES`` (later names win on conflicts)."""
    unknown = [n for n in names if n not in SKIES]
    if unknown:
        raise ValueError(f"unknown sky {unknown[0]!r}; choose from {sorted(SKIES)}")
    return merge_options(*(SKIES[n] for n in names))


# ----------------------------------------------------------------------------- detector
def adc_ceiling(spec) -> int:
    """Largest value the converter can write: ``min(2**adc_bits - 1, saturation_adu)``."""
    return int(min(2 ** int(spec.adc_bits) - 1, spec.saturation_adu))


def amplifier_table(spec) -> list[dict]:
    """Gain (e-/ADU), read noise (e-) and bias offset (ADU) of each amplifier.

    Amplifier 1 is ``gain``/``read_noise``/0; amplifier 2 ``amp2_gain_ratio`` x gain,
    1.2 x read noise, ``amp2_bias_offset``; amplifiers 3 and 4 (quadrants) 0.94/1.06 x
    gain, 0.9/1.1 x read noise, -60/+90 ADU.  ``amp_table`` entries override any of
    the three values per amplifier.
    """
    ratios = [(1.0, 1.0, 0.0), (spec.amp2_gain_ratio, 1.2, spec.amp2_bias_offset), *_AMP34]
    amps = []
    for n, (g, r, offset) in enumerate(ratios[:spec.n_amps]):
        amp = {"gain": spec.gain * g if n else spec.gain,
               "read_noise": spec.read_noise * r if n else spec.read_noise, "bias_offset": offset}
        if spec.amp_table:
            amp.update(spec.amp_table[n])
        amps.append(amp)
    return amps


def sky_truth(spec, cat, rows: list, hot: np.ndarray, saturation_e: float) -> dict:
    """truth.json sections of the hostile-sky options (present for every night).

    adc (bits, ceiling, saturation and full well in e-), pointing (RA/Dec, the
    cadence, airmass of the first/last/min/max good science frame), extinction
    coefficients, seeing/pointing drift settings, close_pairs (ids, separation,
    companion/primary flux ratio), hot_pixels (count, threshold) and the science
    files in which the host really saturated.
    """
    airmass = np.array([r["airmass"] for r in rows if r["imagetyp"] == "OBJECT" and not r["damaged"]])
    pairs = []
    for k in np.unique(cat["pair_id"][cat["pair_id"] > 0]):
        a, b = cat[cat["pair_id"] == k]
        pairs.append({"pair_id": int(k), "ids": [int(a["id"]), int(b["id"])],
                      "separation_px": float(np.hypot(a["x"] - b["x"], a["y"] - b["y"])),
                      "flux_ratio": float(b["flux_e"] / a["flux_e"])})
    return {
        "adc": {"bits": spec.adc_bits, "ceiling_adu": adc_ceiling(spec), "saturation_e": saturation_e,
                "full_well_e": spec.full_well},
        "pointing": {"ra_deg": spec.ra_deg, "dec_deg": spec.dec_deg, "cadence_s": spec.cadence_s,
                     "airmass_first": float(airmass[0]), "airmass_last": float(airmass[-1]),
                     "airmass_min": float(airmass.min()), "airmass_max": float(airmass.max())},
        "extinction": {"grey_mag_per_airmass": spec.extinction_mag,
                       "colour_mag_per_airmass": spec.colour_extinction_mag, "host_colour": spec.host_colour,
                       "factor": "10**(-0.4 * (grey + colour_coeff * colour) * airmass)"},
        "seeing": {"airmass_power": spec.seeing_airmass_power, "trend": spec.seeing_trend,
                   "pointing_walk_px": spec.pointing_walk_px},
        "close_pairs": pairs,
        "hot_pixels": {"n": int(hot.sum()), "threshold_x_median": HOT_PIXEL_FACTOR},
        "host_saturated_files": [r["filename"] for r in rows if r["host_saturated"]],
    }


def hot_pixel_mask(dark_rate: np.ndarray) -> np.ndarray:
    """Truth mask (uint8) of hot pixels: dark rate > ``HOT_PIXEL_FACTOR`` x the median rate."""
    return (dark_rate > HOT_PIXEL_FACTOR * np.median(dark_rate)).astype(np.uint8)


# ----------------------------------------------------------------------------- catalogue
def colours(spec, n: int) -> np.ndarray:
    """Colour index (B-V like) of every catalogue row; row 0 (the transit host) gets ``host_colour``."""
    rng = np.random.default_rng([spec.seed, 8, 0])   # own stream (tag 8): no default stream changes
    c = rng.uniform(*spec.colour_range, n)
    c[0] = spec.host_colour
    return c


def snr_flux(spec, snr: float) -> float:
    """Flux (e-) giving ``snr`` in one science frame through a 1.5 x mean-FWHM aperture."""
    r = 1.5 * float(np.mean(spec.fwhm_range))
    noise_px = spec.sky_e_per_s * spec.science_exptime + spec.dark_rate * spec.science_exptime \
        + spec.read_noise ** 2
    b = math.pi * r * r * noise_px
    s2 = snr * snr
    return 0.5 * (s2 + math.sqrt(s2 * s2 + 4 * s2 * b))


def close_pairs(spec, special: np.ndarray, avoid_cols, f_max: float, host_flux: float,
                margin: float, isolation: float):
    """Close pairs appended to the catalogue.

    ``special`` holds the host and variable positions (pairs stay ``isolation`` px
    away unless ``host_in_pair``); ``avoid_cols`` are x positions of the dead
    column and saturated stars (bleed trails).  Returns x, y, flux and pair_id
    of the new rows and the pair_id of the host (0 unless ``host_in_pair``).
    Primaries are drawn for S/N 75-250 per frame (capped below saturation),
    companions ``close_pair_flux_ratio`` x the primary at
    ``close_pair_separation_fwhm`` x the mean of ``fwhm_range``.
    """
    rng = np.random.default_rng([spec.seed, 9, 0])   # own stream (tag 9)
    fwhm = float(np.mean(spec.fwhm_range))
    s_lo, s_hi = (float(s) * fwhm for s in spec.close_pair_separation_fwhm)
    lo_flux = min(snr_flux(spec, 75.0), f_max)
    hi_flux = max(min(snr_flux(spec, 250.0), f_max), lo_flux)
    xs, ys, flux, ids = [], [], [], []
    edge = margin + s_hi
    placed: list[tuple] = []

    def companion(x, y, f):
        sep, angle = rng.uniform(s_lo, s_hi), rng.uniform(0, 2 * np.pi)
        return x + sep * np.cos(angle), y + sep * np.sin(angle), f * rng.uniform(*spec.close_pair_flux_ratio)

    def ok(x, y, strict):
        far = np.all(np.hypot(special[:, 0] - x, special[:, 1] - y) > isolation + s_hi)
        cols = np.all(np.abs(np.asarray(avoid_cols, float) - x) > s_hi + 8)
        apart = all(math.hypot(px - x, py - y) > 4 * s_hi for px, py in placed)
        return far and (cols and apart if strict else True)

    for k in range(spec.n_close_pairs):
        for strict in (True, False):
            for _ in range(2000):
                x, y = rng.uniform(edge, spec.nx - 1 - edge), rng.uniform(edge, spec.ny - 1 - edge)
                if ok(x, y, strict):
                    break
            else:
                continue
            break
        else:
            raise ValueError("data section too small for n_close_pairs away from the transit host/variable")
        placed.append((x, y))
        f = float(np.exp(rng.uniform(np.log(lo_flux), np.log(hi_flux))))
        cx, cy, cf = companion(x, y, f)
        xs += [x, cx]
        ys += [y, cy]
        flux += [f, cf]
        ids += [k + 1, k + 1]
    host_id = 0
    if spec.host_in_pair:
        host_id = spec.n_close_pairs + 1
        hx, hy = special[0]
        for _ in range(200):   # keep the companion on the chip
            cx, cy, cf = companion(hx, hy, host_flux)
            if margin <= cx <= spec.nx - 1 - margin and margin <= cy <= spec.ny - 1 - margin:
                break
        xs.append(cx), ys.append(cy), flux.append(cf), ids.append(host_id)
    return np.array(xs, float), np.array(ys, float), np.array(flux, float), np.array(ids, int), host_id


# ----------------------------------------------------------------------------- pointing and series
def _hour_angle_deg(spec, airmass: float, setting: bool) -> float:
    lat, dec = math.radians(spec.site["lat"]), math.radians(spec.dec_deg)
    cos_h = (1.0 / airmass - math.sin(lat) * math.sin(dec)) / (math.cos(lat) * math.cos(dec))
    h = math.degrees(math.acos(max(-1.0, min(1.0, cos_h))))
    return h if setting else -h


def airmass_range_problem(spec) -> str:
    """'' if ``airmass_range`` can be reached at this site and declination, else why not."""
    rng = spec.airmass_range
    if rng is None:
        return ""
    if len(rng) != 2 or min(rng) < 1.0 or rng[0] == rng[1]:
        return "airmass_range needs two different airmasses >= 1 (first, last science frame)"
    lat, dec = math.radians(spec.site["lat"]), math.radians(spec.dec_deg)
    for x in rng:
        cos_h = (1.0 / x - math.sin(lat) * math.sin(dec)) / (math.cos(lat) * math.cos(dec))
        if not -1.0 <= cos_h <= 1.0:
            return (f"airmass {x} is never reached at dec {spec.dec_deg} from latitude "
                    f"{spec.site['lat']}: change airmass_range, dec_deg or site")
    return ""


def _secant(f, x0: float, x1: float, tol: float, n: int = 30) -> float:
    f0, f1 = f(x0), f(x1)
    for _ in range(n):
        if abs(f1) < tol or f1 == f0:
            break
        x0, x1, f0 = x1, x1 - f1 * (x1 - x0) / (f1 - f0), f1
        f1 = f(x1)
    return x1


def solve_pointing(spec, mjd_first: float, airmass_at) -> tuple[float, float]:
    """(ra_deg, cadence_s) giving ``airmass_range`` at the first and last science mid-exposures.

    ``airmass_at(ra_deg, mjd_array)`` is the simulator's own airmass, so the result
    is exact for it.  A rising airmass range gives a setting field (west of the
    meridian), a falling one a rising field.
    """
    x0, x1 = (float(x) for x in spec.airmass_range)
    setting = x1 > x0
    h0, h1 = _hour_angle_deg(spec, x0, setting), _hour_angle_deg(spec, x1, setting)
    gmst = 280.46061837 + 360.98564736629 * (mjd_first + 2400000.5 - 2451545.0)
    ra = (gmst + spec.site["lon"] - h0) % 360.0

    def f_ra(r):
        return float(airmass_at(r % 360.0, np.array([mjd_first]))[0]) - x0

    # larger RA = smaller hour angle: the sign of the slope is fixed, so the secant converges
    ra = _secant(f_ra, ra, ra + 0.2, 1e-9) % 360.0
    span = (h1 - h0) / 15.0 * 3600.0 * SIDEREAL

    def f_t(dt):
        return float(airmass_at(ra, np.array([mjd_first + dt / 86400.0]))[0]) - x1

    span = _secant(f_t, span, span * 1.01 + 30.0, 1e-9)
    n = spec.n_science - 1
    return float(ra), float(span / n)


def drift_series(spec, series: dict, airmass: np.ndarray) -> None:
    """Seeing that follows airmass and time, and a pointing random walk (in place).

    FWHM x ``airmass**seeing_airmass_power`` x ``(1 + seeing_trend * i / (n_science - 1))``,
    clipped to >= 1 px; dx, dy += a random walk of ``pointing_walk_px`` rms steps
    (frame 0 stays the unshifted reference).  Each step has its own stream (tag 10)
    so appended damaged frames never change earlier ones.
    """
    n = len(series["fwhm"])
    if spec.seeing_airmass_power or spec.seeing_trend:
        i = np.arange(n)
        scale = np.asarray(airmass, float) ** spec.seeing_airmass_power
        scale = scale * (1.0 + spec.seeing_trend * i / (spec.n_science - 1))
        series["fwhm"][:] = np.clip(series["fwhm"] * scale, 1.0, None)
    if spec.pointing_walk_px:
        steps = np.array([np.random.default_rng([spec.seed, 10, i]).normal(0.0, spec.pointing_walk_px, 2)
                          if i else np.zeros(2) for i in range(n)])
        walk = np.cumsum(steps, axis=0)
        series["dx"][:] += walk[:, 0]
        series["dy"][:] += walk[:, 1]


# ----------------------------------------------------------------------------- transit
def transit_geometry(tr: dict) -> dict:
    """Circular-orbit geometry whose total duration T14 equals ``duration_s``.

    rp = sqrt(depth); a/Rs from sin(pi T14 / P) = sqrt((1 + rp)^2 - b^2) / (a sin i),
    b = a cos i; ingress_s = (T14 - T23) / 2 (T14 / 2 for a grazing transit).
    """
    k, b, period = math.sqrt(tr["depth"]), float(tr["b"]), float(tr["period_d"]) * 86400.0
    t14 = float(tr["duration_s"])
    s = math.sin(math.pi * t14 / period)
    a = math.sqrt(b * b + ((1 + k) ** 2 - b * b) / (s * s))
    inc = math.acos(b / a)
    inner = (1 - k) ** 2 - b * b
    t23 = period / math.pi * math.asin(math.sqrt(inner) / (a * math.sin(inc))) if inner > 0 else 0.0
    return {"rp": k, "a_rs": a, "inc_deg": math.degrees(inc), "b": b,
            "u": [float(v) for v in tr["u"]], "period_d": period / 86400.0,
            "ingress_s": 0.5 * (t14 - t23)}


def limb_darkened_flux(t_s, t_mid_s: float, geo: dict) -> np.ndarray:
    """Relative flux of the quadratic limb-darkened transit (batman) at times ``t_s`` (s)."""
    import batman

    p = batman.TransitParams()
    p.t0, p.per, p.rp, p.a, p.inc = 0.0, geo["period_d"], geo["rp"], geo["a_rs"], geo["inc_deg"]
    p.ecc, p.w, p.u, p.limb_dark = 0.0, 90.0, list(geo["u"]), "quadratic"
    t = (np.atleast_1d(np.asarray(t_s, float)) - t_mid_s) / 86400.0
    return np.asarray(batman.TransitModel(p, t).light_curve(p), float)


def transit_problem(tr: dict) -> str:
    """'' if the ``transit`` dict can be simulated, else why not."""
    shape = tr.get("shape", "trapezoid")
    if shape not in TRANSIT_SHAPES:
        return f"unknown transit shape {shape!r}; choose from {TRANSIT_SHAPES}"
    if not 0 <= tr["depth"] < 1 or tr["duration_s"] <= 0:
        return "transit needs 0 <= depth < 1 and duration_s > 0"
    if shape == "limb_darkened":
        k = math.sqrt(tr["depth"])
        if len(tr["u"]) != 2:
            return "transit u needs two quadratic limb-darkening coefficients"
        if not 0 <= tr["b"] < 1 + k:
            return "transit b (impact parameter) must satisfy 0 <= b < 1 + sqrt(depth)"
        if not 0 < tr["duration_s"] < 0.5 * tr["period_d"] * 86400.0:
            return "transit duration_s must be shorter than half of period_d"
        if tr["depth"] <= 0:
            return "a limb-darkened transit needs depth > 0"
    return ""


def option_problem(spec, sat_electrons, transit: dict) -> str:
    """'' if the hostile-sky options can be simulated, else a message saying why not.

    Runs after NightSpec's basic checks; ``sat_electrons(spec)`` is the simulator's
    saturation level (e-), ``transit`` the complete transit dict.
    """
    def ordered(pair):
        return len(pair) == 2 and 0 < pair[0] <= pair[1]

    def bias_fits():
        amps = amplifier_table(spec)
        offsets = [a["bias_offset"] for a in amps]
        noise = max(5 * a["read_noise"] / a["gain"] for a in amps)
        top = spec.bias_level + max(offsets) + 2 * spec.bias_structure_amp + spec.overscan_drift_amp + noise
        return spec.bias_level + min(offsets) - noise > 0 and top < adc_ceiling(spec)

    below = (spec.sky_e_per_s + spec.dark_rate) * spec.science_exptime
    ceiling = 2 ** spec.adc_bits - 1 if isinstance(spec.adc_bits, int) else 0
    checks = [   # lazy and in order: later checks rely on earlier ones
        (lambda: not validate_amp_table(spec), lambda: validate_amp_table(spec)),
        (lambda: isinstance(spec.adc_bits, int) and 8 <= spec.adc_bits <= 16,
         "adc_bits must be an integer from 8 to 16 (raw frames are 16-bit unsigned integers)"),
        (lambda: 0 < spec.saturation_adu <= ceiling,
         lambda: (f"saturation_adu ({spec.saturation_adu}) must be > 0 and <= the {spec.adc_bits}-bit "
                  f"converter's ceiling 2**adc_bits - 1 = {ceiling}")),
        (lambda: spec.full_well > 0 and spec.dark_rate >= 0 and 0 <= spec.hot_pixel_fraction < 1,
         "need full_well > 0, dark_rate >= 0 and 0 <= hot_pixel_fraction < 1"),
        (bias_fits, ("bias_level (+ amplifier bias offsets, structure, drift and 5 sigma of read noise) "
                     "must lie inside the converter range, below saturation_adu")),
        (lambda: sat_electrons(spec) > 2 * below,
         lambda: (f"a pixel saturates at {sat_electrons(spec):.0f} e-, below twice the sky + dark of a "
                  f"science frame ({below:.0f} e-): lower gain, sky_e_per_s or science_exptime")),
        (lambda: spec.host_peak_saturation is None or spec.host_peak_saturation * sat_electrons(spec) > 1.05 * below,
         "host_peak_saturation must be None or > 0 and put the host's peak above the sky"),
        (lambda: (spec.n_close_pairs >= 0 and ordered(spec.close_pair_separation_fwhm)
                  and ordered(spec.close_pair_flux_ratio) and spec.close_pair_flux_ratio[1] <= 1),
         "need n_close_pairs >= 0, an ordered close_pair_separation_fwhm > 0 and 0 < close_pair_flux_ratio <= 1"),
        (lambda: len(spec.colour_range) == 2 and spec.colour_range[0] <= spec.colour_range[1],
         "colour_range must be (low, high)"),
        (lambda: not airmass_range_problem(spec), lambda: airmass_range_problem(spec)),
        (lambda: spec.seeing_trend > -1 and spec.pointing_walk_px >= 0,
         "need seeing_trend > -1 and pointing_walk_px >= 0"),
        (lambda: not transit_problem(transit), lambda: transit_problem(transit)),
    ]
    for ok, message in checks:
        if not ok():
            return message() if callable(message) else message
    return ""


def validate_amp_table(spec) -> str:
    """'' if ``amp_table`` is empty or one mapping per amplifier with known keys."""
    if not spec.amp_table:
        return ""
    if len(spec.amp_table) != spec.n_amps:
        return f"amp_table needs one entry per amplifier ({spec.n_amps})"
    for n, entry in enumerate(spec.amp_table, 1):
        if not isinstance(entry, dict) or set(entry) - set(AMP_TABLE_KEYS):
            return f"amp_table entry {n} must be a mapping with keys from {AMP_TABLE_KEYS}"
        if entry.get("gain", 1.0) <= 0 or entry.get("read_noise", 0.0) < 0:
            return f"amp_table entry {n}: gain must be > 0 and read_noise >= 0"
    return ""
