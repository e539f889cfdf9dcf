"""A trial's data, whether held in device memory or streamed from image folders.

The training loop asks the same things of either kind (the :class:`TrialData`
protocol): what the images are (classes, channels, size), a training loader that
yields this worker's share of every global batch, batches to evaluate the test split
on, fixed examples in data-set order (the train-error subset, the sharpness and probe
examples) and the records of what it is.  :func:`open_trial_data` opens one; whoever
runs a trial opens its data once and hands it to the loop and to the tracker.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from samtune.checks import check_choice
from samtune.data.augment import BatchMixer, image_transform, to_uint8
from samtune.data.catalogue import DATASET_STATS, is_streamed
from samtune.data.device_augment import TORCHVISION_POLICY
from samtune.data.loaders import EpochLoader
from samtune.data.records import DatasetRecord, in_memory_records, streamed_records
from samtune.data.streaming import StreamingData, open_streaming
from samtune.data.tensors import TensorData, load_dataset
from samtune.data.worker_loader import WorkerLoader
from samtune.schema import AUTOAUGMENT_POLICIES, NORMALIZATIONS, PIPELINES

Batches = Iterable[tuple[Tensor, Tensor]]
DEFAULT_IMAGE_SIZE = 224  # ImageNet's crop, for a streamed set without image_size


@dataclass(frozen=True)
class Recipe:
    """How training batches are made from a set: its own crop and flip (``augment``),
    the per-image policies (AutoAugment with ``autoaugment_policy``'s ops, RandomErasing,
    Cutout), where those run (``pipeline``: batched on the device, or image by image in
    ``workers`` processes), how many ``passes`` make an epoch, and which batches are
    CutMix-ed or MixUp-ed; ``normalization`` names the statistics the set must have been
    opened with (checked by the set's training loader)."""

    augment: bool = True
    autoaugment: bool = False
    autoaugment_policy: str = TORCHVISION_POLICY
    erasing: float = 0.0
    erasing_max_area: float = 0.4
    erasing_aspect: float = 0.3
    cutout_prob: float = 0.0
    cutout_size: int = 16
    normalization: str = DATASET_STATS
    pipeline: str = "device"
    passes: int = 1
    workers: int = 0
    cutmix_prob: float = 0.0
    cutmix_alpha: float = 1.0
    mixup_prob: float = 0.0
    mixup_alpha: float = 1.0

    def __post_init__(self) -> None:
        check_choice("pipeline", self.pipeline, PIPELINES)
        check_choice("autoaugment_policy", self.autoaugment_policy, AUTOAUGMENT_POLICIES)
        check_choice("normalization", self.normalization, NORMALIZATIONS)

    def policy_options(self) -> dict[str, object]:
        """The per-image policies, as `DevicePolicy` and `image_transform` take them."""
        return {"autoaugment": self.autoaugment, "autoaugment_policy": self.autoaugment_policy,
                "erasing": self.erasing, "erasing_max_area": self.erasing_max_area,
                "erasing_aspect": self.erasing_aspect, "cutout_prob": self.cutout_prob,
                "cutout_size": self.cutout_size}

    def batch_mixer(self, num_classes: int, seed: int) -> BatchMixer | None:
        """The mixer of whole batches, None when no batch is mixed."""
        if self.cutmix_prob + self.mixup_prob == 0:
            return None
        return BatchMixer(num_classes=num_classes, cutmix_prob=self.cutmix_prob, cutmix_alpha=self.cutmix_alpha,
                          mixup_prob=self.mixup_prob, mixup_alpha=self.mixup_alpha, seed=seed)


@dataclass(frozen=True)
class EvalSplit:
    """Batches of one split for this worker; ``sharded`` when other workers hold the rest."""

    batches: Batches
    sharded: bool


def _slices(x: Tensor, y: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


def whole_split(x: Tensor, y: Tensor, batch_size: int) -> EvalSplit:
    """Fixed examples, evaluated whole on every worker."""
    return EvalSplit(_slices(x, y, batch_size), sharded=False)


class TrialData(Protocol):
    name: str
    num_classes: int
    train_size: int

    def image_shape(self) -> dict[str, int]:
        """The keywords a model is built for: ``num_classes``, ``in_channels``, ``image_size``."""

    def train_loader(self, recipe: Recipe, *, batch_size: int, seed: int, rank: int, world: int,
                     device: torch.device) -> EpochLoader:
        """Training batches of rank ``rank``'s share of every global batch of ``batch_size``."""

    def test_split(self, *, batch_size: int, rank: int, world: int, device: torch.device,
                   workers: int = 0) -> EvalSplit:
        """The held-out split for this worker: whole, or its shard."""

    def first_examples(self, n: int) -> tuple[Tensor, Tensor]:
        """The first ``n`` training examples in data-set order, unaugmented (all of a smaller set)."""

    def records(self) -> tuple[DatasetRecord, DatasetRecord]:
        """The training and the evaluation split as records for the tracking store."""


class InMemoryData:
    """A set held whole in device memory (:class:`~samtune.data.tensors.TensorData`),
    normalized with the statistics ``normalization`` names; every worker evaluates the
    whole test split."""

    def __init__(self, tensors: TensorData, root: str | os.PathLike[str] | None = None,
                 normalization: str = DATASET_STATS):
        self.tensors, self.root, self.normalization = tensors, root, normalization
        self.name, self.num_classes, self.train_size = tensors.name, tensors.num_classes, len(tensors.train_y)

    def image_shape(self) -> dict[str, int]:
        return {"num_classes": self.num_classes, "in_channels": self.tensors.in_channels,
                "image_size": self.tensors.image_size}

    def train_loader(self, recipe: Recipe, *, batch_size: int, seed: int, rank: int, world: int,
                     device: torch.device) -> EpochLoader:
        """The device loader (crop and flip, AutoAugment, RandomErasing, Cutout batched on the
        device; samtune.data.device_augment), or the per-image recipe in worker processes.
        Crop and flip are the set's own augmentation (none for digits) when ``augment`` is on.
        A recipe whose normalization is not the one this set was opened with is refused."""
        if recipe.normalization != self.normalization:
            raise ValueError(f"normalization = {recipe.normalization!r}, but {self.name} was opened normalized with "
                             f"{self.normalization!r}: open it with normalization={recipe.normalization!r}")
        data = self.tensors
        if recipe.pipeline == "device":
            return data.train_loader(
                batch_size=batch_size, seed=seed, passes=recipe.passes, augment=None if recipe.augment else "none",
                rank=rank, world=world, **recipe.policy_options())
        transform = image_transform(
            size=data.image_size, pad=data.pad, mean=data.mean, std=data.std,
            crop_flip=recipe.augment and data.augment == "crop_flip", **recipe.policy_options())
        return WorkerLoader(to_uint8(data.train_x, data.mean, data.std), data.train_y, transform=transform,
                            batch_size=batch_size, passes=recipe.passes, seed=seed, workers=recipe.workers,
                            rank=rank, world=world, device=device)

    def test_split(self, *, batch_size: int, rank: int, world: int, device: torch.device,
                   workers: int = 0) -> EvalSplit:
        return whole_split(self.tensors.test_x, self.tensors.test_y, batch_size)

    def first_examples(self, n: int) -> tuple[Tensor, Tensor]:
        return self.tensors.train_x[:n], self.tensors.train_y[:n]

    @functools.cached_property
    def _records(self) -> tuple[DatasetRecord, DatasetRecord]:
        return in_memory_records(self.tensors, self.root)

    def records(self) -> tuple[DatasetRecord, DatasetRecord]:
        return self._records


class StreamedData:
    """An image folder read from disk (:class:`~samtune.data.streaming.StreamingData`);
    each worker evaluates its shard of the test split."""

    def __init__(self, stream: StreamingData, device: torch.device, root: str | os.PathLike[str] | None = None):
        self.stream, self.device, self.root = stream, device, root
        self.name, self.num_classes, self.train_size = stream.name, stream.num_classes, len(stream.train)
        self._examples: dict[int, tuple[Tensor, Tensor]] = {}

    def image_shape(self) -> dict[str, int]:
        return {"num_classes": self.num_classes, "in_channels": 3, "image_size": self.stream.image_size}

    def train_loader(self, recipe: Recipe, *, batch_size: int, seed: int, rank: int, world: int,
                     device: torch.device) -> EpochLoader:
        return self.stream.train_loader(batch_size=batch_size, seed=seed, rank=rank, world=world,
                                        passes=recipe.passes, workers=recipe.workers, device=device)

    def test_split(self, *, batch_size: int, rank: int, world: int, device: torch.device,
                   workers: int = 0) -> EvalSplit:
        loader = self.stream.eval_loader("test", batch_size=batch_size, rank=rank, world=world, workers=workers,
                                         device=device)
        return EvalSplit(loader, sharded=world > 1)

    def first_examples(self, n: int) -> tuple[Tensor, Tensor]:
        n = min(n, self.train_size)
        if n not in self._examples:  # decoded once: the loop asks every epoch
            self._examples[n] = self.stream.fixed_examples(n, device=self.device)
        return self._examples[n]

    @functools.cached_property
    def _records(self) -> tuple[DatasetRecord, DatasetRecord]:
        return streamed_records(self.stream, self.root)

    def records(self) -> tuple[DatasetRecord, DatasetRecord]:
        return self._records


@functools.lru_cache(maxsize=1)
def _in_memory(name: str, root: str | None, device: str, download: bool, normalization: str) -> InMemoryData:
    # Ray reuses a worker process for the search's next trial, which then skips decoding
    # (and digesting) the same set again.
    data = load_dataset(name, root=root, device=device, download=download, normalization=normalization)
    return InMemoryData(data, root, normalization)


def open_trial_data(dataset: str, *, device: torch.device, root: str | None = None, download: bool = False,
                    streaming: bool = False, image_size: int | None = None,
                    normalization: str = DATASET_STATS) -> TrialData:
    """The data a trial trains and is evaluated on, from its data keys; a set held in
    memory is normalized with the statistics ``normalization`` names."""
    if is_streamed(dataset, streaming):
        if normalization != DATASET_STATS:
            raise ValueError(f"normalization = {normalization!r} applies to sets held in memory; {dataset!r} is "
                             f"streamed with its own statistics")
        stream = open_streaming(dataset, root=root, size=image_size or DEFAULT_IMAGE_SIZE)
        return StreamedData(stream, device, root)
    return _in_memory(dataset, root, str(device), download, normalization)
