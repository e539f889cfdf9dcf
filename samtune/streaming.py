"""Image-folder data sets read from disk batch by batch, for sets that do not fit in memory (ImageNet).

`open_streaming` scans `<root>/train/<class>/*` and `<root>/val/<class>/*` (or `test/`,
the layout of ``imagefolder:`` sets) once into a `StreamingData`; DataLoader worker
processes then decode and crop every image each time it is used, and hand over uint8
batches that are normalized once on the trial's device. Labels follow
torchvision's ImageFolder: class index = position of the folder name in sorted order.

Training (`StreamingLoader`) is built for data-parallel trials: an epoch is one
permutation drawn from (seed, epoch), the same on every rank; the *global* batch size
can be changed between epochs, and rank r of `world` yields the r-th contiguous share of
each global batch, so the ranks' shares of step k make up global batch k of the
single-process order. Image k of an epoch is augmented under a seed that is a function
of (seed, epoch, k) alone, so batches depend neither on the number of loader workers nor
on the world size. Evaluation (`EvalLoader`) shards a split into contiguous pieces that
cover every image exactly once; `combine_totals` turns the ranks' summed
(loss_sum, wrong, count) into the global mean loss and error.

No Ray here: rank and world size are plain integers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from samtune.data import DatasetNotFound
from samtune.data_files import IMAGENET_FOLDER, data_root
from samtune.schema import IMAGEFOLDER_PREFIX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HELD_OUT_FOLDERS = ("val", "test")  # val/ is ImageNet's name, test/ the imagefolder: layout's
SPLITS = ("train", "test")
DECODERS = ("torchvision", "pil")
# Tag mixed into every seed so streaming draws never coincide with another generator seeded by `seed`.
STREAM_TAG = 0x73747265616D
MASK64 = 2**64 - 1
Stats = tuple[Sequence[float], Sequence[float]]  # (mean, std) per channel


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


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (..., C, H, W) -> (x / 255 - mean[c]) / std[c] in float32: the transforms' last steps, batched."""
    return v2.functional.normalize(v2.functional.to_dtype(x, torch.float32, scale=True), list(mean), list(std))


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
# Randomness: functions of (seed, epoch, position), so that no state but the epoch count is needed


@functools.lru_cache(maxsize=4)
def _epoch_key(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([STREAM_TAG, seed, epoch]).generate_state(1, np.uint64)[0])


def image_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the image at `position` of `epoch`'s order (positions count across passes).

    SplitMix64's output function (a bijection of 64-bit words) of the epoch's key +
    position: distinct positions give distinct, well-mixed seeds at ~1 us each, where a
    SeedSequence per image costs ~15x that.
    """
    z = (_epoch_key(seed, epoch) + position * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def epoch_order(seed: int, epoch: int, n: int, passes: int = 1) -> Tensor:
    """The epoch's order of example indices: `passes` permutations of range(n), each drawn from (seed, epoch, pass)."""
    perms = []
    for p in range(passes):
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([STREAM_TAG, seed, epoch, p, n]).generate_state(1, np.uint64)[0] >> 2)
        )
        perms.append(torch.randperm(n, generator=generator))
    return torch.cat(perms)


# ---------------------------------------------------------------------------------------
# File lists


class Samples(NamedTuple):
    """One split's images: files[i] (relative to `folder`, as bytes) has label labels[i].

    Numpy arrays rather than a list of (path, label) tuples: forked loader workers touch
    every Python object's reference count, which copies a list's pages into each worker
    (1.28M ImageNet paths: hundreds of MB per worker); an array's buffer stays shared.
    """

    folder: str
    files: np.ndarray
    labels: np.ndarray

    def path(self, i: int) -> str:
        return os.path.join(self.folder, os.fsdecode(self.files[i]))

    def __len__(self) -> int:
        return len(self.labels)


def _scan(folder: Path, class_to_idx: dict[str, int], *, require_every_class: bool) -> Samples:
    """Every image under folder/<class>/, sorted by class then path (torchvision's make_dataset)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    pairs = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if require_every_class:
        seen = {c for _, c in pairs}
        empty = sorted(name for name, c in class_to_idx.items() if c not in seen)
        if empty:
            raise DatasetNotFound(
                f"class folders with no images under {folder}: {empty[:10]}{' ...' if len(empty) > 10 else ''}; "
                f"every class needs at least one file with an extension in {IMG_EXTENSIONS}"
            )
    if not pairs:
        raise DatasetNotFound(f"no images with extensions {IMG_EXTENSIONS} under {folder}/<class>/")
    files = np.array([os.fsencode(os.path.relpath(p, folder)) for p, _ in pairs], dtype=np.bytes_)
    labels = np.array([c for _, c in pairs], dtype=np.int64)
    return Samples(str(folder), files, labels)


def _held_out_folder(root: Path) -> Path:
    for name in HELD_OUT_FOLDERS:
        if (root / name).is_dir():
            return root / name
    raise DatasetNotFound(
        f"no held-out split at {root}: expected {root / 'val'}/<class>/* (ImageNet) or {root / 'test'}/<class>/*"
    )


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
    """dataset[(i, seed, epoch, position)] = image i transformed under image_seed(seed, epoch, position).

    The seed travels with every key rather than living here: persistent workers hold
    copies of this object made when they started, which a resumed loader cannot reach.
    """

    def __getitem__(self, key: tuple[int, int, int, int]) -> tuple[Tensor, int]:
        index, seed, epoch, position = key
        image = self.decode(self.samples.path(index))
        with torch.random.fork_rng(devices=[]):
            # v2 transforms draw only from the global CPU generator; not torch.manual_seed,
            # which also seeds every CUDA device
            torch.default_generator.manual_seed(image_seed(seed, epoch, position))
            return self.transform(image), int(self.samples.labels[index])


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_rank(rank: int, world: int) -> None:
    _check_int("world", world, 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an int in [0, {world - 1}] for world {world}, got {rank!r}")


def _data_loader(dataset: Dataset, *, workers: int, device: torch.device, prefetch: int, **kwargs) -> DataLoader:
    _check_int("workers", workers, 0)
    return DataLoader(
        dataset, num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        prefetch_factor=_check_int("prefetch", prefetch, 1) if workers > 0 else None, **kwargs,
    )


def _to_device(
    batches: Iterable[tuple[Tensor, Tensor]], device: torch.device, stats: Stats | None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches moved to `device`, then normalized with stats = (mean, std) when given.

    Normalizing after the move sends uint8 through the worker queues and the PCIe bus,
    a quarter of float32's bytes, and leaves the arithmetic to the device.
    """
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        yield (x if stats is None else normalize(x, *stats)), y.to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------
# Training


class ShareSampler:
    """Batch sampler: this rank's share of every global batch of the current epoch, as
    (index, seed, epoch, position) keys; the final partial global batch is dropped."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.order: Tensor | None = None
        self.seed = self.epoch = 0
        self.batch_size = 1

    def __len__(self) -> int:
        return 0 if self.order is None else len(self.order) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        share = self.batch_size // self.world
        for k in range(len(self)):
            start = k * self.batch_size + self.rank * share
            indices = self.order[start : start + share].tolist()
            yield [(i, self.seed, self.epoch, start + j) for j, i in enumerate(indices)]


class StreamingLoader:
    """Shuffled, drop_last training batches of this rank's share, decoded by loader workers.

    `transform` maps a decoded uint8 (3, H, W) image to a fixed-size tensor; with
    stats = (mean, std) its uint8 output is normalized once the batch is on `device`.

    `batch_size` is the global batch size (all ranks together), a plain attribute read
    when an epoch starts and required to be a multiple of `world`; each rank yields
    batches of batch_size // world images. `len(loader)` is the number of global batches
    per epoch, the same on every rank, so the ranks step together.

    `state_dict()` holds the seed and the epoch count, the contract of
    `samtune.data.DeviceLoader`: taken between epochs, a restored loader yields exactly
    the batches the original would have; taken during an epoch, it resumes at the next
    one. The global order does not depend on rank or world, so a trial may also resume
    on a different number of workers.
    """

    def __init__(
        self,
        samples: Samples,
        *,
        transform: Callable[[Tensor], Tensor],
        batch_size: int,
        stats: Stats | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        passes: int = 1,
        workers: int = 0,
        prefetch: int = 2,
        decoder: str = "torchvision",
        device: str | torch.device = "cpu",
    ) -> None:
        _check_rank(rank, world)
        _check_decoder(decoder)
        self.samples = samples
        self.rank, self.world = rank, world
        self.seed = _check_int("seed", seed, 0)
        self.passes = _check_int("passes", passes, 1)
        self.batch_size = batch_size
        self.epoch = 0
        self.device, self.stats = torch.device(device), stats
        self._sampler = ShareSampler(rank, world)
        self._loader = _data_loader(SeededFolderImages(samples, transform, decoder), workers=workers,
                                    device=self.device, prefetch=prefetch, batch_sampler=self._sampler)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        _check_int("batch_size", value, 1)
        if value % self.world:
            raise ValueError(
                f"global batch_size {value} is not divisible by world size {self.world}: every rank must get an "
                f"equal share (use a multiple of {self.world})"
            )
        self._batch_size = value

    @property
    def examples_per_epoch(self) -> int:
        return len(self.samples) * self.passes

    def __len__(self) -> int:
        """Global batches per epoch at the current batch size."""
        return self.examples_per_epoch // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if len(self) == 0:
            raise ValueError(
                f"batch_size {self.batch_size} exceeds the {self.examples_per_epoch} examples of an epoch: "
                "with drop_last an epoch would have no batches"
            )
        # Set now, not lazily, so that state_dict() after iter() already covers this epoch.
        self._sampler.order = epoch_order(self.seed, self.epoch, len(self.samples), self.passes)
        self._sampler.seed, self._sampler.epoch, self._sampler.batch_size = self.seed, self.epoch, self.batch_size
        self.epoch += 1
        return _to_device(self._loader, self.device, self.stats)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"seed", "epoch"} - set(state)
        if missing:
            raise ValueError(f"loader state is missing keys {sorted(missing)}, got keys {sorted(state)}")
        self.seed = _check_int("seed", int(state["seed"]), 0)
        self.epoch = int(state["epoch"])


# ---------------------------------------------------------------------------------------
# Evaluation


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous shard of n items; shard sizes differ by at most one."""
    _check_rank(rank, world)
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
        _check_decoder(decoder)
        self.start, self.stop = shard_bounds(len(samples), rank, world)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.device, self.stats = torch.device(device), stats
        self._loader = _data_loader(
            torch.utils.data.Subset(FolderImages(samples, transform, decoder), range(self.start, self.stop)),
            workers=workers, device=self.device, prefetch=prefetch, batch_size=batch_size, shuffle=False,
        )

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return _to_device(self._loader, self.device, self.stats)


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


def _check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")


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
        from torchvision.datasets.folder import find_classes

        _check_decoder(decoder)
        self.name = name or f"{IMAGEFOLDER_PREFIX}{folder}"  # the trial's dataset key
        self.image_size = _check_int("size", size, 1)
        self.mean, self.std, self.decoder = tuple(mean), tuple(std), decoder
        self.folder = Path(folder).expanduser()
        train_dir = self.folder / "train"
        if not train_dir.is_dir():
            raise DatasetNotFound(
                f"no image folder at {self.folder}: expected {train_dir}/<class>/* and {self.folder / 'val'}/<class>/* "
                f"(or {self.folder / 'test'}/<class>/*), torchvision's ImageFolder layout"
            )
        held_out = _held_out_folder(self.folder)
        classes, class_to_idx = find_classes(str(train_dir))
        unknown = sorted(set(find_classes(str(held_out))[0]) - set(classes))
        if unknown:
            raise ValueError(f"{held_out} has classes with no train folder: {unknown[:10]}; train has {len(classes)}")
        self.classes = tuple(classes)
        self.train = _scan(train_dir, class_to_idx, require_every_class=True)
        self.test = _scan(held_out, class_to_idx, require_every_class=False)

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
        loader = DataLoader(dataset, batch_size=_check_int("batch_size", batch_size, 1), num_workers=workers)
        xs, ys = zip(*_to_device(loader, torch.device(device), (self.mean, self.std)))
        return torch.cat(xs), torch.cat(ys)


def open_streaming(
    name: str, *, root: str | os.PathLike[str] | None = None, size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, decoder: str = "torchvision",
) -> StreamingData:
    """"imagenet" (the folder `imagenet` under `data_root(root)`) or "imagefolder:<path>", as a StreamingData."""
    if name == IMAGENET_FOLDER:
        folder = data_root(root) / IMAGENET_FOLDER
    elif isinstance(name, str) and name.startswith(IMAGEFOLDER_PREFIX) and name != IMAGEFOLDER_PREFIX:
        folder = Path(name[len(IMAGEFOLDER_PREFIX):])
    else:
        raise ValueError(f"streaming dataset must be {IMAGENET_FOLDER!r} or 'imagefolder:<path>', got {name!r}")
    return StreamingData(folder, size=size, mean=mean, std=std, decoder=decoder, name=name)
