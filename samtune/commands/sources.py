"""Where the commands that re-measure, interpolate, replay and show a trial find it.

A source is any of:

- a trial run's id, whichever way it ran (``samtune train``, a search trial that
  completed, one stopped early by ASHA, a PBT clone, a data-parallel trial): its logged
  model, else (runs recorded before logged models) its ``model.pt`` artifact, else its
  last Ray checkpoint (tag ``samtune.checkpoint``: a trial stopped early is read as it
  stopped);
- a trial selector, ``EXPERIMENT:key=value[,key=value...]``: the one trial of the latest
  search in MLflow experiment EXPERIMENT whose params match every pair (as numbers when
  both sides are, so ``2`` matches ``2.0``; else as strings), e.g.
  ``harada2024_digits:optimizer=gsam,batch_growth_ratio=2,seed=0``; none or several
  matching is an error that says which keys tell the trials apart (:func:`parse_selector`);
- a ``models:/`` URI: a logged model (``models:/m-...``) or a registered model's version
  or alias (``models:/NAME/3``, ``models:/NAME/@best``);
- a file: a ``model.pt`` or a Ray checkpoint's ``trial.pt`` (or its folder); a file that
  exists is read even when its name reads as a selector.

Every file is read with ``torch.load(weights_only=True)``: opening someone's model runs
none of their code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samtune import schema
from samtune.tracking.models import model_run_id, trial_model_id
from samtune.tracking.store import Tracker, filter_literal

MODELS_SCHEME = "models:/"
CHECKPOINT_FILE = schema.RAY_CHECKPOINT_FILE


@dataclass(frozen=True)
class SavedWeights:
    """A trial's config (as saved: a dict) and state dict, and where they were read."""

    config: dict[str, Any]
    model: dict[str, Any]
    origin: str
    run_id: str | None = None


@dataclass(frozen=True)
class TrialSelector:
    """``EXPERIMENT:key=value[,key=value...]``: a trial of the experiment's latest search, by its params."""

    text: str
    experiment: str
    pairs: tuple[tuple[str, str], ...]

    def matches(self, params: dict[str, str]) -> bool:
        return all(key in params and _same_value(params[key], value) for key, value in self.pairs)


# the experiment ends at the first ':' that a key and '=' follow (a models:/ URI has none)
_SELECTOR = re.compile(r"(?P<experiment>.+?):(?P<pairs>[A-Za-z_][\w.\-]*\s*=.*)")
_KEY = re.compile(r"[A-Za-z_][\w.\-]*")
_MAX_LISTED = 5  # trials shown when a selector matches several
_MAX_VALUES = 10  # values of a key shown when it matches none


def parse_selector(text: str) -> TrialSelector | None:
    """The trial selector ``text`` is, or None when it is none.  Pairs are split at commas;
    a piece without ``=`` continues the value before it (``sharpness=hessian_trace,tml``:
    a tuple param is logged comma-joined), and spaces around pieces are dropped."""
    found = _SELECTOR.fullmatch(text)
    if found is None:
        return None
    pairs: list[list[str]] = []
    for piece in filter(None, (p.strip() for p in found["pairs"].split(","))):
        key, equals, value = (part.strip() for part in piece.partition("="))
        if equals and _KEY.fullmatch(key):
            pairs.append([key, value])
        else:
            pairs[-1][1] += "," + piece
    return TrialSelector(text, found["experiment"], tuple((key, value) for key, value in pairs))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _same_value(logged: str, wanted: str) -> bool:
    """Equal as numbers when both parse as one (``2`` is ``2.0``), else as strings."""
    a, b = _number(logged), _number(wanted)
    return logged == wanted or (a is not None and b is not None and a == b)


def _string_filter(key: str, value: str) -> str | None:
    """An MLflow filter on the param, where string equality is the test: not for a number
    (MLflow compares params as strings, and ``2`` must match ``2.0``)."""
    if _number(value) is not None:
        return None
    try:
        return f"params.`{key}` = {filter_literal(value)}"
    except ValueError:  # characters a filter cannot hold: compared here only
        return None


def resolve_selector(selector: TrialSelector, tracker: Tracker) -> str:
    """The run id of the one trial ``selector`` names; FileNotFoundError, saying why, otherwise."""
    client, where = tracker.client, f"trial selector {selector.text!r}"
    experiment = client.get_experiment_by_name(selector.experiment)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments(max_results=1000))
        raise FileNotFoundError(f"{where}: no experiment {selector.experiment!r} in {tracker.uri} "
                                f"(experiments: {', '.join(names) or 'none'})")
    parent = tracker.latest_search_run(experiment.experiment_id)
    if parent is None:
        raise FileNotFoundError(f"{where}: experiment {selector.experiment!r} in {tracker.uri} holds no search "
                                f"(no run tagged {schema.TAG_KIND}={schema.KIND_SEARCH}); run samtune search first")
    children = f"tags.`{schema.TAG_PARENT}` = {filter_literal(parent)}"
    narrow = [f for key, value in selector.pairs if (f := _string_filter(key, value))]
    runs = client.search_runs([experiment.experiment_id], " and ".join([children, *narrow]), max_results=50_000)
    matched = [run for run in runs if selector.matches(run.data.params)]
    if len(matched) == 1:
        return matched[0].info.run_id
    search = f"the latest search of experiment {selector.experiment!r} (parent run {parent})"
    if matched:
        raise FileNotFoundError(f"{where}: {_several(matched, search)}")
    trials = client.search_runs([experiment.experiment_id], children, max_results=50_000) if narrow else runs
    raise FileNotFoundError(f"{where}: {_none(selector, trials, search)}")


def _several(matched: list, search: str) -> str:
    """Why several matching trials are refused, with the params that tell them apart."""
    params = [run.data.params for run in matched]
    differing = sorted(k for k in set().union(*params) if len({p.get(k) for p in params}) > 1)
    lines = [f"  {run.info.run_id} ({run.info.run_name}): "
             + (" ".join(f"{k}={run.data.params.get(k)}" for k in differing) or "the same params")
             for run in matched[:_MAX_LISTED]]
    if len(matched) > _MAX_LISTED:
        lines.append(f"  ... and {len(matched) - _MAX_LISTED} more")
    return (f"{len(matched)} trials of {search} match; add a key that tells them apart "
            f"({', '.join(differing) or 'none differs'}):\n" + "\n".join(lines))


def _none(selector: TrialSelector, trials: list, search: str) -> str:
    """Why no trial matches: a key none of them logged, else the values they logged."""
    logged = sorted(set().union(*(run.data.params for run in trials)))
    if unknown := [key for key, _ in selector.pairs if key not in logged]:
        return (f"no trial of {search} logged param {', '.join(map(repr, unknown))} ({len(trials)} trials; "
                f"their params: {', '.join(logged) or 'none'})")
    values = []
    for key, _ in selector.pairs:
        seen = sorted({run.data.params.get(key, "") for run in trials})
        more = f", ... ({len(seen)} values)" if len(seen) > _MAX_VALUES else ""
        values.append(f"{key} in {', '.join(seen[:_MAX_VALUES])}{more}")
    return f"0 of the {len(trials)} trials of {search} match; they logged {'; '.join(values)}"


def run_of(source: str, tracker: Tracker) -> str:
    """The trial run a run id, trial selector or ``models:/`` URI names (FileNotFoundError for none)."""
    if source.startswith(MODELS_SCHEME):
        try:
            return model_run_id(tracker, source)
        except Exception as err:  # MlflowException: no such model or version
            raise FileNotFoundError(f"no model {source!r} in {tracker.uri}: {err}") from None
    if (selector := parse_selector(source)) is not None:
        return resolve_selector(selector, tracker)
    tracker.run_experiment_id(source)  # FileNotFoundError for an unknown run
    return source


def open_weights(source: str, tracking_uri: str | None) -> SavedWeights:
    """The config and weights ``source`` names (see the module's docstring)."""
    path = Path(source)
    if path.exists():
        return _read(path / CHECKPOINT_FILE if path.is_dir() else path, origin=str(path))
    tracker = Tracker(tracking_uri)
    if source.startswith(MODELS_SCHEME) and "/" not in source.removeprefix(MODELS_SCHEME).strip("/"):
        model_id = source.removeprefix(MODELS_SCHEME).strip("/")
        return _logged_model(tracker, model_id, run_of(source, tracker))
    run_id = run_of(source, tracker)
    if (model_id := trial_model_id(tracker, run_id)) is not None:
        return _logged_model(tracker, model_id, run_id)
    try:
        artifact = tracker.download_artifact(run_id, schema.ARTIFACT_MODEL)
        return _read(artifact, f"run {run_id}'s {schema.ARTIFACT_MODEL}", run_id)
    except FileNotFoundError:
        pass
    checkpoint = tracker.run_tag(run_id, schema.TAG_CHECKPOINT)
    if checkpoint is None:
        raise FileNotFoundError(
            f"run {run_id} in {tracker.uri} holds no model: no logged model (a search with keep_models: none, or "
            f"a trial that failed before its end), no {schema.ARTIFACT_MODEL} and no {schema.TAG_CHECKPOINT} tag")
    return _read(_local_checkpoint(checkpoint), f"run {run_id}'s last Ray checkpoint {checkpoint}", run_id)


def _logged_model(tracker: Tracker, model_id: str, run_id: str) -> SavedWeights:
    import mlflow

    location = tracker.client.get_logged_model(model_id).artifact_location
    path = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{schema.ARTIFACT_MODEL}",
                                               tracking_uri=tracker.uri)
    return _read(Path(path), f"logged model {MODELS_SCHEME}{model_id}", run_id)


def _local_checkpoint(location: str) -> Path:
    """A Ray checkpoint's file, fetched first when it lies on remote storage."""
    if "://" not in location:
        path = Path(location) / CHECKPOINT_FILE
        if not path.exists():
            raise FileNotFoundError(f"the Ray checkpoint {location} is gone (Ray keeps the latest two per trial)")
        return path
    import tempfile

    from ray.tune import Checkpoint

    return Path(Checkpoint(location).to_directory(tempfile.mkdtemp(prefix="samtune-checkpoint-"))) / CHECKPOINT_FILE


def _read(path: Path, origin: str, run_id: str | None = None) -> SavedWeights:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise FileNotFoundError(f"{path} is not a samtune model or checkpoint (no config and model in it)")
    return SavedWeights(dict(state["config"]), state["model"], origin, run_id)
