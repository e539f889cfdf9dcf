"""Equal-budget controls: every cell of a grid trains for the same number of steps,
samples or gradient evaluations as a reference cell.

Harada & Iiduka's "+B" runs make about 3.1x more updates than their constant-batch
runs (242,120 vs 78,000 on CIFAR); giving every cell the budget of the "+B" cells
separates the effect of the growing batch from that of the extra updates.  A
trial's budget is spent exactly, with its lr schedule stretched over the budget
(see ``samtune.trial.loop``); a cell whose ``epochs`` cannot hold the budget gets the
fewest epochs that can.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from samtune.config import TrialConfig, make_trial_config
from samtune.data.catalogue import TRAIN_SIZES
from samtune.schedules import TrialSchedule

# a budget more than this many times a cell's own epochs is a mistake, not a plan
_MAX_EPOCH_GROWTH = 100


def train_size(config: TrialConfig) -> int:
    """The training-split size of a built-in data set (an image folder is counted
    only when a trial loads it)."""
    size = TRAIN_SIZES.get(config.dataset)
    if size is None:
        raise ValueError(f"dataset = {config.dataset!r}: an equal budget needs a data set of known "
                         f"size; known: {', '.join(TRAIN_SIZES)}")
    return size


def capacity(values: Mapping[str, Any], unit: str) -> int:
    """What a trial with ``values`` spends in ``unit`` over its ``epochs``."""
    config = make_trial_config(dict(values))
    return TrialSchedule.from_config(config).capacity(config.epoch_examples(train_size(config)), unit,
                                                      config.sam_timing)


def with_budget(values: Mapping[str, Any], budget: int, unit: str) -> dict[str, Any]:
    """``values`` with the budget set, and ``epochs`` raised to the fewest that hold it
    when its own are too few."""
    config = make_trial_config(dict(values))
    n_train = config.epoch_examples(train_size(config))
    epochs = config.epochs
    while TrialSchedule.from_config(config.model_copy(update={"epochs": epochs})).capacity(
            n_train, unit, config.sam_timing, budget) < budget:
        epochs += 1
        if epochs > _MAX_EPOCH_GROWTH * config.epochs:
            raise ValueError(f"budget = {budget} {unit} needs more than {_MAX_EPOCH_GROWTH} x "
                             f"epochs = {config.epochs} for this cell")
    return {**values, "epochs": epochs, "budget": budget, "budget_unit": unit}
