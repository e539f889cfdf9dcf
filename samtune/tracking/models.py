"""Trials' final models as MLflow logged models.

Each trial that keeps its model gets one logged model named ``model``
(:data:`~samtune.schema.LOGGED_MODEL_NAME`), created from the trial's run: the trial's
hyperparameters as its params, the run's final metrics linked to it (the test ones also
to the evaluation data set), and two files: ``model.pt`` (``{"config", "model"}``, the
state dict, read back with ``torch.load(weights_only=True)``: opening a model from a
shared server runs no one's code) and ``config.yaml`` (the trial, runnable with
``samtune train --config``).  The UI lists it under the run's "Logged models" and the
experiment's "Models" tab; ``models:/<model id>`` names it anywhere.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import LoggedModelOutput, Metric

from samtune import schema
from samtune.tracking.store import Tracker

# final metrics measured on the test split: the ones linked to the evaluation data set
_EVALUATION_METRICS = ("final_test_error", "final_test_loss")


def log_trial_model(tracker: Tracker, run_id: str, state: dict[str, Any], *, config_yaml: str,
                    params: dict[str, str], metrics: dict[str, float], step: int) -> str:
    """Log ``state``'s config and weights as the run's logged model, with ``metrics``
    linked to it; returns the model id."""
    import torch

    client = tracker.client
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=schema.LOGGED_MODEL_NAME, source_run_id=run_id,
                                       params=params, model_type=schema.LOGGED_MODEL_TYPE)
    try:
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"config": state["config"], "model": state["model"]}, Path(folder) / schema.ARTIFACT_MODEL)
            (Path(folder) / schema.ARTIFACT_CONFIG).write_text(config_yaml)
            client.log_model_artifacts(model.model_id, folder)
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    _log_model_metrics(tracker, run_id, model.model_id, metrics, step)
    return model.model_id


def _log_model_metrics(tracker: Tracker, run_id: str, model_id: str, metrics: dict[str, float], step: int) -> None:
    evaluation = tracker.evaluation_dataset(run_id)
    stamp = int(time.time() * 1000)
    batch = []
    for key, value in metrics.items():
        dataset = evaluation if key in _EVALUATION_METRICS and evaluation else (None, None)
        batch.append(Metric(key, float(value), stamp, step, model_id=model_id,
                            dataset_name=dataset[0], dataset_digest=dataset[1]))
    if batch:
        tracker.client.log_batch(run_id, metrics=batch)


def trial_model_id(tracker: Tracker, run_id: str) -> str | None:
    """The id of the run's logged model (its latest, should there be several), or None."""
    client = tracker.client
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{schema.LOGGED_MODEL_NAME}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], max_results=1)
    return found[0].model_id if found else None


def model_run_id(tracker: Tracker, model_uri: str) -> str:
    """The run a ``models:/`` URI's model was logged from (a logged model's id, or a
    registered model's name and version or alias)."""
    reference = model_uri.removeprefix("models:/").strip("/")
    client = tracker.client
    if "/" not in reference:
        return client.get_logged_model(reference).source_run_id
    name, version = reference.split("/", 1)
    if version.startswith("@"):
        return client.get_model_version_by_alias(name, version[1:]).run_id
    return client.get_model_version(name, version).run_id


def keep_best_models(tracker: Tracker, experiment_id: str, parent_run_id: str, *, metric: str, mode: str,
                     keep: int) -> int:
    """Delete the logged models of a search's trials but the ``keep`` best by ``metric``
    (models of trials without it go first); returns how many were deleted.  Their files
    go with ``mlflow gc``."""
    client = tracker.client
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{schema.TAG_PARENT}` = '{parent_run_id}'",
                              max_results=50_000)
    sign = 1 if mode == "min" else -1

    def rank(run) -> tuple[int, float]:
        value = run.data.metrics.get(metric)
        return (0, sign * value) if value is not None and value == value else (1, 0.0)

    deleted = 0
    for run in sorted(runs, key=rank)[keep:]:
        model_id = trial_model_id(tracker, run.info.run_id)
        if model_id is not None:
            client.delete_logged_model(model_id)
            deleted += 1
    return deleted
