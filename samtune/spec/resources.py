"""The ``resources:`` section and what it asks of the trials: CPUs for the loader
workers, and for a data-parallel trial its worker layout (:class:`WorkerLayout`):
a fixed worker count (``workers``) whose global batches split evenly in every stage of
a growing batch, or workers that grow with the batch (``per_worker_batch``,
``max_workers``), one count per batch stage.

The functions here that take a whole :class:`~samtune.spec.search_spec.SearchSpec`
do not import it: that module imports this one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, model_validator

from samtune.config import TrialConfig, make_trial_config
from samtune.schedules import TrialSchedule
from samtune.spec.grid import grid_cells
from samtune.spec.values import Number, _Section

# the trial keys that decide the global batch sizes a trial trains with
BATCH_KEYS = ("batch_size", "batch_growth_ratio", "batch_stages", "batch_max", "epochs")
# the keys of ``resources:`` that lay out a trial's workers (the others are each worker's)
LAYOUT_KEYS = ("workers", "per_worker_batch", "max_workers", "sync_batchnorm")


class Resources(_Section):
    """Per trial; a fractional ``gpu`` packs several trials on one GPU.  With ``workers``
    > 1 a trial is a data-parallel job of that many workers (Ray Train), and ``cpu`` and
    ``gpu`` are what each worker gets.  With ``per_worker_batch`` the worker count follows
    the batch instead: each batch stage runs on as many workers (up to ``max_workers``)
    as keep each worker's share at ``per_worker_batch``."""

    cpu: Annotated[Number, Field(gt=0)] = Field(1, description="CPUs per trial (per worker with `workers`)")
    gpu: Annotated[Number, Field(ge=0)] | None = Field(None, description=(
        "GPUs per trial (per worker); fractional packs several trials on one GPU; none: one GPU per trial when "
        "the cluster has GPUs, else none"))
    workers: Annotated[int, Field(strict=True, ge=1)] = Field(1, description=(
        "W > 1 makes each trial W data-parallel Ray Train workers, each with `cpu` and `gpu`"))
    per_worker_batch: Annotated[int, Field(strict=True, ge=1)] | None = Field(None, description=(
        "instead of `workers`: each batch stage runs on ⌈batch / P⌉ workers (workers that grow with the batch)"))
    max_workers: Annotated[int, Field(strict=True, ge=1)] | None = Field(None, description=(
        "with `per_worker_batch`: the most workers a stage gets"))
    sync_batchnorm: Annotated[bool, Field(strict=True)] = Field(False, description=(
        "with `workers`: BatchNorm's statistics over the whole global batch"))

    @model_validator(mode="after")
    def _one_layout(self) -> Resources:
        if self.per_worker_batch is not None and self.workers > 1:
            raise ValueError(f"resources.workers = {self.workers} and resources.per_worker_batch = "
                             f"{self.per_worker_batch} both set the worker count; allowed: a fixed `workers`, or "
                             f"`per_worker_batch` with `max_workers` (workers that grow with the batch)")
        if (self.per_worker_batch is None) != (self.max_workers is None):
            given = "per_worker_batch" if self.max_workers is None else "max_workers"
            raise ValueError(f"resources.{given} is given without "
                             f"resources.{'max_workers' if given == 'per_worker_batch' else 'per_worker_batch'}; "
                             f"allowed: both (workers that grow with the batch, up to max_workers) or neither")
        if self.sync_batchnorm and self.workers == 1:
            raise ValueError("resources.sync_batchnorm = true needs a fixed worker count, resources.workers > 1 "
                             "(workers that grow with the batch keep each worker's BatchNorm batch instead); "
                             f"got workers = {self.workers}")
        return self

    def as_dict(self) -> dict[str, float]:
        return self.model_dump(exclude_none=True, exclude_defaults=True) | {"cpu": self.cpu}


@dataclass(frozen=True)
class Stage:
    """Epochs [first, end) of a trial, trained on ``workers`` workers."""

    first: int
    end: int
    workers: int


@dataclass(frozen=True)
class WorkerLayout:
    """How many workers a trial trains on, stage by stage."""

    workers: int = 1
    per_worker_batch: int | None = None
    max_workers: int | None = None
    sync_batchnorm: bool = False

    @classmethod
    def of(cls, resources: Mapping[str, Any]) -> WorkerLayout:
        return cls(**{key: resources[key] for key in LAYOUT_KEYS if key in resources})

    @property
    def grows(self) -> bool:
        return self.per_worker_batch is not None

    @property
    def data_parallel(self) -> bool:
        """Whether trials run as Ray Train jobs (even when a stage has one worker)."""
        return self.grows or self.workers > 1

    @property
    def most_workers(self) -> int:
        return self.max_workers if self.grows else self.workers

    def workers_for(self, batch: int) -> int:
        """The workers that train a global batch of ``batch``: enough that none takes more
        than ``per_worker_batch`` (at most ``max_workers``)."""
        if not self.grows:
            return self.workers
        return max(1, min(self.max_workers, math.ceil(batch / self.per_worker_batch)))

    def stages(self, values: Mapping[str, Any]) -> list[Stage]:
        """The epochs of a trial with ``values`` in runs of one worker count."""
        return self.stages_of(make_trial_config(dict(values)))

    def stages_of(self, config: TrialConfig) -> list[Stage]:
        """The trial's epochs in runs of one worker count (one stage for a fixed count)."""
        schedule = TrialSchedule.from_config(config)
        counts = [self.workers_for(schedule.batch_size(epoch)) for epoch in range(config.epochs)]
        stages: list[Stage] = []
        for epoch, count in enumerate(counts):
            if stages and stages[-1].workers == count:
                stages[-1] = Stage(stages[-1].first, epoch + 1, count)
            else:
                stages.append(Stage(epoch, epoch + 1, count))
        return stages

    def describe(self) -> str:
        if self.grows:
            return (f"workers grow with the batch: batch / {self.per_worker_batch} of them, "
                    f"at most {self.max_workers}")
        return f"{self.workers} workers" + (" with synchronized BatchNorm" if self.sync_batchnorm else "")


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


def check_batches_split(values: Mapping[str, Any], layout: WorkerLayout, where: str = "trial") -> None:
    """A data-parallel trial splits each global batch evenly across its workers (so a
    samples budget, which may end inside a batch, is for single-worker trials)."""
    key = "per_worker_batch" if layout.grows else "workers"
    setting = f"resources.{key} = {getattr(layout, key)}"
    if values.get("budget") is not None and values.get("budget_unit") == "samples":
        raise ValueError(f"{where}: budget_unit = 'samples' may end inside a global batch, which "
                         f"{setting} could not split evenly; allowed with data-parallel trials: "
                         f"budget_unit steps or gradient_evaluations")
    for batch in stage_batches(values):
        workers = layout.workers_for(batch)
        if batch % workers:
            stage = "" if batch == values.get("batch_size") else " (a stage of its growing batch)"
            raise ValueError(f"{where}: batch {batch}{stage} does not split evenly across its {workers} "
                             f"workers ({setting}); allowed: batch sizes that are multiples of the worker "
                             f"count in every stage (batch_size, batch_growth_ratio, batch_max)")


def _check_worker_batches(spec) -> None:
    """Grid cells and a fixed trial are checked now; a sampled batch is checked when
    its trial starts (and recorded as failed, not retried)."""
    layout = spec.layout
    if not layout.data_parallel:
        return
    if spec.grid:
        # each cell as the grid gives it; its trial checks the cell again with its equal budget
        for label, values in grid_cells(spec, budgeted=False):
            check_batches_split(values, layout, where=label)
    elif not {d.key for d in spec.search} & set(BATCH_KEYS):
        check_batches_split(spec.trial, layout)
