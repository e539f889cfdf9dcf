"""A measure is its name and its settings.

Every trial logs, beside metric ``sharpness_<name>``, params
``sharpness.<name>.<setting>`` (ρ, norm, adaptive, steps, and the batch size ``m``,
the number of examples ``n_examples`` and the ``precision`` it ran with).  Two numbers
are the same quantity only if every setting matches, a setting that was not logged
counting as its own value.  When the trials of one report measured a measure under
several definitions, :func:`split_measures` gives each definition its own column,

    sharpness_<name>[<setting>=<value>,…]

naming only the settings that differ (values as logged, numbers without a trailing
``.0``, ``unlogged`` for a missing setting), e.g. ``sharpness_harada[m=64]`` and
``sharpness_harada[m=128]``; each column holds only the trials measured under that
definition, and its error estimate follows it (``sharpness_avg_l2[m=64]_stderr``).
A measure with a single definition keeps its plain name.

Trials logged before ``.m`` / ``.n_examples`` were params of their own still say how
their measures were computed: the measures ran on the first ``sharpness_examples``
training examples in batches of ``sharpness_batch`` (``samtune.data.fixed_batches``),
so for those trials ``n_examples`` is read from ``sharpness_examples`` and, for the
per-batch measures, ``m`` = min(``sharpness_batch``, ``sharpness_examples``).  The
report says which settings were read that way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import schema

UNLOGGED = "unlogged"


@dataclass(frozen=True)
class Definition:
    """One definition of a measure and the column that holds its values."""

    column: str
    settings: tuple[tuple[str, str], ...]   # (setting, value) for every setting; UNLOGGED if missing
    n_trials: int                           # trials with a value under this definition
    n_inferred: int = 0                     # of them, trials whose settings came from trial params

    def value(self, setting: str) -> str:
        return dict(self.settings).get(setting, UNLOGGED)

    def label(self, settings: Sequence[str] | None = None) -> str:
        """``m=64, rho=0.05``: the given settings (all by default)."""
        names = [s for s, _ in self.settings] if settings is None else settings
        return ", ".join(f"{s}={self.value(s)}" for s in names)


@dataclass(frozen=True)
class MeasureDefinitions:
    """Every definition a measure was computed under across the trials."""

    measure: str                           # the metric name, e.g. sharpness_harada
    differing: tuple[str, ...]             # settings whose values differ between definitions
    definitions: tuple[Definition, ...]
    inferred: tuple[str, ...] = ()         # settings read from trial params for some trials

    @property
    def split(self) -> bool:
        return len(self.definitions) > 1

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(d.column for d in self.definitions)


def measure_name(metric: str) -> str:
    """``sharpness_harada`` → ``harada``."""
    return metric[len(schema.SHARPNESS_PREFIX):]


def split_column_name(metric: str, settings: Iterable[tuple[str, str]]) -> str:
    return f"{metric}[{','.join(f'{s}={v}' for s, v in settings)}]"


def format_setting(value) -> str | None:
    """A setting as compared and shown: numbers in one spelling (``64``, ``0.05``),
    strings stripped, missing values None."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))
    text = str(value).strip()
    if text.lower() in ("", "none", "null", "nan"):
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return format_setting(number) if math.isfinite(number) else text


def _order(settings: Iterable[str]) -> list[str]:
    """The batch size m first, then the other data settings (n_examples, precision),
    then the measure's own settings, each by name."""
    def key(setting: str) -> tuple:
        return (0 if setting == "m" else 1 if setting in schema.MEASURE_DATA_SETTINGS else 2, setting)
    return sorted(set(settings), key=key)


def _sort_key(definition_values: tuple[str, ...]) -> tuple:
    def one(value: str) -> tuple:
        if value == UNLOGGED:
            return (2, 0.0, "")
        try:
            return (0, float(value), "")
        except ValueError:
            return (1, 0.0, value)
    return tuple(one(v) for v in definition_values)


def _inferred_settings(name: str, row: Mapping[str, object]) -> dict[str, str]:
    """``n_examples`` and (per-batch measures) ``m`` of a trial that did not log them,
    from its ``sharpness_examples`` / ``sharpness_batch`` params (module docstring)."""
    spec = schema.MEASURES.get(name)
    if spec is None or not spec.has_settings:
        return {}
    examples = format_setting(row.get(schema.SHARPNESS_EXAMPLES))
    batch = format_setting(row.get(schema.SHARPNESS_BATCH))
    out = {}
    if examples is not None:
        out["n_examples"] = examples
    if spec.per_batch and batch is not None:
        try:
            m = min(int(float(batch)), int(float(examples))) if examples is not None else int(float(batch))
            out["m"] = str(m)
        except ValueError:
            out["m"] = batch
    return out


def measure_definitions(trials: pd.DataFrame, metric: str, params: Sequence[str]) -> tuple[
        MeasureDefinitions, pd.Series]:
    """The definitions of ``metric`` over the trials that hold a value for it, and each
    trial's definition (its values of every setting, in the definitions' order; None for
    a trial without a value)."""
    name = measure_name(metric)
    prefix = schema.measure_param(name, "")
    logged = [p for p in params if str(p).startswith(prefix) and p in trials]
    extra = [p for p in (schema.SHARPNESS_EXAMPLES, schema.SHARPNESS_BATCH) if p in trials]
    present = trials.loc[trials[metric].notna(), logged + extra]
    rows, inferred_any = {}, set()
    for index, record in zip(present.index, present.to_dict("records")):
        values = {p[len(prefix):]: format_setting(record[p]) for p in logged}
        values = {s: v for s, v in values.items() if v is not None}
        inferred = {s: v for s, v in _inferred_settings(name, record).items() if s not in values}
        inferred_any |= set(inferred)
        rows[index] = ({**values, **inferred}, bool(inferred))
    settings = _order(s for values, _ in rows.values() for s in values)
    keys = {i: tuple(values.get(s, UNLOGGED) for s in settings) for i, (values, _) in rows.items()}
    distinct = sorted(set(keys.values()), key=_sort_key)
    differing = tuple(s for j, s in enumerate(settings) if len({k[j] for k in distinct}) > 1)
    positions = [settings.index(s) for s in differing]
    definitions = []
    for key in distinct:
        members = [i for i, k in keys.items() if k == key]
        shown = [(s, key[j]) for s, j in zip(differing, positions)]
        column = split_column_name(metric, shown) if len(distinct) > 1 else metric
        definitions.append(Definition(column, tuple(zip(settings, key)), len(members),
                                      sum(rows[i][1] for i in members)))
    labels = pd.Series([keys.get(i) for i in trials.index], index=trials.index, dtype=object)
    ordered_inferred = tuple(s for s in settings if s in inferred_any)
    return MeasureDefinitions(metric, differing, tuple(definitions), ordered_inferred), labels


def split_measures(trials: pd.DataFrame, params: Sequence[str]) -> tuple[pd.DataFrame,
                                                                          tuple[MeasureDefinitions, ...]]:
    """The trial table with every measure measured under several definitions split into
    one column per definition (its error estimates too), and every sharpness measure's
    definitions."""
    metrics = sorted(c for c in trials.columns
                     if str(c).startswith(schema.SHARPNESS_PREFIX) and schema.is_measure_column(c)
                     and "[" not in str(c) and c not in set(params))
    found, frame = [], trials
    for metric in metrics:
        definitions, keys = measure_definitions(trials, metric, params)
        if not definitions.definitions:
            continue
        found.append(definitions)
        if not definitions.split:
            continue
        estimates = [metric + s for s in schema.ESTIMATE_SUFFIXES if metric + s in trials]
        new = {}
        for definition in definitions.definitions:
            key = tuple(v for _, v in definition.settings)
            member = keys.map(lambda k, key=key: k == key).astype(bool)
            for source in (metric, *estimates):
                column = definition.column + source[len(metric):]
                new[column] = trials[source].where(member)
        frame = frame.drop(columns=[metric, *estimates]).assign(**new)
    return frame, tuple(found)


# ---------------------------------------------------------------- report text

def _usable_count(usable: pd.DataFrame | None, column: str) -> int | None:
    if usable is None or column not in usable:
        return None if usable is None else 0
    return int(np.isfinite(pd.to_numeric(usable[column], errors="coerce").astype(float)).sum())


def _count_text(definition: Definition, usable: pd.DataFrame | None) -> str:
    n_usable = _usable_count(usable, definition.column)
    trials = f"{definition.n_trials} trial{'s' if definition.n_trials != 1 else ''}"
    return trials if n_usable is None else f"{trials}, {n_usable} usable"


def split_paragraph(definitions: MeasureDefinitions, usable: pd.DataFrame | None = None) -> str:
    """Why one measure was split, and how many trials each definition holds."""
    name = measure_name(definitions.measure)
    settings = ", ".join(f"{s} ({schema.measure_param(name, s)})" for s in definitions.differing)
    parts = [f"{d.column} ({_count_text(d, usable)})" for d in definitions.definitions]
    text = (f"{definitions.measure} was measured under {len(definitions.definitions)} definitions that "
            f"differ in {settings}: " + ", ".join(parts[:-1]) + f" and {parts[-1]}. Values computed "
            "under different definitions are different quantities, so each definition is fitted and "
            "shown as its own measure, over the trials measured with it only.")
    inferred = sum(d.n_inferred for d in definitions.definitions)
    if inferred:
        read = [f"{s} from {schema.SHARPNESS_BATCH}" if s == "m" else f"{s} from {schema.SHARPNESS_EXAMPLES}"
                for s in definitions.inferred]
        text += (f" For {inferred} trial{'s' if inferred != 1 else ''} that did not log "
                 f"{' or '.join(schema.measure_param(name, s) for s in definitions.inferred)}, "
                 f"{' and '.join(read)} are read (the measurement protocol they ran with).")
    return text


def summary_sentence(found: Sequence[MeasureDefinitions]) -> str:
    """One sentence for the report's opening paragraph ("" when nothing was split)."""
    split = [d for d in found if d.split]
    if not split:
        return ""
    items = [f"{d.measure}, whose {' and '.join(d.differing)} differ{'s' if len(d.differing) == 1 else ''}, "
             f"as {', '.join(d.columns[:-1])} and {d.columns[-1]}" for d in split]
    return ("Measures computed under more than one definition are reported as one measure per "
            "definition: " + "; ".join(items) + " (section Measure definitions).")


def definitions_table(found: Sequence[MeasureDefinitions],
                      usable: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (measure, definition): the column it is reported as, its trial counts
    and every setting."""
    rows = []
    for definitions in found:
        for d in definitions.definitions:
            row = {"measure": definitions.measure, "reported as": d.column,
                   "differs in": d.label(definitions.differing) if definitions.split else "—",
                   "trials": d.n_trials}
            if usable is not None:
                row["usable"] = _usable_count(usable, d.column)
            row["settings"] = d.label() or "none logged"
            row["settings read from trial params"] = d.n_inferred
            rows.append(row)
    inferred = any(d.n_inferred for definitions in found for d in definitions.definitions)
    columns = ["measure", "reported as", "differs in", "trials", *(["usable"] if usable is not None else []),
               "settings", *(["settings read from trial params"] if inferred else [])]
    return pd.DataFrame(rows, columns=columns)
