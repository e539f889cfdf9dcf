"""A training loader whose per-image transforms run in DataLoader worker processes.

For transforms that cannot be batched on the device (AutoAugment, RandomErasing): the
training images are kept as uint8 NCHW in shared memory, `torch.utils.data.DataLoader`
workers transform them one by one, and batches go to the trial's device.

The loader has the contract of `samtune.data.DeviceLoader`: `batch_size` may be set
before every epoch, `passes` passes over the data make one epoch, and `state_dict()`
(generator state and epoch count) resumes exactly. The loader's own generator draws each
epoch's permutations and one seed per position in the epoch; image k of the epoch is
transformed under its seed (`samtune.augment.seeded`), so the batches are the same
whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from samtune.augment import seeded
from samtune.data import EpochLoader, draw_passes_plan

SEED_BOUND = 2**62


class SeededImages(Dataset):
    """dataset[(i, seed)] = (transform(images[i]) drawn under `seed`, labels[i])."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, seed = key
        return seeded(self.transform, self.images[index], seed), self.labels[index]


class EpochSeeds(NamedTuple):
    """Example order[k] is drawn at position k of the epoch, transformed under seeds[k]."""

    order: Tensor
    seeds: Tensor


class PlannedBatches:
    """The DataLoader's batch sampler: consecutive (index, seed) batches of the plan the
    loader set for the current epoch, the final partial batch dropped."""

    def __init__(self) -> None:
        self.plan: EpochSeeds | None = None
        self.batch_size = 1

    def __len__(self) -> int:
        return 0 if self.plan is None else len(self.plan.order) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        pairs = list(zip(self.plan.order.tolist(), self.plan.seeds.tolist()))
        for k in range(len(self)):
            yield pairs[k * self.batch_size:(k + 1) * self.batch_size]


class WorkerLoader(EpochLoader):
    """Shuffled, drop_last training batches of `transform`ed uint8 images, on `device`.

    `images` (uint8 NCHW) and `labels` are moved to CPU shared memory, so worker processes
    read them without copies. `workers` = 0 transforms in the calling process; with more,
    the workers persist across epochs. Pinned memory is used when `device` is CUDA.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        transform: Callable[[Tensor], Tensor],
        batch_size: int,
        passes: int = 1,
        seed: int = 0,
        workers: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 NCHW, got {images.dtype} of shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(labels)}")
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes must be an int >= 1, got {passes!r}")
        self.images = images.cpu().contiguous().share_memory_()
        self.labels = labels.cpu().contiguous().share_memory_()
        self.device = torch.device(device)
        self.passes = passes
        self.batch_size = batch_size
        self.epoch = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._sampler = PlannedBatches()
        self._loader = DataLoader(
            SeededImages(self.images, self.labels, transform), batch_sampler=self._sampler,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=self.device.type == "cuda",
        )

    def __len__(self) -> int:
        """Number of batches in an epoch at the current batch size."""
        return len(self.images) * self.passes // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if len(self) == 0:
            raise ValueError(
                f"batch_size {self.batch_size} exceeds the {len(self.images) * self.passes} examples of an "
                "epoch: with drop_last an epoch would have no batches"
            )
        # Drawn now, not lazily, so that state_dict() after iter() already covers this epoch.
        self._sampler.plan = self._draw_epoch()
        self._sampler.batch_size = self.batch_size
        self.epoch += 1
        return self._to_device(iter(self._loader))

    def _draw_epoch(self) -> EpochSeeds:
        plan = draw_passes_plan(len(self.images), passes=self.passes, shuffle=True, augment="none", pad=0,
                                generator=self._generator)
        seeds = torch.randint(0, SEED_BOUND, (len(plan.order),), generator=self._generator)
        return EpochSeeds(plan.order, seeds)

    def _to_device(self, batches: Iterator[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in batches:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

