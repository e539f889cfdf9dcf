"""Training loaders whose per-image transforms run in DataLoader worker processes.

For what cannot be batched on the device: per-image transforms of a set held in memory
(:class:`WorkerLoader`: AutoAugment, RandomErasing image by image), and images read from
disk (:class:`~samtune.data.streaming.StreamingLoader`).  Both are a
:class:`PlannedLoader` on the :class:`~samtune.data.loaders.EpochLoader` contract: when an
epoch starts, the loader's own generator draws the epoch's order (``passes``
permutations) and one seed per position; image k of the epoch is transformed under its
seed (:func:`samtune.data.augment.seeded`), so the batches are the same whatever the
number of worker processes.

Every rank of a data-parallel trial draws the same plan, and rank r of ``world`` yields
the r-th contiguous share of each global batch: the ranks' shares of step k make up
global batch k of the single-process order, so a trial may also resume on another
number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from samtune.checks import check_int
from samtune.data.augment import seeded
from samtune.data.loaders import Batch, EpochLoader, draw_passes_plan

SEED_BOUND = 2**62
Stats = tuple[Sequence[float], Sequence[float]]  # (mean, std) per channel


class EpochSeeds(NamedTuple):
    """Example order[k] is drawn at position k of the epoch, transformed under seeds[k]."""

    order: Tensor
    seeds: Tensor


class SeededImages(Dataset):
    """dataset[(i, seed)] = (transform(images[i]) drawn under `seed`, labels[i])."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, seed = key
        return seeded(self.transform, self.images[index], seed), self.labels[index]


class PlannedShares:
    """The DataLoader's batch sampler: this rank's share of every global batch of the
    plan the loader set for the current epoch, as (index, seed) keys; the final partial
    global batch is dropped."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.plan: EpochSeeds | None = None
        self.batch_size = 1

    def __len__(self) -> int:
        return 0 if self.plan is None else len(self.plan.order) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.batch_size // self.world
        order, seeds = self.plan.order.tolist(), self.plan.seeds.tolist()
        for k in range(len(self)):
            start = k * self.batch_size + self.rank * share
            yield list(zip(order[start:start + share], seeds[start:start + share]))


def worker_data_loader(dataset: Dataset, *, workers: int, device: torch.device, prefetch: int = 2,
                       **kwargs) -> DataLoader:
    """A DataLoader of ``workers`` persistent processes, pinning memory for a CUDA device."""
    check_int("workers", workers, 0)
    return DataLoader(
        dataset, num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        prefetch_factor=check_int("prefetch", prefetch, 1) if workers > 0 else None, **kwargs,
    )


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (..., C, H, W) -> (x / 255 - mean[c]) / std[c] in float32: a transform's last steps, batched."""
    return v2.functional.normalize(v2.functional.to_dtype(x, torch.float32, scale=True), list(mean), list(std))


def to_device(batches: Iterable[Batch], device: torch.device, stats: Stats | None = None) -> Iterator[Batch]:
    """Batches moved to `device`, then normalized with stats = (mean, std) when given.

    Normalizing after the move sends uint8 through the worker queues and the PCIe bus,
    a quarter of float32's bytes, and leaves the arithmetic to the device.
    """
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        yield (x if stats is None else normalize(x, *stats)), y.to(device, non_blocking=True)


class PlannedLoader(EpochLoader):
    """Shuffled, drop_last training batches of this rank's share, made by worker processes
    from a ``dataset`` indexed by (index, seed) keys over ``n`` examples.

    `batch_size` is the global batch size (all ranks together), required to be a
    multiple of `world`; each rank yields batches of batch_size // world images, and
    `len(loader)` is the number of global batches per epoch, the same on every rank.
    With stats = (mean, std) the dataset's uint8 output is normalized on `device`.
    """

    def __init__(self, dataset: Dataset, n: int, *, batch_size: int, seed: int = 0, passes: int = 1,
                 rank: int = 0, world: int = 1, workers: int = 0, prefetch: int = 2,
                 device: str | torch.device = "cpu", stats: Stats | None = None) -> None:
        self._n = n
        self.device, self.stats = torch.device(device), stats
        super().__init__(batch_size=batch_size, seed=check_int("seed", seed, 0), passes=passes, rank=rank,
                         world=world)
        self._sampler = PlannedShares(rank, world)
        self._loader = worker_data_loader(dataset, workers=workers, device=self.device, prefetch=prefetch,
                                          batch_sampler=self._sampler)

    @property
    def n_examples(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Batch]:
        self._check_epoch()
        # Drawn now, not lazily, so that state_dict() after iter() already covers this epoch.
        self._sampler.plan = self._draw_epoch()
        self._sampler.batch_size = self.batch_size
        self._begin_epoch()
        return to_device(iter(self._loader), self.device, self.stats)

    def _draw_epoch(self) -> EpochSeeds:
        plan = draw_passes_plan(self.n_examples, passes=self.passes, shuffle=True, augment="none", pad=0,
                                generator=self._generator)
        seeds = torch.randint(0, SEED_BOUND, (len(plan.order),), generator=self._generator)
        return EpochSeeds(plan.order, seeds)


class WorkerLoader(PlannedLoader):
    """A set held in memory, its images `transform`ed one by one (uint8 NCHW in, a
    model-ready tensor out) by `workers` processes (0: in the calling process).

    `images` and `labels` are moved to CPU shared memory, so worker processes read them
    without copies; the workers persist across epochs.
    """

    def __init__(self, images: Tensor, labels: Tensor, *, transform: Callable[[Tensor], Tensor],
                 batch_size: int, passes: int = 1, seed: int = 0, workers: int = 0, rank: int = 0,
                 world: int = 1, device: str | torch.device = "cpu") -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 NCHW, got {images.dtype} of shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(labels)}")
        self.images = images.cpu().contiguous().share_memory_()
        self.labels = labels.cpu().contiguous().share_memory_()
        super().__init__(SeededImages(self.images, self.labels, transform), len(self.images), batch_size=batch_size,
                         seed=seed, passes=passes, rank=rank, world=world, workers=workers, device=device)
