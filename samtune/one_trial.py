"""One trial outside a search: ``samtune train`` (progress bar, MLflow run, summary
table) and ``samtune sharpness`` (the measures of a saved trial)."""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from samtune import schema, tracking
from samtune.config import TrialConfig, make_trial_config
from samtune.provenance import identity_tags
from samtune.tracking import MlflowSink, Tracker
from samtune.train import Trial, TrialResult, train


class ProgressSink:
    """One progress-bar step per epoch, with the latest errors as postfix."""

    def __init__(self, epochs: int):
        self.bar = tqdm(total=epochs, unit="epoch", file=sys.stdout, dynamic_ncols=True)

    def on_epoch(self, record, checkpoint, final) -> None:
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


class ModelArtifactSink:
    """Saves the trained weights with the run, so ``samtune sharpness RUN_ID`` works."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def on_epoch(self, record, checkpoint, final) -> None:
        if final is None:
            return
        state = checkpoint()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / schema.ARTIFACT_MODEL
            torch.save({"config": state["config"], "model": state["model"]}, path)
            self.tracker.log_artifact(self.run_id, path)


def run_cli_trial(config: TrialConfig, *, experiment: str, tracking_uri: str | None) -> int:
    tracker = Tracker(tracking_uri)
    experiment_id = tracker.ensure_experiment(experiment)
    trial_id = f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_id = tracker.start_trial_run(experiment_id, params=config.to_params(), run_name=trial_id,
                                     trial_id=trial_id, tags=identity_tags(config.hparams))
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    sink = Sinks(MlflowSink(tracker, run_id, config_yaml), ModelArtifactSink(tracker, run_id),
                 ProgressSink(config.epochs))
    started = time.perf_counter()
    try:
        tracker.log_trial_dataset(run_id, config)  # loads the set train() then reuses
        result = train(config, sink)
    except KeyboardInterrupt:
        tracker.end_trial_run(run_id, schema.FAILED, "interrupted by the user")
        print("interrupted; the run is marked failed", file=sys.stderr)
        return 130
    except Exception as err:
        tracker.end_trial_run(run_id, schema.FAILED, f"{type(err).__name__}: {err}")
        raise
    print_summary(result, time.perf_counter() - started, tracker.uri, experiment_id, run_id)
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
    print(f"  open the UI:  {tracking.ui_command(uri)}")
    print(f"  then browse:  {tracking.runs_url('http://127.0.0.1:5000', experiment_id)}")


def load_saved_model(source: str, tracking_uri: str | None, device: str):
    """(config, state dict) from a checkpoint file or an MLflow run's model artifact."""
    path = Path(source)
    if not path.exists():
        path = Tracker(tracking_uri).download_artifact(source, schema.ARTIFACT_MODEL)
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = make_trial_config(dict(state["config"], device=device), where="checkpoint config")
    return config, state["model"]


def measure_saved_trial(source: str, *, names, device: str, tracking_uri: str | None) -> dict[str, float]:
    """Sharpness of a saved trial's weights, measured as the trial itself measures
    (same examples, same settings)."""
    values, _ = saved_trial(*load_saved_model(source, tracking_uri, device)).measure_sharpness(names)
    return values


def saved_trial(config: TrialConfig, weights: dict) -> Trial:
    """The trial of a saved config, its model holding the saved weights."""
    trial = Trial(config)
    trial.model.load_state_dict(weights)
    return trial
