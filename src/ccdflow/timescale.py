"""Mid-exposure UTC -> JD_UTC, BJD_TDB and airmass, computed offline.

Transit timing needs BJD_TDB (Eastman et al. 2010): the time on the TDB scale
at which the light would have reached the solar-system barycentre. We compute
it with astropy only -- ``Time(utc).tdb + Time.light_travel_time(kind=
'barycentric')`` with astropy's *builtin* ephemeris (ERFA ``epv00``, good to a
few metres in the Earth's barycentric position, i.e. well below a millisecond)
-- never with a web service and never with the 'jpl' ephemeris, which would be
downloaded.

Offline operation
-----------------
UTC -> TT uses the leap-second table and UTC -> UT1 / polar motion (needed for
the observatory's position and for altitude) use IERS tables. The
``astropy-iers-data`` package ships both; by default astropy would still try
to download a fresh IERS-A table when a time falls in the predicted range of
the bundled one. :func:`offline_iers` turns that off and turns astropy's
internet access off altogether, so a run never touches the network.

What this costs (and why it is harmless for light curves):

* UT1-UTC beyond the bundled table is extrapolated/clipped (< 0.9 s error by
  definition of UTC). It moves the observatory by at most 0.46 km around the
  Earth's axis: <= 1.5 microseconds in BJD, <= 14 arcsec in altitude
  (airmass error < 1e-4 at airmass 2).
* Polar motion falls back to a 50-year mean: <= 0.3 arcsec, ~10 m on the
  ground, ~30 ns in BJD.
* Leap seconds: a leap second announced after the installed table would make
  BJD_TDB wrong by exactly 1 s for later dates. astropy flags such dates as
  "dubious year"; we report them (see ``attrs['timescale_notes']``).

Those warnings are caught, de-duplicated, logged once and stored in the
result's ``attrs`` instead of being printed for every call.

ARCSAT's header ``BJD-OBS`` (MaxIm DL / ACP) is *not* BJD_TDB: it equals the
header ``HJD-OBS`` (a heliocentric JD in UTC) plus 74.72 s, the Espenak & Meeus
polynomial prediction of Delta-T for 2025 (the true TT-UTC is 69.184 s), with
no Sun -> barycentre correction. It lies 3.1 s after the true BJD_TDB of the
exposure start. See ``tests/test_timescale.py`` for the numbers.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import ExitStack, contextmanager
from typing import Iterator

import numpy as np
import pandas as pd

from .timeutil import JD_MINUS_MJD

log = logging.getLogger(__name__)


# Warnings that only describe the offline IERS/leap-second fallback. They are
# recorded and summarised; any other warning is passed through untouched.
_TIMESCALE_WARNING_TEXT = (
    "IERS",
    "polar motion",
    "dubious year",
    "leap-second",
    "leap second",
    "predictive values",
    "accuracy is degraded",
)


@contextmanager
def offline_iers() -> Iterator[None]:
    """Make astropy use only the bundled IERS and leap-second tables.

    Inside the block: no IERS-A download (``auto_download=False``), no
    staleness error for old predictions (``auto_max_age=None``), times beyond
    the tables degrade accuracy with a warning instead of raising
    (``iers_degraded_accuracy='warn'``), and :mod:`astropy.utils.data` refuses
    any internet access (``allow_internet=False``).
    """
    from astropy.utils import data as astropy_data
    from astropy.utils import iers

    with ExitStack() as stack:
        stack.enter_context(iers.conf.set_temp("auto_download", False))
        stack.enter_context(iers.conf.set_temp("auto_max_age", None))
        stack.enter_context(iers.conf.set_temp("iers_degraded_accuracy", "warn"))
        stack.enter_context(astropy_data.conf.set_temp("allow_internet", False))
        yield


def _is_timescale_warning(message: warnings.WarningMessage) -> bool:
    text = str(message.message)
    return any(key.lower() in text.lower() for key in _TIMESCALE_WARNING_TEXT)


def young_airmass(altitude_deg):
    """Relative air mass from Young (1994, Applied Optics 33, 1108).

    Uses the *true* (unrefracted) zenith angle, which is what astropy's AltAz
    gives without pressure. Agrees with sec z to < 0.1 % above 40 deg altitude,
    stays finite (about 38) at the horizon; NaN below it.
    """
    alt = np.asarray(altitude_deg, dtype=float)
    c = np.cos(np.radians(90.0 - alt))
    num = 1.002432 * c**2 + 0.148386 * c + 0.0096467
    den = c**3 + 0.149864 * c**2 + 0.0102963 * c + 0.000303978
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(alt >= 0.0, num / den, np.nan)


def secz_airmass(altitude_deg):
    """Plane-parallel air mass sec z = 1/sin(alt) (what MaxIm DL writes); NaN below horizon."""
    alt = np.asarray(altitude_deg, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(alt > 0.0, 1.0 / np.sin(np.radians(alt)), np.nan)


def barycentric_times(
    mjd_utc_mid,
    ra_deg,
    dec_deg,
    lon_deg,
    lat_deg,
    height_m,
    *,
    airmass_model: str = "young",
) -> pd.DataFrame:
    """Convert mid-exposure UTC (MJD) to JD_UTC, BJD_TDB, airmass and altitude.

    Parameters
    ----------
    mjd_utc_mid : array-like
        Mid-exposure times, MJD on the UTC scale (start + EXPTIME/2).
    ra_deg, dec_deg : float or array-like
        ICRS (J2000) target coordinates in degrees; scalars or one per time.
        Proper motion is ignored (1 arcsec of position error = 2.4 ms in BJD).
    lon_deg, lat_deg, height_m : float or array-like
        Geodetic (WGS84) site longitude (east positive), latitude and height;
        scalars or one per time. Where the site is unknown (NaN longitude or
        latitude) the time is barycentric from the geocentre: the observatory's
        light-travel offset is at most one Earth radius / c = 21 ms, and
        airmass and altitude are NaN there (``geocentric`` True). A NaN height
        is taken as 0 m (1 km of height moves BJD by at most 3 microseconds).
    airmass_model : {'young', 'secz'}
        Young (1994) formula (default) or plane-parallel sec z.

    Returns
    -------
    pandas.DataFrame
        Columns ``mjd_utc, jd_utc, bjd_tdb, airmass, altitude_deg, geocentric``
        (altitude is geometric, without refraction). ``attrs['timescale_notes']`` lists the
        IERS / leap-second fallbacks astropy reported (empty when none).
    """
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time

    if airmass_model not in ("young", "secz"):
        raise ValueError(f"airmass_model must be 'young' or 'secz', not {airmass_model!r}")
    mjd = np.atleast_1d(np.asarray(mjd_utc_mid, dtype=float))
    if mjd.ndim != 1:
        raise ValueError("mjd_utc_mid must be one-dimensional")
    if not np.all(np.isfinite(mjd)):
        raise ValueError("mjd_utc_mid contains NaN or infinite values")
    ra = np.broadcast_to(np.asarray(ra_deg, dtype=float), mjd.shape)
    dec = np.broadcast_to(np.asarray(dec_deg, dtype=float), mjd.shape)

    notes: list[str] = []
    with offline_iers(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        site, geocentric = _locations(lon_deg, lat_deg, height_m, mjd.shape)
        # Two-part JD keeps ~20 microsecond precision that a single float64 MJD
        # already has; astropy carries it through all scale changes.
        t = Time(mjd, format="mjd", scale="utc", location=site)
        target = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs")
        ltt = t.light_travel_time(target, kind="barycentric", ephemeris="builtin")
        bjd = t.tdb + ltt
        bjd_tdb = bjd.jd1 + bjd.jd2  # float64: ~40 microseconds resolution near 2.46e6
        altaz = target.transform_to(AltAz(obstime=t, location=site))  # pressure 0: no refraction
        altitude = np.where(geocentric, np.nan, np.asarray(altaz.alt.to_value(u.deg), dtype=float))

    for message in caught:
        if _is_timescale_warning(message):
            text = " ".join(str(message.message).split())
            if text not in notes:
                notes.append(text)
        else:  # not ours to judge: hand it back to the caller
            warnings.warn_explicit(message.message, message.category, message.filename, message.lineno)
    for text in notes:
        log.info("offline time-scale fallback (negligible for BJD, see ccdflow.timescale): %s", text)

    airmass = young_airmass(altitude) if airmass_model == "young" else secz_airmass(altitude)
    frame = pd.DataFrame(
        {
            "mjd_utc": mjd,
            "jd_utc": mjd + JD_MINUS_MJD,
            "bjd_tdb": bjd_tdb,
            "airmass": airmass,
            "altitude_deg": altitude,
            "geocentric": geocentric,
        }
    )
    frame.attrs["timescale_notes"] = notes
    frame.attrs["airmass_model"] = airmass_model
    return frame


def _locations(lon_deg, lat_deg, height_m, shape):
    """One EarthLocation per time: the site where it is known, else the geocentre."""
    import astropy.units as u
    from astropy.coordinates import EarthLocation

    lon, lat, height = (np.broadcast_to(np.asarray(v, dtype=float), shape) for v in (lon_deg, lat_deg, height_m))
    geocentric = ~(np.isfinite(lon) & np.isfinite(lat))
    known = EarthLocation.from_geodetic(np.where(geocentric, 0.0, lon) * u.deg, np.where(geocentric, 0.0, lat) * u.deg,
                                        np.nan_to_num(height) * u.m)
    xyz = [np.where(geocentric, 0.0, c.to_value(u.m)) for c in (known.x, known.y, known.z)]
    return EarthLocation.from_geocentric(*xyz, unit=u.m), geocentric


def mid_exposure_mjd(mjd_utc_start, exptime_s):
    """Mid-exposure MJD from the exposure start (DATE-OBS) and EXPTIME in seconds."""
    return np.asarray(mjd_utc_start, dtype=float) + 0.5 * np.asarray(exptime_s, dtype=float) / 86400.0
