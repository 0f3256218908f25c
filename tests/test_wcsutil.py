"""Plate solutions carried into products: quoted numbers, distortion terms, trimming."""

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ccdflow.wcsutil import celestial_header

LOIS_LIKE = {  # Lowell's LOIS quotes every number; TAN plus SCAMP PV terms
    "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": "124.6185920672", "CRVAL2": "25.32885681452",
    "CRPIX1": "716.0", "CRPIX2": "685.0", "CD1_1": "-0.0003073728745725", "CD1_2": "1.223604312691e-05",
    "CD2_1": "1.223604312691e-05", "CD2_2": "0.0003073728745725", "PV1_1": "1.000187244395",
    "PV1_7": "-0.005543498819709", "PV2_1": "1.0002318286", "PV2_7": "-0.007479613302252",
    "RADESYS": "ICRS", "DATE-OBS": "2019-03-26",
}


def _header(values):
    header = fits.Header()
    for key, value in values.items():
        header[key] = value
    return header


def test_quoted_numbers_and_distortion_survive_and_trimming_shifts_the_pixels():
    raw = _header(LOIS_LIKE)
    numeric = WCS(_header({k: (float(v) if k[:2] in ("CR", "CD", "PV") else v) for k, v in LOIS_LIKE.items()}))
    trimmed = celestial_header(raw, (slice(2, 1367), slice(1, 1371)))
    assert any(k.startswith("PV1_") for k in trimmed) and "DATE-OBS" not in trimmed
    wcs = WCS(trimmed)
    for x, y in [(10.0, 20.0), (700.0, 690.0), (1300.0, 1200.0)]:
        want = numeric.pixel_to_world(x + 1, y + 2)  # trimmed pixel (x, y) is raw (x + 1, y + 2)
        assert want.separation(wcs.pixel_to_world(x, y)).arcsec < 1e-6
    # the PV terms are applied (without them the corner moves by ~0.02 arcsec here)
    bare = WCS(_header({k: v for k, v in LOIS_LIKE.items() if not k.startswith("PV")} | {
        k: float(v) for k, v in LOIS_LIKE.items() if k[:2] in ("CR", "CD")}))
    assert bare.pixel_to_world(1300, 1200).separation(wcs.pixel_to_world(1299, 1198)).arcsec > 0.01


def test_no_or_broken_solution_gives_nothing():
    assert len(celestial_header(fits.Header({"OBJECT": "x"}))) == 0
    assert len(celestial_header(_header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CD1_1": "bad"}))) >= 0
    assert np.isfinite(WCS(celestial_header(_header(LOIS_LIKE))).wcs.crval).all()
