"""Data: every data set a trial may load is present -- looked for by the data catalogue
and the image-folder scanner the loaders use, no image decoded -- under the path the
trials will read (the resolved ``data_dir``, the absolute image-folder path).  On a
multi-node cluster that path must be a shared folder, the same on every node, and the
error for a missing data set says so."""

from __future__ import annotations

from pathlib import Path

from samtune.checks import ConfigError, DatasetError
from samtune.data.catalogue import CATALOGUE, data_root, image_folder_path, is_image_folder
from samtune.data.folders import scan_image_folder
from samtune.search.preflight.variants import variants, where_key
from samtune.spec import SearchSpec

DOWNLOAD_KEY = "--set trial.download=true"


def _shared_hint(cluster: bool) -> str:
    return (" The driver checks the path the trials will read: on a multi-node Ray cluster it must be "
            "a shared folder, the same path on every node." if cluster else "")


def imagefolder_train_size(dataset: str, *, cluster: bool = False, key: str = "trial.dataset") -> int:
    """Check an ``imagefolder:PATH`` with the scanner its loaders use; returns the train split's size."""
    # resolved as samtune.search.context.hyperparameters resolves it for the trials
    folder = image_folder_path(dataset).resolve()
    try:
        return len(scan_image_folder(folder).train)
    except DatasetError as err:
        raise ConfigError(f"{key} = {dataset!r}: {err}.{_shared_hint(cluster)}") from None


def check_dataset_present(dataset: str, root: Path, *, download: bool = False, cluster: bool = False,
                          key: str = "trial.dataset") -> int:
    """A data set's files are where the catalogue says (a named set under ``root``, the
    resolved data_dir; an image folder at its path); returns its training-split size.
    CIFAR with ``download`` is fetched by the trial."""
    if is_image_folder(dataset):
        return imagefolder_train_size(dataset, cluster=cluster, key=key)
    entry = CATALOGUE[dataset]
    problem = entry.missing(root, download=download)
    if problem:
        hint = f"trial.data_dir (else $SAMTUNE_DATA, else ./data) resolves to {root}.{_shared_hint(cluster)}"
        raise ConfigError(f"{key} = {dataset!r}: {problem}. {entry.how_to_get(root, DOWNLOAD_KEY)} {hint}")
    return entry.train_size


def check_data(spec: SearchSpec, *, cluster: bool = False) -> dict[str, int]:
    """Every data set a trial may load is present; returns each one's training-split size."""
    root = data_root(spec.trial.get("data_dir")).resolve()  # a run setting: the same in every trial
    download = bool(spec.trial.get("download", False))
    sizes: dict[str, int] = {}
    for variant in variants(spec):
        dataset = str(variant.get("dataset"))
        if dataset not in sizes:
            sizes[dataset] = check_dataset_present(dataset, root, download=download, cluster=cluster,
                                                   key=where_key(variant, "dataset"))
    return sizes
