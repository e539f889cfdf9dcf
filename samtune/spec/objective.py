"""The ``objective:`` section: the metric a search optimizes and its mode, or two of
each for a Pareto search, and the metrics a trial reports for it to name."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationInfo, model_validator

from samtune import schema
from samtune.config import TrialConfig
from samtune.spec.values import Mode, _Section

DEFAULT_METRIC, DEFAULT_MODE = schema.DEFAULT_OBJECTIVE


class Objective(_Section):
    """One metric and mode, or two of each for a Pareto search."""

    metrics: tuple[Annotated[str, Field(strict=True, min_length=1)], ...] = Field(
        (DEFAULT_METRIC,), alias="metric", min_length=1, max_length=2, description=(
            "the metric to optimize, or a list of two for a Pareto search: a per-epoch metric, a `final_*` "
            "metric or `sharpness_<name>` / `norm_<name>` of a configured measure"))
    modes: tuple[Mode, ...] = Field((DEFAULT_MODE,), alias="mode", description=(
        "`min` or `max`, one per metric (one mode given applies to every metric)"))

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        metric = data.get("metric", [DEFAULT_METRIC])
        metrics = metric if isinstance(metric, (list, tuple)) else [metric]
        mode = data.get("mode", DEFAULT_MODE)
        modes = mode if isinstance(mode, (list, tuple)) else [mode] * len(metrics)
        return {**data, "metric": metrics, "mode": modes}

    @model_validator(mode="after")
    def _one_mode_per_metric(self) -> Objective:
        if len(self.modes) != len(self.metrics):
            raise ValueError(f"one mode per metric: {len(self.metrics)} metric(s), {len(self.modes)} mode(s)")
        return self

    @property
    def is_pareto(self) -> bool:
        return len(self.metrics) > 1


def reported_metrics(config: TrialConfig) -> tuple[str, ...]:
    """Every metric a trial with ``config`` reports: an objective may name any of them."""
    probes = schema.PROBE_METRICS if config.probes else ()
    return schema.EPOCH_METRICS + probes + schema.FINAL_METRICS + schema.measure_metric_names(config.sharpness)
