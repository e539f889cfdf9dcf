"""The Ray Tune trainable: one samtune trial in a Ray worker.

Tune hands it the trial's hyperparameters; everything else comes in the
:class:`~samtune.search.context.TrialContext` bound with ``tune.with_parameters``.
The trial's data is opened once here and handed to the loop and to its run.  Each
epoch goes to the trial's own MLflow child run (:class:`~samtune.tracking.TrialRun`)
and to Tune with a checkpoint.  The checkpoint carries the MLflow run id, so a retried
or resumed trial continues its own run instead of opening a second one.  A new run gets
the trial's data set as its MLflow dataset inputs.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from ray import tune

from samtune import schema
from samtune.budgets import with_budget
from samtune.config import ConfigError, TrialConfig, make_trial_config
from samtune.data.records import DatasetRecord
from samtune.search.callbacks import TOTAL_EPOCHS_KEY
from samtune.search.context import TrackingCredentials, TrialContext
from samtune.spec import check_batches_split, expand_bundles
from samtune.tracking.run_names import trial_number, trial_run_name
from samtune.tracking.store import Tracker
from samtune.tracking.trial_run import TrialRun
from samtune.trial.lineage import LINEAGE_KEY, changes, extend, schedule_csv

CHECKPOINT_FILE = schema.RAY_CHECKPOINT_FILE
RUN_ID_KEY = "mlflow_run_id"  # the trial's MLflow run, stored in its checkpoints
STATUS_KEY = schema.STATUS_RESULT_KEY


def result_metrics(context: TrialContext, record: dict[str, float], final, epochs: int | None) -> dict[str, Any]:
    """One epoch as Tune's result: the record, the objective's end-of-trial metrics (NaN
    until the end), the would-be final metrics, the planned ``epochs`` (for the driver's
    progress display) and, at the end, the final result and status."""
    from samtune.trial.loop import final_metrics

    metrics: dict[str, Any] = dict(record)
    metrics.update({k: math.nan for k in context.end_of_trial_keys})
    metrics.update(final_metrics(record))
    if epochs is not None:
        metrics[TOTAL_EPOCHS_KEY] = epochs
    if final is not None:
        metrics.update(final.final)
        metrics[STATUS_KEY] = final.status
    return metrics


class RaySink:
    """Sends each epoch to MLflow and to Ray with a checkpoint: to Tune (``tune.report``)
    or, on rank 0 of a data-parallel trial, to Ray Train (``ray.train.report``)."""

    def __init__(self, context: TrialContext, run: TrialRun, epochs: int | None = None, report=None,
                 checkpoint_type=None, lineage: list[dict[str, Any]] | None = None):
        self.context, self.run, self.epochs = context, run, epochs
        self.lineage = lineage  # population-based training: the segments this trial trained through
        self.report = report or tune.report
        self.checkpoint_type = checkpoint_type or tune.Checkpoint

    def on_epoch(self, record, checkpoint, final) -> None:
        state = checkpoint()  # first: in a data-parallel trial every worker takes part in it
        if final is not None and self.lineage is not None:
            self.run.log_text(schedule_csv(final.history, self.lineage), schema.ARTIFACT_SCHEDULE)
        # closes the run before the last report; the state taken above, as every rank took part in it
        self.run.on_epoch(record, lambda: state, final)
        extra = {RUN_ID_KEY: self.run.run_id} | ({LINEAGE_KEY: self.lineage} if self.lineage is not None else {})
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state | extra, Path(folder) / CHECKPOINT_FILE)
            self.report(result_metrics(self.context, record, final, self.epochs),
                        checkpoint=self.checkpoint_type.from_directory(folder))


def samtune_trial(hparams: dict[str, Any], context: TrialContext,
                  credentials: TrackingCredentials | None = None) -> None:
    """Ray Tune function trainable: one samtune trial."""
    from samtune.trial.loop import open_data, train

    prepared = prepare_trial(hparams, context, credentials)
    if prepared is None:
        return
    tracker, config, labels = prepared
    resume = _load_checkpoint()
    saved_run = resume.pop(RUN_ID_KEY) if resume else None
    inherited = resume.pop(LINEAGE_KEY, None) if resume else None
    run = open_trial_run(context, tracker, config, labels, saved_run, hparams)
    data = open_data(config)  # after the run opens: a trial whose data cannot be read is recorded as failed
    log_datasets_once(run, data.records, resumed=resume is not None)
    lineage = trial_lineage(run, config, resume, inherited) if context.population else None
    run.monitor_system(resume=resume is not None)
    try:
        train(config, RaySink(context, run, config.epochs, lineage=lineage), resume=resume, data=data)
    finally:
        run.stop_monitor()


def trial_lineage(run: TrialRun, config: TrialConfig, resume: dict[str, Any] | None,
                  inherited: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """This trial's segments; a start from another trial's checkpoint (PBT's exploit) is
    recorded on its run: the donor and epoch as a tag, the whole ancestry as an artifact."""
    epoch = resume["epoch"] if resume else 0
    segments, cloned = extend(inherited, epoch=epoch, trial_id=tune.get_context().get_trial_id(),
                              run_id=run.run_id, values=config.model_dump())
    if cloned:
        run.tracker.set_tag(run.run_id, schema.TAG_CLONED_FROM, f"{inherited[-1]['trial_id']} at epoch {epoch}")
        steps = [changes(a, b) for a, b in zip(segments, segments[1:])]
        run.log_text(json.dumps({"segments": segments, "changes": steps}, indent=2), schema.ARTIFACT_LINEAGE)
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
        if context.layout.data_parallel:
            check_batches_split(values, context.layout)
    except (ConfigError, ValueError) as err:
        _record_invalid_trial(context, tracker, values, str(err))
        return None
    return tracker, config, labels


def open_trial_run(context: TrialContext, tracker: Tracker, config: TrialConfig, labels: dict[str, str],
                   run_id: str | None, hparams: dict[str, Any]) -> TrialRun:
    """The trial's MLflow run: the one an earlier attempt of this trial opened, else the
    one its checkpoint names, else a new one, named by its searched values
    (``hparams``: a grid's bundle axes by bundle name).  (Under PBT the checkpoint may
    be another trial's: its own run comes first.)"""
    trial = tune.get_context()
    run_id = tracker.find_trial_run(context.experiment_id, trial.get_trial_id(), context.parent_run_id) or run_id
    if run_id is not None:
        return TrialRun.reopen(tracker, run_id, config, keep_model=context.log_models)
    name = trial_run_name(hparams, context.searched_keys, trial_number(trial.get_trial_name()))
    return TrialRun.start(tracker, context.experiment_id, config, run_name=name, trial_id=trial.get_trial_id(),
                          parent_run_id=context.parent_run_id, labels=labels, keep_model=context.log_models)


def log_datasets_once(run: TrialRun, records: Callable[[], Iterable[DatasetRecord]], resumed: bool) -> None:
    """The data set's ``records()`` on a new run, or on one an earlier attempt opened (and
    died in) before its first checkpoint; a run resumed from a checkpoint has them."""
    if not resumed and not run.has_datasets():
        run.log_datasets(records())


def _load_checkpoint() -> dict[str, Any] | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def _record_invalid_trial(context: TrialContext, tracker: Tracker, values: dict[str, Any],
                          error: str) -> None:
    trial = tune.get_context()
    run_id = tracker.start_trial_run(
        context.experiment_id, params={k: str(v) for k, v in values.items()},
        run_name=trial_run_name(values, context.searched_keys, trial_number(trial.get_trial_name())),
        trial_id=trial.get_trial_id(),
        parent_run_id=context.parent_run_id)
    tracker.end_trial_run(run_id, schema.FAILED, error)
    tune.report({STATUS_KEY: schema.FAILED} | {k: math.nan for k in context.required_keys})
