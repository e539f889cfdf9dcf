"""The search itself, over the comparable trials: which searched keys mattered
(Optuna's PED-ANOVA and fANOVA), every trial over the searched keys (parallel
coordinates), and the Pareto front of a two-metric objective.

What was searched and towards what comes from the search run: its tag
``samtune.search_keys`` (the keys) and its ``search.yaml`` artifact (each key's
distribution, the objective's metrics and modes).  The trials analysed are the
report's usable ones (already filtered for status, definitions and training
criterion), never refiltered here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis import interactive, schema, search_figures
from analysis.load import mlflow_client
from analysis.render import FigureRef, Section
from analysis.search_spec import CHOICE, DEFAULT_OBJECTIVE, GRID, LOG, UNKNOWN, Objective, UnreadableSpec, read_spec

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study

MIN_IMPORTANCE_TRIALS = 8
# Optuna's advice for PED-ANOVA: at least this many trials above target_quantile
PED_ANOVA_TOP_TRIALS = 5
# an unspecified numeric key spanning more than this ratio is taken as log-scaled
LOG_RATIO = 100.0
PED_ANOVA, FANOVA = "PED-ANOVA", "fANOVA"


@dataclass(frozen=True)
class SearchSpace:
    """What the search runs say was searched: keys, each key's distribution kind in the
    spec (uniform, loguniform, int, choice, or ``grid``), and the objective."""

    keys: tuple[str, ...]
    kinds: Mapping[str, str]
    objective: Objective
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchView:
    """The report's search sections, the figures they show and their CSV tables."""

    sections: tuple[Section, ...]
    figures: tuple[FigureRef, ...] = ()
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    methods: tuple[str, ...] = ()


# ---------------------------------------------------------------- the search spec

def read_search_space(tracking_uri: str | None, parents: pd.Series, declared: Sequence[str]) -> SearchSpace:
    """The search space of the trials whose parent runs are ``parents`` (one entry per
    trial): kinds merged over the parents, the objective of the parent with most trials."""
    client = mlflow_client(tracking_uri)
    kinds, objectives, notes = {}, {}, []
    for parent, _ in parents.dropna().value_counts().items():
        try:
            spec = read_spec(client, parent)
        except UnreadableSpec as error:
            notes.append(f"The {schema.ARTIFACT_SEARCH_SPEC} of search run {parent} could not be read ({error}).")
            continue
        if spec is None:
            continue
        found, objective = spec
        kinds = {**found, **kinds}
        objectives[parent] = objective or DEFAULT_OBJECTIVE
    if not objectives:
        notes.append(f"No {schema.ARTIFACT_SEARCH_SPEC} was found on the search run; the objective is taken as "
                     f"{DEFAULT_OBJECTIVE.label}, the spec's default, and a numeric key's scale is "
                     f"inferred (log when its values span more than {LOG_RATIO:g}×).")
    distinct = list(dict.fromkeys(objectives.values()))
    if len(distinct) > 1:
        notes.append("The search runs differ in their objective (" + "; ".join(o.label for o in distinct)
                     + f"); shown: {distinct[0].label}, that of the search run with most trials.")
    objective = distinct[0] if distinct else DEFAULT_OBJECTIVE
    return SearchSpace(tuple(declared), kinds, objective, tuple(notes))


# ---------------------------------------------------------------- distributions

def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values)


def infer_distribution(values: pd.Series, kind: str | None) -> tuple[BaseDistribution | None, str]:
    """An Optuna distribution over the observed values of one key (None when it does not
    vary), and a note when its scale was inferred rather than read from the spec."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    present = values.dropna()
    if present.nunique() < 2:
        return None, ""
    if kind == CHOICE or not _is_numeric(present):
        choices = sorted(present.unique().tolist(), key=lambda v: (isinstance(v, str), v))
        return CategoricalDistribution([_native(v) for v in choices]), ""
    low, high = float(present.min()), float(present.max())
    if kind in (None, GRID, UNKNOWN):
        log = low > 0 and high / low > LOG_RATIO
        return FloatDistribution(low, high, log=log), ("log scale inferred (values span "
                                                       f"{high / low:.3g}×)" if log else "")
    return FloatDistribution(low, high, log=kind == LOG and low > 0), ""


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def search_distributions(usable: pd.DataFrame, space: SearchSpace) -> tuple[dict[str, BaseDistribution],
                                                                            tuple[str, ...]]:
    """The searched keys that vary across the comparable trials, as distributions, and
    notes on keys left out or whose scale was inferred."""
    dists, notes = {}, []
    missing = [k for k in space.keys if k not in usable]
    if missing:
        notes.append(f"Searched keys that are no trial parameter (bundle axes): {', '.join(missing)}.")
    for key in (k for k in space.keys if k in usable):
        dist, note = infer_distribution(usable[key], space.kinds.get(key))
        if dist is not None:
            dists[key] = dist
        if note:
            notes.append(f"{key}: {note}.")
    return dists, tuple(notes)


def _param_value(value: Any, dist: BaseDistribution) -> Any:
    from optuna.distributions import CategoricalDistribution

    return _native(value) if isinstance(dist, CategoricalDistribution) else float(value)


def build_study(usable: pd.DataFrame, dists: Mapping[str, BaseDistribution], target: str, mode: str) -> Study:
    """An in-memory study of the trials with a finite ``target``, one recorded trial
    each; a key a trial lacks (a conditional key) is left out of that trial."""
    import optuna

    values = pd.to_numeric(usable[target], errors="coerce").astype(float)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    trials = []
    for (_, row), value in zip(usable.iterrows(), values):
        if not np.isfinite(value):
            continue
        present = {k: d for k, d in dists.items() if pd.notna(row[k])}
        params = {k: _param_value(row[k], d) for k, d in present.items()}
        trials.append(optuna.trial.create_trial(params=params, distributions=present, value=value))
    study.add_trials(trials)
    return study


# ---------------------------------------------------------------- importance

def _evaluators(n_trials: int, seed: int) -> dict[str, Any]:
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    quantile = min(0.5, max(0.1, PED_ANOVA_TOP_TRIALS / n_trials))
    return {PED_ANOVA: PedAnovaImportanceEvaluator(target_quantile=quantile),
            FANOVA: FanovaImportanceEvaluator(seed=seed)}


def target_importances(study: Study, seed: int) -> dict[str, dict[str, float]]:
    """evaluator → key → importance (normalized to sum 1).  fANOVA assesses only keys
    every trial has (Optuna's default: a conditional key would restrict it to the trials
    that sampled it); PED-ANOVA assesses every key."""
    from optuna.importance import get_param_importances

    out = {}
    with warnings.catch_warnings():
        # e.g. "target and region quantiles select the same set": the numbers say so too
        warnings.simplefilter("ignore")
        for name, evaluator in _evaluators(len(study.trials), seed).items():
            out[name] = {k: float(v) for k, v in get_param_importances(study, evaluator=evaluator).items()}
    return out


def importance_table(usable: pd.DataFrame, dists: Mapping[str, BaseDistribution],
                     targets: Mapping[str, str], seed: int) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Long table ``target, mode, evaluator, key, importance, n_trials`` over ``targets``
    (column → mode); notes name the targets with too few finite values."""
    import optuna

    rows, notes = [], []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # one "study created" line per target otherwise
    try:
        for target, mode in targets.items():
            study = build_study(usable, dists, target, mode)
            reason = _unassessable(study)
            if reason:
                notes.append(f"{target}: {reason}; not assessed.")
                continue
            for evaluator, found in target_importances(study, seed).items():
                rows += [{"target": target, "mode": mode, "evaluator": evaluator, "key": key,
                          "importance": found.get(key, np.nan), "n_trials": len(study.trials)} for key in dists]
    finally:
        optuna.logging.set_verbosity(verbosity)
    columns = ["target", "mode", "evaluator", "key", "importance", "n_trials"]
    return pd.DataFrame(rows, columns=columns), tuple(notes)


def _unassessable(study: Study) -> str:
    values = [t.value for t in study.trials]
    if len(values) < MIN_IMPORTANCE_TRIALS:
        return f"{len(values)} comparable trials with a value, fewer than {MIN_IMPORTANCE_TRIALS}"
    if len(set(values)) < 2:
        return "the same value in every trial"    # no variance for fANOVA to attribute
    return ""


def importance_display(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (target, evaluator), one column per key."""
    wide = table.pivot_table(index=["target", "evaluator", "n_trials"], columns="key", values="importance",
                             sort=False, dropna=False)
    keys = list(dict.fromkeys(table["key"]))
    return wide.reindex(columns=keys).reset_index().rename(columns={"n_trials": "n"}).rename_axis(columns=None)


def importance_skip_reason(usable: pd.DataFrame, dists: Mapping[str, BaseDistribution],
                           space: SearchSpace) -> str:
    if len(usable) < MIN_IMPORTANCE_TRIALS:
        return (f"Not computed: {len(usable)} comparable trials, fewer than the {MIN_IMPORTANCE_TRIALS} "
                "needed for importances to mean anything.")
    if len(dists) < 2:
        varying = ", ".join(dists) or "none"
        declared = ", ".join(space.keys) or "none recorded"
        return (f"Not computed: fewer than 2 searched keys vary across the comparable trials "
                f"(searched: {declared}; varying: {varying}).")
    return ""


def importance_targets(usable: pd.DataFrame, objective: Objective, measures: Sequence[str]) -> dict[str, str]:
    """The objective's metrics (with their modes) then every measure (lower is flatter)."""
    targets = {m: mode for m, mode in zip(objective.metrics, objective.modes) if m in usable}
    targets.update({m: "min" for m in measures if m not in targets})
    return targets


# ---------------------------------------------------------------- Pareto front

def non_dominated(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Mask of the rows of ``values`` (trials × metrics) that no other row dominates: at
    least as good in every metric and better in one, "good" following each ``modes``.
    Equal rows do not dominate each other, so duplicates on the front all stay."""
    signs = np.array([-1.0 if mode == "max" else 1.0 for mode in modes])
    v = np.asarray(values, dtype=float) * signs
    no_worse = (v[:, None, :] <= v[None, :, :]).all(axis=2)
    better = (v[:, None, :] < v[None, :, :]).any(axis=2)
    return ~(no_worse & better).any(axis=0)


def objective_columns(usable: pd.DataFrame, objective: Objective) -> tuple[list[str], str]:
    """The objective metrics present among the comparable trials, or why one is not."""
    for metric in objective.metrics:
        if metric in usable and pd.to_numeric(usable[metric], errors="coerce").notna().any():
            continue
        split = [c for c in usable.columns if str(c).startswith(f"{metric}[")]
        why = (f" it was measured under several definitions ({', '.join(split)}), each a different quantity"
               if split else " no comparable trial has a value")
        return [], f"The objective metric {metric} cannot be shown:{why}."
    return list(objective.metrics), ""


def pareto_frame(usable: pd.DataFrame, objective: Objective, keys: Sequence[str]) -> pd.DataFrame:
    """Every comparable trial with both objective values, flagged ``pareto``; its run name
    and run ID last."""
    columns = [schema.TRIAL_ID, *[k for k in keys if k in usable], *objective.metrics, schema.RUN_NAME, schema.RUN_ID]
    frame = usable[columns].copy()
    values = frame[list(objective.metrics)].apply(pd.to_numeric, errors="coerce").astype(float)
    frame = frame[np.isfinite(values).all(axis=1)].reset_index(drop=True)
    frame["pareto"] = non_dominated(frame[list(objective.metrics)].to_numpy(float), objective.modes)
    return frame


# ---------------------------------------------------------------- sections

IMPORTANCE, PARALLEL, PARETO = "Hyperparameter importance", "Parallel coordinates", "Pareto front"
PARALLEL_PNG, PARETO_PNG = "figures/parallel_coordinates.png", "figures/pareto_front.png"


def build_search_view(usable: pd.DataFrame, *, tracking_uri: str | None, declared: Sequence[str],
                      axes: Sequence[str], measures: Sequence[str], out: Path, seed: int, save) -> SearchView:
    """The importance and parallel-coordinates sections, and the Pareto front of a
    two-metric objective; figures are written under ``out`` with ``save(fig, path)``."""
    space = read_search_space(tracking_uri, usable[schema.PARENT], tuple(declared) or tuple(axes))
    dists, notes = search_distributions(usable, space)
    if not declared:
        notes = ("No search run lists its searched keys (tag samtune.search_keys); the hyperparameters that "
                 "vary across the comparable trials are taken instead.", *notes)
    importance, tables = _importance_section(usable, dists, space, measures, seed, (*space.notes, *notes))
    _, missing = objective_columns(usable, space.objective)
    sections = [importance, _parallel_section(usable, dists, space.objective, missing, out, save)]
    if space.objective.is_pareto:
        pareto, tables["pareto"] = _pareto_section(usable, dists, space.objective, missing, out, save)
        sections.append(pareto)
    figures = tuple(ref for section in sections for ref in section.figures)
    return SearchView(tuple(sections), figures, tables, _METHODS)


def _conditional_note(usable: pd.DataFrame, dists: Mapping[str, BaseDistribution]) -> tuple[str, ...]:
    partial = {k: int(usable[k].notna().sum()) for k in dists if usable[k].isna().any()}
    if not partial:
        return ()
    listed = ", ".join(f"{k} ({n} of {len(usable)})" for k, n in partial.items())
    return (f"Keys set in only some trials (conditional keys): {listed}. fANOVA assesses only keys every trial "
            "has, so it shows — for them; PED-ANOVA assesses them over the trials that have them.",)


def _importance_section(usable: pd.DataFrame, dists: Mapping[str, BaseDistribution], space: SearchSpace,
                        measures: Sequence[str], seed: int,
                        notes: tuple[str, ...]) -> tuple[Section, dict[str, pd.DataFrame]]:
    reason = importance_skip_reason(usable, dists, space)
    if reason:
        return Section(IMPORTANCE, (reason,), notes=notes), {}
    targets = importance_targets(usable, space.objective, measures)
    table, skipped = importance_table(usable, dists, targets, seed)
    text = (f"How much each searched key ({', '.join(dists)}) matters for each target, over the {len(usable)} "
            f"comparable trials: the objective, {space.objective.label}, then every measure (lower taken as "
            "better). PED-ANOVA: how much reaching the target's best trials depends on the key; fANOVA: the "
            f"share of the target's variance a random forest (seed {seed}) attributes to the key. The "
            "importances of one target and evaluator sum to 1.",)
    absent = [m for m in space.objective.metrics if m not in targets]
    notes = (*notes, *_conditional_note(usable, dists), *skipped,
             *(f"{m}: objective metric without a column among the comparable trials; not assessed." for m in absent))
    shown = importance_display(table) if not table.empty else None
    return Section(IMPORTANCE, text, table=shown, notes=notes), {"importance": table}


def _parallel_section(usable: pd.DataFrame, dists: Mapping[str, BaseDistribution], objective: Objective,
                      missing: str, out: Path, save) -> Section:
    if missing or not dists:
        return Section(PARALLEL, (missing or "No searched key varies across the comparable trials.",))
    args = (usable, dists, objective.metrics, objective.modes)
    save(search_figures.parallel_coordinates(*args), out / PARALLEL_PNG)
    text = (f"One line per comparable trial over the searched keys and the objective, colored by "
            f"{objective.metrics[0]} ({objective.modes[0]}; the best drawn last). Categorical keys sit at integer "
            "positions; a key a trial did not sample breaks its line.",)
    caption = f"Searched keys and {' and '.join(objective.metrics)}, one line per trial"
    figure = FigureRef(caption, PARALLEL_PNG, plot=interactive.parallel_coordinates(*args))
    return Section(PARALLEL, text, figures=(figure,))


def _pareto_section(usable: pd.DataFrame, dists: Mapping[str, BaseDistribution], objective: Objective,
                    missing: str, out: Path, save) -> tuple[Section, pd.DataFrame]:
    if missing:
        return Section(PARETO, (missing,)), pd.DataFrame()
    frame = pareto_frame(usable, objective, list(dists))
    save(search_figures.pareto_front(frame, objective.metrics, objective.modes), out / PARETO_PNG)
    first, mode = objective.metrics[0], objective.modes[0]
    front = frame[frame["pareto"]].sort_values(first, ascending=mode == "min")
    front = front.drop(columns=["pareto", schema.RUN_NAME, schema.RUN_ID])
    text = (f"{len(front)} of {len(frame)} comparable trials are non-dominated for {objective.label}: no other "
            "trial is at least as good in both metrics and better in one. They are listed below, best "
            f"{first} first; pareto.csv flags every trial.",)
    caption = f"{objective.label}: the non-dominated trials in color, joined; the others in grey"
    figure = FigureRef(caption, PARETO_PNG, plot=interactive.pareto_front(frame, objective.metrics, objective.modes))
    return Section(PARETO, text, table=front.reset_index(drop=True), figures=(figure,)), frame


_METHODS = (
    "Hyperparameter importance (Optuna): an in-memory study per target (the objective's metrics, then every "
    "measure) holds the comparable trials with a value for it, each key a distribution over its observed "
    "values (log-scaled when the spec said loguniform, categorical for a choice or a text value). PED-ANOVA "
    f"(target quantile max(0.1, {PED_ANOVA_TOP_TRIALS}/n), at most 0.5, whole space as the region) and fANOVA "
    "(64 trees, seeded by the report's seed); importances normalized per target and evaluator. Computed when "
    f"at least {MIN_IMPORTANCE_TRIALS} comparable trials and two varying searched keys exist.",
    "Pareto front (two-metric objectives): a trial is non-dominated when no other trial is at least as good in "
    "both metrics and strictly better in one, each metric's mode (min or max) deciding what better means.",
)
