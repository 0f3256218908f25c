"""Inventory speed: 10,000 raw files against ccdproc and the I/O floor.

Writes N small raw frames (half plain, half gzip, headers of ~110 cards like
real cameras write), then times, in one run:

* ccdflow's first inventory: every file read once, end to end (structure,
  gzip CRC, content SHA1: see ccdflow.rawscan), headers classified, nights,
  groups, duplicates and checks;
* the floor for it: reading (and decompressing) every byte, nothing else;
* ccdflow's next inventory of the same files (rows of unchanged files reused,
  ccdflow.inventory.RowCache) against its floor, one stat per file;
* ccdproc.ImageFileCollection, the peer observers use to list a night
  (on a subset by default, it is slow; the per-file time is what is compared).

    python benchmarks/bench_inventory.py [--files 10000] [--peer-files 2000]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from ccdflow.instrument import load_profile
from ccdflow.inventory import RawSource, RowCache, find_raw_files, take_inventory
from ccdflow.paths import instruments_dir


def make_files(folder: Path, count: int) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(900, 1100, size=(64, 64)).astype(np.uint16)
    types = ["BIAS", "DARK", "FLAT", "OBJECT"]
    for index in range(count):
        header = fits.Header()
        kind = types[index % 4] if index % 10 == 0 else "OBJECT"
        header["IMAGETYP"] = kind
        header["OBJECT"] = "FIELD-1"
        header["EXPTIME"] = 0.0 if kind == "BIAS" else 60.0
        header["FILTER"] = "R"
        header["DATE-OBS"] = f"2025-03-{14 + index // 5000:02d}T{(index // 3600) % 24:02d}:{(index // 60) % 60:02d}:{index % 60:02d}.000"
        header["GAIN"], header["RDNOISE"], header["SATURATE"] = 1.5, 6.0, 60000
        header["BIASSEC"], header["TRIMSEC"] = "[57:64,1:64]", "[1:56,1:64]"
        header["CCDSUM"], header["DETECTOR"] = "1 1", "SIMCCD-1"
        header["RA"], header["DEC"] = "10:00:00.0", "+30:00:00"
        header["SITELAT"], header["SITELONG"], header["SITEELEV"] = 35.1, -111.5, 2206.0
        for extra in range(90):  # real headers carry ~100 more cards nobody reads
            header[f"XTRA{extra:04d}"] = (float(extra), "filler card as cameras write them")
        path = folder / f"frame_{index:05d}.fits"
        fits.PrimaryHDU(data, header).writeto(path)
        if index % 2:
            with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst)
            path.unlink()


def floor_read_all(files) -> None:
    """Read (and decompress) every byte, nothing else."""
    for path, _ in files:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as stream:
            while stream.read(1 << 22):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--peer-files", type=int, default=2000, help="files given to ccdproc (0: skip)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ccdflow-bench-inv-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw"
    if not raw.is_dir() or len(list(raw.iterdir())) != args.files:
        shutil.rmtree(raw, ignore_errors=True)
        raw.mkdir()
        t0 = time.perf_counter()
        make_files(raw, args.files)
        print(f"wrote {args.files} files in {time.perf_counter() - t0:.1f} s")

    profile = load_profile("simulator", [instruments_dir()])
    cache = RowCache(work / "rows-cache.json")
    t0 = time.perf_counter()
    files = find_raw_files([RawSource(str(raw), "simulator")])
    table = take_inventory(files, {"simulator": profile}, cache=cache)
    ours = time.perf_counter() - t0
    cache.save()
    assert (table["status"] == "ok").all(), table["reason"][table["status"] != "ok"].head()
    print(f"ccdflow inventory, first: {len(table)} files in {ours:.2f} s ({ours / len(table) * 1e3:.3f} ms/file)")

    t0 = time.perf_counter()
    floor_read_all(files)
    floor = time.perf_counter() - t0
    print(f"floor (read and decompress every byte): {floor:.2f} s ({floor / len(files) * 1e3:.3f} ms/file); "
          f"ccdflow / floor = {ours / floor:.1f}x")

    again = RowCache(work / "rows-cache.json")
    t0 = time.perf_counter()
    take_inventory(find_raw_files([RawSource(str(raw), "simulator")]), {"simulator": profile}, cache=again)
    rerun = time.perf_counter() - t0
    t0 = time.perf_counter()
    for path, _ in files:
        Path(path).stat()
    stat_floor = time.perf_counter() - t0
    assert again.reused == len(files)
    print(f"ccdflow inventory, again (nothing changed): {rerun:.2f} s ({rerun / len(files) * 1e3:.3f} ms/file); "
          f"floor (one stat per file) {stat_floor:.3f} s")

    if args.peer_files:
        from ccdproc import ImageFileCollection

        subset = work / "peer"
        shutil.rmtree(subset, ignore_errors=True)
        subset.mkdir()
        for path, _ in files[: args.peer_files]:
            (subset / Path(path).name).symlink_to(Path(path).resolve())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            collection = ImageFileCollection(str(subset), glob_include="*.fits*")
            peer = time.perf_counter() - t0
        n_peer = len(collection.files)
        per_peer, per_ours = peer / n_peer, ours / len(table)
        print(f"ccdproc.ImageFileCollection: {n_peer} files in {peer:.2f} s ({per_peer * 1e3:.3f} ms/file)")
        print(f"speed-up per file, ccdflow vs ccdproc: {per_peer / per_ours:.1f}x")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
