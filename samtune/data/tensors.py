"""Data sets held as device tensors.

A trial loads its data set once (`load_dataset`) into a `TensorData`: float32 images,
NCHW, already normalized per channel, plus int64 labels, all on the trial's device.
Float32 rather than uint8 costs 4x the memory (CIFAR: 0.6 GB train, Tiny-ImageNet:
4.9 GB) but means every consumer (training, evaluation, sharpness measures through
`fixed_batches`) receives model-ready tensors and no code path can forget to normalize.
Where each set lives and how it is normalized is the catalogue's
(:mod:`samtune.data.catalogue`); its training batches come from a
:class:`~samtune.data.loaders.DeviceLoader`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from samtune.checks import DatasetError
from samtune.data.catalogue import (
    CATALOGUE,
    DIGITS_SPLIT,
    DOWNLOAD_HINT,
    IMAGEFOLDER_PREFIX,
    check_dataset_name,
    data_root,
    is_image_folder,
    normalization_stats,
)
from samtune.data.device_augment import DevicePolicy
from samtune.data.folders import scan_image_folder
from samtune.data.loaders import DeviceLoader

Stats = tuple[Sequence[float], Sequence[float]]  # per-channel (mean, std)


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
        rank: int = 0, world: int = 1, **policy_options,
    ) -> DeviceLoader:
        """Shuffled training loader with drop_last and this set's augmentation settings, plus
        the per-image policies (`policy_options`: the fields of
        `samtune.data.device_augment.DevicePolicy`) batched on the set's device; rank ``rank``
        of ``world`` gets its share of every batch."""
        policy = DevicePolicy(self.mean, self.std, **policy_options)
        return DeviceLoader(
            self.train_x, self.train_y, batch_size=batch_size, shuffle=True, drop_last=True,
            augment=self.augment if augment is None else augment,
            pad=self.pad, fill=self.pad_fill, seed=seed, passes=passes,
            policy=policy if policy.active else None, rank=rank, world=world,
        )

    def eval_loader(self, split: str, *, batch_size: int) -> DeviceLoader:
        """In-order loader over every example of `split` ("train" or "test"), no augmentation."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        return DeviceLoader(x, y, batch_size=batch_size, shuffle=False, drop_last=False)


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
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"{name}: {channels} channel(s) need as many mean and std values, got {mean} and {std}")
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
            raise DatasetError(
                f"all images must have the same size: {paths[0]} is {first.shape[1]}x{first.shape[0]}, "
                f"{path} is {image.shape[1]}x{image.shape[0]} (WxH); resize the folder first"
            )
        images[i] = image
    return images


def _load_digits(root: Path, download: bool, stats: Stats | None = None) -> TensorData:
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
        pixels, bunch.target, test_size=DIGITS_SPLIT["test_size"], random_state=DIGITS_SPLIT["random_state"],
        stratify=bunch.target,
    )
    mean, std = ((float(train.mean()),), (float(train.std()),)) if stats is None else stats
    return _image_data(
        "digits",
        torch.as_tensor(train, dtype=torch.float32).view(-1, 1, 8, 8), train_y,
        torch.as_tensor(test, dtype=torch.float32).view(-1, 1, 8, 8), test_y,
        mean=mean, std=std, classes=[str(d) for d in range(10)], augment=CATALOGUE["digits"].augment,
    )


def _refuse_missing(name: str, root: Path, download: bool) -> None:
    entry = CATALOGUE[name]
    problem = entry.missing(root, download=download)
    if problem:
        raise DatasetError(f"{problem}. {entry.how_to_get(root)}")


def _load_cifar(name: str, root: Path, download: bool, stats: Stats | None = None) -> TensorData:
    """CIFAR-10/100 in torchvision's on-disk format, read by torchvision.datasets (md5-checked)."""
    from torchvision import datasets

    entry = CATALOGUE[name]
    _refuse_missing(name, root, download)
    dataset_cls = getattr(datasets, entry.loader)
    try:
        train = dataset_cls(str(root), train=True, download=download)
        test = dataset_cls(str(root), train=False, download=False)
    except RuntimeError as err:  # torchvision's "not found or corrupted" (failed md5 check)
        folder = entry.path(root)
        raise DatasetError(
            f"{name} at {folder} is incomplete or corrupted ({err}). Delete {folder} and {DOWNLOAD_HINT}."
        ) from err
    mean, std = stats or (entry.mean, entry.std)
    return _image_data(
        name, _to_unit_float(train.data), train.targets, _to_unit_float(test.data), test.targets,
        mean=mean, std=std, classes=train.classes,
    )


def _tiny_imagenet_val(val_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) pairs from val/val_annotations.txt: `file<TAB>wnid<TAB>box...` per line."""
    samples = []
    for line_number, line in enumerate((val_dir / "val_annotations.txt").read_text().splitlines(), 1):
        if not line.strip():
            continue
        file_name, wnid = line.split("\t")[:2]
        if wnid not in class_to_idx:
            raise DatasetError(
                f"{val_dir / 'val_annotations.txt'} line {line_number}: class {wnid!r} has no train folder"
            )
        samples.append((str(val_dir / "images" / file_name), class_to_idx[wnid]))
    return samples


def _load_tiny_imagenet(root: Path, download: bool, stats: Stats | None = None) -> TensorData:
    """Tiny-ImageNet-200: train/<wnid>/images/*.JPEG (100k), val/images + val_annotations.txt (10k).

    The labelled val split serves as the test split (the official test split has no labels).
    Grayscale JPEGs are converted to RGB. Crop padding is 8 (image_size // 8).
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    entry = CATALOGUE["tiny-imagenet"]
    _refuse_missing(entry.name, root, download)
    folder = entry.path(root)
    train_dir, val_dir = folder / "train", folder / "val"
    classes, class_to_idx = find_classes(str(train_dir))
    train = make_dataset(str(train_dir), class_to_idx, extensions=IMG_EXTENSIONS)
    test = _tiny_imagenet_val(val_dir, class_to_idx)
    mean, std = stats or (entry.mean, entry.std)
    return _image_data(
        entry.name,
        _to_unit_float(_read_rgb([p for p, _ in train])), [c for _, c in train],
        _to_unit_float(_read_rgb([p for p, _ in test])), [c for _, c in test],
        mean=mean, std=std, classes=classes,
    )


def load_imagefolder(path: str | os.PathLike[str], stats: Stats | None = None) -> TensorData:
    """A folder in torchvision's ImageFolder layout, `train/<class>/*` and `test/<class>/*`
    (or `val/<class>/*`), scanned by :func:`samtune.data.folders.scan_image_folder`.

    Every image is decoded once (as RGB) into memory; all must have the same square size.
    Classes are the train sub-folders in sorted order (as ImageFolder numbers them);
    normalization uses the per-channel mean and std of the train split (or `stats`). Default
    augmentation is crop_flip with padding image_size // 8.
    """
    folder = scan_image_folder(path)
    train_x = _to_unit_float(_read_rgb(folder.train.paths()))
    mean, std = stats or _channel_stats(train_x)
    return _image_data(
        f"{IMAGEFOLDER_PREFIX}{path}",
        train_x, folder.train.labels,
        _to_unit_float(_read_rgb(folder.test.paths())), folder.test.labels,
        mean=mean, std=std, classes=folder.classes,
    )


LOADERS: dict[str, Callable[[Path, bool, Stats | None], TensorData]] = {
    "digits": _load_digits,
    "cifar10": functools.partial(_load_cifar, "cifar10"),
    "cifar100": functools.partial(_load_cifar, "cifar100"),
    "tiny-imagenet": _load_tiny_imagenet,
}


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    download: bool = False,
    normalization: str = "dataset",
) -> TensorData:
    """Load a data set held in memory by name onto `device`, normalized with its own
    statistics or those `normalization` names (`samtune.data.catalogue.NORMALIZATION_STATS`).

    `name` is a catalogue name (looked up under `data_root(root)`) or
    "imagefolder:<path>" (a relative path is taken from the current directory, so give
    an absolute one to Ray workers, which run in their trial directories). Only CIFAR can
    be downloaded, and only with download=True. A missing or malformed set raises
    :class:`~samtune.checks.DatasetError` naming the path looked at and what was expected.
    """
    check_dataset_name(name)
    stats = normalization_stats(normalization)
    if is_image_folder(name):
        data = load_imagefolder(name[len(IMAGEFOLDER_PREFIX):], stats)
    elif name in LOADERS:
        data = LOADERS[name](data_root(root), download, stats)
    else:
        raise ValueError(f"dataset {name!r} is streamed from disk, not held in memory; open it with "
                         f"samtune.data.streaming.open_streaming")
    return data.to(device)
