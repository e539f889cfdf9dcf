"""The ``design:`` section: trials chosen to answer whether a measure tracks
generalization, not only to minimize the objective.

- ``coupled: true``: each configuration the Optuna sampler gives also runs its one-axis
  neighbours, the same configuration with one searched key moved (a choice to each of its
  other values; a range to ``points`` evenly spaced points of it, on a log scale for a
  ``loguniform``), so every searched key gets environment pairs: the granulated Kendall
  coefficient Ψ (Jiang et al. 2020) and the sign-error of Dziugaite et al. 2020 over them;
- ``replicates: k``: every configuration (neighbours included) runs under k seeds, the
  spec's ``seed`` and the k − 1 after it, so a difference between configurations can be
  set against what a change of seed alone gives.

A group is one sampled configuration, its neighbours and their replicates; the search's
size is ``samples`` groups (:func:`group_size` trials each at most: a neighbour of a key
that is inactive, under ``when``, is not run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from samtune.spec.distributions import Choice, IntUniform, LogUniform, _Distribution
from samtune.spec.values import PositiveInt, _Section

DEFAULT_POINTS = 2


class Design(_Section):
    """An Optuna search designed for the question whether a measure tracks generalization:
    ``coupled`` also runs each sampled configuration's one-axis neighbours, ``replicates``
    runs every configuration under several seeds.  ``samples`` then counts groups (a
    configuration, its neighbours and their replicates); Optuna learns from its own
    suggestions' first seed only."""

    coupled: bool = Field(False, description=(
        "also run each sampled configuration's one-axis neighbours (one searched key moved, the seed shared), "
        "so every searched key gets environment pairs for Ψ and the sign-error"))
    points: int = Field(DEFAULT_POINTS, ge=1, le=16, description=(
        "a range's values a neighbour moves to: evenly spaced points, geometric for `loguniform`"))
    replicates: PositiveInt = Field(1, description=(
        "run every configuration under the seeds `seed` … `seed + k − 1`: the noise floor of the report"))

    @property
    def is_plain(self) -> bool:
        return not self.coupled and self.replicates == 1


def range_points(dist: _Distribution, points: int) -> list[Any]:
    """``points`` evenly spaced values strictly inside a range (geometric for loguniform)."""
    lo, hi = dist.values
    fractions = [(i + 1) / (points + 1) for i in range(points)]
    if isinstance(dist, LogUniform):
        values = [math.exp(math.log(lo) + f * (math.log(hi) - math.log(lo))) for f in fractions]
    else:
        values = [lo + f * (hi - lo) for f in fractions]
    return sorted({round(v) for v in values}) if isinstance(dist, IntUniform) else values


def moves(dist: _Distribution, points: int) -> list[Any]:
    """The values a neighbour moves ``dist``'s key to (the configuration's own is skipped)."""
    return list(dist.values) if isinstance(dist, Choice) else range_points(dist, points)


def neighbours(config: Mapping[str, Any], distributions: Sequence[_Distribution], points: int
               ) -> list[dict[str, Any]]:
    """The one-axis neighbours of a sampled configuration: one searched key moved, the
    keys that depend on it (``when``) dropped or filled in as the move makes them
    inactive or active."""
    found = []
    for dist in distributions:
        if dist.key not in config:  # inactive in this configuration
            continue
        for value in moves(dist, points):
            if value == config[dist.key]:
                continue
            moved = dict(config) | {dist.key: value}
            found.append(_respect_conditions(moved, distributions, points))
    return found


def _respect_conditions(config: dict[str, Any], distributions: Sequence[_Distribution], points: int
                        ) -> dict[str, Any]:
    """Drop the keys a move made inactive; give a newly active key its first move value."""
    chosen: dict[str, Any] = {k: v for k, v in config.items() if k not in {d.key for d in distributions}}
    for dist in distributions:  # parents first
        if not dist.active(chosen):
            continue
        chosen[dist.key] = config[dist.key] if dist.key in config else moves(dist, points)[0]
    return chosen


def group_size(distributions: Sequence[_Distribution], design: Design) -> int:
    """Trials of one group at most: the configuration and every neighbour, k seeds each."""
    neighbours_at_most = sum(len(moves(d, design.points)) - (1 if isinstance(d, Choice) else 0)
                             for d in distributions) if design.coupled else 0
    return (1 + neighbours_at_most) * design.replicates
