"""SAM and GSAM across data-parallel workers, as the GSAM authors run them.

``juntang-zhuang/GSAM`` (``gsam/gsam.py``, ``GSAM.step``) takes both forward-backward
passes inside ``model.no_sync()``: each worker perturbs its weights with the gradient
of its own share of the batch, computes the gradient there and forms its own update
direction (for GSAM, the decomposition against its own first-pass gradient).  Only that
final direction is averaged across workers (``_sync_grad``), and the base optimizer
then takes the same step everywhere.  So a data-parallel SAM step is m-sharpness-aware
with m = the per-worker batch, and equals: split the global batch into the workers'
shares, one SAM/GSAM direction per share, their mean, one base step.

:func:`average_directions` installs that averaging on a SAM/GSAM optimizer; the caller
runs the two passes of a step under ``DistributedDataParallel.no_sync()``.  A one-pass
base optimizer needs none of this: DDP averages its gradient in ``backward``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from samtune.optim.sam import SAM


@torch.no_grad()
def all_reduce_mean_(tensors: list[torch.Tensor], group: dist.ProcessGroup | None = None) -> None:
    """Replace every tensor by its mean across the group's workers, in one collective
    (gloo has no AVG reduction: sum, then divide)."""
    if not tensors:
        return
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat.div_(dist.get_world_size(group))
    for tensor, mean in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
        tensor.copy_(mean)


def average_directions(optimizer: SAM, group: dist.ProcessGroup | None = None) -> SAM:
    """Make ``optimizer`` average its final update direction across ``group`` before each
    base step (no-op for a group of one)."""
    if not isinstance(optimizer, SAM):
        raise ValueError(f"average_directions needs a SAM-family optimizer, got {type(optimizer).__name__}; "
                         "a one-pass optimizer is averaged by DistributedDataParallel itself")
    if dist.get_world_size(group) > 1:
        optimizer.direction_sync = lambda grads: all_reduce_mean_(grads, group)
    return optimizer
