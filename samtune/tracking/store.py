"""samtune's runs in one MLflow store.

experiment = search name; one parent run per search (``samtune.kind=search``);
one child run per trial (``samtune.kind=trial``, ``mlflow.parentRunId``,
``samtune.trial_id``, ``samtune.status``), with the data set it trained on as
MLflow dataset inputs (:func:`dataset_input`).  A :class:`Tracker` holds one
``MlflowClient`` for one store and writes by explicit run id, never through
MLflow's process-global "active run", because Ray reuses worker processes across
trials.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterable
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from samtune import schema
from samtune.data.records import EVALUATION, DatasetRecord
from samtune.tracking.uri import resolve_tracking_uri

_ERROR_CHARS = 4000  # MLflow tags hold at most 8000 characters
_SAFE_LITERAL = re.compile(r"[A-Za-z0-9_.:\-]+")
_MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
INTERPOLATION_METRIC_PREFIX = "interp_"  # interp_<column of the curve>, step = index along a


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


def dataset_input(record: DatasetRecord) -> DatasetInput:
    """A data set record (:mod:`samtune.data.records`) as MLflow's dataset input: source
    type ``local`` shows in the UI as "Path: ...", ``code`` as the code that made it."""
    dataset = Dataset(record.name, record.digest, record.source_type, record.source, profile=record.profile)
    return DatasetInput(dataset, [InputTag(DATASET_CONTEXT_TAG, record.context)])


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
        SQLite store breaks its schema migrations."""
        experiment = self.client.get_experiment_by_name(name)
        kind = {schema.TAG_EXPERIMENT_KIND: schema.EXPERIMENT_KIND}  # the UI's model-training view
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            if schema.TAG_EXPERIMENT_KIND not in experiment.tags:
                self.client.set_experiment_tag(experiment.experiment_id, *kind.popitem())
            return experiment.experiment_id
        root = self._artifact_root()
        return self.client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None,
                                             tags=kind)

    # -- search runs ---------------------------------------------------------------
    def start_search_run(self, experiment_id: str, *, run_name: str, spec_yaml: str,
                         search_keys: Iterable[str], tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(experiment_id, run_name=run_name, tags={
            schema.TAG_KIND: schema.KIND_SEARCH, schema.TAG_SEARCH_KEYS: ",".join(search_keys),
            **(tags or {})})
        self.client.log_text(run.info.run_id, spec_yaml, schema.ARTIFACT_SEARCH_SPEC)
        return run.info.run_id

    def latest_search_run(self, experiment_id: str | None = None) -> str | None:
        """The search run started last, in ``experiment_id`` or (None) in any experiment."""
        ids = [experiment_id] if experiment_id is not None else [
            e.experiment_id for e in self.client.search_experiments(max_results=50_000)]
        runs = self.client.search_runs(
            ids, filter_string=_tag_filter(schema.TAG_KIND, schema.KIND_SEARCH),
            order_by=["attributes.start_time DESC"], max_results=1) if ids else []
        return runs[0].info.run_id if runs else None

    def search_run(self, run_id: str):
        """A search's parent run; FileNotFoundError unless ``run_id`` is one."""
        run = self._run(run_id)
        if run.data.tags.get(schema.TAG_KIND) != schema.KIND_SEARCH:
            raise FileNotFoundError(f"run {run_id} in {self.uri} is not a search's parent run "
                                    f"(tag {schema.TAG_KIND} = {run.data.tags.get(schema.TAG_KIND)!r})")
        return run

    def reopen_search_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def end_search_run(self, run_id: str, *, state: str = "FINISHED",
                       metrics: dict[str, float] | None = None) -> None:
        if metrics:
            self.log_metrics(run_id, metrics)
        self.client.set_terminated(run_id, state)

    def fail_search_run(self, run_id: str, reason: str, *, killed: bool = False) -> None:
        """End a search that stopped before its end: its trials' runs still open and the
        parent run FAILED (KILLED when interrupted), with the reason as ``samtune.error``."""
        experiment_id = self.run_experiment_id(run_id)
        self.close_running_children(experiment_id, run_id, schema.FAILED, error=f"the search stopped: {reason}")
        self.client.set_tag(run_id, schema.TAG_ERROR, reason[:_ERROR_CHARS])
        self.client.set_terminated(run_id, "KILLED" if killed else "FAILED")

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
    def log_datasets(self, run_id: str, records: Iterable[DatasetRecord]) -> None:
        """Link the data set records to the run (a trial's train split, context
        ``training``, and its test split, ``evaluation``).  Trials of one experiment
        starting together may register the same data set at once; the store's unique key
        then refuses the later insert, and a second attempt finds the row the first one wrote."""
        inputs = [dataset_input(r) for r in records]
        try:
            self.client.log_inputs(run_id, datasets=inputs)
        except MlflowException as err:
            if "UNIQUE constraint" not in str(err) and "duplicate key" not in str(err):
                raise
            self.client.log_inputs(run_id, datasets=inputs)

    def has_dataset(self, run_id: str) -> bool:
        return bool(self.client.get_run(run_id).inputs.dataset_inputs)

    def evaluation_dataset(self, run_id: str) -> tuple[str, str] | None:
        """(name, digest) of the data set the run evaluates on, if it logged one."""
        for item in self.client.get_run(run_id).inputs.dataset_inputs:
            if any(t.key == DATASET_CONTEXT_TAG and t.value == EVALUATION for t in item.tags):
                return item.dataset.name, item.dataset.digest
        return None

    # -- interpolation runs --------------------------------------------------------
    def run_experiment_id(self, run_id: str) -> str:
        """The experiment of a run; an unknown run is a FileNotFoundError."""
        return self._run(run_id).info.experiment_id

    def _run(self, run_id: str):
        try:
            return self.client.get_run(run_id)
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
