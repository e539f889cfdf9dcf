"""Hessian measures: the top eigenvalue (Lanczos) and the trace (Hutchinson).

Both use only Hessian-vector products of ``L(w) = Σ_b (n_b/N) L_b(w)`` (each
batch's HVP weighted by its size, so equal batches give the plain average), from
:meth:`LossSurface.hvp` — forward-over-reverse with torch.func, no graph kept.

- :func:`hessian_max_eigenvalue`: λ_max, the largest *algebraic* eigenvalue, by
  Lanczos with full reorthogonalization (Golub & Van Loan, Matrix Computations,
  §10.1), stopped when the Ritz residual ``‖H y − θ y‖ = β_{k+1} |s_k|`` falls
  below ``tol · |θ|``. The residual is returned: a symmetric H has an eigenvalue
  within ``±residual`` of θ. Lanczos needs far fewer products than the power
  iteration of PyHessian (Yao et al., 2020) for the same accuracy, and power
  iteration returns the eigenvalue of largest *magnitude*, which is λ_max only
  when the positive outliers dominate (true of trained networks, not always at
  initialization).
- :func:`hessian_trace`: Hutchinson's estimator ``tr(H) = E[vᵀHv]`` with
  Rademacher v (Hutchinson 1990; Avron & Toledo 2011), returned with its
  standard error ``std/√samples``. A diagonal H gives the exact trace with any
  one probe (stderr 0).

Precision: products are formed in the compute dtype (float32 by default);
relative errors are those of the forward/backward passes, so both measures are
usable in bf16 to about 1% — the default stays float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import nn

from samtune.sharpness._result import Measurement
from samtune.sharpness._surface import Batch, LossFn, generator_for, loss_surface
from samtune.sharpness._validate import check_nonnegative, check_steps

MatVec = Callable[[torch.Tensor], torch.Tensor]


def hessian_max_eigenvalue(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
                           iters: int = 50, tol: float = 1e-3, seed: int = 0,
                           dtype: torch.dtype | None = None) -> Measurement:
    """λ_max of the Hessian of the loss over ``batches``.

    iters: at most this many Hessian-vector products (Lanczos steps); memory
    grows by one parameter-sized vector per step. tol: stop when
    ``‖H y − θ y‖ ≤ tol · |θ|``. The result's ``residual`` is that norm, its
    ``iterations`` the products used.
    """
    check_steps("iters", iters)
    check_nonnegative("tol", tol)
    with loss_surface(model, loss_fn, batches, dtype=dtype) as surface:
        generator = generator_for(surface.device, seed)
        start = torch.randn(surface.dim, generator=generator, device=surface.device,
                            dtype=surface.dtype)
        theta, residual, steps = lanczos_max_eigenvalue(surface.hvp, start, iters=iters, tol=tol)
    return Measurement(theta, residual=residual, iterations=steps)


def lanczos_max_eigenvalue(matvec: MatVec, start: torch.Tensor, *, iters: int,
                           tol: float) -> tuple[float, float, int]:
    """(θ, ‖A y − θ y‖, matvecs) for the largest Ritz pair of symmetric ``A``."""
    basis = _Basis(start.numel(), iters, start.device, start.dtype)
    q = start / torch.linalg.vector_norm(start)
    alphas: list[float] = []
    betas: list[float] = []
    previous_beta = 0.0
    theta = residual = float("nan")
    for step in range(1, iters + 1):
        basis.append(q)
        w = matvec(q)
        alpha = torch.dot(w, q).item()
        alphas.append(alpha)
        # Two passes of classical Gram-Schmidt against the whole basis ("twice is
        # enough", Giraud et al. 2005) keep the Lanczos vectors orthogonal, so no
        # spurious copies of converged eigenvalues appear.
        w = basis.orthogonalize(basis.orthogonalize(w))
        beta = torch.linalg.vector_norm(w).item()
        values, vectors = eigh_tridiagonal(np.array(alphas), np.array(betas),
                                           select="i", select_range=(step - 1, step - 1))
        theta = float(values[0])
        residual = beta * abs(float(vectors[-1, 0]))
        if residual <= tol * abs(theta) or step == start.numel():
            return theta, residual, step
        betas.append(beta)
        previous_beta = beta
        q = w / previous_beta
    return theta, residual, iters


class _Basis:
    """Orthonormal Lanczos vectors as rows of a matrix that grows by doubling,
    so memory follows the iterations actually used."""

    def __init__(self, dim: int, capacity: int, device: torch.device, dtype: torch.dtype):
        self._capacity = capacity
        self._rows = torch.empty((min(8, capacity), dim), device=device, dtype=dtype)
        self._count = 0

    def append(self, q: torch.Tensor) -> None:
        if self._count == self._rows.shape[0]:
            grown = torch.empty((min(2 * self._count, self._capacity), self._rows.shape[1]),
                                device=self._rows.device, dtype=self._rows.dtype)
            grown[: self._count] = self._rows
            self._rows = grown
        self._rows[self._count] = q
        self._count += 1

    def orthogonalize(self, w: torch.Tensor) -> torch.Tensor:
        rows = self._rows[: self._count]
        return w - rows.T @ (rows @ w)


def hessian_trace(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *,
                  samples: int = 30, seed: int = 0,
                  dtype: torch.dtype | None = None) -> Measurement:
    """Hutchinson estimate of tr(H) from ``samples`` Rademacher probes (≥ 2),
    with its standard error."""
    check_steps("samples", samples, minimum=2)
    with loss_surface(model, loss_fn, batches, dtype=dtype) as surface:
        generator = generator_for(surface.device, seed)
        quadratic_forms = []
        for _ in range(samples):
            probe = rademacher(surface.dim, generator, surface.device, surface.dtype)
            quadratic_forms.append(torch.dot(probe, surface.hvp(probe)).item())
    values = torch.tensor(quadratic_forms, dtype=torch.float64)
    stderr = values.std(correction=1).item() / math.sqrt(samples)
    return Measurement(values.mean().item(), stderr=stderr, iterations=samples)


def rademacher(dim: int, generator: torch.Generator, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """A vector of independent ±1 entries."""
    bits = torch.randint(0, 2, (dim,), generator=generator, device=device)
    return bits.to(dtype).mul_(2).sub_(1)
