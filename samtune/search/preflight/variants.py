"""The trial values the pre-launch checks must hold for: every grid cell; for an Optuna
search the fixed values with each searched data set and each searched batch key at
its upper bound; else the fixed trial."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from samtune.config import TrialConfig
from samtune.spec import BATCH_KEYS, Choice, SearchSpec, grid_cells, upper_bound


def _default(key: str) -> Any:
    return TrialConfig.model_fields[key].default


@dataclass(frozen=True)
class Variant:
    """Trial values the checks read, and where they come from (for messages)."""

    where: str
    values: Mapping[str, Any]
    searched: tuple[str, ...] = ()  # keys set to a searched choice or upper bound

    def get(self, key: str) -> Any:
        return self.values.get(key, _default(key))


def variants(spec: SearchSpec) -> list[Variant]:
    """The trial values the checks must hold for: every grid cell; for an Optuna search
    the fixed values with each searched data set and each searched batch key at its
    upper bound (``when`` conditions ignored); else the fixed trial."""
    if spec.grid:
        return [Variant(label, cell) for label, cell in grid_cells(spec)]
    if not spec.search:
        return [Variant("trial", dict(spec.trial))]
    searched = {dist.key: dist for dist in spec.search}
    base = dict(spec.trial)
    bounds = tuple(key for key in BATCH_KEYS if key in searched)
    for key in bounds:
        base[key] = upper_bound(searched[key])
    if isinstance(searched.get("dataset"), Choice):
        return [Variant("search", {**base, "dataset": dataset}, (*bounds, "dataset"))
                for dataset in searched["dataset"].values]
    return [Variant("search", base, bounds)]


def where_key(variant: Variant, key: str) -> str:
    """``trial.batch_size``, ``search.batch_size`` or ``grid cell {...}: batch_size``."""
    if variant.where == "trial" or (variant.where == "search" and key not in variant.searched):
        return f"trial.{key}"
    if variant.where == "search":
        return f"search.{key}"
    return f"{variant.where}: {key}"
