"""Driver-side Tune callbacks: closing MLflow runs, and the search's progress display."""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from samtune import schema
from samtune.tracking.store import Tracker


class MlflowRunCloser(tune.Callback):
    """Ends the MLflow run of a trial Tune stopped early (ASHA) or that failed for
    good: code after a function trainable's last report never runs.  Every ended
    trial's run is tagged with where its last Ray checkpoint is (a trial stopped early
    is measured from it)."""

    def __init__(self, tracker: Tracker, experiment_id: str, parent_run_id: str):
        self.tracker, self.experiment_id, self.parent_run_id = tracker, experiment_id, parent_run_id

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, schema.PRUNED)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, schema.FAILED, _trial_error(trial))

    def _close(self, trial, status: str, error: str | None = None) -> None:
        run_id = self.tracker.find_trial_run(self.experiment_id, trial.trial_id, self.parent_run_id)
        if not run_id:
            return
        if (location := checkpoint_location(trial)) is not None:
            self.tracker.set_tag(run_id, schema.TAG_CHECKPOINT, location)
        if self.tracker.run_is_active(run_id):
            self.tracker.end_trial_run(run_id, status, error)


def checkpoint_location(trial) -> str | None:
    """The trial's latest checkpoint: a folder, or a URI on remote storage."""
    checkpoint = getattr(trial, "checkpoint", None)
    return None if checkpoint is None else checkpoint_uri(checkpoint)


def checkpoint_uri(checkpoint) -> str:
    """Where a Ray checkpoint is, as ``ray.train.Checkpoint(...)`` reads it back."""
    kind = checkpoint.filesystem.type_name if checkpoint.filesystem is not None else "local"
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def _trial_error(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text()[-2000:] if path else "trial errored"
    except OSError:
        return "trial errored"


# -- progress --------------------------------------------------------------------
PROGRESS_ENV = "SAMTUNE_PROGRESS"  # plain | live | auto (the default: live on a terminal)
PROGRESS_STYLES = ("plain", "live")
TOTAL_EPOCHS_KEY = "epochs"  # a trial's planned epochs, in each of its Tune results
LIVE_REFRESH_S = 2.0  # terminal: redraw the running trials at most this often
PLAIN_REFRESH_S = 30.0  # log (CI, a pipe): one status line at most this often
# back to the start of the line n up (the block's first), then clear to the end of the screen
_UP_AND_CLEAR = "\r\x1b[{n}A\x1b[J"


def progress_style(stream=None) -> str:
    """``live`` (a block redrawn in place) or ``plain`` (lines only): ``$SAMTUNE_PROGRESS``
    when set to one of them, else live exactly when ``stream`` (stdout) is a terminal."""
    chosen = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if chosen in PROGRESS_STYLES:
        return chosen
    if chosen not in ("", "auto"):
        print(f"{PROGRESS_ENV}={chosen!r} is not one of plain, live, auto: using auto", file=sys.stderr)
    stream = stream or sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return "live" if tty and os.environ.get("TERM") != "dumb" else "plain"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _number(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(value) else f"{value:.4f}"


@dataclass
class _Running:
    """What the driver knows of one running trial."""

    started: float
    epoch: int | None = None
    total: int | None = None
    test_error: float | None = None
    spent: float | None = None  # the progress unit's count, when it is not epochs


class SearchProgress(tune.Callback):
    """What the search is doing, on the driver's stdout.

    Always one line per finished trial (how many finished and run, the best so far).
    While trials run, either (``live``, a terminal) a small block with one line per
    running trial (epoch out of its planned epochs, latest test error, time since it
    started), redrawn in place with ANSI codes at most every ``LIVE_REFRESH_S``; or
    (``plain``: CI logs, pipes) a status line with the same facts at most every
    ``PLAIN_REFRESH_S``, never a cursor code.  ``progress_style`` picks the style.

    Tune calls ``on_step_end`` every ~0.1 s, so refreshing there with a time check
    costs nothing between refreshes.  ``stream`` (default stdout) and ``clock``
    (default ``time.monotonic``) are for tests."""

    def __init__(self, metric: str, mode: str, total: int, *, stream=None, clock=None,
                 style: str | None = None, unit: str | None = None):
        if style is not None and style not in PROGRESS_STYLES:
            raise ValueError(f"style = {style!r}: allowed {', '.join(PROGRESS_STYLES)}")
        self.metric, self.mode, self.total = metric, mode, total
        # what the scheduler counts progress in besides epochs (gradient_evaluations,
        # samples_seen): shown beside each running trial's epoch
        self.unit = unit
        self._stream, self._clock, self._style = stream, clock, style
        self._reset()

    def _reset(self) -> None:
        self.best, self.best_trial = None, None
        self.started = self._now()
        self.ended: set[str] = set()
        self.running: dict[str, _Running] = {}
        self._last_refresh = self.started  # the first status line comes a full period after the start
        self._drawn = 0  # lines of the live block now on the screen

    # -- Tune's hooks ------------------------------------------------------------------
    def setup(self, **info):
        self._reset()  # a restored search starts its clock again

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.trial_id] = _Running(self._now(), total=self._planned_epochs(trial, {}))
        self.ended.discard(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        state = self._running(trial)
        epoch = result.get(schema.EPOCH)
        if epoch is not None and not (isinstance(epoch, float) and math.isnan(epoch)):
            state.epoch = int(epoch)
        state.total = self._planned_epochs(trial, result) or state.total
        if "test_error" in result:
            state.test_error = result["test_error"]
        if self.unit and self.unit in result:
            state.spent = result[self.unit]

    def on_step_end(self, iteration, trials, **info):
        now = self._now()
        period = LIVE_REFRESH_S if self.style == "live" else PLAIN_REFRESH_S
        if now - self._last_refresh < period:
            return
        running = self._running_trials(trials)
        if self.style == "live":
            self._redraw(trials, running)
        elif running:  # (with none running yet, the first trial's start does not wait a full period)
            self._write(self._header(trials, running) + " | "
                        + ", ".join(self._trial_summary(tid, live=False) for tid in running))
        else:
            return
        self._last_refresh = now

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._consider(trial)
        self._ended(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trials, trial)

    def on_experiment_end(self, trials, **info):
        self._clear()  # the summary follows on a clean screen

    # -- state -----------------------------------------------------------------------------
    @property
    def style(self) -> str:
        if self._style is None:
            self._style = progress_style(self._stream)
        return self._style

    def _now(self) -> float:
        return (self._clock or time.monotonic)()

    def _running(self, trial) -> _Running:
        if trial.trial_id not in self.running:  # a result before any start (a restored search)
            self.running[trial.trial_id] = _Running(self._now(), total=self._planned_epochs(trial, {}))
        return self.running[trial.trial_id]

    @staticmethod
    def _planned_epochs(trial, result) -> int | None:
        total = result.get(TOTAL_EPOCHS_KEY) or (getattr(trial, "config", None) or {}).get(TOTAL_EPOCHS_KEY)
        try:
            return int(total) if total else None
        except (TypeError, ValueError):
            return None

    def _running_trials(self, trials) -> list[str]:
        """Ids of the running trials, in Tune's order (it lists trials as it creates them)."""
        return [t.trial_id for t in trials
                if t.status == "RUNNING" and t.trial_id not in self.ended and t.trial_id in self.running]

    def _consider(self, trial) -> None:
        """Take a finished trial's objective into the best so far."""
        value = (trial.last_result or {}).get(self.metric)
        if value is not None and not math.isnan(value) and self._better(value):
            self.best, self.best_trial = value, trial.trial_id

    def _better(self, value: float) -> bool:
        return self.best is None or (value < self.best if self.mode == "min" else value > self.best)

    def _ended(self, trials, trial) -> None:
        # the trial's own status changes only after the callbacks have run
        self.ended.add(trial.trial_id)
        self.running.pop(trial.trial_id, None)
        self._clear()
        self._write(self._header(trials, self._running_trials(trials)))
        if self.style == "live":
            self._redraw(trials, self._running_trials(trials))

    # -- text -------------------------------------------------------------------------------
    def _header(self, trials, running: list[str], live: bool = False) -> str:
        """The search's state: the end-of-trial line, and the first line of the live
        block (worded differently, as it sits right under an end-of-trial line)."""
        done = len(self.ended | {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")})
        for finished in (t for t in trials if t.status == "TERMINATED"):
            self._consider(finished)  # those of a restored search finished before it: no event comes for them
        best = "-" if self.best is None else f"{self.best:.4f} ({self.best_trial})"
        stamp = f"[{self._now() - self.started:6.0f}s]"
        if live:
            return f"{stamp} running {len(running)}, finished {done}/{self.total}; best {self.metric} = {best}"
        return f"{stamp} trials finished {done}/{self.total}, running {len(running)}; best {self.metric} = {best}"

    def _trial_summary(self, trial_id: str, live: bool) -> str:
        """``<trial> epoch 3/12 test_error 0.0512 4m12s`` (``epoch -/12`` before its first
        result); aligned in columns in the live block."""
        state = self.running[trial_id]
        total = "?" if state.total is None else str(state.total)
        epoch = "-" if state.epoch is None else str(state.epoch)
        elapsed = _duration(self._now() - state.started)
        spent = f" {self.unit} {'-' if state.spent is None else int(state.spent)}" if self.unit else ""
        if not live:
            return f"{trial_id} epoch {epoch}/{total}{spent} test_error {_number(state.test_error)} {elapsed}"
        return (f"  {trial_id}  epoch {epoch:>{len(total)}}/{total}{spent}  "
                f"test_error {_number(state.test_error):>6}  {elapsed:>6}")

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def _clear(self) -> None:
        """Take the live block off the screen (a no-op in plain style)."""
        if self._drawn:
            stream = self._stream or sys.stdout
            stream.write(_UP_AND_CLEAR.format(n=self._drawn))
            stream.flush()
            self._drawn = 0

    def _redraw(self, trials, running: list[str]) -> None:
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)  # a wrapped line breaks the redraw
        lines = [self._header(trials, running, live=True)] if running else []
        lines += [self._trial_summary(tid, live=True) for tid in running]
        self._clear()
        if lines:
            self._write("\n".join(line[:width] for line in lines))
        self._drawn = len(lines)
