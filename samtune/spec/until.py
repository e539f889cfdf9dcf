"""The ``until:`` section: keep launching trials (at most ``samples`` of them, the cap)
until the question in it is answered, then launch no more.

The question is whether ``measure`` tracks ``target`` across the completed trials,
answered by Kendall's τ and its interval: settled when the interval is at most
``ci_width`` wide, or (``excludes_zero: true``) when it no longer contains 0.  The
interval is the normal one on Fisher's z = atanh τ with Fieller, Hartley & Pearson's
(1957) variance 0.437 / (n − 4), so it needs at least ``min_trials`` (≥ 5) trials.
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator
from scipy import stats

from samtune.spec.values import _Section

FIELLER_VARIANCE = 0.437  # n·var(atanh τ) for Kendall's τ (Fieller, Hartley & Pearson 1957)
_TAU_LIMIT = 1 - 1e-9  # atanh is infinite at ±1


class Until(_Section):
    """Keep launching trials, at most ``samples``, until Kendall's τ of ``measure`` against
    ``target`` over the completed trials is settled: its interval (Fisher's z with
    Fieller's variance 0.437 / (n − 4)) at most ``ci_width`` wide, or excluding 0.  Looked
    at after every completed trial, so an early "excludes 0" is likelier than the level
    says: read it as a stopping rule, not a test."""

    measure: str = Field(min_length=1, description="the measure's metric, e.g. `sharpness_harada` (required)")
    target: str = Field("final_test_error", description="the metric the measure should track")
    ci_width: float | None = Field(None, gt=0, le=2, description=(
        "settled once Kendall τ's interval is at most this wide (give this or `excludes_zero`)"))
    excludes_zero: bool = Field(False, description="settled once Kendall τ's interval excludes 0")
    level: float = Field(0.95, gt=0.5, lt=1, description="the interval's level")
    min_trials: int = Field(8, ge=5, description="completed trials before the question is first looked at")

    @model_validator(mode="after")
    def _one_question(self) -> Until:
        if (self.ci_width is None) == (not self.excludes_zero):
            raise ValueError("give one stopping rule: ci_width (the interval's width) or excludes_zero: true")
        return self

    def question(self) -> str:
        rule = f"its {self.level:.0%} interval is at most {self.ci_width} wide" if self.ci_width is not None \
            else f"its {self.level:.0%} interval excludes 0"
        return f"Kendall τ({self.measure}, {self.target}) until {rule}"

    def answer(self, measures: list[float], targets: list[float]) -> tuple[float, float, float] | None:
        """(τ, low, high) once the question is settled on these trials; None before."""
        n = len(measures)
        if n < self.min_trials:
            return None
        tau, low, high = kendall_interval(measures, targets, self.level)
        if not math.isfinite(tau):
            return None
        settled = (high - low <= self.ci_width) if self.ci_width is not None else (low > 0 or high < 0)
        return (tau, low, high) if settled else None


def kendall_interval(x: list[float], y: list[float], level: float) -> tuple[float, float, float]:
    """Kendall's τ and its interval on Fisher's z scale (n ≥ 5)."""
    tau = stats.kendalltau(x, y).statistic
    z = math.atanh(max(-_TAU_LIMIT, min(_TAU_LIMIT, tau)))
    half = stats.norm.ppf((1 + level) / 2) * math.sqrt(FIELLER_VARIANCE / (len(x) - 4))
    return float(tau), math.tanh(z - half), math.tanh(z + half)

