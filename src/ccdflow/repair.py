"""What a masked pixel inside a photometric aperture costs: repair from the star itself.

A cosmic ray, a hot pixel the night had no dark for, or a bad column crossing
a star's aperture would otherwise cost the whole measurement: leaving the pixel
out biases the flux low by exactly the light it held, so the row must be
rejected, and an undersampled star whose light curve drifts over a warm pixel
loses tens of frames.

Policy (:func:`repair_aperture_pixels`, used by :mod:`ccdflow.photometry`):

* A masked pixel that is not saturated and lies on the image is *repaired*:
  its value is the star's own radial profile at that pixel's distance from the
  centroid, fitted (a parabola in radius) to the usable pixels within
  ``RING_PX`` of that distance. The centroid itself is measured on the
  repaired star (a zeroed pixel would pull it away). Stars are round to the accuracy needed here;
  no PSF model is assumed, so it holds for any seeing, beta or sampling. The
  pixel's variance is the mean variance of those neighbours (as if it had been
  measured), so error bars stay honest.
* The measurement keeps ``flag == 0`` when the repaired pixels carry at most
  ``max_fraction`` of the aperture's flux (default 5 %); ``n_repaired`` and
  ``repaired_frac`` record what was done. Beyond that -- or where the profile
  cannot be fitted (too few usable neighbours, e.g. a hit on the core of an
  undersampled star) -- the pixels stay out and the row is flagged ``MASKED``:
  rejected, as before.
* Saturated pixels are never repaired (their star is flagged ``SATURATED``).

Measured on noiseless Moffat stars (beta 3, FWHM 1.3-4 px), one 1-4 px
cosmic-ray track within 2 FWHM of each (tests/test_photometry.py): mean flux
bias of the repaired measurements in a 2-FWHM aperture -0.07 % (FWHM 1.3),
+0.03 % (1.6), +0.01 % (2), 0.00 % (3 and 4); the rest (hits on the core)
flagged MASKED.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_REPAIR_FRACTION", "RING_PX", "repair_aperture_pixels"]

MAX_REPAIR_FRACTION = 0.05   # of the aperture's flux, above it the row is MASKED
RING_PX = 1.0                # neighbours within this radius difference set a pixel's value
_MIN_NEIGHBOURS = 5


def repair_aperture_pixels(d, v, good, repairable, dx, dy):
    """Estimates for the ``repairable`` pixels of star cutouts from their radial profiles.

    ``d`` (N, S, S) sky-subtracted values (anything where not ``good``), ``v``
    their variances, ``good`` usable pixels, ``repairable`` the masked pixels to
    estimate (not saturated, on the image); ``dx``/``dy`` (N, S) column/row
    offsets of the cutout pixels from each source's centroid. Returns
    ``(value, variance, repaired)``, each (N, S, S): estimates and variances
    where ``repaired`` (zero elsewhere).
    """
    value, var = np.zeros(d.shape), np.zeros(d.shape)
    repaired = np.zeros(d.shape, bool)
    for i in np.flatnonzero(repairable.any(axis=(1, 2))):
        r = np.hypot(dy[i][:, None], dx[i][None, :])
        rg, dg, vg = r[good[i]], d[i][good[i]], v[i][good[i]]
        for row, col in zip(*np.nonzero(repairable[i])):
            near = np.abs(rg - r[row, col]) <= RING_PX
            if near.sum() < _MIN_NEIGHBOURS:
                continue
            dr = rg[near] - r[row, col]
            # the line's value at dr = 0 is an interpolation only if neighbours lie on both sides
            if dr.min() > -0.25 or dr.max() < 0.25:
                continue
            # a parabola in radius: a straight line overestimates by ~0.5 % at FWHM 1.3-2,
            # where the profile curves within a pixel
            value[i, row, col] = np.linalg.lstsq(np.vander(dr, 3, increasing=True), dg[near], rcond=None)[0][0]
            var[i, row, col] = vg[near].mean()
            repaired[i, row, col] = True
    return value, var, repaired
