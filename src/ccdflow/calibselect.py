"""Which masters to build, and which master each frame uses.

Selection criteria are data (BANZAI's lesson): a master serves a frame when
its group key matches (instrument, detector, binning and shape; plus filter for
flats; plus exposure time for matched darks), it lies within the configured
time window, and it passed QC. Among those, the nearest in time wins, across
nights when the frame's own night has none.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass

import pandas as pd

from .recipes import RECIPES

KINDS = tuple(RECIPES)


def group_column(kind: str, dark_mode: str = "rate") -> str:
    """Inventory column holding the group key a master of ``kind`` must match."""
    if kind not in RECIPES:
        raise ValueError(f"unknown master kind {kind!r}")
    return RECIPES[kind].group_column(dark_mode)


def group_id(group: str) -> str:
    """Short, path-safe id of a group key."""
    return hashlib.sha1(group.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class PlannedMaster:
    """A master to build: one group on one night."""

    kind: str
    night: str
    group: str
    frame_ids: tuple[str, ...]
    mjd: float          # mean mid-exposure MJD of its frames

    @functools.cached_property
    def master_id(self) -> str:
        return f"{self.night}/{group_id(self.group)}"


def plan_masters(table: pd.DataFrame, dark_mode: str = "rate") -> dict[str, dict[str, PlannedMaster]]:
    """``{kind: {master_id: PlannedMaster}}`` for every group with frames of that kind."""
    usable = table[table["status"] == "ok"]
    plans: dict[str, dict[str, PlannedMaster]] = {}
    for kind in KINDS:
        column = group_column(kind, dark_mode)
        frames = usable[usable["imagetyp"] == kind]
        plans[kind] = {}
        for (night, group), members in frames.groupby(["night", column], sort=True):
            master = PlannedMaster(kind, night, group, tuple(members.sort_values("mjd_mid")["frame_id"]),
                                   float(members["mjd_mid"].mean()))
            plans[kind][master.master_id] = master
    return plans


class MasterIndex:
    """Planned masters of one kind by group key, in time order.

    Answers :func:`candidates` for one frame by looking only at the masters of
    its group near its time, which keeps the thousands of look-ups made while
    the DAG of a long campaign is built cheap.
    """

    def __init__(self, planned: dict[str, PlannedMaster]):
        groups: dict[str, list[PlannedMaster]] = defaultdict(list)
        for master in planned.values():
            if master.mjd == master.mjd:  # a NaN time never lies within a window
                groups[master.group].append(master)
        self._groups = {}
        for group, masters in groups.items():
            masters.sort(key=lambda m: m.mjd)
            self._groups[group] = ([m.mjd for m in masters], masters)

    def candidates(self, group: str, mjd: float, window_days: float) -> list[PlannedMaster]:
        """Masters of ``group`` within ``window_days`` of ``mjd``, nearest first."""
        mjds, masters = self._groups.get(group, ((), ()))
        # a day's margin on the search; the window test below decides
        start = bisect.bisect_left(mjds, mjd - window_days - 1)
        stop = bisect.bisect_right(mjds, mjd + window_days + 1)
        matching = [m for m in masters[start:stop] if abs(m.mjd - mjd) <= window_days]
        return sorted(matching, key=lambda m: (abs(m.mjd - mjd), m.master_id))


def candidates(row, kind: str, planned: dict[str, PlannedMaster], window_days: float,
               dark_mode: str = "rate") -> list[PlannedMaster]:
    """Masters that may serve the frame ``row``, nearest in time first."""
    return MasterIndex(planned).candidates(row[group_column(kind, dark_mode)], row["mjd_mid"], window_days)


def input_candidates(found: list[PlannedMaster], night: str) -> list[PlannedMaster]:
    """Of a frame's candidate masters (nearest first), those its job takes as input:
    the ones of its own night and earlier nights, or all when there are none.

    A job's inputs are fixed when the DAG is built, before a master passes or
    fails QC, so a frame carries fallback masters with it. Taking fallbacks
    only from its own and earlier nights means that observing a new night
    never changes the inputs, and so never reruns the jobs, of the nights
    before it. A night with no master of its own still takes the nearest later one.
    """
    own_or_earlier = [m for m in found if m.night <= night]
    return own_or_earlier or list(found)


def criteria_text(row, kind: str, window_days: float, dark_mode: str = "rate") -> str:
    """The selection criteria in words, for error messages and headers."""
    parts = [f"{kind} master with {group_column(kind, dark_mode)} = {row[group_column(kind, dark_mode)]!r}",
             f"within {window_days:g} d of MJD {row['mjd_mid']:.4f}", "passing QC"]
    return ", ".join(parts)


@functools.lru_cache(maxsize=4096)
def _master_header(path: str, mtime_ns: int):
    """A master's header, read once per file version: a batch asks for the same
    few masters for every frame and every step."""
    from astropy.io import fits

    return fits.getheader(path)


def choose_master(paths, mjd: float, group: str, window_days: float) -> tuple[str | None, str]:
    """Pick, among master files, the nearest in time that matches and passed QC.

    Returns ``(path, "")`` or ``(None, reason)``. Reads only headers. Masters
    record their group as ``GROUPID`` and their time as ``MJD-MID``.
    """
    wanted = group_id(group)
    best, best_dt, rejected = None, None, []
    for path in paths:
        header = _master_header(path, os.stat(path).st_mtime_ns)
        if header.get("GROUPID") != wanted:
            continue
        dt = abs(float(header.get("MJD-MID", 0.0)) - mjd)
        if dt > window_days:
            continue
        if header.get("QCSTATUS") != "PASS":
            rejected.append(f"{path.rsplit('/', 1)[-1]} failed QC ({header.get('QCREASON', '')})")
            continue
        if best_dt is None or dt < best_dt:
            best, best_dt = path, dt
    if best is not None:
        return best, ""
    return None, "no usable master" + (": " + "; ".join(rejected) if rejected else " found")
