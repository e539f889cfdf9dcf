"""What a trial needs besides its hyperparameters, as one frozen object.

The Tuner's param space holds hyperparameters only (what Optuna samples, what Ray
records per trial); the tracking store, the parent run, the bundle tables and the
run settings travel in a :class:`TrialContext` given to the trainable with
``tune.with_parameters``.  A resumed search rebuilds the same context from its spec
and its parent run, so nothing of it has to survive in Ray's experiment state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from samtune import schema
from samtune.data.catalogue import IMAGEFOLDER_PREFIX, data_root, image_folder_path, is_image_folder
from samtune.search.paths import storage_child
from samtune.spec import SearchSpec, WorkerLayout, bundle_table


@dataclass(frozen=True)
class TrialContext:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    # fixed run settings (device, threads, absolute data paths): not hyperparameters
    run_settings: Mapping[str, Any] = field(default_factory=dict)
    # grid axis -> bundle name -> the trial parameters it sets
    bundles: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    # objective metrics only known at the end (sharpness): NaN in earlier results,
    # because Tune wants every searched metric in every result
    end_of_trial_keys: tuple[str, ...] = ()
    # every metric the searcher or scheduler reads: NaN in a trial that cannot run
    required_keys: tuple[str, ...] = ()
    # (budget, unit) of an equal-budget grid: every trial gets it (samtune.budgets)
    equal_budget: tuple[int, str] | None = None
    # a data-parallel trial: its Ray Train workers stage by stage, what each reserves, and
    # where Ray Train keeps their runs (a retried or resumed trial continues from its checkpoint)
    layout: WorkerLayout = field(default_factory=WorkerLayout)
    # population-based training: trials record their lineage and schedule
    population: bool = False
    worker_resources: Mapping[str, float] = field(default_factory=dict)
    parallel_storage: str = ""
    # whether trials log their final model (keep_models: none turns it off)
    log_models: bool = True
    # the keys the search varies: they name each trial's run
    searched_keys: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


PARALLEL_FOLDER = "data_parallel"  # in the search's Ray folder: the trials' Ray Train runs

CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclass(frozen=True)
class TrackingCredentials:
    """The tracking server's credentials of the driver's environment, for trial
    workers on nodes started without them.  Passed beside the context (never in it:
    the context is logged) and never printed."""

    variables: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environment(cls) -> TrackingCredentials:
        import os

        return cls({key: os.environ[key] for key in CREDENTIAL_VARIABLES if os.environ.get(key)})

    def apply(self) -> None:
        import os

        os.environ.update(self.variables)

    def __repr__(self) -> str:
        return f"TrackingCredentials({', '.join(self.variables) or 'none'})"


def build_context(spec: SearchSpec, *, tracking_uri: str, experiment_id: str, parent_run_id: str,
                  resources: Mapping[str, float], ray_path: str = "") -> TrialContext:
    """The context every trial of ``spec`` runs with, from the spec and the resources
    one trial gets (which choose the default device and thread count)."""
    end_of_trial = tuple(m for m in spec.objective.metrics if m.startswith(schema.MEASURE_PREFIXES))
    required = list(spec.objective.metrics)
    if spec.scheduler is not None:
        required.append(spec.scheduler.metric)
    return TrialContext(
        tracking_uri=tracking_uri, experiment_id=experiment_id, parent_run_id=parent_run_id,
        run_settings=run_settings(spec.trial, resources), bundles=bundle_table(spec),
        end_of_trial_keys=end_of_trial, required_keys=tuple(dict.fromkeys(required)),
        equal_budget=spec.budget, layout=spec.layout, population=bool(spec.mutated_keys),
        worker_resources=dict(resources),
        parallel_storage=storage_child(ray_path, PARALLEL_FOLDER) if ray_path else "",
        log_models=spec.keep_models != schema.KEEP_NO_MODELS, searched_keys=spec.searched_keys)


def run_settings(trial: Mapping[str, Any], resources: Mapping[str, float]) -> dict[str, Any]:
    """The fixed run settings of a search's trials, with what the resources imply
    filled in.  Ray runs each trial in its own directory, so data paths are made
    absolute here, in the driver."""
    settings = {key: trial[key] for key in schema.RUN_SETTINGS if key in trial}
    settings["data_dir"] = str(data_root(settings.get("data_dir")).resolve())
    settings.setdefault("device", "cuda" if resources.get("gpu", 0) > 0 else "cpu")
    settings.setdefault("num_threads", max(1, int(resources["cpu"])))
    return settings


def hyperparameters(trial: Mapping[str, Any]) -> dict[str, Any]:
    """The fixed hyperparameters of a search's trials, with an image-folder data
    set's path made absolute (it is part of the data set's name)."""
    values = {key: value for key, value in trial.items() if key not in schema.RUN_SETTINGS}
    dataset = str(values.get("dataset", ""))
    if is_image_folder(dataset):
        values["dataset"] = f"{IMAGEFOLDER_PREFIX}{image_folder_path(dataset).resolve()}"
    return values
