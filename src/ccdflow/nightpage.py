"""One page per night for the QA report: what was taken, what was set aside and why,
the masters and their verdict, the fields and their alignment, the light curves made,
and the problems, first.

A self-contained HTML file (no scripts, no external files) that ``snakemake --report``
shows in its viewer. Everything on it comes from the products of the night and from
the pieces the run summary is made of (:mod:`ccdflow.runsummary`), restricted to
the night: the page and ``summary.txt`` never disagree.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
from astropy.table import Table

from .atomic import write_text
from .frameloop import FAILED, OK
from .inventory import summarise
from .recipes import RECIPES
from .runsummary import (
    calibration_entries,
    field_outcome,
    master_verdicts,
    not_usable,
    summarise_run,
)


def night_rows(inventory: pd.DataFrame, night: str) -> pd.DataFrame:
    """The inventory rows of ``night``, with the files of no night (unreadable, so
    quarantined) that lie in a folder whose readable files are all of this night.
    A file of no night in a folder of several nights, or of none, is on every
    night's page (``night`` empty in the rows returned)."""
    nights = inventory["night"].fillna("").astype(str)
    folders = inventory["path"].map(lambda p: str(PurePath(p).parent))
    dated = pd.DataFrame({"folder": folders, "night": nights})[nights != ""]
    folder_nights = dated.groupby("folder")["night"].agg(lambda v: sorted(set(v)))
    owner = folders.map(lambda f: folder_nights.get(f, []))
    here = (nights == night) | ((nights == "") & owner.map(lambda n: n == [night] or len(n) != 1))
    return inventory[here]


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(header: list[str], rows: list[list], empty: str = "none") -> str:
    if not rows:
        return f"<p class='quiet'>{_e(empty)}</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _verdict(status: str) -> str:
    kind = {"PASS": "ok", OK: "ok", "FAIL": "bad", FAILED: "bad"}.get(status, "warn")
    return f"<span class='{kind}'>{_e(status)}</span>"


def _frames_by_type(rows: pd.DataFrame) -> str:
    table = []
    for kind, group in rows.groupby(rows["imagetyp"].fillna("").replace("", "unreadable"), sort=True):
        usable = group[group["status"] == OK]
        filters = ", ".join(sorted({str(f) for f in usable["filter"].fillna("") if str(f)})) or "-"
        exposures = ", ".join(f"{t:g}" for t in sorted(set(usable["exptime"].dropna().astype(float)))) or "-"
        table.append([_e(kind), len(usable), int((group["status"] == "quarantined").sum()),
                      int((group["status"] == "ignored").sum()), _e(filters), _e(exposures)])
    return _table(["type", "usable", "quarantined", "ignored", "filters", "exposure times (s)"], table,
                  "no raw files")


def _master_rows(master_paths) -> tuple[str, list[str]]:
    rows, failed = [], []
    for m in master_verdicts(master_paths):
        recipe = RECIPES.get(m["kind"])
        group = m["group"].rsplit("|", 1)[-1] if recipe is not None and recipe.titled_by_group else ""
        rows.append([_e(m["kind"]), _e(group or "-"), _e(m["ncombine"]), _verdict(m["status"]), _e(m["reason"]),
                     f"<code>{_e(Path(m['path']).name)}</code>"])
        if m["status"] != "PASS":
            failed.append(f"master {m['kind']} {group} failed QC (never used): {m['reason']}".replace("  ", " "))
    return _table(["kind", "serves", "frames combined", "QC", "reason", "file"], rows, "no masters this night"), failed


def _cloudy(lightcurves) -> tuple[int, int]:
    path = Path(lightcurves) / "transparency.ecsv"
    if not path.exists():
        return 0, 0
    table = Table.read(path)
    return int(np.sum(np.asarray(table["cloudy"], bool))), len(table)


def _catalogue_facts(path) -> tuple[str, str, str]:
    if path is None or not Path(path).exists():
        return "-", "-", "-"
    catalogue = Table.read(path)
    fwhm = catalogue.meta.get("fwhm")
    return (str(len(catalogue)), "yes" if catalogue.meta.get("wcs") else "no",
            f"{float(fwhm):.2f}" if fwhm is not None else "-")


def _light_curve_rows(title: str, outcome: dict) -> tuple[list[list], list[str], int]:
    rows, notes, sources = [], [], 0
    for name, info in outcome["summary"].items():
        if not isinstance(info, dict) or info.get("elsewhere"):
            continue
        if name.startswith("src") and "error" not in info:
            sources += 1
            continue
        if "error" in info:
            rows.append([f"<b>{_e(name)}</b>", _e(title), _e(info.get("source_id", "-")), "-", "-", "-", "-",
                         f"<span class='bad'>not made: {_e(info['error'])}</span>"])
            notes.append(f"target {name} ({title}): no light curve: {info['error']}")
            continue
        warnings = info.get("warnings", [])
        notes += [f"target {name} ({title}): {w}" for w in warnings]
        scatter = info.get("scatter")
        rows.append([f"<b>{_e(name)}</b>", _e(title), _e(info.get("source_id")), _e(info.get("aperture")),
                     _e(info.get("n_good")),
                     _e(f"{1e3 * float(scatter):.2f}" if scatter is not None and np.isfinite(scatter) else "-"),
                     _e(len(info.get("comparisons", []))), _e("; ".join(warnings)) or "<span class='ok'>ok</span>"])
    return rows, notes, sources


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1b1f24; background: #fff; max-width: 70em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em;
     border-bottom: 1px solid #ccd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eef1f6; } .ok { color: #17702f; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.warn { color: #9a6700; font-weight: 600; } .quiet { color: #667; }
.box { padding: 0.6em 1em; border-radius: 6px; margin: 0.8em 0; }
.box.ok { background: #e9f6ec; } .box.bad { background: #fdecea; } .box.warn { background: #fff6df; }
pre { background: #f5f6f8; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def night_page(night: str, campaign: str, inventory: pd.DataFrame, master_paths, calibrated_dirs,
               fields: Mapping[str, Mapping]) -> str:
    """The page's HTML. ``fields``: ``{field label: {"title", "transforms", "lightcurves",
    "catalogue"}}`` for the night's fields (``title``: target and filter)."""
    rows = night_rows(inventory, night)
    undated = rows[rows["night"].fillna("").astype(str) == ""]
    field_dirs = {label: (f["transforms"], f["lightcurves"]) for label, f in fields.items()}
    summary = summarise_run(f"{campaign}, night {night}", rows, master_paths, calibrated_dirs, field_dirs,
                            "this report", missing_target="warn")
    warnings: list[str] = []

    bad = not_usable(rows)
    quarantined = [[_e(r.filename), _verdict(r.status), _e(r.reason), f"<code>{_e(r.path)}</code>"]
                   for r in bad.itertuples()]
    if len(bad):
        warnings.append(f"{len(bad)} raw file(s) quarantined or ignored (reasons below)"
                        + (f"; {len(undated)} unreadable, so of no night: here by their folder" if len(undated) else ""))

    masters_html, failed_masters = _master_rows(master_paths)
    warnings += failed_masters

    entries = calibration_entries(calibrated_dirs)
    failed = [[_e(fid), f"<code>{_e(e['path'])}</code>", _e(e["reason"])] for fid, e in entries.items()
              if e["status"] == FAILED]
    n_ok = sum(e["status"] == OK for e in entries.values())

    field_rows, unaligned, lc_rows, sources = [], [], [], 0
    for label, f in sorted(fields.items()):
        outcome = field_outcome(f["transforms"], f["lightcurves"])
        n_sources, wcs, fwhm = _catalogue_facts(f.get("catalogue"))
        cloudy, measured = _cloudy(f["lightcurves"])
        missed = outcome["n_frames"] - outcome["n_aligned"]
        aligned = f"<span class='{'ok' if not missed else 'warn'}'>{outcome['n_aligned']}</span>"
        field_rows.append([f"<b>{_e(f['title'])}</b><br><span class='quiet'>{_e(label)}</span>",
                           outcome["n_frames"], aligned, missed, _e(n_sources), _e(fwhm), _e(wcs),
                           f"{cloudy} of {measured}" if measured else "-"])
        unaligned += [[_e(f["title"]), _e(fid), _e(reason)] for fid, reason in outcome["not_aligned"]]
        if missed:
            warnings.append(f"field {f['title']}: {missed} of {outcome['n_frames']} frames not aligned (listed below)")
        if cloudy:
            warnings.append(f"field {f['title']}: {cloudy} frame(s) through cloud, flagged in every light curve")
        if outcome["summary"].get("error"):
            warnings.append(f"field {f['title']}: no light curves: {outcome['summary']['error']}")
        made, notes, n_src = _light_curve_rows(f["title"], outcome)
        lc_rows += made
        warnings += notes
        sources += n_src

    problems = summary.problems
    if problems:
        verdict = ("bad", f"{len(problems)} problem(s): requested products not made")
    elif warnings:
        verdict = ("warn", f"every requested product made; {len(warnings)} thing(s) to look at")
    else:
        verdict = ("ok", "every requested product made, nothing to look at")
    items = "".join(f"<li class='bad'>{_e(p)}</li>" for p in problems)
    items += "".join(f"<li>{_e(w)}</li>" for w in warnings)
    science = rows[(rows["imagetyp"] == "science") & (rows["status"] == OK)]
    span = (f"{science['mid_utc'].min()} to {science['mid_utc'].max()} UTC" if len(science) else "no science frames")
    parts = [
        f"<h1>Night {_e(night)}</h1><p class='quiet'>campaign {_e(campaign)}; science frames {_e(span)}</p>",
        f"<div class='box {verdict[0]}'><b>{_e(verdict[1])}</b>" + (f"<ul>{items}</ul>" if items else "") + "</div>",
        "<h2>Frames by type</h2>", _frames_by_type(rows),
        f"<h2>Quarantined and ignored files ({len(bad)})</h2>",
        _table(["file", "status", "reason", "path"], quarantined, "none: every raw file was usable"),
        ("<p class='quiet'>Files of no night could not be read; they are listed on the page of the night "
         "whose folder holds them (on every page when that is unclear).</p>" if len(undated) else ""),
        "<h2>Master calibrations</h2>", masters_html,
        f"<h2>Science frames: {n_ok} calibrated, {len(failed)} not</h2>",
        _table(["frame", "file", "why not calibrated"], failed, "every science frame was calibrated"),
        f"<h2>Fields ({len(fields)})</h2>",
        _table(["field", "frames", "aligned", "not aligned", "catalogue sources", "FWHM (px)", "plate solution",
                "cloudy frames"], field_rows, "no fields (photometry off, or no science frames)"),
        _table(["field", "frame", "why not aligned"], unaligned, "every frame was aligned") if fields else "",
        "<h2>Light curves</h2>",
        _table(["target", "field", "source", "aperture", "good frames", "point-to-point scatter (ppt)",
                "comparison stars", "warnings"], lc_rows, "no named targets on this night"),
        (f"<p>and {sources} light curve(s) of field sources (<code>src*</code>, the <code>all_sources</code> "
         "setting)</p>" if sources else ""),
        "<h2>Run summary of the night</h2>", f"<pre>{_e(summary.text)}</pre>",
        "<h2>Inventory of the night</h2>", f"<pre>{_e(summarise(rows))}</pre>",
    ]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ccdflow night {_e(night)}</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def write_night_page(path, night: str, campaign: str, inventory: pd.DataFrame, master_paths, calibrated_dirs,
                     fields: Mapping[str, Mapping]) -> dict:
    """Write the page (atomically); returns what it counted, for the job's log."""
    text = night_page(night, campaign, inventory, master_paths, calibrated_dirs, fields)
    write_text(path, text)
    return {"night": night, "fields": len(fields), "bytes": len(text)}

