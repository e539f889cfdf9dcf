"""Which trials fit their training set, and so are compared.

Generalization measures are compared only across networks that each fit their
training set to a common criterion (Jiang et al., "Fantastic Generalization Measures
and Where to Find Them", ICLR 2020, train to cross-entropy 0.01): otherwise a trial
that never learned (test error at chance) sits far from the others and decides the
fits alone.  So, among the trials that completed with a finite target and measure:

- **The criterion is part of what the trials are.**  A trial trained with one (trial
  keys ``stop_train_loss`` / ``stop_train_error``, logged as params) stopped at the
  first epoch that met every bound; trials trained under different bounds, or some
  with a criterion and some without, are not comparable.  The report compares the
  trials of the most common setting (ties: the one with more trials that fit, then a
  criterion over none) and excludes the others, "trained under a different criterion".
- **With a criterion**, a trial that did not reach it (metric ``criterion_reached`` = 0)
  did not fit its training set and is excluded.  A trial that did not log
  ``criterion_reached`` is judged from its final metrics, which is exact: training
  stops at the first epoch that meets the criterion, so the last epoch meets it iff
  any epoch did.
- **Without a criterion**, a trial whose ``final_train_error`` is above
  ``max_train_error`` did not fit its training set and is excluded.  The default,
  :data:`DEFAULT_MAX_TRAIN_ERROR` = 0.5, is the majority rule: a network that
  misclassifies more than half of its training examples has not fit them, whatever the
  number of classes K, while chance is 1 − 1/K ≥ 0.5 (0.9 for ten classes), so a trial
  that never learned is excluded on every data set and one that learned but fits
  imperfectly is kept (differences in fit among the kept trials are what the partial
  correlation on ``final_train_loss`` controls for).  ``None`` applies no threshold.
  Without a criterion the kept trials are still not compared at a common fit, and the
  report says so, with the range of their training errors.

A trial that cannot be judged (neither ``criterion_reached`` nor the final metric
logged) is kept, and counted as unchecked.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import schema
from analysis.errors import AnalysisError

DEFAULT_MAX_TRAIN_ERROR = 0.5


@dataclass(frozen=True)
class Criterion:
    """A training criterion as trials log it: ((quantity, bound), …); () is none."""

    bounds: tuple[tuple[str, float], ...] = ()

    @property
    def is_set(self) -> bool:
        return bool(self.bounds)

    @property
    def label(self) -> str:
        """``train_loss <= 0.01`` (bounds joined by "and"), or ``none``."""
        return " and ".join(f"{q} <= {b:g}" for q, b in self.bounds) or "none"


def _number(value) -> float:
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return float(number) if pd.notna(number) else math.nan


def trial_criterion(row: pd.Series) -> Criterion:
    """The criterion a trial was trained under, from its ``stop_<quantity>`` params."""
    bounds = []
    for quantity, param in schema.CRITERION_PARAMS.items():
        bound = _number(row.get(param))
        if math.isfinite(bound):
            bounds.append((quantity, bound))
    return Criterion(tuple(bounds))


def reached(row: pd.Series, criterion: Criterion) -> bool | None:
    """Whether a trial reached ``criterion`` (None: cannot tell)."""
    logged = _number(row.get(schema.CRITERION_REACHED))
    if math.isfinite(logged):
        return logged > 0
    finals = [_number(row.get(schema.FINAL_PREFIX + q)) for q, _ in criterion.bounds]
    if not all(math.isfinite(v) for v in finals):
        return None
    return all(v <= b for v, (_, b) in zip(finals, criterion.bounds))


def within_threshold(row: pd.Series, max_train_error: float | None) -> bool | None:
    """Whether ``final_train_error`` is at most ``max_train_error`` (None: cannot tell)."""
    if max_train_error is None:
        return True
    value = _number(row.get(schema.TRAIN_ERROR))
    return None if not math.isfinite(value) else value <= max_train_error


def fits_training_set(row: pd.Series, criterion: Criterion, max_train_error: float | None) -> bool | None:
    return reached(row, criterion) if criterion.is_set else within_threshold(row, max_train_error)


def check_max_train_error(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise AnalysisError(f"max_train_error = {value!r}: must be a training error in [0, 1] (errors are "
                            "fractions, not percent), or None to apply no threshold")
    return number


@dataclass(frozen=True)
class TrainingFit:
    """How the report decided which trials fit their training set (module docstring)."""

    criterion: Criterion                     # the setting the trials are compared at (none: threshold)
    max_train_error: float | None            # applied only when ``criterion`` is none
    compared: int = 0                        # completed trials with metrics under ``criterion``
    fit: int = 0                             # of them, reached it (or within the threshold)
    unchecked: int = 0                       # of them, kept because nothing says whether they fit
    others: tuple[tuple[str, int], ...] = ()  # other criteria's labels and trial counts (excluded)
    train_error_range: tuple[float, float] | None = None   # final_train_error over the kept trials

    @property
    def not_fit(self) -> int:
        return self.compared - self.fit - self.unchecked

    @property
    def other_trials(self) -> int:
        return sum(n for _, n in self.others)

    @property
    def threshold_applied(self) -> bool:
        return not self.criterion.is_set and self.max_train_error is not None

    def sentence(self) -> str:
        """The summary's account of the comparison ("" when there was nothing to compare)."""
        if self.compared == 0:
            return ""
        checked = self.compared - self.unchecked
        if self.criterion.is_set:
            text = f"Trials are compared at the training criterion {self.criterion.label}: "
            text += (f"{self.fit} of {checked} reached it; {self.not_fit} that did not "
                     f"{_were(self.not_fit)} excluded." if self.not_fit else f"all {checked} reached it.")
            if self.unchecked:
                text += (f" {_count(self.unchecked)} logged neither {schema.CRITERION_REACHED} nor its "
                         f"final metrics, so whether {_they(self.unchecked)} reached it is unknown; "
                         f"{_they(self.unchecked)} {_were(self.unchecked)} kept.")
        elif self.max_train_error is None:
            text = ("No training criterion was set and no train-error threshold applied "
                    "(max_train_error = None): every completed trial is compared, whether or not it "
                    "fit its training set.")
        else:
            params = " / ".join(schema.CRITERION_PARAMS.values())
            text = f"No training criterion was set ({params}), so the trials are not compared at a common fit"
            if checked:
                text += (f"; a trial whose {schema.TRAIN_ERROR} is above max_train_error = "
                         f"{self.max_train_error:g} did not fit its training set and is excluded: "
                         + (f"{self.not_fit} of {checked}." if self.not_fit else f"none of {checked}."))
            else:
                text += "."
            if self.unchecked:
                text += (f" {_count(self.unchecked)} without a finite {schema.TRAIN_ERROR} "
                         f"{_were(self.unchecked)} kept: whether {_they(self.unchecked)} fit the "
                         "training set is unknown.")
        if self.train_error_range is not None and not self.criterion.is_set:
            low, high = self.train_error_range
            text += f" The compared trials have {schema.TRAIN_ERROR} from {low:.3g} to {high:.3g}."
        if self.others:
            parts = "; ".join(f"{label}: {n}" for label, n in self.others)
            text += (f" Excluded as trained under a different criterion: {_count(self.other_trials)} "
                     f"({parts}); trials trained to different criteria are not comparable.")
        return text


def _count(n: int) -> str:
    return f"{n} trial{'s' if n != 1 else ''}"


def _were(n: int) -> str:
    return "were" if n != 1 else "was"


def _they(n: int) -> str:
    return "they" if n != 1 else "it"


def _limit(row: pd.Series) -> str:
    """``its 30 epochs``, or ``its budget of 1000 steps (at most 30 epochs)``."""
    epochs, budget = _number(row.get(schema.EPOCHS)), _number(row.get(schema.BUDGET))
    within = f"{epochs:g} epochs" if math.isfinite(epochs) else "epochs"
    if math.isfinite(budget):
        unit = row.get(schema.BUDGET_UNIT)
        unit = unit if isinstance(unit, str) and unit else "steps"
        return f"its budget of {budget:g} {unit} (at most {within})"
    return f"its {within}"


def _not_reached_reason(row: pd.Series, criterion: Criterion) -> str:
    finals = []
    for quantity, _ in criterion.bounds:
        value = _number(row.get(schema.FINAL_PREFIX + quantity))
        if math.isfinite(value):
            finals.append(f"final {quantity} {value:.3g}")
    text = f"did not reach the training criterion {criterion.label} within {_limit(row)}"
    return text + (f" ({', '.join(finals)})" if finals else "")


def _above_threshold_reason(row: pd.Series, max_train_error: float) -> str:
    value = _number(row.get(schema.TRAIN_ERROR))
    return (f"did not fit its training set: {schema.TRAIN_ERROR} {value:.3g} > max_train_error "
            f"{max_train_error:g} (no training criterion was set)")


def _other_reason(criterion: Criterion, compared: Criterion) -> str:
    return (f"trained under a different criterion ({criterion.label}); the report compares trials at "
            + (f"the training criterion {compared.label}" if compared.is_set else "no training criterion"))


def apply_training_fit(trials: pd.DataFrame, reasons: pd.Series, kinds: pd.Series,
                       max_train_error: float | None = DEFAULT_MAX_TRAIN_ERROR) -> tuple[
                           pd.Series, pd.Series, TrainingFit]:
    """``reasons`` / ``kinds`` with the trials that did not fit their training set, or
    were trained under another criterion than the one compared, excluded (only trials
    not already excluded are judged); and how that was decided."""
    max_train_error = check_max_train_error(max_train_error)
    reasons, kinds = reasons.copy(), kinds.copy()
    candidates = [i for i in trials.index if reasons[i] == ""]
    if not candidates:
        return reasons, kinds, TrainingFit(Criterion(), max_train_error)
    rows = {i: trials.loc[i] for i in candidates}
    criteria = {i: trial_criterion(rows[i]) for i in candidates}
    passed = {i: fits_training_set(rows[i], criteria[i], max_train_error) for i in candidates}
    counts = Counter(criteria.values())
    fitting = Counter(c for i, c in criteria.items() if passed[i] is not False)
    compared = max(counts, key=lambda c: (counts[c], fitting[c], c.is_set, c.label))
    fit = unchecked = 0
    for i in candidates:
        if criteria[i] != compared:
            reasons[i], kinds[i] = _other_reason(criteria[i], compared), schema.OTHER_CRITERION
        elif passed[i] is None:
            unchecked += 1
        elif passed[i]:
            fit += 1
        else:
            reasons[i] = (_not_reached_reason(rows[i], compared) if compared.is_set
                          else _above_threshold_reason(rows[i], max_train_error))
            kinds[i] = schema.NOT_FIT
    kept = [i for i in candidates if reasons[i] == ""]
    errors = pd.to_numeric(trials.loc[kept, schema.TRAIN_ERROR], errors="coerce") \
        if schema.TRAIN_ERROR in trials else pd.Series(dtype=float)
    errors = errors[np.isfinite(errors.astype(float))]
    span = (float(errors.min()), float(errors.max())) if len(errors) else None
    others = tuple(sorted(((c.label, n) for c, n in counts.items() if c != compared),
                          key=lambda item: (-item[1], item[0])))
    return reasons, kinds, TrainingFit(compared, max_train_error, counts[compared], fit, unchecked,
                                       others, span)


def exclusion_phrases(kinds: dict[str, int], training_fit: TrainingFit) -> list[str]:
    """``2 diverged``, ``3 that did not reach the training criterion``…: one phrase per
    kind of exclusion."""
    phrases = []
    for kind, n in kinds.items():
        if kind == schema.NO_METRICS:
            phrases.append(f"{n} completed without a finite target or measure")
        elif kind == schema.NOT_FIT and training_fit.criterion.is_set:
            phrases.append(f"{n} that did not reach the training criterion")
        elif kind == schema.NOT_FIT:
            phrases.append(f"{n} that did not fit the training set")
        elif kind == schema.OTHER_CRITERION:
            phrases.append(f"{n} trained under a different criterion")
        else:
            phrases.append(f"{n} {kind}")
    return phrases
