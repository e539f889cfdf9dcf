"""Search spec: one YAML file describes one search (DESIGN.md, "Search-space YAML").

Validated completely before anything starts: every mistake is reported with
the key, the value and what is allowed, as a :class:`ConfigError`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from samtune.config import (TRIAL_KEYS, ConfigError, TrialConfig, load_yaml, make_trial_config,
                            parse_assignment)

SPEC_KEYS = ("name", "trial", "search", "grid", "objective", "samples", "concurrency",
             "resources", "scheduler", "sharpness", "seed", "max_failures")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
EPOCH_METRICS = ("train_loss", "train_error", "test_loss", "test_error", "gen_gap", "lr",
                 "batch_size", "rho", "steps", "samples_seen", "epoch_seconds", "samples_per_second")
FINAL_METRICS = ("final_test_error", "final_train_error", "final_gen_gap", "final_test_loss",
                 "final_train_loss")
ASHA_KEYS = ("grace_period", "reduction_factor", "metric", "mode")


@dataclass(frozen=True)
class Distribution:
    """One searched key: ``{uniform|loguniform|int: [lo, hi]}`` or ``{choice: [...]}``,
    optionally only ``when`` other searched keys take given values."""

    key: str
    kind: str
    values: tuple
    when: dict[str, tuple] = field(default_factory=dict)

    def suggest(self, trial):
        """Ask an Optuna trial for a value (define-by-run)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        lo, hi = self.values
        if self.kind == "int":
            return trial.suggest_int(self.key, int(lo), int(hi))
        return trial.suggest_float(self.key, float(lo), float(hi), log=self.kind == "loguniform")

    def active(self, chosen: dict[str, Any]) -> bool:
        return all(chosen.get(key) in allowed for key, allowed in self.when.items())


@dataclass(frozen=True)
class Objective:
    metrics: tuple[str, ...]
    modes: tuple[str, ...]

    @property
    def is_pareto(self) -> bool:
        return len(self.metrics) > 1


@dataclass(frozen=True)
class SearchSpec:
    name: str
    trial: dict[str, Any]
    search: tuple[Distribution, ...]
    grid: dict[str, tuple]
    objective: Objective
    samples: int
    concurrency: int
    resources: dict[str, float]
    scheduler: dict[str, Any] | None
    seed: int
    max_failures: int
    source: str  # the YAML text as given, for the record

    @property
    def searched_keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.search) + tuple(self.grid)

    def resolved(self) -> dict[str, Any]:
        """The spec as a plain mapping with every default filled in."""
        return {
            "name": self.name, "trial": self.trial,
            "search": {d.key: ({d.kind: list(d.values)} | ({"when": {k: list(v) for k, v in d.when.items()}}
                                                         if d.when else {})) for d in self.search},
            "grid": {k: ({b.name: b.values for b in v} if isinstance(v[0], Bundle) else list(v))
                     for k, v in self.grid.items()},
            "objective": {"metric": list(self.objective.metrics), "mode": list(self.objective.modes)},
            "samples": self.samples, "concurrency": self.concurrency, "resources": self.resources,
            "scheduler": self.scheduler or "none", "seed": self.seed, "max_failures": self.max_failures,
        }


# -- loading ----------------------------------------------------------------------
SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


def bundled_space_path(name: str) -> Path:
    """``search_spaces/<name>.yaml`` of this checkout."""
    return SPACES_DIR / f"{name}.yaml"


def load_search_spec(space: str, assignments: list[str] = ()) -> SearchSpec:
    path = Path(space)
    if not path.is_file() and not space.endswith((".yaml", ".yml")):
        path = bundled_space_path(space)
    if not path.is_file():
        raise ConfigError(f"search space {space!r} not found (looked at {path}); give a YAML file "
                          f"or the name of a bundled space")
    data = load_yaml(path)
    for text in assignments:
        key, value = parse_assignment(text)
        if key.startswith("trial."):
            data.setdefault("trial", {})[key.removeprefix("trial.")] = value
        else:
            data[key] = value
    return parse_search_spec(data, source=path.read_text())


def parse_search_spec(data: dict[str, Any], source: str = "") -> SearchSpec:
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(SPEC_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise ConfigError(f"name = {name!r}: a non-empty experiment name without '/' is required")
    if data.get("search") and data.get("grid"):
        raise ConfigError("search and grid are both given: use `search` (Optuna) or `grid` "
                          "(every combination), not both")
    trial = _parse_trial(data)
    base = make_trial_config(trial, where="trial")
    search = _parse_search(data.get("search") or {}, trial)
    grid = _parse_grid(data.get("grid") or {}, trial)
    spec = SearchSpec(
        name=name, trial=trial, search=search, grid=grid,
        objective=_parse_objective(data.get("objective"), base),
        samples=_positive_int(data, "samples", 1 if grid else 16),
        concurrency=_positive_int(data, "concurrency", 2),
        resources=_parse_resources(data.get("resources")),
        scheduler=_parse_scheduler(data.get("scheduler", "none"), base),
        seed=_nonnegative_int(data, "seed", 0),
        max_failures=_nonnegative_int(data, "max_failures", 2),
        source=source or yaml.safe_dump(data, sort_keys=False))
    if spec.scheduler and spec.objective.is_pareto:
        raise ConfigError("scheduler = asha with a two-metric (Pareto) objective is not supported; "
                          "use scheduler: none")
    return spec


def _parse_trial(data: dict[str, Any]) -> dict[str, Any]:
    trial = data.get("trial") or {}
    if not isinstance(trial, dict):
        raise ConfigError(f"trial = {trial!r}: expected a mapping of trial parameters")
    trial = dict(trial)
    if "sharpness" in data:
        trial["sharpness"] = data["sharpness"]
    if "seed" in data and "seed" not in trial:
        trial["seed"] = data["seed"]
    return trial


def _check_searched_key(section: str, key: str, trial: dict[str, Any]) -> None:
    if key not in TRIAL_KEYS:
        raise ConfigError(f"{section}.{key}: unknown trial parameter; allowed: {', '.join(TRIAL_KEYS)}")
    if key in trial:
        raise ConfigError(f"{section}.{key} is also fixed in trial.{key}: give it in one place only")


def _check_value(section: str, key: str, value: Any, trial: dict[str, Any]) -> None:
    """Refuse a value that is invalid for its own key (e.g. rho < 0); combinations
    with other searched keys are checked when each trial starts."""
    try:
        make_trial_config({**trial, key: value}, where=section)
    except ConfigError as err:
        if f"{section}.{key} " in str(err) or f"{key} = " in str(err):
            raise


def _parse_search(section: Any, trial: dict[str, Any]) -> tuple[Distribution, ...]:
    if not isinstance(section, dict):
        raise ConfigError(f"search = {section!r}: expected a mapping key: {{distribution: ...}}")
    raw_when, out = {}, {}
    for key, raw in section.items():
        _check_searched_key("search", key, trial)
        if isinstance(raw, dict) and "when" in raw:
            raw = dict(raw)
            raw_when[key] = raw.pop("when")
        dist = _parse_distribution(key, raw)
        for value in dist.values:
            _check_value("search", key, value, trial)
        out[key] = dist
    for key, when in raw_when.items():
        out[key] = replace(out[key], when=_parse_when(f"search.{key}", when, out, key))
    return _parents_first(out)


def _parents_first(dists: dict[str, Distribution]) -> tuple[Distribution, ...]:
    """Order so that a conditional key is sampled after the keys it depends on."""
    ordered: list[Distribution] = []
    pending = dict(dists)
    while pending:
        ready = [d for d in pending.values() if all(k not in pending for k in d.when)]
        if not ready:
            raise ConfigError(f"search: the `when` conditions of {sorted(pending)} form a cycle")
        for dist in ready:
            ordered.append(pending.pop(dist.key))
    return tuple(ordered)


def _parse_distribution(key: str, raw: Any) -> Distribution:
    where = f"search.{key}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} = {raw!r}: expected {{uniform|loguniform|int: [lo, hi]}} "
                          f"or {{choice: [...]}}")
    kinds = [k for k in raw if k in DISTRIBUTIONS]
    if len(raw) != 1 or not kinds:
        raise ConfigError(f"{where} = {raw!r}: unknown distribution; allowed: {', '.join(DISTRIBUTIONS)} "
                          f"(plus an optional `when`)")
    kind, values = kinds[0], raw[kinds[0]]
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.choice = {values!r}: expected a non-empty list")
        return Distribution(key, kind, tuple(values))
    if (not isinstance(values, list) or len(values) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise ConfigError(f"{where}.{kind} = {values!r}: expected [lo, hi] with two numbers")
    lo, hi = values
    if not lo < hi:
        raise ConfigError(f"{where}.{kind} = {values!r}: lo must be < hi")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}.loguniform = {values!r}: both bounds must be > 0")
    if kind == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ConfigError(f"{where}.int = {values!r}: bounds must be integers")
    return Distribution(key, kind, (lo, hi))


def _parse_when(where: str, raw: Any, dists: dict[str, Distribution], own: str) -> dict[str, tuple]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}.when = {raw!r}: expected {{key: value or [values]}}")
    out = {}
    for key, allowed in raw.items():
        parent = dists.get(key)
        if parent is None or parent.kind != "choice" or key == own:
            raise ConfigError(f"{where}.when.{key}: must name another `choice` key of search")
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        bad = [v for v in allowed if v not in parent.values]
        if bad:
            raise ConfigError(f"{where}.when.{key} = {bad!r}: not among search.{key}.choice "
                              f"{list(parent.values)}")
        out[key] = allowed
    return out


def _parse_grid(section: Any, trial: dict[str, Any]) -> dict[str, tuple]:
    """``key: [values]`` for a trial parameter, or a named axis whose values are
    bundles of trial parameters (``schedule: {constant: {...}, +B: {...}}``)."""
    if not isinstance(section, dict):
        raise ConfigError(f"grid = {section!r}: expected a mapping key: [values]")
    out = {}
    for key, values in section.items():
        if isinstance(values, dict):
            out[key] = _parse_bundles(key, values, trial)
            continue
        _check_searched_key("grid", key, trial)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} = {values!r}: expected a non-empty list of values")
        for value in values:
            _check_value("grid", key, value, trial)
        out[key] = tuple(values)
    return out


def _parse_bundles(axis: str, bundles: dict[str, Any], trial: dict[str, Any]) -> tuple:
    if axis in TRIAL_KEYS:
        raise ConfigError(f"grid.{axis}: a trial parameter takes a list of values, not a mapping")
    if not bundles:
        raise ConfigError(f"grid.{axis} is empty: give name: {{trial parameters}} entries")
    for name, bundle in bundles.items():
        if not isinstance(bundle, dict):
            raise ConfigError(f"grid.{axis}.{name} = {bundle!r}: expected a mapping of trial parameters")
        make_trial_config({**trial, **bundle}, where=f"grid.{axis}.{name}")
    return tuple(Bundle(axis, str(name), dict(bundle)) for name, bundle in bundles.items())


@dataclass(frozen=True)
class Bundle:
    """One named value of a grid axis that sets several trial parameters at once."""

    axis: str
    name: str
    values: dict[str, Any]

    def __repr__(self) -> str:
        return self.name


def bundle_table(spec: "SearchSpec") -> dict[str, dict[str, dict[str, Any]]]:
    """axis -> name -> trial parameters, for the grid's bundle axes."""
    return {axis: {b.name: b.values for b in values}
            for axis, values in spec.grid.items() if values and isinstance(values[0], Bundle)}


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
    from samtune import sharpness

    measured = () if config.sharpness == () else tuple(sharpness.metric_names(config.sharpness))
    return EPOCH_METRICS + FINAL_METRICS + measured


def _parse_objective(raw: Any, base: TrialConfig) -> Objective:
    raw = raw or {"metric": "final_test_error", "mode": "min"}
    if not isinstance(raw, dict) or set(raw) - {"metric", "mode"} or "metric" not in raw:
        raise ConfigError(f"objective = {raw!r}: expected {{metric: NAME, mode: min|max}} "
                          f"or lists of two for a Pareto search")
    metrics = raw["metric"] if isinstance(raw["metric"], list) else [raw["metric"]]
    modes = raw.get("mode", "min")
    modes = modes if isinstance(modes, list) else [modes] * len(metrics)
    if not 1 <= len(metrics) <= 2 or len(modes) != len(metrics):
        raise ConfigError(f"objective = {raw!r}: one metric, or two metrics with two modes")
    allowed = reported_metrics(base)
    for metric in metrics:
        if metric not in allowed:
            raise ConfigError(f"objective.metric = {metric!r} is never reported by a trial; "
                              f"allowed: {', '.join(allowed)}")
    for mode in modes:
        if mode not in ("min", "max"):
            raise ConfigError(f"objective.mode = {mode!r}: allowed min, max")
    return Objective(tuple(metrics), tuple(modes))


def _parse_resources(raw: Any) -> dict[str, float]:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict) or set(raw) - {"cpu", "gpu"}:
        raise ConfigError(f"resources = {raw!r}: expected {{cpu: N, gpu: F}}")
    cpu, gpu = raw.get("cpu", 1), raw.get("gpu")
    if not isinstance(cpu, (int, float)) or cpu <= 0:
        raise ConfigError(f"resources.cpu = {cpu!r}: must be a number > 0")
    if gpu is not None and (not isinstance(gpu, (int, float)) or gpu < 0):
        raise ConfigError(f"resources.gpu = {gpu!r}: must be a number >= 0 (fractions share a GPU)")
    out = {"cpu": cpu}
    if gpu is not None:
        out["gpu"] = gpu
    return out


def _parse_scheduler(raw: Any, base: TrialConfig) -> dict[str, Any] | None:
    if raw in (None, "none"):
        return None
    if not (isinstance(raw, dict) and set(raw) == {"asha"} and isinstance(raw["asha"] or {}, dict)):
        raise ConfigError(f"scheduler = {raw!r}: allowed `none` or {{asha: {{grace_period, "
                          f"reduction_factor, metric, mode}}}}")
    asha = dict(raw["asha"] or {})
    unknown = sorted(set(asha) - set(ASHA_KEYS))
    if unknown:
        raise ConfigError(f"scheduler.asha: unknown key(s) {unknown}; allowed: {', '.join(ASHA_KEYS)}")
    asha.setdefault("grace_period", 1)
    asha.setdefault("reduction_factor", 2)
    asha.setdefault("metric", "test_error")
    asha.setdefault("mode", "min")
    if asha["metric"] not in EPOCH_METRICS:
        raise ConfigError(f"scheduler.asha.metric = {asha['metric']!r}: ASHA compares trials every "
                          f"epoch, so use a per-epoch metric: {', '.join(EPOCH_METRICS)}")
    for key in ("grace_period", "reduction_factor"):
        if not isinstance(asha[key], int) or asha[key] < 1:
            raise ConfigError(f"scheduler.asha.{key} = {asha[key]!r}: must be an integer >= 1")
    if asha["reduction_factor"] < 2:
        raise ConfigError(f"scheduler.asha.reduction_factor = {asha['reduction_factor']}: must be >= 2")
    if asha["mode"] not in ("min", "max"):
        raise ConfigError(f"scheduler.asha.mode = {asha['mode']!r}: allowed min, max")
    return {"asha": asha}


def _positive_int(data: dict, key: str, default: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} = {value!r}: must be an integer >= 1")
    return value


def _nonnegative_int(data: dict, key: str, default: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{key} = {value!r}: must be an integer >= 0")
    return value


# -- sampling (dry run, and the Optuna define-by-run space) ------------------------
@dataclass(frozen=True)
class DefineByRun:
    """The Optuna define-by-run space: it only suggests values.  A picklable
    object, not a closure, because Ray saves the searcher with the experiment."""

    distributions: tuple[Distribution, ...]

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
        keys = list(spec.grid)
        combos = itertools.islice(itertools.product(*spec.grid.values()), count)
        return [{k: (v.name if isinstance(v, Bundle) else v) for k, v in zip(keys, combo)}
                for combo in combos]
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
    return math.prod(len(v) for v in spec.grid.values()) if spec.grid else 0


def describe(spec: SearchSpec, count: int = 5) -> str:
    total = (f"{grid_size(spec)} grid points x {spec.samples}" if spec.grid
             else f"{spec.samples} Optuna TPE samples")
    lines = ["# resolved search space", yaml.safe_dump(spec.resolved(), sort_keys=False).rstrip(),
             f"# {total}, {spec.concurrency} at a time", f"# first {count} sampled configs:"]
    bundles = bundle_table(spec)
    for i, sample in enumerate(sample_configs(spec, count)):
        values, _ = expand_bundles({**spec.trial, **sample}, bundles)
        make_trial_config(values, where=f"sample {i}")
        lines.append(f"- {sample}")
    return "\n".join(lines)
