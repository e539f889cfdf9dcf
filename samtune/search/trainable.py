"""The Ray Tune trainable: one samtune trial in a Ray worker.

Each epoch goes to the trial's own MLflow child run and to Tune with a
checkpoint.  The checkpoint carries the MLflow run id, so a retried or resumed
trial continues its own run instead of opening a second one.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from ray import tune

from samtune import tracking
from samtune.config import ConfigError, make_trial_config
from samtune.search.runner import META_KEY
from samtune.spec import expand_bundles
from samtune.trial_runner import trial_params

CHECKPOINT_FILE = "trial.pt"
FINAL_KEYS = ("test_error", "train_error", "gen_gap", "test_loss", "train_loss")


class RaySink:
    """Sends each epoch to MLflow and to Tune, with a checkpoint."""

    def __init__(self, meta: dict[str, Any], run_id: str, config_yaml: str):
        self.meta, self.run_id = meta, run_id
        self.mlflow = tracking.MlflowSink(meta["uri"], run_id, config_yaml)

    def on_epoch(self, record, checkpoint, final) -> None:
        self.mlflow.on_epoch(record, checkpoint, final)  # closes the run before Tune's last report
        metrics = dict(record)
        # Tune wants every searched metric in every result: end-of-trial ones are NaN until then
        metrics.update({k: math.nan for k in self.meta["objective_keys"]})
        metrics.update({f"final_{k}": record[k] for k in FINAL_KEYS})
        if final is not None:
            metrics.update(final.final)
            metrics["samtune_status"] = final.status
        with tempfile.TemporaryDirectory() as folder:
            state = checkpoint() | {"mlflow_run_id": self.run_id}
            torch.save(state, Path(folder) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        self._maybe_inject_fault(int(record["epoch"]))

    def _maybe_inject_fault(self, epoch: int) -> None:
        if self.meta.get("fault_at_epoch") != epoch:
            return
        marker = Path(self.meta["fault_dir"]) / tune.get_context().get_trial_id()
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # once per trial
        except FileExistsError:
            return
        raise RuntimeError(f"injected fault after epoch {epoch}")


def samtune_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one samtune trial."""
    from samtune.train import train

    meta = config[META_KEY]
    values, labels = expand_bundles({k: v for k, v in config.items() if k != META_KEY},
                                    meta["bundles"])
    context = tune.get_context()
    try:
        trial_config = make_trial_config(values, where="trial")
    except ConfigError as err:  # a sampled combination no trial can run: record, don't retry
        _record_invalid_trial(meta, values, context, str(err))
        return
    resume = _load_checkpoint()
    run_id = resume.pop("mlflow_run_id") if resume else None
    run_id = _open_run(meta, trial_config, labels, context, run_id)
    config_yaml = yaml.safe_dump(trial_config.model_dump(mode="json"), sort_keys=False)
    train(trial_config, RaySink(meta, run_id, config_yaml), resume=resume)


def _load_checkpoint() -> dict[str, Any] | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def _open_run(meta, trial_config, labels, context, run_id: str | None) -> str:
    """The trial's MLflow run: the one its checkpoint names, else one an earlier
    attempt opened before its first checkpoint, else a new one."""
    uri, trial_id = meta["uri"], context.get_trial_id()
    run_id = run_id or tracking.find_trial_run(uri, meta["experiment_id"], trial_id, meta["parent_run_id"])
    if run_id is not None:
        tracking.reopen_run(uri, run_id)
        return run_id
    return tracking.start_trial_run(
        uri, meta["experiment_id"], params=trial_params(trial_config) | labels,
        run_name=context.get_trial_name(), trial_id=trial_id, parent_run_id=meta["parent_run_id"])


def _record_invalid_trial(meta, values, context, error: str) -> None:
    run_id = tracking.start_trial_run(
        meta["uri"], meta["experiment_id"], params={k: str(v) for k, v in values.items()},
        run_name=context.get_trial_name(), trial_id=context.get_trial_id(),
        parent_run_id=meta["parent_run_id"])
    tracking.end_trial_run(meta["uri"], run_id, "failed", error)
    tune.report({"samtune_status": "failed"} | {k: math.nan for k in meta["report_keys"]})
