"""Tables as written: the fast ECSV writer reads back as astropy's own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from ccdflow.tables import FAST_ECSV_ROWS, write_ecsv


@pytest.mark.parametrize("n_rows", [FAST_ECSV_ROWS + 7, 5])
def test_fast_ecsv_reads_back_as_astropys_own(tmp_path, n_rows):
    """Strings with spaces, quotes and nothing, NaN, bools, int32 and float32, a unit and
    a description: the same columns, dtypes, values and metadata as astropy's writer
    gives, and pandas reads the file too."""
    rng = np.random.default_rng(3)
    words = np.array(["", "a b", 'say "hi"', "r1.5fwhm", "2026-01-01.b001"])
    table = Table({"name": words[rng.integers(0, words.size, n_rows)],
                   "source_id": rng.integers(0, 300, n_rows),
                   "flux": np.where(rng.random(n_rows) < 0.1, np.nan, rng.normal(1e4, 1e3, n_rows)),
                   "fwhm": rng.random(n_rows).astype(np.float32),
                   "flag": rng.integers(0, 8, n_rows).astype(np.int32),
                   "ok": rng.random(n_rows) < 0.5})
    table["flux"].unit, table["flux"].description = "electron", "aperture sum"
    write_ecsv(table, tmp_path / "fast.ecsv")
    table.write(tmp_path / "astropy.ecsv", format="ascii.ecsv")
    # fill_values=[]: an empty string stays "" (not masked), as every reader of ccdflow tables does
    fast, reference = (Table.read(tmp_path / name, fill_values=[]) for name in ("fast.ecsv", "astropy.ecsv"))
    assert fast.colnames == reference.colnames == table.colnames
    for name in table.colnames:
        assert fast[name].dtype == reference[name].dtype, name
        assert fast[name].unit == reference[name].unit and fast[name].description == reference[name].description
        values = np.asarray(fast[name])
        assert np.array_equal(values, np.asarray(table[name]), equal_nan=values.dtype.kind == "f"), name
    frame = pd.read_csv(tmp_path / "fast.ecsv", sep=" ", comment="#", keep_default_na=False, na_values=["nan"])
    assert len(frame) == n_rows and np.allclose(frame["flux"], table["flux"], equal_nan=True)
    assert list(frame["name"]) == list(table["name"])


def test_parquet_science_digest_reads_a_column_at_a_time_to_the_same_digest(tmp_path):
    """The manifest's digest of a Parquet table, read a column at a time and strings fed
    in chunks, is the digest of the whole table read at once (the definition older
    manifests were written with, so campaign diffs across versions still match)."""
    import hashlib

    from ccdflow.manifest import _update_array, science_digest
    from ccdflow.tables import write_table

    rng = np.random.default_rng(4)
    n = 150_000  # strings over more than two chunks
    frame = pd.DataFrame({"frame_id": [f"f{i % 211}" for i in range(n)], "source_id": rng.integers(0, 300, n),
                          "flux": np.where(rng.random(n) < 0.01, np.nan, rng.random(n)), "ok": rng.random(n) < 0.5})
    write_table(frame, tmp_path / "t.parquet", formats=("parquet",))
    whole = pd.read_parquet(tmp_path / "t.parquet")
    digest = hashlib.sha256()
    for column in whole.columns:
        digest.update(str(column).encode())
        digest.update("\x1f".join(map(str, whole[column].to_numpy().tolist())).encode()
                      if whole[column].to_numpy().dtype.kind in "OUS" else b"")
        if whole[column].to_numpy().dtype.kind not in "OUS":
            _update_array(digest, whole[column].to_numpy())
    assert science_digest(tmp_path / "t.parquet") == digest.hexdigest()
    frame.loc[7, "flux"] = 0.5
    write_table(frame, tmp_path / "t.parquet", formats=("parquet",))
    assert science_digest(tmp_path / "t.parquet") != digest.hexdigest()
