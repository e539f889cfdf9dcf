"""Trial run names that say what tells the trial apart: ``#3 ρ=0.0211 α=0.0442 ×2.15
constant`` (the trial's number in its search, then each searched key's value; the
optimizer too when it is searched), so a run list in the MLflow UI reads like the
search's table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from samtune.display import value_text

# how a searched number is written in a run name: a symbol before its value, else
# key=value; a word (a choice such as lr_shape, a grid's bundle name) stands alone
_SYMBOLS = {"rho": "ρ=", "alpha": "α=", "batch_growth_ratio": "×", "lr": "lr=", "weight_decay": "wd=",
            "momentum": "β=", "batch_size": "b=", "seed": "seed="}


def trial_run_name(values: Mapping[str, Any], searched: Iterable[str], number: int | None = None) -> str:
    """``#number``, then each searched key's value: what tells the trial apart from the
    others of its search, the number first so that a narrow column still shows it."""
    parts = [f"#{number}"] if number is not None else []
    for key in (k for k in searched if k in values):
        value = values[key]
        word = isinstance(value, str)
        parts.append(value if word else f"{_SYMBOLS.get(key, key + '=')}{value_text(value)}")
    return " ".join(parts) or str(values.get("optimizer", "trial"))


TRIAL_NAME_PREFIX = "trial_"


def tune_trial_name(number: str | int) -> str:
    """The Tune trial name samtune gives a trial: its number in the search."""
    return f"{TRIAL_NAME_PREFIX}{number}"


def trial_number(trial_name: str) -> int | None:
    """The number of a trial named by :func:`tune_trial_name`; None for other names."""
    tail = trial_name.removeprefix(TRIAL_NAME_PREFIX)
    return int(tail) if trial_name.startswith(TRIAL_NAME_PREFIX) and tail.isdigit() else None
