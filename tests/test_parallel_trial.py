"""Data-parallel trials: ``samtune.trial.train`` on two gloo workers (127.0.0.1).

Without Ray: the workers are processes of this test with a process group of their
own, the way Ray Train starts them.  With Ray: a two-worker digits trial through
``samtune search`` into MLflow, with a fault after its first epoch that Tune retries
from the Ray Train checkpoint, against an uninterrupted twin in the same search.
"""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from samtune.config import make_trial_config
from samtune.trial.replica import Replica

pytestmark = pytest.mark.slow  # two gloo processes per run

TRIAL = {"epochs": 2, "batch_size": 32, "batch_growth_ratio": 2.0, "batch_stages": 2, "optimizer": "gsam",
         "lr": 0.05, "train_eval_examples": 128, "sharpness": ["norm_param_l2", "ascent"],
         "sharpness_examples": 64, "device": "cpu", "num_threads": 1}


TIMINGS = ("epoch_seconds", "samples_per_second")  # each worker's own clock


def untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Keep:
    """A sink that keeps each epoch's record and the checkpoint after epoch ``stop_after``."""

    def __init__(self, stop_after: int | None = None):
        self.records, self.saved, self.last, self.stop_after = [], None, None, stop_after

    def on_epoch(self, record, checkpoint, final):
        state = checkpoint()  # every worker takes part
        self.records.append(record)
        self.last = state
        if record["epoch"] == self.stop_after:
            self.saved = state
            raise KeyboardInterrupt  # the worker dies here; its checkpoint survives


def worker(rank: int, world: int, port: int, out: str, mode: str) -> None:
    from samtune.trial.loop import train

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        config = make_trial_config(TRIAL)
        replica = Replica(rank, world)
        if mode == "interrupt":
            sink = Keep(stop_after=1)
            try:
                train(config, sink, replica=replica)
            except KeyboardInterrupt:
                torch.save(sink.saved, f"{out}/checkpoint{rank}.pt")
            return
        resume = torch.load(f"{out}/checkpoint{rank}.pt", weights_only=True) if mode == "resume" else None
        sink = Keep()
        result = train(config, sink, resume=resume, replica=replica)
        torch.save({"final": result.final, "records": sink.records}, f"{out}/{mode}{rank}.pt")
    finally:
        dist.destroy_process_group()


def run(world: int, folder, mode: str) -> None:
    mp.spawn(worker, args=(world, free_port(), str(folder), mode), nprocs=world, join=True)


@pytest.fixture(scope="module")
def two_worker_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dp")
    run(2, folder, "whole")
    run(2, folder, "interrupt")
    run(2, folder, "resume")
    return {(mode, rank): torch.load(folder / f"{mode}{rank}.pt", weights_only=False)
            for mode in ("whole", "resume") for rank in range(2)}


def test_workers_agree_and_count_global_batches(two_worker_runs):
    whole0, whole1 = two_worker_runs["whole", 0], two_worker_runs["whole", 1]
    assert untimed(whole0["records"]) == untimed(whole1["records"])  # every metric but the clock's
    first, second = whole0["records"]
    # global batches: 797 // 32 steps of 32, then 797 // 64 of 64, whatever the worker count
    assert (first["steps"], first["samples_seen"], first["batch_size"]) == (24, 24 * 32, 32)
    assert (second["steps"], second["samples_seen"]) == (24 + 12, 24 * 32 + 12 * 64)
    assert second["gradient_evaluations"] == 2 * 36
    # sharpness is measured once, on rank 0
    assert "sharpness_ascent" in whole0["final"] and "sharpness_ascent" not in whole1["final"]


def test_interrupted_and_resumed_equals_uninterrupted(two_worker_runs):
    for rank in range(2):
        whole, resumed = two_worker_runs["whole", rank], two_worker_runs["resume", rank]
        for key in ("train_loss", "test_loss", "test_error", "steps", "samples_seen", "lr", "rho"):
            assert resumed["records"][-1][key] == whole["records"][-1][key], (rank, key)
    # the final weights' norm and rank 0's sharpness: the same model, bit for bit
    assert two_worker_runs["resume", 0]["final"] == two_worker_runs["whole", 0]["final"]


def test_a_checkpoint_resumes_only_on_its_worker_count(two_worker_runs, tmp_path_factory):
    from samtune.trial.loop import Trial

    folder = next(p for p in tmp_path_factory.getbasetemp().iterdir() if p.name.startswith("dp"))
    state = torch.load(folder / "checkpoint0.pt", weights_only=True)
    with pytest.raises(ValueError, match="taken on 2 worker"):
        Trial(make_trial_config(TRIAL)).restore(state)


# -- workers that grow with the batch: three stages on 1, 2 and 4 workers -----------------
GROWING = {"epochs": 6, "batch_size": 32, "batch_growth_ratio": 2.0, "batch_stages": 3, "optimizer": "gsam",
           "lr": 0.05, "train_eval_examples": 128, "sharpness": ["norm_param_l2"], "device": "cpu",
           "num_threads": 1}


def growing_stages():
    from samtune.spec import WorkerLayout

    return WorkerLayout(per_worker_batch=32, max_workers=4).stages(GROWING)


def stage_worker(rank: int, world: int, port: int, out: str, until: int, start: str, save: str,
                 stop_after: int | None) -> None:
    """One worker of one stage: starts from ``start`` (any worker count), trains until
    epoch ``until`` (or dies after ``stop_after``), rank 0 saves the last checkpoint."""
    from samtune.trial.loop import train

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        resume = torch.load(f"{out}/{start}", weights_only=False)["state"] if start else None
        sink = Keep(stop_after=stop_after)
        try:
            result = train(make_trial_config(GROWING), sink, resume=resume, replica=Replica(rank, world),
                           until_epoch=until, regroup=True)
        except KeyboardInterrupt:
            result = None
        if rank == 0:
            last = sink.saved if sink.saved is not None else sink.last
            torch.save({"state": last, "records": sink.records, "final": None if result is None else result.final},
                       f"{out}/{save}")
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_stage(folder, world, until, start, save, stop_after=None):
    args = (world, free_port(), str(folder), until, start, save, stop_after)
    if world == 1:
        stage_worker(0, *args)
    else:
        mp.spawn(stage_worker, args=args, nprocs=world, join=True)
    return torch.load(folder / save, weights_only=False)


@pytest.fixture(scope="module")
def growing_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("growing")
    first, second, third = growing_stages()
    whole = [run_stage(folder, first.workers, first.end, "", "a1.pt")]
    whole.append(run_stage(folder, second.workers, second.end, "a1.pt", "a2.pt"))
    whole.append(run_stage(folder, third.workers, third.end, "a2.pt", "a3.pt"))
    # the twin dies after the first epoch of the second stage and resumes on its 2 workers;
    # where it ends, the third stage starts (the whole run shows that stage deterministic)
    cut = run_stage(folder, second.workers, second.end, "a1.pt", "b2cut.pt", stop_after=second.first + 1)
    resumed = run_stage(folder, second.workers, second.end, "b2cut.pt", "b2.pt")
    return {"whole": whole, "cut": cut, "resumed": resumed}


def test_growing_layout_plans_one_stage_per_worker_count():
    assert [(s.first, s.end, s.workers) for s in growing_stages()] == [(0, 2, 1), (2, 4, 2), (4, 6, 4)]


def test_stages_continue_one_trial_on_1_2_and_4_workers(growing_runs):
    records = [r for stage in growing_runs["whole"] for r in stage["records"]]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["workers"] for r in records] == [1, 1, 2, 2, 4, 4]
    assert [r["batch_size"] for r in records] == [32, 32, 64, 64, 128, 128]
    # the counters carry over each boundary: 797 digits give 24, 12, 6 global batches an epoch
    steps = [24, 24, 12, 12, 6, 6]
    assert [r["steps"] for r in records] == [sum(steps[:k + 1]) for k in range(6)]
    batches = [32, 32, 64, 64, 128, 128]
    assert [r["samples_seen"] for r in records] == [sum(s * b for s, b in zip(steps[:k + 1], batches))
                                                   for k in range(6)]
    assert records[-1]["gradient_evaluations"] == 2 * sum(steps)
    # each stage's checkpoint holds the whole history so far, and nothing after its end
    assert [len(stage["state"]["history"]) for stage in growing_runs["whole"]] == [2, 4, 6]
    assert growing_runs["whole"][0]["final"] is None and growing_runs["whole"][2]["final"] is not None
    # the lr schedule and the loss continue across the boundaries (no restart from scratch)
    assert all(math.isfinite(r["train_loss"]) for r in records)
    assert records[2]["train_loss"] < records[0]["train_loss"]


def test_a_stage_interrupted_and_resumed_ends_on_the_same_weights(growing_runs):
    whole_end, twin_end = growing_runs["whole"][1]["state"], growing_runs["resumed"]["state"]
    assert [r["epoch"] for r in growing_runs["cut"]["records"]] == [3]
    assert [r["epoch"] for r in growing_runs["resumed"]["records"]] == [4]
    assert untimed(growing_runs["resumed"]["records"]) == untimed(growing_runs["whole"][1]["records"][1:])
    for part in ("model", "optimizer", "loader"):
        assert_same(whole_end[part], twin_end[part], part)
    assert whole_end["torch_rng"] == [] or all(torch.equal(a, b) for a, b in
                                                zip(whole_end["torch_rng"], twin_end["torch_rng"]))


def assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_regrouped_checkpoint_needs_regroup(growing_runs, tmp_path_factory):
    from samtune.trial.loop import Trial

    state = growing_runs["whole"][1]["state"]  # taken on 2 workers
    with pytest.raises(ValueError, match="taken on 2 worker.*grow with the batch"):
        Trial(make_trial_config(GROWING)).restore(state)
    trial = Trial(make_trial_config(GROWING))
    trial.restore(state, regroup=True)  # one worker: the weights and the position carry over exactly
    assert trial.state.epoch == 4 and trial.state.steps == 72
    for key, value in state["model"].items():
        assert torch.equal(trial.model.state_dict()[key], value), key
