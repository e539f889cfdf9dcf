"""Average-case sharpness: the mean loss increase under random weight perturbations.

For each batch S, with K independent random draws z over all parameters,

    S_avg(S) = E_δ[L_S(w + δ)] − L_S(w)

estimated by the mean over the K draws of ``L_S(w + δ) − L_S(w)``; the measure is
the size-weighted mean over batches, each batch with its own draws (as in the
reference ``eval_average_sharpness``). Three distributions of δ:

- :func:`average_case` (``avg_l2``, tml-epfl/sharpness-vs-generalization):
  Gaussian, ``δ = σ z`` or ``δ = σ |w| ⊙ z`` (adaptive), z ~ N(0, I); no 1/√d
  scaling of σ, so ``‖δ‖ ≈ σ √d`` grows with the model. For a quadratic loss the
  expectation is ``½ σ² tr(A)`` (``½ σ² Σ A_ii w_i²`` adaptive).
- :func:`average_box` (``avg_linf``, the same reference): uniform in the box
  ``|δ_i| ≤ ρ c_i``, ``δ = (2u − 1) ρ c`` with u ~ U[0, 1)^d and c = |w| (adaptive)
  or 1 — the reference's ``random_init_lw(norm='linf')``, not the sign vector. A
  quadratic loss gives ``½ (ρ²/3) tr(A)`` (``½ (ρ²/3) Σ A_ii w_i²`` adaptive).
- :func:`average_sphere` (``avg_sphere``): uniform on the sphere of radius ρ,
  ``δ = ρ z/‖z‖`` (on the ellipsoid ``‖δ/|w|‖ = ρ`` adaptive, ``δ = ρ |w| ⊙ z/‖z‖``),
  so the radius does not depend on the number of parameters d. Since
  ``E[z zᵀ/‖z‖²] = I/d``, a quadratic loss gives ``½ ρ² tr(A)/d``
  (``½ ρ² Σ A_ii w_i² / d`` adaptive).

The standard error is the Monte-Carlo one given the batches:
``stderr = sqrt(Σ_b ω_b² s_b² / K)`` with ``s_b²`` the sample variance of batch
b's K differences and ``ω_b`` its weight.

``normalize_logits`` takes every loss, clean and perturbed, on centred unit-norm
logits (:mod:`samtune.sharpness.logits`).

Precision: the differences are small (O(σ²), O(ρ²)) against the loss; bf16 erases
them. Compute in float32 (the default) or float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from samtune.checks import check_bool, check_choice, check_int, check_nonnegative
from samtune.sharpness._result import Measurement
from samtune.sharpness._surface import Batch, LossFn, generator_for, loss_surface
from samtune.sharpness.logits import loss_for

# (random draw z, flat weights w) -> perturbation δ
Perturbation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# how z is drawn, in place: standard normal, or uniform in [0, 1)
DRAWS = {"normal": torch.Tensor.normal_, "uniform": torch.Tensor.uniform_}


def average_case(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
                 sigma: float = 0.05, adaptive: bool = False, samples: int = 20,
                 normalize_logits: bool = False, seed: int = 0,
                 dtype: torch.dtype | None = None) -> Measurement:
    """Average-case sharpness under Gaussian weight noise; ``samples`` draws per
    batch (20 in the reference's scripts, at least 2 for a standard error)."""
    check_nonnegative("sigma", sigma)
    check_bool("adaptive", adaptive)

    def gaussian(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return z * (sigma * w.abs() if adaptive else sigma)

    return average_increase(model, loss_fn, batches, gaussian, samples=samples, seed=seed, dtype=dtype,
                            normalize_logits=normalize_logits)


def average_box(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
                rho: float = 0.1, adaptive: bool = False, samples: int = 20,
                normalize_logits: bool = False, seed: int = 0,
                dtype: torch.dtype | None = None) -> Measurement:
    """Average-case sharpness under noise uniform in the linf box ``|δ_i| ≤ ρ c_i``
    (c = |w| when adaptive, else 1); ``samples`` draws per batch."""
    check_nonnegative("rho", rho)
    check_bool("adaptive", adaptive)

    def uniform_in_box(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # the reference's order of operations, (2u − 1) · (ρ|w|), so that the same
        # draws give bit-identical δ
        return (2 * u - 1) * (rho * w.abs() if adaptive else rho)

    return average_increase(model, loss_fn, batches, uniform_in_box, samples=samples, seed=seed,
                            dtype=dtype, normalize_logits=normalize_logits, draw="uniform")


def average_sphere(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
                   rho: float = 0.05, adaptive: bool = False, samples: int = 20, antithetic: bool = True,
                   seed: int = 0, dtype: torch.dtype | None = None) -> Measurement:
    """Average-case sharpness over the sphere ‖δ‖ = ρ (the ellipsoid ‖δ/|w|‖ = ρ
    when adaptive); ``samples`` draws per batch.

    ρ = 0.05 by default, SAM's radius and ``ascent``'s: at the same ρ,
    ``ascent`` against ``avg_sphere`` compares the gradient direction with a
    random one. The expectation, about ``½ ρ² tr(H)/d``, is small, and each draw
    carries the first-order term ``ρ gᵀz/‖z‖`` (standard deviation ``ρ‖g‖/√d``),
    which averages out only slowly: on the digits small CNN after 6 epochs
    (d = 21 482, 797 examples in 7 batches, 20 draws) the expectation is about
    8e-7 and the standard error 7e-6 with one-sided draws.  ``antithetic`` (the
    default) scores each draw as ``½ [L(w + δ) + L(w − δ)] − L(w)``: the same
    expectation (δ and −δ are equally likely), with the first-order term cancelled
    exactly, for two forward passes per draw; there the standard error was 9e-8."""
    check_nonnegative("rho", rho)
    check_bool("adaptive", adaptive)
    check_bool("antithetic", antithetic)

    def sphere(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        direction = z / torch.linalg.vector_norm(z)
        return rho * (w.abs() * direction if adaptive else direction)

    return average_increase(model, loss_fn, batches, sphere, samples=samples, seed=seed, dtype=dtype,
                            antithetic=antithetic)


def average_increase(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch],
                     perturbation: Perturbation, *, samples: int, seed: int,
                     dtype: torch.dtype | None, antithetic: bool = False,
                     normalize_logits: bool = False, draw: str = "normal") -> Measurement:
    """Size-weighted mean over batches of the Monte-Carlo mean of
    ``L_b(w + δ) − L_b(w)``, δ = ``perturbation(z, w)`` for a fresh flat draw z
    (``draw``: z ~ N(0, I), or uniform in [0, 1)) (``antithetic``: of
    ``½ [L_b(w + δ) + L_b(w − δ)] − L_b(w)``)."""
    check_int("samples", samples, 2)
    check_bool("normalize_logits", normalize_logits)
    fill = DRAWS[check_choice("draw", draw, tuple(DRAWS))]
    loss_fn = loss_for(loss_fn, normalize_logits)
    with loss_surface(model, loss_fn, batches, dtype=dtype) as surface:
        generator = generator_for(surface.device, seed)
        noise = torch.empty_like(surface.w0)
        mean, variance = 0.0, 0.0
        for b, weight in enumerate(surface.weights):
            clean = surface.loss(surface.w0, b)
            diffs = []
            for _ in range(samples):
                # one flat draw per sample: on the CPU its uniform stream is the
                # reference's per-tensor rand_like draws, concatenated
                fill(noise, generator=generator)
                delta = perturbation(noise, surface.w0)
                raised = surface.loss(surface.w0 + delta, b)
                if antithetic:
                    raised = (raised + surface.loss(surface.w0 - delta, b)) / 2
                diffs.append(raised - clean)
            diffs_t = torch.tensor(diffs, dtype=torch.float64)
            mean += weight * diffs_t.mean().item()
            variance += weight ** 2 * diffs_t.var(correction=1).item() / samples
    return Measurement(mean, stderr=math.sqrt(variance), iterations=samples)
