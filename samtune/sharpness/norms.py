"""Non-sharpness baselines: the parameter norm and the distance from initialization.

    norm_param_l2       = ‖w‖₂
    norm_dist_from_init = ‖w − w₀‖₂

over every tensor of ``model.parameters()`` (the set the sharpness measures
perturb), accumulated in float64. Jiang et al., "Fantastic Generalization
Measures and Where to Find Them" (ICLR 2020), use both as baselines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from samtune.sharpness._result import Measurement


def param_norm(model: nn.Module) -> Measurement:
    """``‖w‖₂`` over all parameters."""
    squares = sum(torch.sum(p.detach().double() ** 2).item() for p in model.parameters())
    return Measurement(squares ** 0.5)


def distance_from_init(model: nn.Module,
                       init_params: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
                       ) -> Measurement:
    """``‖w − w₀‖₂``. ``init_params``: the initial parameters, either a sequence
    in ``model.parameters()`` order or a mapping keyed like ``named_parameters()``."""
    named = list(model.named_parameters())
    initial = _match_init(named, init_params)
    squares = sum(torch.sum((p.detach().double() - p0.detach().to(p.device).double()) ** 2).item()
                  for (_, p), p0 in zip(named, initial))
    return Measurement(squares ** 0.5)


def _match_init(named: list[tuple[str, torch.Tensor]],
                init_params: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
                ) -> list[torch.Tensor]:
    if isinstance(init_params, Mapping):
        missing = [name for name, _ in named if name not in init_params]
        if missing:
            raise ValueError(f"init_params lacks parameters {missing[:5]}"
                             f"{' …' if len(missing) > 5 else ''}")
        initial = [init_params[name] for name, _ in named]
    else:
        initial = list(init_params)
        if len(initial) != len(named):
            raise ValueError(f"init_params has {len(initial)} tensors, the model has "
                             f"{len(named)} parameters")
    for (name, p), p0 in zip(named, initial):
        if not isinstance(p0, torch.Tensor) or p0.shape != p.shape:
            shape = tuple(p0.shape) if isinstance(p0, torch.Tensor) else type(p0).__name__
            raise ValueError(f"init_params[{name!r}] has shape {shape}, "
                             f"the parameter has {tuple(p.shape)}")
    return initial
