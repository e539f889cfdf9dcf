"""Image folders in torchvision's ImageFolder layout, scanned once: ``train/<class>/*`` and
a held-out split, ``val/<class>/*`` (ImageNet's name) or ``test/<class>/*``.

One scanner for every reader of a folder: the in-memory loader, the streaming loader and
the pre-launch check all see the same classes, files and order, and the same error for
a folder that is not one.  The order is torchvision's ``make_dataset``: classes sorted,
then the files of each class as a sorted ``os.walk`` finds them (a test holds the two
against each other).  Torch-free: only names are read, no image is decoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from samtune.checks import DatasetError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
HELD_OUT_FOLDERS = ("val", "test")


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

    def paths(self) -> list[str]:
        return [self.path(i) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ImageFolder:
    """A scanned folder: its classes (sorted; label = position) and both splits."""

    folder: Path
    classes: tuple[str, ...]
    train: Samples
    test: Samples


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _images(folder: Path) -> list[str]:
    """Every image under ``folder``, in the order torchvision's make_dataset lists them."""
    found = []
    for root, _, names in sorted(os.walk(folder, followlinks=True)):
        found += [os.path.join(root, name) for name in sorted(names) if name.lower().endswith(IMG_EXTENSIONS)]
    return found


def _samples(split: Path, classes: list[str], *, every_class: bool) -> Samples:
    per_class = {name: _images(split / name) if (split / name).is_dir() else [] for name in classes}
    empty = [name for name in classes if not per_class[name]]
    if every_class and empty:
        more = " ..." if len(empty) > 10 else ""
        raise DatasetError(f"class folders with no images under {split}: {empty[:10]}{more}; every class needs at "
                           f"least one file with an extension in {IMG_EXTENSIONS}")
    files = [os.fsencode(os.path.relpath(path, split)) for name in classes for path in per_class[name]]
    if not files:
        raise DatasetError(f"no images with extensions {IMG_EXTENSIONS} under {split}/<class>/")
    labels = [label for label, name in enumerate(classes) for _ in per_class[name]]
    return Samples(str(split), np.array(files, dtype=np.bytes_), np.array(labels, dtype=np.int64))


def held_out_folder(folder: Path) -> Path:
    for name in HELD_OUT_FOLDERS:
        if (folder / name).is_dir():
            return folder / name
    raise DatasetError(f"no held-out split at {folder}: expected {folder / 'val'}/<class>/* (ImageNet) or "
                       f"{folder / 'test'}/<class>/*")


def scan_image_folder(folder: str | os.PathLike[str]) -> ImageFolder:
    """The classes and files of an image folder; a folder that is not one is a
    :class:`~samtune.checks.DatasetError` naming the path and what was expected.
    Every training class must hold an image; the held-out split may lack some classes
    but none of its own."""
    folder = Path(folder).expanduser()
    train_dir = folder / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"no image folder at {folder}: expected {train_dir}/<class>/* and "
                           f"{folder / 'test'}/<class>/* (or {folder / 'val'}/<class>/*), torchvision's "
                           f"ImageFolder layout")
    held_out = held_out_folder(folder)
    classes = _class_folders(train_dir)
    if not classes:
        raise DatasetError(f"{train_dir} has no class folders; expected {train_dir}/<class>/*")
    unknown = sorted(set(_class_folders(held_out)) - set(classes))
    if unknown:
        raise DatasetError(f"{held_out} has classes with no train folder: {unknown[:10]}; train has "
                           f"{len(classes)} classes: {classes[:10]}")
    return ImageFolder(folder, tuple(classes), _samples(train_dir, classes, every_class=True),
                       _samples(held_out, classes, every_class=False))
