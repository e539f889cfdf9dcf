"""A data-parallel trial: a Tune trial whose training runs on Ray Train workers.

The Tune trial (:func:`samtune_parallel_trial`) only drives: it validates the trial,
opens its MLflow run and starts a ``TorchTrainer`` of ``context.workers`` workers,
each reserving ``context.worker_resources``.  Every worker runs the same
:func:`samtune.trial.train` on its share of each global batch (``samtune.trial.replica``);
rank 0 writes the MLflow run and the checkpoints, and Ray Train's
``TuneReportCallback`` hands rank 0's results to Tune, so the search sees a
data-parallel trial exactly like a single-process one.

Retries and ``--resume``: the Ray Train run is named after the Tune trial and kept
under the search's Ray folder, so a trial started again continues from its latest
checkpoint (Ray Train restores it from the run's storage), on the same worker count.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ray import tune

from samtune.search.context import TrackingCredentials, TrialContext
from samtune.search.trainable import (
    CHECKPOINT_FILE,
    RUN_ID_KEY,
    RaySink,
    log_datasets_once,
    open_trial_run,
    prepare_trial,
    result_metrics,
)
from samtune.tracking.store import Tracker
from samtune.tracking.trial_run import TrialRun

# the driving Tune trial holds almost nothing: its Ray Train workers reserve the resources
DRIVER_CPU = 0.01
TRAIN_RUN_PREFIX = "trial-"


def trial_driver_resources() -> dict[str, float]:
    return {"cpu": DRIVER_CPU}


def samtune_parallel_trial(hparams: dict[str, Any], context: TrialContext,
                           credentials: TrackingCredentials | None = None,
                           worker_loop: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Ray Tune function trainable: one data-parallel samtune trial (``worker_loop``
    replaces the workers' loop in tests that inject faults)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    prepared = prepare_trial(hparams, context, credentials)
    if prepared is None:
        return
    tracker, config, labels = prepared
    trial_id = tune.get_context().get_trial_id()
    from samtune.trial.loop import open_data

    # a retried trial finds the run its earlier attempt opened (by trial id)
    run = open_trial_run(context, tracker, config, labels, None, hparams)
    # the workers open the data on their devices; its records are the same on the CPU
    log_datasets_once(run, lambda: open_data(config.model_copy(update={"device": "cpu"})).records(), resumed=False)
    gpu = float(context.worker_resources.get("gpu", 0))
    per_worker = {"CPU": float(context.worker_resources.get("cpu", 1))} | ({"GPU": gpu} if gpu else {})
    trainer = TorchTrainer(
        worker_loop or train_worker,
        train_loop_config={"values": config.model_dump(mode="json"), "context": context, "run_id": run.run_id,
                           "credentials": credentials},
        scaling_config=ray.train.ScalingConfig(
            num_workers=context.workers, use_gpu=gpu > 0,
            resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(name=TRAIN_RUN_PREFIX + trial_id, storage_path=context.parallel_storage,
                                       callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel trial."""
    import ray.train
    from ray.train.torch import get_device

    from samtune.config import make_trial_config
    from samtune.trial.loop import open_data, train
    from samtune.trial.replica import Replica

    context: TrialContext = loop_config["context"]
    if loop_config["credentials"] is not None:
        loop_config["credentials"].apply()
    train_context = ray.train.get_context()
    replica = Replica(train_context.get_world_rank(), train_context.get_world_size())
    config = make_trial_config(loop_config["values"] | {"device": str(get_device())}, where="trial")
    resume = _load_train_checkpoint()
    if resume is not None:
        resume.pop(RUN_ID_KEY, None)
    if replica.is_main:
        run = TrialRun(Tracker(context.tracking_uri), loop_config["run_id"], config, keep_model=context.log_models)
        run.monitor_system(resume=True)  # the driving trial's run: rank 0's machine
        sink = RaySink(context, run, config.epochs, report=ray.train.report, checkpoint_type=ray.train.Checkpoint)
    else:
        sink = FollowerSink(context, config.epochs)
    try:
        train(config, sink, resume=resume, replica=replica, data=open_data(config))
    finally:
        if replica.is_main:
            sink.run.stop_monitor()


class FollowerSink:
    """A worker other than rank 0: takes part in each checkpoint (it gathers every
    worker's RNG state) and reports in step with rank 0, recording nothing."""

    def __init__(self, context: TrialContext, epochs: int):
        self.context, self.epochs = context, epochs

    def on_epoch(self, record, checkpoint, final) -> None:
        import ray.train

        checkpoint()
        ray.train.report(result_metrics(self.context, record, final, self.epochs))


def _load_train_checkpoint() -> dict[str, Any] | None:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


