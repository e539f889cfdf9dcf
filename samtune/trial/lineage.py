"""The ancestry of a trial under population-based training, and the schedule it yields.

PBT copies a good trial's checkpoint into a worse one and perturbs some of its values
(``samtune.schema.PBT_KEYS``).  A trial's lineage is the list of segments its final
weights trained through: each says from which epoch on, in which trial, with which
values.  It travels inside the checkpoint, so a clone inherits its donor's segments and
adds its own: the lineage of the winner is the schedule that produced it, epoch by
epoch, and :mod:`samtune.commands.replay` trains it again.  Torch-free.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from samtune.schema import PBT_KEYS

LINEAGE_KEY = "samtune_lineage"  # in a trial checkpoint: its segments
SCHEDULE_COLUMNS = ("epoch", "lr", "rho", "batch_size")  # from each epoch's record


def segment(epoch: int, trial_id: str, run_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Training from ``epoch`` (epochs completed when it began) on, in ``trial_id``."""
    return {"epoch": int(epoch), "trial_id": trial_id, "run_id": run_id,
            "values": {key: values[key] for key in PBT_KEYS}}


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{key: [old, new]} for the values that differ between two segments."""
    return {key: [before["values"][key], after["values"][key]] for key in PBT_KEYS
            if before["values"][key] != after["values"][key]}


def extend(inherited: list[dict[str, Any]] | None, *, epoch: int, trial_id: str, run_id: str,
           values: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """A trial's segments when it (re)starts at ``epoch``: a new lineage at epoch 0, its
    own on a retry, or its donor's plus a new segment when cloned.  Returns (segments,
    whether this start is a clone)."""
    own = segment(epoch, trial_id, run_id, values)
    if not inherited:
        return [own], False
    if inherited[-1]["trial_id"] == trial_id and inherited[-1]["values"] == own["values"]:
        return inherited, False
    return [*inherited, own], True


def schedule_rows(history: list[dict[str, float]], segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch: its lr, ρ and batch size as trained, with the values and the trial of
    the segment that trained it."""
    rows = []
    for record in history:
        current = [s for s in segments if s["epoch"] < record["epoch"]][-1]
        rows.append({key: record[key] for key in SCHEDULE_COLUMNS}
                    | {key: value for key, value in current["values"].items() if key not in SCHEDULE_COLUMNS}
                    | {"trial_id": current["trial_id"]})
    return rows


def schedule_csv(history: list[dict[str, float]], segments: list[dict[str, Any]]) -> str:
    rows = schedule_rows(history, segments)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else list(SCHEDULE_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
