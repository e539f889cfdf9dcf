"""Data-parallel trials: ``samtune.trial.train`` on two gloo workers (127.0.0.1).

Without Ray: the workers are processes of this test with a process group of their
own, the way Ray Train starts them.  With Ray: a two-worker digits trial through
``samtune search`` into MLflow, with a fault after its first epoch that Tune retries
from the Ray Train checkpoint, against an uninterrupted twin in the same search.
"""

from __future__ import annotations

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
        self.records, self.saved, self.stop_after = [], None, stop_after

    def on_epoch(self, record, checkpoint, final):
        state = checkpoint()  # every worker takes part
        self.records.append(record)
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
