"""Keep BatchNorm running statistics untouched during SAM's perturbed forward pass.

SAM-family steps run two forward passes on the same batch; only the first, at the
unperturbed weights, should feed BatchNorm's running statistics (davda54/sam
example/utility/bypass_bn.py, juntang-zhuang/GSAM gsam/util.py). Those repos set
the BN momentum to 0, which still increments ``num_batches_tracked`` and, for
``momentum=None`` layers, still changes the cumulative average. Here the layers
are told not to track statistics: in training mode ``_BatchNorm.forward`` then
normalizes with the batch statistics and hands ``None`` buffers to
``F.batch_norm``, so running_mean, running_var and num_batches_tracked stay
bitwise unchanged. Eval-mode layers keep using their running statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, no BatchNorm layer of ``model`` updates its running statistics.

    Covers every ``_BatchNorm`` subclass (BatchNorm1d/2d/3d, lazy and SyncBatchNorm).
    Layers that already had ``track_running_stats=False`` are left alone, so nested
    use is safe; the flags are restored even if the block raises.
    """
    tracking = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for module in tracking:
        module.track_running_stats = False
    try:
        yield model
    finally:
        for module in tracking:
            module.track_running_stats = True
