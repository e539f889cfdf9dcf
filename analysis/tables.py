"""Group table in the style of Harada & Iiduka (2024): mean ± std of test error and
of each measure per optimizer × schedule cell.

Schedule names follow the paper: ``constant``; ``+B`` for an increasing batch
(``batch_growth_ratio`` > 1); ``+C`` for a cosine learning rate; other
learning-rate shapes by name (``+linear``…); combinations concatenate (``+B+C``).
When the trials' budgets differ (``budget`` / ``budget_unit``), the budget is a cell
column too, so no cell pools trials of different budgets; every cell also shows the
compute its trials got (optimizer steps and gradient evaluations, mean ± std).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import schema

SCHEDULE = "schedule"
OPTIMIZER_ORDER = ("sgd", "sam", "gsam", "asam", "usam")
MAX_CELLS = 12


@dataclass(frozen=True)
class Grouping:
    """How trials are grouped: the columns of the group table and one label per trial."""

    columns: tuple[str, ...]
    labels: pd.Series


def _finite(value) -> bool:
    return isinstance(value, (int, float, np.number)) and bool(np.isfinite(value))


def schedule_label(trial: pd.Series) -> str:
    """``constant``, ``+B``, ``+C``, ``+<lr_shape>`` or a combination such as ``+B+C``."""
    parts = []
    ratio, stages = trial.get("batch_growth_ratio"), trial.get("batch_stages")
    if _finite(ratio) and ratio > 1 and not (_finite(stages) and stages <= 1):
        parts.append("+B")
    shape = trial.get("lr_shape")
    if isinstance(shape, str) and shape != "constant":
        parts.append("+C" if shape == "cosine" else f"+{shape}")
    return "".join(parts) or "constant"


def with_schedule(trials: pd.DataFrame) -> pd.DataFrame:
    labels = trials.apply(schedule_label, axis=1) if len(trials) else pd.Series([], dtype=object)
    return trials.assign(**{SCHEDULE: labels})


def _labels(frame: pd.DataFrame, columns: Sequence[str], *, named: bool) -> pd.Series:
    """``sam +B`` (the paper's columns unnamed), ``rho=0.1 budget=1000`` (others named)."""
    def label(row: pd.Series) -> str:
        parts = [_fmt(row[c]) if not named and c in ("optimizer", SCHEDULE) else f"{c}={_fmt(row[c])}"
                 for c in columns]
        return " ".join(parts)
    return frame.apply(label, axis=1).astype(object)


def budget_columns(trials: pd.DataFrame) -> tuple[str, ...]:
    """``budget`` / ``budget_unit`` where they vary across ``trials`` (missing counts)."""
    return tuple(c for c in (schema.BUDGET, schema.BUDGET_UNIT)
                 if c in trials and trials[c].astype(str).nunique(dropna=False) > 1)


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def choose_grouping(trials: pd.DataFrame, axes: Sequence[str], *, max_cells: int = MAX_CELLS) -> Grouping:
    """optimizer × schedule (× budget where budgets differ) when that gives ≥ 2 cells;
    otherwise the searched axes when they give replicated cells (≤ ``max_cells``);
    otherwise one group of all trials."""
    frame = with_schedule(trials)
    paper = tuple(c for c in ("optimizer", SCHEDULE) if c in frame) + budget_columns(frame)
    if paper and frame[list(paper)].astype(str).drop_duplicates().shape[0] >= 2:
        return Grouping(paper, _labels(frame, paper, named=False))
    if axes:
        cells = frame[list(axes)].astype(str).drop_duplicates().shape[0]
        if 2 <= cells <= max_cells and cells < len(frame):
            return Grouping(tuple(axes), _labels(frame, axes, named=True))
    return Grouping((), pd.Series("all trials", index=frame.index, dtype=object))


def _order_key(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple]:
    def key(row: pd.Series) -> tuple:
        parts = []
        for column in columns:
            value = row[column]
            if column == "optimizer" and value in OPTIMIZER_ORDER:
                parts.append((0, OPTIMIZER_ORDER.index(value), ""))
            elif column == SCHEDULE:
                parts.append((0, value.count("+"), value))
            elif _finite(value):
                parts.append((0, float(value), ""))
            else:
                parts.append((1, 0.0, str(value)))
        return tuple(parts)
    return [key(row) for _, row in frame.iterrows()]


def group_table(trials: pd.DataFrame, grouping: Grouping, *, values: Sequence[str]) -> pd.DataFrame:
    """One row per cell: the grouping columns, ``n``, and ``<value>_mean`` / ``<value>_std``
    (sample std, ddof = 1) for each of ``values``."""
    frame = with_schedule(trials).assign(**{schema.GROUP: grouping.labels})
    columns = list(grouping.columns) or [schema.GROUP]
    grouped = frame.groupby(columns, dropna=False, sort=False)
    table = grouped.size().rename("n").reset_index()
    for value in values:
        numbers = frame[value].astype(float)
        stats = numbers.groupby([frame[c] for c in columns], dropna=False, sort=False).agg(["mean", "std"])
        stats.columns = [f"{value}_mean", f"{value}_std"]
        table = table.merge(stats.reset_index(), on=columns, how="left")
    keys = _order_key(table, columns)
    order = sorted(range(len(table)), key=keys.__getitem__)
    return table.iloc[order].reset_index(drop=True)
