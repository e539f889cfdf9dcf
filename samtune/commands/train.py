"""``samtune train``: one trial outside a search, with a progress bar, its MLflow run and
a summary table; and the sinks the commands that train share."""

from __future__ import annotations

import sys
import time
import uuid

from tqdm import tqdm

from samtune import schema
from samtune.config import TrialConfig
from samtune.tracking.store import Tracker
from samtune.tracking.trial_run import TrialRun
from samtune.tracking.uri import runs_url, ui_command
from samtune.trial.loop import TrialResult, open_data, train


class ProgressSink:
    """One progress-bar step per epoch, with the latest errors as postfix; the bar
    appears with the first epoch, so a trial refused before it leaves none behind."""

    def __init__(self, epochs: int):
        self.epochs, self.bar = epochs, None

    def on_epoch(self, record, checkpoint, final) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.epochs, unit="epoch", file=sys.stdout, dynamic_ncols=True)
        self.bar.set_postfix(batch=int(record["batch_size"]), lr=f"{record['lr']:.3g}",
                             train_err=f"{record['train_error']:.4f}",
                             test_err=f"{record['test_error']:.4f}")
        self.bar.update(1)
        if final is not None:
            self.bar.close()


class Sinks:
    def __init__(self, *sinks):
        self.sinks = sinks

    def on_epoch(self, record, checkpoint, final) -> None:
        for sink in self.sinks:
            sink.on_epoch(record, checkpoint, final)


def run_cli_trial(config: TrialConfig, *, experiment: str, tracking_uri: str | None) -> int:
    progress = ProgressSink(config.epochs)
    data = open_data(config)  # a missing or malformed set is refused before a run is opened
    tracker = Tracker(tracking_uri)
    experiment_id = tracker.ensure_experiment(experiment)
    trial_id = f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run = TrialRun.start(tracker, experiment_id, config, run_name=trial_id, trial_id=trial_id, keep_model=True)
    started = time.perf_counter()
    try:
        run.log_datasets(data.records())
        result = train(config, Sinks(run, progress), data=data)
    except KeyboardInterrupt:
        run.end(schema.FAILED, "interrupted by the user")
        print("interrupted; the run is marked failed", file=sys.stderr)
        return 130
    except Exception as err:
        run.end(schema.FAILED, f"{type(err).__name__}: {err}")
        raise
    print_summary(result, time.perf_counter() - started, tracker.uri, experiment_id, run.run_id)
    return 0 if result.status == schema.COMPLETED else 1


def print_summary(result: TrialResult, seconds: float, uri: str, experiment_id: str, run_id: str) -> None:
    rows = [("status", result.status)]
    if result.error:
        rows.append(("error", result.error))
    rows += [(key, f"{value:.4f}") for key, value in result.final.items()]
    rows.append(("time", f"{seconds:.1f} s"))
    width = max(len(key) for key, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(f"\nMLflow run {run_id} in {uri}")
    print(f"  open the UI:  {ui_command(uri)}")
    print(f"  then browse:  {runs_url(uri, experiment_id)}")
