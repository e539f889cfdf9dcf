"""``samtune sharpness``: the measures of a saved trial, taken as the trial itself takes
them; and opening a saved trial (an MLflow run's model, or a checkpoint file) for the
commands that measure saved trials again."""

from __future__ import annotations

from pathlib import Path

import torch

from samtune import schema
from samtune.config import TrialConfig, make_trial_config
from samtune.tracking.store import Tracker
from samtune.trial.loop import Trial, open_data


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
    trial = Trial(config, open_data(config))
    trial.model.load_state_dict(weights)
    return trial
