"""Driver-side Tune callbacks: closing MLflow runs, and the progress lines."""

from __future__ import annotations

import math
import time
from pathlib import Path

from ray import tune

from samtune import schema
from samtune.tracking import Tracker


class MlflowRunCloser(tune.Callback):
    """Ends the MLflow run of a trial Tune stopped early (ASHA) or that failed for
    good: code after a function trainable's last report never runs."""

    def __init__(self, tracker: Tracker, experiment_id: str, parent_run_id: str):
        self.tracker, self.experiment_id, self.parent_run_id = tracker, experiment_id, parent_run_id

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial.trial_id, schema.PRUNED)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial.trial_id, schema.FAILED, _trial_error(trial))

    def _close(self, trial_id: str, status: str, error: str | None = None) -> None:
        run_id = self.tracker.find_trial_run(self.experiment_id, trial_id, self.parent_run_id)
        if run_id and self.tracker.run_is_active(run_id):
            self.tracker.end_trial_run(run_id, status, error)


def _trial_error(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text()[-2000:] if path else "trial errored"
    except OSError:
        return "trial errored"


class SearchProgress(tune.Callback):
    """One line per finished trial: how many finished and run, and the best so far."""

    def __init__(self, metric: str, mode: str, total: int):
        self.metric, self.mode, self.total = metric, mode, total
        self.best, self.best_trial, self.started = None, None, time.time()
        self.ended: set[str] = set()

    def on_trial_complete(self, iteration, trials, trial, **info):
        value = (trial.last_result or {}).get(self.metric)
        if value is not None and not math.isnan(value) and self._better(value):
            self.best, self.best_trial = value, trial.trial_id
        self._line(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial)

    def _better(self, value: float) -> bool:
        return self.best is None or (value < self.best if self.mode == "min" else value > self.best)

    def _line(self, trials, trial) -> None:
        # the trial's own status changes only after the callbacks have run
        self.ended.add(trial.trial_id)
        done = len(self.ended | {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")})
        running = sum(t.status == "RUNNING" and t.trial_id not in self.ended for t in trials)
        best = "-" if self.best is None else f"{self.best:.4f} ({self.best_trial})"
        print(f"[{time.time() - self.started:6.0f}s] trials finished {done}/{self.total}, "
              f"running {running}; best {self.metric} = {best}", flush=True)
