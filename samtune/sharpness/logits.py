"""Logit normalization before the loss (``--normalize_logits`` of
tml-epfl/sharpness-vs-generalization).

Each example's logits are centred and scaled to unit L2 norm,

    z ← (z − mean(z)) / max(‖z − mean(z)‖₂, 1e-10),

and the loss is taken on the result, at the clean point and at every perturbed
point alike (the reference wraps the model, ``models.py``
``LogitNormalizationWrapper``, so every forward pass — the gradients of the ascent
included — goes through it). Cross-entropy can be lowered by scaling the logits
up, and architectures differ in that scale; Andriushchenko et al. (ICML 2023)
recommend the normalized loss for comparing sharpness across architectures.

Their ResNets also normalize inside the network and the wrapper does it a second
time; on centred unit-norm logits that second pass changes nothing beyond
rounding, so it is applied once here.
"""

from __future__ import annotations

import torch

from samtune.sharpness._surface import LossFn

# the reference's floor on the norm: all-equal logits give 0/1e-10 = 0, not NaN
NORM_FLOOR = 1e-10


def normalize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Centre each example's logits (last dimension) and scale them to unit norm."""
    if logits.dim() < 2 or logits.shape[-1] < 2:
        raise ValueError("normalize_logits needs class logits of shape (batch, classes) "
                         f"with at least 2 classes, got shape {tuple(logits.shape)}")
    centered = logits - logits.mean(dim=-1, keepdim=True)
    norms = torch.linalg.vector_norm(centered, dim=-1, keepdim=True).clamp_min(NORM_FLOOR)
    return centered / norms


def normalized_loss(loss_fn: LossFn) -> LossFn:
    """``loss_fn`` taken on normalized logits."""
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss_fn(normalize_logits(outputs), targets)

    return loss


def loss_for(loss_fn: LossFn, normalize: bool) -> LossFn:
    """The loss a measure evaluates: ``loss_fn`` itself, or on normalized logits."""
    return normalized_loss(loss_fn) if normalize else loss_fn
