"""The ``resources:`` section and what it asks of the trials: CPUs for the loader
workers, and for a data-parallel trial (``workers`` > 1) global batches that split
evenly across its workers in every stage of a growing batch.

The functions here that take a whole :class:`~samtune.spec.search_spec.SearchSpec`
do not import it: that module imports this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from samtune.config import make_trial_config
from samtune.schedules import TrialSchedule
from samtune.spec.grid import grid_cells
from samtune.spec.values import Number, _Section

# the trial keys that decide the global batch sizes a trial trains with
BATCH_KEYS = ("batch_size", "batch_growth_ratio", "batch_stages", "batch_max", "epochs")


class Resources(_Section):
    """Per trial; a fractional ``gpu`` packs several trials on one GPU.  With ``workers``
    > 1 a trial is a data-parallel job of that many workers (Ray Train), and ``cpu`` and
    ``gpu`` are what each worker gets."""

    cpu: Annotated[Number, Field(gt=0)] = 1
    gpu: Annotated[Number, Field(ge=0)] | None = None
    workers: Annotated[int, Field(strict=True, ge=1)] = 1

    def as_dict(self) -> dict[str, float]:
        return self.model_dump(exclude_none=True, exclude_defaults=True) | {"cpu": self.cpu}


def _check_loader_cpus(workers: int, resources: Mapping[str, float]) -> None:
    """A trial's loader processes run on the CPUs it reserves, beside the trial's own."""
    cpus = resources.get("cpu", 1)
    if workers and workers + 1 > cpus:
        raise ValueError(f"trial.loader_workers = {workers} needs resources.cpu >= {workers + 1} (the trial's "
                         f"process and its loader workers), got resources.cpu = {cpus}; raise resources.cpu "
                         f"or lower trial.loader_workers")


def stage_batches(values: Mapping[str, Any]) -> list[int]:
    """Every global batch size a trial with ``values`` trains with, one per stage."""
    config = make_trial_config(dict(values))
    schedule = TrialSchedule.from_config(config)
    return sorted({schedule.batch_size(epoch) for epoch in range(config.epochs)})


def check_batches_split(values: Mapping[str, Any], workers: int, where: str = "trial") -> None:
    """A data-parallel trial splits each global batch evenly across its workers (so a
    samples budget, which may end inside a batch, is for single-worker trials)."""
    if values.get("budget") is not None and values.get("budget_unit") == "samples":
        raise ValueError(f"{where}: budget_unit = 'samples' may end inside a global batch, which "
                         f"resources.workers = {workers} could not split evenly; allowed with workers > 1: "
                         f"budget_unit steps or gradient_evaluations")
    for batch in stage_batches(values):
        if batch % workers:
            stages = "" if batch == values.get("batch_size") else " (a stage of its growing batch)"
            raise ValueError(f"{where}: batch {batch}{stages} does not split evenly across resources.workers = "
                             f"{workers}; allowed: batch sizes that are multiples of {workers} in every stage "
                             f"(batch_size, batch_growth_ratio, batch_max)")


def _check_worker_batches(spec) -> None:
    """Grid cells and a fixed trial are checked now; a sampled batch is checked when
    its trial starts (and recorded as failed, not retried)."""
    if spec.workers == 1:
        return
    if spec.grid:
        # each cell as the grid gives it; its trial checks the cell again with its equal budget
        for label, values in grid_cells(spec, budgeted=False):
            check_batches_split(values, spec.workers, where=label)
    elif not {d.key for d in spec.search} & set(BATCH_KEYS):
        check_batches_split(spec.trial, spec.workers)
