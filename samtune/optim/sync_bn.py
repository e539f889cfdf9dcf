"""BatchNorm whose batch statistics span every worker of a data-parallel trial.

By default each worker normalizes with the statistics of its own share of the global
batch (as one GPU per process does in the papers' code).  ``resources.sync_batchnorm``
makes them the global batch's instead: on GPUs with ``torch.nn.SyncBatchNorm``; on
CPUs, where that layer refuses to run, with :class:`AllReduceBatchNorm`, the same
computation through autograd-aware all-reduces (gloo).  Parameters and buffers keep
their names, so checkpoints and logged models load into the plain model.

Under SAM the second pass runs on each worker's own perturbed weights (the
perturbation is per worker): its statistics then pool activations of differently
perturbed models, as SyncBatchNorm does in any data-parallel SAM code.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm


class AllReduceBatchNorm(_BatchNorm):
    """In training mode, normalizes with the mean and (biased) variance of the whole
    global batch; running statistics use its unbiased variance, as BatchNorm does."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        totals = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))  # summed over workers
        n = totals[-1]
        mean = totals[:channels] / n
        var = totals[channels:2 * channels] / n - mean * mean
        self._update_running_stats(mean.detach(), var.detach() * n / (n - 1))
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        if not self.track_running_stats:  # also SAM's second pass (samtune.optim.bn.frozen_bn_stats)
            return
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased_var, factor)


def synchronize_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm layer computing global-batch statistics (the same
    parameter and buffer tensors: an optimizer built on ``model`` keeps working)."""
    if next(model.parameters()).device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        converted = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                       module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module
