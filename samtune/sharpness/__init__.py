"""Sharpness measures: functions of a model, a loss and a fixed set of batches.

::

    from samtune import sharpness
    sharpness.worst_case(model, loss_fn, batches, rho=1e-3, norm="linf", adaptive=True)
    sharpness.measure_all(model, loss_fn, batches, names=["harada", "hessian_max_eig"])

``batches`` is an iterable of ``(inputs, targets)`` tensor pairs and
``loss_fn(outputs, targets)`` returns the mean loss of a batch. Quantities over
several batches weight each batch by its size.

Every measure
- evaluates the model in ``eval()`` mode (BatchNorm uses its running statistics,
  as tml-epfl/sharpness-vs-generalization does) and restores each module's
  train/eval flag on exit;
- never writes to the model: perturbed losses go through
  ``torch.func.functional_call`` on separate tensors, gradients through
  ``torch.autograd.grad``, so parameters, buffers (``num_batches_tracked``
  included), ``requires_grad`` flags and ``.grad`` stay exactly as found;
- draws randomness from a local ``torch.Generator`` seeded by ``seed`` on the
  model's device (the global RNG is untouched; the same seed gives the same
  value on the same device type);
- runs where the model's parameters are (CPU or CUDA).

Precision. Measures compute in float32 by default (``dtype=None``: bf16/fp16
models are promoted to float32 and autocast is disabled inside; float64 models
stay float64). Pass ``dtype=`` to choose. bf16 is safe for the norms only; the
Hessian measures are rough in it (λ_max moved 1%, the trace 14% on the digits CNN);
worst-case, average-case, Keskar and ascent sharpness are differences
``L(w+δ) − L(w)`` of nearly equal losses, and ``w + δ`` itself rounds δ away
where ``|δ_i|`` is below half of bf16's spacing at ``w_i`` (2⁻⁹ to 2⁻⁸ of
``|w_i|``): an adaptive linf radius below 2⁻⁹ ≈ 2e-3 leaves every weight
unchanged, and harada's value halved on the digits CNN.

The measures, by registry name (metric ``sharpness_<name>``):

===================== ==========================================================
harada                worst-case linf, non-adaptive, ρ = 2e-4, 20 APGD steps (the
                      default worst-case measure; defined on 1024 examples, m = 128)
worst_linf[_adaptive] worst-case m-sharpness, linf box (× |w| when adaptive)
worst_l2[_adaptive]   worst-case m-sharpness, l2 ball (ellipsoid ‖δ/|w|‖ when adaptive)
avg_l2[_adaptive]     average-case, Gaussian noise (× |w| when adaptive), + stderr
avg_linf[_adaptive]   average-case, noise uniform in the linf box (× |w|), + stderr
…_adaptive_lognorm    the adaptive worst_linf, worst_l2, avg_l2, avg_linf on the loss
                      of centred unit-norm logits (Andriushchenko et al.'s choice
                      for comparing architectures)
avg_sphere            average-case on the sphere ‖δ‖ = ρ, δ = ρ z/‖z‖, + stderr
keskar                Keskar ε-sharpness, box ε(|w|+1), percent of 1 + L
ascent                L(w + ρ g/‖g‖) − L(w), SAM's own perturbation, per batch
ascent_full           the same with the gradient and loss of all the examples at once
hessian_max_eig       λ_max by Lanczos, + residual
hessian_trace         Hutchinson trace, Lanczos deflation as control variate, + stderr
norm_param_l2         ‖w‖₂ (metric name as is)
norm_dist_from_init   ‖w − w₀‖₂ (needs ``init_params``)
===================== ==========================================================

:data:`DEFAULT_MEASURES` is what a trial reports unless told otherwise;
:func:`measure_settings` gives the settings to log beside the values.
"""

from samtune.sharpness._apgd import apgd_checkpoints
from samtune.sharpness._result import Measurement
from samtune.sharpness.ascent import ascent, ascent_full
from samtune.sharpness.average_case import average_box, average_case, average_sphere
from samtune.sharpness.hessian import hessian_max_eigenvalue, hessian_trace
from samtune.sharpness.keskar import keskar
from samtune.sharpness.logits import normalize_logits
from samtune.sharpness.norms import distance_from_init, param_norm
from samtune.sharpness.registry import (
    DEFAULT_MEASURES,
    MEASURES,
    MeasureSpec,
    get_measure,
    measure_all,
    measure_settings,
    metric_names,
)
from samtune.sharpness.worst_case import worst_case

__all__ = [
    "DEFAULT_MEASURES",
    "MEASURES",
    "MeasureSpec",
    "Measurement",
    "apgd_checkpoints",
    "ascent",
    "ascent_full",
    "average_box",
    "average_case",
    "average_sphere",
    "distance_from_init",
    "get_measure",
    "hessian_max_eigenvalue",
    "hessian_trace",
    "keskar",
    "measure_all",
    "measure_settings",
    "metric_names",
    "normalize_logits",
    "param_norm",
    "worst_case",
]
