"""Memory-bounded image combination: the engine behind every master calibration.

``combine`` stacks N frames pixel by pixel (mean or median, optionally sigma-
or min/max-clipped, optionally scaled) without holding the whole stack: the
image is processed in bands of rows sized from ``mem_budget_mb``, each input
read once, band by band.

Why it is fast (see ``benchmarks/bench_combine.py``):

* A band is stored pixel-major, ``(pixels, frames)`` float32, and each pixel's
  values are sorted once (numpy's SIMD sort of short contiguous rows).  Every
  rejection keeps a contiguous run ``[lo, hi)`` of the sorted values (sigma
  clipping keeps an interval, min/max drops the ends, masked values are NaN and
  sort last), so a median is two gathers, and clipping only ever looks at, and
  subtracts from running sums, the end values of each run.
* Iterations after the first touch only the pixels whose run changed.
* Values are shifted to residuals about each pixel's median first, so float32
  sums of squares lose no precision.
* Two bands are combined at once in threads (numpy releases the GIL).

Sigma clipping is iterative about the median with the *plain* standard
deviation (ddof=0) of the surviving values, as astropy's ``sigma_clip`` and
ccdproc do.  1.4826*MAD was rejected: from 5-25 values it is so noisy that
3-sigma clipping on it throws away 2-9 % of good values and leaves the
uncertainty 5-25 % too small (simulated).  The price: one value can deviate by
at most (n-1)/sqrt(n) plain stds, so with fewer than ~11 frames a lone outlier
survives 3-sigma clipping; use ``method="median"`` or ``clip="minmax"`` there.

Reading: plain FITS files are memory-mapped (``np.memmap`` at the data offset)
and a band touches only its rows; the band's pages are unmapped right after
(``madvise``), as mapped file pages count as resident memory.  Compressed
inputs (``.fits.gz``, tile-compressed HDUs) cannot be read by rows: each is
decompressed once, streaming, to a float32 file in a temporary directory that
is deleted when ``combine`` returns.
"""

from __future__ import annotations

import gzip
import math
import mmap
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import bottleneck as bn
import numpy as np
from astropy.io import fits

from .fitsheader import BLOCK as _BLOCK
from .fitsheader import FrameReadError, read_header_blocks

__all__ = ["CombineResult", "FrameSource", "combine", "open_source"]
_FITS_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
_CHUNK_BYTES = 4 << 20        # streaming decompression chunk
_FAULT_AROUND = 4 << 20       # a page fault maps a whole page-cache folio (up to 2 MB)
_BAND_TARGET_BYTES = 6 << 20  # two bands' stacks stay in L3 cache; bigger bands are slower
_WORKERS = min(2, os.cpu_count() or 1)


@dataclass
class CombineResult:
    """Combined image and its per-pixel bookkeeping (see :func:`combine`)."""

    data: np.ndarray
    uncertainty: np.ndarray
    nused: np.ndarray
    mask: np.ndarray
    scales: np.ndarray
    meta: dict = field(default_factory=dict)


class FrameSource:
    """One input frame, served in bands of rows as float32.

    Wraps an in-memory 2-D array (with optional uncertainty and bad-pixel
    mask).  To feed pre-processed frames lazily, subclass it: set ``shape``
    and ``name``, override ``read_rows`` (and ``close``).  ``combine`` never
    calls a subclass from two threads at once.
    """

    name = "frame"

    def __init__(self, data, *, uncertainty=None, mask=None, name: str | None = None):
        self.data = np.asarray(data)
        if self.data.ndim != 2:
            raise ValueError(f"{name or 'array'}: expected a 2-D image, got shape {self.data.shape}")
        self.uncertainty = None if uncertainty is None else np.asarray(uncertainty)
        self.mask = None if mask is None else np.asarray(mask, dtype=bool)
        self.shape = self.data.shape
        self.name = name or f"array{self.shape}"

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` as float32."""
        return np.asarray(self.data[r0:r1], dtype=np.float32)

    def read_uncertainty_rows(self, r0: int, r1: int) -> np.ndarray | None:
        unc = getattr(self, "uncertainty", None)
        return None if unc is None else np.asarray(unc[r0:r1], dtype=np.float32)

    def read_mask_rows(self, r0: int, r1: int) -> np.ndarray | None:
        mask = getattr(self, "mask", None)
        return None if mask is None else mask[r0:r1]

    def close(self) -> None:
        pass

    # Internal hooks; the built-in sources use them to skip a copy.
    def _read_into(self, r0: int, r1: int, out: np.ndarray) -> None:
        if type(self).read_rows is FrameSource.read_rows:
            np.copyto(out, self.data[r0:r1], casting="unsafe")
        else:
            out[...] = self.read_rows(r0, r1)

    def _sample(self, rows: slice, cols: slice) -> np.ndarray:
        return np.stack([self.read_rows(r, r + 1)[0, cols] for r in range(*rows.indices(self.shape[0]))])

    def _prepare(self) -> None:
        pass


def _read_header(f) -> fits.Header | None:
    """Next FITS header from a byte stream, or None at the end of the file."""
    try:
        raw = read_header_blocks(f)
    except FrameReadError as err:
        raise ValueError(str(err)) from None
    return None if raw is None else fits.Header.fromstring(raw.decode("ascii", "replace"))


class _FitsSource(FrameSource):
    """The first image HDU with data of a FITS file (or the one named ``extname``),
    read by rows (see module doc)."""

    def __init__(self, path, tmpdir=None, extname: str | None = None):
        self.path, self.name, self._tmpdir = Path(path), str(path), tmpdir
        self.uncertainty = self.mask = self._tmpfile = self._raw = self._map = None
        with open(self.path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        with (gzip.open if compressed else open)(self.path, "rb") as f:
            index = 0
            while (hdr := _read_header(f)) is not None:
                naxes = [hdr.get(f"NAXIS{k}", 0) for k in range(1, hdr.get("NAXIS", 0) + 1)]
                size = abs(hdr["BITPIX"]) // 8 * hdr.get("GCOUNT", 1) * (hdr.get("PCOUNT", 0) + math.prod(naxes))
                if extname is not None and str(hdr.get("EXTNAME", "")).strip().upper() != extname.upper():
                    pass  # not the HDU asked for: skipped below
                elif hdr.get("ZIMAGE", False):  # tile-compressed: astropy decodes it
                    self._mode, self._hdu, self.shape = "astropy", index, (hdr["ZNAXIS2"], hdr["ZNAXIS1"])
                    return
                elif hdr.get("XTENSION", "IMAGE").strip() == "IMAGE" and len(naxes) >= 2 and size:
                    if any(n != 1 for n in naxes[2:]):
                        raise ValueError(f"{path}: not a 2-D image (NAXISn = {naxes})")
                    self.shape, self._offset = (naxes[1], naxes[0]), f.tell()
                    self._dtype = np.dtype(_FITS_DTYPES[hdr["BITPIX"]])
                    self._bscale, self._bzero = float(hdr.get("BSCALE", 1.0)), float(hdr.get("BZERO", 0.0))
                    self._blank = hdr.get("BLANK") if hdr["BITPIX"] > 0 else None
                    self._mode = "gzip" if compressed else "plain"
                    return
                f.seek(f.tell() + -(-(size if naxes else 0) // _BLOCK) * _BLOCK)
                index += 1
        raise ValueError(f"{path}: no 2-D image HDU with data" + (f" named {extname}" if extname else ""))

    def _convert(self, raw: np.ndarray, out: np.ndarray) -> None:
        """Stored values -> physical float32 (BSCALE/BZERO; BLANK -> NaN)."""
        if self._bscale != 1.0:
            np.multiply(raw, np.float32(self._bscale), out=out, dtype=np.float32)
            out += np.float32(self._bzero)
        elif self._bzero != 0.0:
            np.add(raw, np.float32(self._bzero), out=out, dtype=np.float32)
        else:
            np.copyto(out, raw, casting="unsafe")
        if self._blank is not None:
            np.copyto(out, np.nan, where=raw == self._blank)

    def _decompress(self) -> None:
        """Stream the image, once, into a native float32 file in the temp dir."""
        fd, self._tmpfile = tempfile.mkstemp(suffix=".f32", prefix="frame-", dir=self._tmpdir)
        ny, nx = self.shape
        with os.fdopen(fd, "wb") as dst:
            if self._mode == "astropy":
                with fits.open(self.path) as hdul:
                    np.asarray(hdul[self._hdu].data, dtype=np.float32).tofile(dst)
            else:
                rowbytes = nx * self._dtype.itemsize
                step = max(1, _CHUNK_BYTES // rowbytes)
                with gzip.open(self.path, "rb") as src:
                    src.seek(self._offset)
                    for r0 in range(0, ny, step):
                        rows = min(step, ny - r0)
                        chunk = src.read(rows * rowbytes)
                        if len(chunk) < rows * rowbytes:
                            raise ValueError(f"{self.name}: truncated data unit")
                        out = np.empty((rows, nx), np.float32)
                        self._convert(np.frombuffer(chunk, self._dtype).reshape(rows, nx), out)
                        out.tofile(dst)
        self._mode, self._offset, self._dtype = "plain", 0, np.dtype(np.float32)
        self._bscale, self._bzero, self._blank = 1.0, 0.0, None

    def _prepare(self) -> None:
        """Map the data unit, decompressing first if need be (idempotent)."""
        if self._raw is not None:
            return
        if self._mode != "plain":
            self._decompress()
        path = self._tmpfile or self.path
        if os.path.getsize(path) < self._offset + math.prod(self.shape) * self._dtype.itemsize:
            raise ValueError(f"{self.name}: truncated data unit")
        mapped = np.memmap(path, self._dtype, "r", self._offset, self.shape)
        self._map = mapped.base  # the mmap.mmap, for madvise
        self._at = self._offset % mmap.ALLOCATIONGRANULARITY  # data start within the mapping
        self._raw = mapped.view(np.ndarray)  # plain views slice faster than memmap ones

    def _release(self, r0: int, r1: int) -> None:
        """Unmap rows r0:r1 (and the folios around them): touched file pages
        count as resident memory and would otherwise pile up to the whole stack."""
        if not hasattr(mmap, "MADV_DONTNEED"):  # (not on Windows)
            return
        rowbytes = self.shape[1] * self._dtype.itemsize
        start = max(0, self._at + r0 * rowbytes - _FAULT_AROUND)
        start -= start % mmap.PAGESIZE
        end = min(len(self._map), self._at + r1 * rowbytes + _FAULT_AROUND)
        self._map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def _read_into(self, r0, r1, out):
        self._prepare()
        self._convert(self._raw[r0:r1], out)
        self._release(r0, r1)

    def read_rows(self, r0, r1):
        out = np.empty((r1 - r0, self.shape[1]), np.float32)
        self._read_into(r0, r1, out)
        return out

    def _sample(self, rows, cols):
        self._prepare()
        raw = self._raw[rows, cols]
        out = np.empty(raw.shape, np.float32)
        self._convert(raw, out)
        self._release(*rows.indices(self.shape[0])[:2])
        return out

    def close(self):
        self._raw = self._map = None  # unmaps
        if self._tmpfile:
            Path(self._tmpfile).unlink(missing_ok=True)
            self._tmpfile = None


def open_source(obj, *, tmpdir=None) -> FrameSource:
    """Wrap one input: a FrameSource (returned as is), a FITS path, a 2-D
    array, or an NDData/CCDData-like object (data, uncertainty, mask)."""
    if isinstance(obj, FrameSource):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return _FitsSource(obj, tmpdir)
    if hasattr(obj, "data") and not isinstance(obj, np.ndarray):
        unc = getattr(getattr(obj, "uncertainty", None), "array", None)
        return FrameSource(obj.data, uncertainty=unc, mask=getattr(obj, "mask", None), name=type(obj).__name__)
    return FrameSource(obj)


def _run_median(y, rows, lo, hi):
    """Median of each run y[r, lo:hi] of sorted rows."""
    mid = np.minimum(lo + np.maximum(hi - lo - 1, 0) / 2, y.shape[1] - 1)  # x.5 for even counts
    flat, base = y.ravel(), rows * y.shape[1]
    return 0.5 * (flat[base + np.floor(mid).astype(np.int64)] + flat[base + np.ceil(mid).astype(np.int64)])


def _run_sums(y, rows, lo, hi, chunk):
    """Sum, sum of squares and median of each run y[r, lo:hi], NaN skipped (chunked)."""
    s1, s2 = np.empty(rows.size), np.empty(rows.size)
    cols = np.arange(y.shape[1])
    for c in range(0, rows.size, chunk):
        sub, r_lo, r_hi = y[rows[c:c + chunk]], lo[c:c + chunk, None], hi[c:c + chunk, None]
        np.copyto(sub, 0, where=(cols < r_lo) | (cols >= r_hi) | np.isnan(sub))
        s1[c:c + chunk], s2[c:c + chunk] = sub.sum(axis=1), np.einsum("ij,ij->i", sub, sub)
    return s1, s2, _run_median(y, rows, lo, hi)


def _reduce(y, method, clip, sigma_lower, sigma_upper, maxiters, nlow, nhigh):
    """Combine a (pixels, frames) float32 stack, in place -> (value, std ddof=1, n).

    Each pixel keeps the run y[r, lo:hi] of its sorted values; s1, s2 and med
    are the sum, sum of squares and median of that run, relative to ``ref``.
    """
    npix, nfr = y.shape
    finite = np.isfinite(y)
    n = np.full(npix, nfr, np.int64)
    if not finite.all():
        np.copyto(y, np.nan, where=~finite)  # +-inf are as unusable as masked values
        n = finite.sum(axis=1)
    del finite
    short = np.flatnonzero(n < nfr)  # pixels with masked values
    ordered = method == "median" or clip is not None
    if ordered:  # (a plain mean needs no order)
        y.sort(axis=1)  # NaN sort last: the valid values are y[r, :n]
        ref = 0.5 * (y[:, (nfr - 1) // 2] + y[:, nfr // 2])
        ref[short] = _run_median(y, short, 0, n[short])
    else:
        ref = y[:, 0].copy()
        missing = np.flatnonzero(np.isnan(ref))
        ref[missing] = bn.nanmax(y[missing], axis=1)  # any valid value will do
    ref[~np.isfinite(ref)] = 0
    y -= ref[:, None]  # residuals: float32 sums of squares stay accurate

    lo, hi = np.zeros(npix, np.int64), n.copy()
    med = np.zeros(npix, np.float32)  # the median of all valid values is ref itself
    chunk = max(64, npix // 8)
    s1 = np.einsum("ij->i", y).astype(np.float64)
    s2 = np.einsum("ij,ij->i", y, y).astype(np.float64)
    # Rows with NaN: sum the valid values (sorted: the first n; unsorted: anywhere).
    s1[short], s2[short], med[short] = _run_sums(y, short, lo[short], hi[short] if ordered else nfr + 0 * short, chunk)
    flat = y.ravel()

    def peel(rows, at_low, bound):
        """Drop end values of the runs of ``rows`` while beyond ``bound`` (an
        array), or ``bound`` of them (an int); keep s1, s2 and med current."""
        before = s2[rows]
        ends = lo if at_low else hi
        act, step = np.arange(rows.size), 0
        while act.size:
            r = rows[act]
            v = flat[r * nfr + (lo[r] if at_low else hi[r] - 1)]
            go = lo[r] < hi[r]
            go &= (step < bound) if isinstance(bound, int) else (v < bound[act] if at_low else v > bound[act])
            act, r, v = act[go], r[go], v[go].astype(np.float64)
            s1[r] -= v
            s2[r] -= v * v
            ends[r] += 1 if at_low else -1
            step += 1
        med[rows] = _run_median(y, rows, lo[rows], hi[rows])
        redo = rows[before > 100 * s2[rows]]  # a huge value left: float32 s2 is too coarse
        s1[redo], s2[redo], _ = _run_sums(y, redo, lo[redo], hi[redo], chunk)

    if clip == "minmax":
        peel(np.arange(npix), True, nlow)
        peel(np.arange(npix), False, nhigh)
    elif clip == "sigma":
        rows = slice(None)  # the first pass sees every pixel: views, not index arrays
        first, last = y[:, 0], y[:, -1].copy()
        last[short] = flat[short * nfr + np.maximum(n[short] - 1, 0)]
        for it in range(maxiters):
            cnt = (hi[rows] - lo[rows]).astype(np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = s1[rows] / cnt
                std = np.sqrt(np.maximum(s2[rows] / cnt - mean * mean, 0)).astype(np.float32)
            lower, upper = med[rows] - np.float32(sigma_lower) * std, med[rows] + np.float32(sigma_upper) * std
            if it:
                first = flat[rows * nfr + lo[rows]]
                last = flat[rows * nfr + np.maximum(hi[rows] - 1, lo[rows])]
            out = np.flatnonzero((first < lower) | (last > upper))  # runs are sorted: test the ends
            rows, lower, upper = (out if it == 0 else rows[out]), lower[out], upper[out]
            if not rows.size:
                break
            peel(rows, True, lower)
            peel(rows, False, upper)

    n = hi - lo
    nf = n.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = ref + (med if method == "median" else s1 / nf)
        std = np.sqrt(np.maximum(s2 - s1 * s1 / nf, 0) / (nf - 1))
    value[n == 0] = np.nan
    std[n < 2] = np.nan
    return value, std, n


def _plan(shape, nframes, budget_mb):
    """Rows per band and number of workers within the budget.

    Per pixel of a band: the float32 stack (4N bytes), a bool validity map (N),
    chunked re-summing of changed pixels (< N), and ~16 per-pixel float64/int64
    vectors (128 bytes, generous).  Each worker holds one band.
    """
    ny, nx = shape
    per_row = nx * (6 * nframes + 128)
    budget_rows = int(budget_mb * 2**20 // (_WORKERS * per_row))
    target_rows = _BAND_TARGET_BYTES // (4 * nframes * nx)
    band_rows = max(1, min(ny, budget_rows, target_rows))
    workers = min(_WORKERS, -(-ny // band_rows))
    return band_rows, workers, workers * band_rows * per_row / 2**20


def _scale_levels(srcs, masks):
    """Robust level of each frame: median of a strided sample of its central half."""
    levels = np.empty(len(srcs))
    for i, (src, mask) in enumerate(zip(srcs, masks)):
        ny, nx = src.shape
        rows = slice(ny // 4, max(ny // 4 + 1, 3 * ny // 4), max(1, ny // 256))  # <= 128 rows
        cols = slice(nx // 4, max(nx // 4 + 1, 3 * nx // 4))
        sample = src._sample(rows, cols)
        for bad in (mask, src.read_mask_rows(0, ny)):
            if bad is not None:
                sample[bad[rows, cols]] = np.nan
        levels[i] = bn.nanmedian(sample)
        if not np.isfinite(levels[i]) or levels[i] == 0:
            raise ValueError(f"input {i} ({src.name}): cannot scale, central median is {levels[i]}")
    return levels


def combine(sources, *, method="mean", clip="sigma", sigma_lower=3.0, sigma_upper=3.0, maxiters=5,
            nlow=1, nhigh=1, scale=None, min_values=1, mem_budget_mb=512, masks=None) -> CombineResult:
    """Combine frames pixel by pixel within a memory budget.

    sources: FITS paths, 2-D arrays or FrameSource objects, all the same shape.
    method: "mean" or "median" of the values kept.
    clip: "sigma" (iterative about the median, plain std; see module doc),
        "minmax" (drop the ``nlow`` lowest and ``nhigh`` highest), or None.
    scale: None, "median" (divide each frame by its central median level) or
        per-frame factors to divide by.
    masks: per-frame boolean arrays (True = bad) or None entries.
    min_values: pixels with fewer surviving values are masked.
    mem_budget_mb: bound on the working memory beyond the inputs and outputs.

    ``uncertainty`` is the standard error of the kept values: std(ddof=1)/sqrt(n),
    times sqrt(pi/2) for the median.  Where n < 2 it is the mean of the inputs'
    own uncertainties if they carry any; otherwise there is no estimate, and the
    pixel is masked with uncertainty 0 (the array stays NaN-free).  ``data`` is
    NaN where no value survived.
    """
    if method not in ("mean", "median"):
        raise ValueError(f"method must be 'mean' or 'median', not {method!r}")
    if clip not in ("sigma", "minmax", None):
        raise ValueError(f"clip must be 'sigma', 'minmax' or None, not {clip!r}")
    if clip == "sigma" and not (sigma_lower > 0 and sigma_upper > 0 and maxiters >= 1):
        raise ValueError("sigma_lower, sigma_upper and maxiters must be positive")
    if min(nlow, nhigh) < 0 or not mem_budget_mb > 0:
        raise ValueError("nlow and nhigh must be >= 0 and mem_budget_mb > 0")
    if isinstance(sources, (str, os.PathLike, np.ndarray)):
        raise TypeError("sources must be a list of inputs")
    sources = list(sources)
    nfr = len(sources)
    masks = [None] * nfr if masks is None else [None if m is None else np.asarray(m, bool) for m in masks]
    if nfr == 0 or len(masks) != nfr:
        raise ValueError(f"{nfr} inputs and {len(masks)} masks: need >= 1 input and one mask (or None) each")

    tmp = tempfile.TemporaryDirectory(prefix="ccdflow-combine-")
    srcs, opened = [], []
    try:
        for obj in sources:
            srcs.append(open_source(obj, tmpdir=tmp.name))
            if srcs[-1] is not obj:
                opened.append(srcs[-1])
        shape = tuple(srcs[0].shape)
        for i, src in enumerate(srcs):  # check everything before any arithmetic
            if tuple(src.shape) != shape:
                raise ValueError(f"input {i} ({src.name}) has shape {tuple(src.shape)}, "
                                 f"but input 0 ({srcs[0].name}) has shape {shape}")
            if masks[i] is not None and masks[i].shape != shape:
                raise ValueError(f"mask {i} has shape {masks[i].shape}, the images {shape}")
        if scale is not None and not isinstance(scale, str):
            scales = np.asarray(scale, dtype=np.float64).ravel()
            if scales.size != nfr or not np.all(np.isfinite(scales) & (scales != 0)):
                raise ValueError(f"scale needs {nfr} finite non-zero factors, got {scale!r}")
        elif scale not in (None, "median"):
            raise ValueError(f"scale must be None, 'median' or per-frame factors, not {scale!r}")
        for src in srcs:
            src._prepare()
        if scale is None:
            scales = np.ones(nfr)
        elif isinstance(scale, str):
            scales = _scale_levels(srcs, masks)

        band_rows, workers, est_mb = _plan(shape, nfr, mem_budget_mb)
        ny, nx = shape
        data, unc = np.empty(shape, np.float32), np.empty(shape, np.float32)
        nused = np.empty(shape, np.int16)
        has_unc = [src.read_uncertainty_rows(0, 0) is not None for src in srcs]
        fallback = np.full(shape, np.nan, np.float32) if any(has_unc) else None  # mean input uncertainty
        read_lock = threading.Lock()  # callers' FrameSource subclasses need not be thread-safe
        locks = [nullcontext() if type(src) in (FrameSource, _FitsSource) else read_lock for src in srcs]
        factor = np.float32(math.sqrt(math.pi / 2) if method == "median" else 1.0)

        def band(r0):
            r1 = min(ny, r0 + band_rows)
            stack = np.empty(((r1 - r0) * nx, nfr), np.float32)
            usum, ucnt = (np.zeros((r1 - r0, nx), np.float32), np.zeros((r1 - r0, nx))) if any(has_unc) else (0, 0)
            for i, src in enumerate(srcs):
                col = stack[:, i].reshape(r1 - r0, nx)
                with locks[i]:
                    src._read_into(r0, r1, col)
                    bad = src.read_mask_rows(r0, r1)
                    u = src.read_uncertainty_rows(r0, r1) if has_unc[i] else None
                if masks[i] is not None:
                    bad = masks[i][r0:r1] if bad is None else bad | masks[i][r0:r1]
                if scales[i] != 1:
                    np.divide(col, np.float32(scales[i]), out=col)
                if bad is not None:
                    np.copyto(col, np.nan, where=bad)
                if u is not None:
                    good = np.isfinite(col)
                    usum += np.where(good, u / np.float32(abs(scales[i])), 0)
                    ucnt += good
            value, std, n = _reduce(stack, method, clip, sigma_lower, sigma_upper, maxiters, nlow, nhigh)
            with np.errstate(invalid="ignore", divide="ignore"):
                data[r0:r1] = value.reshape(r1 - r0, nx)
                unc[r0:r1] = (factor * std / np.sqrt(n)).reshape(r1 - r0, nx)
                nused[r0:r1] = n.reshape(r1 - r0, nx)
                if fallback is not None:
                    fallback[r0:r1] = usum / ucnt

        starts = range(0, ny, band_rows)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(band, starts))

        few = nused < 2  # no spread to measure: fall back on the inputs' own uncertainty
        unc[few] = fallback[few] if fallback is not None else np.nan
        unknown = ~np.isfinite(unc)
        mask = (nused < max(min_values, 1)) | unknown
        unc[unknown] = 0
        meta = {"method": method, "clip": clip or "none", "sigma_lower": sigma_lower, "sigma_upper": sigma_upper,
                "maxiters": maxiters, "std_func": "std", "nlow": nlow, "nhigh": nhigh,
                "scale": "none" if scale is None else (scale if isinstance(scale, str) else "factors"),
                "min_values": min_values, "n_frames": nfr, "shape": shape, "band_rows": band_rows,
                "n_bands": len(starts), "workers": workers, "mem_budget_mb": mem_budget_mb,
                "est_work_mb": round(est_mb, 1), "inputs": [src.name for src in srcs]}
        return CombineResult(data, unc, nused, mask, scales, meta)
    finally:
        for src in opened:
            src.close()
        tmp.cleanup()
