"""Do two result trees hold the same science?

    python tests/compare_trees.py RESULTS_A RESULTS_B

prints every difference and exits 1 if there is any. Compared: the data and
header of every HDU of every FITS file, the column values of ECSV and Parquet
tables, and JSON products. Not compared: logs/ and benchmarks/ (they time the
run), plots, text reports, the provenance manifest, and header cards or JSON
values that say when, where or by which config the product was written (see
VOLATILE). Each tree's own path is replaced by "<root>" in strings, so products
that name their siblings still match.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table

SKIP_DIRS = {"logs", "benchmarks"}
# run records, not science: checksums, times and paths of the run that wrote it
SKIP_FILES = {"manifest.json", "summary.txt"}
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fz")
# Header keys that differ between two runs of one night: write dates, hosts, run
# times, the config hash (the config holds the results path) and checksums of
# files whose headers hold those. FITS keeps the real checksum cards up to date.
VOLATILE = re.compile(r"^(DATE|DATE-RED|DATE-PRC|HOST(NAME)?|ORIGIN|RUNTIME|ELAPSED|CFGHASH|CHECKSUM|DATASUM|\w*SHA1?)$")


def _products(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not SKIP_DIRS & set(p.relative_to(root).parts) and p.name not in SKIP_FILES
        and not p.name.startswith(".") and p.suffix != ".snakemake_timestamp"
    }


def _norm(value, root: Path):
    return value.replace(str(root), "<root>") if isinstance(value, str) else value


def arrays_equal(a, b) -> bool:
    """Same shape and values; NaN equals NaN, masks must match."""
    a, b = np.ma.asanyarray(a), np.ma.asanyarray(b)
    if a.shape != b.shape or not np.array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b)):
        return False
    a, b = a.compressed(), b.compressed()  # unmasked values only
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return np.array_equal(a, b, equal_nan=True)
    if a.dtype.kind == "O" or b.dtype.kind == "O":  # pandas object columns: None/NaN/str mixed
        return all(x == y or (pd.isna(x) and pd.isna(y)) for x, y in zip(a.tolist(), b.tolist()))
    return np.array_equal(a, b)


def _columns(table_a, table_b, names_a, names_b, what) -> list[str]:
    if list(names_a) != list(names_b):
        return [f"{what}: columns {list(names_a)} != {list(names_b)}"]
    return [f"{what}: column {n!r} differs" for n in names_a if not arrays_equal(table_a[n], table_b[n])]


def _fits(a: Path, b: Path, ra: Path, rb: Path, rel: str) -> list[str]:
    diffs = []
    with fits.open(a, memmap=False) as ha, fits.open(b, memmap=False) as hb:
        if len(ha) != len(hb):
            return [f"{rel}: {len(ha)} HDUs != {len(hb)}"]
        for i, (x, y) in enumerate(zip(ha, hb)):
            what = f"{rel}[{i}]"
            table = (isinstance(h, fits.BinTableHDU) and not isinstance(h, fits.CompImageHDU) for h in (x, y))
            if any(table):  # a tile-compressed image is a binary table to older astropy
                if x.data is None or y.data is None:
                    diffs += [] if x.data is y.data else [f"{what}: one table is empty"]
                else:
                    diffs += _columns(x.data, y.data, x.columns.names, y.columns.names, what)
            elif (x.data is None) != (y.data is None) or (x.data is not None and not arrays_equal(x.data, y.data)):
                diffs.append(f"{what}: data differ")
            keys = [k for k in dict.fromkeys([*x.header, *y.header]) if not VOLATILE.match(k) and k not in ("COMMENT", "HISTORY", "")]
            for key in keys:
                va, vb = _norm(x.header.get(key), ra), _norm(y.header.get(key), rb)
                if va != vb and not (isinstance(va, float) and isinstance(vb, float) and np.isnan(va) and np.isnan(vb)):
                    diffs.append(f"{what}: header {key} {va!r} != {vb!r}")
    return diffs


def _json(value, root: Path):
    if isinstance(value, dict):
        return {k: _json(v, root) for k, v in value.items() if not VOLATILE.match(k.upper())}
    if isinstance(value, list):
        return [_json(v, root) for v in value]
    if isinstance(value, float) and value != value:
        return "NaN"  # so that NaN == NaN
    return _norm(value, root)


def compare_trees(a, b) -> list[str]:
    """Differences between two result trees, as readable lines (empty: same science)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    files_a, files_b = _products(a), _products(b)
    diffs = [f"only in {a}: {p}" for p in sorted(files_a - files_b)]
    diffs += [f"only in {b}: {p}" for p in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        pa, pb = a / rel, b / rel
        if rel.endswith(FITS_SUFFIXES):
            diffs += _fits(pa, pb, a, b, rel)
        elif rel.endswith(".ecsv"):
            ta, tb = Table.read(pa, format="ascii.ecsv"), Table.read(pb, format="ascii.ecsv")
            for t, root in ((ta, a), (tb, b)):
                for name in t.colnames:
                    if t[name].dtype.kind in "US":
                        t[name] = [_norm(v, root) for v in t[name]]
            diffs += _columns(ta, tb, ta.colnames, tb.colnames, rel)
        elif rel.endswith(".parquet"):
            ta, tb = pd.read_parquet(pa), pd.read_parquet(pb)
            for t, root in ((ta, a), (tb, b)):
                for name in t.columns[t.dtypes == object]:
                    t[name] = t[name].map(lambda v: _norm(v, root))
            diffs += _columns(ta, tb, ta.columns, tb.columns, rel)
        elif rel.endswith(".json"):
            if _json(json.loads(pa.read_text()), a) != _json(json.loads(pb.read_text()), b):
                diffs.append(f"{rel}: values differ")
    return diffs


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    found = compare_trees(sys.argv[1], sys.argv[2])
    print("\n".join(found) or "same science data")
    sys.exit(1 if found else 0)
