"""The schedules a population-based search (scheduler ``pbt`` or ``pb2``) found.

Under PBT a trial's values change while it trains, and a clone inherits its donor's
history, so a trial's final weights trained on a schedule no trial parameter records.
Each trial's run keeps it as ``schedule.csv`` (:mod:`samtune.trial.lineage`): per epoch,
the values trained with and the trial whose run trained that epoch.  This module reads
those files for the comparable trials, draws one panel per evolved key (the best trial
by the search objective bold), and lists the best trial's schedule as epoch ranges.

A search is population-based when its search run's ``search.yaml`` names ``pbt`` or
``pb2``; for trials whose search runs have no readable spec (older searches, runs logged
by hand), when one of them carries a ``schedule.csv``.  Any other report gets nothing
from here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import schema, search_figures
from analysis.load import mlflow_client
from analysis.render import FigureRef, Section
from analysis.search_spec import DEFAULT_OBJECTIVE, Objective, UnreadableSpec, parse_scheduler, parse_spec, spec_text
from analysis.search_view import SearchView

TITLE, PNG = "Schedules found by population-based training", "figures/pbt_schedules.png"
TABLE = "pbt_schedules"  # written as pbt_schedules.csv
POPULATION_SCHEDULERS = ("pbt", "pb2")
# schedule.csv's column naming the trial whose run trained the epoch (samtune.trial.lineage)
SEGMENT_TRIAL = "trial_id"
TRAINED_IN = "trained_in_trial"   # that column once beside the trial's own trial_id
BEST = "best"


@dataclass(frozen=True)
class PopulationSearch:
    """What the search runs' specs say: the population schedulers named (empty when none
    is), whether any spec was read at all, and the objective."""

    schedulers: tuple[str, ...]
    spec_read: bool
    objective: Objective


@dataclass(frozen=True)
class Schedules:
    """The comparable trials' schedules (long: ``run_id, trial_id, epoch``, the keys,
    ``trained_in_trial``), and the trials left out: without the artifact, or unreadable."""

    frame: pd.DataFrame
    missing: tuple[str, ...]           # trial ids
    unreadable: dict[str, str]         # trial id → why


# ---------------------------------------------------------------- reading

def read_population_search(client, parents: pd.Series) -> PopulationSearch:
    """The schedulers and objective of the search runs ``parents`` (one entry per trial):
    the objective of the parent with most trials that names one."""
    schedulers, objectives, read = [], [], False
    for parent, _ in parents.dropna().value_counts().items():
        text = spec_text(client, parent)
        if text is None:
            continue
        try:
            scheduler, (_, objective) = parse_scheduler(text), parse_spec(text)
        except UnreadableSpec:
            continue
        read = True
        schedulers += [scheduler] if scheduler in POPULATION_SCHEDULERS else []
        objectives += [objective] if objective is not None else []
    return PopulationSearch(tuple(dict.fromkeys(schedulers)), read,
                            objectives[0] if objectives else DEFAULT_OBJECTIVE)


def read_schedule(client, run_id: str) -> pd.DataFrame | None:
    """A run's ``schedule.csv``, None when it has none; raises ValueError on one without
    an epoch column."""
    if schema.ARTIFACT_SCHEDULE not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as folder:
        frame = pd.read_csv(Path(client.download_artifacts(run_id, schema.ARTIFACT_SCHEDULE, folder)))
    if schema.EPOCH not in frame:
        raise ValueError(f"no {schema.EPOCH} column (columns: {', '.join(map(str, frame.columns))})")
    return frame.rename(columns={SEGMENT_TRIAL: TRAINED_IN})


def load_schedules(client, trials: pd.DataFrame, *, max_workers: int = 4) -> Schedules:
    """The schedules of ``trials``, fetched from a small thread pool (a remote server is
    then not queried one trial at a time)."""
    def fetch(run_id: str) -> pd.DataFrame | None | str:
        try:
            return read_schedule(client, run_id)
        except Exception as error:  # a bad file is named in the report, not fatal to it
            return f"{type(error).__name__}: {error}"

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        found = list(pool.map(fetch, trials[schema.RUN_ID]))
    frames, missing, unreadable = [], [], {}
    for run_id, trial_id, schedule in zip(trials[schema.RUN_ID], trials[schema.TRIAL_ID], found):
        if schedule is None:
            missing.append(trial_id)
        elif isinstance(schedule, str):
            unreadable[trial_id] = schedule
        else:
            frames.append(schedule.assign(**{schema.RUN_ID: run_id, schema.TRIAL_ID: trial_id}))
    columns = [schema.RUN_ID, schema.TRIAL_ID, schema.EPOCH]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    frame = frame[columns + [c for c in frame.columns if c not in columns]]
    return Schedules(frame, tuple(missing), unreadable)


# ---------------------------------------------------------------- what the schedules say

def evolved_keys(frame: pd.DataFrame) -> list[str]:
    """The PBT keys whose value varies across epochs or trials: those the search evolved."""
    return [k for k in schema.PBT_KEYS
            if k in frame and pd.to_numeric(frame[k], errors="coerce").nunique(dropna=True) > 1]


def best_trial(trials: pd.DataFrame, objective: Objective) -> pd.Series | None:
    """The trial with the best value of the objective's (first) metric; None when no
    trial has one."""
    metric, mode = objective.metrics[0], objective.modes[0]
    values = pd.to_numeric(trials[metric], errors="coerce") if metric in trials else pd.Series(dtype=float)
    if not values.notna().any():
        return None
    return trials.loc[values.idxmax() if mode == "max" else values.idxmin()]


def schedule_ranges(schedule: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One trial's schedule as runs of consecutive epochs over which ``keys`` keep their
    values: the epochs (``3–6``, or ``7``), the values, and the trials whose runs trained
    them (a clone's first epochs were trained by its donors)."""
    run = schedule.sort_values(schema.EPOCH).reset_index(drop=True)
    values = run[list(keys)].apply(pd.to_numeric, errors="coerce")
    starts = values.ne(values.shift()).any(axis=1)   # the first epoch, and each change
    rows = []
    for _, part in run.groupby(starts.cumsum(), sort=True):
        first, last = int(part[schema.EPOCH].iloc[0]), int(part[schema.EPOCH].iloc[-1])
        row = {"epochs": f"{first}–{last}" if last > first else str(first)}
        row |= {key: values.at[part.index[0], key] for key in keys}
        if TRAINED_IN in part:
            row["trained in"] = ", ".join(dict.fromkeys(part[TRAINED_IN].astype(str)))
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the section

def pbt_view(usable: pd.DataFrame, *, tracking_uri: str | None, out: Path, save) -> SearchView:
    """The PBT schedules section over the comparable trials ``usable``, its figure and
    its CSV; an empty view when the search was not population-based."""
    client = mlflow_client(tracking_uri)
    search = read_population_search(client, usable[schema.PARENT])
    if not search.schedulers and search.spec_read:
        return SearchView(())
    schedules = load_schedules(client, usable)
    if not search.schedulers and len(schedules.missing) == len(usable):
        return SearchView(())   # no spec, and no trial with a schedule: not a population
    best = best_trial(usable, search.objective)
    keys = evolved_keys(schedules.frame)
    shown = usable[usable[schema.RUN_ID].isin(schedules.frame[schema.RUN_ID])]
    text = [_what_it_shows(search, shown, keys), *_left_out(schedules, len(usable))]
    if not keys:
        text.append("No comparable trial has a readable schedule: nothing to draw." if shown.empty else
                    "No key varies across the epochs or trials of these schedules: nothing evolved to draw.")
        return SearchView((Section(TITLE, tuple(text)),), methods=_METHODS)
    drawn = _drawn_best(best, schedules.frame)
    label = _best_label(best, search.objective)
    save(search_figures.pbt_schedules(schedules.frame, keys=keys, best=drawn, best_label=label), out / PNG)
    table, best_text = _best_schedule(schedules.frame, best, keys, search.objective)
    caption = f"{', '.join(keys)} per epoch, one line per trial" + (f"; bold: {label}" if drawn else "")
    figure = FigureRef(caption, PNG)
    frame = schedules.frame.assign(**{BEST: schedules.frame[schema.RUN_ID] == drawn})
    section = Section(TITLE, (*text, best_text), table=table, figures=(figure,))
    return SearchView((section,), (figure,), {TABLE: frame}, _METHODS)


def _drawn_best(best: pd.Series | None, frame: pd.DataFrame) -> str | None:
    """The best trial's run when its schedule is known: only then is it drawn bold (the
    section says why otherwise)."""
    if best is None or best[schema.RUN_ID] not in set(frame[schema.RUN_ID]):
        return None
    return best[schema.RUN_ID]


def _what_it_shows(search: PopulationSearch, shown: pd.DataFrame, keys: Sequence[str]) -> str:
    how = (f"The search's scheduler ({', '.join(s.upper() for s in search.schedulers)})" if search.schedulers
           else f"Population-based training (the trials carry {schema.ARTIFACT_SCHEDULE})")
    evolved = f" evolved {', '.join(keys)} while the trials trained" if keys else " ran"
    return (f"{how}{evolved}. The figure shows, per trial, the values its final weights trained on epoch by "
            "epoch, the history inherited from the trials it was cloned from included; it is "
            f"{_scope(shown)}, not an optimal schedule: another seed or population may evolve another.")


def _scope(shown: pd.DataFrame) -> str:
    """``one population on one seed``, or how many of each the drawn trials come from."""
    populations = max(shown[schema.PARENT].nunique(dropna=False), 1)
    seeds = max(shown[schema.SEED].nunique(dropna=False), 1) if schema.SEED in shown else 1
    return (f"{'one population' if populations == 1 else f'{populations} populations'} on "
            f"{'one seed' if seeds == 1 else f'{seeds} seeds'}")


def _left_out(schedules: Schedules, n_trials: int) -> tuple[str, ...]:
    """Who is not drawn, and why: nothing is dropped silently."""
    text = []
    if schedules.missing:
        n = len(schedules.missing)
        text.append(f"{n} of {n_trials} comparable trials {'is' if n == 1 else 'are'} left out: "
                    f"{'it has' if n == 1 else 'they have'} no {schema.ARTIFACT_SCHEDULE} artifact (samtune "
                    "records it at a population trial's last epoch; a trial of another search, of an older "
                    f"samtune or logged by hand has none): {', '.join(schedules.missing)}.")
    for trial_id, why in schedules.unreadable.items():
        text.append(f"Trial {trial_id} is left out: its {schema.ARTIFACT_SCHEDULE} could not be read ({why}).")
    if not text:
        text.append(f"All {n_trials} comparable trials have their {schema.ARTIFACT_SCHEDULE} and are drawn; "
                    "trials excluded from the report (see Trials) are not.")
    return tuple(text)


def _best_label(best: pd.Series | None, objective: Objective) -> str:
    if best is None:
        return "best trial (none: no trial has the objective)"
    metric = objective.metrics[0]
    return f"{best[schema.TRIAL_ID]} (best: {metric} = {float(best[metric]):.4g})"


def _best_schedule(frame: pd.DataFrame, best: pd.Series | None, keys: Sequence[str],
                   objective: Objective) -> tuple[pd.DataFrame | None, str]:
    """The best trial's schedule as epoch ranges, and the sentence that introduces it."""
    label = f"{objective.metrics[0]} ({objective.modes[0]})"
    if best is None:
        return None, f"No comparable trial has a value of the objective, {label}: no trial is drawn bold."
    schedule = frame[frame[schema.RUN_ID] == best[schema.RUN_ID]]
    if schedule.empty:
        return None, (f"The best trial by the objective, {label}, is {best[schema.TRIAL_ID]}, which has no "
                      f"{schema.ARTIFACT_SCHEDULE}: no trial is drawn bold and its schedule is unknown.")
    return schedule_ranges(schedule, keys), (
        f"Bold: {best[schema.TRIAL_ID]}, the best trial by the objective, {label}. Its schedule below: each "
        "range of epochs over which its values stayed constant, and the trials whose runs trained those "
        "epochs (another trial than itself: epochs inherited from a donor). pbt_schedules.csv holds every "
        "trial's schedule.")


_METHODS = (
    "Schedules found by population-based training: each comparable trial's schedule.csv, written by samtune "
    "at a population trial's last epoch from the lineage its checkpoints carry (the values each epoch of its "
    "final weights trained with, inherited epochs included). Evolved keys: those of "
    f"{', '.join(schema.PBT_KEYS)} that vary across the epochs or trials; batch size drawn on a log2 axis, "
    f"another positive key spanning more than {search_figures.SCHEDULE_LOG_RATIO:g}× on a log axis. The best trial has "
    "the best value of the search objective's (first) metric among the comparable trials. Epoch e is drawn "
    "from e − 1 to e at the value it trained with.",
)
