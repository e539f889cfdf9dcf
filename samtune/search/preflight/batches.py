"""Batch sizes: every batch a trial may train with -- fixed, grid cell or sampled, the
last stage of a growing batch included, the upper bounds of Optuna distributions --
fits its training split (the loader drops the last partial batch, so a larger batch
leaves an epoch with none)."""

from __future__ import annotations

from collections.abc import Mapping

from samtune.config import ConfigError
from samtune.schedules import batch_size_schedule
from samtune.search.preflight.variants import Variant, variants, where_key
from samtune.spec import BATCH_KEYS, SearchSpec


def largest_batch(values: Variant) -> int:
    """The last stage's batch, as the trial's batch schedule gives it.  A variant of
    upper bounds may have more stages than epochs, or a cap below its batch size,
    which a trial refuses: the stages are capped by epochs (a trial reaches its last
    stage in its last epoch) and a cap below the batch size leaves the batch as it is."""
    size, epochs = int(values.get("batch_size")), int(values.get("epochs"))
    stages = max(1, min(int(values.get("batch_stages")), epochs))
    cap = values.get("batch_max")
    schedule = batch_size_schedule(batch_size=size, epochs=epochs,
                                   batch_growth_ratio=float(values.get("batch_growth_ratio")),
                                   batch_stages=stages, batch_max=None if cap is None else max(int(cap), size))
    return schedule(epochs - 1)  # a growing batch is largest in the last epoch


def check_batch_sizes(spec: SearchSpec, sizes: Mapping[str, int]) -> None:
    """Every batch a trial may train with fits its training split (the loader drops
    the last partial batch, so a larger batch leaves an epoch with none)."""
    for variant in variants(spec):
        dataset = str(variant.get("dataset"))
        n_train = sizes.get(dataset)
        largest = largest_batch(variant)
        if n_train is None or largest <= n_train:  # None: an image folder the driver cannot see
            continue
        size = variant.get("batch_size")
        what = f"{where_key(variant, 'batch_size')} = {size}"
        if "batch_size" in variant.searched:
            what += " (its upper bound)"
        if largest != size:
            settings = ", ".join(f"{k} = {variant.get(k)}" for k in BATCH_KEYS if k != "batch_size")
            what += f" grows to {largest} in its last stage ({settings})"
        raise ConfigError(
            f"{what}: more than the {n_train} training examples of {dataset}, so an epoch would have no "
            f"batch (the last partial batch is dropped); allowed: a batch of at most {n_train}"
            + ("; lower batch_size, batch_growth_ratio or batch_stages, or set batch_max"
               if largest != size else ""))
