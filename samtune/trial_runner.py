"""One trial from the command line: progress bar, MLflow run, summary table;
and sharpness of a saved trial (``samtune sharpness``)."""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from samtune import tracking
from samtune.config import TrialConfig, make_trial_config
from samtune.train import TrialResult, train

MODEL_ARTIFACT = "model.pt"


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

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id

    def on_epoch(self, record, checkpoint, final) -> None:
        if final is None:
            return
        state = checkpoint()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / MODEL_ARTIFACT
            torch.save({"config": state["config"], "model": state["model"]}, path)
            tracking.log_artifact(self.uri, self.run_id, path)


def trial_params(config: TrialConfig) -> dict[str, str]:
    from samtune import sharpness

    params = config.to_params()
    if config.sharpness != ():
        params.update(sharpness.measure_settings(config.sharpness))
    return params


def run_cli_trial(config: TrialConfig, *, experiment: str, tracking_uri: str | None) -> int:
    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment_id = tracking.ensure_experiment(uri, experiment)
    trial_id = f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_id = tracking.start_trial_run(uri, experiment_id, params=trial_params(config),
                                      run_name=trial_id, trial_id=trial_id)
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    sink = Sinks(tracking.MlflowSink(uri, run_id, config_yaml), ModelArtifactSink(uri, run_id),
                 ProgressSink(config.epochs))
    started = time.perf_counter()
    try:
        result = train(config, sink)
    except KeyboardInterrupt:
        tracking.end_trial_run(uri, run_id, "failed", "interrupted by the user")
        print("interrupted; the run is marked failed", file=sys.stderr)
        return 130
    except Exception as err:
        tracking.end_trial_run(uri, run_id, "failed", f"{type(err).__name__}: {err}")
        raise
    print_summary(result, time.perf_counter() - started, uri, experiment_id, run_id)
    return 0 if result.status == "completed" else 1


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
        uri = tracking.resolve_tracking_uri(tracking_uri)
        path = tracking.download_artifact(uri, source, MODEL_ARTIFACT)
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = make_trial_config(dict(state["config"], device=device), where="checkpoint config")
    return config, state["model"]


def measure_saved_trial(source: str, *, names, device: str, tracking_uri: str | None) -> dict[str, float]:
    from samtune import sharpness
    from samtune.data import fixed_batches, load_dataset
    from samtune.train import build_model, plain_cross_entropy, resolve_device

    config, weights = load_saved_model(source, tracking_uri, device)
    torch_device = resolve_device(config.device)
    data = load_dataset(config.dataset, root=config.data_dir, device=torch_device)
    model, init_params = build_model(config, data, torch_device)
    model.load_state_dict(weights)
    batches = fixed_batches(data.train_x, data.train_y, n_examples=config.sharpness_examples,
                            batch_size=config.sharpness_batch)
    return sharpness.measure_all(model, plain_cross_entropy, batches,
                                 names=names if names is not None else config.sharpness,
                                 init_params=init_params, seed=config.seed)
