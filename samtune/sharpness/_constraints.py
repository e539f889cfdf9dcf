"""Perturbation sets ``{δ : ‖δ / c‖ ≤ ρ}`` and the ascent step used on each.

``c`` is a per-coordinate scale (a flat tensor) or ``None`` for 1: ``c = |w|``
gives the adaptive sets of tml-epfl/sharpness-vs-generalization (``sharpness.py``),
``c = |w| + 1`` Keskar et al.'s box. Coordinates with ``c_i = 0`` cannot move.
"""

from __future__ import annotations

import torch


def _scaled(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return t if scale is None else t * scale


class Box:
    """``|δ_i| ≤ ρ c_i``; ascent step ``δ + s · c ⊙ sign(g)``."""

    norm = "linf"

    def __init__(self, rho: float, scale: torch.Tensor | None = None):
        self.rho = rho
        self.scale = scale

    def ascent_step(self, delta: torch.Tensor, gradient: torch.Tensor,
                    step_size: float) -> torch.Tensor:
        return delta + step_size * _scaled(gradient.sign(), self.scale)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return delta.clamp(-self.rho, self.rho)
        bound = self.rho * self.scale
        return torch.minimum(torch.maximum(delta, -bound), bound)

    def random_point(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Uniform in the box (the reference's ``random_init_lw``, linf)."""
        u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return _scaled((2 * u - 1) * self.rho, self.scale)


class Ball:
    """``‖δ / c‖₂ ≤ ρ`` (a ball, or an ellipsoid when ``c`` is given); ascent step
    ``δ + s · c ⊙ g / (‖g‖₂ + 1e-12)`` with the unweighted gradient norm, as in
    the reference."""

    norm = "l2"

    def __init__(self, rho: float, scale: torch.Tensor | None = None):
        self.rho = rho
        self.scale = scale

    def ascent_step(self, delta: torch.Tensor, gradient: torch.Tensor,
                    step_size: float) -> torch.Tensor:
        direction = gradient / (torch.linalg.vector_norm(gradient) + 1e-12)
        return delta + step_size * _scaled(direction, self.scale)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            norm = torch.linalg.vector_norm(delta, dtype=torch.float64).item()
            return delta * (self.rho / norm) if norm > self.rho else delta
        return project_onto_ellipsoid(delta, self.scale, self.rho)

    def random_point(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Gaussian ``ρ c ⊙ z`` (the reference's ``random_init_lw``, l2), projected
        onto the set (the reference leaves it outside until the first step)."""
        z = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return self.project(_scaled(z * self.rho, self.scale))


def project_onto_ellipsoid(y: torch.Tensor, scale: torch.Tensor, rho: float,
                           *, rtol: float = 1e-6, max_iter: int = 100) -> torch.Tensor:
    """Euclidean projection of ``y`` onto ``{x : Σ (x_i / c_i)² ≤ ρ²}``.

    KKT: ``x_i = y_i c_i² / (c_i² + μ)`` with the multiplier ``μ ≥ 0`` that puts
    ``x`` on the boundary (``μ = 2λ`` of the reference's bisection). In the scaled
    variables ``u = x / c`` this is a trust-region subproblem with a diagonal
    Hessian, and ``h(μ) = 1/‖u(μ)‖ − 1/ρ`` is nearly linear, increasing and
    concave (Moré & Sorensen 1983): Newton's method from ``μ = 0`` rises to the
    root monotonically without overshooting — a few iterations where bisection
    needs dozens. The iterates stay just outside the set, so the last one is
    scaled onto the boundary (a relative change below ``rtol``). Coordinates
    with ``c_i = 0`` are pinned to 0 (the reference divides by zero there).
    """
    if rho == 0:
        return torch.zeros_like(y)
    c2 = scale * scale
    movable = c2 > 0
    safe_c2 = torch.where(movable, c2, 1.0)
    y = torch.where(movable, y, 0.0)
    a = y * y * safe_c2  # u_i(μ)² = a_i / (c_i² + μ)²
    inv, terms = torch.empty_like(a), torch.empty_like(a)  # reused: no allocation per step

    def norm_and_slope(mu: float) -> tuple[float, float]:
        torch.add(safe_c2, mu, out=inv).reciprocal_()
        torch.mul(a, inv, out=terms)
        phi = torch.dot(terms, inv).item()  # Σ a/(c²+μ)²
        dphi = -2.0 * torch.dot(terms.mul_(inv), inv).item()  # −2 Σ a/(c²+μ)³
        return phi, dphi

    phi, dphi = norm_and_slope(0.0)
    if phi <= rho * rho:
        return y
    mu = 0.0
    for _ in range(max_iter):
        norm = phi ** 0.5
        if abs(norm - rho) <= rtol * rho:
            break
        # h(μ) = φ^{-1/2} − 1/ρ;  h'(μ) = −½ φ^{-3/2} φ'(μ) > 0
        h = 1.0 / norm - 1.0 / rho
        slope = -0.5 * dphi / (phi * norm)
        mu -= h / slope
        phi, dphi = norm_and_slope(mu)
    x = y * safe_c2 / (safe_c2 + mu)
    excess = phi ** 0.5 / rho
    return x / excess if excess > 1.0 else x
