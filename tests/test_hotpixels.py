"""Hot pixels found from the science frames (issue 12 point 6): a warm chip, no darks."""

from __future__ import annotations

import numpy as np

from ccdflow import bitmask
from ccdflow.hotpixels import find_hot_pixels, star_footprint
from ccdflow.simulate import render_stars

SHAPE, FWHM, SKY, READ = (160, 160), 1.8, 200.0, 8.0


def _night(n_frames=12, seed=5):
    """Undersampled stars drifting ~0.6 px per frame over a chip with 40 hot pixels
    (40-3000 e- above the sky) and cosmic rays; frames in e-, with their variance."""
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(15, 145, 60), rng.uniform(15, 145, 60)
    flux = 10 ** rng.uniform(3.5, 5.5, 60)
    hot_x, hot_y = rng.integers(3, 157, 40), rng.integers(3, 157, 40)
    hot_e = 10 ** rng.uniform(np.log10(40), np.log10(3000), 40)
    frames, positions = [], []
    for i in range(n_frames):
        x, y = x0 + 0.6 * i, y0 - 0.4 * i
        expected = render_stars(*SHAPE[::-1], x, y, flux, FWHM, 3.0, oversample=5) + SKY
        expected[hot_y, hot_x] += hot_e
        data = rng.poisson(expected) + rng.normal(0, READ, SHAPE)
        mask = bitmask.empty(SHAPE)
        cx, cy = rng.integers(0, 160, 15), rng.integers(0, 160, 15)
        data[cy, cx] += rng.uniform(2000, 20000, 15)
        mask[cy, cx] |= bitmask.COSMIC_RAY
        frames.append((data, np.clip(data, 0, None) + READ ** 2, mask))
        positions.append(np.c_[x, y])
    return frames, positions, (hot_x, hot_y, hot_e), (x0, y0)


def test_hot_pixels_found_while_stars_and_cosmic_rays_are_not():
    frames, positions, (hx, hy, he), _ = _night()
    hot = find_hot_pixels(iter(frames), iter(positions), FWHM)
    truth = np.zeros(SHAPE, bool)
    truth[hy, hx] = True
    # detectable: > 5 sigma above the sky in most frames, and not under a star all night
    strong = he > 8 * np.sqrt(SKY + READ ** 2)
    stars_all_night = np.logical_and.reduce([star_footprint(SHAPE, p, 2 * FWHM) for p in positions])
    wanted = strong & ~stars_all_night[hy, hx]
    found = hot[hy, hx]
    print(f"{found[wanted].sum()} of {wanted.sum()} strong hot pixels found, {found[~strong].sum()} weak ones; "
          f"{(hot & ~truth).sum()} false")
    assert found[wanted].mean() >= 0.9
    assert (hot & ~truth).sum() <= 1
    # a pixel under a star in every frame is never called hot
    assert not (hot & stars_all_night & ~truth).any()


def test_star_footprint_disk():
    near = star_footprint((20, 30), np.array([[5.2, 4.8], [40.0, 3.0]]), 2.0)
    assert near[5, 5] and near[5, 7] and near[3, 5] and not near[8, 5] and not near[:, 20:].any()
