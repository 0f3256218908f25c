"""The plan: which frames every job reads, decided once per inventory version.

The inventory table and four settings (batch size, dark mode, master time
window, minimum frames per field) fix everything the workflow's jobs are cut
into: batches of per-frame work, the masters to build with their frames,
each frame's candidate masters, the fields and their photometry chunks, and
the digests and pixel counts the rules use for rerun triggers and resources.
The workflow builds one :class:`Plan` per inventory version and its input
functions ask it; a job receives its share of the plan (frame ids, candidate
masters, product paths) through ``params`` and never plans again.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pandas as pd

from .calibselect import MasterIndex, PlannedMaster, input_candidates, plan_masters
from .fields import Field, plan_fields
from .inventory import batches, row_digests, rows_digest, rows_of
from .layout import Layout
from .recipes import RECIPES

# Which frames each batched stage reads (None: every usable frame).
BATCH_TYPES = {"framestats": None, "proc": tuple(RECIPES), "calibrated": ("science",)}
# Frames per job as a multiple of ``batch.size``: pixel statistics cost a few ms
# a frame, a small part of calibration's, and a job costs ~1 s of start-up.
BATCH_FACTOR = {"framestats": 4, "proc": 1, "calibrated": 1}
# Stages batched by frame type (ids ``<night>.<type>.bNNN``): their products are temporary
# (the pre-processed calibration frames), so a batch remade for one kind of master (its
# settings changed) must not touch the frames, and the masters, of the other kinds.
BATCHED_BY_TYPE = ("proc",)


@dataclass(frozen=True)
class PlanSettings:
    """The settings that shape the plan (a change to any reshapes it)."""

    batch_size: int = 25
    dark_mode: str = "rate"
    window_days: float = 30.0
    min_field_frames: int = 1

    @classmethod
    def from_config(cls, config: dict) -> "PlanSettings":
        return cls(batch_size=int(config["batch"]["size"]),
                   dark_mode=config["calibration"]["dark"]["mode"],
                   window_days=float(config["calibration"]["window_days"]),
                   min_field_frames=int(config["photometry"]["min_frames"]))


class Plan:
    """Batches, masters, fields and chunks of one inventory (see the module docstring).

    Everything is computed on first use and kept: the workflow asks the same
    questions for every job while the DAG of a long campaign is built.
    """

    def __init__(self, table: pd.DataFrame, settings: PlanSettings = PlanSettings()):
        self.table = table
        self.settings = settings

    # -- frames -----------------------------------------------------------------
    @functools.cached_property
    def _raw_paths(self) -> dict[str, str]:
        return dict(zip(self.table["frame_id"], self.table["path"]))

    def raw_paths(self, frame_ids) -> list[str]:
        """Raw files of the frames, in that order."""
        return [self._raw_paths[fid] for fid in frame_ids]

    def rows(self, frame_ids) -> list[dict]:
        """Inventory rows of the frames, in that order, as dicts."""
        return rows_of(self.table, frame_ids)

    @functools.cached_property
    def _digests(self) -> dict[str, str]:
        return row_digests(self.table)

    def rows_digest(self, frame_ids) -> str:
        """One digest of the frames' inventory rows: a job's rerun trigger."""
        return rows_digest(self._digests, frame_ids)

    @functools.cached_property
    def _pixels(self) -> dict[str, float]:
        table = self.table
        return dict(zip(table["frame_id"], table["naxis1"].fillna(0) * table["naxis2"].fillna(0)))

    def pixels(self, frame_ids) -> list[float]:
        """Raw pixels of each frame (0 where the header gave no size)."""
        return [self._pixels[fid] for fid in frame_ids]

    # -- batches of per-frame work -------------------------------------------------
    @functools.cached_property
    def batches(self) -> dict[str, dict[str, list[str]]]:
        """``{stage: {batch_id: [frame_id, ...]}}`` for every batched stage."""
        found = {}
        for stage, types in BATCH_TYPES.items():
            size = self.settings.batch_size * BATCH_FACTOR[stage]
            if stage not in BATCHED_BY_TYPE:
                found[stage] = batches(self.table, size, types=types)
                continue
            found[stage] = {}
            for kind in types:
                for batch_id, ids in batches(self.table, size, types=(kind,)).items():
                    night, _, number = batch_id.rpartition(".")
                    found[stage][f"{night}.{kind}.{number}"] = ids
        return found

    @functools.cached_property
    def _batch_of(self) -> dict[str, dict[str, str]]:
        return {stage: {fid: batch for batch, members in found.items() for fid in members}
                for stage, found in self.batches.items()}

    def batch_of(self, stage: str, frame_id: str) -> str | None:
        return self._batch_of[stage].get(frame_id)

    def batches_holding(self, stage: str, frame_ids) -> list[str]:
        """Batches of ``stage`` holding any of the frames, sorted."""
        index = self._batch_of[stage]
        return sorted({index[fid] for fid in frame_ids if fid in index})

    def frame_products(self, layout: Layout, stage: str, frame_ids) -> dict[str, str]:
        """``{frame_id: path}`` of the frames' products of a batched stage, in order."""
        index = self._batch_of[stage]
        return {fid: layout.frame(stage, index[fid], fid) for fid in frame_ids if fid in index}

    # -- masters ----------------------------------------------------------------
    @functools.cached_property
    def masters(self) -> dict[str, dict[str, PlannedMaster]]:
        """``{kind: {master_id: PlannedMaster}}``: one master per group and night."""
        return plan_masters(self.table, self.settings.dark_mode)

    @functools.cached_property
    def _master_index(self) -> dict[str, MasterIndex]:
        return {kind: MasterIndex(planned) for kind, planned in self.masters.items()}

    @functools.cached_property
    def _frame_keys(self) -> dict[str, tuple]:
        columns = {recipe.group_column(self.settings.dark_mode) for recipe in RECIPES.values()}
        table = self.table
        keys = [dict(zip(columns, values)) for values in zip(*(table[c] for c in columns))]
        return dict(zip(table["frame_id"], zip(table["mjd_mid"], keys, table["night"])))

    def frame_candidates(self, kind: str, frame_id: str) -> list[PlannedMaster]:
        """Masters of ``kind`` that may serve the frame, nearest first, among those its
        job takes as input (:func:`ccdflow.calibselect.input_candidates`)."""
        mjd, keys, night = self._frame_keys[frame_id]
        column = RECIPES[kind].group_column(self.settings.dark_mode)
        found = self._master_index[kind].candidates(keys[column], mjd, self.settings.window_days)
        return input_candidates(found, night)

    def candidates_for(self, kind: str, frame_ids) -> list[PlannedMaster]:
        """Candidate masters of any of the frames: a frame's nearest first, frame after frame."""
        found: dict[str, PlannedMaster] = {}
        for fid in frame_ids:
            for master in self.frame_candidates(kind, fid):
                found.setdefault(master.master_id, master)
        return list(found.values())

    @functools.cached_property
    def nights(self) -> list[str]:
        """Every night of the inventory (of a readable file), sorted: one QA page each."""
        return sorted({str(n) for n in self.table["night"].fillna("") if str(n)})

    @functools.cached_property
    def nights_with_masters(self) -> list[str]:
        return sorted({m.night for planned in self.masters.values() for m in planned.values()})

    # -- fields -----------------------------------------------------------------
    @functools.cached_property
    def fields(self) -> dict[str, Field]:
        """``{field_id: Field}``: the science frames of one target, filter and setup on one night."""
        return plan_fields(self.table, self.settings.min_field_frames)

    def field_chunks(self, field_id: str) -> dict[str, list[str]]:
        """``{chunk: [frame_id, ...]}``: a field's frames cut into photometry jobs."""
        ids, size = list(self.fields[field_id].frame_ids), self.settings.batch_size
        return {f"{i // size:03d}": ids[i : i + size] for i in range(0, len(ids), size)}
