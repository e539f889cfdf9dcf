"""Column names the analysis reads (DESIGN.md, "Names that cross boundaries").

Trial tables keep MLflow's names verbatim: parameters (``rho``, ``lr_shape``…),
final metrics (``final_test_error``…), measures (``sharpness_<name>``,
``norm_<name>``), plus the bookkeeping columns below.
"""

from __future__ import annotations

import pandas as pd

MIN_TRIALS = 3

TARGETS = ("final_test_error", "final_gen_gap", "final_test_loss")
CONTROL = "final_train_loss"
FINAL_PREFIX = "final_"
MEASURE_PREFIXES = ("sharpness_", "norm_")
# error estimates logged beside a measure (e.g. sharpness_avg_l2_stderr): not measures
ESTIMATE_SUFFIXES = ("_stderr", "_residual")

# bookkeeping columns of a trial table (not parameters, not metrics)
RUN_ID, TRIAL_ID, RUN_NAME = "run_id", "trial_id", "run_name"
STATUS, ERROR, PARENT = "status", "error", "parent_run_id"
EXCLUDED = "excluded_reason"
GROUP = "group"
BOOKKEEPING = (RUN_ID, TRIAL_ID, RUN_NAME, STATUS, ERROR, PARENT, EXCLUDED, GROUP)

# trial statuses written by samtune (tag samtune.status)
COMPLETED = "completed"

# the replicate index: trials that differ only in it are repeats, not a searched axis
SEED = "seed"
# run settings that do not define the experiment, so they are neither axes nor
# part of what "all other hyperparameters fixed" means
RUN_SETTINGS = frozenset({"device", "num_threads", "eval_batch_size", "data_dir", "download",
                          "train_eval_examples", "precision", "sharpness_examples",
                          "sharpness_batch"})

# per-epoch metrics drawn as training curves
CURVE_METRICS = ("test_error", "batch_size", "lr")


def measure_columns(frame: pd.DataFrame) -> list[str]:
    """``sharpness_*`` then ``norm_*`` columns that hold at least one finite value."""
    found = []
    for prefix in MEASURE_PREFIXES:
        cols = sorted(c for c in frame.columns
                      if str(c).startswith(prefix) and not str(c).endswith(ESTIMATE_SUFFIXES))
        found += [c for c in cols if pd.to_numeric(frame[c], errors="coerce").notna().any()]
    return found


def target_columns(frame: pd.DataFrame) -> list[str]:
    return [t for t in TARGETS if t in frame.columns and frame[t].notna().any()]


def is_axis_candidate(param: str) -> bool:
    """Parameters that can be a searched hyperparameter axis."""
    return param != SEED and param not in RUN_SETTINGS and not param.startswith("sharpness")
