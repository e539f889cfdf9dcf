"""Average-case sharpness (tml-epfl/sharpness-vs-generalization, ``avg_l2``).

For each batch S, with K independent draws z ~ N(0, I),

    S_avg(S) = E_δ[L_S(w + δ)] − L_S(w),   δ = σ z  or  δ = σ |w| ⊙ z (adaptive),

estimated by the mean over the K draws of ``L_S(w + δ) − L_S(w)``; the measure is
the size-weighted mean over batches, each batch with its own draws (as in the
reference ``eval_average_sharpness``; no 1/√d scaling of σ). For a quadratic
loss the expectation is ``½ σ² tr(A)`` (``½ σ² Σ A_ii w_i²`` adaptive).

The standard error is the Monte-Carlo one given the batches:
``stderr = sqrt(Σ_b ω_b² s_b² / K)`` with ``s_b²`` the sample variance of batch
b's K differences and ``ω_b`` its weight.

Precision: the differences are small (O(σ²)) against the loss; bf16 erases them.
Compute in float32 (the default) or float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from samtune.sharpness._result import Measurement
from samtune.sharpness._surface import Batch, LossFn, generator_for, loss_surface
from samtune.sharpness._validate import check_bool, check_nonnegative, check_steps


def average_case(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
                 sigma: float = 0.05, adaptive: bool = False, samples: int = 20,
                 seed: int = 0, dtype: torch.dtype | None = None) -> Measurement:
    """Average-case sharpness under Gaussian weight noise; ``samples`` draws per
    batch (20 in the reference's scripts, at least 2 for a standard error)."""
    check_nonnegative("sigma", sigma)
    check_bool("adaptive", adaptive)
    check_steps("samples", samples, minimum=2)
    with loss_surface(model, loss_fn, batches, dtype=dtype) as surface:
        generator = generator_for(surface.device, seed)
        scale = sigma * surface.w0.abs() if adaptive else sigma
        noise = torch.empty_like(surface.w0)
        mean, variance = 0.0, 0.0
        for b, weight in enumerate(surface.weights):
            clean = surface.loss(surface.w0, b)
            diffs = []
            for _ in range(samples):
                noise.normal_(generator=generator)
                diffs.append(surface.loss(surface.w0 + noise * scale, b) - clean)
            diffs_t = torch.tensor(diffs, dtype=torch.float64)
            mean += weight * diffs_t.mean().item()
            variance += weight ** 2 * diffs_t.var(correction=1).item() / samples
    return Measurement(mean, stderr=math.sqrt(variance), iterations=samples)
