"""The APGD-style weight ascent of tml-epfl/sharpness-vs-generalization.

Reference: ``sharpness.py`` (``eval_APGD_sharpness``, ``weight_ascent_step_momentum``)
of tml-epfl/sharpness-vs-generalization (Andriushchenko et al., ICML 2023), after
Croce & Hein's APGD (ICML 2020). For a perturbation set P and an objective F,
starting from δ₀ (0 by default):

1. ``z = Proj_P(δ_k + s · step(∇F(w + δ_k)))`` with the set's step rule
   (sign for boxes, normalized gradient for balls), initial ``s = 2ρ · mult``;
2. momentum: ``δ_{k+1} = 0.75 z + 0.25 δ_{k−1}`` (the reference mixes in the
   iterate *before* the current one);
3. ``F(w + δ_{k+1})`` is evaluated and the best value is kept;
4. at the checkpoints of :func:`apgd_checkpoints`, ``s`` is halved when fewer
   than 75% of the steps since the last checkpoint improved the best value, or
   when neither ``s`` nor the best value changed; on halving, the next gradient
   is taken at the best point while δ itself is kept (the reference reloads the
   best weights into the model but not into its δ — kept for fidelity).

Each step costs one forward-backward pass: the loss evaluated in step 3 comes
with the gradient that step 1 of the next iteration needs, and the gradient at
the best point is kept for the halving rule, so nothing is recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from samtune.sharpness._constraints import Ball, Box

ValueAndGrad = Callable[[torch.Tensor], tuple[float, torch.Tensor]]
Value = Callable[[torch.Tensor], float]


def apgd_checkpoints(n_iters: int) -> tuple[int, ...]:
    """Iterations at which APGD may halve its step size.

    ``p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``,
    checkpoints ``ceil(p_j · n_iters)`` for j ≥ 1 (the reference's formula,
    float rounding included: ``ceil(0.70 · 20) = 15``); only those below
    ``n_iters`` can fire. For 20 iterations: (5, 9, 12, 15, 16, 18, 19).
    """
    if not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"n_iters must be an int >= 1, got {n_iters!r}")
    p = [0.0, 0.22]
    w = [0, math.ceil(n_iters * 0.22)]
    while w[-1] < n_iters and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * n_iters))
    return tuple(sorted({c for c in w[1:] if c < n_iters}))


def apgd_maximize(value_and_grad: ValueAndGrad, value: Value, w0: torch.Tensor,
                  constraint: Box | Ball, *, steps: int, start: torch.Tensor | None = None,
                  clean_value: float | None = None, step_size_mult: float = 1.0,
                  momentum: float = 0.75, min_update_ratio: float = 0.75
                  ) -> tuple[float, float]:
    """``(max F(w0 + δ), F(w0))``: the maximum over the constraint set as found
    by ``steps`` APGD steps from ``start`` (δ = 0 when None), never below the
    clean value F(w0) (δ = 0 is feasible). ``clean_value`` is required with a
    ``start``; from δ = 0 it is the first evaluation."""
    checkpoints = set(apgd_checkpoints(steps))
    delta = torch.zeros_like(w0) if start is None else start
    start_value, point_grad = value_and_grad(w0 + delta)
    if start is None:
        clean_value = start_value
    elif clean_value is None:
        raise ValueError("clean_value is required when a start point is given")
    best_value, best_grad = max(clean_value, start_value), point_grad
    previous = delta
    step_size = prev_step_size = 2 * constraint.rho * step_size_mult
    prev_best, prev_checkpoint, n_improved = best_value, 0, 0
    for i in range(steps):
        z = constraint.project(constraint.ascent_step(delta, point_grad, step_size))
        new = z.mul_(momentum).add_(previous, alpha=1 - momentum)
        previous, delta = delta, new
        if i == steps - 1:  # no further step needs a gradient
            current, point_grad = value(w0 + delta), None
        else:
            current, point_grad = value_and_grad(w0 + delta)
        if current > best_value:
            best_value, best_grad = current, point_grad
            n_improved += 1
        if i in checkpoints:
            halve = (n_improved < min_update_ratio * (i - prev_checkpoint)
                     or (prev_step_size == step_size and prev_best == best_value))
            prev_step_size, prev_best, prev_checkpoint, n_improved = (
                step_size, best_value, i, 0)
            if halve:
                step_size *= 0.5
                point_grad = best_grad
    return best_value, clean_value
