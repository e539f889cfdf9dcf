"""Search overhead: wall time of a search / (sum of trial times / concurrency).

1.0 is the limit (no orchestration cost at all).  Trial time is each MLflow
child run's own duration (start to end, as the trial recorded it: data load,
training, evaluation, sharpness); the wall time covers the whole
``run_search`` call: Ray start, the Optuna searcher, checkpoints, MLflow
writes and Ray shutdown.  Run: ``python benchmarks/search_overhead.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from mlflow.tracking import MlflowClient

from samtune.search import run_search
from samtune.spec import parse_search_spec


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="samtune-bench-")
    uri = f"sqlite:///{folder}/mlflow.db"
    spec = parse_search_spec({
        "name": "bench-overhead", "samples": args.samples, "concurrency": args.concurrency,
        "resources": {"cpu": 1}, "seed": 0,
        "trial": {"epochs": args.epochs, "sharpness": ["ascent", "norm_param_l2"]},
        "search": {"rho": {"loguniform": [0.01, 0.3]}, "batch_growth_ratio": {"uniform": [1.0, 3.0]}},
    })
    started_at = time.time()
    started = time.perf_counter()
    run_search(spec, tracking_uri=uri, storage=f"{folder}/ray")
    wall = time.perf_counter() - started
    ended_at = started_at + wall

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench-overhead")
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("samtune.kind") == "trial"]
    trial_seconds = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]
    ideal = sum(trial_seconds) / args.concurrency
    print(f"\nmachine: {machine()}")
    print(f"trials: {len(runs)} x {args.epochs} epochs (digits, small_cnn, GSAM), concurrency {args.concurrency}")
    print(f"sum of trial times: {sum(trial_seconds):.1f} s; mean {sum(trial_seconds) / len(runs):.1f} s")
    print(f"search wall time:   {wall:.1f} s")
    first_start = min(r.info.start_time for r in runs) / 1000
    last_end = max(r.info.end_time for r in runs) / 1000
    print(f"  before the first trial started: {first_start - started_at:.1f} s "
          f"(MLflow store, Ray start, worker start)")
    print(f"  between first start and last end: {last_end - first_start:.1f} s "
          f"(ideal {ideal:.1f} s)")
    print(f"  after the last trial ended: {ended_at - last_end:.1f} s")
    print(f"overhead ratio wall / (sum / concurrency) = {wall / ideal:.2f}")


if __name__ == "__main__":
    main()
