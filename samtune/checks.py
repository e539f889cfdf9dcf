"""The errors samtune refuses input with, and the argument checks that raise them.

Two kinds of mistake reach a user: a :class:`ConfigError` (a key of a trial, a spec
or a command line has a value that is not allowed) and a :class:`DatasetError` (a
data set is missing or malformed on disk).  Every command turns either into exit
status 2 with the message alone, before anything is recorded.

The ``check_*`` functions are the argument checks of the library's own functions
(loaders, schedules, optimizers, measures): each raises ``ValueError`` naming the
argument, the value and what is allowed, and returns the value.  Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any


class ConfigError(ValueError):
    """A configuration mistake, phrased for the person who made it."""


class DatasetError(ConfigError, FileNotFoundError):
    """A data set is missing or malformed where it was looked for: the message names the
    path and what was expected there (and how to get the data, where it can be got)."""


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int) -> int:
    """An ``int`` (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_integral(name: str, value: Any, minimum: int) -> int:
    """An integer, or a float with an integral value, of at least ``minimum``, as an int."""
    integral = isinstance(value, Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any) -> float:
    """A finite real number, as a float."""
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: Any) -> Any:
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_positive(name: str, value: Any) -> Any:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


def check_rank(rank: Any, world: Any) -> None:
    """A worker's rank among ``world`` workers (Replica, the loaders, the evaluation shards)."""
    check_int("world", world, 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an int in [0, {world - 1}] for world {world}, got {rank!r}")
