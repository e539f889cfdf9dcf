"""``samtune show RUN`` and ``samtune best``: a trial as YAML, and a search's best trial.

``show`` prints the trial's config as YAML, runnable as it is with ``samtune train
--config``, under comments that give its run, status, final metrics and where its model
is; ``best`` finds a search's best trial by the search's own objective (its parent run's
``search.yaml``): one trial, or the Pareto front of a two-metric objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from samtune import schema
from samtune.commands.sources import MODELS_SCHEME, run_of
from samtune.display import value_text
from samtune.tracking.models import trial_model_id
from samtune.tracking.store import Tracker


def model_location(tracker: Tracker, run_id: str) -> str:
    """Where the run's model is, as the commands that read it accept it."""
    if (model_id := trial_model_id(tracker, run_id)) is not None:
        return f"{MODELS_SCHEME}{model_id}"
    run = tracker.client.get_run(run_id)
    if any(item.path == schema.ARTIFACT_MODEL for item in tracker.client.list_artifacts(run_id)):
        return f"{schema.ARTIFACT_MODEL} of run {run_id}"
    if checkpoint := run.data.tags.get(schema.TAG_CHECKPOINT):
        return f"the last Ray checkpoint, {checkpoint}"
    return "none kept"


def show_trial(source: str, tracking_uri: str | None) -> str:
    """The trial of ``source`` (a run id or ``models:/`` URI) as commented YAML."""
    tracker = Tracker(tracking_uri)
    run_id = run_of(source, tracker)
    run = tracker.client.get_run(run_id)
    config = tracker.download_artifact(run_id, schema.ARTIFACT_CONFIG).read_text()
    experiment = tracker.client.get_experiment(run.info.experiment_id).name
    finals = {k: v for k, v in sorted(run.data.metrics.items())
              if k.startswith((schema.FINAL_PREFIX, *schema.MEASURE_PREFIXES)) or k == schema.CRITERION_REACHED}
    lines = [f"# trial run {run_id} ({run.info.run_name}) in experiment {experiment!r}, {tracker.uri}",
             f"# status: {run.data.tags.get(schema.TAG_STATUS, run.info.status.lower())}"]
    if error := run.data.tags.get(schema.TAG_ERROR):
        lines.append(f"# error: {error.strip().splitlines()[-1]}")
    lines.append("# final metrics:" if finals else "# final metrics: none recorded")
    lines += [f"#   {key}: {value:.6g}" for key, value in finals.items()]
    lines += [f"# model: {model_location(tracker, run_id)}",
              "# train it again: samtune train --config <this file>", config.rstrip()]
    return "\n".join(lines)


@dataclass(frozen=True)
class Objective:
    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    searched: tuple[str, ...]


def search_objective(tracker: Tracker, parent_run_id: str) -> Objective:
    """The objective and searched keys of a search, from its recorded spec."""
    from samtune.spec import parse_search_spec

    text = tracker.download_artifact(parent_run_id, schema.ARTIFACT_SEARCH_SPEC).read_text()
    spec = parse_search_spec(yaml.safe_load(text), source=text)
    return Objective(spec.objective.metrics, spec.objective.modes, spec.searched_keys)


def find_search(tracker: Tracker, experiment: str | None, search: str | None) -> str:
    """The search's parent run: ``search``, else the latest in ``experiment``, else the latest."""
    if search is not None:
        return tracker.search_run(search).info.run_id
    experiment_id = None
    if experiment is not None:
        found = tracker.client.get_experiment_by_name(experiment)
        if found is None:
            raise FileNotFoundError(f"no experiment {experiment!r} in {tracker.uri}")
        experiment_id = found.experiment_id
    run_id = tracker.latest_search_run(experiment_id)
    if run_id is None:
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise FileNotFoundError(f"no search in {where} of {tracker.uri}; run samtune search first")
    return run_id


def best_trials(tracker: Tracker, parent_run_id: str, objective: Objective) -> list:
    """The completed trial runs that are best by the objective: one, or the Pareto front."""
    experiment_id = tracker.run_experiment_id(parent_run_id)
    runs = tracker.client.search_runs(
        [experiment_id], max_results=50_000,
        filter_string=f"tags.`{schema.TAG_PARENT}` = '{parent_run_id}' and "
                      f"tags.`{schema.TAG_STATUS}` = '{schema.COMPLETED}'")
    signs = [1 if mode == "min" else -1 for mode in objective.modes]

    def key(run) -> tuple[float, ...]:
        return tuple(sign * run.data.metrics[m] for m, sign in zip(objective.metrics, signs))

    scored = sorted((r for r in runs if all(m in r.data.metrics for m in objective.metrics)), key=key)
    if len(objective.metrics) == 1:
        return scored[:1]
    return [r for r in scored if not any(_dominates(key(o), key(r)) for o in scored)]


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and a != b


def show_best(experiment: str | None, search: str | None, tracking_uri: str | None) -> str:
    tracker = Tracker(tracking_uri)
    parent = find_search(tracker, experiment, search)
    objective = search_objective(tracker, parent)
    best = best_trials(tracker, parent, objective)
    goal = ", ".join(f"{mode} {metric}" for metric, mode in zip(objective.metrics, objective.modes))
    lines = [f"search {tracker.client.get_run(parent).info.run_name} (parent run {parent}); objective: {goal}"]
    if not best:
        return "\n".join([*lines, "no completed trial reports the objective"])
    if len(best) > 1:
        lines.append(f"the Pareto front: {len(best)} trials")
    for run in best:
        values = {k: run.data.params.get(k) for k in objective.searched}
        lines += [f"\n{run.info.run_name}  (run {run.info.run_id})",
                  *(f"  {m} = {value_text(run.data.metrics[m])}" for m in objective.metrics),
                  "  " + "  ".join(f"{k}={_short_param(v)}" for k, v in values.items()),
                  f"  model: {model_location(tracker, run.info.run_id)}"]
    first = best[0].info.run_id
    lines += ["", f"show it:     samtune show {first}",
              f"measure it:  samtune sharpness {first} --measures hessian_trace"]
    return "\n".join(lines)


def _short_param(value: str | None) -> str:
    try:
        return value_text(float(value)) if value is not None and "." in value else str(value)
    except ValueError:
        return str(value)
