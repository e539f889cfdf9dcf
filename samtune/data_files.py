"""Where the built-in data sets live on disk.  Torch-free, so the search driver can
check them before launch (``samtune.search.preflight``) in exactly the places the
loaders of ``samtune.data`` read them."""

from __future__ import annotations

import os
from pathlib import Path

TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGENET_FOLDER = "imagenet"  # <data root>/imagenet/train/<wnid>/*.JPEG and val/<wnid>/*.JPEG


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Folder that holds the data sets: `root`, else $SAMTUNE_DATA, else ./data (relative to the cwd)."""
    return Path(root if root is not None else os.environ.get("SAMTUNE_DATA", "data")).expanduser()


def tiny_imagenet_missing(root: Path) -> str | None:
    """Why Tiny-ImageNet is not under ``root`` (where it was looked for and how to get
    it), or None when its train folder and val annotations are there."""
    folder = root / TINY_IMAGENET_FOLDER
    train_dir, annotations = folder / "train", folder / "val" / "val_annotations.txt"
    if train_dir.is_dir() and annotations.is_file():
        return None
    return (f"tiny-imagenet not found: looked for {train_dir} and {annotations}. It has no automatic "
            f"download: fetch {TINY_IMAGENET_URL} and unzip it into {root} (giving {folder})")


def imagenet_missing(root: Path) -> str | None:
    """Why ImageNet is not under ``root``, or None when its train and val class folders are there."""
    folder = root / IMAGENET_FOLDER
    train_dir, val_dir = folder / "train", folder / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        return None
    return (f"imagenet not found: looked for {train_dir} and {val_dir}, one folder per class in each "
            f"(the ILSVRC-2012 train set as distributed, and its validation images moved into class "
            f"folders, e.g. with the valprep.sh script of the PyTorch ImageNet example); no automatic download")
