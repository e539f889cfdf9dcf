"""MLflow → pandas: one row per samtune trial, with the reason each excluded row
was dropped.

A trial table holds, per trial: bookkeeping (``run_id``, ``trial_id``,
``status``, ``error``…), every parameter (strings converted to numbers where
every value parses), every final metric (``final_*``) and every measure
(``sharpness_*``, ``norm_*``). ``excluded_reason`` is ``""`` for usable trials.
A measure computed under several definitions across the trials (its
``sharpness.<name>.*`` params differ) is split into one column per definition
(:mod:`analysis.definitions`), so no column ever pools two quantities.  Trials that
did not fit their training set, or were trained under another training criterion
than the one compared, are excluded too (:mod:`analysis.criterion`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import schema
from analysis.criterion import (
    DEFAULT_MAX_TRAIN_ERROR,
    Criterion,
    TrainingFit,
    apply_training_fit,
    check_max_train_error,
)
from analysis.definitions import MeasureDefinitions, split_measures
from analysis.errors import UnknownExperiment

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

_MISSING_PARAM = {"", "None", "none", "null", "nan", "NaN"}
_STATUS_REASONS = {
    schema.DIVERGED: "diverged (non-finite loss)",
    schema.FAILED: "failed",
    schema.PRUNED: "pruned (stopped early by the scheduler)",
    schema.RUNNING: "still running (no final metrics yet)",
}
# MLflow end state → samtune status, for runs without a samtune.status tag
_RUN_STATE_STATUS = {"FINISHED": schema.COMPLETED, "FAILED": schema.FAILED, "KILLED": schema.FAILED}


def filter_literal(value: str) -> str:
    """``value`` as a string literal of an MLflow filter.

    MLflow's filter grammar has no escape inside a quoted string: it strips the
    enclosing quotes, single or double.  A value with a single quote is therefore
    double-quoted; one with both kinds of quote cannot be written and is refused.
    """
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} cannot be used in an MLflow filter string: it holds both ' and \"")


def tag_filter(tag: str, value: str) -> str:
    """``tags.`<tag>` = <value>``, the value quoted by :func:`filter_literal`."""
    if "`" in tag:
        raise ValueError(f"tag name {tag!r} cannot be used in an MLflow filter string: it holds a backtick")
    return f"tags.`{tag}` = {filter_literal(value)}"


@dataclass(frozen=True)
class TrialTable:
    """Every trial found, usable or not, and where it came from."""

    experiment_id: str
    experiment_name: str
    tracking_uri: str
    search_run_id: str | None
    trials: pd.DataFrame
    params: tuple[str, ...]
    declared_search_keys: tuple[str, ...]
    # every sharpness measure's definitions; a measure with several is split into columns
    measure_definitions: tuple[MeasureDefinitions, ...] = ()
    # the training criterion compared at, and which trials fit their training set
    training_fit: TrainingFit = TrainingFit(Criterion(), DEFAULT_MAX_TRAIN_ERROR)

    @property
    def split_measures(self) -> tuple[MeasureDefinitions, ...]:
        return tuple(d for d in self.measure_definitions if d.split)

    @property
    def usable(self) -> pd.DataFrame:
        return self.trials[self.trials[schema.EXCLUDED] == ""].reset_index(drop=True)

    @property
    def excluded(self) -> pd.DataFrame:
        cols = [schema.RUN_ID, schema.TRIAL_ID, schema.STATUS, schema.EXCLUDED]
        return self.trials.loc[self.trials[schema.EXCLUDED] != "", cols].reset_index(drop=True)

    def exclusion_counts(self) -> dict[str, int]:
        """Excluded trials per status (``completed`` ones lacked metrics, did not fit
        their training set or were trained under another criterion)."""
        return self.excluded[schema.STATUS].value_counts().sort_index().to_dict()

    def exclusion_kinds(self) -> dict[str, int]:
        """Excluded trials per kind: the status of those that did not complete, then
        ``no_metrics``, ``not_fit`` and ``other_criterion`` (schema.EXCLUSION_KINDS)."""
        kinds = self.trials.loc[self.trials[schema.EXCLUDED] != "", schema.EXCLUDED_KIND]
        counts = kinds.value_counts().to_dict()
        order = sorted(k for k in counts if k not in schema.EXCLUSION_KINDS) + [
            k for k in schema.EXCLUSION_KINDS if k in counts]
        return {k: int(counts[k]) for k in order}


def mlflow_client(tracking_uri: str | None) -> MlflowClient:
    """A client for ``tracking_uri`` (MLflow's default when None), with telemetry off
    unless the user asked for it."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def load_trials(experiment: str, *, tracking_uri: str | None = None, search_run_id: str | None = None,
                max_train_error: float | None = DEFAULT_MAX_TRAIN_ERROR) -> TrialTable:
    """Trials of ``experiment`` (only the children of ``search_run_id`` if given).

    ``max_train_error`` is the highest ``final_train_error`` of a trial trained without
    a criterion that still counts as having fit its training set (None: no threshold);
    see :mod:`analysis.criterion`.
    """
    max_train_error = check_max_train_error(max_train_error)
    client = mlflow_client(tracking_uri)
    found = find_experiment(client, experiment)
    if search_run_id is not None:
        check_search_run(client, search_run_id, found.experiment_id, experiment)
    runs = search_trial_runs(client, found.experiment_id, search_run_id)
    trials, params = runs_to_frame(runs)
    trials, definitions = split_measures(trials, params)
    reasons = exclusion_reasons(trials, params)
    kinds = exclusion_kinds(trials, reasons)
    reasons, kinds, training_fit = apply_training_fit(trials, reasons, kinds, max_train_error)
    trials[schema.EXCLUDED], trials[schema.EXCLUDED_KIND] = reasons, kinds
    declared = declared_search_keys(client, trials[schema.PARENT].dropna().unique())
    return TrialTable(found.experiment_id, experiment, client.tracking_uri, search_run_id,
                      trials, tuple(params), declared, definitions, training_fit)


def find_experiment(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        known = sorted(e.name for e in client.search_experiments(max_results=200))
        shown = ", ".join(repr(k) for k in known[:20]) or "none"
        raise UnknownExperiment(
            f"experiment = {name!r} not found in tracking URI {client.tracking_uri!r}; "
            f"experiments there: {shown}")
    return experiment


def check_search_run(client: MlflowClient, run_id: str, experiment_id: str,
                     experiment: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UnknownExperiment(
            f"search run id = {run_id!r} not found in tracking URI {client.tracking_uri!r}") from None
    kind = run.data.tags.get(schema.TAG_KIND)
    if run.info.experiment_id != experiment_id or kind not in (None, schema.KIND_SEARCH):
        raise UnknownExperiment(
            f"search run id = {run_id!r} is not a search run of experiment {experiment!r} "
            f"(its experiment id is {run.info.experiment_id}, its {schema.TAG_KIND} is {kind!r})")


def search_trial_runs(client: MlflowClient, experiment_id: str,
                      search_run_id: str | None) -> list[Run]:
    """All active trial runs, following MLflow's pagination."""
    query = tag_filter(schema.TAG_KIND, schema.KIND_TRIAL)
    if search_run_id is not None:
        query += f" and {tag_filter(schema.TAG_PARENT, search_run_id)}"
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def runs_to_frame(runs: Iterable[Run]) -> tuple[pd.DataFrame, list[str]]:
    """One row per run; returns the table and its parameter columns."""
    records, params = [], {}
    for run in runs:
        tags = run.data.tags
        record = {
            schema.RUN_ID: run.info.run_id,
            schema.TRIAL_ID: tags.get(schema.TAG_TRIAL_ID, run.info.run_id),
            schema.RUN_NAME: run.info.run_name,
            schema.STATUS: (tags.get(schema.TAG_STATUS)
                            or _RUN_STATE_STATUS.get(run.info.status, schema.RUNNING)),
            schema.ERROR: tags.get(schema.TAG_ERROR, ""),
            schema.PARENT: tags.get(schema.TAG_PARENT),
        }
        params.update(dict.fromkeys(run.data.params))
        record.update(run.data.params)
        record.update({k: v for k, v in run.data.metrics.items() if _is_final_metric(k)})
        records.append(record)
    param_names = [p for p in sorted(params) if p not in schema.BOOKKEEPING]
    book = [schema.RUN_ID, schema.TRIAL_ID, schema.RUN_NAME, schema.STATUS, schema.ERROR, schema.PARENT]
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=book)
    for name in param_names:
        frame[name] = coerce_param(frame[name])
    return frame, param_names


def _is_final_metric(key: str) -> bool:
    return (key.startswith(schema.FINAL_PREFIX) or key.startswith(schema.MEASURE_PREFIXES)
            or key in schema.CRITERION_METRICS)


def coerce_param(values: pd.Series) -> pd.Series:
    """MLflow params are strings: numeric when every present value parses as a number,
    otherwise strings; "", "None" and "nan" are missing."""
    text = values.astype(object).where(values.notna(), None)
    text = text.map(lambda v: None if v is None or str(v).strip() in _MISSING_PARAM else str(v))
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().sum() == text.notna().sum() and text.notna().any():
        return numbers.astype(float)
    return text


def exclusion_reasons(trials: pd.DataFrame, params: Iterable[str] = ()) -> pd.Series:
    """Why each trial cannot enter the fits ("" when it can); ``params`` are never
    taken for measures, whatever their names."""
    targets = [t for t in schema.TARGETS if t in trials]
    skip = set(params)
    measures = [c for c in trials.columns if schema.is_measure_column(c) and c not in skip]

    def finite_any(row: pd.Series, cols: Sequence[str]) -> bool:
        return bool(np.isfinite(pd.to_numeric(row[cols], errors="coerce").astype(float)).any())

    def reason(row: pd.Series) -> str:
        status = row[schema.STATUS]
        if status != schema.COMPLETED:
            text = _STATUS_REASONS.get(status, f"status {status!r}")
            return f"{text}: {row[schema.ERROR]}" if row[schema.ERROR] else text
        if not targets or not finite_any(row, targets):
            return f"completed but no finite {' / '.join(schema.TARGETS)}"
        if not measures or not finite_any(row, measures):
            return "completed but no finite sharpness_* / norm_* metric"
        return ""

    if trials.empty:
        return pd.Series([], dtype=object)
    return trials.apply(reason, axis=1).astype(object)


def exclusion_kinds(trials: pd.DataFrame, reasons: pd.Series) -> pd.Series:
    """The kind of each exclusion in ``reasons``: the status of a trial that did not
    complete, ``no_metrics`` for a completed one ("" when not excluded)."""
    if trials.empty:
        return pd.Series([], dtype=object)
    kinds = trials[schema.STATUS].where(trials[schema.STATUS] != schema.COMPLETED, schema.NO_METRICS)
    return kinds.where(reasons != "", "").astype(object)


def declared_search_keys(client: MlflowClient, parent_ids: Iterable[str]) -> tuple[str, ...]:
    """Keys listed in the parents' ``samtune.search_keys`` tag or param (may be empty)."""
    keys: dict[str, None] = {}
    for parent in parent_ids:
        try:
            data = client.get_run(parent).data
        except Exception:  # a parent deleted since: its children still count
            continue
        listed = data.tags.get(schema.TAG_SEARCH_KEYS) or data.params.get(schema.TAG_SEARCH_KEYS) or ""
        keys.update(dict.fromkeys(k.strip() for k in listed.split(",") if k.strip()))
    return tuple(keys)


def varying_params(trials: pd.DataFrame, params: Iterable[str]) -> list[str]:
    """Parameters with more than one distinct value (missing counts as a value)."""
    return [p for p in params if p in trials and trials[p].nunique(dropna=False) > 1]


def searched_axes(trials: pd.DataFrame, params: Iterable[str],
                  declared: Sequence[str] = ()) -> list[str]:
    """Hyperparameter axes: parameters that vary across ``trials`` (declared search keys
    first), without the seed, run settings and what defines the measures."""
    varying = [p for p in varying_params(trials, params) if schema.is_axis_candidate(p)]
    ordered = [k for k in declared if k in varying] + [p for p in varying if p not in declared]
    return ordered


def grouping_keys(trials: pd.DataFrame, params: Iterable[str]) -> list[str]:
    """Everything that must be equal for two trials to "differ in one axis only":
    every varying parameter, the seed included; run settings and what defines the
    measures (``sharpness.*`` params, ``sharpness_batch``…) excluded."""
    return [p for p in varying_params(trials, params) if schema.is_grouping_candidate(p)]


def load_histories(tracking_uri: str | None, run_ids: Sequence[str],
                   keys: Sequence[str] = schema.CURVE_METRICS, *, max_workers: int = 4) -> pd.DataFrame:
    """Per-epoch metric histories in long form: ``run_id, metric, step, value``.

    One ``get_metric_history`` call per (run, metric), issued from a small thread pool
    so a remote tracking server is not queried one request at a time. A step logged
    twice (a resumed trial) keeps its latest value.
    """
    client = mlflow_client(tracking_uri)
    jobs = [(run_id, key) for run_id in run_ids for key in keys]

    def fetch(job: tuple[str, str]) -> list[tuple]:
        run_id, key = job
        return [(run_id, key, m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        rows = [row for chunk in pool.map(fetch, jobs) for row in chunk]
    frame = pd.DataFrame(rows, columns=[schema.RUN_ID, "metric", "step", "timestamp", "value"])
    frame = frame.sort_values("timestamp").drop_duplicates([schema.RUN_ID, "metric", "step"], keep="last")
    frame = frame.drop(columns="timestamp").sort_values([schema.RUN_ID, "metric", "step"])
    return frame.reset_index(drop=True)
