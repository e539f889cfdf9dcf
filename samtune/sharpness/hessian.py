"""Hessian measures: the top eigenvalue (Lanczos) and the trace (Hutchinson).

Both use only Hessian-vector products of ``L(w) = Σ_b (n_b/N) L_b(w)`` (each
batch's HVP weighted by its size, so equal batches give the plain average), from
:class:`samtune.sharpness._hvp.HessianProducts`: double backward through each
batch's gradient graph, built once and reused while memory allows, or
forward-over-reverse (``hvp=``; ``auto`` picks the cheaper, the value is the same
up to float rounding).

- :func:`hessian_max_eigenvalue`: λ_max, the largest *algebraic* eigenvalue, by
  Lanczos with full reorthogonalization (Golub & Van Loan, Matrix Computations,
  §10.1), stopped when the Ritz residual ``‖H y − θ y‖ = β_{k+1} |s_k|`` falls
  below ``tol · |θ|`` (``stop="residual"``), or when the estimated error of θ,
  ``residual² / (θ − θ₂)``, does (``stop="error"``: a step or two fewer at the same
  accuracy of the eigenvalue, see :mod:`samtune.sharpness._lanczos`). The residual
  is returned either way: a symmetric H has an eigenvalue within ``±residual`` of
  θ. It starts from the gradient plus a random vector
  (:func:`start_vector`). Lanczos never needs more products than the power
  iteration of PyHessian (Yao et al., 2020) for the same accuracy (from the same
  start, after k products its Ritz value is the largest Rayleigh quotient over a
  space holding the power iterate), far fewer when the top eigenvalues are close (digits CNN at
  initialization, relative error 1e-3: 9 against a median of 24), about as many
  when they are far apart (the same CNN trained: 6 against 6–17, median 9;
  ``benchmarks/hessian.py``); and power
  iteration returns the eigenvalue of largest *magnitude*, which is λ_max only
  when the positive outliers dominate (true of trained networks, not always at
  initialization).
- :func:`hessian_trace`: Hutchinson's estimator ``tr(H) = E[vᵀHv]`` with
  Rademacher v (Hutchinson 1990; Avron & Toledo 2011), with the deflated
  estimator built from a few Lanczos vectors (whose share of the trace is
  exact) as a control variate, returned with its standard error. A diagonal H
  gives the exact trace with any one probe (stderr 0).

Precision: products are formed in the compute dtype (float32 by default). In
bf16, λ_max moved by 1% and the trace by 14% on the digits CNN (same probes): usable
for a rough look, not for comparisons — the default stays float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from samtune.checks import check_choice, check_int, check_nonnegative
from samtune.sharpness._hvp import HessianProducts
from samtune.sharpness._lanczos import STOPS, LanczosRun, lanczos
from samtune.sharpness._result import Measurement
from samtune.sharpness._surface import Batch, LossFn, generator_for, loss_surface


def hessian_max_eigenvalue(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
                           iters: int = 50, tol: float = 1e-3, stop: str = "residual",
                           seed: int = 0, dtype: torch.dtype | None = None,
                           cache_graphs: bool | None = None, hvp: str = "auto") -> Measurement:
    """λ_max of the Hessian of the loss over ``batches``.

    iters: at most this many Hessian-vector products (Lanczos steps); memory
    grows by one parameter-sized vector per step. tol, stop: stop when
    ``‖H y − θ y‖ ≤ tol · |θ|`` (``"residual"``) or when
    ``‖H y − θ y‖² / (θ − θ₂) ≤ tol · |θ|`` (``"error"``). The result's
    ``residual`` is ``‖H y − θ y‖``, its ``iterations`` the products used.
    cache_graphs: keep every batch's gradient graph between products (None: when
    it fits in half the free memory). hvp: ``auto``, ``double_backward`` or
    ``forward_over_reverse`` (:mod:`samtune.sharpness._hvp`).
    """
    check_int("iters", iters, 1)
    check_nonnegative("tol", tol)
    check_choice("stop", stop, STOPS)
    with loss_surface(model, loss_fn, batches, dtype=dtype) as surface:
        generator = generator_for(surface.device, seed)
        products = HessianProducts(surface, cache_graphs=cache_graphs, hvp=hvp)
        run = lanczos(products.hvp, start_vector(products, generator), iters=iters, tol=tol,
                      stop=stop)
    return Measurement(run.theta, residual=run.residual, iterations=run.steps)


def start_vector(products: HessianProducts, generator: torch.Generator) -> torch.Tensor:
    """``ĝ + r̂``: the unit gradient plus a unit Gaussian vector. The gradient of a
    trained network lies mostly in the top eigenspace of its Hessian (Gur-Ari,
    Roberts & Dyer 2018, arXiv 1812.04754), which cuts the Lanczos steps (6 → 4
    on the digits CNN, 8 → 5 on ResNet-18 at initialization); the random part
    keeps every eigendirection in the Krylov space."""
    surface = products.surface
    r = torch.randn(surface.dim, generator=generator, device=surface.device,
                    dtype=surface.dtype)
    start = r / torch.linalg.vector_norm(r)
    g = products.mean_gradient()
    g_norm = torch.linalg.vector_norm(g)
    return start + g / g_norm if g_norm > 0 else start


def hessian_trace(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
                  samples: int = 10, deflation: int = 10, seed: int = 0,
                  dtype: torch.dtype | None = None,
                  cache_graphs: bool | None = None, hvp: str = "auto") -> Measurement:
    """Hutchinson estimate of tr(H) from ``samples`` Rademacher probes, with its
    standard error; ``deflation`` Lanczos steps first (0: plain Hutchinson).

    Each probe v gives Hutchinson's ``x = vᵀHv`` (E x = tr H). The Lanczos basis
    Q (k × d, drawn independently of the probes, ``Q H Qᵀ = T`` tridiagonal)
    gives from the same product the deflated estimate
    ``y = tr T + (Pv)ᵀH(Pv)``, ``P = I − QᵀQ`` (Gambhir, Stathopoulos & Orginos,
    SIAM J. Sci. Comput. 2017), with ``(Pv)ᵀH(Pv) = x − 2 (Qv)ᵀ(QHv) + (Qv)ᵀT(Qv)``.
    ``y`` is far less noisy when a few outlier eigenvalues carry ‖H‖_F (trained
    networks), but can be noisier than ``x`` otherwise (Rademacher probes have
    no variance from diag H; projected probes do). So ``c = x − y`` (mean 0) is
    used as a control variate: the estimate is ``mean(x − ĉ c)`` with ``ĉ`` the
    least-squares coefficient, never worse than the better of the two for large
    ``samples`` (ĉ → 0 plain, ĉ → 1 deflated; the fitted ĉ makes it biased by
    O(1/samples), Glasserman, Monte Carlo Methods in Financial Engineering, §4.1).

    Cost: ``deflation + samples`` Hessian-vector products. samples ≥ 2, and ≥ 3
    with deflation (the coefficient uses one degree of freedom). cache_graphs,
    hvp: as for :func:`hessian_max_eigenvalue`.
    """
    check_int("deflation", deflation, 0)
    check_int("samples", samples, 3 if deflation else 2)
    with loss_surface(model, loss_fn, batches, dtype=dtype) as surface:
        generator = generator_for(surface.device, seed)
        products = HessianProducts(surface, cache_graphs=cache_graphs, hvp=hvp)
        run = None
        if deflation:
            run = lanczos(products.hvp, start_vector(products, generator), iters=deflation,
                          tol=0.0)
        plain, qv, qhv = _probe_products(products, samples, run, generator)
    if run is None:
        return Measurement(plain.mean().item(), stderr=plain.std().item() / math.sqrt(samples),
                           iterations=samples)
    deflated = _deflated_forms(plain, qv, qhv, run)
    value, stderr = control_variate_mean(plain, plain - deflated)
    return Measurement(value, stderr=stderr, iterations=samples + run.steps)


def _probe_products(products: HessianProducts, samples: int, run: LanczosRun | None,
                    generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """For ``samples`` Rademacher probes v: ``vᵀHv`` (n,) and, with a Lanczos
    run, ``Qv`` and ``QHv`` (n × k), all float64 on the CPU.

    With every batch's graph in memory each probe goes through all batches at
    once; otherwise the batches come one at a time (each graph built once, or
    forward-over-reverse) and the same probes are regenerated from a fixed seed
    for each.
    """
    surface = products.surface
    basis = None if run is None else run.basis
    # the same probes either way, so the value does not depend on free memory
    probe_seed = int(torch.randint(2 ** 62, (1,), generator=generator,
                                   device=surface.device).item())

    def probes():
        probe_generator = generator_for(surface.device, probe_seed)
        return (rademacher(surface.dim, probe_generator, surface.device, surface.dtype)
                for _ in range(samples))

    if products.keeps_graphs:
        batch_order = [(None, 1.0)]  # products.hvp sums the batches itself
    else:
        batch_order = list(enumerate(surface.weights))
    forms = torch.zeros(samples, dtype=torch.float64)
    k = 0 if basis is None else basis.shape[0]
    qv, qhv = torch.zeros(samples, k, dtype=torch.float64), torch.zeros(samples, k,
                                                                      dtype=torch.float64)
    for b, weight in batch_order:
        matvec = products.hvp if b is None else products.batch_operator(b)
        for i, v in enumerate(probes()):
            hv = matvec(v)
            forms[i] += weight * torch.dot(v, hv).item()
            if basis is not None:
                qv[i] = (basis @ v).double().cpu()  # the same for every batch
                qhv[i] += weight * (basis @ hv).double().cpu()
    return forms, (qv if k else None), (qhv if k else None)


def _deflated_forms(forms: torch.Tensor, qv: torch.Tensor, qhv: torch.Tensor,
                    run: LanczosRun) -> torch.Tensor:
    """``tr T + (Pv)ᵀH(Pv) = tr T + vᵀHv − 2 (Qv)ᵀ(QHv) + (Qv)ᵀ T (Qv)`` per probe."""
    t = torch.diag(torch.tensor(run.alphas, dtype=torch.float64))
    if run.steps > 1:
        off = torch.tensor(run.betas[: run.steps - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    correction = -2 * (qv * qhv).sum(1) + ((qv @ t) * qv).sum(1)
    return t.trace() + forms + correction


def control_variate_mean(x: torch.Tensor, c: torch.Tensor) -> tuple[float, float]:
    """Estimate of E x and its standard error, with a control variate c (E c = 0):
    the intercept of the least-squares fit ``x ≈ a + ĉ c`` and its standard
    error ``s · sqrt(1/n + c̄² / Σ(c − c̄)²)``, s² the residual variance on
    n − 2 degrees of freedom. With c constant it is the plain mean."""
    n = len(x)
    xc, cc = x - x.mean(), c - c.mean()
    scc = (cc * cc).sum().item()
    coef = (xc * cc).sum().item() / scc if scc > 0 else 0.0
    intercept = (x.mean() - coef * c.mean()).item()
    residual = xc - coef * cc
    if scc > 0:
        s2 = (residual * residual).sum().item() / (n - 2)
        return intercept, math.sqrt(s2 * (1 / n + c.mean().item() ** 2 / scc))
    return intercept, math.sqrt((xc * xc).sum().item() / (n - 1) / n)


def rademacher(dim: int, generator: torch.Generator, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """A vector of independent ±1 entries."""
    bits = torch.empty(dim, device=device, dtype=dtype).random_(0, 2, generator=generator)
    return bits.mul_(2).sub_(1)
