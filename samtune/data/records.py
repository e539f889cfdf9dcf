"""What a trial trained and was evaluated on, as records the tracking store can hold.

One :class:`DatasetRecord` per split: name, content digest, where it was read from
and a profile.  ``source`` is JSON as MLflow's own dataset sources write it:
``{"uri": <absolute path>}`` for a set read from disk (source type ``local``) and
``{"tags": {...}}`` for digits (type ``code``: scikit-learn's bundled copy).  The
tracking module turns records into MLflow dataset inputs; nothing here imports MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from samtune.data.catalogue import DIGITS_LOADER, DIGITS_SPLIT, dataset_location
from samtune.data.folders import Samples

TRAINING, EVALUATION = "training", "evaluation"  # the context of the train and of the test split
DIGEST_CHARS = 16
MAX_NAME_CHARS = 500  # the longest data set name a tracking store keeps
_HASH_CHUNK_BYTES = 64 * 2**20
DIGITS_SOURCE = {"loader": DIGITS_LOADER,
                 "split": "sklearn.model_selection.train_test_split(" + ", ".join(
                     f"{key}={value}" for key, value in DIGITS_SPLIT.items()) + ")"}


@dataclass(frozen=True)
class DatasetRecord:
    """One split of a data set as the tracking store records it."""

    name: str
    digest: str
    source_type: str
    source: str
    context: str  # TRAINING or EVALUATION
    profile: str  # JSON: num_rows, num_classes, and the shape of one example or the files' folder


def tensor_digest(x, y) -> str:
    """The content digest of one split: sha256 over the bytes of ``x`` as C-contiguous
    float32 (the normalized NCHW images the trial trains on) followed by the bytes of
    ``y`` as int64, in native byte order (little-endian on x86 and ARM); the first
    ``DIGEST_CHARS`` hex digits.  Read in chunks, so a set on a GPU is copied to the
    host a piece at a time."""
    digest = hashlib.sha256()
    for tensor, dtype in ((x, "float"), (y, "long")):
        row_bytes = max(1, tensor[:1].numel() * tensor.element_size())
        step = max(1, _HASH_CHUNK_BYTES // row_bytes)
        for start in range(0, len(tensor), step):
            chunk = getattr(tensor[start:start + step].detach(), dtype)()
            digest.update(chunk.contiguous().cpu().numpy())
    return digest.hexdigest()[:DIGEST_CHARS]


def samples_digest(samples: Samples) -> str:
    """The digest of a split read from disk: what defines it, its relative file names and labels."""
    digest = hashlib.sha256(b"\n".join(samples.files.tolist()))
    digest.update(samples.labels.astype("<i8").tobytes())
    return digest.hexdigest()[:DIGEST_CHARS]


def dataset_source(name: str, root: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """(source type, source JSON) of the data set ``name`` as the loaders read it under ``root``."""
    folder = dataset_location(name, root)
    if folder is None:
        return "code", json.dumps({"tags": DIGITS_SOURCE})
    return "local", json.dumps({"uri": str(folder.resolve())})


def short_name(name: str) -> str:
    return name if len(name) <= MAX_NAME_CHARS else "..." + name[-MAX_NAME_CHARS + 3:]


def in_memory_records(data, root: str | os.PathLike[str] | None = None) -> tuple[DatasetRecord, DatasetRecord]:
    """The training and the evaluation record of a :class:`~samtune.data.tensors.TensorData`."""
    source_type, source = dataset_source(data.name, root)

    def record(x, y, context: str) -> DatasetRecord:
        profile = {"num_rows": len(y), "num_classes": data.num_classes, "shape": list(x.shape[1:]),
                   "dtype": "float32"}
        return DatasetRecord(short_name(data.name), tensor_digest(x, y), source_type, source, context,
                             json.dumps(profile))

    return record(data.train_x, data.train_y, TRAINING), record(data.test_x, data.test_y, EVALUATION)


def streamed_records(data, root: str | os.PathLike[str] | None = None) -> tuple[DatasetRecord, DatasetRecord]:
    """The training and evaluation records of a :class:`~samtune.data.streaming.StreamingData`:
    its images are never loaded whole, so the digest covers its file list."""
    source_type, source = dataset_source(data.name, root)

    def record(samples: Samples, context: str) -> DatasetRecord:
        profile = {"num_rows": len(samples), "num_classes": data.num_classes, "files": samples.folder}
        return DatasetRecord(short_name(data.name), samples_digest(samples), source_type, source, context,
                             json.dumps(profile))

    return record(data.train, TRAINING), record(data.test, EVALUATION)
