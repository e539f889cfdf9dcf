"""Worst-case m-sharpness (tml-epfl/sharpness-vs-generalization, ``m_apgd_*``).

For each batch S of size m,

    S_max(S) = max_{δ ∈ B} L_S(w + δ) − L_S(w),
    B = {|δ_i| ≤ ρ c_i} (linf)  or  {‖δ / c‖₂ ≤ ρ} (l2),

with ``c = |w|`` (adaptive) or 1, and the measure is the size-weighted mean of
S_max over the batches — each batch has its own δ, hence "m-sharpness" with m the
batch size. The maximum is approximated by APGD (:mod:`samtune.sharpness._apgd`),
so the value is a lower bound on the true maximum. Raw loss units: no
normalization by 1 + L, no ×100. With ``normalize_logits`` the loss is taken on
centred unit-norm logits (:mod:`samtune.sharpness.logits`), at w and at w + δ.

Andriushchenko et al., "A Modern Look at the Relationship between Sharpness and
Generalization", ICML 2023 (arXiv 2302.07011); Harada & Iiduka (arXiv 2409.09984)
report linf, non-adaptive, ρ = 2e-4, 20 steps, 1024 examples, m = 128.

Precision: a difference of nearly equal losses at a radius far below bf16's
relative spacing (2⁻⁸); compute in float32 (the default) or float64.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from samtune.checks import check_bool, check_choice, check_int, check_nonnegative
from samtune.sharpness._apgd import apgd_maximize
from samtune.sharpness._constraints import Ball, Box
from samtune.sharpness._result import Measurement
from samtune.sharpness._surface import Batch, LossFn, generator_for, loss_surface
from samtune.sharpness.logits import loss_for

NORMS = ("linf", "l2")


def perturbation_set(norm: str, rho: float, w0: torch.Tensor, adaptive: bool) -> Box | Ball:
    scale = w0.abs() if adaptive else None
    return Box(rho, scale) if norm == "linf" else Ball(rho, scale)


def worst_case(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
               rho: float = 1e-3, norm: str = "linf", adaptive: bool = True,
               steps: int = 20, step_size_mult: float = 1.0, rand_init: bool = False,
               normalize_logits: bool = False, seed: int = 0,
               dtype: torch.dtype | None = None) -> Measurement:
    """Worst-case m-sharpness, averaged over ``batches`` (m = their size).

    rho: radius (relative to |w| when adaptive). norm: "linf" or "l2".
    steps: APGD iterations (20 in the reference). step_size_mult: initial step
    is 2ρ·mult. rand_init: start from a random point of the set instead of δ = 0
    (needed at an exact stationary point, where every gradient step is 0).
    normalize_logits: the loss of centred unit-norm logits (the reference's
    ``--normalize_logits``).
    """
    check_nonnegative("rho", rho)
    check_choice("norm", norm, NORMS)
    check_bool("adaptive", adaptive)
    check_bool("rand_init", rand_init)
    check_int("steps", steps, 1)
    check_nonnegative("step_size_mult", step_size_mult)
    check_bool("normalize_logits", normalize_logits)
    loss_fn = loss_for(loss_fn, normalize_logits)
    with loss_surface(model, loss_fn, batches, dtype=dtype) as surface:
        constraint = perturbation_set(norm, rho, surface.w0, adaptive)
        generator = generator_for(surface.device, seed) if rand_init else None
        total = 0.0
        for b, weight in enumerate(surface.weights):
            start = clean = None
            if rand_init:
                start = constraint.random_point(surface.w0, generator)
                clean = surface.loss(surface.w0, b)
            worst, clean = apgd_maximize(
                lambda w, b=b: surface.loss_and_grad(w, b), lambda w, b=b: surface.loss(w, b),
                surface.w0, constraint, steps=steps, start=start, clean_value=clean,
                step_size_mult=step_size_mult)
            total += weight * (worst - clean)
    return Measurement(total, iterations=steps)
