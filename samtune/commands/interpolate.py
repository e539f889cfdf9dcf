"""``samtune interpolate``: loss and error along the line between two saved trials'
models (:mod:`samtune.sharpness.interpolation`), written to a folder and recorded as an
MLflow run in the first trial's experiment."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from samtune import schema
from samtune.checks import ConfigError
from samtune.commands.sharpness import load_saved_model, saved_trial
from samtune.commands.sources import MODELS_SCHEME, parse_selector, run_of
from samtune.data.trial_data import whole_split
from samtune.sharpness.interpolation import (
    DEFAULT_POINTS,
    DEFAULT_RANGE,
    Batch,
    check_compatible,
    grid,
    interpolation_curve,
    write_outputs,
)
from samtune.tracking.store import Tracker
from samtune.trial.loop import Trial


def check_same_task(configs: Sequence, sources: tuple[str, str]) -> None:
    """ConfigError unless both runs trained the same model on the same data set."""
    for key in ("model", "dataset"):
        values = [getattr(config, key) for config in configs]
        if values[0] != values[1]:
            raise ConfigError(f"the runs differ in {key}: {values[0]!r} ({sources[0]}) and {values[1]!r} "
                              f"({sources[1]}); interpolation needs the same model, data set and classes")


def evaluation_batches(trial: Trial, examples: int | None) -> tuple[list[Batch], list[Batch]]:
    """The first ``examples`` training examples (default: the trial's
    train_eval_examples, all when 0) and the whole test set, in evaluation batches."""
    data, size = trial.data, trial.config.eval_batch_size
    n = examples if examples is not None else trial.config.train_eval_examples
    n = min(n, data.train_size) if n else data.train_size
    test = data.test_split(batch_size=size, rank=0, world=1, device=trial.device)
    return whole_split(*data.first_examples(n), size).batches, list(test.batches)


def resolved_sources(sources: tuple[str, str], tracking_uri: str | None) -> tuple[str, str]:
    """The sources with each trial selector replaced by the run id it names, so that labels,
    the output folder and the recorded tag name runs (a selector's commas would break the
    tag's ``<run>,<run>``)."""
    def resolved(source: str) -> str:
        if Path(source).exists() or parse_selector(source) is None:
            return source
        return run_of(source, Tracker(tracking_uri))

    first, second = map(resolved, sources)
    return first, second


def source_label(source: str) -> str:
    """A short name for a source: a file's name, a model's or run's id's first characters."""
    if Path(source).exists():
        return Path(source).name
    return source.removeprefix(MODELS_SCHEME).strip("/").replace("/", "-")[:10]


def interpolate_runs(sources: tuple[str, str], *, points: int = DEFAULT_POINTS,
                     lo: float = DEFAULT_RANGE[0], hi: float = DEFAULT_RANGE[1],
                     examples: int | None = None, out: Path, device: str = "auto",
                     tracking_uri: str | None = None) -> tuple[pd.DataFrame, str]:
    """The curve between two saved trials (MLflow run ids or checkpoint files),
    written to ``out`` and recorded as an MLflow run in the first run's experiment;
    returns (curve, MLflow run id). Mistakes are refused before anything is recorded."""
    alphas = grid(points, lo, hi)
    sources = resolved_sources(sources, tracking_uri)
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
        raise ConfigError(f"examples = {examples!r}: allowed an integer >= 1")
    (config, first), (other, second) = (load_saved_model(s, tracking_uri, device) for s in sources)
    check_same_task((config, other), sources)
    check_compatible(first, second, sources)
    trial = saved_trial(config, first)
    train_batches, test_batches = evaluation_batches(trial, examples)
    frame = interpolation_curve(trial.model, first, second, train_batches, test_batches, alphas)
    labels = tuple(source_label(s) for s in sources)
    files = write_outputs(frame, labels, out)
    params = {"points": str(len(alphas)), "range": f"{lo},{hi}",
              "train_examples": str(sum(len(y) for _, y in train_batches)),
              "test_examples": str(sum(len(y) for _, y in test_batches))}
    tracker = Tracker(tracking_uri)
    # a checkpoint file belongs to no experiment: record it where samtune train records
    experiment_id = (tracker.ensure_experiment(schema.DEFAULT_EXPERIMENT_TRAIN) if Path(sources[0]).exists()
                     else tracker.run_experiment_id(run_of(sources[0], tracker)))
    run_id = tracker.record_interpolation(experiment_id, sources, frame, params=params, files=files)
    return frame, run_id
