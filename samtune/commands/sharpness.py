"""``samtune sharpness``: the measures of a saved trial, taken as the trial itself takes
them; and opening a saved trial (an MLflow run's model, or a checkpoint file) for the
commands that measure saved trials again."""

from __future__ import annotations

from samtune.commands.sources import open_weights
from samtune.config import TrialConfig, make_trial_config
from samtune.trial.loop import Trial, open_data


def load_saved_model(source: str, tracking_uri: str | None, device: str):
    """(config, state dict) of a saved trial: a trial run, a ``models:/`` URI or a file
    (:mod:`samtune.commands.sources`)."""
    saved = open_weights(source, tracking_uri)
    config = make_trial_config(dict(saved.config, device=device), where=f"the config of {saved.origin}")
    return config, saved.model


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
