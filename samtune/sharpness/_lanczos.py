"""Lanczos with full reorthogonalization, for symmetric operators given by
their products (Golub & Van Loan, Matrix Computations, 4th ed., §10.1).

Two stopping rules for the largest Ritz value θ, with r = ‖A y − θ y‖:

- ``residual``: ``r ≤ tol · |θ|``. A symmetric A has an eigenvalue within ``±r`` of
  θ, whatever its spectrum.
- ``error``: ``r² / (θ − θ₂) ≤ tol · |θ|``, θ₂ the second Ritz value. With the gap
  δ from θ to the rest of the spectrum, the eigenvalue nearest θ is within ``r²/δ``
  (Kato–Temple; Parlett, The Symmetric Eigenvalue Problem, §11.7), so once the
  Ritz values have separated, the error of θ falls as r², not r, and this rule
  stops a step or two earlier at the same accuracy of the eigenvalue. θ − θ₂
  stands in for δ, so it is an estimate, not a bound: on the digits CNN, trained
  and at initialization, it was above the true error at every step once that was
  below 1e-2, but fell short in the first steps at initialization, before θ₂
  settles (3e-2 estimated 1e-2). Use it with tolerances of 1e-3 or less.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from samtune.checks import check_choice

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LanczosRun:
    """basis: the orthonormal Lanczos vectors as rows (k × d); alphas/betas: the
    tridiagonal T = basis · A · basisᵀ; theta, residual: the largest Ritz value
    and ``‖A y − θ y‖`` (``β_{k+1} |s_k|``, s the Ritz vector in T);
    error_estimate: ``residual² / (θ − θ₂)`` (inf after one step)."""

    basis: torch.Tensor
    alphas: list[float]
    betas: list[float]
    theta: float
    residual: float
    error_estimate: float

    @property
    def steps(self) -> int:
        return len(self.alphas)


STOPS = ("residual", "error")


def lanczos(matvec: MatVec, start: torch.Tensor, *, iters: int, tol: float,
            stop: str = "residual") -> LanczosRun:
    """At most ``iters`` Lanczos steps on symmetric ``A`` from ``start``, stopped
    once the largest Ritz pair has ``‖A y − θ y‖ ≤ tol · |θ|`` (``stop="residual"``)
    or ``‖A y − θ y‖² / (θ − θ₂) ≤ tol · |θ|`` (``stop="error"``); ``tol=0``: run all
    steps, or until the Krylov space is invariant or fills the space."""
    check_choice("stop", stop, STOPS)
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
        theta, residual, error = _ritz(alphas, betas, beta)
        converged = (residual if stop == "residual" else error) <= tol * abs(theta)
        if (converged or beta == 0.0 or len(alphas) == iters
                or len(alphas) == start.numel()):
            return LanczosRun(basis.rows(), alphas, betas, theta, residual, error)
        betas.append(beta)
        previous, q = q, w / beta


def _ritz(alphas: list[float], betas: list[float], beta: float) -> tuple[float, float, float]:
    """θ, ``‖A y − θ y‖`` and ``‖A y − θ y‖² / (θ − θ₂)`` for the largest Ritz pair of
    T (alphas on the diagonal, betas beside it), β the next off-diagonal entry."""
    k = len(alphas)
    values, vectors = eigh_tridiagonal(np.array(alphas), np.array(betas),
                                       select="i", select_range=(max(k - 2, 0), k - 1))
    theta = float(values[-1])
    residual = beta * abs(float(vectors[-1, -1]))
    gap = theta - float(values[0]) if k > 1 else 0.0
    error = residual ** 2 / gap if gap > 0 else (0.0 if residual == 0 else math.inf)
    return theta, residual, error


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
