"""A trial's data, whether held in device memory or streamed from image folders.

The training loop asks the same four things of either kind: what the images are
(classes, channels, size), a training loader, batches to evaluate a split on, and
fixed examples in data-set order (the train-error subset and the sharpness examples).
In-memory sets (:class:`samtune.data.TensorData`) evaluate whole on every worker of
a data-parallel trial; streamed sets (:class:`samtune.streaming.StreamingData`) are
read by loader processes, and each worker evaluates its shard of the test split.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from samtune.config import TrialConfig
from samtune.data import TensorData, load_dataset
from samtune.replica import Replica
from samtune.streaming import StreamingData, open_streaming

Batches = Iterable[tuple[Tensor, Tensor]]
DEFAULT_IMAGE_SIZE = 224  # ImageNet's crop, for a streamed set without image_size


@functools.lru_cache(maxsize=1)
def cached_dataset(name: str, root: str | None, device: str, download: bool) -> TensorData:
    """The last data set loaded in this process: Ray reuses a worker for the next
    trial, which then skips decoding the set again."""
    return load_dataset(name, root=root, device=device, download=download)


def open_trial_data(config: TrialConfig, device: torch.device) -> TensorData | StreamingData:
    if config.streams:
        return open_streaming(config.dataset, root=config.data_dir, size=config.image_size or DEFAULT_IMAGE_SIZE)
    return cached_dataset(config.dataset, config.data_dir, str(device), config.download)


@dataclass(frozen=True)
class EvalSplit:
    """Batches of one split for this worker; ``sharded`` when other workers hold the rest."""

    batches: Batches
    sharded: bool


def image_shape(data: TensorData | StreamingData) -> dict[str, int]:
    """The keywords a model is built for: classes, channels and image size."""
    channels = data.in_channels if isinstance(data, TensorData) else 3
    return {"num_classes": data.num_classes, "in_channels": channels, "image_size": data.image_size}


def test_split(data: TensorData | StreamingData, *, batch_size: int, replica: Replica,
               device: torch.device, workers: int = 0) -> EvalSplit:
    """The held-out split: whole (in memory), or this worker's shard (streamed)."""
    if isinstance(data, TensorData):
        return EvalSplit(_slices(data.test_x, data.test_y, batch_size), sharded=False)
    loader = data.eval_loader("test", batch_size=batch_size, rank=replica.rank, world=replica.world,
                              workers=workers, device=device)
    return EvalSplit(loader, sharded=replica.distributed)


@functools.lru_cache(maxsize=2)
def _streamed_examples(data: StreamingData, n: int, device: str) -> tuple[Tensor, Tensor]:
    return data.fixed_examples(n, device=device)


def first_examples(data: TensorData | StreamingData, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The first ``n`` training examples in data-set order, unaugmented (all of a smaller set)."""
    if isinstance(data, TensorData):
        return data.train_x[:n], data.train_y[:n]
    return _streamed_examples(data, min(n, len(data.train)), str(device))


def _slices(x: Tensor, y: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


def train_split(x: Tensor, y: Tensor, batch_size: int) -> EvalSplit:
    """Fixed training examples, evaluated whole on every worker."""
    return EvalSplit(_slices(x, y, batch_size), sharded=False)
