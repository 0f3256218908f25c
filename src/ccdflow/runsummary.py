"""The end of every run: one block that says what was made and what was not, and why.

Written to ``results/<campaign>/summary.txt`` and printed on the console by the
last rules of the workflow. A run whose problems leave requested products
unmade (science frames left uncalibrated, targets that could not be placed)
exits non-zero *after* every other product has been made, so one bad frame
costs only itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from astropy.io import fits
from astropy.table import Table

from .frameloop import FAILED, OK, read_status
from .layout import kind_of

SHOW = 5  # quarantined files and failures listed by name (the rest counted)


@dataclass
class RunSummary:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # requested products not made: exit non-zero

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _listed(items: list[str], indent: str = "    ") -> list[str]:
    shown = [f"{indent}{item}" for item in items[:SHOW]]
    return shown + ([f"{indent}... and {len(items) - SHOW} more"] if len(items) > SHOW else [])


# -- what happened, in pieces: the run summary's lines and the night pages (ccdflow.nightpage) --
def not_usable(inventory: pd.DataFrame) -> pd.DataFrame:
    """The raw files quarantined or ignored, with their reasons (inventory rows)."""
    return inventory[inventory["status"] != OK]


def master_verdicts(master_paths) -> list[dict]:
    """One dict per master: ``path``, ``kind``, ``group`` (the header's GROUP), ``ncombine``,
    ``status`` (the QC verdict, PASS or FAIL) and ``reason`` (QCREASON)."""
    out = []
    for path in master_paths:
        header = fits.getheader(path)
        out.append({"path": str(path), "kind": str(header.get("OBSTYPE", "")).replace("MASTER_", "").lower(),
                    "group": str(header.get("GROUP", "")), "ncombine": header.get("NCOMBINE"),
                    "status": header["QCSTATUS"], "reason": header.get("QCREASON", "")})
    return out


def calibration_entries(calibrated_dirs) -> dict[str, dict]:
    """``{frame_id: status entry}`` of every science frame the calibrated batches hold
    (``status`` ok or failed, ``path``, ``reason``)."""
    return {fid: entry for folder in calibrated_dirs for fid, entry in read_status(folder).items()}


def field_outcome(transforms_path, lightcurves) -> dict:
    """One field's alignment and light curves: ``n_frames``, ``n_aligned``, ``not_aligned``
    (``[(frame_id, reason)]``), ``summary`` (the light curves' summary.json, ``{}`` when
    there is none), ``made`` (targets with a light curve) and ``named`` (those not ``src*``)."""
    transforms = Table.read(transforms_path)
    ok = [bool(v) for v in transforms["ok"]]
    summary_path = Path(lightcurves) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    made = [name for name, info in summary.items() if isinstance(info, dict) and "error" not in info]
    return {"n_frames": len(transforms), "n_aligned": int(sum(ok)),
            "not_aligned": [(str(r["frame_id"]), str(r["reason"])) for r, good in zip(transforms, ok) if not good],
            "summary": summary, "made": made, "named": [name for name in made if not name.startswith("src")]}


def _failed_transit_fit(name: str, label: str, info: dict, lightcurves) -> str | None:
    """The problem line of a configured transit whose fit failed (its light curve is
    made; a detrending-only fit that fails is the light curve's business, not a problem)."""
    fit = info.get("fit") or {}
    if not (fit.get("error") and fit.get("transit")):
        return None
    return (f"target {name} (field {label}): no transit fit: {fit['error']}. The light curve is in "
            f"{lightcurves}/{name}.ecsv; its flag column and transparency.ecsv say which frames were left "
            "out (cloud, saturation, outliers), and the transit window must be covered by the night")


def products_bytes(campaign_dir) -> int:
    """Bytes of a campaign's products on disk: not its logs, benchmarks or run records."""
    root = Path(campaign_dir)
    return sum(p.stat().st_size for p in root.rglob("*")
               if p.is_file() and kind_of(p.relative_to(root).as_posix()) not in ("bookkeeping", "run_record"))


def summarise_run(campaign: str, inventory: pd.DataFrame, master_paths, calibrated_dirs, field_dirs: dict[str, tuple],
                  report_command: str, missing_target: str = "error", product_bytes: int | None = None) -> RunSummary:
    """``field_dirs``: ``{field label: (transforms.ecsv, lightcurves folder)}``;
    ``missing_target``: a named target with no light curve anywhere, or whose
    configured transit could not be fitted, is a problem (``error``, the run
    exits non-zero) or only a line of the summary (``warn``); ``product_bytes``
    (:func:`products_bytes`): the products' size, printed against the raw files'."""
    out = RunSummary()
    add = out.lines.append
    add(f"ccdflow run summary: campaign {campaign}")
    bad = not_usable(inventory)
    add(f"  raw files: {len(inventory)} found, {int((inventory['status'] == OK).sum())} usable, "
        f"{len(bad)} quarantined or ignored")
    out.lines += _listed([f"{row.path}: {row.reason}" for row in bad.itertuples()])
    if len(inventory) == 0:
        out.problems.append("no raw FITS files found: check the `raw:` paths in your config")
    elif len(bad) == len(inventory):
        out.problems.append(f"none of the {len(inventory)} raw files is usable (reasons above, all in "
                            "inventory/summary.txt): a wrong instrument profile?")

    verdicts = {}
    for master in master_verdicts(master_paths):
        verdicts.setdefault(master["status"], []).append(f"{master['path']}: {master['reason']}")
    add(f"  masters: {sum(len(v) for v in verdicts.values())} built, {len(verdicts.get('PASS', []))} passed QC"
        + (f", {len(verdicts['FAIL'])} failed (never used):" if verdicts.get("FAIL") else ""))
    out.lines += _listed(verdicts.get("FAIL", []))

    entries = list(calibration_entries(calibrated_dirs).values())
    failed = [f"{e['path']}: {e['reason']}" for e in entries if e["status"] == FAILED]
    add(f"  science frames: {sum(e['status'] == OK for e in entries)} calibrated, {len(failed)} not")
    out.lines += _listed(failed)
    absent = [kind for kind in ("bias", "dark", "flat")
              if not ((inventory["status"] == OK) & (inventory["imagetyp"] == kind)).any()]
    lacking = [kind for kind in absent if any(f"{kind} master with" in e["reason"] for e in entries if e["status"] == FAILED)]
    if lacking:  # one line, with the setting that allows it, not one per frame
        settings = ", ".join(f"{kind}: {{on_missing: skip}}" for kind in lacking)
        out.problems.append(f"no {' or '.join(lacking)} frames among the raw files, so {len(failed)} science frame(s) "
                            f"were left uncalibrated: to reduce without them put `calibration: {{{settings}}}` "
                            "in your config (or add the calibration frames to `raw:`)")
    elif failed:
        out.problems.append(f"{len(failed)} science frame(s) could not be calibrated (see calibrated/report.txt)")

    targets: dict[str, list[str]] = {}  # named target -> fields where it has a light curve
    for label, (transforms_path, lightcurves) in sorted(field_dirs.items()):
        outcome = field_outcome(transforms_path, lightcurves)
        add(f"  field {label}: {outcome['n_aligned']} of {outcome['n_frames']} frames aligned")
        summary, made, named = outcome["summary"], outcome["made"], outcome["named"]
        add(f"    light curves: {len(made)} in {lightcurves}" + (f" ({', '.join(named[:SHOW])})" if named else ""))
        if summary.get("error"):  # the field has no reference catalogue
            add(f"    no light curves: {summary['error']}")
        for name, info in summary.items():
            if isinstance(info, dict) and not name.startswith("src"):
                targets.setdefault(name, [])
                if "error" in info:
                    add(f"    target {name} not made here: {info['error']}")
                elif not info.get("elsewhere"):
                    targets[name].append(label)
                    out.lines += _listed([f"warning: {note}" for note in info.get("warnings", [])], "      ")
                    failed_fit = _failed_transit_fit(name, label, info, lightcurves)
                    if failed_fit:
                        add(f"    {'' if missing_target == 'error' else 'warning: '}{failed_fit}")
                        if missing_target == "error":
                            out.problems.append(failed_fit)
    # a target is requested for the campaign: a problem only where no field could make it
    for name in sorted(t for t, fields in targets.items() if not fields):
        problem = f"target {name}: no light curve in any field (reasons above; a frame it names is in none)"
        if missing_target == "error":
            out.problems.append(problem)
        else:
            add(f"  warning: {problem}")
    if product_bytes is not None:
        raw = float(pd.to_numeric(inventory.get("size_bytes", pd.Series(dtype=float)), errors="coerce").sum())
        add(f"  disk: {product_bytes / 1e6:.0f} MB of products for {raw / 1e6:.0f} MB of raw files"
            + (f" ({product_bytes / raw:.2f}x)" if raw > 0 else ""))
    add(f"  report: {report_command}")
    if out.problems:
        add("  PROBLEMS (the run exits non-zero):")
        out.lines += _listed(out.problems, "    - ")
    return out
