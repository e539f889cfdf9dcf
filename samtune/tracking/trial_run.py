"""One trial's MLflow run from start to end, the same for every way a trial runs:
``samtune train``, ``samtune replay``, the search's trainable and rank 0 of a
data-parallel trial.

- :meth:`TrialRun.start` opens the run: every trial parameter as a param (with a grid
  search's bundle labels), the identity tags (hyperparameter digest, code version),
  ``samtune.status=running`` and the config as ``config.yaml``;
  :meth:`TrialRun.reopen` continues a run a retried or resumed trial opened before;
- :meth:`TrialRun.log_datasets` links the data set records the trial's data gives;
- as a training sink (:meth:`TrialRun.on_epoch`) each epoch's record becomes metrics at
  step = epoch, and the final result ends the run: final metrics, the measures'
  definitions, ``history.csv``, the config it ended with, the model as an MLflow
  logged model (when kept, :mod:`samtune.tracking.models`), and ``samtune.status``
  with the MLflow end state;
- :meth:`TrialRun.end` ends it otherwise (failed, interrupted), with the reason;
- while it is open, MLflow's system metrics monitor samples CPU, memory and (with
  ``nvidia-ml-py`` and a GPU) GPU use into it, ``system/...`` in the UI's System metrics tab.

The tracking module writes what it is given: the trial's data, weights and results come
from whoever runs the trial.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from samtune import schema
from samtune.config import TrialConfig
from samtune.data.records import DatasetRecord
from samtune.tracking.provenance import identity_tags
from samtune.tracking.store import Tracker, history_to_csv

_process_monitor: TrialRun | None = None  # the run whose system metrics this process samples


class TrialRun:
    """A trial's run in ``tracker``'s store; ``keep_model`` logs the final weights
    as the run's logged model (the config and the model's state dict)."""

    def __init__(self, tracker: Tracker, run_id: str, config: TrialConfig, *, keep_model: bool = False):
        self.tracker, self.run_id, self.config, self.keep_model = tracker, run_id, config, keep_model
        self.model_id: str | None = None
        self._monitor = None

    def monitor_system(self, resume: bool = False) -> TrialRun:
        """Start sampling this process's machine into the run, until the run ends or
        :meth:`stop_monitor`.  One monitor per process: Ray reuses a worker process for
        the next trial, and a trial it stopped never returns to stop its own."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        global _process_monitor
        if _process_monitor is not None:
            _process_monitor.stop_monitor()
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=schema.SYSTEM_METRICS_INTERVAL_S,
                                             resume_logging=resume, tracking_uri=self.tracker.uri)
        self._monitor.start()
        _process_monitor = self
        return self

    def stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    @classmethod
    def start(cls, tracker: Tracker, experiment_id: str, config: TrialConfig, *, run_name: str, trial_id: str,
              parent_run_id: str | None = None, labels: dict[str, str] | None = None,
              tags: dict[str, str] | None = None, keep_model: bool = False) -> TrialRun:
        params = config.to_params() | (labels or {})
        tags = identity_tags(config.hparams) | (tags or {})
        run_id = tracker.start_trial_run(experiment_id, params=params, run_name=run_name, trial_id=trial_id,
                                         parent_run_id=parent_run_id, tags=tags)
        run = cls(tracker, run_id, config, keep_model=keep_model)
        run.tracker.log_text(run_id, config.to_yaml(), schema.ARTIFACT_CONFIG)
        return run

    @classmethod
    def reopen(cls, tracker: Tracker, run_id: str, config: TrialConfig, *, keep_model: bool = False) -> TrialRun:
        """The run of a trial that starts again (a retry, a resumed search): never a second run."""
        tracker.reopen_run(run_id)
        return cls(tracker, run_id, config, keep_model=keep_model)

    def log_datasets(self, records: Iterable[DatasetRecord]) -> None:
        self.tracker.log_datasets(self.run_id, records)

    def has_datasets(self) -> bool:
        return self.tracker.has_dataset(self.run_id)

    def log_text(self, text: str, name: str) -> None:
        self.tracker.log_text(self.run_id, text, name)

    def on_epoch(self, record: dict[str, float], checkpoint: Callable[[], dict[str, Any]], final) -> None:
        metrics = {k: v for k, v in record.items() if k != schema.EPOCH}
        self.tracker.log_metrics(self.run_id, metrics, step=int(record[schema.EPOCH]))
        if final is not None:
            if self.keep_model:
                self.log_model(checkpoint(), final.final, step=int(record[schema.EPOCH]))
            self.finish(final)

    def log_model(self, state: dict[str, Any], metrics: dict[str, float], step: int) -> str:
        """The trained weights as the run's logged model, ``metrics`` linked to it."""
        from samtune.config import HYPERPARAM_KEYS
        from samtune.tracking.models import log_trial_model

        params = {key: value for key, value in self.config.to_params().items() if key in HYPERPARAM_KEYS}
        self.model_id = log_trial_model(self.tracker, self.run_id, state, config_yaml=self.config.to_yaml(),
                                        params=params, metrics=metrics, step=step)
        return self.model_id

    def finish(self, result) -> None:
        """The trial's result (a :class:`~samtune.trial.loop.TrialResult`): final metrics
        (unless the logged model took them), the parameters only known at the end (the
        measures' definitions), artifacts, ``samtune.status`` and the MLflow end state."""
        self.stop_monitor()
        self.tracker.finish_trial_run(
            self.run_id, status=result.status, final_metrics={} if self.model_id else result.final,
            params=result.measure_params, config_yaml=self.config.to_yaml(),
            history_csv=history_to_csv(result.history), error=result.error)

    def end(self, status: str, error: str | None = None) -> None:
        self.stop_monitor()
        self.tracker.end_trial_run(self.run_id, status, error)
