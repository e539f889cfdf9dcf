"""Data sets held as device tensors, and a loader whose batch size can change every epoch.

A trial loads its data set once (`load_dataset`) into a `TensorData`: float32 images,
NCHW, already normalized per channel, plus int64 labels, all on the trial's device.
Float32 rather than uint8 costs 4x the memory (CIFAR: 0.6 GB train, Tiny-ImageNet:
4.9 GB) but means every consumer (training, evaluation, sharpness measures through
`fixed_batches`) receives model-ready tensors and no code path can forget to normalize.

`DeviceLoader` then yields slices of a per-epoch permutation, with random crop and
horizontal flip done as batched tensor ops on the data's device, the way
airbench's `CifarLoader` (KellerJordan/airbench, `batch_crop`, `batch_flip_lr`) does
it: no worker processes, no per-sample Python. Its `batch_size` is a plain attribute
read when an epoch starts, which is what an increasing-batch schedule needs
(Harada & Iiduka 2024 rebuild a DataLoader per stage instead).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from samtune import schema
from samtune.data_files import TINY_IMAGENET_FOLDER, data_root, tiny_imagenet_missing
from samtune.device_augment import DevicePolicy, PolicyDraws, policy_channels_check

AUGMENTS = schema.AUGMENTS
PAD_MODES = ("constant", "reflect")
IMAGEFOLDER_PREFIX = schema.IMAGEFOLDER_PREFIX

# Per-channel statistics of the training sets, as used by the reference code:
# CIFAR-100 values from iiduka-researches/GSAM_batch_inc (seed_facts C2); CIFAR-10 are the
# population std of the train set (not the often-copied per-image 0.2023/0.1994/0.2010);
# Tiny-ImageNet are its train-set statistics, in wide use since the CS231n release.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
TINY_IMAGENET_MEAN, TINY_IMAGENET_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)

DIGITS_TEST_SIZE = 1000

DOWNLOAD_HINT = "pass download=True to load_dataset (CLI: --set download=true)"


class DatasetNotFound(FileNotFoundError):
    """A data set is not where it was looked for; the message says where and how to get it."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq on tensors is ambiguous: compare by identity
class TensorData:
    """One data set, both splits, as tensors on one device.

    Images are float32 NCHW with x = (pixel/255 - mean[c]) / std[c] (digits: pixel/16);
    labels are int64 in [0, num_classes). `augment` is the set's default training
    augmentation and `pad` the crop padding it uses (image_size // 8: 4 for 32x32
    CIFAR, 8 for 64x64 Tiny-ImageNet, the same relative shift).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    in_channels: int
    image_size: int
    augment: str
    pad: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    @property
    def pad_fill(self) -> tuple[float, ...]:
        """Per-channel value of a black pixel after normalization, (0 - mean) / std.

        Padding with it reproduces torchvision's RandomCrop(padding=p), which pads the
        un-normalized image with zeros before Normalize (Harada's and Khanh's pipelines).
        """
        return tuple(-m / s for m, s in zip(self.mean, self.std))

    def to(self, device: str | torch.device) -> TensorData:
        """The same data set with its four tensors on `device`."""
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )

    def train_loader(
        self, *, batch_size: int, seed: int, augment: str | None = None, passes: int = 1,
        autoaugment: bool = False, erasing: float = 0.0, erasing_max_area: float = 0.4,
        erasing_aspect: float = 0.3,
    ) -> DeviceLoader:
        """Shuffled training loader with drop_last and this set's augmentation settings, plus
        the per-image policies (`samtune.device_augment`) batched on the set's device."""
        policy = DevicePolicy(self.mean, self.std, autoaugment=autoaugment, erasing=erasing,
                              erasing_max_area=erasing_max_area, erasing_aspect=erasing_aspect)
        return DeviceLoader(
            self.train_x, self.train_y, batch_size=batch_size, shuffle=True, drop_last=True,
            augment=self.augment if augment is None else augment,
            pad=self.pad, fill=self.pad_fill, seed=seed, passes=passes,
            policy=policy if policy.active else None,
        )

    def eval_loader(self, split: str, *, batch_size: int) -> DeviceLoader:
        """In-order loader over every example of `split` ("train" or "test"), no augmentation."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        return DeviceLoader(x, y, batch_size=batch_size, shuffle=False, drop_last=False)


# ---------------------------------------------------------------------------------------
# Augmentation: random crop with padding + horizontal flip, batched


class EpochPlan(NamedTuple):
    """Everything random about one epoch, indexed by position in the epoch.

    order[k] is the example at position k; top[k], left[k] in [0, 2*pad] are its crop
    offsets in the padded image and flip[k] whether it is mirrored (None without
    augmentation). Drawn for all n positions, so the plan does not depend on batch size.
    """

    order: Tensor | None
    top: Tensor | None
    left: Tensor | None
    flip: Tensor | None


def draw_epoch_plan(
    n: int, *, shuffle: bool, augment: str, pad: int, generator: torch.Generator
) -> EpochPlan:
    """Draw one epoch's permutation, crop offsets and flip flags from a CPU `generator`.

    Drawing on the CPU keeps the batches identical on every device for a given seed.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    order = torch.randperm(n, generator=generator) if shuffle else None
    if augment == "none":
        return EpochPlan(order, None, None, None)
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return EpochPlan(order, top, left, flip)


def draw_passes_plan(
    n: int, *, passes: int, shuffle: bool, augment: str, pad: int, generator: torch.Generator
) -> EpochPlan:
    """`passes` plans drawn one after the other, concatenated: an epoch of passes * n positions.

    Each pass is a fresh permutation with fresh augmentation (Harada's RASampler with
    len_factor = passes and one repetition); passes=1 is exactly `draw_epoch_plan`.
    """
    plans = [draw_epoch_plan(n, shuffle=shuffle, augment=augment, pad=pad, generator=generator)
             for _ in range(passes)]
    if passes == 1:
        return plans[0]
    if not shuffle:
        plans = [plan._replace(order=torch.arange(n)) for plan in plans]
    return EpochPlan(*(None if parts[0] is None else torch.cat(parts) for parts in zip(*plans)))


def crop_flip(
    x: Tensor,
    top: Tensor,
    left: Tensor,
    flip: Tensor,
    *,
    pad: int,
    pad_mode: str = "constant",
    fill: float | Sequence[float] = 0.0,
) -> Tensor:
    """Per-sample crop of the padded batch, then mirror.

    With P = x padded by `pad` on every side (constant `fill`, per channel if a
    sequence, or reflection), out[b, c, i, j] = P[b, c, top[b] + i, left[b] + j'] where
    j' = W - 1 - j if flip[b] else j. This is torchvision's RandomCrop(size, padding=pad)
    followed by RandomHorizontalFlip with the offsets and flags given.
    """
    batch, _, height, width = x.shape
    device = x.device
    # unfold gives a view of every (2*pad+1)^2 window, so picking one per sample is a
    # gather with (B,) indices: ~5x faster on CPU than indexing with (B, C, H, W) grids.
    windows = pad_images(x, pad, pad_mode=pad_mode, fill=fill).unfold(2, height, 1).unfold(3, width, 1)
    crops = windows[torch.arange(batch, device=device), :, top.to(device), left.to(device)]
    return torch.where(flip.to(device)[:, None, None, None], crops.flip(-1), crops)


def pad_images(
    x: Tensor, pad: int, *, pad_mode: str = "constant", fill: float | Sequence[float] = 0.0
) -> Tensor:
    """Pad an NCHW batch by `pad` pixels on each side with `fill` (scalar or per channel) or reflection."""
    if pad == 0:
        return x
    if pad_mode == "reflect":
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if isinstance(fill, (int, float)):
        return F.pad(x, (pad, pad, pad, pad), value=float(fill))
    if len(fill) != x.shape[1]:
        raise ValueError(f"fill must have one value per channel ({x.shape[1]}), got {tuple(fill)!r}")
    batch, channels, height, width = x.shape
    fill_values = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, channels, 1, 1)
    padded = fill_values.expand(batch, channels, height + 2 * pad, width + 2 * pad).clone()
    padded[:, :, pad : pad + height, pad : pad + width] = x
    return padded


# ---------------------------------------------------------------------------------------
# Loader


class EpochLoader:
    """The contract of a training loader: ``batch_size`` may be set between epochs, and
    all of an epoch's randomness is drawn from the loader's own generator when the epoch
    starts, so ``state_dict()`` (generator and epoch count) taken between epochs makes a
    restored loader yield exactly the batches the original would have."""

    _generator: torch.Generator
    epoch: int

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {value!r}")
        self._batch_size = value

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"generator", "epoch"} - set(state)
        if missing:
            raise ValueError(f"loader state is missing keys {sorted(missing)}, got keys {sorted(state)}")
        self._generator.set_state(state["generator"].cpu())
        self.epoch = int(state["epoch"])


class DeviceLoader(EpochLoader):
    """Iterate (x, y) batches of tensors that already sit on their device.

    Each `iter()` is one epoch: it draws an `EpochPlan` from the loader's own seeded
    CPU generator and yields consecutive slices of it. `batch_size` may be set between
    epochs; the permutation and augmentation of an epoch do not depend on it.
    drop_last=True (training, as in Harada's code) drops the final partial batch;
    shuffle=False, drop_last=False covers every example once, in order.

    With `passes` > 1 an epoch is that many passes over the data, each with its own
    permutation and augmentation, concatenated: batches straddle passes and only the
    final partial batch of the whole epoch is dropped.

    `state_dict()` holds the generator state and the epoch count. Taken between
    epochs, it makes a restored loader yield exactly the batches the original would
    have; taken during an epoch, it resumes at the next one (the current epoch's
    randomness was drawn when it started).

    crop_flip pads by `pad` pixels with `fill` (a scalar or one value per channel; see
    TensorData.pad_fill) or, with pad_mode="reflect", by reflection.

    A `policy` (AutoAugment, RandomErasing; `samtune.device_augment`) acts after crop and
    flip, on whole batches. Its per-image draws (`PolicyDraws`) are the epoch plan's
    companion: drawn from the same generator right after the plan, for every position of
    the epoch, so they too resume with `state_dict()` and do not depend on batch size.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: str = "none",
        pad: int = 4,
        pad_mode: str = "constant",
        fill: float | Sequence[float] = 0.0,
        seed: int = 0,
        passes: int = 1,
        policy: DevicePolicy | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if x.device != y.device:
            raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if augment == "crop_flip" and x.dim() != 4:
            raise ValueError(f"augment='crop_flip' needs NCHW images, got x of shape {tuple(x.shape)}")
        if not isinstance(pad, int) or pad < 0:
            raise ValueError(f"pad must be an int >= 0, got {pad!r}")
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes must be an int >= 1, got {passes!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if pad_mode == "reflect" and augment == "crop_flip" and pad >= min(x.shape[-2:]):
            raise ValueError(f"pad must be smaller than the image for pad_mode='reflect', got {pad!r}")
        if policy is not None:
            policy_channels_check(policy, x)
        self.x, self.y = x, y
        self.policy = policy
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.augment, self.pad, self.pad_mode, self.fill = augment, pad, pad_mode, fill
        self.passes = passes
        self.epoch = 0
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        """Number of batches in an epoch at the current batch size."""
        n = len(self.x) * self.passes
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n_batches = len(self)
        if n_batches == 0 and len(self.x) > 0:
            raise ValueError(
                f"batch_size {self.batch_size} exceeds the {len(self.x) * self.passes} examples of an epoch: "
                "with drop_last=True an epoch would have no batches"
            )
        # Drawn now, not lazily, so that state_dict() after iter() already covers this epoch.
        plan = draw_passes_plan(
            len(self.x), passes=self.passes, shuffle=self.shuffle, augment=self.augment, pad=self.pad,
            generator=self._generator,
        )
        draws = PolicyDraws(None, None)
        if self.policy is not None:
            draws = self.policy.draw(len(self.x) * self.passes, height=self.x.shape[-2], width=self.x.shape[-1],
                                     generator=self._generator)
        self.epoch += 1
        return self._batches(plan, draws, self.batch_size, n_batches)

    def _batches(self, plan: EpochPlan, draws: PolicyDraws, batch_size: int, n_batches: int):
        device = self.x.device
        # one host-to-device copy per epoch, not per batch; the AutoAugment draws stay on
        # the CPU, where each batch's groups are planned without waiting on the device
        order, top, left, flip, boxes = (None if t is None else t.to(device) for t in (*plan, draws.erasing))
        for k in range(n_batches):
            start, stop = k * batch_size, min((k + 1) * batch_size, len(self.x) * self.passes)
            if order is None:
                xb, yb = self.x[start:stop], self.y[start:stop]
            else:
                index = order[start:stop]
                xb, yb = self.x[index], self.y[index]
            if top is not None:
                xb = crop_flip(
                    xb, top[start:stop], left[start:stop], flip[start:stop],
                    pad=self.pad, pad_mode=self.pad_mode, fill=self.fill,
                )
            if self.policy is not None:
                xb = self.policy.apply(
                    xb, None if draws.autoaugment is None else draws.autoaugment[start:stop],
                    None if boxes is None else boxes[start:stop])
            yield xb, yb



def fixed_batches(x: Tensor, y: Tensor, *, n_examples: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """The first `n_examples` examples in data-set order, unaugmented, in batches of `batch_size`.

    The sharpness evaluation set of tml-epfl/sharpness-vs-generalization (seed_facts C1:
    first 1024 training examples, batches of 128). A final partial batch is kept.
    """
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or not 1 <= n_examples <= len(x):
        raise ValueError(f"n_examples must be an int in [1, {len(x)}], got {n_examples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    bounds = [(start, min(start + batch_size, n_examples)) for start in range(0, n_examples, batch_size)]
    return [(x[start:stop], y[start:stop]) for start, stop in bounds]


# ---------------------------------------------------------------------------------------
# Data sets


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of an NCHW batch."""
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), correction=0)
    return tuple(mean.tolist()), tuple(std.tolist())


def _to_unit_float(images: np.ndarray | Tensor) -> Tensor:
    """uint8 NHWC images -> contiguous float32 NCHW in [0, 1]."""
    images = torch.as_tensor(images)
    return images.permute(0, 3, 1, 2).contiguous().float().div_(255)


def _normalize_(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """In place: x[:, c] = (x[:, c] - mean[c]) / std[c]."""
    shape = (1, len(mean), 1, 1)
    return x.sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))


def _image_data(
    name: str,
    train: Tensor,
    train_y: Sequence[int],
    test: Tensor,
    test_y: Sequence[int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[str],
    augment: str = "crop_flip",
) -> TensorData:
    """TensorData from [0, 1] float NCHW splits, normalized in place with `mean`/`std`."""
    _, channels, height, width = train.shape
    if height != width or test.shape[1:] != train.shape[1:]:
        raise ValueError(
            f"{name}: images must be square and the same size in both splits, got train "
            f"{tuple(train.shape[1:])} and test {tuple(test.shape[1:])} (C, H, W)"
        )
    return TensorData(
        name=name,
        train_x=_normalize_(train, mean, std),
        train_y=torch.as_tensor(np.asarray(train_y), dtype=torch.int64),
        test_x=_normalize_(test, mean, std),
        test_y=torch.as_tensor(np.asarray(test_y), dtype=torch.int64),
        num_classes=len(classes),
        in_channels=channels,
        image_size=height,
        augment=augment,
        pad=height // 8,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        classes=tuple(classes),
    )


def _read_rgb(paths: Sequence[str]) -> np.ndarray:
    """Decode image files into one uint8 (N, H, W, 3) array; every image must have the same size.

    Uses torchvision's ImageFolder loader (PIL), ~0.2 ms per 32x32 JPEG, mostly PIL's
    header parsing. torchvision.io.decode_jpeg on a list is ~3x faster on small JPEGs but
    deprecated since torchvision 0.29.
    """
    from torchvision.datasets.folder import pil_loader

    first = np.asarray(pil_loader(paths[0]))
    images = np.empty((len(paths), *first.shape), dtype=np.uint8)
    for i, path in enumerate(paths):
        image = np.asarray(pil_loader(path))
        if image.shape != first.shape:
            raise ValueError(
                f"all images must have the same size: {paths[0]} is {first.shape[1]}x{first.shape[0]}, "
                f"{path} is {image.shape[1]}x{image.shape[0]} (WxH); resize the folder first"
            )
        images[i] = image
    return images


def _load_digits(root: Path, download: bool) -> TensorData:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), no download needed.

    Pixels are divided by 16 (their maximum) and standardized with the mean and std of all
    training pixels. The stratified split holds out 1000 test images (797 remain for
    training) with random_state=0, whatever the trial seed, so every trial sees the same
    test set: at a few percent test error a trial makes tens of mistakes, enough to rank
    trials by test error (450 test images left one to eight). Default augmentation is
    "none": a mirrored digit is a different symbol or none.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = bunch.data / 16.0
    train, test, train_y, test_y = train_test_split(
        pixels, bunch.target, test_size=DIGITS_TEST_SIZE, random_state=0, stratify=bunch.target
    )
    mean, std = float(train.mean()), float(train.std())
    return _image_data(
        "digits",
        torch.as_tensor(train, dtype=torch.float32).view(-1, 1, 8, 8), train_y,
        torch.as_tensor(test, dtype=torch.float32).view(-1, 1, 8, 8), test_y,
        mean=(mean,), std=(std,), classes=[str(d) for d in range(10)], augment="none",
    )


def _load_cifar(name: str, class_name: str, root: Path, download: bool, mean, std) -> TensorData:
    """CIFAR-10/100 in torchvision's on-disk format, read by torchvision.datasets (md5-checked)."""
    from torchvision import datasets

    dataset_cls = getattr(datasets, class_name)
    folder = root / dataset_cls.base_folder
    if not download and not folder.is_dir():
        raise DatasetNotFound(
            f"{name} not found: looked for {folder} (torchvision's {class_name} format). "
            f"To download it into {root}, {DOWNLOAD_HINT}; or point root / $SAMTUNE_DATA at "
            f"the folder that contains {dataset_cls.base_folder}."
        )
    try:
        train = dataset_cls(str(root), train=True, download=download)
        test = dataset_cls(str(root), train=False, download=False)
    except RuntimeError as err:  # torchvision's "not found or corrupted" (failed md5 check)
        raise DatasetNotFound(
            f"{name} at {folder} is incomplete or corrupted ({err}). Delete {folder} and {DOWNLOAD_HINT}."
        ) from err
    return _image_data(
        name, _to_unit_float(train.data), train.targets, _to_unit_float(test.data), test.targets,
        mean=mean, std=std, classes=train.classes,
    )


def _load_cifar10(root: Path, download: bool) -> TensorData:
    return _load_cifar("cifar10", "CIFAR10", root, download, CIFAR10_MEAN, CIFAR10_STD)


def _load_cifar100(root: Path, download: bool) -> TensorData:
    return _load_cifar("cifar100", "CIFAR100", root, download, CIFAR100_MEAN, CIFAR100_STD)


def _tiny_imagenet_val(val_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) pairs from val/val_annotations.txt: `file<TAB>wnid<TAB>box...` per line."""
    samples = []
    for line_number, line in enumerate((val_dir / "val_annotations.txt").read_text().splitlines(), 1):
        if not line.strip():
            continue
        file_name, wnid = line.split("\t")[:2]
        if wnid not in class_to_idx:
            raise ValueError(
                f"{val_dir / 'val_annotations.txt'} line {line_number}: class {wnid!r} has no train folder"
            )
        samples.append((str(val_dir / "images" / file_name), class_to_idx[wnid]))
    return samples


def _load_tiny_imagenet(root: Path, download: bool) -> TensorData:
    """Tiny-ImageNet-200: train/<wnid>/images/*.JPEG (100k), val/images + val_annotations.txt (10k).

    The labelled val split serves as the test split (the official test split has no labels).
    Grayscale JPEGs are converted to RGB. Crop padding is 8 (image_size // 8).
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    problem = tiny_imagenet_missing(root)
    if problem:
        raise DatasetNotFound(f"{problem}, or point root / $SAMTUNE_DATA at the folder that contains "
                              f"{TINY_IMAGENET_FOLDER}.")
    folder = root / TINY_IMAGENET_FOLDER
    train_dir, val_dir = folder / "train", folder / "val"
    classes, class_to_idx = find_classes(str(train_dir))
    train = make_dataset(str(train_dir), class_to_idx, extensions=IMG_EXTENSIONS)
    test = _tiny_imagenet_val(val_dir, class_to_idx)
    return _image_data(
        "tiny-imagenet",
        _to_unit_float(_read_rgb([p for p, _ in train])), [c for _, c in train],
        _to_unit_float(_read_rgb([p for p, _ in test])), [c for _, c in test],
        mean=TINY_IMAGENET_MEAN, std=TINY_IMAGENET_STD, classes=classes,
    )


def load_imagefolder(path: str | os.PathLike[str]) -> TensorData:
    """A folder in torchvision's ImageFolder layout, `train/<class>/*` and `test/<class>/*`.

    Every image is decoded once (as RGB) into memory; all must have the same square size.
    Classes are the train sub-folders in sorted order (as ImageFolder numbers them);
    normalization uses the per-channel mean and std of the train split. Default
    augmentation is crop_flip with padding image_size // 8.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    folder = Path(path).expanduser()
    train_dir, test_dir = folder / "train", folder / "test"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise DatasetNotFound(
            f"no image folder at {folder}: expected {train_dir}/<class>/* and {test_dir}/<class>/* "
            "(torchvision ImageFolder layout)"
        )
    classes, class_to_idx = find_classes(str(train_dir))
    unknown = sorted(set(find_classes(str(test_dir))[0]) - set(classes))
    if unknown:
        raise ValueError(f"{test_dir} has classes with no train folder: {unknown}; train classes are {classes}")
    train = make_dataset(str(train_dir), class_to_idx, extensions=IMG_EXTENSIONS)
    test = make_dataset(str(test_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not test:
        raise DatasetNotFound(f"no images with extensions {IMG_EXTENSIONS} under {test_dir}")
    train_x = _to_unit_float(_read_rgb([p for p, _ in train]))
    mean, std = _channel_stats(train_x)
    return _image_data(
        f"{IMAGEFOLDER_PREFIX}{path}",
        train_x, [c for _, c in train],
        _to_unit_float(_read_rgb([p for p, _ in test])), [c for _, c in test],
        mean=mean, std=std, classes=classes,
    )


DATASETS: dict[str, Callable[[Path, bool], TensorData]] = {
    "digits": _load_digits,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "tiny-imagenet": _load_tiny_imagenet,
}


def check_dataset_name(name: str) -> str:
    """Return `name` if load_dataset accepts it (without touching the disk), else raise ValueError."""
    if isinstance(name, str):
        if name in DATASETS or (name.startswith(IMAGEFOLDER_PREFIX) and name != IMAGEFOLDER_PREFIX):
            return name
    raise ValueError(f"dataset must be one of {sorted(DATASETS)} or 'imagefolder:<path>', got {name!r}")


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    download: bool = False,
) -> TensorData:
    """Load a data set by name onto `device`.

    `name` is a key of DATASETS (looked up under `data_root(root)`) or
    "imagefolder:<path>" (a relative path is taken from the current directory, so give
    an absolute one to Ray workers, which run in their trial directories). Only CIFAR can
    be downloaded, and only with download=True. A missing set raises DatasetNotFound
    (a FileNotFoundError) naming the path looked at and how to get the data.
    """
    check_dataset_name(name)
    if name.startswith(IMAGEFOLDER_PREFIX):
        data = load_imagefolder(name[len(IMAGEFOLDER_PREFIX) :])
    else:
        data = DATASETS[name](data_root(root), download)
    return data.to(device)
