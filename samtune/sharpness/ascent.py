"""Ascent-direction sharpness: the loss increase SAM's own perturbation causes.

For each batch S with gradient g = ∇L_S(w),

    S_asc(S) = L_S(w + ρ g / (‖g‖₂ + 1e-12)) − L_S(w)

(the first step of SAM, Foret et al., ICLR 2021, ε as in davda54/sam); with
``adaptive=True`` the perturbation is ASAM's ``ρ w² ⊙ g / ‖w ⊙ g‖`` (the
"adaptive" flag of davda54/sam and juntang-zhuang/GSAM). The measure is the
size-weighted mean over batches. For a quadratic ``½ δᵀAδ + gᵀδ`` around w it
equals ``ρ‖g‖ + ½ ρ² ĝᵀAĝ``.

:func:`ascent_full` (``ascent_full``) takes one step for all the batches at once:
g = ∇L_D(w), the size-weighted mean of the batch gradients, and the measure is
``L_D(w + ρ g/‖g‖) − L_D(w)`` on all the examples, so it does not depend on the
batch size m. By Jensen's inequality on the convex ρ‖·‖ term it is at most the
per-batch ``ascent`` to first order (‖Σ ω_b g_b‖ ≤ Σ ω_b ‖g_b‖).

Precision: a loss difference at small ρ — float32 (the default) or float64.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from samtune.checks import check_bool, check_nonnegative
from samtune.sharpness._result import Measurement
from samtune.sharpness._surface import Batch, LossFn, loss_surface


def ascent_perturbation(w: torch.Tensor, gradient: torch.Tensor, rho: float,
                        adaptive: bool) -> torch.Tensor:
    if adaptive:
        scaled = w * gradient
        return rho * w * scaled / (torch.linalg.vector_norm(scaled) + 1e-12)
    return rho * gradient / (torch.linalg.vector_norm(gradient) + 1e-12)


def ascent(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
           rho: float = 0.05, adaptive: bool = False,
           dtype: torch.dtype | None = None) -> Measurement:
    """Loss increase along each batch's normalized gradient (SAM's ascent step)."""
    check_nonnegative("rho", rho)
    check_bool("adaptive", adaptive)
    with loss_surface(model, loss_fn, batches, dtype=dtype) as surface:
        total = 0.0
        for b, weight in enumerate(surface.weights):
            clean, gradient = surface.loss_and_grad(surface.w0, b)
            delta = ascent_perturbation(surface.w0, gradient, rho, adaptive)
            total += weight * (surface.loss(surface.w0 + delta, b) - clean)
    return Measurement(total, iterations=1)


def ascent_full(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
                rho: float = 0.05, adaptive: bool = False,
                dtype: torch.dtype | None = None) -> Measurement:
    """Loss increase of all the examples along their full-batch normalized gradient."""
    check_nonnegative("rho", rho)
    check_bool("adaptive", adaptive)
    with loss_surface(model, loss_fn, batches, dtype=dtype) as surface:
        clean, gradient = surface.mean_loss_and_grad(surface.w0)
        delta = ascent_perturbation(surface.w0, gradient, rho, adaptive)
        value = surface.mean_loss(surface.w0 + delta) - clean
    return Measurement(value, iterations=1)
