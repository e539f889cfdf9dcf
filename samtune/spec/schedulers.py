"""The ``scheduler:`` section: ASHA early stopping, population-based training (PBT)
and PB2, and what each needs of the rest of a spec.

ASHA compares trials at rungs of epochs, gradient evaluations or samples
(:data:`PROGRESS_UNITS`) up to :func:`asha_max_t`; PBT and PB2 evolve a population
drawn from ``search`` by changing the keys of :data:`samtune.schema.PBT_KEYS` during
trials (:func:`_check_population`).

The functions here take the whole :class:`~samtune.spec.search_spec.SearchSpec`;
that module imports this one, so the type is not imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from samtune import schema
from samtune.config import TrialConfig, make_trial_config
from samtune.data.catalogue import TRAIN_SIZES
from samtune.spec.distributions import LogUniform, Uniform, upper_bound
from samtune.spec.values import Mode, PositiveInt, _Section

# what a scheduler measures a trial's progress in: epochs, or (compute-fair across
# one- and two-pass optimizers) cumulative gradient evaluations or training samples
PROGRESS_UNITS = ("epoch", "gradient_evaluations", "samples_seen")


def _epoch_metric(metric: str) -> str:
    if metric not in schema.EPOCH_METRICS:
        raise ValueError(f"ASHA compares trials every epoch, so use a per-epoch metric: "
                         f"{', '.join(schema.EPOCH_METRICS)}")
    return metric


class Asha(_Section):
    """ASHA early stopping, compared on a per-epoch metric at rungs of ``time_attr``:
    epochs, or gradient evaluations / samples for a compute-fair comparison of SGD
    (one per step) with the SAM family (two per step).  ``grace_period`` and ``max_t``
    are in that unit; ``max_t`` defaults to the most a trial could reach."""

    grace_period: PositiveInt = Field(1, description="progress (in `time_attr`) before a trial may be stopped")
    reduction_factor: Annotated[int, Field(strict=True, ge=2)] = Field(2, description=(
        "1 / the share of trials that go on at each rung"))
    metric: Annotated[str, AfterValidator(_epoch_metric)] = Field("test_error", description=(
        "the per-epoch metric trials are compared on"))
    mode: Mode = Field("min", description="`min` or `max`")
    time_attr: Literal[PROGRESS_UNITS] = Field("epoch", description=(
        "the unit of the rungs, `grace_period` and `max_t`: `epoch`, `gradient_evaluations` or `samples_seen` "
        "(an SGD step costs one gradient evaluation and a SAM-family step two, so only the last two compare "
        "SGD with SAM at equal compute)"))
    max_t: PositiveInt | None = Field(None, description="the horizon (none: the most a trial can reach)")


class Pbt(_Section):
    """Population-based training: every ``interval`` epochs a trial in the bottom
    ``quantile`` of ``metric`` continues from a top trial's checkpoint with its values
    of ``mutate`` perturbed (×0.8 or ×1.2, or resampled with ``resample_probability``;
    a choice moves to a neighbour).  The population is ``samples`` trials drawn from
    ``search``; ``mutate`` defaults to every searched key."""

    kind: ClassVar[str] = "pbt"
    interval: PositiveInt = Field(2, description="epochs between exploit steps")
    metric: Annotated[str, AfterValidator(_epoch_metric)] = Field("test_error", description=(
        "the per-epoch metric trials are ranked on"))
    mode: Mode = Field("min", description="`min` or `max`")
    quantile: Annotated[float, Field(gt=0, le=0.5)] = Field(0.25, description=(
        "the bottom share that continues from a top trial's checkpoint (and the top share it copies)"))
    resample_probability: Annotated[float, Field(ge=0, le=1)] = Field(0.25, description=(
        "probability a mutated value is resampled from `search` instead of perturbed (×0.8 or ×1.2, or a "
        "neighbouring choice)"))
    mutate: tuple[Literal[schema.PBT_KEYS], ...] | None = Field(None, description=(
        "the keys that change while trials train (none: every searched key among rho, alpha, lr, batch_size, "
        "weight_decay, momentum)"))


class Pb2(Pbt):
    """PB2 (Parker-Holder et al. 2020): PBT whose explore step picks the new values with
    a time-varying Gaussian-process bandit over the ``search`` bounds (continuous keys
    only: uniform or loguniform)."""

    kind: ClassVar[str] = "pb2"


class _Scheduler(_Section):
    asha: Asha | None = Field(None, description="ASHA early stopping")
    pbt: Pbt | None = Field(None, description="population-based training")
    pb2: Pb2 | None = Field(None, description="PB2: PBT with a Gaussian-process bandit")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, value: Any) -> Any:
        # `asha:` with nothing under it means the defaults
        return {key: ({} if given is None else given) for key, given in value.items()} if isinstance(
            value, Mapping) else value

    @property
    def chosen(self) -> Asha | Pbt | Pb2:
        given = [section for section in (self.asha, self.pbt, self.pb2) if section is not None]
        if len(given) != 1:
            raise ValueError(_SCHEDULER_ALLOWED)
        return given[0]


SchedulerSection = Asha | Pbt | Pb2
_SCHEDULER_ALLOWED = ("allowed: none, or one of {asha: {grace_period, reduction_factor, metric, mode, time_attr, "
                      "max_t}}, {pbt: {interval, metric, mode, quantile, resample_probability, mutate}}, "
                      "{pb2: {...the same}}")


def scheduler_section(value: Any) -> SchedulerSection | None:
    """The ``scheduler:`` value as its one section: ``none`` (or nothing) is no scheduler."""
    if value is None or value == "none":
        return None
    if not isinstance(value, Mapping):
        raise ValueError(_SCHEDULER_ALLOWED)
    return _Scheduler.model_validate(value).chosen


def _upper(spec, key: str) -> Any:
    """The largest value ``key`` takes in any trial of the search."""
    searched = {d.key: d for d in spec.search}
    if key in searched:
        return upper_bound(searched[key]) if key != "dataset" else list(searched[key].values)
    axes = spec.grid_axes()
    if key in axes:
        return max(axes[key]) if key != "dataset" else list(axes[key])
    value = spec.trial.get(key, TrialConfig.model_fields[key].default)
    return [value] if key == "dataset" else value


def asha_max_t(spec) -> int:
    """ASHA's horizon in its ``time_attr``: ``max_t``, else the most any trial could reach
    (epochs; or every epoch's examples once per sample, twice per gradient evaluation)."""
    asha = spec.scheduler
    if asha.max_t is not None:
        return asha.max_t
    epochs = int(_upper(spec, "epochs"))
    if asha.time_attr == "epoch":
        return epochs
    sizes = [TRAIN_SIZES.get(str(d)) for d in _upper(spec, "dataset")]
    if None in sizes:
        raise ValueError(f"scheduler.asha.time_attr = {asha.time_attr!r} on an image folder: give "
                         f"scheduler.asha.max_t (the most {asha.time_attr} a trial reaches)")
    per_epoch = max(sizes) * int(_upper(spec, "epoch_passes"))
    return epochs * per_epoch * (2 if asha.time_attr == "gradient_evaluations" else 1)


def _check_population(spec) -> None:
    """PBT and PB2 evolve a population drawn from ``search``: each mutated key is searched
    (PB2: over a continuous range), and nothing else changes a trial's length or budget."""
    name = spec.scheduler_name
    if not spec.search or spec.grid:
        raise ValueError(f"scheduler = {name} evolves a population drawn from `search` (samples trials); "
                         f"give `search` distributions, not a `grid`")
    if spec.equal_budget is not None:
        raise ValueError(f"scheduler = {name} changes trials while they train; equal_budget is for grids")
    if spec.layout.data_parallel:
        raise ValueError(f"scheduler = {name} copies checkpoints between trials; with data-parallel trials "
                         f"({spec.layout.describe()}) each is a Ray Train run of its own: use workers: 1")
    if any(d.when for d in spec.search):
        raise ValueError(f"scheduler = {name}: conditional (`when`) keys are not supported; Ray samples the "
                         f"population from independent distributions")
    searched = {d.key: d for d in spec.search}
    keys = spec.mutated_keys
    if not keys:
        raise ValueError(f"scheduler.{name}.mutate: nothing to evolve; search at least one of "
                         f"{', '.join(schema.PBT_KEYS)}")
    for key in keys:
        if key not in searched:
            raise ValueError(f"scheduler.{name}.mutate: {key!r} is not searched; mutated keys need a `search` "
                             f"distribution (searched: {', '.join(searched)})")
        if name == "pb2" and not isinstance(searched[key], (Uniform, LogUniform)):
            raise ValueError(f"scheduler.pb2.mutate: {key!r} is a {searched[key].kind}; PB2 explores continuous "
                             f"ranges (uniform, loguniform); use scheduler: pbt")
    epochs = int(spec.trial.get("epochs", make_trial_config(spec.trial).epochs))
    if spec.scheduler.interval >= epochs:
        raise ValueError(f"scheduler.{name}.interval = {spec.scheduler.interval} epochs leaves no exploit step in "
                         f"trial.epochs = {epochs}; allowed: interval < epochs")
