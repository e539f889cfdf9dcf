"""Column names the analysis reads.

Every name that samtune writes comes from :mod:`samtune.schema` (torch-free, the one
owner of those names), and the other analysis modules read them here, never from
samtune directly; this module adds only what is the analysis's own: the
bookkeeping columns of a trial table, the targets fitted and how parameters are
classified.

Trial tables keep MLflow's names verbatim: parameters (``rho``, ``lr_shape``…),
final metrics (``final_test_error``…), measures (``sharpness_<name>``,
``norm_<name>``), plus the bookkeeping columns below.  A measure measured under
more than one definition is split into columns ``sharpness_<name>[<setting>=<value>,…]``
(see :mod:`analysis.definitions`).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from samtune import schema as _samtune

MIN_TRIALS = 3

FINAL_PREFIX = _samtune.FINAL_PREFIX
TARGETS = tuple(FINAL_PREFIX + key for key in ("test_error", "gen_gap", "test_loss"))
CONTROL = FINAL_PREFIX + "train_loss"
assert set(TARGETS) | {CONTROL} <= set(_samtune.FINAL_METRICS)

SHARPNESS_PREFIX = _samtune.SHARPNESS_PREFIX
MEASURE_PREFIXES = _samtune.MEASURE_PREFIXES
# error estimates logged beside a measure (e.g. sharpness_avg_l2_stderr): not measures
ESTIMATE_SUFFIXES = _samtune.ESTIMATE_SUFFIXES
# params ``sharpness.<name>.<setting>``: a measure's definition (its identity, not an axis)
MEASURE_PARAM_PREFIX = _samtune.MEASURE_PARAM_PREFIX
MEASURE_DATA_SETTINGS = _samtune.MEASURE_DATA_SETTINGS
MEASURES = _samtune.MEASURES
measure_param = _samtune.measure_param

# bookkeeping columns of a trial table (not parameters, not metrics)
RUN_ID, TRIAL_ID, RUN_NAME = "run_id", "trial_id", "run_name"
STATUS, ERROR, PARENT = "status", "error", "parent_run_id"
EXCLUDED = "excluded_reason"
# why, as a kind: a trial status (diverged, failed…) or one of EXCLUSION_KINDS
EXCLUDED_KIND = "excluded_kind"
GROUP = "group"
BOOKKEEPING = (RUN_ID, TRIAL_ID, RUN_NAME, STATUS, ERROR, PARENT, EXCLUDED, EXCLUDED_KIND, GROUP)
# completed trials left out: no finite target or measure; did not fit the training set
# (the criterion not reached, or final_train_error above max_train_error); trained under
# another criterion than the one compared
NO_METRICS, NOT_FIT, OTHER_CRITERION = "no_metrics", "not_fit", "other_criterion"
EXCLUSION_KINDS = (NO_METRICS, NOT_FIT, OTHER_CRITERION)

# trial statuses (tag samtune.status) and MLflow tags
COMPLETED, DIVERGED, PRUNED, FAILED, RUNNING = (_samtune.COMPLETED, _samtune.DIVERGED, _samtune.PRUNED,
                                                _samtune.FAILED, _samtune.RUNNING)
TAG_KIND, KIND_SEARCH, KIND_TRIAL, KIND_REPORT = (_samtune.TAG_KIND, _samtune.KIND_SEARCH,
                                                  _samtune.KIND_TRIAL, _samtune.KIND_REPORT)
TAG_STATUS, TAG_ERROR, TAG_TRIAL_ID = _samtune.TAG_STATUS, _samtune.TAG_ERROR, _samtune.TAG_TRIAL_ID
TAG_PARENT, TAG_SEARCH_KEYS = _samtune.TAG_PARENT, _samtune.TAG_SEARCH_KEYS
# the report run's link to the search it covers (a report-run tag, written only here)
TAG_REPORTED_SEARCH = _samtune.TAG_REPORTED_SEARCH
# a search run's spec (artifact search.yaml): its distributions and default objective
ARTIFACT_SEARCH_SPEC = _samtune.ARTIFACT_SEARCH_SPEC
SEARCH_DISTRIBUTIONS = _samtune.SEARCH_DISTRIBUTIONS
DEFAULT_OBJECTIVE = _samtune.DEFAULT_OBJECTIVE
# per-epoch theory probes (trial key ``probes``)
PROBE_METRICS = _samtune.PROBE_METRICS
# population-based training (scheduler pbt / pb2): the keys it may change while a trial
# trains, and each trial's schedule.csv (per epoch: the values its final weights trained
# on, inherited ones included, and the trial whose run trained that epoch)
PBT_KEYS = _samtune.PBT_KEYS
ARTIFACT_SCHEDULE = _samtune.ARTIFACT_SCHEDULE
EPOCH = _samtune.EPOCH

# the replicate index: trials that differ only in it are repeats, not a searched axis
SEED = "seed"
# run settings (where and how a trial runs): neither axes nor part of what "all other
# hyperparameters fixed" means
RUN_SETTINGS = frozenset(_samtune.RUN_SETTINGS)
# hyperparameters that fix how a trial is measured, not how it is trained: never axes
MEASUREMENT_KEYS = frozenset(_samtune.MEASUREMENT_KEYS)
# how the training error is estimated: it moves final_train_* and final_gen_gap but
# not training itself, so it is held equal in comparisons (a grouping key) but never an axis
TRAIN_EVAL_EXAMPLES = "train_eval_examples"
# the other measurement keys only say which measures are computed and on which
# examples: a measure's own params ``sharpness.<name>.*`` carry that identity (and the
# report splits a measure whose definitions differ), so these are neither axes nor
# grouping keys.  (``sharpness_batch`` / ``sharpness_examples`` also stand in for the
# ``.m`` / ``.n_examples`` params of trials that did not log them.)
MEASURE_SELECTION = MEASUREMENT_KEYS - {TRAIN_EVAL_EXAMPLES}
SHARPNESS_BATCH, SHARPNESS_EXAMPLES = "sharpness_batch", "sharpness_examples"
assert {TRAIN_EVAL_EXAMPLES, SHARPNESS_BATCH, SHARPNESS_EXAMPLES} <= MEASUREMENT_KEYS

# the training criterion (trial keys ``stop_<quantity>``): its bounds, and the metrics
# that say whether a trial reached it
CRITERION_QUANTITIES = _samtune.CRITERION_QUANTITIES
CRITERION_PARAMS = {quantity: f"stop_{quantity}" for quantity in CRITERION_QUANTITIES}
CRITERION_REACHED = _samtune.CRITERION_REACHED
CRITERION_METRICS = _samtune.CRITERION_METRICS
TRAIN_ERROR = FINAL_PREFIX + "train_error"   # judged against max_train_error without a criterion
assert TRAIN_ERROR in _samtune.FINAL_METRICS
# the budget a trial spent (trial keys budget / budget_unit) and the compute it got
BUDGET, BUDGET_UNIT, EPOCHS = "budget", "budget_unit", "epochs"
COMPUTE = tuple(FINAL_PREFIX + key for key in ("steps", "samples_seen", "gradient_evaluations"))
# how the group table names the compute columns it shows
COMPUTE_SHOWN = {FINAL_PREFIX + "steps": "steps",
                 FINAL_PREFIX + "gradient_evaluations": "gradient evaluations"}
assert set(COMPUTE) <= set(_samtune.FINAL_METRICS) and set(COMPUTE_SHOWN) <= set(COMPUTE)

# per-epoch metrics drawn as training curves
CURVE_METRICS = ("test_error", "batch_size", "lr")
# the interactive curves draw every trial's errors beside them
TRIAL_CURVE_METRICS = ("test_error", "train_error", "batch_size", "lr")
HISTORY_METRICS = tuple(dict.fromkeys((*CURVE_METRICS, *TRIAL_CURVE_METRICS)))
assert set(HISTORY_METRICS) <= set(_samtune.EPOCH_METRICS)


def is_measure_param(param: str) -> bool:
    """A ``sharpness.<name>.<setting>`` param: part of a measure's definition."""
    return str(param).startswith(MEASURE_PARAM_PREFIX)


def is_measure_column(column: str) -> bool:
    """A measure's value column (``sharpness_*`` / ``norm_*``, split or not), not its
    error estimate, nor a trial key that merely shares the prefix (``sharpness_batch``)."""
    text = str(column)
    return (text.startswith(MEASURE_PREFIXES) and not text.endswith(ESTIMATE_SUFFIXES)
            and text not in MEASURE_SELECTION)


def measure_columns(frame: pd.DataFrame, params: Iterable[str] = ()) -> list[str]:
    """``sharpness_*`` then ``norm_*`` columns (not ``params``) that hold at least one
    finite value."""
    skip, found = set(params), []
    for prefix in MEASURE_PREFIXES:
        cols = sorted((c for c in frame.columns
                       if str(c).startswith(prefix) and is_measure_column(c) and c not in skip),
                      key=measure_sort_key)
        found += [c for c in cols if pd.to_numeric(frame[c], errors="coerce").notna().any()]
    return found


def measure_sort_key(column: str) -> tuple:
    """Measures by name, the definitions of a split one by their settings' values
    (numbers numerically: ``[m=64]`` before ``[m=128]``)."""
    base, _, rest = str(column).partition("[")
    values = []
    for item in rest.rstrip("]").split(",") if rest else ():
        value = item.partition("=")[2]
        try:
            values.append((0, float(value), ""))
        except ValueError:
            values.append((1, 0.0, value))
    return base, tuple(values)


def target_columns(frame: pd.DataFrame) -> list[str]:
    return [t for t in TARGETS if t in frame.columns and frame[t].notna().any()]


def is_grouping_candidate(param: str) -> bool:
    """Parameters that must be equal for two trials to "differ in one axis only":
    hyperparameters, the seed included; not run settings, nor what only defines the
    measures."""
    return param not in RUN_SETTINGS and param not in MEASURE_SELECTION and not is_measure_param(param)


def is_axis_candidate(param: str) -> bool:
    """Parameters that can be a searched hyperparameter axis."""
    return is_grouping_candidate(param) and param != SEED and param not in MEASUREMENT_KEYS
