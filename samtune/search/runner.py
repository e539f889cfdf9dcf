"""Building and running the Tuner: Optuna space or grid, resources, ASHA,
failure retries, storage, resume, and the end-of-search summary."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from samtune import tracking
from samtune.spec import SearchSpec, bundle_table, define_by_run, grid_size

META_KEY = "_samtune"  # the trial config entry that carries tracking and fault settings
FAULT_ENV = "SAMTUNE_FAULT_AT_EPOCH"  # fault injection for recovery tests: fail once after epoch N


def configure_ray_environment(local: bool) -> None:
    """Quiet, offline, and for a local run bound to 127.0.0.1 (stack.md, Ray)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # samtune prints its own progress lines
    if local:
        # Without this Ray binds its node to the machine's external address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


# -- building the Tuner -------------------------------------------------------------
def _default_resources(spec: SearchSpec) -> dict[str, float]:
    import ray

    resources = dict(spec.resources)
    if "gpu" not in resources:
        resources["gpu"] = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return resources


def _param_space(spec: SearchSpec, meta: dict[str, Any], resources: dict[str, float]) -> dict[str, Any]:
    from ray import tune

    space = dict(spec.trial)
    _absolute_data_paths(space)
    if "device" not in space:
        space["device"] = "cuda" if resources.get("gpu", 0) > 0 else "cpu"
    if "num_threads" not in space:
        space["num_threads"] = max(1, int(resources["cpu"]))
    for key, values in spec.grid.items():
        space[key] = tune.grid_search([getattr(v, "name", v) for v in values])
    space[META_KEY] = meta
    return space


def _absolute_data_paths(space: dict[str, Any]) -> None:
    """Ray runs each trial in its own directory: resolve data paths in the driver."""
    from samtune.data import data_root

    space["data_dir"] = str(data_root(space.get("data_dir")).resolve())
    dataset = str(space.get("dataset", ""))
    if dataset.startswith("imagefolder:"):
        space["dataset"] = "imagefolder:" + str(Path(dataset.removeprefix("imagefolder:")).resolve())


def _tune_config(spec: SearchSpec):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    kwargs: dict[str, Any] = dict(num_samples=spec.samples, max_concurrent_trials=spec.concurrency,
                                  reuse_actors=True,
                                  trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}")
    if spec.search:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        metrics, modes = spec.objective.metrics, spec.objective.modes
        sampler = (optuna.samplers.NSGAIISampler(seed=spec.seed) if spec.objective.is_pareto
                   else optuna.samplers.TPESampler(seed=spec.seed))
        kwargs["search_alg"] = OptunaSearch(
            space=define_by_run(spec), sampler=sampler,
            metric=list(metrics) if spec.objective.is_pareto else metrics[0],
            mode=list(modes) if spec.objective.is_pareto else modes[0])
    if spec.scheduler:
        asha = spec.scheduler["asha"]
        kwargs["scheduler"] = ASHAScheduler(
            metric=asha["metric"], mode=asha["mode"], max_t=int(spec.trial.get("epochs", 12)),
            grace_period=asha["grace_period"], reduction_factor=asha["reduction_factor"],
            time_attr="training_iteration")
    return tune.TuneConfig(**kwargs)


def _run_config(spec: SearchSpec, storage: str, ray_name: str, callbacks):
    from ray import tune

    return tune.RunConfig(
        name=ray_name, storage_path=storage, verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))


# -- the search --------------------------------------------------------------------------
def _storage_path(storage: str | None) -> str:
    if storage and "://" in storage:
        return storage
    return str(Path(storage or "ray_results").resolve())


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)


def _objective_keys(spec: SearchSpec) -> list[str]:
    """Objective metrics only known at the end (sharpness): reported as NaN until then,
    because Tune requires every searched metric in every result."""
    return [m for m in spec.objective.metrics if m.startswith(("sharpness_", "norm_"))]


def _required_keys(spec: SearchSpec) -> list[str]:
    keys = list(spec.objective.metrics)
    if spec.scheduler:
        keys.append(spec.scheduler["asha"]["metric"])
    return keys


def run_search(spec: SearchSpec, *, tracking_uri: str | None = None, address: str | None = None,
               storage: str | None = None, resume: bool = False) -> int:
    """Run (or finish, with ``resume``) a search; returns the process exit code."""
    configure_ray_environment(local=address is None)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment_id = tracking.ensure_experiment(uri, spec.name)
    storage_path = _storage_path(storage)
    from ray import tune

    if resume:
        parent_run_id, ray_name = _find_resumable(uri, experiment_id, storage_path, spec)
        tracking.reopen_search_run(uri, parent_run_id)
    else:
        ray_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        parent_run_id = tracking.start_search_run(
            uri, experiment_id, run_name=ray_name, spec_yaml=spec.source,
            search_keys=spec.searched_keys,
            tags={"samtune.ray_name": ray_name, "samtune.storage": storage_path})
    _init_ray(address)
    total = grid_size(spec) * spec.samples if spec.grid else spec.samples
    from samtune.search.callbacks import MlflowRunCloser, SearchProgress
    from samtune.search.trainable import samtune_trial

    callbacks = [MlflowRunCloser(uri, experiment_id, parent_run_id),
                 SearchProgress(spec.objective.metrics[0], spec.objective.modes[0], total)]
    resources = _default_resources(spec)
    trainable = tune.with_resources(samtune_trial, resources)
    path = f"{storage_path.rstrip('/')}/{ray_name}"
    print(f"search {spec.name!r}: {total} trials, {spec.concurrency} at a time; "
          f"MLflow parent run {parent_run_id}; Ray results in {path}", flush=True)
    if resume:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        meta = {"uri": uri, "experiment_id": experiment_id, "parent_run_id": parent_run_id,
                "objective_keys": _objective_keys(spec), "report_keys": _required_keys(spec),
                "bundles": bundle_table(spec), "fault_at_epoch": _fault_epoch(),
                "fault_dir": storage_path}
        tuner = tune.Tuner(trainable, param_space=_param_space(spec, meta, resources),
                           tune_config=_tune_config(spec),
                           run_config=_run_config(spec, storage_path, ray_name, callbacks))
    results = tuner.fit()
    return _finish(spec, results, uri, experiment_id, parent_run_id, total, path)


def _fault_epoch() -> int | None:
    value = os.environ.get(FAULT_ENV)
    return int(value) if value else None


def _find_resumable(uri: str, experiment_id: str, storage_path: str, spec: SearchSpec) -> tuple[str, str]:
    from ray import tune

    parent_run_id = tracking.latest_search_run(uri, experiment_id)
    if parent_run_id is None:
        raise FileNotFoundError(f"no earlier search of {spec.name!r} in {uri} to resume")
    ray_name = tracking.run_tag(uri, parent_run_id, "samtune.ray_name")
    path = f"{storage_path.rstrip('/')}/{ray_name}"
    if not ray_name or not tune.Tuner.can_restore(path):
        raise FileNotFoundError(f"search run {parent_run_id} has no resumable Ray state at {path}; "
                                f"give the same --storage as the interrupted search")
    return parent_run_id, ray_name


def _finish(spec, results, uri, experiment_id, parent_run_id, total, path) -> int:
    statuses = [t.status for t in results._experiment_analysis.trials]
    finished = sum(s in ("TERMINATED", "ERROR") for s in statuses)
    interrupted = finished < total
    tracking.close_running_children(uri, experiment_id, parent_run_id, "failed",
                                    error="search interrupted; resume with samtune search --resume")
    metric, mode = spec.objective.metrics[0], spec.objective.modes[0]
    best = _best(results, metric, mode)
    summary = {"trials_finished": finished, "trials_errored": statuses.count("ERROR")}
    if best is not None:
        summary[f"best_{metric}"] = best.metrics[metric]
    tracking.end_search_run(uri, parent_run_id, state="KILLED" if interrupted else "FINISHED",
                            metrics=summary)
    _print_summary(spec, best, metric, uri, experiment_id, parent_run_id, path, finished, total)
    if interrupted:
        print(f"search interrupted after {finished}/{total} trials; finish it by running "
              f"the same command with --resume", file=sys.stderr)
        return 130
    return 0


def _best(results, metric: str, mode: str):
    try:
        best = results.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
    except (RuntimeError, ValueError):
        return None
    return best if best is not None and best.metrics and metric in best.metrics else None


def _print_summary(spec, best, metric, uri, experiment_id, parent_run_id, path, finished, total):
    print(f"\nsearch {spec.name!r}: {finished}/{total} trials finished")
    if best is not None:
        searched = {k: best.config.get(k) for k in spec.searched_keys if k in best.config}
        print(f"best trial: {metric} = {best.metrics[metric]:.4f}  {searched}")
    print(f"MLflow: {uri}, experiment {spec.name!r} (id {experiment_id}), parent run {parent_run_id}")
    print(f"Ray results and checkpoints: {path}")
    print(f"open the UI:  {tracking.ui_command(uri)}")
    print(f"then browse:  {tracking.runs_url('http://127.0.0.1:5000', experiment_id)}")
    print(f"report:       samtune report --experiment {spec.name} --search {parent_run_id}"
          + (f" --tracking-uri {uri}" if uri.startswith("http") else ""))
