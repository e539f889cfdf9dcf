"""Search spec: one YAML file describes one search (DESIGN.md, "Search-space YAML").

The spec is a tree of frozen pydantic models, so the models are the one place
that says what a spec may contain.  :func:`parse_search_spec` validates a spec
completely before anything starts and turns every mistake into a
:class:`~samtune.config.ConfigError` that names the key, the value and what is
allowed.  A searched or grid value that is invalid for its own key (``rho < 0``)
is refused here; whether values of different keys fit together is checked when
each trial starts.

Nothing here imports torch or Ray: ``samtune search --dry-run`` runs without them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    RootModel,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from samtune import schema
from samtune.budgets import capacity, with_budget
from samtune.config import (
    TRIAL_KEYS,
    ConfigError,
    TrialConfig,
    load_yaml,
    make_trial_config,
    parse_assignment,
)
from samtune.schedules import TrialSchedule

SPACES_FOLDER = "search_spaces"  # inside the samtune package (package data)


# -- value types ---------------------------------------------------------------------
def _pair(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("expected [lo, hi]: a list of two numbers")
    return value


def _ordered(bounds: tuple) -> tuple:
    if not bounds[0] < bounds[1]:
        raise ValueError("lo must be < hi")
    return bounds


def _positive(bounds: tuple) -> tuple:
    if bounds[0] <= 0:
        raise ValueError("both bounds must be > 0 (the scale is logarithmic)")
    return bounds


def _integral(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError("bounds must be integers")
    return int(value)


def _categorical(value: Any) -> Any:
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError("a choice must be a number, a string, a boolean or null")
    return value


def _listed(value: Any) -> Any:
    return value if isinstance(value, (list, tuple)) else [value]


def _trial_parameter(key: str) -> str:
    if key not in TRIAL_KEYS:
        raise ValueError(f"unknown trial parameter; allowed: {', '.join(TRIAL_KEYS)}")
    return key


def _experiment_name(name: str) -> str:
    if not name.strip() or "/" in name:
        raise ValueError("a non-empty experiment name without '/' is required")
    return name


def _epoch_metric(metric: str) -> str:
    if metric not in schema.EPOCH_METRICS:
        raise ValueError(f"ASHA compares trials every epoch, so use a per-epoch metric: "
                         f"{', '.join(schema.EPOCH_METRICS)}")
    return metric


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Number = Annotated[int | float, BeforeValidator(_number)]  # an int stays an int
Range = Annotated[tuple[Number, Number], BeforeValidator(_pair), AfterValidator(_ordered)]
IntBound = Annotated[int, BeforeValidator(_integral)]
IntRange = Annotated[tuple[IntBound, IntBound], BeforeValidator(_pair), AfterValidator(_ordered)]
Categorical = Annotated[Any, AfterValidator(_categorical)]
WhenValues = Annotated[tuple[Categorical, ...], BeforeValidator(_listed), Field(min_length=1)]
TrialKey = Annotated[str, AfterValidator(_trial_parameter)]
Mode = Literal[schema.OBJECTIVE_MODES]
MeasureKey = Literal[tuple(schema.MEASURES)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
AxisValues = TypeVar("AxisValues")


class _Section(BaseModel):
    """One mapping of the YAML file: frozen, and an unknown key is refused with the
    list of known ones (the YAML spellings, i.e. the aliases)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _not_in_yaml: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def yaml_keys(cls) -> tuple[str, ...]:
        return tuple(field.alias or name for name, field in cls.model_fields.items()
                     if name not in cls._not_in_yaml)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            return data  # pydantic says what was expected
        allowed = cls.yaml_keys()
        unknown = [key for key in data if key not in allowed]
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
        return cls._prepare(dict(data), info)

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Fill in what the YAML leaves implicit (a hook for subclasses)."""
        return data


# -- distributions (search:) -----------------------------------------------------------
class _Distribution(_Section):
    """One searched key, optionally sampled only ``when`` other searched ``choice``
    keys take given values.  ``key`` is the trial parameter it samples."""

    kind: ClassVar[str]
    values: tuple  # the bounds (lo, hi), or the choices; spelled `kind` in YAML
    when: dict[str, WhenValues] = Field(default_factory=dict)
    _key: str = PrivateAttr("")

    @property
    def key(self) -> str:
        return self._key

    def __repr_args__(self):
        yield "key", self.key
        yield self.kind, self.values
        if self.when:
            yield "when", self.when

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for a value (define-by-run)."""
        raise NotImplementedError

    def active(self, chosen: Mapping[str, Any]) -> bool:
        return all(chosen.get(key) in allowed for key, allowed in self.when.items())

    def resolved(self) -> dict[str, Any]:
        when = {"when": {key: list(allowed) for key, allowed in self.when.items()}} if self.when else {}
        return {self.kind: list(self.values), **when}


class Uniform(_Distribution):
    kind: ClassVar[str] = "uniform"
    values: Range = Field(alias=kind)

    def suggest(self, trial) -> float:
        return trial.suggest_float(self.key, *self.values)


class LogUniform(_Distribution):
    kind: ClassVar[str] = "loguniform"
    values: Annotated[Range, AfterValidator(_positive)] = Field(alias=kind)

    def suggest(self, trial) -> float:
        return trial.suggest_float(self.key, *self.values, log=True)


class IntUniform(_Distribution):
    kind: ClassVar[str] = "int"
    values: IntRange = Field(alias=kind)

    def suggest(self, trial) -> int:
        return trial.suggest_int(self.key, *self.values)


class Choice(_Distribution):
    kind: ClassVar[str] = "choice"
    values: tuple[Categorical, ...] = Field(alias=kind, min_length=1)

    def suggest(self, trial) -> Any:
        return trial.suggest_categorical(self.key, list(self.values))


_DISTRIBUTION_CLASSES = (Uniform, LogUniform, IntUniform, Choice)
DISTRIBUTIONS = tuple(cls.kind for cls in _DISTRIBUTION_CLASSES)


def _tag(name: str) -> str:
    """A union member's tag: pydantic puts it in error locations; :func:`_explain` drops it."""
    return f"<{name}>"


def _distribution_tag(value: Any) -> str | None:
    if isinstance(value, _Distribution):
        return _tag(value.kind)
    kinds = [kind for kind in DISTRIBUTIONS if isinstance(value, Mapping) and kind in value]
    return _tag(kinds[0]) if len(kinds) == 1 else None


Distribution = Annotated[
    Annotated[Uniform, Tag(_tag("uniform"))] | Annotated[LogUniform, Tag(_tag("loguniform"))]
    | Annotated[IntUniform, Tag(_tag("int"))] | Annotated[Choice, Tag(_tag("choice"))],
    Discriminator(_distribution_tag, custom_error_type="distribution",
                  custom_error_message="expected exactly one of {uniform: [lo, hi]}, {loguniform: [lo, hi]}, "
                                       "{int: [lo, hi]} or {choice: [values]}, plus an optional "
                                       "when: {KEY: value or [values]}"),
]


# -- grid axes (grid:) --------------------------------------------------------------------
class _Axis(RootModel[AxisValues]):
    """One grid axis; ``name`` is its key in ``grid``."""

    model_config = ConfigDict(frozen=True)
    _name: str = PrivateAttr("")

    @property
    def name(self) -> str:
        return self._name

    def __repr_args__(self):
        yield "name", self.name
        yield "root", self.root

    @property
    def choices(self) -> list:
        """What ``tune.grid_search`` iterates over: the values, or the bundle names."""
        return list(self.root)


class ValueAxis(_Axis[Annotated[tuple[Any, ...], Field(min_length=1)]]):
    """``KEY: [values]``: a trial parameter and the values the grid takes."""

    @property
    def bundles(self) -> dict[str, dict[str, Any]]:
        return {}

    def resolved(self) -> list:
        return list(self.root)

    def check(self, trial: Mapping[str, Any], axes: tuple[str, ...]) -> None:
        if self.name not in TRIAL_KEYS:
            raise ValueError(f"grid.{self.name}: unknown trial parameter; allowed: {', '.join(TRIAL_KEYS)} "
                             f"(or a mapping NAME: {{trial parameters}} for an axis of bundles)")
        _refuse_fixed("grid", self.name, trial)
        for value in self.root:
            _refuse_invalid_value("grid", self.name, value, trial)


class BundleAxis(_Axis[Annotated[dict[Annotated[str, BeforeValidator(str)], dict[str, Any]],
                                Field(min_length=1)]]):
    """``NAME: {bundle: {trial parameters}, ...}``: a named axis whose values each set
    several trial parameters (``schedule: {constant: {...}, +B: {...}}``)."""

    @property
    def bundles(self) -> dict[str, dict[str, Any]]:
        return self.root

    def resolved(self) -> dict[str, dict[str, Any]]:
        return {name: dict(values) for name, values in self.root.items()}

    def check(self, trial: Mapping[str, Any], axes: tuple[str, ...]) -> None:
        if self.name in TRIAL_KEYS:
            raise ValueError(f"grid.{self.name}: a trial parameter takes a list of values, not a mapping")
        for name, values in self.root.items():
            clash = sorted(set(values) & set(axes))
            if clash:
                raise ValueError(f"grid.{self.name}.{name} sets {', '.join(clash)}, which is also a grid "
                                 f"axis: give each parameter in one place only")
            make_trial_config({**trial, **values}, where=f"grid.{self.name}.{name}")


def _axis_tag(value: Any) -> str | None:
    if isinstance(value, (list, tuple, ValueAxis)):
        return _tag("values")
    if isinstance(value, (Mapping, BundleAxis)):
        return _tag("bundles")
    return None


GridAxis = Annotated[
    Annotated[ValueAxis, Tag(_tag("values"))] | Annotated[BundleAxis, Tag(_tag("bundles"))],
    Discriminator(_axis_tag, custom_error_type="grid_axis",
                  custom_error_message="expected a non-empty list of values (a trial parameter) or a "
                                       "mapping NAME: {trial parameters} (an axis of bundles)"),
]

_UNION_TAGS = frozenset(_tag(name) for name in (*DISTRIBUTIONS, "values", "bundles"))


# -- objective, resources, scheduler ----------------------------------------------------------
class Objective(_Section):
    """One metric and mode, or two of each for a Pareto search."""

    metrics: tuple[Annotated[str, Field(strict=True, min_length=1)], ...] = Field(
        ("final_test_error",), alias="metric", min_length=1, max_length=2)
    modes: tuple[Mode, ...] = Field(("min",), alias="mode")

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        metric = data.get("metric", ["final_test_error"])
        metrics = metric if isinstance(metric, (list, tuple)) else [metric]
        mode = data.get("mode", "min")
        modes = mode if isinstance(mode, (list, tuple)) else [mode] * len(metrics)
        return {**data, "metric": metrics, "mode": modes}

    @model_validator(mode="after")
    def _one_mode_per_metric(self) -> Objective:
        if len(self.modes) != len(self.metrics):
            raise ValueError(f"one mode per metric: {len(self.metrics)} metric(s), {len(self.modes)} mode(s)")
        return self

    @property
    def is_pareto(self) -> bool:
        return len(self.metrics) > 1


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


# what a scheduler measures a trial's progress in: epochs, or (compute-fair across
# one- and two-pass optimizers) cumulative gradient evaluations or training samples
PROGRESS_UNITS = ("epoch", "gradient_evaluations", "samples_seen")
# keys population-based training may change during a trial: read anew from the trial's
# config at every restore, with no state of their own in a checkpoint
PBT_KEYS = ("rho", "alpha", "lr", "batch_size", "weight_decay", "momentum")


class Asha(_Section):
    """ASHA early stopping, compared on a per-epoch metric at rungs of ``time_attr``:
    epochs, or gradient evaluations / samples for a compute-fair comparison of SGD
    (one per step) with the SAM family (two per step).  ``grace_period`` and ``max_t``
    are in that unit; ``max_t`` defaults to the most a trial could reach."""

    grace_period: PositiveInt = 1
    reduction_factor: Annotated[int, Field(strict=True, ge=2)] = 2
    metric: Annotated[str, AfterValidator(_epoch_metric)] = "test_error"
    mode: Mode = "min"
    time_attr: Literal[PROGRESS_UNITS] = "epoch"
    max_t: PositiveInt | None = None


class Pbt(_Section):
    """Population-based training: every ``interval`` epochs a trial in the bottom
    ``quantile`` of ``metric`` continues from a top trial's checkpoint with its values
    of ``mutate`` perturbed (×0.8 or ×1.2, or resampled with ``resample_probability``;
    a choice moves to a neighbour).  The population is ``samples`` trials drawn from
    ``search``; ``mutate`` defaults to every searched key."""

    kind: ClassVar[str] = "pbt"
    interval: PositiveInt = 2
    metric: Annotated[str, AfterValidator(_epoch_metric)] = "test_error"
    mode: Mode = "min"
    quantile: Annotated[float, Field(gt=0, le=0.5)] = 0.25
    resample_probability: Annotated[float, Field(ge=0, le=1)] = 0.25
    mutate: tuple[Literal[PBT_KEYS], ...] | None = None


class Pb2(Pbt):
    """PB2 (Parker-Holder et al. 2020): PBT whose explore step picks the new values with
    a time-varying Gaussian-process bandit over the ``search`` bounds (continuous keys
    only: uniform or loguniform)."""

    kind: ClassVar[str] = "pb2"


class EqualBudget(_Section):
    """``equal_budget: {unit: steps, like: {schedule: +B}}``: every grid cell trains for
    the budget the cells matching ``like`` (grid axis -> value) spend in their epochs."""

    unit: Literal[schema.BUDGET_UNITS] = "steps"
    like: dict[str, Any] = Field(min_length=1)


class _Scheduler(_Section):
    asha: Asha | None = None
    pbt: Pbt | None = None
    pb2: Pb2 | None = None

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
_SEARCH_SECTION = TypeAdapter(dict[TrialKey, Distribution])
_GRID_SECTION = TypeAdapter(dict[Annotated[str, BeforeValidator(str)], GridAxis])


# -- the spec --------------------------------------------------------------------------------
class SearchSpec(_Section):
    """One search.  ``trial`` holds the fixed trial values; ``search`` the Optuna
    distributions (a conditional key after the keys it depends on); ``grid`` the grid
    axes; ``source`` the YAML text as given, for the record."""

    _not_in_yaml: ClassVar[frozenset[str]] = frozenset({"source"})

    name: Annotated[str, Field(strict=True), AfterValidator(_experiment_name)]
    trial: dict[str, Any] = Field(default_factory=dict)
    search: tuple[Distribution, ...] = ()
    grid: tuple[GridAxis, ...] = ()
    objective: Objective = Field(default_factory=Objective)
    samples: PositiveInt = 16
    concurrency: PositiveInt = 2
    resources: dict[str, float] = Field(default_factory=lambda: {"cpu": 1})
    scheduler: SchedulerSection | None = None
    sharpness: tuple[MeasureKey, ...] | None = None
    seed: NonNegativeInt = 0
    max_failures: NonNegativeInt = 2
    equal_budget: EqualBudget | None = None
    source: str = ""
    _budget: int | None = PrivateAttr(None)

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Apply the top-level shortcuts: ``sharpness`` sets ``trial.sharpness``; ``seed``
        also seeds the trials unless ``trial``, ``search`` or ``grid`` gives their seed;
        ``samples`` defaults to 1 repeat of a grid, else 16 Optuna samples."""
        trial = {} if data.get("trial") is None else data["trial"]
        if isinstance(trial, Mapping):
            trial = dict(trial)
            if "sharpness" in data:
                trial["sharpness"] = data["sharpness"]
            searched = [key for section in ("search", "grid") if isinstance(data.get(section), Mapping)
                        for key in data[section]]
            if "seed" in data and "seed" not in trial and "seed" not in searched:
                trial["seed"] = data["seed"]
        data["trial"] = trial
        if data.get("objective") is None:
            data.pop("objective", None)
        data.setdefault("samples", 1 if data.get("grid") else 16)
        data["source"] = (info.context or {}).get("source", "")
        return data

    @field_validator("search", mode="plain")
    @classmethod
    def _distributions(cls, value: Any) -> tuple[_Distribution, ...]:
        dists = _SEARCH_SECTION.validate_python({} if value is None else value)
        for key, dist in dists.items():
            dist._key = key
        return _parents_first(dists)

    @field_validator("grid", mode="plain")
    @classmethod
    def _axes(cls, value: Any) -> tuple[ValueAxis | BundleAxis, ...]:
        axes = _GRID_SECTION.validate_python({} if value is None else value)
        for name, axis in axes.items():
            axis._name = name
        return tuple(axes.values())

    @field_validator("resources", mode="plain")
    @classmethod
    def _resources(cls, value: Any) -> dict[str, float]:
        return Resources.model_validate({} if value is None else value).as_dict()

    @field_validator("scheduler", mode="plain")
    @classmethod
    def _scheduler(cls, value: Any) -> SchedulerSection | None:
        if value is None or value == "none":
            return None
        if not isinstance(value, Mapping):
            raise ValueError(_SCHEDULER_ALLOWED)
        return _Scheduler.model_validate(value).chosen

    @model_validator(mode="after")
    def _check_across_sections(self) -> SearchSpec:
        if self.search and self.grid:
            raise ValueError("search and grid are both given: use `search` (Optuna) or `grid` "
                             "(every combination), not both")
        base = make_trial_config(self.trial, where="trial")
        for dist in self.search:
            _refuse_fixed("search", dist.key, self.trial)
            for value in dist.values:
                _refuse_invalid_value("search", dist.key, value, self.trial)
            _check_when(dist, self.search)
        names = tuple(axis.name for axis in self.grid)
        for axis in self.grid:
            axis.check(self.trial, names)
        _check_grid_cells(self)
        allowed = reported_metrics(base)
        for metric in self.objective.metrics:
            if metric not in allowed:
                raise ValueError(f"objective.metric = {metric!r} is never reported by a trial; "
                                 f"allowed: {', '.join(allowed)}")
        if self.scheduler and self.objective.is_pareto:
            raise ValueError(f"scheduler = {self.scheduler_name} with a two-metric (Pareto) objective is not "
                             f"supported; use scheduler: none")
        if isinstance(self.scheduler, Pbt):
            _check_population(self)
        elif self.scheduler is not None:
            asha_max_t(self)
        if self.equal_budget is not None:
            self._budget = _equal_budget(self)
        _check_loader_cpus(base.loader_workers, self.resources)
        _check_worker_batches(self)
        return self

    @property
    def scheduler_name(self) -> str:
        return "none" if self.scheduler is None else getattr(self.scheduler, "kind", "asha")

    @property
    def mutated_keys(self) -> tuple[str, ...]:
        """The keys population-based training changes during trials (none without it)."""
        if not isinstance(self.scheduler, Pbt):
            return ()
        if self.scheduler.mutate is not None:
            return self.scheduler.mutate
        return tuple(d.key for d in self.search if d.key in PBT_KEYS)

    @property
    def workers(self) -> int:
        """Data-parallel workers per trial (``resources.workers``)."""
        return int(self.resources.get("workers", 1))

    @property
    def worker_resources(self) -> dict[str, float]:
        """What Ray reserves for each worker of a trial (the whole trial when workers = 1)."""
        return {key: value for key, value in self.resources.items() if key != "workers"}

    @property
    def budget(self) -> tuple[int, str] | None:
        """(budget, unit) every trial gets under ``equal_budget``; None without it."""
        return None if self._budget is None else (self._budget, self.equal_budget.unit)

    def cells(self) -> list[dict[str, Any]]:
        """Every grid point as trial values: fixed values, bundles expanded, and the
        equal budget applied (what each trial of a grid runs with)."""
        cells = _grid_values(self)
        return [with_budget(values, *self.budget) for values in cells] if self.budget else cells

    # -- what the runner and the dry run read
    @property
    def searched_keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.search) + tuple(axis.name for axis in self.grid)

    @property
    def total_trials(self) -> int:
        return grid_size(self) * self.samples if self.grid else self.samples

    def grid_axes(self) -> dict[str, list]:
        """Axis -> the values ``tune.grid_search`` iterates over (bundle names for an axis of bundles)."""
        return {axis.name: axis.choices for axis in self.grid}

    def resolved(self) -> dict[str, Any]:
        """The spec as a plain mapping with every default filled in."""
        scheduler = {self.scheduler_name: self.scheduler.model_dump()} if self.scheduler else "none"
        return {
            "name": self.name, "trial": dict(self.trial),
            "search": {d.key: d.resolved() for d in self.search},
            "grid": {axis.name: axis.resolved() for axis in self.grid},
            "objective": {"metric": list(self.objective.metrics), "mode": list(self.objective.modes)},
            "samples": self.samples, "concurrency": self.concurrency, "resources": dict(self.resources),
            "scheduler": scheduler, "seed": self.seed, "max_failures": self.max_failures,
        } | ({"equal_budget": self.equal_budget.model_dump()} if self.equal_budget else {})


SPEC_KEYS = SearchSpec.yaml_keys()


def _parents_first(dists: dict[str, _Distribution]) -> tuple[_Distribution, ...]:
    """Order so that a conditional key is sampled after the keys it depends on (keys
    whose conditions form a cycle keep their order; :func:`_check_when` refuses them)."""
    ordered: list[_Distribution] = []
    pending = dict(dists)
    while pending:
        ready = [d for d in pending.values() if all(key not in pending for key in d.when)]
        for dist in ready or list(pending.values()):
            ordered.append(pending.pop(dist.key))
    return tuple(ordered)


def _equal_budget(spec: SearchSpec) -> int:
    """The budget of the grid cells matching ``equal_budget.like``; refuses a spec
    where they disagree or where some cell cannot be given it."""
    where = "equal_budget"
    if not spec.grid:
        raise ValueError(f"{where}: needs a grid (its cells get the budget of the cells named in `like`)")
    if "budget" in spec.trial:
        raise ValueError(f"{where} and trial.budget are both given: give the budget in one place only")
    axes = {axis.name: axis for axis in spec.grid}
    for key, value in spec.equal_budget.like.items():
        if key not in axes:
            raise ValueError(f"{where}.like.{key}: not a grid axis; axes: {', '.join(axes)}")
        if value not in axes[key].choices:
            raise ValueError(f"{where}.like.{key} = {value!r}: not among grid.{key} {axes[key].choices}")
    names, unit, like = list(axes), spec.equal_budget.unit, spec.equal_budget.like
    budgets = set()
    for combo in itertools.product(*(axis.choices for axis in spec.grid)):
        cell = dict(zip(names, combo, strict=True))
        if all(cell[key] == value for key, value in like.items()):
            values, _ = expand_bundles({**spec.trial, **cell}, bundle_table(spec))
            budgets.add(capacity(values, unit))
    if len(budgets) > 1:
        raise ValueError(f"{where}.like = {dict(like)}: the cells it matches spend different budgets "
                         f"({', '.join(map(str, sorted(budgets)))} {unit}); name more axes in `like`")
    budget = budgets.pop()
    for values in _grid_values(spec):
        make_trial_config(with_budget(values, budget, unit), where=f"{where} cell")
    return budget


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


def _check_worker_batches(spec: SearchSpec) -> None:
    """Grid cells and a fixed trial are checked now; a sampled batch is checked when
    its trial starts (and recorded as failed, not retried)."""
    if spec.workers == 1:
        return
    if spec.grid:
        for label, values in _named_cells(spec):
            check_batches_split(values, spec.workers, where=label)
    elif not {d.key for d in spec.search} & {"batch_size", "batch_growth_ratio", "batch_stages", "batch_max",
                                              "epochs"}:
        check_batches_split(spec.trial, spec.workers)


def _named_cells(spec: SearchSpec) -> list[tuple[str, dict[str, Any]]]:
    """Each grid cell's trial values with its label, ``grid cell {axis: value, ...}``."""
    names = [axis.name for axis in spec.grid]
    combos = itertools.product(*(axis.choices for axis in spec.grid))
    return [("grid cell {" + ", ".join(f"{name}: {value}" for name, value in zip(names, combo, strict=True)) + "}",
             values) for combo, values in zip(combos, _grid_values(spec), strict=True)]


def _upper(spec: SearchSpec, key: str) -> Any:
    """The largest value ``key`` takes in any trial of the search."""
    searched = {d.key: d for d in spec.search}
    if key in searched:
        return max(searched[key].values) if key != "dataset" else list(searched[key].values)
    axes = spec.grid_axes()
    if key in axes:
        return max(axes[key]) if key != "dataset" else list(axes[key])
    value = spec.trial.get(key, TrialConfig.model_fields[key].default)
    return [value] if key == "dataset" else value


def asha_max_t(spec: SearchSpec) -> int:
    """ASHA's horizon in its ``time_attr``: ``max_t``, else the most any trial could reach
    (epochs; or every epoch's examples once per sample, twice per gradient evaluation)."""
    asha = spec.scheduler
    if asha.max_t is not None:
        return asha.max_t
    epochs = int(_upper(spec, "epochs"))
    if asha.time_attr == "epoch":
        return epochs
    sizes = [schema.DATASET_TRAIN_SIZES.get(str(d)) for d in _upper(spec, "dataset")]
    if None in sizes:
        raise ValueError(f"scheduler.asha.time_attr = {asha.time_attr!r} on an image folder: give "
                         f"scheduler.asha.max_t (the most {asha.time_attr} a trial reaches)")
    per_epoch = max(sizes) * int(_upper(spec, "epoch_passes"))
    return epochs * per_epoch * (2 if asha.time_attr == "gradient_evaluations" else 1)


def _check_population(spec: SearchSpec) -> None:
    """PBT and PB2 evolve a population drawn from ``search``: each mutated key is searched
    (PB2: over a continuous range), and nothing else changes a trial's length or budget."""
    name = spec.scheduler_name
    if not spec.search or spec.grid:
        raise ValueError(f"scheduler = {name} evolves a population drawn from `search` (samples trials); "
                         f"give `search` distributions, not a `grid`")
    if spec.equal_budget is not None:
        raise ValueError(f"scheduler = {name} changes trials while they train; equal_budget is for grids")
    if spec.workers > 1:
        raise ValueError(f"scheduler = {name} copies checkpoints between trials; with resources.workers = "
                         f"{spec.workers} each is a Ray Train run of its own: use workers: 1")
    if any(d.when for d in spec.search):
        raise ValueError(f"scheduler = {name}: conditional (`when`) keys are not supported; Ray samples the "
                         f"population from independent distributions")
    searched = {d.key: d for d in spec.search}
    keys = spec.mutated_keys
    if not keys:
        raise ValueError(f"scheduler.{name}.mutate: nothing to evolve; search at least one of {', '.join(PBT_KEYS)}")
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


def _check_grid_cells(spec: SearchSpec) -> None:
    """Every cell of a grid is known before launch, so the checks across keys (a ViT option
    on a CNN, lr_final <= lr, ...) are made for each one now, not when its trial starts."""
    for label, values in _named_cells(spec):
        make_trial_config(values, where=label)


def _grid_values(spec: SearchSpec) -> list[dict[str, Any]]:
    names = [axis.name for axis in spec.grid]
    return [expand_bundles({**spec.trial, **dict(zip(names, combo, strict=True))}, bundle_table(spec))[0]
            for combo in itertools.product(*(axis.choices for axis in spec.grid))]


def _refuse_fixed(section: str, key: str, trial: Mapping[str, Any]) -> None:
    if key in trial:
        raise ValueError(f"{section}.{key} is also fixed in trial.{key}: give it in one place only")


def _refuse_invalid_value(section: str, key: str, value: Any, trial: Mapping[str, Any]) -> None:
    """Refuse ``value`` if it is invalid for ``key`` itself (e.g. rho < 0): validate it over
    the fixed trial values and keep the errors located at ``key``.  An error with no
    location comes from a check across keys (lr_final <= lr, ...), which each trial
    makes when it starts, once every key has its value."""
    try:
        TrialConfig.model_validate({**trial, key: value})
    except ValidationError as err:
        own = [problem for problem in err.errors() if problem["loc"][:1] == (key,)]
        if own:
            raise ValueError(_explain(own, prefix=section)) from None


def _check_when(dist: _Distribution, search: tuple[_Distribution, ...]) -> None:
    """``when`` names other ``choice`` keys of the search, sampled before ``dist``, and
    values among their choices."""
    choices = {d.key: d for d in search if isinstance(d, Choice) and d.key != dist.key}
    earlier = set(itertools.takewhile(lambda key: key != dist.key, (d.key for d in search)))
    for key, allowed in dist.when.items():
        parent = choices.get(key)
        if parent is None:
            raise ValueError(f"search.{dist.key}.when.{key}: must name another `choice` key of search; "
                             f"choice keys: {', '.join(choices) or 'none'}")
        if key not in earlier:
            raise ValueError(f"search.{dist.key}.when.{key}: the `when` conditions of {dist.key} and "
                             f"{key} form a cycle")
        bad = [value for value in allowed if value not in parent.values]
        if bad:
            raise ValueError(f"search.{dist.key}.when.{key} = {bad!r}: not among "
                             f"search.{key}.choice {list(parent.values)}")


def _explain(problems: list[dict[str, Any]], prefix: str = "") -> str:
    """pydantic's errors as ``where = value: what is allowed``, joined by ``; ``."""
    lines = []
    for problem in problems:
        loc = [str(part) for part in problem["loc"] if part not in _UNION_TAGS]
        names_key = bool(loc) and loc[-1] == "[key]"  # the mapping key itself is wrong
        path = ".".join(filter(None, [prefix, *loc[:-1 if names_key else None]]))
        message = problem["msg"].removeprefix("Value error, ")
        if not path:  # a check across keys: its message names them
            lines.append(message)
        elif problem["type"] == "missing":
            lines.append(f"{path}: required")
        elif names_key:
            lines.append(f"{path}: {message}")
        else:
            lines.append(f"{path} = {problem.get('input')!r}: {message}")
    return "; ".join(lines)


# -- loading -------------------------------------------------------------------------------
def bundled_spaces() -> dict[str, Traversable]:
    """The search spaces shipped in the package, by name (file name without ``.yaml``)."""
    folder = resources.files("samtune").joinpath(SPACES_FOLDER)
    if not folder.is_dir():
        return {}
    return {Path(entry.name).stem: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def bundled_space_names() -> tuple[str, ...]:
    return tuple(sorted(bundled_spaces()))


def _space_file(space: str) -> contextlib.AbstractContextManager[Path]:
    """A YAML file given by path, or a bundled space given by name (``default``,
    ``harada2024_cifar10_resnet18`` or ``harada2024_cifar10_resnet18.yaml``)."""
    path = Path(space)
    if path.is_file():
        return contextlib.nullcontext(path)
    bundled = bundled_spaces()
    if path.name == space and path.stem in bundled and path.suffix in ("", ".yaml"):
        return resources.as_file(bundled[path.stem])
    raise ConfigError(f"search space {space!r} not found: no such file, and no bundled space of that name; "
                      f"bundled: {', '.join(sorted(bundled))}")


def load_search_spec(space: str, assignments: list[str] = ()) -> SearchSpec:
    """The spec in ``space`` (a path or a bundled name) with ``--set`` overrides
    (``KEY=VALUE`` for a top-level key, ``trial.KEY=VALUE`` for a trial parameter)."""
    with _space_file(space) as path:
        data, source = load_yaml(path), path.read_text()
    for text in assignments:
        key, value = parse_assignment(text)
        if key.startswith("trial."):
            trial = data.get("trial")
            trial = trial if isinstance(trial, Mapping) else {}
            data["trial"] = {**trial, key.removeprefix("trial."): value}
        else:
            data[key] = value
    return parse_search_spec(data, source=source)


def parse_search_spec(data: Mapping[str, Any], source: str = "") -> SearchSpec:
    """Validate a spec given as a mapping; every mistake is a :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a search spec is a mapping of {', '.join(SPEC_KEYS)}; got {type(data).__name__}")
    if not source:
        try:
            source = yaml.safe_dump(dict(data), sort_keys=False)
        except yaml.YAMLError:
            source = repr(dict(data))
    try:
        return SearchSpec.model_validate(data, context={"source": source})
    except ValidationError as err:
        raise ConfigError(_explain(err.errors())) from None


# -- bundles and metrics -------------------------------------------------------------------
def bundle_table(spec: SearchSpec) -> dict[str, dict[str, dict[str, Any]]]:
    """Axis -> bundle name -> trial parameters, for the grid's axes of bundles."""
    return {axis.name: axis.bundles for axis in spec.grid if axis.bundles}


def expand_bundles(values: dict[str, Any], bundles: dict[str, dict[str, dict[str, Any]]]
                   ) -> tuple[dict[str, Any], dict[str, str]]:
    """Replace bundle-axis choices by their trial parameters; returns (trial values, labels)."""
    values, labels = dict(values), {}
    for axis, table in bundles.items():
        if axis in values:
            name = str(values.pop(axis))
            labels[axis] = name
            values.update(table[name])
    return values, labels


def reported_metrics(config: TrialConfig) -> tuple[str, ...]:
    """Every metric a trial with ``config`` reports: an objective may name any of them."""
    probes = schema.PROBE_METRICS if config.probes else ()
    return schema.EPOCH_METRICS + probes + schema.FINAL_METRICS + schema.measure_metric_names(config.sharpness)


# -- sampling (dry run, and the Optuna define-by-run space) ------------------------
@dataclass(frozen=True)
class DefineByRun:
    """The Optuna define-by-run space: it only suggests values.  A picklable
    object, not a closure, because Ray saves the searcher with the experiment."""

    distributions: tuple[_Distribution, ...]

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for dist in self.distributions:
            if dist.active(chosen):
                chosen[dist.key] = dist.suggest(trial)


def define_by_run(spec: SearchSpec) -> DefineByRun:
    return DefineByRun(spec.search)


def sample_configs(spec: SearchSpec, count: int = 5) -> list[dict[str, Any]]:
    """The first searched configs, as the search would draw them."""
    if spec.grid:
        names = [axis.name for axis in spec.grid]
        combos = itertools.islice(itertools.product(*(axis.choices for axis in spec.grid)), count)
        return [dict(zip(names, combo, strict=True)) for combo in combos]
    if not spec.search:
        return [{}]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=spec.seed))
    space = define_by_run(spec)
    out = []
    for _ in range(count):
        trial = study.ask()
        space(trial)
        out.append(dict(trial.params))
    return out


def grid_size(spec: SearchSpec) -> int:
    return math.prod(len(axis.choices) for axis in spec.grid) if spec.grid else 0


def describe(spec: SearchSpec, count: int = 5) -> str:
    """The dry run: the resolved spec and the first sampled configs, each validated."""
    total = (f"{grid_size(spec)} grid points x {spec.samples}" if spec.grid
             else f"a population of {spec.samples} trials ({spec.scheduler_name} evolving "
                  f"{', '.join(spec.mutated_keys)} every {spec.scheduler.interval} epochs)" if spec.mutated_keys
             else f"{spec.samples} Optuna TPE samples")
    lines = ["# resolved search space", yaml.safe_dump(spec.resolved(), sort_keys=False).rstrip(),
             f"# {total}, {spec.concurrency} at a time", f"# first {count} sampled configs:"]
    bundles = bundle_table(spec)
    for i, sample in enumerate(sample_configs(spec, count)):
        values, _ = expand_bundles({**spec.trial, **sample}, bundles)
        make_trial_config(values, where=f"sample {i}")
        lines.append(f"- {sample}")
    if spec.workers > 1:
        each = ", ".join(f"{value:g} {key.upper()}" for key, value in spec.worker_resources.items())
        lines.append(f"# each trial: {spec.workers} data-parallel workers of {each}; every global batch is "
                     f"split in {spec.workers}, m-sharpness with m = batch / {spec.workers}")
    if spec.budget:
        budget, unit = spec.budget
        lines.append(f"# equal budget: every cell trains for {budget} {unit}; epochs per cell: "
                     f"{[cell['epochs'] for cell in spec.cells()]}")
    return "\n".join(lines)
