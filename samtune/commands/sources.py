"""Where the commands that re-measure, interpolate, replay and show a trial find it.

A source is any of:

- a trial run's id, whichever way it ran (``samtune train``, a search trial that
  completed, one stopped early by ASHA, a PBT clone, a data-parallel trial): its logged
  model, else (runs recorded before logged models) its ``model.pt`` artifact, else its
  last Ray checkpoint (tag ``samtune.checkpoint``: a trial stopped early is read as it
  stopped);
- a ``models:/`` URI: a logged model (``models:/m-...``) or a registered model's version
  or alias (``models:/NAME/3``, ``models:/NAME/@best``);
- a file: a ``model.pt`` or a Ray checkpoint's ``trial.pt`` (or its folder).

Every file is read with ``torch.load(weights_only=True)``: opening someone's model runs
none of their code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samtune import schema
from samtune.tracking.models import model_run_id, trial_model_id
from samtune.tracking.store import Tracker

MODELS_SCHEME = "models:/"
CHECKPOINT_FILE = schema.RAY_CHECKPOINT_FILE


@dataclass(frozen=True)
class SavedWeights:
    """A trial's config (as saved: a dict) and state dict, and where they were read."""

    config: dict[str, Any]
    model: dict[str, Any]
    origin: str
    run_id: str | None = None


def run_of(source: str, tracker: Tracker) -> str:
    """The trial run a run id or ``models:/`` URI names (FileNotFoundError for neither)."""
    if source.startswith(MODELS_SCHEME):
        try:
            return model_run_id(tracker, source)
        except Exception as err:  # MlflowException: no such model or version
            raise FileNotFoundError(f"no model {source!r} in {tracker.uri}: {err}") from None
    tracker.run_experiment_id(source)  # FileNotFoundError for an unknown run
    return source


def open_weights(source: str, tracking_uri: str | None) -> SavedWeights:
    """The config and weights ``source`` names (see the module's docstring)."""
    path = Path(source)
    if path.exists():
        return _read(path / CHECKPOINT_FILE if path.is_dir() else path, origin=str(path))
    tracker = Tracker(tracking_uri)
    if source.startswith(MODELS_SCHEME) and "/" not in source.removeprefix(MODELS_SCHEME).strip("/"):
        model_id = source.removeprefix(MODELS_SCHEME).strip("/")
        return _logged_model(tracker, model_id, run_of(source, tracker))
    run_id = run_of(source, tracker)
    if (model_id := trial_model_id(tracker, run_id)) is not None:
        return _logged_model(tracker, model_id, run_id)
    try:
        artifact = tracker.download_artifact(run_id, schema.ARTIFACT_MODEL)
        return _read(artifact, f"run {run_id}'s {schema.ARTIFACT_MODEL}", run_id)
    except FileNotFoundError:
        pass
    checkpoint = tracker.run_tag(run_id, schema.TAG_CHECKPOINT)
    if checkpoint is None:
        raise FileNotFoundError(
            f"run {run_id} in {tracker.uri} holds no model: no logged model (a search with keep_models: none, or "
            f"a trial that failed before its end), no {schema.ARTIFACT_MODEL} and no {schema.TAG_CHECKPOINT} tag")
    return _read(_local_checkpoint(checkpoint), f"run {run_id}'s last Ray checkpoint {checkpoint}", run_id)


def _logged_model(tracker: Tracker, model_id: str, run_id: str) -> SavedWeights:
    import mlflow

    location = tracker.client.get_logged_model(model_id).artifact_location
    path = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{schema.ARTIFACT_MODEL}",
                                               tracking_uri=tracker.uri)
    return _read(Path(path), f"logged model {MODELS_SCHEME}{model_id}", run_id)


def _local_checkpoint(location: str) -> Path:
    """A Ray checkpoint's file, fetched first when it lies on remote storage."""
    if "://" not in location:
        path = Path(location) / CHECKPOINT_FILE
        if not path.exists():
            raise FileNotFoundError(f"the Ray checkpoint {location} is gone (Ray keeps the latest two per trial)")
        return path
    import tempfile

    from ray.tune import Checkpoint

    return Path(Checkpoint(location).to_directory(tempfile.mkdtemp(prefix="samtune-checkpoint-"))) / CHECKPOINT_FILE


def _read(path: Path, origin: str, run_id: str | None = None) -> SavedWeights:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise FileNotFoundError(f"{path} is not a samtune model or checkpoint (no config and model in it)")
    return SavedWeights(dict(state["config"]), state["model"], origin, run_id)
