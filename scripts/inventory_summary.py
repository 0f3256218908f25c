"""Rule inventory_summary: human-readable inventory summary plus frame statistics."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pandas as pd
from astropy.table import Table

from ccdflow.atomic import atomic_path, write_text
from ccdflow.framestats import collect
from ccdflow.inventory import read_table, summarise
from ccdflow.runlog import start_job

job = start_job(snakemake)
log = job.log
table = read_table(snakemake.input.inventory)
stats = pd.DataFrame(collect(snakemake.input.stats))
text = summarise(table)
if len(stats):
    merged = table.merge(stats.drop(columns=["path"]), on="frame_id", suffixes=("", "_pixels"))
    per_type = merged[merged["status_pixels"] == "ok"].groupby(["night", "imagetyp", "filter"])[
        ["median", "robust_std", "saturated_fraction"]].median()
    text += "\nMedian pixel statistics (ADU, data section) by night, type and filter:\n"
    text += per_type.to_string(float_format=lambda v: f"{v:.4g}") + "\n"
    unreadable = merged[merged["status_pixels"] != "ok"]
    for row in unreadable.itertuples():
        text += f"  [unreadable pixels] {row.path} -- {row.reason_pixels}\n"
write_text(snakemake.output.text, text)
with atomic_path(snakemake.output.stats) as temp:
    Table.from_pandas(stats.fillna(float("nan")) if len(stats) else pd.DataFrame({"frame_id": []})).write(temp, format="ascii.ecsv")
log.info("summary written")
