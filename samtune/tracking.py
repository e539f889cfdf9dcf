"""MLflow layout of samtune (DESIGN.md, "MLflow layout").

experiment = search name; one parent run per search (``samtune.kind=search``);
one child run per trial (``samtune.kind=trial``, ``mlflow.parentRunId``,
``samtune.trial_id``, ``samtune.status``), with the data set it trained on as
MLflow dataset inputs (:func:`dataset_records`).  A :class:`Tracker` holds one
``MlflowClient`` for one store and writes by explicit run id, never through
MLflow's process-global "active run", because Ray reuses worker processes across
trials.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from samtune import schema  # noqa: E402

DEFAULT_DB = "mlflow.db"
_ERROR_CHARS = 4000  # MLflow tags hold at most 8000 characters
_SAFE_LITERAL = re.compile(r"[A-Za-z0-9_.:\-]+")
_MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
INTERPOLATION_METRIC_PREFIX = "interp_"  # interp_<column of the curve>, step = index along a


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else ``MLFLOW_TRACKING_URI``, else ``./mlflow.db`` (absolute,
    so Ray workers with another working directory reach the same file)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd() / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def ui_command(uri: str) -> str:
    if uri.startswith("http"):
        return f"open {uri}"
    return f"samtune ui --tracking-uri {uri}"


def runs_url(base: str, experiment_id: str) -> str:
    """The page that lists an experiment's runs (MLflow 3.x opens experiments on a
    GenAI overview page otherwise)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"


def filter_literal(value: str) -> str:
    """``value`` quoted for an MLflow filter string.  The ids samtune filters on
    (run ids, Ray trial ids) are word characters; anything else is refused rather
    than spliced into the query."""
    if not _SAFE_LITERAL.fullmatch(value):
        raise ValueError(f"{value!r} cannot be used in an MLflow filter: expected letters, "
                         f"digits and _ . : -")
    return f"'{value}'"


def _tag_filter(tag: str, value: str) -> str:
    return f"tags.`{tag}` = {filter_literal(value)}"


def history_to_csv(history: list[dict[str, float]]) -> str:
    import pandas as pd

    buffer = io.StringIO()
    pd.DataFrame(history).to_csv(buffer, index=False)
    return buffer.getvalue()


# -- data sets as MLflow dataset inputs ------------------------------------------------
DATASET_CONTEXT_TAG = "mlflow.data.context"  # MLflow's key (mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT)
TRAINING, EVALUATION = "training", "evaluation"  # the context of the train and of the test split
DIGEST_CHARS = 16
_MAX_DATASET_NAME = 500  # MLflow's limit
_HASH_CHUNK_BYTES = 64 * 2**20
# where load_dataset reads each named set, under its data root (samtune.data)
_DATASET_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python",
                    "tiny-imagenet": "tiny-imagenet-200"}
DIGITS_SOURCE = {"loader": "sklearn.datasets.load_digits",
                 "split": "sklearn.model_selection.train_test_split(test_size=1000, random_state=0, "
                          "stratify=target)"}


@dataclass(frozen=True)
class DatasetRecord:
    """One split of a data set as an MLflow dataset input.  ``source`` is JSON as
    MLflow's own dataset sources write it: ``{"uri": <absolute path>}`` for a set read
    from disk (source type ``local``, which the UI shows as "Path: ..."), and
    ``{"tags": DIGITS_SOURCE}`` for digits (type ``code``: scikit-learn's bundled copy)."""

    name: str
    digest: str
    source_type: str
    source: str
    context: str  # TRAINING or EVALUATION
    profile: str  # JSON: num_rows, num_classes, shape (C, H, W) and dtype of one example

    def to_input(self) -> DatasetInput:
        dataset = Dataset(self.name, self.digest, self.source_type, self.source, profile=self.profile)
        return DatasetInput(dataset, [InputTag(DATASET_CONTEXT_TAG, self.context)])


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


def dataset_source(name: str, root: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """(source type, source JSON) of the data set ``name`` as ``load_dataset(name, root=root)`` reads it."""
    from samtune.data import IMAGEFOLDER_PREFIX, data_root

    if name == "digits":
        return "code", json.dumps({"tags": DIGITS_SOURCE})
    if name.startswith(IMAGEFOLDER_PREFIX):
        folder = Path(name.removeprefix(IMAGEFOLDER_PREFIX)).expanduser()
    else:
        folder = data_root(root) / _DATASET_FOLDERS.get(name, name)
    return "local", json.dumps({"uri": str(folder.resolve())})


_RECORDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # TensorData -> its records


def dataset_records(data, root: str | os.PathLike[str] | None = None) -> tuple[DatasetRecord, DatasetRecord]:
    """The training and the evaluation input of a loaded :class:`~samtune.data.TensorData`.
    Its digests are computed once per loaded object (a Ray worker keeps its data set
    across trials, ``samtune.train.cached_dataset``)."""
    key = str(root) if root is not None else None
    cached = _RECORDS.get(data)
    if cached is not None and cached[0] == key:
        return cached[1]
    name = data.name if len(data.name) <= _MAX_DATASET_NAME else "..." + data.name[-_MAX_DATASET_NAME + 3:]
    source_type, source = dataset_source(data.name, root)

    def record(x, y, context: str) -> DatasetRecord:
        profile = {"num_rows": len(y), "num_classes": data.num_classes, "shape": list(x.shape[1:]),
                   "dtype": "float32"}
        return DatasetRecord(name, tensor_digest(x, y), source_type, source, context, json.dumps(profile))

    records = (record(data.train_x, data.train_y, TRAINING), record(data.test_x, data.test_y, EVALUATION))
    _RECORDS[data] = (key, records)
    return records


def streamed_records(data, root: str | os.PathLike[str] | None = None) -> tuple[DatasetRecord, DatasetRecord]:
    """The training and evaluation inputs of a streamed image folder
    (:class:`~samtune.streaming.StreamingData`): its images are never loaded whole, so
    the digest covers what defines the split, its relative file names and labels."""
    source_type, source = dataset_source(data.name, root)

    def record(samples, context: str) -> DatasetRecord:
        digest = hashlib.sha256(b"\n".join(samples.files.tolist()))
        digest.update(samples.labels.astype("<i8").tobytes())
        profile = {"num_rows": len(samples), "num_classes": data.num_classes, "files": samples.folder}
        return DatasetRecord(data.name[-_MAX_DATASET_NAME:], digest.hexdigest()[:DIGEST_CHARS], source_type,
                             source, context, json.dumps(profile))

    return record(data.train, TRAINING), record(data.test, EVALUATION)


class Tracker:
    """samtune's runs in one MLflow store, through one client."""

    def __init__(self, uri: str | None = None):
        self.uri = resolve_tracking_uri(uri)
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    def __getstate__(self) -> dict:  # Ray pickles callbacks; a client does not travel
        return {"uri": self.uri, "_client": None}

    # -- experiments ---------------------------------------------------------------
    def _artifact_root(self) -> str | None:
        """Keep a SQLite store's artifacts beside the database file."""
        if self.uri.startswith("sqlite:///"):
            return (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        return None

    def ensure_experiment(self, name: str) -> str:
        """Create the experiment (and, for a new SQLite file, the schema) once, in the
        calling process, before any trial writes: parallel first use of a fresh
        SQLite store breaks its migrations (stack.md, MLflow pitfalls)."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        root = self._artifact_root()
        return self.client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)

    # -- search runs ---------------------------------------------------------------
    def start_search_run(self, experiment_id: str, *, run_name: str, spec_yaml: str,
                         search_keys: Iterable[str], tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(experiment_id, run_name=run_name, tags={
            schema.TAG_KIND: schema.KIND_SEARCH, schema.TAG_SEARCH_KEYS: ",".join(search_keys),
            **(tags or {})})
        self.client.log_text(run.info.run_id, spec_yaml, schema.ARTIFACT_SEARCH_SPEC)
        return run.info.run_id

    def latest_search_run(self, experiment_id: str) -> str | None:
        runs = self.client.search_runs(
            [experiment_id], filter_string=_tag_filter(schema.TAG_KIND, schema.KIND_SEARCH),
            order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def reopen_search_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def end_search_run(self, run_id: str, *, state: str = "FINISHED",
                       metrics: dict[str, float] | None = None) -> None:
        if metrics:
            self.log_metrics(run_id, metrics)
        self.client.set_terminated(run_id, state)

    def close_running_children(self, experiment_id: str, parent_run_id: str, status: str,
                               error: str | None = None) -> int:
        """Give every child run still RUNNING an end state; returns how many."""
        query = f"{_tag_filter(schema.TAG_PARENT, parent_run_id)} and attributes.status = 'RUNNING'"
        runs = self.client.search_runs([experiment_id], filter_string=query, max_results=10_000)
        for run in runs:
            self.end_trial_run(run.info.run_id, status, error)
        return len(runs)

    # -- trial runs ----------------------------------------------------------------
    def start_trial_run(self, experiment_id: str, *, params: dict[str, str], run_name: str,
                        trial_id: str, parent_run_id: str | None = None,
                        tags: dict[str, str] | None = None) -> str:
        """A new child run for a trial, with every trial parameter."""
        all_tags = {schema.TAG_KIND: schema.KIND_TRIAL, schema.TAG_TRIAL_ID: trial_id,
                    schema.TAG_STATUS: schema.RUNNING, **(tags or {})}
        if parent_run_id:
            all_tags[schema.TAG_PARENT] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        return run.info.run_id

    def find_trial_run(self, experiment_id: str, trial_id: str,
                       parent_run_id: str | None = None) -> str | None:
        query = _tag_filter(schema.TAG_TRIAL_ID, trial_id)
        if parent_run_id:
            query += f" and {_tag_filter(schema.TAG_PARENT, parent_run_id)}"
        runs = self.client.search_runs([experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def reopen_run(self, run_id: str) -> None:
        """Mark a run RUNNING again when its trial resumes (never a second run)."""
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, schema.TAG_STATUS, schema.RUNNING)

    def run_is_active(self, run_id: str) -> bool:
        return self.client.get_run(run_id).info.status == "RUNNING"

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def run_tag(self, run_id: str, key: str) -> str | None:
        return self.client.get_run(run_id).data.tags.get(key)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if v is not None]
        self.client.log_batch(run_id, metrics=batch)

    def finish_trial_run(self, run_id: str, *, status: str, final_metrics: dict[str, float],
                         params: dict[str, str], config_yaml: str, history_csv: str,
                         error: str | None = None) -> None:
        """Final metrics, the parameters only known at the end (the measures'
        definitions), artifacts, ``samtune.status`` and the MLflow end state."""
        if final_metrics:
            self.log_metrics(run_id, final_metrics)
        if params:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        self.client.log_text(run_id, config_yaml, schema.ARTIFACT_CONFIG)
        self.client.log_text(run_id, history_csv, schema.ARTIFACT_HISTORY)
        self.end_trial_run(run_id, status, error)

    def end_trial_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Set ``samtune.status`` (and ``samtune.error``) and end the run."""
        if status not in schema.TRIAL_STATUSES:
            raise ValueError(f"status = {status!r}: allowed {', '.join(schema.TRIAL_STATUSES)}")
        tags = [RunTag(schema.TAG_STATUS, status)]
        if error:
            tags.append(RunTag(schema.TAG_ERROR, error[:_ERROR_CHARS]))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, schema.RUN_END_STATE[status])

    # -- data sets -----------------------------------------------------------------
    def log_dataset(self, run_id: str, data, *, root: str | os.PathLike[str] | None = None) -> None:
        """Record a loaded data set (:class:`~samtune.data.TensorData`) as the run's
        dataset inputs: its train split (context ``training``) and its test split
        (``evaluation``), each with name, source and content digest."""
        self._log_inputs(run_id, dataset_records(data, root))

    def log_trial_dataset(self, run_id: str, config) -> None:
        """Record the data set a trial with ``config`` trains on.  It is loaded through
        ``samtune.train.cached_dataset`` with the arguments ``train()`` uses, so the
        trial then reuses it instead of loading it again."""
        from samtune.train import resolve_device
        from samtune.trial_data import open_trial_data

        data = open_trial_data(config, resolve_device(config.device))
        records = streamed_records(data, config.data_dir) if config.streams else dataset_records(data, config.data_dir)
        self._log_inputs(run_id, records)

    def _log_inputs(self, run_id: str, records: Iterable[DatasetRecord]) -> None:
        """Link the data set records to the run.  Trials of one experiment starting together
        may register the same data set at once; the store's unique key then refuses the
        later insert, and a second attempt finds the row the first one wrote."""
        inputs = [r.to_input() for r in records]
        try:
            self.client.log_inputs(run_id, datasets=inputs)
        except MlflowException as err:
            if "UNIQUE constraint" not in str(err) and "duplicate key" not in str(err):
                raise
            self.client.log_inputs(run_id, datasets=inputs)

    def has_dataset(self, run_id: str) -> bool:
        return bool(self.client.get_run(run_id).inputs.dataset_inputs)

    # -- interpolation runs --------------------------------------------------------
    def run_experiment_id(self, run_id: str) -> str:
        """The experiment of a run; an unknown run is a FileNotFoundError."""
        try:
            return self.client.get_run(run_id).info.experiment_id
        except Exception as err:  # MlflowException
            raise FileNotFoundError(f"no MLflow run {run_id!r} in {self.uri}: {err}") from None

    def record_interpolation(self, experiment_id: str, runs: tuple[str, str], curve, *,
                             params: dict[str, str], files: Iterable[str | Path]) -> str:
        """One finished run of ``samtune interpolate``: tags ``samtune.kind`` and
        the two runs, ``params``, metric ``interp_<column>`` at step i for the i-th
        point of ``curve`` (a DataFrame), and ``files`` as artifacts."""
        short = "-".join(Path(r).name[:8] for r in runs)
        run = self.client.create_run(experiment_id, run_name=f"interpolate-{short}", tags={
            schema.TAG_KIND: schema.KIND_INTERPOLATION, schema.TAG_INTERPOLATED_RUNS: ",".join(runs)})
        run_id = run.info.run_id
        try:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            stamp = int(time.time() * 1000)
            metrics = [Metric(INTERPOLATION_METRIC_PREFIX + column, float(value), stamp, step)
                       for column in curve.columns for step, value in enumerate(curve[column])]
            for start in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=metrics[start:start + _MAX_METRICS_PER_BATCH])
            for path in files:
                self.log_artifact(run_id, path)
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    # -- artifacts -----------------------------------------------------------------
    def log_artifact(self, run_id: str, path: str | Path) -> None:
        self.client.log_artifact(run_id, str(path))

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def download_artifact(self, run_id: str, name: str) -> Path:
        """A run's artifact as a local file; a missing run or file is a FileNotFoundError."""
        try:
            return Path(self.client.download_artifacts(run_id, name))
        except Exception as err:  # MlflowException for unknown runs, OSError for missing files
            raise FileNotFoundError(
                f"no checkpoint file and no MLflow run {run_id!r} with artifact {name!r} in {self.uri}: {err}"
            ) from None


class MlflowSink:
    """A training sink that records each epoch, and the final result, in one run."""

    def __init__(self, tracker: Tracker, run_id: str, config_yaml: str):
        self.tracker, self.run_id, self.config_yaml = tracker, run_id, config_yaml

    def on_epoch(self, record, checkpoint, final) -> None:
        metrics = {k: v for k, v in record.items() if k != schema.EPOCH}
        self.tracker.log_metrics(self.run_id, metrics, step=int(record[schema.EPOCH]))
        if final is not None:
            self.tracker.finish_trial_run(
                self.run_id, status=final.status, final_metrics=final.final,
                params=final.measure_params, config_yaml=self.config_yaml,
                history_csv=history_to_csv(final.history), error=final.error)
