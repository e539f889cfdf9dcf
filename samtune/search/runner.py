"""Building and running the Tuner: Optuna space or grid, resources, ASHA,
failure retries, storage, resume, and the end-of-search summary.

Before anything is recorded, :mod:`samtune.search.preflight` checks the tracking
store, the data, the batch sizes, the Ray cluster and the resources.  The exit
status: 0 when at least one trial completed, 1 when none did (every trial failed,
diverged or was stopped), 2 for a configuration refused before launch, 130 when
the search was interrupted (finish it with ``--resume``)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samtune import schema
from samtune.config import ConfigError
from samtune.search import preflight
from samtune.search.context import TrackingCredentials, build_context, hyperparameters
from samtune.search.paths import storage_child
from samtune.search.study import StudyStorage, study_storage
from samtune.spec import SearchSpec, asha_max_t, define_by_run, search_description
from samtune.tracking.models import keep_best_models
from samtune.tracking.run_names import tune_trial_name
from samtune.tracking.store import Tracker
from samtune.tracking.uri import resolve_tracking_uri, runs_url, ui_command


def configure_ray_environment(local: bool) -> None:
    """Quiet, offline, and for a local run bound to 127.0.0.1: Ray 2.60 binds a local node to
    the machine's external address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0."""
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

    resources = spec.worker_resources
    if "gpu" not in resources:
        resources["gpu"] = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return resources


def _param_space(spec: SearchSpec) -> dict[str, Any]:
    """Hyperparameters only: the fixed ones and the grid axes (Optuna adds its own)."""
    from ray import tune

    space = hyperparameters(spec.trial)
    for key, values in spec.grid_axes().items():
        space[key] = tune.grid_search(values)
    if spec.mutated_keys:  # a population: Ray samples it (Optuna would not know the changed values)
        space.update({dist.key: tune_domain(dist) for dist in spec.search})
    return space


def _mutation(dist):
    """How PBT perturbs a key: a choice as a list (PBT then moves to a neighbouring
    value; given as a Tune domain it would multiply it by 0.8 or 1.2, leaving the
    choices), a range as its Tune domain (scaled, or resampled from it)."""
    from samtune.spec import Choice

    return list(dist.values) if isinstance(dist, Choice) else tune_domain(dist)


def tune_domain(dist):
    """A search distribution as Ray Tune's sampling domain (what PBT resamples from)."""
    from ray import tune

    from samtune.spec import Choice, IntUniform, LogUniform

    if isinstance(dist, Choice):
        return tune.choice(list(dist.values))
    if isinstance(dist, IntUniform):
        return tune.randint(dist.values[0], dist.values[1] + 1)
    return (tune.loguniform if isinstance(dist, LogUniform) else tune.uniform)(*dist.values)


def _tune_config(spec: SearchSpec, opened: SearchRun | None = None):
    """Tune's config for ``spec``; ``opened`` (the search's runs) gives an Optuna search its
    study storage and an ``until:`` question the run it writes its answer on."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # a grid repeats itself `samples` times; a design's groups count every trial they add
    samples = spec.samples if spec.grid else spec.total_trials
    searcher_numbers = bool(spec.search) and not spec.mutated_keys  # Optuna: a searcher counts from 1
    kwargs: dict[str, Any] = dict(num_samples=samples, max_concurrent_trials=spec.concurrency,
                                  reuse_actors=True, trial_dirname_creator=_trial_dirname,
                                  trial_name_creator=TrialNamer(first=1 if searcher_numbers else 0))
    if spec.mutated_keys:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        kwargs["search_alg"] = BasicVariantGenerator(random_state=spec.seed)
        kwargs["scheduler"] = _population_scheduler(spec)
        return tune.TuneConfig(**kwargs)
    if spec.search:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        metrics, modes = spec.objective.metrics, spec.objective.modes
        sampler = (optuna.samplers.NSGAIISampler(seed=spec.seed) if spec.objective.is_pareto
                   else optuna.samplers.TPESampler(seed=spec.seed))
        storage, study_name = (opened.study if opened else None) or (None, None)
        kwargs["search_alg"] = OptunaSearch(
            space=define_by_run(spec), sampler=sampler, study_name=study_name,
            storage=storage.open() if storage else None,
            metric=list(metrics) if spec.objective.is_pareto else metrics[0],
            mode=list(modes) if spec.objective.is_pareto else modes[0])
        if not spec.design.is_plain:
            from samtune.search.design_search import DesignSearch

            kwargs["search_alg"] = DesignSearch(kwargs["search_alg"], spec)
        if spec.until is not None:
            from samtune.search.until_search import UntilSettled

            kwargs["search_alg"] = UntilSettled(kwargs["search_alg"], spec.until, *(
                (opened.tracker, opened.parent_run_id) if opened else ()))
    if spec.scheduler is not None:
        asha = spec.scheduler
        kwargs["scheduler"] = ASHAScheduler(
            metric=asha.metric, mode=asha.mode, max_t=asha_max_t(spec),
            grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
            time_attr=_TIME_ATTRS.get(asha.time_attr, asha.time_attr))
    return tune.TuneConfig(**kwargs)


# Tune counts epochs as reports ("training_iteration"); the other units are per-epoch metrics
_TIME_ATTRS = {"epoch": "training_iteration"}


def _population_scheduler(spec: SearchSpec):
    """Ray's PBT or PB2 over the mutated keys, with every exploit/explore logged."""
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2

    section = spec.scheduler
    searched = {dist.key: dist for dist in spec.search}
    common = dict(time_attr="training_iteration", metric=section.metric, mode=section.mode,
                  perturbation_interval=section.interval, quantile_fraction=section.quantile,
                  log_config=True, require_attrs=True)
    if spec.scheduler_name == "pb2":
        return PB2(hyperparam_bounds={key: list(searched[key].values) for key in spec.mutated_keys}, **common)
    return PopulationBasedTraining(
        hyperparam_mutations={key: _mutation(searched[key]) for key in spec.mutated_keys},
        resample_probability=section.resample_probability, **common)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


@dataclass(frozen=True)
class TrialNamer:
    """Names each Tune trial by its number in the search, counted from 1: Tune's experiment
    tag starts with it, counted from 0 by a grid's or a population's variant generator
    (``first`` = 0) and from 1 by a searcher's."""

    first: int

    def __call__(self, trial) -> str:
        counter = trial.experiment_tag.split("_", 1)[0]
        return tune_trial_name(int(counter) + 1 - self.first if counter.isdigit() else trial.trial_id)


def _run_config(spec: SearchSpec, storage: str, ray_name: str, callbacks):
    from ray import tune

    population = bool(spec.mutated_keys)
    return tune.RunConfig(
        name=ray_name, storage_path=storage, verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        # PBT restores a donor's latest checkpoint some time after choosing it: keep enough
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.samples + 2 if population else 2),
        stop=finished if population else None)


def progress_unit(spec: SearchSpec) -> str | None:
    """What ASHA counts besides epochs, for the progress lines (None: epochs only)."""
    time_attr = getattr(spec.scheduler, "time_attr", "epoch")
    return None if time_attr == "epoch" else time_attr


def finished(trial_id: str, result: dict[str, Any]) -> bool:
    """A trial's last result carries its status.  Stopping on it keeps PBT from cloning
    into a trial that is done, which would train it again from its donor's state."""
    from samtune.search.trainable import STATUS_KEY

    return STATUS_KEY in result


# -- the search --------------------------------------------------------------------------
def _storage_path(storage: str | None) -> str:
    if storage and "://" in storage:
        return storage
    return str(Path(storage or "ray_results").resolve())


def _init_ray(target: preflight.RayAddress | None) -> bool:
    """Start a local Ray, or attach to ``target`` (bounded); returns whether this call
    did it (False when Ray was already initialized, as in tests)."""
    import ray

    from samtune.logs import adopt_library_loggers

    adopt_library_loggers()  # importing Ray gave its logger a stderr handler of its own
    if ray.is_initialized():
        return False
    if target is not None:
        preflight.connect_ray(target)
    else:
        # "local": a new instance, even when an earlier `ray start` left its address file
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 2**20)
    return True


def _shutdown_ray(started: bool) -> None:
    if started:  # only what run_search started (a driver attached to a cluster just detaches)
        import ray

        ray.shutdown()


def _preflight(spec: SearchSpec, tracking_uri: str | None, address: str | None
               ) -> tuple[bool, dict[str, float]]:
    """Every check that can be made before launch (see :mod:`samtune.search.preflight`);
    starts or attaches to Ray, and shuts it down again if a check after that fails.
    Returns whether it started Ray, and the resources of one trial."""
    uri = resolve_tracking_uri(tracking_uri)
    preflight.check_tracking_uri(uri, given=tracking_uri)
    preflight.check_tracking_server(uri)
    # before Ray is imported (resolving --address auto imports it)
    configure_ray_environment(local=(address or os.environ.get("RAY_ADDRESS") or "local") == "local")
    target = preflight.resolve_ray_address(address)
    preflight.check_trial_data(spec, cluster=target is not None,
                               client=target is not None and target.init.startswith("ray://"))
    if target is not None:
        preflight.check_ray_address(target)
    started = _init_ray(target)
    try:
        resources = _default_resources(spec)
        nodes = preflight.cluster_nodes()
        preflight.check_resources(resources, nodes)
        preflight.check_workers(resources, spec.workers, nodes,
                                key="resources.max_workers" if spec.layout.grows else "resources.workers")
        preflight.check_device(spec, resources, nodes)
    except ConfigError:
        _shutdown_ray(started)
        raise
    return started, resources


@dataclass(frozen=True)
class SearchRun:
    """Where one search is recorded: its MLflow parent run and its Ray experiment."""

    tracker: Tracker
    experiment_id: str
    parent_run_id: str
    ray_name: str
    ray_path: str
    storage_path: str  # Ray's storage: ray_path is its folder ray_name
    study: tuple[StudyStorage, str] | None = None  # an Optuna search's study: its storage and name


def _study(spec: SearchSpec, tracker: Tracker, storage_path: str, ray_name: str) -> tuple[StudyStorage, str] | None:
    """Where an Optuna search's study is kept, and its name (None for a grid or PBT)."""
    if not spec.search or spec.mutated_keys:
        return None
    storage = study_storage(tracker.uri, storage_path)
    return (storage, ray_name) if storage is not None else None


def _start(spec: SearchSpec, tracker: Tracker, experiment_id: str, storage_path: str) -> SearchRun:
    ray_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {schema.TAG_RAY_NAME: ray_name, schema.TAG_STORAGE: storage_path, schema.TAG_NOTE: search_description(spec)}
    if (study := _study(spec, tracker, storage_path, ray_name)) is not None:
        tags |= {schema.TAG_OPTUNA_STORAGE: study[0].location, schema.TAG_OPTUNA_STUDY: study[1]}
    parent_run_id = tracker.start_search_run(
        experiment_id, run_name=ray_name, spec_yaml=spec.source, search_keys=spec.searched_keys, tags=tags)
    return SearchRun(tracker, experiment_id, parent_run_id, ray_name, storage_child(storage_path, ray_name),
                     storage_path, study)


def _reopen(spec: SearchSpec, tracker: Tracker, storage: str | None, parent_run_id: str | None = None) -> SearchRun:
    """The search to finish: ``parent_run_id``'s, else the latest of the experiment; its
    Ray state under ``storage``, else where the search kept it."""
    from ray import tune

    experiment = tracker.client.get_experiment_by_name(spec.name)
    if parent_run_id is not None:
        run = tracker.search_run(parent_run_id)
        if experiment is None or run.info.experiment_id != experiment.experiment_id:
            raise ConfigError(f"--resume {parent_run_id}: that search is in another experiment "
                              f"(id {run.info.experiment_id}), not {spec.name!r}; give its search space")
    elif experiment is not None:
        parent_run_id = tracker.latest_search_run(experiment.experiment_id)
    if parent_run_id is None:
        raise FileNotFoundError(f"no earlier search of {spec.name!r} in {tracker.uri} to resume")
    experiment_id = experiment.experiment_id
    storage_path = _storage_path(storage) if storage else tracker.run_tag(parent_run_id, schema.TAG_STORAGE)
    ray_name = tracker.run_tag(parent_run_id, schema.TAG_RAY_NAME)
    storage_path = storage_path or _storage_path(None)
    path = storage_child(storage_path, ray_name or "")
    if not ray_name or not tune.Tuner.can_restore(path):
        raise FileNotFoundError(f"search run {parent_run_id} has no resumable Ray state at {path}; "
                                f"give the --storage the interrupted search used")
    tracker.reopen_search_run(parent_run_id)
    location, study = (tracker.run_tag(parent_run_id, key) for key in (schema.TAG_OPTUNA_STORAGE,
                                                                         schema.TAG_OPTUNA_STUDY))
    return SearchRun(tracker, experiment_id, parent_run_id, ray_name, path, storage_path,
                     (StudyStorage(location), study) if location and study else None)


def run_search(spec: SearchSpec, *, tracking_uri: str | None = None, address: str | None = None,
               storage: str | None = None, resume: bool | str = False,
               trainable: Callable[..., None] | None = None) -> int:
    """Run (or finish, with ``resume``: True for the latest search, or its parent run id)
    a search; returns the process exit code.

    ``trainable`` is the function trainable, called as ``trainable(hparams, context=...)``;
    by default :func:`~samtune.search.trainable.samtune_trial` (a test wraps it to
    inject faults)."""
    if not resume:
        preflight.check_storage(storage, _storage_path(storage))
    started, resources = _preflight(spec, tracking_uri, address)  # nothing is recorded before it passes
    tracker = Tracker(tracking_uri)
    try:
        if resume:
            opened = _reopen(spec, tracker, storage, resume if isinstance(resume, str) else None)
        else:
            opened = _start(spec, tracker, tracker.ensure_experiment(spec.name), _storage_path(storage))
    except BaseException:
        _shutdown_ray(started)
        raise
    try:
        return _launch(spec, opened, resources, resume=bool(resume), trainable=trainable)
    except BaseException as err:  # the parent run never stays RUNNING
        reason = "interrupted by the user" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
        tracker.fail_search_run(opened.parent_run_id, reason, killed=isinstance(err, KeyboardInterrupt))
        raise
    finally:
        _shutdown_ray(started)


def _launch(spec: SearchSpec, opened: SearchRun, resources: dict[str, float], *, resume: bool,
            trainable: Callable[..., None] | None) -> int:
    """Start the Tuner (or restore it) on the opened search, and finish the search."""
    from ray import tune

    from samtune.search.callbacks import MlflowRunCloser, SearchProgress
    from samtune.search.parallel import samtune_parallel_trial, trial_driver_resources
    from samtune.search.trainable import samtune_trial

    tracker, experiment_id = opened.tracker, opened.experiment_id
    context = build_context(spec, tracking_uri=tracker.uri, experiment_id=experiment_id,
                            parent_run_id=opened.parent_run_id, resources=resources, ray_path=opened.ray_path)
    tracker.log_text(opened.parent_run_id, context.to_json(), schema.ARTIFACT_CONTEXT)
    credentials = TrackingCredentials.from_environment()
    extra = {"credentials": credentials} if credentials.variables else {}
    if spec.layout.data_parallel:  # the trial only drives its Ray Train workers, which reserve the resources
        trainable, resources = trainable or samtune_parallel_trial, trial_driver_resources()
    bound = tune.with_resources(tune.with_parameters(trainable or samtune_trial, context=context, **extra),
                                resources)
    print(f"search {spec.name!r}: {spec.total_trials} trials, {spec.concurrency} at a time; "
          f"MLflow parent run {opened.parent_run_id}; Ray results in {opened.ray_path}", flush=True)
    if resume:
        tuner = tune.Tuner.restore(opened.ray_path, trainable=bound, resume_errored=True)
    else:
        callbacks = [MlflowRunCloser(tracker, experiment_id, opened.parent_run_id),
                     SearchProgress(spec.objective.metrics[0], spec.objective.modes[0], spec.total_trials,
                                    unit=progress_unit(spec))]
        tuner = tune.Tuner(bound, param_space=_param_space(spec), tune_config=_tune_config(spec, opened),
                           run_config=_run_config(spec, opened.storage_path, opened.ray_name,
                                                  callbacks))
    return _finish(spec, tuner.fit(), opened)


@dataclass(frozen=True)
class TrialOutcome:
    """How one trial of a finished ``tuner.fit()`` ended, read through Ray's public
    ResultGrid API: ``completed``, ``diverged`` or ``failed`` (samtune's statuses; a
    trial that raised is ``failed``), ``stopped`` (reported, then stopped by ASHA or an
    interrupt) or ``not run``.  ``error`` is the exception's last line, if it raised."""

    trial: str
    status: str
    error: str | None = None


def trial_outcomes(results) -> list[TrialOutcome]:
    from samtune.search.trainable import STATUS_KEY

    outcomes = []
    for i in range(len(results)):
        result = results[i]
        metrics = result.metrics or {}
        trial = str(metrics.get("trial_id") or Path(str(result.path)).name)
        if result.error is not None:
            outcomes.append(TrialOutcome(trial, schema.FAILED, preflight.last_line(str(result.error))))
        elif metrics.get(STATUS_KEY) in schema.TRIAL_STATUSES:
            outcomes.append(TrialOutcome(trial, metrics[STATUS_KEY]))
        else:
            outcomes.append(TrialOutcome(trial, "stopped" if metrics else "not run"))
    return outcomes


def exit_status(outcomes: list[TrialOutcome], interrupted: bool) -> int:
    """130 if interrupted; else 0 when at least one trial completed, 1 when none did."""
    if interrupted:
        return 130
    return 0 if any(o.status == schema.COMPLETED for o in outcomes) else 1


def _counts(outcomes: list[TrialOutcome]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items()) or "no trial"


def _first_error(outcomes: list[TrialOutcome], opened: SearchRun) -> tuple[str, str] | None:
    """(trial, short error) of the first trial that did not complete: the exception's
    last line, else the trial run's ``samtune.error`` tag in MLflow."""
    for outcome in outcomes:
        if outcome.status in (schema.FAILED, schema.DIVERGED):
            if outcome.error:
                return outcome.trial, outcome.error
            run_id = opened.tracker.find_trial_run(opened.experiment_id, outcome.trial, opened.parent_run_id)
            error = opened.tracker.run_tag(run_id, schema.TAG_ERROR) if run_id else None
            return outcome.trial, preflight.last_line(error or f"status {outcome.status}, no error recorded")
    return None


def _finish(spec: SearchSpec, results, opened: SearchRun) -> int:
    finished = results.num_terminated + results.num_errors
    settled = opened.tracker.run_tag(opened.parent_run_id, schema.TAG_SETTLED) if spec.until else None
    interrupted = finished < (len(results) if settled else spec.total_trials)
    outcomes = trial_outcomes(results)
    status = exit_status(outcomes, interrupted)
    tracker = opened.tracker
    tracker.close_running_children(opened.experiment_id, opened.parent_run_id, schema.FAILED,
                                   error="search interrupted; resume with samtune search --resume")
    metric, mode = spec.objective.metrics[0], spec.objective.modes[0]
    best = _best(results, metric, mode)
    completed = sum(o.status == schema.COMPLETED for o in outcomes)
    summary = {"trials_finished": finished, "trials_errored": results.num_errors,
               "trials_completed": completed}
    if best is not None:
        summary[f"best_{metric}"] = best.metrics[metric]
    if isinstance(spec.keep_models, int) and not interrupted:
        summary["models_deleted"] = keep_best_models(tracker, opened.experiment_id, opened.parent_run_id,
                                                     metric=metric, mode=mode, keep=spec.keep_models)
    tracker.end_search_run(opened.parent_run_id, metrics=summary,
                           state={130: "KILLED", 1: "FAILED"}.get(status, "FINISHED"))
    _print_summary(spec, best, metric, opened, finished, _counts(outcomes))
    if settled:
        print(f"the search stopped before its cap of {spec.total_trials} trials: {settled}")
    if status == 130:
        print(f"search interrupted after {finished}/{spec.total_trials} trials; finish it by running "
              f"the same command with --resume", file=sys.stderr)
    elif status == 1:
        first = _first_error(outcomes, opened)
        print(f"search {spec.name!r}: no trial completed ({_counts(outcomes)})", file=sys.stderr)
        if first is not None:
            print(f"first error (trial {first[0]}): {first[1]}", file=sys.stderr)
        print(f"all errors: error.txt in each failed trial's folder under {opened.ray_path}, and the "
              f"{schema.TAG_ERROR} tag of each failed trial run in MLflow experiment {spec.name!r} "
              f"({tracker.uri})", file=sys.stderr)
    elif (first := _first_error(outcomes, opened)) is not None:
        print(f"some trials did not complete; first error (trial {first[0]}): {first[1]}")
    return status


def _best(results, metric: str, mode: str):
    try:
        best = results.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
    except (RuntimeError, ValueError):
        return None
    return best if best is not None and best.metrics and metric in best.metrics else None


def _print_summary(spec: SearchSpec, best, metric: str, opened: SearchRun, finished: int,
                   counts: str) -> None:
    from samtune.display import values_text
    from samtune.logs import current_log_file

    uri = opened.tracker.uri
    print(f"\nsearch {spec.name!r}: {finished}/{spec.total_trials} trials finished ({counts})")
    if best is not None:
        searched = {k: best.config.get(k) for k in spec.searched_keys if k in best.config}
        print(f"best trial: {metric} = {best.metrics[metric]:.4f}  {values_text(searched)}")
    print(f"MLflow: {uri}, experiment {spec.name!r} (id {opened.experiment_id}), "
          f"parent run {opened.parent_run_id}")
    print(f"Ray results and checkpoints: {opened.ray_path}")
    print(f"open the UI:  {ui_command(uri)}")
    print(f"then browse:  {runs_url(uri, opened.experiment_id)}")
    print(f"report:       samtune report --experiment {spec.name} --search {opened.parent_run_id}"
          + (f" --tracking-uri {uri}" if uri.startswith("http") else ""))
    if (log := current_log_file()) is not None and log.exists():  # a file is made at its first record
        print(f"log:          {log}")
