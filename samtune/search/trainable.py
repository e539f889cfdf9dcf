"""The Ray Tune trainable: one samtune trial in a Ray worker.

Tune hands it the trial's hyperparameters; everything else comes in the
:class:`~samtune.search.context.TrialContext` bound with ``tune.with_parameters``.
Each epoch goes to the trial's own MLflow child run and to Tune with a checkpoint.
The checkpoint carries the MLflow run id, so a retried or resumed trial continues
its own run instead of opening a second one.  A new run gets the trial's data set
as its MLflow dataset inputs (``Tracker.log_trial_dataset``).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from ray import tune

from samtune import schema
from samtune.budgets import with_budget
from samtune.config import ConfigError, TrialConfig, make_trial_config
from samtune.lineage import LINEAGE_KEY, changes, extend, schedule_csv
from samtune.provenance import identity_tags
from samtune.search.callbacks import TOTAL_EPOCHS_KEY
from samtune.search.context import TrackingCredentials, TrialContext
from samtune.spec import check_batches_split, expand_bundles
from samtune.tracking import MlflowSink, Tracker

CHECKPOINT_FILE = "trial.pt"
RUN_ID_KEY = "mlflow_run_id"  # the trial's MLflow run, stored in its checkpoints
STATUS_KEY = "samtune_status"  # the trial's status in its last Tune result


def result_metrics(context: TrialContext, record: dict[str, float], final, epochs: int | None) -> dict[str, Any]:
    """One epoch as Tune's result: the record, the objective's end-of-trial metrics (NaN
    until the end), the would-be final metrics, the planned ``epochs`` (for the driver's
    progress display) and, at the end, the final result and status."""
    metrics: dict[str, Any] = dict(record)
    metrics.update({k: math.nan for k in context.end_of_trial_keys})
    metrics.update({schema.FINAL_PREFIX + k: record[k] for k in schema.FINAL_OF})
    if epochs is not None:
        metrics[TOTAL_EPOCHS_KEY] = epochs
    if final is not None:
        metrics.update(final.final)
        metrics[STATUS_KEY] = final.status
    return metrics


class RaySink:
    """Sends each epoch to MLflow and to Ray with a checkpoint: to Tune (``tune.report``)
    or, on rank 0 of a data-parallel trial, to Ray Train (``ray.train.report``)."""

    def __init__(self, context: TrialContext, tracker: Tracker, run_id: str, config_yaml: str,
                 epochs: int | None = None, report=None, checkpoint_type=None,
                 lineage: list[dict[str, Any]] | None = None):
        self.context, self.tracker, self.run_id, self.epochs = context, tracker, run_id, epochs
        self.lineage = lineage  # population-based training: the segments this trial trained through
        self.mlflow = MlflowSink(tracker, run_id, config_yaml)
        self.report = report or tune.report
        self.checkpoint_type = checkpoint_type or tune.Checkpoint

    def on_epoch(self, record, checkpoint, final) -> None:
        state = checkpoint()  # first: in a data-parallel trial every worker takes part in it
        if final is not None and self.lineage is not None:
            self.tracker.log_text(self.run_id, schedule_csv(final.history, self.lineage), schema.ARTIFACT_SCHEDULE)
        self.mlflow.on_epoch(record, checkpoint, final)  # closes the run before the last report
        extra = {RUN_ID_KEY: self.run_id} | ({LINEAGE_KEY: self.lineage} if self.lineage is not None else {})
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state | extra, Path(folder) / CHECKPOINT_FILE)
            self.report(result_metrics(self.context, record, final, self.epochs),
                        checkpoint=self.checkpoint_type.from_directory(folder))


def samtune_trial(hparams: dict[str, Any], context: TrialContext,
                  credentials: TrackingCredentials | None = None) -> None:
    """Ray Tune function trainable: one samtune trial."""
    from samtune.train import train

    prepared = prepare_trial(hparams, context, credentials)
    if prepared is None:
        return
    tracker, config, labels = prepared
    resume = _load_checkpoint()
    saved_run = resume.pop(RUN_ID_KEY) if resume else None
    inherited = resume.pop(LINEAGE_KEY, None) if resume else None
    run_id = open_trial_run(context, tracker, config, labels, saved_run, resumed=resume is not None)
    lineage = trial_lineage(tracker, run_id, config, resume, inherited) if context.population else None
    train(config, RaySink(context, tracker, run_id, config_yaml(config), config.epochs, lineage=lineage),
          resume=resume)


def trial_lineage(tracker: Tracker, run_id: str, config: TrialConfig, resume: dict[str, Any] | None,
                  inherited: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """This trial's segments; a start from another trial's checkpoint (PBT's exploit) is
    recorded on its run: the donor and epoch as a tag, the whole ancestry as an artifact."""
    epoch = resume["epoch"] if resume else 0
    segments, cloned = extend(inherited, epoch=epoch, trial_id=tune.get_context().get_trial_id(),
                              run_id=run_id, values=config.model_dump())
    if cloned:
        tracker.set_tag(run_id, schema.TAG_CLONED_FROM, f"{inherited[-1]['trial_id']} at epoch {epoch}")
        steps = [changes(a, b) for a, b in zip(segments, segments[1:])]
        tracker.log_text(run_id, json.dumps({"segments": segments, "changes": steps}, indent=2),
                         schema.ARTIFACT_LINEAGE)
    return segments


def prepare_trial(hparams: dict[str, Any], context: TrialContext, credentials: TrackingCredentials | None
                  ) -> tuple[Tracker, TrialConfig, dict[str, str]] | None:
    """The trial's tracker, config and bundle labels; None for a combination no trial can
    run, which is recorded as failed (and not retried)."""
    if credentials is not None:  # a worker on a node started without them
        credentials.apply()
    values, labels = expand_bundles({**hparams, **context.run_settings}, context.bundles)
    tracker = Tracker(context.tracking_uri)
    try:
        if context.equal_budget is not None:
            values = with_budget(values, *context.equal_budget)
        config = make_trial_config(values, where="trial")
        if context.workers > 1:
            check_batches_split(values, context.workers)
    except (ConfigError, ValueError) as err:
        _record_invalid_trial(context, tracker, values, str(err))
        return None
    return tracker, config, labels


def open_trial_run(context: TrialContext, tracker: Tracker, config: TrialConfig, labels: dict[str, str],
                   run_id: str | None, resumed: bool) -> str:
    """The trial's MLflow run (see :func:`_open_run`), with its data set logged unless
    a checkpoint says it already has it."""
    run_id = _open_run(context, tracker, config, labels, run_id)
    # a new run, or one an earlier attempt opened (and died in) before its first
    # checkpoint; a run resumed from a checkpoint has its data set already
    if not resumed and not tracker.has_dataset(run_id):
        tracker.log_trial_dataset(run_id, config)
    return run_id


def config_yaml(config: TrialConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _load_checkpoint() -> dict[str, Any] | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def _open_run(context: TrialContext, tracker: Tracker, config: TrialConfig, labels: dict[str, str],
              run_id: str | None) -> str:
    """The trial's MLflow run: the one an earlier attempt of this trial opened, else the
    one its checkpoint names, else a new one.  (Under PBT the checkpoint may be another
    trial's: its own run comes first.)"""
    trial = tune.get_context()
    run_id = tracker.find_trial_run(context.experiment_id, trial.get_trial_id(), context.parent_run_id) or run_id
    if run_id is not None:
        tracker.reopen_run(run_id)
        return run_id
    return tracker.start_trial_run(
        context.experiment_id, params=config.to_params() | labels, run_name=trial.get_trial_name(),
        trial_id=trial.get_trial_id(), parent_run_id=context.parent_run_id,
        tags=identity_tags(config.hparams))


def _record_invalid_trial(context: TrialContext, tracker: Tracker, values: dict[str, Any],
                          error: str) -> None:
    trial = tune.get_context()
    run_id = tracker.start_trial_run(
        context.experiment_id, params={k: str(v) for k, v in values.items()},
        run_name=trial.get_trial_name(), trial_id=trial.get_trial_id(),
        parent_run_id=context.parent_run_id)
    tracker.end_trial_run(run_id, schema.FAILED, error)
    tune.report({STATUS_KEY: schema.FAILED} | {k: math.nan for k in context.required_keys})
