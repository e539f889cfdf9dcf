"""The search spec itself: :class:`SearchSpec`, one YAML file's sections put together,
and the checks across sections (what a grid, a scheduler, an equal budget or
data-parallel workers ask of the rest of the spec).

Each section's own rules live with it (:mod:`~samtune.spec.distributions`,
:mod:`~samtune.spec.grid`, :mod:`~samtune.spec.schedulers`,
:mod:`~samtune.spec.resources`, :mod:`~samtune.spec.objective`); this module decides
the order in which they are made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from samtune import schema
from samtune.config import make_trial_config
from samtune.spec.design import Design, group_size
from samtune.spec.distributions import Distribution, _check_when, _Distribution, _parents_first
from samtune.spec.grid import (
    BundleAxis,
    EqualBudget,
    GridAxis,
    ValueAxis,
    _check_grid_cells,
    _equal_budget,
    grid_cells,
    grid_size,
)
from samtune.spec.objective import Objective, reported_metrics
from samtune.spec.resources import LAYOUT_KEYS, Resources, WorkerLayout, _check_loader_cpus, _check_worker_batches
from samtune.spec.schedulers import Pbt, SchedulerSection, _check_population, asha_max_t, scheduler_section
from samtune.spec.until import Until
from samtune.spec.values import (
    MeasureKey,
    NonNegativeInt,
    PositiveInt,
    TrialKey,
    _refuse_fixed,
    _refuse_invalid_value,
    _Section,
)


def _check_design(spec: SearchSpec) -> None:
    """A design shapes what the Optuna sampler gives; it needs one, and every trial it adds run to the end."""
    if spec.design.is_plain:
        return
    if not spec.search or spec.grid:
        raise ValueError("design applies to an Optuna search (`search`); a grid has its one-axis pairs already, "
                         "and replicates there are a grid axis `seed: [0, 1, 2]`")
    if spec.scheduler is not None:
        raise ValueError(f"design with scheduler = {spec.scheduler_name}: a trial stopped early would leave its "
                         f"pairs unmatched; use scheduler: none")
    if spec.design.replicates > 1 and "seed" in spec.searched_keys:
        raise ValueError("design.replicates with a searched seed: replicates choose the seeds")


def _check_until(spec: SearchSpec, allowed: tuple[str, ...]) -> None:
    if spec.until is None:
        return
    if not spec.search or spec.grid or spec.mutated_keys:
        raise ValueError("until applies to an Optuna search (`search`): a grid or a population runs all its trials")
    for key in ("measure", "target"):
        if getattr(spec.until, key) not in allowed:
            raise ValueError(f"until.{key} = {getattr(spec.until, key)!r} is never reported by a trial; "
                             f"allowed: {', '.join(allowed)}")


def _keep_models(value: Any) -> str | int:
    allowed = (schema.KEEP_ALL_MODELS, schema.KEEP_NO_MODELS)
    if value in allowed or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"allowed {' or '.join(allowed)} or an integer k >= 1 (the best k trials' models "
                     f"by the objective)")


def _experiment_name(name: str) -> str:
    if not name.strip() or "/" in name:
        raise ValueError("a non-empty experiment name without '/' is required")
    return name


_SEARCH_SECTION = TypeAdapter(dict[TrialKey, Distribution])
_GRID_SECTION = TypeAdapter(dict[Annotated[str, BeforeValidator(str)], GridAxis])


class SearchSpec(_Section):
    """One search.  ``trial`` holds the fixed trial values; ``search`` the Optuna
    distributions (a conditional key after the keys it depends on); ``grid`` the grid
    axes; ``source`` the YAML text as given, for the record."""

    _not_in_yaml: ClassVar[frozenset[str]] = frozenset({"source"})

    name: Annotated[str, Field(strict=True, description="the MLflow experiment (required)"),
                    AfterValidator(_experiment_name)]
    trial: dict[str, Any] = Field(default_factory=dict, description=(
        "fixed values of any trial parameter (see the trial parameters reference)"))
    search: tuple[Distribution, ...] = Field((), description=(
        "Optuna distributions, `KEY: {uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`, `{int: [lo, hi]}` or "
        "`{choice: [...]}`; add `when: {KEY: value or [values]}` to sample a key only when an earlier `choice` "
        "key takes those values"))
    grid: tuple[GridAxis, ...] = Field((), description=(
        "instead of `search`: `KEY: [values]` for every combination; a named axis of bundles "
        "(`schedule: {constant: {...}, +B: {...}}`) sets several parameters per value"))
    objective: Objective = Field(default_factory=Objective, description=(
        "`{metric: NAME, mode: min|max}`; or `{metric: [A, B], mode: [min, min]}` for a Pareto search "
        "(Optuna NSGA-II), e.g. test error × sharpness"))
    samples: PositiveInt = Field(16, description=(
        "Optuna trials (default 16); for a grid, repeats of the grid (default 1); under `design`, groups"))
    concurrency: PositiveInt = Field(2, description="trials at once")
    resources: dict[str, float] = Field(default_factory=lambda: {"cpu": 1}, description=(
        "per trial: CPUs, GPUs and data-parallel workers (the `resources` section below)"))
    scheduler: SchedulerSection | None = Field(None, description=(
        "`none`, or one of `{asha: {...}}` (early stopping), `{pbt: {...}}` or `{pb2: {...}}` "
        "(population-based training)"))
    sharpness: tuple[MeasureKey, ...] | None = Field(None, description=(
        "measures computed at the end of each trial (sets `trial.sharpness`)"))
    seed: NonNegativeInt = Field(0, description=(
        "seed of the sampler, and the trials' seed unless given in `trial` or searched"))
    max_failures: NonNegativeInt = Field(2, description="retries of a failed trial from its last checkpoint")
    keep_models: Annotated[str | int, BeforeValidator(_keep_models)] = Field(schema.KEEP_ALL_MODELS, description=(
        "which trials' final models stay in MLflow: `all`, `none` (no model is logged: huge models), or an "
        "integer k (the best k by the objective; the others' logged models are deleted when the search ends, "
        "and `mlflow gc` frees their files)"))
    equal_budget: EqualBudget | None = Field(None, description=(
        "with a `grid`: every cell gets the budget the cells matching `like` spend in their epochs"))
    design: Design = Field(default_factory=Design, description=(
        "an Optuna search designed for the sharpness question: coupled one-axis neighbours, seed replicates"))
    until: Until | None = Field(None, description=(
        "keep launching trials, up to the cap `samples`, until a question is settled"))
    source: str = Field("", description="the YAML text as given, for the record (not a YAML key)")
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
        return scheduler_section(value)

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
        _check_design(self)
        _check_until(self, allowed)
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
        return tuple(d.key for d in self.search if d.key in schema.PBT_KEYS)

    @property
    def layout(self) -> WorkerLayout:
        """How many data-parallel workers each trial trains on, stage by stage."""
        return WorkerLayout.of(self.resources)

    @property
    def workers(self) -> int:
        """The most data-parallel workers a trial trains on at once."""
        return self.layout.most_workers

    @property
    def worker_resources(self) -> dict[str, float]:
        """What Ray reserves for each worker of a trial (the whole trial when it has one)."""
        return {key: value for key, value in self.resources.items() if key not in LAYOUT_KEYS}

    @property
    def budget(self) -> tuple[int, str] | None:
        """(budget, unit) every trial gets under ``equal_budget``; None without it."""
        return None if self._budget is None else (self._budget, self.equal_budget.unit)

    def cells(self) -> list[dict[str, Any]]:
        """Every grid point as trial values: fixed values, bundles expanded, and the
        equal budget applied (what each trial of a grid runs with)."""
        return [values for _, values in grid_cells(self)]

    # -- what the runner and the dry run read
    @property
    def searched_keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.search) + tuple(axis.name for axis in self.grid)

    @property
    def total_trials(self) -> int:
        """Trials the search runs (at most, under a design whose neighbours may be inactive)."""
        if self.grid:
            return grid_size(self) * self.samples
        return self.samples * group_size(self.search, self.design)

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
            "keep_models": self.keep_models,
        } | ({"design": self.design.model_dump()} if not self.design.is_plain else {}) | (
            {"until": self.until.model_dump()} if self.until else {}) | (
            {"equal_budget": self.equal_budget.model_dump()} if self.equal_budget else {})
