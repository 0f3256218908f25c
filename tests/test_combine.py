"""ccdflow.combine: statistics against truth, rejection, FITS reading, memory bound."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from astropy.io import fits

from ccdflow.combine import CombineResult, FrameSource, combine, open_source

SIGMA = 10.0


def truth_image(shape=(128, 128)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (1000 + 200 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.float32)


def noisy_frames(truth, n, seed=0, sigma=SIGMA):
    rng = np.random.default_rng(seed)
    return [truth + rng.normal(0, sigma, truth.shape).astype(np.float32) for _ in range(n)]


class SpySource(FrameSource):
    """A lazily computed frame that records every read."""

    def __init__(self, data, name="spy"):
        self._array, self.shape, self.name, self.reads = data, data.shape, name, []

    def read_rows(self, r0, r1):
        self.reads.append((r0, r1))
        return self._array[r0:r1].astype(np.float32)


# --- statistics against truth ---------------------------------------------------------

@pytest.mark.parametrize("clip", [None, "sigma"])
def test_mean_recovers_truth_with_honest_uncertainty(clip):
    n = 15
    truth = truth_image()
    result = combine(noisy_frames(truth, n), method="mean", clip=clip)
    assert isinstance(result, CombineResult)
    assert result.data.dtype == np.float32 and result.uncertainty.dtype == np.float32
    assert result.nused.dtype == np.int16 and result.mask.dtype == bool
    expected_err = SIGMA / np.sqrt(n)
    resid = result.data - truth
    assert np.abs(resid).max() < 5 * expected_err
    # rms of the per-pixel standard errors = sigma/sqrt(N)
    assert np.sqrt(np.mean(result.uncertainty**2)) == pytest.approx(expected_err, rel=0.05)
    # chi-square: pooled, and per pixel.  With the uncertainty estimated from the
    # same n values, resid/unc follows Student's t with n-1 degrees of freedom,
    # whose mean square is (n-1)/(n-3) = 1.167 for n = 15, not 1.
    assert 0.9 < np.sum(resid**2) / np.sum(result.uncertainty**2) < 1.1
    chi2 = np.mean((resid / result.uncertainty) ** 2)
    assert 0.9 < chi2 / ((n - 1) / (n - 3)) < 1.1
    assert not result.mask.any()
    assert np.array_equal(result.scales, np.ones(n))
    assert result.meta["n_frames"] == n and result.meta["method"] == "mean"


def test_sigma_clip_matches_astropy_sigma_clip():
    from astropy.stats import sigma_clip

    rng = np.random.default_rng(5)
    frames = noisy_frames(truth_image((40, 50)), 12, seed=5)
    for frame in frames[:6]:  # a sprinkling of outliers of both signs
        frame[rng.integers(0, 40, 30), rng.integers(0, 50, 30)] += rng.choice([-1, 1], 30) * rng.uniform(30, 5000, 30)
    masks = [rng.random((40, 50)) < 0.1 for _ in frames]
    stack = np.ma.array(np.array(frames, dtype=np.float64), mask=np.array(masks))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sigma_clip(stack, sigma_lower=2.5, sigma_upper=3.0, maxiters=5, cenfunc="median", stdfunc="std", axis=0)
    result = combine(frames, method="mean", sigma_lower=2.5, sigma_upper=3.0, maxiters=5, masks=masks)
    assert np.array_equal(result.nused, (~ref.mask).sum(axis=0))
    np.testing.assert_allclose(result.data, ref.mean(axis=0), rtol=0, atol=1e-3)
    np.testing.assert_allclose(result.uncertainty, ref.std(axis=0, ddof=1) / np.sqrt(result.nused), rtol=1e-4)


# --- rejection ------------------------------------------------------------------------

def _with_cosmic_rays(frames, n_hits, seed=1):
    """Add one huge value at n_hits distinct pixels, each in a random frame."""
    rng = np.random.default_rng(seed)
    ny, nx = frames[0].shape
    pixels = rng.choice(ny * nx, n_hits, replace=False)
    hit = np.zeros((ny, nx), bool)
    for pixel in pixels:
        y, x = divmod(int(pixel), nx)
        frames[rng.integers(len(frames))][y, x] += rng.uniform(2000, 30000)
        hit[y, x] = True
    return hit


def test_sigma_clip_rejects_cosmic_rays_exactly_there():
    # At 5 sigma no Gaussian value is ever clipped (with n values none can
    # deviate by more than ~(n-1)/sqrt(n) = 5.4 plain stds), while a lone
    # huge value (about 5.6 stds away for n = 30) always is.
    n, truth = 30, truth_image((64, 64))
    frames = noisy_frames(truth, n, seed=2)
    hit = _with_cosmic_rays(frames, 200)
    result = combine(frames, method="mean", clip="sigma", sigma_lower=5, sigma_upper=5)
    assert np.all(result.nused[hit] == n - 1)
    assert np.all(result.nused[~hit] == n)
    assert np.abs(result.data - truth).max() < 5 * SIGMA / np.sqrt(n - 1)


def test_default_clip_removes_cosmic_rays():
    n, truth = 15, truth_image((64, 64))
    frames = noisy_frames(truth, n, seed=3)
    hit = _with_cosmic_rays(frames, 150, seed=4)
    result = combine(frames)  # mean, 3-sigma clipping
    assert np.all(result.nused[hit] <= n - 1)
    # a few honest 3-sigma values go too, here and there
    assert np.mean(result.nused[hit] == n - 1) > 0.95 and np.mean(result.nused[~hit] == n) > 0.95
    assert np.abs(result.data - truth)[hit].max() < 5 * SIGMA / np.sqrt(n - 1)
    unclipped = combine(frames, clip=None)
    assert np.abs(unclipped.data - truth)[hit].min() > 100  # the test data do need clipping


def test_median_method():
    n, truth = 15, truth_image()
    frames = noisy_frames(truth, n, seed=6)
    result = combine(frames, method="median", clip=None)
    np.testing.assert_allclose(result.data, np.median(np.array(frames), axis=0), rtol=0, atol=2e-3)
    expected_err = np.sqrt(np.pi / 2) * SIGMA / np.sqrt(n)
    assert np.sqrt(np.mean(result.uncertainty**2)) == pytest.approx(expected_err, rel=0.05)
    assert np.abs(result.data - truth).max() < 5 * expected_err
    assert np.all(result.nused == n)
    # a median shrugs off one huge value per pixel even without clipping
    hit = _with_cosmic_rays(frames, 300, seed=7)
    robust = combine(frames, method="median", clip=None)
    assert np.abs(robust.data - truth)[hit].max() < 5 * expected_err
    assert robust.meta["method"] == "median"


def test_minmax_drops_exactly_nlow_and_nhigh():
    n = 9
    frames = noisy_frames(truth_image((30, 40)), n, seed=8)
    result = combine(frames, method="mean", clip="minmax", nlow=2, nhigh=1)
    assert np.all(result.nused == n - 3)
    kept = np.sort(np.array(frames), axis=0)[2:n - 1]
    np.testing.assert_allclose(result.data, kept.mean(axis=0), rtol=0, atol=1e-3)
    np.testing.assert_allclose(result.uncertainty, kept.std(axis=0, ddof=1) / np.sqrt(n - 3), rtol=1e-4)
    med = combine(frames, method="median", clip="minmax", nlow=0, nhigh=3)
    np.testing.assert_allclose(med.data, np.median(np.sort(np.array(frames), axis=0)[: n - 3], axis=0), atol=1e-3)
    everything = combine(frames, clip="minmax", nlow=5, nhigh=5, min_values=1)
    assert np.all(everything.nused == 0) and np.all(everything.mask) and np.all(np.isnan(everything.data))


# --- scaling --------------------------------------------------------------------------

def test_scale_median_normalises_flats():
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[:100, :120]
    pattern = (1 - 0.2 * ((xx - 60) ** 2 + (yy - 50) ** 2) / 60**2) * (1 + 0.01 * rng.standard_normal((100, 120)))
    levels = [10000.0, 20000.0, 15000.0]
    flats = [rng.poisson(level * pattern).astype(np.float32) for level in levels]
    flats[0][47:53, 57:63] = 60000  # a star in a twilight flat: the level must be robust to it
    result = combine(flats, method="median", clip=None, scale="median")
    central = np.median(pattern[25:75, 30:90])
    np.testing.assert_allclose(result.scales, np.array(levels) * central, rtol=3e-3)
    assert np.median(result.data[25:75, 30:90]) == pytest.approx(1.0, abs=3e-3)
    # shot noise of the brightest-normalised frames is ~1/sqrt(10000) = 1 %
    assert np.abs(result.data / (pattern / central) - 1).max() < 0.05
    assert result.meta["scale"] == "median"
    unscaled = combine(flats, method="median", clip=None)
    assert np.median(unscaled.data) > 1000  # without scaling the flats stay at their levels


def test_scale_factors_are_divided_out():
    truth = truth_image((32, 32))
    factors = [1.0, 2.0, 0.5, 4.0]
    frames = [truth * f for f in factors]
    result = combine(frames, clip=None, scale=factors)
    np.testing.assert_allclose(result.data, truth, rtol=1e-6)
    assert np.allclose(result.uncertainty, 0, atol=1e-3)
    np.testing.assert_array_equal(result.scales, factors)
    with pytest.raises(ValueError, match="factors"):
        combine(frames, scale=[1.0, 2.0])


# --- masks and n < 2 ------------------------------------------------------------------

def test_masks_are_honoured():
    n, truth = 8, truth_image((20, 30))
    frames = noisy_frames(truth, n, seed=10)
    masks = [np.zeros(truth.shape, bool) for _ in range(n)]
    for m in masks:
        m[3, 4] = True  # bad everywhere
    for m in masks[:3]:
        m[10, 10] = True  # bad in three frames
    masks[5][7, 20] = True
    frames[0][10, 10] = 1e6  # masked, so must not matter
    frames[2][0, 0], frames[3][0, 1] = np.inf, np.nan  # unusable values count as masked
    result = combine(frames, clip=None, masks=masks)
    assert result.nused[0, 0] == result.nused[0, 1] == n - 1 and np.isfinite(result.data[0, :2]).all()
    assert result.mask[3, 4] and result.nused[3, 4] == 0 and np.isnan(result.data[3, 4])
    assert result.nused[10, 10] == n - 3 and not result.mask[10, 10]
    assert result.nused[7, 20] == n - 1
    assert result.data[10, 10] == pytest.approx(np.mean([f[10, 10] for f in frames[3:]]), abs=1e-3)
    assert (result.nused == n).sum() == truth.size - 5
    assert np.isfinite(result.uncertainty).all()
    with pytest.raises(ValueError, match="masks"):
        combine(frames, masks=masks[:2])


def test_single_survivor_uses_input_uncertainty_or_is_masked():
    n, truth = 4, truth_image((10, 10))
    frames = noisy_frames(truth, n, seed=11)
    masks = [np.zeros(truth.shape, bool) for _ in range(n)]
    for m in masks[1:]:
        m[2, 2] = True  # only frame 0 survives at (2, 2)
    bare = combine(frames, clip=None, masks=masks)
    assert bare.nused[2, 2] == 1 and bare.mask[2, 2] and bare.uncertainty[2, 2] == 0
    assert bare.data[2, 2] == pytest.approx(frames[0][2, 2])
    assert np.isfinite(bare.uncertainty).all() and bare.mask.sum() == 1
    sources = [FrameSource(f, uncertainty=np.full(truth.shape, 3.0 + i)) for i, f in enumerate(frames)]
    with_unc = combine(sources, clip=None, masks=masks)
    assert with_unc.uncertainty[2, 2] == pytest.approx(3.0)  # frame 0's own uncertainty
    assert not with_unc.mask.any()
    assert combine(frames, clip=None, masks=masks, min_values=4).mask.sum() == 1
    assert combine(frames, clip=None, min_values=5).mask.all()


# --- inputs ---------------------------------------------------------------------------

def test_shape_mismatch_raises_before_any_arithmetic(tmp_path):
    good = truth_image((20, 30))
    spy = SpySource(good)
    fits.PrimaryHDU(good).writeto(tmp_path / "ok.fits")
    fits.PrimaryHDU(np.zeros((20, 31), np.float32)).writeto(tmp_path / "odd_one.fits")
    with pytest.raises(ValueError) as err:
        combine([spy, tmp_path / "ok.fits", tmp_path / "odd_one.fits", good], scale="median")
    message = str(err.value)
    assert "odd_one.fits" in message and "(20, 31)" in message and "(20, 30)" in message
    assert spy.reads == []  # nothing was read, let alone combined
    with pytest.raises(ValueError, match=r"input 1 .*\(5, 5\)"):
        combine([good, np.zeros((5, 5))])


def write_variants(folder, image_u16):
    """The same image as the FITS flavours cameras and pipelines write."""
    paths = {}
    paths["uint16"] = folder / "u16.fits"
    fits.PrimaryHDU(image_u16).writeto(paths["uint16"])
    paths["float32"] = folder / "f32.fits"
    fits.PrimaryHDU(image_u16.astype(np.float32)).writeto(paths["float32"])
    paths["float64_ext"] = folder / "f64_ext.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image_u16.astype(np.float64))]).writeto(paths["float64_ext"])
    paths["int32"] = folder / "i32.fits"
    fits.PrimaryHDU(image_u16.astype(np.int32)).writeto(paths["int32"])
    paths["gzip"] = folder / "u16.fits.gz"
    with open(paths["uint16"], "rb") as src, gzip.open(paths["gzip"], "wb") as dst:
        shutil.copyfileobj(src, dst)
    paths["tile_compressed"] = folder / "rice.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(image_u16)]).writeto(paths["tile_compressed"])
    return paths


def test_fits_inputs_match_in_memory_arrays(tmp_path):
    rng = np.random.default_rng(12)
    n, shape = 6, (37, 53)
    images = [rng.integers(900, 1100, shape).astype(np.uint16) for _ in range(n)]
    images[2][5, 5] = 65000  # uses the top of the uint16 range (stored as -32768.. with BZERO)
    kinds = ["uint16", "float32", "gzip"]
    files = {kind: [] for kind in kinds}
    for i, image in enumerate(images):
        folder = tmp_path / f"f{i}"
        folder.mkdir()
        paths = write_variants(folder, image)
        for kind in kinds:
            files[kind].append(paths[kind])
    assert fits.getheader(files["uint16"][0])["BZERO"] == 32768
    assert open(files["gzip"][0], "rb").read(2) == b"\x1f\x8b"
    for kwargs in ({"method": "median"}, {"method": "mean", "clip": "minmax"}, {"scale": "median", "clip": None}):
        expected = combine(images, **kwargs)
        for kind in kinds:
            got = combine(files[kind], **kwargs)
            for name in ("data", "uncertainty", "nused", "mask", "scales"):
                np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=f"{kind} {name}")
        mixed = combine([files["gzip"][0], files["uint16"][1], *images[2:4], *files["float32"][4:]], **kwargs)
        np.testing.assert_array_equal(mixed.data, expected.data)


def test_open_source_reads_every_flavour_like_astropy(tmp_path):
    rng = np.random.default_rng(13)
    image = rng.integers(0, 65535, (33, 47)).astype(np.uint16)
    paths = write_variants(tmp_path, image)
    scaled = fits.PrimaryHDU(image.astype(np.float64) * 0.5 + 7)
    scaled.scale("int16", bscale=0.5, bzero=7.0 + 0.5 * 32768)
    scaled.writeto(tmp_path / "scaled.fits")
    paths["bscale"] = tmp_path / "scaled.fits"
    blank = fits.PrimaryHDU(image.astype(np.int16) // 2)
    blank.header["BLANK"] = -1
    blank.data[1, 2] = -1
    blank.writeto(tmp_path / "blank.fits")
    for kind, path in paths.items():
        src = open_source(path, tmpdir=tmp_path)
        try:
            assert src.shape == image.shape, kind
            expected = fits.getdata(path).astype(np.float32)
            np.testing.assert_array_equal(src.read_rows(0, 33), expected, err_msg=kind)
            np.testing.assert_array_equal(src.read_rows(10, 12), expected[10:12], err_msg=kind)
        finally:
            src.close()
    src = open_source(tmp_path / "blank.fits")
    rows = src.read_rows(0, 3)
    assert np.isnan(rows[1, 2]) and np.isfinite(rows).sum() == rows.size - 1
    src.close()
    (tmp_path / "junk.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 100)
    with pytest.raises(ValueError):
        open_source(tmp_path / "junk.fits")


def test_compressed_inputs_use_a_temp_dir_that_is_removed(tmp_path, monkeypatch):
    images = [np.full((16, 16), 1000 + i, np.uint16) for i in range(3)]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.fits.gz")
        fits.PrimaryHDU(image).writeto(paths[-1])  # astropy gzips by the name
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    result = combine(paths, method="median", clip=None)
    assert np.all(result.data == 1001)
    assert list(scratch.iterdir()) == []
    source = open_source(paths[0], tmpdir=scratch)  # on its own, a source cleans up after itself
    assert np.all(source.read_rows(0, 16) == 1000) and len(list(scratch.iterdir())) == 1
    source.close()
    assert list(scratch.iterdir()) == []


def test_framesource_subclass_and_band_independence():
    truth = truth_image((64, 48))
    frames = noisy_frames(truth, 10, seed=14)
    hit = _with_cosmic_rays(frames, 40, seed=15)
    spies = [SpySource(f, name=f"spy{i}") for i, f in enumerate(frames)]
    small = combine(spies, method="median", mem_budget_mb=0.05)  # a few rows per band
    assert 1 <= small.meta["band_rows"] < 8
    rows = small.meta["band_rows"]
    for spy in spies:  # each frame was read once, band by band, in full
        assert sorted(spy.reads) == [(r0, min(64, r0 + rows)) for r0 in range(0, 64, rows)]
    big = combine(frames, method="median")
    assert big.meta["band_rows"] > small.meta["band_rows"]
    for name in ("data", "uncertainty", "nused", "mask"):
        np.testing.assert_array_equal(getattr(small, name), getattr(big, name))
    assert np.all(big.nused[hit] <= 9)


def test_bad_arguments():
    frames = [np.zeros((4, 4))] * 3
    for kwargs in ({"method": "mode"}, {"clip": "iqr"}, {"scale": "mean"}, {"sigma_lower": 0},
                   {"nlow": -1}, {"mem_budget_mb": 0}):
        with pytest.raises(ValueError):
            combine(frames, **kwargs)
    with pytest.raises(ValueError):
        combine([])
    with pytest.raises(TypeError):
        combine("bias.fits")


# --- memory ---------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent("""
    import json, sys, tracemalloc
    from ccdflow.combine import combine

    def status(key):  # bytes
        with open("/proc/self/status") as f:
            return 1024 * next(int(line.split()[1]) for line in f if line.startswith(key))

    paths = sys.argv[1:]
    out = {4: {}, 32: {}}
    for budget in (4, 32):
        # Peak resident memory: ru_maxrss would not do, a child inherits its
        # parent's high-water mark through fork/exec; VmHWM can be reset.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss0 = status("VmRSS")
        result = combine(paths, method="median", clip="sigma", mem_budget_mb=budget)
        out[budget]["rss"] = status("VmHWM") - rss0
        out[budget]["band_rows"] = result.meta["band_rows"]
        out[budget]["mean"], out[budget]["nused_min"] = float(result.data.mean()), int(result.nused.min())
        del result
        # Python-level allocations (numpy reports its buffers to tracemalloc)
        tracemalloc.start()
        combine(paths, method="median", clip="sigma", mem_budget_mb=budget)
        out[budget]["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(json.dumps(out))
""")




@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_stays_within_budget(tmp_path):
    n, size = 40, 1024
    rng = np.random.default_rng(16)
    paths = []
    for i in range(n):
        frame = 1000 + rng.normal(0, 10, (size, size))
        frame.flat[rng.integers(0, size * size, 50)] = 50000
        paths.append(str(tmp_path / f"bias_{i:02d}.fits"))
        fits.PrimaryHDU(np.rint(frame).astype(np.uint16)).writeto(paths[-1])
    script = tmp_path / "probe.py"
    script.write_text(MEMORY_PROBE)
    proc = subprocess.run([sys.executable, str(script), *paths], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    stack_bytes = n * size * size * 4  # 160 MB as float32
    output_bytes = size * size * (4 + 4 + 2 + 1)
    mb = 2**20
    for budget, run in report.items():
        budget = int(budget)
        assert run["band_rows"] < size
        assert run["peak"] < 2 * budget * mb + output_bytes, (budget, run)
        assert run["peak"] < stack_bytes / 4
        # resident memory too: mapped file pages are released band by band
        assert run["rss"] < 2 * budget * mb + output_bytes + 16 * mb, (budget, run)
        assert run["mean"] == pytest.approx(1000, abs=1) and run["nused_min"] >= n - 5
    assert report["4"]["band_rows"] < report["32"]["band_rows"]


def test_product_source_serves_a_preprocessed_frame_by_rows_and_unmaps_it(tmp_path):
    """The master path's reader: data minus masters and the mask, band by band, as
    Product.read gives them whole; the file's pages are not held once read."""
    from ccdflow.ccdio import Product
    from ccdflow.recipes import ProductSource

    rng = np.random.default_rng(3)
    data = rng.normal(100, 5, (64, 48)).astype(np.float32)
    mask = np.zeros(data.shape, np.int16)
    mask[10:12, 5] = 4
    path = tmp_path / "frame.fits"
    Product(data, np.full(data.shape, 2.0, np.float32), mask).write(path)
    bias = Product(np.full(data.shape, 7.0, np.float32), np.ones(data.shape, np.float32), np.zeros(data.shape, np.int16))
    dark = Product(np.full(data.shape, 0.5, np.float32), np.ones(data.shape, np.float32), np.zeros(data.shape, np.int16))
    source = ProductSource(path, bias=bias, dark=dark, exptime=4.0, divide=2.0)
    assert source.shape == data.shape
    np.testing.assert_allclose(source.read_rows(8, 20), (data[8:20] - 7.0 - 2.0) / 2.0, rtol=1e-6)
    np.testing.assert_array_equal(source.read_mask_rows(8, 20), mask[8:20] != 0)
    np.testing.assert_allclose(source._sample(slice(0, 64, 8), slice(4, 40)), ((data - 9.0) / 2.0)[::8, 4:40],
                               rtol=1e-6)
    assert source._data._map is not None  # memory-mapped, pages released band by band (_release)
    source.close()
    assert source._data._map is None and source._mask._map is None


def test_fits_source_reads_the_named_extension_or_says_it_is_missing(tmp_path):
    from ccdflow.combine import _FitsSource

    path = tmp_path / "planes.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 5), np.float32)),
                  fits.ImageHDU(np.arange(20, dtype=np.int16).reshape(4, 5), name="MASK")]).writeto(path)
    np.testing.assert_array_equal(_FitsSource(path, extname="mask").read_rows(0, 4),
                                  np.arange(20).reshape(4, 5))
    with pytest.raises(ValueError, match="named UNCERT"):
        _FitsSource(path, extname="UNCERT")
