"""Keskar et al.'s ε-sharpness (ICLR 2017, arXiv 1609.04836, eq. 4, full space A = I).

    φ(w, ε) = 100 · (max_{δ ∈ C_ε} L(w + δ) − L(w)) / (1 + L(w)),
    C_ε = {δ : |δ_i| ≤ ε (|w_i| + 1)},

with L the loss over all the given batches (size-weighted; Keskar uses the full
training loss, one δ for all data — not m-sharpness).

The maximum is found by one of
- ``method="apgd"`` (default): the projected sign-gradient ascent of
  :mod:`samtune.sharpness._apgd` on the box, ``steps`` full-loss gradient
  evaluations; works for any model size and device;
- ``method="lbfgsb"``: scipy's L-BFGS-B with the box as bounds, ``steps``
  iterations (Keskar used about 10), on a float64 copy of the flat parameters —
  for small models (it keeps ~2·10 vectors of the parameter size in host memory).
Both report the largest loss they evaluated, a lower bound on the maximum. The
method is a setting: values from different methods are different measures.

Precision: a loss difference at ε ~ 1e-3 — float32 (the default) or float64.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import nn

from samtune.checks import check_choice, check_int, check_nonnegative
from samtune.sharpness._apgd import apgd_maximize
from samtune.sharpness._constraints import Box
from samtune.sharpness._result import Measurement
from samtune.sharpness._surface import Batch, LossFn, LossSurface, loss_surface

METHODS = ("apgd", "lbfgsb")


def keskar(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
           epsilon: float = 1e-3, method: str = "apgd", steps: int = 20,
           dtype: torch.dtype | None = None) -> Measurement:
    """Keskar ε-sharpness in percent of ``1 + L(w)``."""
    check_nonnegative("epsilon", epsilon)
    check_choice("method", method, METHODS)
    check_int("steps", steps, 1)
    with loss_surface(model, loss_fn, batches, dtype=dtype) as surface:
        box = Box(epsilon, surface.w0.abs() + 1)
        if method == "apgd":
            worst, clean = apgd_maximize(surface.mean_loss_and_grad, surface.mean_loss,
                                         surface.w0, box, steps=steps)
        else:
            worst, clean = _lbfgsb_maximize(surface, box, steps)
    return Measurement(100.0 * (worst - clean) / (1.0 + clean), iterations=steps)


def _lbfgsb_maximize(surface: LossSurface, box: Box, steps: int) -> tuple[float, float]:
    """(largest L(w0 + δ) seen by L-BFGS-B on −L over the box, L(w0))."""
    radius = (box.rho * box.scale).double().cpu().numpy()
    seen: list[float] = []

    def negative_loss(delta: np.ndarray) -> tuple[float, np.ndarray]:
        shift = torch.from_numpy(delta).to(surface.device, surface.dtype)
        loss, gradient = surface.mean_loss_and_grad(surface.w0 + shift)
        seen.append(loss)
        return -loss, -gradient.double().cpu().numpy()

    minimize(negative_loss, np.zeros_like(radius), jac=True, method="L-BFGS-B",
             bounds=Bounds(-radius, radius), options={"maxiter": steps})
    return max(seen), seen[0]
