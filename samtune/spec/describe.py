"""What a search would run, without running it: the Optuna define-by-run space, the
first sampled configs, and the dry run ``samtune search --dry-run`` prints."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import yaml

from samtune.config import make_trial_config
from samtune.spec.distributions import _Distribution
from samtune.spec.grid import bundle_table, expand_bundles, grid_choices, grid_size
from samtune.spec.resources import BATCH_KEYS
from samtune.spec.search_spec import SearchSpec


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
        return list(itertools.islice(grid_choices(spec), count))
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


def _plan(spec: SearchSpec) -> str:
    """How the search draws its trials, in a few words."""
    if spec.grid:
        return f"{grid_size(spec)} grid points x {spec.samples}"
    if spec.mutated_keys:
        return (f"a population of {spec.samples} trials ({spec.scheduler_name} evolving "
                f"{', '.join(spec.mutated_keys)} every {spec.scheduler.interval} epochs)")
    design = spec.design
    if design.is_plain:
        return f"{spec.samples} Optuna TPE samples"
    parts = (["each with its one-axis neighbours"] if design.coupled else []) + (
        [f"under {design.replicates} seeds"] if design.replicates > 1 else [])
    return f"{spec.samples} Optuna TPE samples, {' and '.join(parts)}: at most {spec.total_trials} trials"


def search_description(spec: SearchSpec) -> str:
    """The search as the description (Markdown) of its MLflow parent run: its name,
    objective, how trials are drawn, and the space."""
    objective = ", ".join(f"{mode} {metric}" for metric, mode in zip(spec.objective.metrics, spec.objective.modes))
    resolved = spec.resolved()
    space = {key: resolved[key] for key in ("search", "grid") if resolved[key]}
    return "\n".join([
        f"**Search `{spec.name}`**: {objective}; {_plan(spec)}, scheduler {spec.scheduler_name}.", "",
        "Space:", "", "```yaml",
        yaml.safe_dump(space or {"search": "none (fixed trial)"}, sort_keys=False, default_flow_style=None).rstrip(),
        "```"])


def describe(spec: SearchSpec, count: int = 5) -> str:
    """The dry run: the resolved spec and the first sampled configs, each validated."""
    lines = ["# resolved search space", yaml.safe_dump(spec.resolved(), sort_keys=False).rstrip(),
             f"# {_plan(spec)}, {spec.concurrency} at a time", f"# first {count} sampled configs:"]
    bundles = bundle_table(spec)
    for i, sample in enumerate(sample_configs(spec, count)):
        values, _ = expand_bundles({**spec.trial, **sample}, bundles)
        make_trial_config(values, where=f"sample {i}")
        lines.append(f"- {sample}")
    if spec.layout.data_parallel:
        lines.append(_data_parallel_line(spec))
    if spec.budget:
        budget, unit = spec.budget
        lines.append(f"# equal budget: every cell trains for {budget} {unit}; epochs per cell: "
                     f"{[cell['epochs'] for cell in spec.cells()]}")
    return "\n".join(lines)


def _data_parallel_line(spec) -> str:
    each = ", ".join(f"{value:g} {key.upper()}" for key, value in spec.worker_resources.items())
    layout = spec.layout
    if not layout.grows:
        return (f"# each trial: {layout.workers} data-parallel workers of {each}; every global batch is split in "
                f"{layout.workers}, m-sharpness with m = batch / {layout.workers}")
    if spec.search and {d.key for d in spec.search} & set(BATCH_KEYS):
        stages = "stages as each sampled batch gives them"
    else:
        cells = spec.cells() if spec.grid else [spec.trial]
        stages = "; ".join(_stages_text(layout, values) for values in cells[:3])
    return (f"# each trial: {layout.describe()}, each of {each}; m-sharpness with m = "
            f"{layout.per_worker_batch} while the batch splits that way; {stages}")


def _stages_text(layout, values) -> str:
    return ", ".join(f"epochs {s.first + 1}-{s.end} on {s.workers}" for s in layout.stages(values))
