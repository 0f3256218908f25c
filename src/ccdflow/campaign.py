"""Compare two reprocessing campaigns through their manifests.

``ccdflow campaign diff A B`` lists products added, removed and changed
between campaign A and campaign B. A product whose bytes differ but whose
science content does not (a new config hash or date in a header) is
reported as ``metadata only``. For masters that changed, the statistics of
B - A over pixels good in both; for light curves, per target, the median and
rms of the relative-flux difference over frames both measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .layout import kind_of
from .manifest import read_manifest


def _is_master(path: str) -> bool:
    return kind_of(path) == "master"


def _is_light_curve(path: str) -> bool:
    return kind_of(path) == "light_curve"


def master_difference(path_a: Path, path_b: Path) -> dict:
    """Statistics of B - A over pixels unmasked in both (units of the masters)."""
    from .ccdio import Product

    a, b = Product.read(path_a), Product.read(path_b)
    if a.data.shape != b.data.shape:
        return {"shape_a": list(a.data.shape), "shape_b": list(b.data.shape)}
    good = (a.mask == 0) & (b.mask == 0) & np.isfinite(a.data) & np.isfinite(b.data)
    diff = (b.data - a.data)[good]
    level = np.median(np.abs(a.data[good])) if good.any() else np.nan
    return {
        "n_pixels": int(good.sum()),
        "mean": float(diff.mean()) if diff.size else np.nan,
        "median": float(np.median(diff)) if diff.size else np.nan,
        "std": float(diff.std()) if diff.size else np.nan,
        "max_abs": float(np.abs(diff).max()) if diff.size else np.nan,
        "relative_std": float(diff.std() / level) if diff.size and level > 0 else np.nan,
        "mask_changed": int(np.sum((a.mask != 0) != (b.mask != 0))),
    }


def light_curve_difference(path_a: Path, path_b: Path) -> dict:
    """Median and rms of rel_flux(B) - rel_flux(A) over frames with good points in both."""
    from astropy.table import Table

    a = Table.read(path_a).to_pandas().set_index("frame_id")
    b = Table.read(path_b).to_pandas().set_index("frame_id")
    both = a.index.intersection(b.index)
    a, b = a.loc[both], b.loc[both]
    good = (a["flag"] == 0) & (b["flag"] == 0) & np.isfinite(a["rel_flux"]) & np.isfinite(b["rel_flux"])
    diff = (b["rel_flux"] - a["rel_flux"])[good].to_numpy(float)
    return {
        "n_frames": int(good.sum()),
        "median": float(np.median(diff)) if diff.size else np.nan,
        "rms": float(np.sqrt(np.mean(diff**2))) if diff.size else np.nan,
        "frames_only_a": int(len(a.index.difference(b.index))),
    }


def _identity(manifest: dict) -> dict:
    commit = manifest.get("commit") or "unknown"  # manifests from before commits were recorded
    return {"campaign": manifest["campaign"], "software": manifest["software"], "commit": commit,
            "dirty": bool(manifest.get("dirty")), "config_hash": manifest["config_hash"]}


def diff_campaigns(dir_a: str | Path, dir_b: str | Path) -> dict:
    """Products added, removed and changed from campaign A to campaign B (see module doc)."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    man_a, man_b = read_manifest(dir_a), read_manifest(dir_b)
    prod_a, prod_b = man_a["products"], man_b["products"]
    report = {
        "a": _identity(man_a),
        "b": _identity(man_b),
        "added": sorted(set(prod_b) - set(prod_a)),
        "removed": sorted(set(prod_a) - set(prod_b)),
        "changed": {},
        "metadata_only": [],
        "unchanged": 0,
    }
    for path in sorted(set(prod_a) & set(prod_b)):
        a, b = prod_a[path], prod_b[path]
        if a["sha256"] == b["sha256"]:
            report["unchanged"] += 1
        elif a.get("data_sha256") and a.get("data_sha256") == b.get("data_sha256"):
            report["metadata_only"].append(path)
        elif _is_master(path):
            report["changed"][path] = master_difference(dir_a / path, dir_b / path)
        elif _is_light_curve(path):
            report["changed"][path] = light_curve_difference(dir_a / path, dir_b / path)
        else:
            report["changed"][path] = {}
    return report


def format_diff(report: dict, limit: int = 50) -> str:
    """A plain-text summary of :func:`diff_campaigns` (at most ``limit`` lines per list)."""
    a, b = report["a"], report["b"]
    lines = [
        *(f"{side}: {m['campaign']} ({m['software']}, commit {m['commit'][:12]}{'+dirty' if m['dirty'] else ''}, "
          f"config {m['config_hash']})" for side, m in (("A", a), ("B", b))),
        f"{report['unchanged']} unchanged, {len(report['metadata_only'])} changed in metadata only, "
        f"{len(report['changed'])} changed, {len(report['added'])} added, {len(report['removed'])} removed",
    ]

    def section(title, items):
        if items:
            lines.append(f"{title}:")
            lines.extend(f"  {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")

    section("added", report["added"])
    section("removed", report["removed"])
    described = []
    for path, stats in report["changed"].items():
        if _is_master(path) and "std" in stats:
            described.append(f"{path}: B-A median {stats['median']:.4g}, std {stats['std']:.4g}, "
                             f"max |diff| {stats['max_abs']:.4g} ({stats['n_pixels']} px; mask changed "
                             f"in {stats['mask_changed']} px)")
        elif _is_light_curve(path) and "rms" in stats:
            described.append(f"{path}: rel_flux B-A median {stats['median']:.3g}, rms {stats['rms']:.3g} "
                             f"over {stats['n_frames']} frames")
        else:
            described.append(f"{path}" + (f": {stats}" if stats else ""))
    section("changed", described)
    return "\n".join(lines)
