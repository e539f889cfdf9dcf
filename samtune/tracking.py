"""MLflow layout of samtune (DESIGN.md, "MLflow layout").

experiment = search name; one parent run per search (``samtune.kind=search``);
one child run per trial (``samtune.kind=trial``, ``mlflow.parentRunId``,
``samtune.trial_id``, ``samtune.status``).  All writes go through an explicit
``MlflowClient`` and run id rather than MLflow's process-global "active run",
because Ray reuses worker processes across trials.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any, Iterable

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

TRIAL_STATUSES = ("completed", "diverged", "pruned", "failed")
_RUN_END_STATE = {"completed": "FINISHED", "diverged": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
DEFAULT_DB = "mlflow.db"


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


def _artifact_root(uri: str) -> str | None:
    """Keep a SQLite store's artifacts beside the database file."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def ensure_experiment(uri: str, name: str) -> str:
    """Create the experiment (and, for a new SQLite file, the schema) once, in the
    calling process, before any trial writes: parallel first use of a fresh
    SQLite store breaks its migrations (stack.md, MLflow pitfalls)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    root = _artifact_root(uri)
    location = f"{root}/{name}" if root else None
    return client.create_experiment(name, artifact_location=location)


def start_search_run(uri: str, experiment_id: str, *, run_name: str, spec_yaml: str,
                     search_keys: Iterable[str], tags: dict[str, str] | None = None) -> str:
    client = MlflowClient(uri)
    run = client.create_run(experiment_id, run_name=run_name, tags={
        "samtune.kind": "search", "samtune.search_keys": ",".join(search_keys), **(tags or {})})
    client.log_text(run.info.run_id, spec_yaml, "search.yaml")
    return run.info.run_id


def start_trial_run(uri: str, experiment_id: str, *, params: dict[str, str], run_name: str,
                    trial_id: str, parent_run_id: str | None = None,
                    extra_tags: dict[str, str] | None = None) -> str:
    """A new child run for a trial, with every trial parameter."""
    client = MlflowClient(uri)
    tags = {"samtune.kind": "trial", "samtune.trial_id": trial_id, "samtune.status": "running"}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags.update(extra_tags or {})
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a run RUNNING again when its trial resumes (never a second run)."""
    client = MlflowClient(uri)
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "samtune.status", "running")


def find_trial_run(uri: str, experiment_id: str, trial_id: str,
                   parent_run_id: str | None = None) -> str | None:
    query = f"tags.`samtune.trial_id` = '{trial_id}'"
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = MlflowClient(uri).search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    stamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if v is not None]
    MlflowClient(uri).log_batch(run_id, metrics=batch)



def finish_trial_run(uri: str, run_id: str, *, status: str, final_metrics: dict[str, float],
                     config_yaml: str, history_csv: str, error: str | None = None) -> None:
    """Final metrics, artifacts, ``samtune.status`` and the MLflow end state."""
    if status not in TRIAL_STATUSES:
        raise ValueError(f"status = {status!r}: allowed {TRIAL_STATUSES}")
    client = MlflowClient(uri)
    if final_metrics:
        log_metrics(uri, run_id, final_metrics)
    client.log_text(run_id, config_yaml, "config.yaml")
    client.log_text(run_id, history_csv, "history.csv")
    tags = [RunTag("samtune.status", status)]
    if error:
        tags.append(RunTag("samtune.error", error[:4000]))
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, _RUN_END_STATE[status])


def end_trial_run(uri: str, run_id: str, status: str, error: str | None = None) -> None:
    """Close a run whose trial ended without reaching ``finish_trial_run``
    (stopped by the scheduler, crashed, interrupted)."""
    client = MlflowClient(uri)
    tags = [RunTag("samtune.status", status)]
    if error:
        tags.append(RunTag("samtune.error", error[:4000]))
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, _RUN_END_STATE[status])


def close_running_children(uri: str, experiment_id: str, parent_run_id: str, status: str,
                           error: str | None = None) -> int:
    """Give every child run still RUNNING an end state; returns how many."""
    client = MlflowClient(uri)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=10_000)
    for run in runs:
        end_trial_run(uri, run.info.run_id, status, error)
    return len(runs)


def run_is_active(uri: str, run_id: str) -> bool:
    return MlflowClient(uri).get_run(run_id).info.status == "RUNNING"


def run_tag(uri: str, run_id: str, key: str) -> str | None:
    return MlflowClient(uri).get_run(run_id).data.tags.get(key)


def reopen_search_run(uri: str, run_id: str) -> None:
    MlflowClient(uri).update_run(run_id, status="RUNNING")


def end_search_run(uri: str, run_id: str, *, state: str = "FINISHED",
                   metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
    client = MlflowClient(uri)
    if metrics:
        log_metrics(uri, run_id, metrics)
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run_id, state)



def latest_search_run(uri: str, experiment_id: str) -> str | None:
    runs = MlflowClient(uri).search_runs(
        [experiment_id], filter_string="tags.`samtune.kind` = 'search'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None



def history_to_csv(history: list[dict[str, float]]) -> str:
    import pandas as pd

    buffer = io.StringIO()
    pd.DataFrame(history).to_csv(buffer, index=False)
    return buffer.getvalue()


class MlflowSink:
    """A training sink that records each epoch, and the final result, in one run."""

    def __init__(self, uri: str, run_id: str, config_yaml: str):
        self.uri, self.run_id, self.config_yaml = uri, run_id, config_yaml

    def on_epoch(self, record, checkpoint, final) -> None:
        metrics = {k: v for k, v in record.items() if k != "epoch"}
        log_metrics(self.uri, self.run_id, metrics, step=int(record["epoch"]))
        if final is not None:
            finish_trial_run(self.uri, self.run_id, status=final.status, final_metrics=final.final,
                             config_yaml=self.config_yaml, history_csv=history_to_csv(final.history),
                             error=final.error)


def log_artifact(uri: str, run_id: str, path: str | Path) -> None:
    MlflowClient(uri).log_artifact(run_id, str(path))


def download_artifact(uri: str, run_id: str, name: str) -> Path:
    """A run's artifact as a local file; a missing run or file is a FileNotFoundError."""
    try:
        return Path(MlflowClient(uri).download_artifacts(run_id, name))
    except Exception as err:  # MlflowException for unknown runs, OSError for missing files
        raise FileNotFoundError(
            f"no checkpoint file and no MLflow run {run_id!r} with artifact {name!r} in {uri}: {err}"
        ) from None
