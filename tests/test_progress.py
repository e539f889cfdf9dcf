"""The search's progress display (samtune.search.callbacks.SearchProgress), driven
directly with fake trials and a fake clock: what the plain lines say and when they
come, and that the live block's cursor codes appear only in live style."""

import io
import pickle
from types import SimpleNamespace

import pytest

from samtune.search import configure_ray_environment

# callbacks imports Ray, which reads its binding settings once, when imported: set them
# first, or every later Ray test in this pytest process binds to an external address
configure_ray_environment(local=True)

from samtune.search import callbacks  # noqa: E402
from samtune.search.callbacks import SearchProgress, progress_style  # noqa: E402

ESC = "\x1b["


def up(n):
    """The live block's erase: back over its n lines, clear to the end of the screen."""
    return f"\r{ESC}{n}A{ESC}J"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Stream(io.StringIO):
    def __init__(self, tty=False):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty

    def take(self) -> str:
        """What was written since the last take."""
        text = self.getvalue()
        self.seek(0)
        self.truncate()
        return text


def trial(trial_id, status="RUNNING", config=None, last_result=None):
    return SimpleNamespace(trial_id=trial_id, status=status, config=config or {}, last_result=last_result)


@pytest.fixture(autouse=True)
def no_style_override(monkeypatch):
    monkeypatch.delenv(callbacks.PROGRESS_ENV, raising=False)
    monkeypatch.delenv("TERM", raising=False)


def progress(tty=False, total=4):
    clock, stream = Clock(), Stream(tty)
    return SearchProgress("test_error", "min", total, stream=stream, clock=clock), clock, stream


def start(callback, clock, trials, at):
    clock.now = at
    callback.setup()
    for t in trials:
        callback.on_trial_start(0, trials, t)


def step(callback, clock, trials, at):
    clock.now = at
    callback.on_step_end(0, trials)


def test_plain_style_prints_a_status_line_at_most_every_30_s():
    callback, clock, stream = progress()
    a, b = trial("a_00000", config={"epochs": 12}), trial("b_00001")
    trials = [a, b, trial("c_00002", status="PENDING")]
    start(callback, clock, trials, at=100.0)
    clock.now = 105.0
    callback.on_trial_result(0, trials, a, {"epoch": 1, "test_error": 0.3, "epochs": 12})
    callback.on_trial_result(0, trials, b, {"epoch": 1, "test_error": 0.5, "epochs": 8})
    callback.on_trial_result(0, trials, b, {"epoch": 2, "test_error": 0.25, "epochs": 8})
    for at in (100.1, 110.0, 129.9):
        step(callback, clock, trials, at)
    assert stream.take() == ""  # nothing before a full period
    step(callback, clock, trials, 130.0)
    assert stream.take() == (
        "[    30s] trials finished 0/4, running 2; best test_error = - | "
        "a_00000 epoch 1/12 test_error 0.3000 30s, b_00001 epoch 2/8 test_error 0.2500 30s\n")
    for at in (131.0, 159.0):
        step(callback, clock, trials, at)
    assert stream.take() == ""
    step(callback, clock, trials, 160.5)
    assert "a_00000 epoch 1/12 test_error 0.3000 1m00s" in stream.take()


def test_status_line_counts_the_schedulers_progress_unit():
    clock, stream = Clock(), Stream(False)
    callback = SearchProgress("test_error", "min", 2, stream=stream, clock=clock, unit="gradient_evaluations")
    a = trial("a_00000", config={"epochs": 4})
    start(callback, clock, [a], at=0.0)
    callback.on_trial_result(0, [a], a, {"epoch": 1, "test_error": 0.3, "gradient_evaluations": 24})
    step(callback, clock, [a], 30.0)
    assert "a_00000 epoch 1/4 gradient_evaluations 24 test_error 0.3000 30s" in stream.take()


def test_first_status_line_comes_once_a_trial_runs():
    """A period with nothing running (Ray still starting its workers) prints nothing
    and does not postpone the first status line."""
    callback, clock, stream = progress()
    a = trial("a_00000", status="PENDING", config={"epochs": 3})
    trials = [a]
    clock.now = 0.0
    callback.setup()
    step(callback, clock, trials, 35.0)
    assert stream.take() == ""
    a.status = "RUNNING"
    callback.on_trial_start(0, trials, a)
    step(callback, clock, trials, 36.0)
    assert stream.take().endswith("| a_00000 epoch -/3 test_error - 1s\n")


def test_plain_style_keeps_one_line_per_finished_trial():
    callback, clock, stream = progress(total=3)
    a, b, c = trial("a_00000"), trial("b_00001"), trial("c_00002")
    trials = [a, b, c]
    start(callback, clock, trials, at=0.0)
    clock.now = 12.0
    a.last_result = {"test_error": 0.2}
    callback.on_trial_complete(0, trials, a)
    assert stream.take() == "[    12s] trials finished 1/3, running 2; best test_error = 0.2000 (a_00000)\n"
    a.status = "TERMINATED"
    clock.now = 13.0
    b.last_result = {"test_error": 0.1}
    callback.on_trial_complete(0, trials, b)
    assert stream.take() == "[    13s] trials finished 2/3, running 1; best test_error = 0.1000 (b_00001)\n"
    b.status = "TERMINATED"
    clock.now = 14.0
    callback.on_trial_error(0, trials, c)
    assert stream.take() == "[    14s] trials finished 3/3, running 0; best test_error = 0.1000 (b_00001)\n"
    c.status = "ERROR"
    step(callback, clock, trials, 100.0)  # nothing runs: no status line
    assert stream.take() == ""


def test_a_restored_search_counts_the_trials_finished_before_it_in_the_best():
    """After --resume no completion event comes for the trials that finished before the
    interruption; the best so far is still theirs when it is better."""
    callback, clock, stream = progress(total=3)
    earlier = trial("a_00000", status="TERMINATED", last_result={"test_error": 0.022})
    worse, running = trial("b_00001", last_result={"test_error": 0.899}), trial("c_00002")
    trials = [earlier, worse, running]
    start(callback, clock, [worse, running], at=0.0)  # Tune restores the search: the callback starts afresh
    clock.now = 5.0
    callback.on_trial_complete(0, trials, worse)
    assert stream.take() == "[     5s] trials finished 2/3, running 1; best test_error = 0.0220 (a_00000)\n"


def test_epochs_before_the_first_result_and_nan_errors():
    callback, clock, stream = progress()
    a, b = trial("a_00000", config={"epochs": 5}), trial("b_00001")
    trials = [a, b]
    start(callback, clock, trials, at=0.0)
    clock.now = 3725.0
    callback.on_trial_result(0, trials, b, {"epoch": 1, "test_error": float("nan")})
    step(callback, clock, trials, 3725.0)
    line = stream.take()
    assert "a_00000 epoch -/5 test_error - 1h02m" in line
    assert "b_00001 epoch 1/? test_error - 1h02m" in line


def test_live_style_redraws_a_block_in_place_on_a_terminal():
    callback, clock, stream = progress(tty=True)
    a, b = trial("a_00000", config={"epochs": 12}), trial("b_00001", config={"epochs": 12})
    trials = [a, b]
    start(callback, clock, trials, at=0.0)
    clock.now = 1.0
    callback.on_trial_result(0, trials, a, {"epoch": 3, "test_error": 0.0512, "epochs": 12})
    step(callback, clock, trials, 1.9)
    assert stream.take() == ""  # at most every 2 s
    step(callback, clock, trials, 2.0)
    first = stream.take()
    assert ESC not in first  # nothing on the screen yet to go back over
    assert first.splitlines() == [
        "[     2s] running 2, finished 0/4; best test_error = -",
        "  a_00000  epoch  3/12  test_error 0.0512      2s",
        "  b_00001  epoch  -/12  test_error      -      2s",
    ]
    step(callback, clock, trials, 4.5)
    second = stream.take()
    assert second.startswith(up(3))  # up over the 3 lines, clear, draw again
    assert "4s" in second.splitlines()[1]
    # a finished trial: block off, its permanent line, then the block again
    clock.now = 5.0
    a.last_result = {"test_error": 0.04}
    callback.on_trial_complete(0, trials, a)
    out = stream.take()
    assert out.startswith(up(3))
    lines = out[len(up(3)):].splitlines()
    assert lines == [
        "[     5s] trials finished 1/4, running 1; best test_error = 0.0400 (a_00000)",  # stays
        "[     5s] running 1, finished 1/4; best test_error = 0.0400 (a_00000)",
        "  b_00001  epoch  -/12  test_error      -      5s",
    ]
    callback.on_experiment_end(trials)
    assert stream.take() == up(2)  # the summary starts on a clean screen


@pytest.mark.parametrize(("env", "tty", "expected"), [
    (None, False, "plain"), (None, True, "live"), ("plain", True, "plain"), ("live", False, "live"),
    ("auto", True, "live"), ("LIVE", False, "live"), ("bogus", False, "plain")])
def test_style_follows_the_terminal_unless_overridden(monkeypatch, env, tty, expected):
    if env is not None:
        monkeypatch.setenv(callbacks.PROGRESS_ENV, env)
    assert progress_style(Stream(tty)) == expected


def test_dumb_terminal_gets_plain_lines(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert progress_style(Stream(tty=True)) == "plain"


@pytest.mark.parametrize(("env", "tty", "codes"), [
    (None, False, False), (None, True, True), ("plain", True, False), ("live", False, True)])
def test_cursor_codes_only_in_live_style(monkeypatch, env, tty, codes):
    if env is not None:
        monkeypatch.setenv(callbacks.PROGRESS_ENV, env)
    callback, clock, stream = progress(tty=tty)
    a = trial("a_00000", config={"epochs": 2})
    trials = [a]
    start(callback, clock, trials, at=0.0)
    for at in range(1, 100):
        clock.now = float(at)
        callback.on_trial_result(0, trials, a, {"epoch": 1, "test_error": 0.5})
        step(callback, clock, trials, float(at))
    a.last_result = {"test_error": 0.5}
    callback.on_trial_complete(0, trials, a)
    callback.on_experiment_end(trials)
    out = stream.getvalue()
    assert (ESC in out) is codes
    assert "trials finished 1/4" in out
    if not codes:  # plain: a status line every 30 s (at 30, 60, 90) and the end-of-trial line
        assert len(out.splitlines()) == 4


def test_callback_pickles():
    # Ray pickles the run config, callbacks included
    callback = SearchProgress("test_error", "min", 4)
    assert pickle.loads(pickle.dumps(callback)).total == 4


def test_trial_results_carry_the_planned_epochs(monkeypatch):
    """The trainable's Tune results hold ``epochs``, which the display shows as the total."""
    from samtune.search import trainable
    from samtune.search.context import TrialContext

    reported = []
    monkeypatch.setattr(trainable.tune, "report", lambda metrics, checkpoint=None: reported.append(metrics))
    run = SimpleNamespace(run_id="run", on_epoch=lambda *args, **kwargs: None)
    context = TrialContext(tracking_uri="sqlite:///unused.db", experiment_id="1", parent_run_id="p")
    sink = trainable.RaySink(context, run, epochs=7)
    record = {"epoch": 2, "test_error": 0.1} | {k: 0.0 for k in ("train_error", "gen_gap", "test_loss",
                                                                  "train_loss", "steps", "samples_seen",
                                                                  "gradient_evaluations")}
    sink.on_epoch(record, lambda: {}, None)
    assert reported[0]["epochs"] == 7 and reported[0]["epoch"] == 2


@pytest.mark.slow
def test_a_search_shows_each_running_trials_epoch(tmp_path, monkeypatch, capsys, local_ray, mlflow_uri):
    """A real (tiny) search in plain style, the status period shortened to 0 s."""
    from samtune.search import run_search
    from samtune.spec import parse_search_spec

    monkeypatch.setenv(callbacks.PROGRESS_ENV, "plain")
    monkeypatch.setattr(callbacks, "PLAIN_REFRESH_S", 0.0)
    spec = parse_search_spec({
        "name": "progress-e2e", "samples": 2, "concurrency": 2, "resources": {"cpu": 1}, "seed": 3,
        "trial": {"epochs": 3, "batch_size": 64, "batch_growth_ratio": 1.0, "batch_stages": 1,
                  "train_eval_examples": 256, "sharpness": ["norm_param_l2"]},
        "search": {"rho": {"uniform": [0.02, 0.1]}}})
    assert run_search(spec, tracking_uri=mlflow_uri, storage=str(tmp_path / "ray")) == 0
    out = capsys.readouterr().out
    assert ESC not in out
    status = [line for line in out.splitlines() if " | " in line and "running" in line]
    assert any("epoch -/3" in line for line in status) or any("epoch 1/3" in line for line in status)
    assert any(" epoch 2/3 test_error 0." in line for line in status), status
    ended = [line for line in out.splitlines() if line.startswith("[") and " | " not in line]
    assert len(ended) == 2 and "trials finished 2/2, running 0" in ended[-1]
