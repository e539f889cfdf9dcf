"""Trial run names that say what tells the trial apart: ``gsam ρ=0.021 α=0.044 ×2.15
constant #3`` (the optimizer, then each searched key's value, then the trial's number
in its search), so a run list in the MLflow UI reads like the search's table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from samtune.display import value_text

# how a searched key is written in a run name: a symbol before its value; a key not
# listed is written key=value, a choice among words (lr_shape) by its value alone
_SYMBOLS = {"rho": "ρ=", "alpha": "α=", "batch_growth_ratio": "×", "lr": "lr=", "weight_decay": "wd=",
            "momentum": "β=", "batch_size": "b=", "seed": "seed="}
_BARE = ("lr_shape", "optimizer", "model", "base_optimizer", "rho_schedule")


def trial_run_name(values: Mapping[str, Any], searched: Iterable[str], number: int | None = None) -> str:
    """The optimizer, each searched key's value and ``#number``."""
    searched = [key for key in searched if key != "optimizer" and key in values]
    parts = [str(values.get("optimizer", "trial"))]
    for key in searched:
        value = value_text(values[key])
        parts.append(value if key in _BARE else f"{_SYMBOLS.get(key, key + '=')}{value}")
    if number is not None:
        parts.append(f"#{number}")
    return " ".join(parts)


TRIAL_NAME_PREFIX = "trial_"


def tune_trial_name(number: str | int) -> str:
    """The Tune trial name samtune gives a trial: its number in the search."""
    return f"{TRIAL_NAME_PREFIX}{number}"


def trial_number(trial_name: str) -> int | None:
    """The number of a trial named by :func:`tune_trial_name`; None for other names."""
    tail = trial_name.removeprefix(TRIAL_NAME_PREFIX)
    return int(tail) if trial_name.startswith(TRIAL_NAME_PREFIX) and tail.isdigit() else None
