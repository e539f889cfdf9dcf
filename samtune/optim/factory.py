"""Optimizer registry and the one constructor used by training code (timm's optim factory, slimmed).

Names are the trial parameter ``optimizer`` (sgd|sam|gsam|asam|usam) and
``base_optimizer`` (sgd|adamw) trial parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from samtune.checks import check_nonnegative
from samtune.optim.gsam import GSAM
from samtune.optim.sam import SAM


@dataclass(frozen=True)
class OptimizerInfo:
    """One registered optimizer: ``two_pass`` ones need first_step/second_step (two backward passes)."""

    name: str
    two_pass: bool
    description: str


OPTIMIZERS: Mapping[str, OptimizerInfo] = MappingProxyType(
    {
        info.name: info
        for info in (
            OptimizerInfo("sgd", False, "the base optimizer alone (one forward/backward per step)"),
            OptimizerInfo("sam", True, "SAM, Foret et al. 2021: e = rho g/||g||"),
            OptimizerInfo("gsam", True, "GSAM, Zhuang et al. 2022: SAM ascent, descent along g_s - alpha g_perp"),
            OptimizerInfo("asam", True, "adaptive SAM, Kwon et al. 2021: e = rho T^2 g/||T g||, T = |w| + eta"),
            OptimizerInfo("usam", True, "unnormalized SAM, Andriushchenko & Flammarion 2022: e = rho g"),
        )
    }
)

BASE_OPTIMIZERS: Mapping[str, type[torch.optim.Optimizer]] = MappingProxyType(
    {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
)


def _lookup(kind: str, name: str, table: Mapping):
    if name not in table:
        raise ValueError(f"{kind} must be one of {sorted(table)}, got {name!r}")
    return table[name]


def create_optimizer(
    params: Iterable[torch.Tensor] | Iterable[dict],
    *,
    optimizer: str,
    base_optimizer: str = "sgd",
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    rho: float = 0.05,
    alpha: float = 0.0,
    adaptive: bool = False,
    eta: float = 0.0,
) -> torch.optim.Optimizer:
    """Build ``optimizer`` over ``params`` with ``base_optimizer`` doing the descent step.

    ``sgd`` returns the plain base optimizer. ``sam``/``gsam``/``usam`` honour
    ``adaptive`` and ``eta``; ``asam`` is SAM with ``adaptive=True``. The SGD base
    gets lr, momentum and weight_decay; AdamW gets lr and weight_decay (its
    betas are torch's defaults, and momentum is not used).
    """
    _lookup("optimizer", optimizer, OPTIMIZERS)
    base_class = _lookup("base_optimizer", base_optimizer, BASE_OPTIMIZERS)
    base_kwargs = {"lr": lr, "weight_decay": weight_decay}
    if base_optimizer == "sgd":
        base_kwargs["momentum"] = momentum

    if optimizer == "sgd":
        return base_class(params, **base_kwargs)
    if optimizer == "gsam":
        return GSAM(params, base_class, rho=rho, alpha=alpha, adaptive=adaptive, eta=eta, **base_kwargs)
    sam_variant = {
        "sam": dict(adaptive=adaptive),
        "asam": dict(adaptive=True),
        "usam": dict(adaptive=adaptive, normalize=False),
    }[optimizer]
    return SAM(params, base_class, rho=rho, eta=eta, **sam_variant, **base_kwargs)


def is_two_pass(optimizer: str | torch.optim.Optimizer) -> bool:
    """Whether a registered name, or an optimizer instance, needs the two-pass SAM step."""
    if isinstance(optimizer, str):
        return _lookup("optimizer", optimizer, OPTIMIZERS).two_pass
    return isinstance(optimizer, SAM)


def set_rho(optimizer: torch.optim.Optimizer, rho: float) -> None:
    """Set ``group["rho"]`` on every group of a two-pass optimizer; a no-op on plain ones.

    Takes effect at the next ``first_step``.
    """
    check_nonnegative("rho", rho)
    if is_two_pass(optimizer):
        for group in optimizer.param_groups:
            group["rho"] = rho
