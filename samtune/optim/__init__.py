"""SAM family: SAM (ASAM via adaptive=True, USAM via normalize=False), GSAM, and helpers."""

from samtune.optim.bn import frozen_bn_stats
from samtune.optim.factory import OPTIMIZERS, OptimizerInfo, create_optimizer, is_two_pass, set_rho
from samtune.optim.gsam import GSAM
from samtune.optim.sam import SAM

__all__ = [
    "GSAM",
    "OPTIMIZERS",
    "SAM",
    "OptimizerInfo",
    "create_optimizer",
    "frozen_bn_stats",
    "is_two_pass",
    "set_rho",
]
