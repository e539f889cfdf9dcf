"""What logging every trial's model costs the default study.

Two numbers from one run on one machine:

1. the default study (the bundled space ``default``: 16 GSAM trials on digits, two at a
   time) run twice with the same seed, ``keep_models: all`` (the default) and
   ``keep_models: none``: the ratio of their wall times (``--none-first`` swaps the order:
   the first study also pays for cold caches, so take both orders);
2. the time of one :func:`samtune.tracking.models.log_trial_model` call for the default
   trial's model (small_cnn) in a SQLite store, times the 16 trials, as a share of the
   first study's wall time (an upper bound: two trials log at once).

Run: ``python benchmarks/model_logging.py`` (about ten minutes on two cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

from samtune import schema
from samtune.search import run_search
from samtune.spec import load_search_spec


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def study_seconds(keep_models: str, samples: int) -> float:
    folder = tempfile.mkdtemp(prefix=f"samtune-bench-models-{keep_models}-")
    spec = load_search_spec(schema.DEFAULT_SPACE, [f"keep_models={keep_models}", f"samples={samples}"])
    started = time.perf_counter()
    assert run_search(spec, tracking_uri=f"sqlite:///{folder}/mlflow.db", storage=f"{folder}/ray") == 0
    return time.perf_counter() - started


def one_model_log_seconds(repeats: int) -> float:
    """The median time of logging the default trial's final model into a fresh run."""
    from samtune.config import make_trial_config
    from samtune.models import create_model
    from samtune.tracking.store import Tracker
    from samtune.tracking.trial_run import TrialRun

    config = make_trial_config(load_search_spec(schema.DEFAULT_SPACE, []).trial)
    model = create_model(config.model, num_classes=10, in_channels=1, image_size=8)  # digits: 8x8, one channel
    state = {"config": config.model_dump(mode="json"), "model": model.state_dict()}
    folder = tempfile.mkdtemp(prefix="samtune-bench-log-")
    tracker = Tracker(f"sqlite:///{folder}/mlflow.db")
    experiment_id = tracker.ensure_experiment("bench-log")
    times = []
    for i in range(repeats):
        run = TrialRun.start(tracker, experiment_id, config, run_name=f"t{i}", trial_id=f"t{i}", keep_model=True)
        started = time.perf_counter()
        run.log_model(state, {"final_test_error": 0.05, "final_train_error": 0.01}, step=config.epochs)
        times.append(time.perf_counter() - started)
        run.end(schema.COMPLETED)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--none-first", action="store_true",
                        help="run keep_models=none first (the first study also pays for cold caches)")
    args = parser.parse_args()
    if args.none_first:
        without = study_seconds(schema.KEEP_NO_MODELS, args.samples)
        with_models = study_seconds(schema.KEEP_ALL_MODELS, args.samples)
    else:
        with_models = study_seconds(schema.KEEP_ALL_MODELS, args.samples)
        without = study_seconds(schema.KEEP_NO_MODELS, args.samples)
    per_model = one_model_log_seconds(args.samples)
    print(f"\nmachine: {machine()}")
    print(f"default study, {args.samples} trials: keep_models=all {with_models:.1f} s, "
          f"keep_models=none {without:.1f} s, ratio {with_models / without:.3f}")
    print(f"one model logged: {per_model * 1000:.0f} ms; x {args.samples} trials = "
          f"{100 * per_model * args.samples / with_models:.2f} % of the study's wall time")


if __name__ == "__main__":
    main()
