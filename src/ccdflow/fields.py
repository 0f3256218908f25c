"""Fields: the science frames of one target, filter and setup on one night.

Alignment, the reference catalogue, the merged photometry table and the light
curves are made per field; field ids are path-safe (``<night>/<hash>``) and
stable as long as the grouping keys are.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Field:
    night: str
    target: str
    filter: str
    setup: str               # calibration group key: instrument, detector, binning, shape
    frame_ids: tuple[str, ...]

    @property
    def field_id(self) -> str:
        key = f"{self.target}|{self.filter}|{self.setup}".encode()
        return f"{self.night}/{hashlib.sha1(key).hexdigest()[:10]}"

    @property
    def label(self) -> str:
        """Readable name for plots and file names."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.target).strip("_") or "field"
        return f"{self.night}_{slug}_{self.filter}"


def plan_fields(table: pd.DataFrame, min_frames: int = 1) -> dict[str, Field]:
    """``{field_id: Field}`` for the usable science frames of the inventory."""
    science = table[(table["status"] == "ok") & (table["imagetyp"] == "science")]
    fields = {}
    for (night, target, filt, setup), members in science.groupby(["night", "object", "filter", "cal_group"], sort=True):
        if len(members) < min_frames:
            continue
        field = Field(night, target, filt, setup, tuple(members.sort_values("mjd_mid")["frame_id"]))
        fields[field.field_id] = field
    return fields
