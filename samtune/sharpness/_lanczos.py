"""Lanczos with full reorthogonalization, for symmetric operators given by
their products (Golub & Van Loan, Matrix Computations, 4th ed., §10.1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LanczosRun:
    """basis: the orthonormal Lanczos vectors as rows (k × d); alphas/betas: the
    tridiagonal T = basis · A · basisᵀ; theta, residual: the largest Ritz value
    and ``‖A y − θ y‖`` (``β_{k+1} |s_k|``, s the Ritz vector in T)."""

    basis: torch.Tensor
    alphas: list[float]
    betas: list[float]
    theta: float
    residual: float

    @property
    def steps(self) -> int:
        return len(self.alphas)


def lanczos(matvec: MatVec, start: torch.Tensor, *, iters: int, tol: float) -> LanczosRun:
    """At most ``iters`` Lanczos steps on symmetric ``A`` from ``start``, stopped
    once the largest Ritz pair has ``‖A y − θ y‖ ≤ tol · |θ|`` (``tol=0``: run all
    steps, or until the Krylov space is invariant or fills the space)."""
    basis = _Basis(start.numel(), iters, start.device, start.dtype)
    q = start / torch.linalg.vector_norm(start)
    previous = None
    alphas: list[float] = []
    betas: list[float] = []
    while True:
        basis.append(q)
        w = matvec(q)
        alphas.append(torch.dot(w, q).item())
        w.sub_(q, alpha=alphas[-1])
        if previous is not None:
            w.sub_(previous, alpha=betas[-1])
        # The three-term recurrence leaves only rounding errors along older
        # vectors; one Gram-Schmidt pass against the whole basis removes them,
        # so no spurious copies of converged eigenvalues appear.
        w = basis.orthogonalize(w)
        beta = torch.linalg.vector_norm(w).item()
        values, vectors = eigh_tridiagonal(np.array(alphas), np.array(betas),
                                           select="i", select_range=(len(alphas) - 1,) * 2)
        theta = float(values[0])
        residual = beta * abs(float(vectors[-1, 0]))
        if (residual <= tol * abs(theta) or beta == 0.0 or len(alphas) == iters
                or len(alphas) == start.numel()):
            return LanczosRun(basis.rows(), alphas, betas, theta, residual)
        betas.append(beta)
        previous, q = q, w / beta


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

    def rows(self) -> torch.Tensor:
        return self._rows[: self._count]

    def orthogonalize(self, w: torch.Tensor) -> torch.Tensor:
        rows = self.rows()
        return w - rows.T @ (rows @ w)
