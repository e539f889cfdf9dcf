"""The data sets samtune knows by name: one frozen entry per set, the only place that
says where each lives on disk, how large its splits are, how it is normalized, whether
it is held in memory or streamed, and how to get it.

Torch-free, so the trial configuration, the search spec and the pre-launch checks read
the same entries the loaders do.  Besides these names, a trial may name any folder in
torchvision's ImageFolder layout as ``imagefolder:<path>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

IMAGEFOLDER_PREFIX = "imagefolder:"  # dataset "imagefolder:<path>": train/<class>/*, test/<class>/*
DOWNLOAD_HINT = "pass download=True to load_dataset (CLI: --set download=true)"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CIFAR_LOADERS = ("CIFAR10", "CIFAR100")  # torchvision.datasets classes that read (and fetch) CIFAR


@dataclass(frozen=True)
class DatasetEntry:
    """One named data set.

    ``folder`` is where it lives under the data root and ``files`` what must be in it
    (paths relative to ``folder``); ``mean`` and ``std`` are the per-channel statistics
    images are normalized with (None: computed from the training split when loaded);
    ``streamed`` sets are read from disk batch by batch, never held whole;
    ``loader`` is the torchvision.datasets class that reads (and may download) it.
    """

    name: str
    train_size: int
    test_size: int
    folder: str | None = None
    files: tuple[str, ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    streamed: bool = False
    augment: str = "crop_flip"
    loader: str | None = None
    instructions: str = ""  # how to get a set torchvision cannot download

    @property
    def downloadable(self) -> bool:
        return self.loader in CIFAR_LOADERS

    def path(self, root: Path) -> Path:
        """Where this set is read from under the data root ``root``."""
        return root / (self.folder or self.name)

    def missing(self, root: Path, *, download: bool = False) -> str | None:
        """Why this set cannot be read under ``root`` (where it was looked for and what
        was expected there), or None when every file it needs is there."""
        if self.folder is None or (download and self.downloadable):
            return None
        folder = self.path(root)
        if not folder.is_dir():
            looked = (f"{folder} (torchvision's {self.loader} format)" if self.loader
                      else " and ".join(str(folder / name) for name in self.files))
            return f"{self.name} not found: looked for {looked}"
        absent = [name for name in self.files if not (folder / name).exists()]
        if absent:
            return f"{self.name} at {folder} is incomplete: {', '.join(absent)} missing"
        return None

    def how_to_get(self, root: Path, download: str = DOWNLOAD_HINT) -> str:
        """How to put this set under ``root``; ``download`` says how to ask for a download."""
        if self.downloadable:
            return (f"To download it into {root}, {download}; or point the data root ($SAMTUNE_DATA) at the "
                    f"folder that contains {self.folder}.")
        return self.instructions


def _cifar(name: str, folder: str, loader: str, files: tuple[str, ...], mean, std) -> DatasetEntry:
    return DatasetEntry(name, 50_000, 10_000, folder, files, mean, std, loader=loader)


# Per-channel statistics as the reference code uses them: CIFAR-100 from
# iiduka-researches/GSAM_batch_inc; CIFAR-10 the population std of its train set (not
# the often-copied 0.2023/0.1994/0.2010, NORMALIZATION_STATS["cifar10_kuangliu"]);
# Tiny-ImageNet its train-set statistics, in wide use since the CS231n release; ImageNet
# torchvision's.
CATALOGUE: Mapping[str, DatasetEntry] = MappingProxyType({entry.name: entry for entry in (
    # scikit-learn's bundled 8x8 digits; its split is DIGITS_SPLIT, its statistics those of its pixels
    DatasetEntry("digits", 797, 1000, augment="none"),
    _cifar("cifar10", "cifar-10-batches-py", "CIFAR10",
           ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
            "batches.meta"), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    _cifar("cifar100", "cifar-100-python", "CIFAR100", ("train", "test", "meta"),
           (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    DatasetEntry("tiny-imagenet", 100_000, 10_000, "tiny-imagenet-200", ("train", "val/val_annotations.txt"),
                 (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262),
                 instructions=f"It has no automatic download: fetch {TINY_IMAGENET_URL} and unzip it into the data "
                              f"root (giving tiny-imagenet-200), or point $SAMTUNE_DATA / trial.data_dir at the "
                              f"folder that contains tiny-imagenet-200."),
    DatasetEntry("imagenet", 1_281_167, 50_000, "imagenet", ("train", "val"),
                 (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), streamed=True,
                 instructions="One folder per class in train/ and val/ (the ILSVRC-2012 train set as distributed, "
                              "and its validation images moved into class folders, e.g. with the valprep.sh "
                              "script of the PyTorch ImageNet example); no automatic download."),
)})

# Named per-channel statistics, the trial key ``normalization`` (DATASET_STATS: each entry's
# own): CIFAR-10's mean with the std of kuangliu/pytorch-cifar main.py, with which Khanh et
# al.'s code normalizes CIFAR-10 and CIFAR-100 alike (lhchau/fundamental-sam,
# fundamental_sam/dataloader/cifar10.py lines 18 and 24, cifar100.py lines 18 and 24).
DATASET_STATS = "dataset"
NORMALIZATION_STATS: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]] = MappingProxyType({
    "cifar10_kuangliu": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
})

IN_MEMORY = tuple(name for name, entry in CATALOGUE.items() if not entry.streamed)
STREAMED = tuple(name for name, entry in CATALOGUE.items() if entry.streamed)
TRAIN_SIZES: Mapping[str, int] = MappingProxyType({name: e.train_size for name, e in CATALOGUE.items()})
# the held-out split of digits: stratified, the same whatever the trial seed
DIGITS_SPLIT = {"test_size": 1000, "random_state": 0, "stratify": "target"}
DIGITS_LOADER = "sklearn.datasets.load_digits"


def normalization_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) the trial key ``normalization`` names; None for each set's own."""
    if name == DATASET_STATS:
        return None
    if name not in NORMALIZATION_STATS:
        raise ValueError(f"normalization must be one of {[DATASET_STATS, *NORMALIZATION_STATS]}, got {name!r}")
    return NORMALIZATION_STATS[name]


def is_image_folder(name: str) -> bool:
    return isinstance(name, str) and name.startswith(IMAGEFOLDER_PREFIX) and name != IMAGEFOLDER_PREFIX


def image_folder_path(name: str) -> Path:
    """The folder of ``imagefolder:<path>`` (``~`` expanded; relative to the working directory)."""
    return Path(name.removeprefix(IMAGEFOLDER_PREFIX)).expanduser()


def is_streamed(dataset: str, streaming: bool = False) -> bool:
    """Whether ``dataset`` is read from disk each epoch: a streamed catalogue set, or an
    image folder with the trial key ``streaming`` on."""
    entry = CATALOGUE.get(dataset)
    return streaming or (entry is not None and entry.streamed)


def check_dataset_name(name: str) -> str:
    """``name`` if it names a data set, else ValueError listing what is allowed."""
    if isinstance(name, str) and (name in CATALOGUE or is_image_folder(name)):
        return name
    raise ValueError(f"dataset must be one of {sorted(CATALOGUE)} or 'imagefolder:<path>', got {name!r}")


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Folder that holds the named data sets: `root`, else $SAMTUNE_DATA, else ./data (relative to the cwd)."""
    return Path(root if root is not None else os.environ.get("SAMTUNE_DATA", "data")).expanduser()


def dataset_location(name: str, root: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder a data set is read from (None for digits, which ships with scikit-learn)."""
    if is_image_folder(name):
        return image_folder_path(name)
    entry = CATALOGUE[name]
    return None if entry.folder is None else entry.path(data_root(root))
