"""Image-folder data sets read from disk batch by batch, for sets that do not fit in memory (ImageNet).

`open_streaming` scans `<root>/train/<class>/*` and `<root>/val/<class>/*` (or `test/`,
the layout of ``imagefolder:`` sets) once (:mod:`samtune.data.folders`) into a
`StreamingData`; DataLoader worker processes then decode and crop every image each time
it is used, and hand over uint8 batches that are normalized once on the trial's device.
Labels follow torchvision's ImageFolder: class index = position of the folder name in
sorted order.

Training (`StreamingLoader`) is a :class:`~samtune.data.worker_loader.PlannedLoader`:
built for data-parallel trials, its *global* batch size may change between epochs, and
rank r of `world` yields the r-th share of each global batch; batches depend neither on
the number of loader workers nor on the world size. Evaluation (`EvalLoader`) shards a
split into contiguous pieces that cover every image exactly once; `combine_totals` turns
the ranks' summed (loss_sum, wrong, count) into the global mean loss and error.

No Ray here: rank and world size are plain integers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from samtune.checks import DatasetError, check_choice, check_int, check_rank
from samtune.data.augment import seeded
from samtune.data.catalogue import CATALOGUE, data_root, image_folder_path, is_image_folder
from samtune.data.folders import Samples, scan_image_folder
from samtune.data.worker_loader import (
    PlannedLoader,
    Stats,
    normalize,
    to_device,
    worker_data_loader,
)

IMAGENET = CATALOGUE["imagenet"]
IMAGENET_MEAN, IMAGENET_STD = IMAGENET.mean, IMAGENET.std
SPLITS = ("train", "test")
DECODERS = ("torchvision", "pil")
__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EvalLoader", "EvalTotals", "StreamingData", "StreamingLoader",
           "combine_totals", "decode_torchvision", "eval_transform", "normalize", "open_streaming",
           "shard_bounds", "train_transform"]


# ---------------------------------------------------------------------------------------
# Transforms and decoding


def train_transform(
    size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, *, normalize: bool = True
) -> v2.Compose:
    """The standard ImageNet training transform of a uint8 (3, H, W) image, to float32 (3, size, size).

    normalize=False stops at the uint8 crop; the loaders use it and normalize after the transfer.
    """
    steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    return v2.Compose(steps + (_normalize_steps(mean, std) if normalize else []))


def eval_transform(
    size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, *, normalize: bool = True
) -> v2.Compose:
    """Resize the shorter side to size * 256/224 (256 for 224), centre crop, normalize: no randomness."""
    steps = [v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)]
    return v2.Compose(steps + (_normalize_steps(mean, std) if normalize else []))


def _normalize_steps(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def decode_torchvision(path: str) -> Tensor:
    """uint8 (3, H, W) RGB; the format is read from the bytes, so a PNG named .JPEG still decodes."""
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(path, mode=ImageReadMode.RGB)


def decode_pil(path: str) -> Tensor:
    """uint8 (3, H, W) RGB through PIL, as torchvision's ImageFolder loader reads images."""
    from torchvision.datasets.folder import pil_loader

    return v2.functional.pil_to_tensor(pil_loader(path))


DECODE: dict[str, Callable[[str], Tensor]] = {"torchvision": decode_torchvision, "pil": decode_pil}


# ---------------------------------------------------------------------------------------
# Data sets seen by the loader workers


class FolderImages(Dataset):
    """dataset[i] = (transform(image i), label i): deterministic transforms (evaluation)."""

    def __init__(self, samples: Samples, transform: Callable[[Tensor], Tensor], decoder: str) -> None:
        self.samples, self.transform, self.decode = samples, transform, DECODE[decoder]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.decode(self.samples.path(i))), int(self.samples.labels[i])


class SeededFolderImages(FolderImages):
    """dataset[(i, seed)] = image i transformed under ``seed`` (a training loader's key).

    The seed travels with every key rather than living here: persistent workers hold
    copies of this object made when they started, which a resumed loader cannot reach.
    """

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = key
        return seeded(self.transform, self.decode(self.samples.path(index)), seed), int(self.samples.labels[index])


# ---------------------------------------------------------------------------------------
# Training


class StreamingLoader(PlannedLoader):
    """Shuffled, drop_last training batches of this rank's share of a split on disk,
    decoded and `transform`ed (decoded uint8 (3, H, W) to a fixed-size uint8 tensor) by
    loader workers, normalized with stats = (mean, std) once on `device`."""

    def __init__(self, samples: Samples, *, transform: Callable[[Tensor], Tensor], batch_size: int,
                 stats: Stats | None = None, seed: int = 0, rank: int = 0, world: int = 1, passes: int = 1,
                 workers: int = 0, prefetch: int = 2, decoder: str = "torchvision",
                 device: str | torch.device = "cpu") -> None:
        check_choice("decoder", decoder, DECODERS)
        self.samples = samples
        super().__init__(SeededFolderImages(samples, transform, decoder), len(samples), batch_size=batch_size,
                         seed=seed, passes=passes, rank=rank, world=world, workers=workers, prefetch=prefetch,
                         device=device, stats=stats)


# ---------------------------------------------------------------------------------------
# Evaluation


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous shard of n items; shard sizes differ by at most one."""
    check_rank(rank, world)
    return n * rank // world, n * (rank + 1) // world


class EvalLoader:
    """In-order batches of this rank's contiguous shard of a split, evaluation transform.

    Across ranks 0..world-1 the shards cover every image exactly once (no padding
    duplicates, unlike DistributedSampler), so summed totals give exact means; a rank
    may get one image fewer than another, or none at all when world > n.
    """

    def __init__(
        self,
        samples: Samples,
        *,
        transform: Callable[[Tensor], Tensor],
        batch_size: int,
        stats: Stats | None = None,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        prefetch: int = 2,
        decoder: str = "torchvision",
        device: str | torch.device = "cpu",
    ) -> None:
        check_choice("decoder", decoder, DECODERS)
        self.start, self.stop = shard_bounds(len(samples), rank, world)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.device, self.stats = torch.device(device), stats
        self._loader = worker_data_loader(
            torch.utils.data.Subset(FolderImages(samples, transform, decoder), range(self.start, self.stop)),
            workers=workers, device=self.device, prefetch=prefetch, batch_size=batch_size, shuffle=False,
        )

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return to_device(self._loader, self.device, self.stats)


class EvalTotals(NamedTuple):
    """One rank's sums over its shard: summed per-example loss, misclassified images, images."""

    loss_sum: float
    wrong: int
    count: int


def combine_totals(totals: Iterable[Sequence[float]]) -> tuple[float, float]:
    """(mean loss, error) over all ranks from their (loss_sum, wrong, count), or from one all-reduced triple."""
    loss_sum = wrong = count = 0
    for part in totals:
        part_loss, part_wrong, part_count = (float(v) for v in part)
        loss_sum, wrong, count = loss_sum + part_loss, wrong + part_wrong, count + part_count
    if count <= 0:
        raise ValueError("no examples in the totals: count summed to 0")
    return loss_sum / count, wrong / count


# ---------------------------------------------------------------------------------------
# The data set


class StreamingData:
    """An image-folder data set on disk: both splits' file lists, the image size and normalization.

    `num_classes`, `classes`, `image_size`, `mean`, `std` mirror `samtune.data.TensorData`;
    the held-out split is called "test" whether its folder is val/ or test/.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        decoder: str = "torchvision",
        name: str | None = None,
    ) -> None:
        check_choice("decoder", decoder, DECODERS)
        self.name = name or f"imagefolder:{folder}"  # the trial's dataset key
        self.image_size = check_int("size", size, 1)
        self.mean, self.std, self.decoder = tuple(mean), tuple(std), decoder
        scanned = scan_image_folder(folder)
        self.folder, self.classes = scanned.folder, scanned.classes
        self.train, self.test = scanned.train, scanned.test

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Samples:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self.train if name == "train" else self.test

    def train_loader(
        self, *, batch_size: int, seed: int, rank: int = 0, world: int = 1, passes: int = 1, workers: int = 0,
        prefetch: int = 2, device: str | torch.device = "cpu",
    ) -> StreamingLoader:
        """This rank's training loader; `batch_size` is the global batch size."""
        return StreamingLoader(
            self.train, transform=train_transform(self.image_size, normalize=False), batch_size=batch_size,
            stats=(self.mean, self.std), seed=seed, rank=rank, world=world, passes=passes, workers=workers,
            prefetch=prefetch, decoder=self.decoder, device=device,
        )

    def eval_loader(
        self, split: str, *, batch_size: int, rank: int = 0, world: int = 1, workers: int = 0, prefetch: int = 2,
        device: str | torch.device = "cpu",
    ) -> EvalLoader:
        """This rank's shard of `split` ("train" or "test"), in order; `batch_size` is per rank."""
        return EvalLoader(
            self.split(split), transform=eval_transform(self.image_size, normalize=False),
            batch_size=batch_size, stats=(self.mean, self.std), rank=rank, world=world, workers=workers,
            prefetch=prefetch, decoder=self.decoder, device=device,
        )

    def fixed_examples(
        self, n: int, *, workers: int = 0, batch_size: int = 256, device: str | torch.device = "cpu",
    ) -> tuple[Tensor, Tensor]:
        """The first n training images in data-set order, evaluation transform, as (x, y) tensors.

        The set on which sharpness is measured and train error estimated; the same on every rank.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self.train):
            raise ValueError(f"n must be an int in [1, {len(self.train)}], got {n!r}")
        dataset = torch.utils.data.Subset(
            FolderImages(self.train, eval_transform(self.image_size, normalize=False), self.decoder), range(n)
        )
        loader = DataLoader(dataset, batch_size=check_int("batch_size", batch_size, 1), num_workers=workers)
        xs, ys = zip(*to_device(loader, torch.device(device), (self.mean, self.std)))
        return torch.cat(xs), torch.cat(ys)


def open_streaming(
    name: str, *, root: str | os.PathLike[str] | None = None, size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, decoder: str = "torchvision",
) -> StreamingData:
    """"imagenet" (its catalogue folder under `data_root(root)`) or "imagefolder:<path>", as a StreamingData."""
    if name == IMAGENET.name:
        folder = IMAGENET.path(data_root(root))
        problem = IMAGENET.missing(data_root(root))
        if problem:
            raise DatasetError(f"{problem}. {IMAGENET.instructions}")
    elif is_image_folder(name):
        folder = image_folder_path(name)
    else:
        raise ValueError(f"streaming dataset must be {IMAGENET.name!r} or 'imagefolder:<path>', got {name!r}")
    return StreamingData(folder, size=size, mean=mean, std=std, decoder=decoder, name=name)
