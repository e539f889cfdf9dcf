"""The value a measure returns, with its own error estimate where it has one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    """One measured number.

    value:      the measure (``float(measurement)`` gives it too).
    stderr:     Monte-Carlo standard error, for the estimates that average random
                draws (average-case sharpness, Hutchinson's trace).
    residual:   ``‖H y − θ y‖`` of the returned Ritz pair (Lanczos); a symmetric
                ``H`` has an eigenvalue within ``±residual`` of ``value``.
    iterations: the work done — Hessian-vector products (Hessian measures),
                Monte-Carlo samples per batch, or ascent steps.
    """

    value: float
    stderr: float | None = None
    residual: float | None = None
    iterations: int | None = None

    def __float__(self) -> float:
        return self.value
