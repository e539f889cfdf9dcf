"""``samtune replay RUN_ID``: train one trial again on the schedule a population-based
search discovered for it.

A PBT trial's lineage (``lineage.json``, see :mod:`samtune.trial.lineage`) lists the segments
its final weights trained through: from which epoch on, with which values of ρ, α, lr,
batch size, weight decay and momentum.  Replay trains segment by segment exactly as the
search did: each segment starts from the checkpoint the previous one ended with, under
its own values, so the new run follows the winner's epoch-by-epoch schedule.  A run
without a lineage (never cloned) is replayed as the one segment it is.

Ray's ``PopulationBasedTrainingReplay`` replays from the policy logs in the search's Ray
folder; this reads the MLflow run, so any run id from the UI can be replayed anywhere.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import yaml

from samtune import schema
from samtune.commands.sources import run_of
from samtune.commands.train import ProgressSink, Sinks, print_summary
from samtune.config import TrialConfig, make_trial_config
from samtune.tracking.store import Tracker
from samtune.tracking.trial_run import TrialRun
from samtune.trial.lineage import schedule_csv, segment
from samtune.trial.loop import TrialResult, open_data, train


class _SegmentEnd(Exception):
    """Raised by :class:`_Until` once its segment's last epoch is recorded."""


class _Until:
    """Passes epochs to ``sink``; after epoch ``end`` keeps the checkpoint and stops."""

    def __init__(self, sink, end: int | None):
        self.sink, self.end, self.saved = sink, end, None

    def on_epoch(self, record, checkpoint, final) -> None:
        self.sink.on_epoch(record, checkpoint, final)
        if final is None and record[schema.EPOCH] == self.end:
            self.saved = checkpoint()
            raise _SegmentEnd


def segment_configs(config: dict[str, Any], segments: list[dict[str, Any]]) -> list[TrialConfig]:
    """The trial config of each segment: the run's own, with the segment's values."""
    return [make_trial_config(config | seg["values"], where=f"segment from epoch {seg['epoch']}")
            for seg in segments]


def train_segments(configs: list[TrialConfig], segments: list[dict[str, Any]], sink, data=None) -> TrialResult:
    """Train through the segments, each resumed from where the previous one stopped
    (all on ``data``: segments differ in optimizer and batch values, not in data)."""
    state = None
    data = open_data(configs[0]) if data is None else data
    ends = [nxt["epoch"] for nxt in segments[1:]] + [None]
    for config, end in zip(configs, ends, strict=True):
        until = _Until(sink, end)
        try:
            return train(config, until, resume=state, data=data)
        except _SegmentEnd:
            state = until.saved
    raise RuntimeError("the last segment ended before its trial did")


def read_schedule(tracker: Tracker, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the run's config, its segments); one segment from epoch 0 when it has no lineage."""
    config = yaml.safe_load(tracker.download_artifact(run_id, schema.ARTIFACT_CONFIG).read_text())
    try:
        lineage = json.loads(tracker.download_artifact(run_id, schema.ARTIFACT_LINEAGE).read_text())
    except FileNotFoundError:
        return config, [segment(0, "", run_id, config)]
    return config, lineage["segments"]


class _ScheduleSink:
    """Logs the schedule the replay trained on before the run is closed."""

    def __init__(self, run: TrialRun, segments: list[dict[str, Any]]):
        self.run, self.segments = run, segments

    def on_epoch(self, record, checkpoint, final) -> None:
        if final is not None:
            self.run.log_text(schedule_csv(final.history, self.segments), schema.ARTIFACT_SCHEDULE)


def replay_run(source: str, *, tracking_uri: str | None, device: str) -> int:
    """Train the trial of ``source`` (a trial run's id or a ``models:/`` URI) again."""
    tracker = Tracker(tracking_uri)
    run_id = run_of(source, tracker)
    config, segments = read_schedule(tracker, run_id)
    configs = segment_configs(config | {"device": device}, segments)
    data = open_data(configs[0])
    experiment_id = tracker.run_experiment_id(run_id)
    name = f"replay-{run_id[:8]}-{uuid.uuid4().hex[:6]}"
    run = TrialRun.start(tracker, experiment_id, configs[-1], run_name=name, trial_id=name,
                         tags={schema.TAG_REPLAY_OF: run_id}, keep_model=True)
    run.log_datasets(data.records())
    run.log_text(json.dumps({"segments": segments}, indent=2), schema.ARTIFACT_LINEAGE)
    sink = Sinks(_ScheduleSink(run, segments), run, ProgressSink(configs[-1].epochs))
    started = time.perf_counter()
    try:
        result = train_segments(configs, segments, sink, data)
    except BaseException as err:
        run.end(schema.FAILED, f"{type(err).__name__}: {err}")
        raise
    print(f"replayed {len(segments)} segment(s) of run {run_id}")
    print_summary(result, time.perf_counter() - started, tracker.uri, experiment_id, run.run_id)
    return 0 if result.status == schema.COMPLETED else 1
