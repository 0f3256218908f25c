"""Which of a campaign's planned products are missing or incomplete.

Snakemake does not rebuild a product deleted after a run when the jobs that
read it come after the inventory checkpoint (seen with Snakemake 9.27: a master
flat removed by hand, then "Nothing to be done"), and cannot see inside a batch
folder at all. The workflow asks this module at start-up, gives what is missing
to ``rule all`` as explicit targets (which Snakemake does rebuild, with every
product downstream), and the manifest step checks again at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .frameloop import OK, read_status
from .layout import BATCH_STAGES, TEMPORARY_STAGES, Layout
from .plan import Plan


@dataclass
class Planned:
    """Every product the plan makes: files, and folders with the suffix of each frame's file."""

    files: list[str] = field(default_factory=list)
    folders: dict[str, str] = field(default_factory=dict)  # folder -> suffix of its frames' products


@dataclass
class Damage:
    missing: list[str] = field(default_factory=list)  # files and folders that are not there
    incomplete: dict[str, list[str]] = field(default_factory=dict)  # folder -> what it lacks

    def __bool__(self) -> bool:
        return bool(self.missing or self.incomplete)

    def lines(self) -> list[str]:
        return [f"missing: {path}" for path in self.missing] + [
            f"incomplete: {folder} (lacks {', '.join(lacks[:3])}{' ...' if len(lacks) > 3 else ''})"
            for folder, lacks in self.incomplete.items()]


# A field's QA products (qa/<night>/<field_hash>/), made by rules qa_field and qa_targets.
QA_FIELD_PRODUCTS = ("conditions.png", "noise.png", "finder.png", "masks.png")


def planned_products(plan: Plan, layout: Layout, photometry: bool) -> Planned:
    planned = Planned()
    for stage, batches in plan.batches.items():
        if stage in TEMPORARY_STAGES:  # deleted once read, remade when needed: never damage
            continue
        planned.folders.update({layout.batch(stage, b): BATCH_STAGES[stage] for b in batches})
    planned.files += [layout.master(kind, mid) for kind, masters in plan.masters.items() for mid in masters]
    planned.files += [layout.inventory_summary, layout.calibration_report]
    planned.files += [layout.qa_masters(night) for night in plan.nights_with_masters]
    planned.files += [layout.qa_night(night) for night in plan.nights]
    if photometry:
        for field_id in plan.fields:
            planned.folders.update({layout.photometry_chunk(field_id, c): ".parquet" for c in plan.field_chunks(field_id)})
            planned.files += [layout.field(field_id, "photometry.parquet"), layout.lightcurves(field_id)]
            planned.files += [layout.qa_field(field_id, name) for name in QA_FIELD_PRODUCTS]
    return planned


def folder_lacks(folder: str, suffix: str) -> list[str]:
    """What a batch folder lacks: its status file, or a done frame's product."""
    try:
        status = read_status(folder)
    except (OSError, ValueError):
        return [Layout.status(folder).rsplit("/", 1)[-1]]
    return [f"{fid}{suffix}" for fid, entry in sorted(status.items())
            if entry.get("status") == OK and not os.path.exists(os.path.join(folder, f"{fid}{suffix}"))]


def find_damage(planned: Planned) -> Damage:
    damage = Damage()
    damage.missing = [p for p in [*planned.files, *planned.folders] if not os.path.exists(p)]
    for folder, suffix in planned.folders.items():
        if os.path.isdir(folder):
            lacks = folder_lacks(folder, suffix)
            if lacks:
                damage.incomplete[folder] = lacks
    return damage
