"""A data-parallel trial: a Tune trial whose training runs on Ray Train workers.

The Tune trial (:func:`samtune_parallel_trial`) only drives: it validates the trial,
opens its MLflow run and starts a ``TorchTrainer`` per stage of its worker layout
(:class:`~samtune.spec.WorkerLayout`): one for a fixed worker count, one per run of
epochs on one count when the workers grow with the batch.  Every worker runs the same
:func:`samtune.trial.train` on its share of each global batch (``samtune.trial.replica``);
rank 0 writes the MLflow run and the checkpoints, and Ray Train's
``TuneReportCallback`` hands rank 0's results to Tune, so the search sees a
data-parallel trial exactly like a single-process one.  Between stages only the
driver holds anything (:data:`DRIVER_CPU`): the GPUs a small stage does not use are
free for the search's other trials.

A stage starts from the previous stage's last checkpoint, taken on another worker
count (``Trial.restore(regroup=True)``): the weights, optimizer state, schedules,
counters and every later global batch (order and augmentation: the loader draws them
whole, on every worker) carry over bit for bit; each worker's own random streams
(dropout, drop-path, mixing draws) start afresh from (seed, epoch, rank), and the
gradient all-reduce sums in another order.

Retries and ``--resume``: each stage's Ray Train run is named after the Tune trial and
the stage and kept under the search's Ray folder.  The trial's MLflow run records how
many stages are done and the checkpoint the next starts from (tags
``samtune.stages_done``, ``samtune.checkpoint``), so a trial started again skips them;
the interrupted stage continues from its latest checkpoint (Ray Train restores it from
the run's storage), on its own worker count.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ray import tune

from samtune import schema
from samtune.search.callbacks import checkpoint_uri
from samtune.search.context import TrackingCredentials, TrialContext
from samtune.search.trainable import (
    CHECKPOINT_FILE,
    RUN_ID_KEY,
    STATUS_KEY,
    RaySink,
    log_datasets_once,
    open_trial_run,
    prepare_trial,
    result_metrics,
)
from samtune.spec import Stage
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
    prepared = prepare_trial(hparams, context, credentials)
    if prepared is None:
        return
    tracker, config, labels = prepared
    from samtune.trial.loop import open_data

    # a retried trial finds the run its earlier attempt opened (by trial id)
    run = open_trial_run(context, tracker, config, labels, None, hparams)
    # the workers open the data on their devices; its records are the same on the CPU
    log_datasets_once(run, lambda: open_data(config.model_copy(update={"device": "cpu"})).records(), resumed=False)
    stages = context.layout.stages_of(config)
    tracker.set_tag(run.run_id, schema.TAG_WORKERS, stages_text(stages))
    loop_config = {"values": config.model_dump(mode="json"), "context": context, "run_id": run.run_id,
                   "credentials": credentials}
    done, start_from = _stages_done(tracker, run.run_id)
    for index, stage in enumerate(stages[done:], start=done):
        name = _train_run_name(tune.get_context().get_trial_id(), index, len(stages))
        result = _fit_stage(worker_loop or train_worker, loop_config | {"until": stage.end, "start_from": start_from},
                            context, stage, name)
        if STATUS_KEY in (result.metrics or {}):  # the trial ended in this stage (done, diverged)
            return
        start_from = result.checkpoint
        tracker.set_tag(run.run_id, schema.TAG_CHECKPOINT, checkpoint_uri(start_from))
        tracker.set_tag(run.run_id, schema.TAG_STAGES_DONE, str(index + 1))


def _stages_done(tracker: Tracker, run_id: str):
    """How many stages an earlier attempt of the trial trained, and the checkpoint the
    next starts from (a retry skips them: starting their workers again costs seconds)."""
    import ray.train

    done = tracker.run_tag(run_id, schema.TAG_STAGES_DONE)
    location = tracker.run_tag(run_id, schema.TAG_CHECKPOINT)
    if not done or not location:
        return 0, None
    return int(done), ray.train.Checkpoint(location)


def _fit_stage(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], context: TrialContext,
               stage: Stage, name: str):
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpu = float(context.worker_resources.get("gpu", 0))
    per_worker = {"CPU": float(context.worker_resources.get("cpu", 1))} | ({"GPU": gpu} if gpu else {})
    trainer = TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=stage.workers, use_gpu=gpu > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(name=name, storage_path=context.parallel_storage,
                                       callbacks=[TuneReportCallback()]),
    )
    return trainer.fit()


def _train_run_name(trial_id: str, index: int, stages: int) -> str:
    """A fixed layout keeps one run per trial, named as before stages existed."""
    return TRAIN_RUN_PREFIX + trial_id + (f"-stage{index + 1}" if stages > 1 else "")


def stages_text(stages: list[Stage]) -> str:
    """The run's worker layout as its tag shows it: ``1 (epochs 1-2), 2 (epochs 3-4)``."""
    return ", ".join(f"{s.workers} (epochs {s.first + 1}-{s.end})" for s in stages)


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel trial: trains its stage (until epoch
    ``loop_config["until"]``), from its own run's latest checkpoint, else from the
    previous stage's (``start_from``)."""
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
    resume = _load_train_checkpoint(ray.train.get_checkpoint() or loop_config.get("start_from"))
    if resume is not None:
        resume.pop(RUN_ID_KEY, None)
    if replica.is_main:
        run = TrialRun(Tracker(context.tracking_uri), loop_config["run_id"], config, keep_model=context.log_models)
        run.monitor_system(resume=True)  # the driving trial's run: rank 0's machine
        sink = RaySink(context, run, config.epochs, report=ray.train.report, checkpoint_type=ray.train.Checkpoint)
    else:
        sink = FollowerSink(context, config.epochs)
    try:
        train(config, sink, resume=resume, replica=replica, data=open_data(config),
              until_epoch=loop_config.get("until"), regroup=context.layout.grows,
              sync_batchnorm=context.layout.sync_batchnorm)
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


def _load_train_checkpoint(checkpoint) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


