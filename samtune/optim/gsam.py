"""Surrogate-gap guided SAM (GSAM, Zhuang et al., ICLR 2022, arXiv 2203.08065).

The ascent is SAM's (``samtune.optim.sam``). At the perturbed point GSAM replaces
the SAM gradient g_s by

    c   = ⟨g, g_s⟩ / (‖g_s‖ · ‖g‖ + ε)                 cosine between g and g_s
    g_⊥ = g − c · ‖g‖ · g_s / (‖g_s‖ + ε)               part of g orthogonal to g_s
    d   = g_s − α · g_⊥                                 written into p.grad

with ε = 1e-12 and non-adaptive global norms, as ``gradient_decompose`` in
juntang-zhuang/GSAM (gsam/gsam.py); it is evaluated in the equal form
d = (1 + α c ‖g‖/(‖g_s‖ + ε)) · g_s − α · g, in place. The base step w ← w − η d leaves the perturbed
loss unchanged to first order and moves up the loss at w, shrinking the surrogate
gap f(w + e) − f(w). α = 0 gives SAM.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from samtune.checks import check_nonnegative
from samtune.optim.sam import PERTURB_EPS, SAM, _global_norm


class GSAM(SAM):
    """SAM with the surrogate-gap correction; ``alpha`` lives in every param group.

    Same two-step / closure interface as :class:`SAM`; ``state_dict()`` holds the
    base optimizer's state and the groups (``rho``, ``alpha``, ``lr``, ...).
    """

    _keeps_first_gradient = True

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        alpha: float = 0.0,
        adaptive: bool = False,
        eta: float = 0.0,
        **base_kwargs,
    ) -> None:
        group_defaults = dict(rho=rho, alpha=alpha, adaptive=adaptive, normalize=True, eta=eta)
        self._setup(params, base_optimizer, group_defaults, base_kwargs)

    def _check_groups(self) -> None:
        super()._check_groups()
        for group in self.param_groups:
            check_nonnegative("alpha", group["alpha"])

    def _form_direction(self) -> None:
        self.gradient_decompose()

    @torch.no_grad()
    def gradient_decompose(self) -> None:
        """Replace p.grad = g_s by d = g_s − α g_⊥, using g saved by ``first_step``."""
        if self._perturbed is None:
            raise RuntimeError("gradient_decompose() needs the gradient saved by first_step()")
        pairs = [(p, self.state[p]["old_g"]) for p in self._perturbed if p.grad is not None]
        if not pairs:
            return
        perturbed_grads = [p.grad for p, _ in pairs]
        first_grads = [g for _, g in pairs]
        # torch.dot is on no autocast cast list (matmul is), so the inner product stays in fp32.
        inner = torch.stack([torch.dot(p.grad.reshape(-1), g.reshape(-1)) for p, g in pairs])
        norm_g = _global_norm(first_grads)
        norm_gs = _global_norm(perturbed_grads)
        cosine = inner.sum() / (norm_gs * norm_g + PERTURB_EPS)
        coefficient = cosine * norm_g / (norm_gs + PERTURB_EPS)  # g_⊥ = g − coefficient · g_s

        for group in self.param_groups:
            members = {id(p) for p in group["params"]}
            group_pairs = [(p.grad, g) for p, g in pairs if id(p) in members]
            if not group_pairs:
                continue
            alpha = group["alpha"]
            grads = [gs for gs, _ in group_pairs]
            # d = g_s − α (g − coefficient · g_s) = (1 + α · coefficient) g_s − α g, updated in place
            # to spare two gradient-sized temporaries; α = 0 leaves g_s bit for bit.
            torch._foreach_mul_(grads, 1 + alpha * coefficient)
            torch._foreach_add_(grads, [g for _, g in group_pairs], alpha=-alpha)
