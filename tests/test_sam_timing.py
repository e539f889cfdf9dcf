"""Late and intermittent SAM (``sam_start``, ``sam_every``): which steps take the two
passes, against closed forms on a quadratic; gradient evaluations and budgets counted
from the step pattern; plain steps of a data-parallel trial averaged by DDP."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from samtune.budgets import capacity, with_budget
from samtune.config import ConfigError, make_trial_config
from samtune.data.catalogue import CATALOGUE
from samtune.schedules import SamTiming
from samtune.trial.loop import Trial, train
from samtune.trial.replica import Replica

N_TRAIN = CATALOGUE["digits"].train_size
FAST = {"batch_size": 64, "batch_growth_ratio": 1.0, "batch_stages": 1, "train_eval_examples": 64,
        "sharpness": [], "eval_batch_size": 1024, "num_threads": 1, "device": "cpu"}
A = np.array([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.4]])
W0 = np.array([1.0, -2.0, 0.5])
LR, RHO = 0.1, 0.05


class Quadratic(torch.nn.Module):
    """f(w) = ½ wᵀAw as a 'model' whose outputs carry the loss (the batch is ignored)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(W0))
        self.register_buffer("a", torch.tensor(A))

    def forward(self, x):
        return (0.5 * self.w @ self.a @ self.w).expand(len(x), 2)


def quadratic_trial(sam_start: float, sam_every: int, steps: int) -> Trial:
    """A digits trial whose model, optimizer and loss are swapped for the quadratic."""
    trial = Trial(make_trial_config(FAST | {"optimizer": "sam", "momentum": 0.0, "weight_decay": 0.0,
                                            "epochs": 1, "sam_start": sam_start, "sam_every": sam_every}))
    trial.model = trial.forward_model = Quadratic()
    trial.optimizer = type(trial.optimizer)(trial.model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    trial.loss_fn = lambda outputs, targets: outputs[0, 0]
    return trial


def plain(w):
    return w - LR * A @ w


def sam(w):
    g = A @ w
    return w - LR * A @ (w + RHO * g / np.linalg.norm(g))


def test_late_intermittent_steps_follow_the_closed_forms():
    steps = 12
    trial = quadratic_trial(sam_start=0.5, sam_every=3, steps=steps)
    x, y = torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)
    pattern, w = [], W0.copy()
    for i in range(steps):
        two_pass = trial.two_pass_now(0, i, steps)
        trial.train_step(x, y, two_pass=two_pass)
        pattern.append(two_pass)
        w = sam(w) if two_pass else plain(w)
        np.testing.assert_allclose(trial.model.w.detach().numpy(), w, rtol=1e-12, atol=1e-14)
        assert trial.optimizer._perturbed is None and trial.model.w.grad is None
    # progress i/12 reaches 0.5 at step 6; then every third step from there
    assert pattern == [False] * 6 + [True, False, False, True, False, False]
    assert trial.state.sam_steps == 6


def test_timing_defaults_are_every_step_and_one_pass_optimizers_have_none():
    assert make_trial_config({}).sam_timing == SamTiming()
    assert SamTiming().always
    assert all(SamTiming().two_pass_at(i, 0.0) for i in range(5))
    assert make_trial_config({"optimizer": "sgd"}).sam_timing is None
    with pytest.raises(ConfigError, match="always takes one"):
        make_trial_config({"optimizer": "sgd", "sam_every": 2})


def test_gradient_evaluations_of_a_trial_count_its_plain_and_sam_steps():
    values = FAST | {"optimizer": "gsam", "epochs": 2, "sam_start": 0.5, "sam_every": 3}
    result = train(make_trial_config(values))
    per_epoch = N_TRAIN // 64
    # progress (epoch + i/n)/2 reaches 0.5 with the second epoch: a third of its steps take two passes
    sam_steps = math.ceil(per_epoch / 3)
    expected = 2 * per_epoch + sam_steps
    assert [r["gradient_evaluations"] for r in result.history] == [per_epoch, expected]
    assert capacity(values, "gradient_evaluations") == expected
    assert capacity(values, "steps") == 2 * per_epoch


def late_budget_steps(budget: int, start: float, every: int) -> int:
    """Steps that spend ``budget`` evaluations: plain until start·budget are spent, then
    cycles of one SAM and every − 1 plain steps; a last evaluation is a plain step."""
    before = math.ceil(start * budget)
    cycles, rest = divmod(budget - before, every + 1)
    return before + cycles * every + {0: 0, 1: 1}.get(rest, rest - 1)


@pytest.mark.parametrize("budget", [41, 44])  # 44 ends with one evaluation left: a plain step
def test_gradient_evaluation_budget_is_spent_exactly_with_late_sam(budget):
    values = FAST | {"optimizer": "sam", "epochs": 4, "sam_start": 0.5, "sam_every": 2,
                     "budget": budget, "budget_unit": "gradient_evaluations"}
    result = train(make_trial_config(values))
    assert result.final["final_gradient_evaluations"] == budget
    assert result.final["final_steps"] == late_budget_steps(budget, 0.5, 2) == {41: 34, 44: 37}[budget]


def test_a_late_sam_budget_gets_the_epochs_its_step_pattern_needs():
    # 44 evaluations take 37 steps of 12 per epoch: 4 epochs, where always-SAM would take 2
    values = FAST | {"optimizer": "sam", "epochs": 2, "sam_start": 0.5, "sam_every": 2}
    assert with_budget(values, 44, "gradient_evaluations")["epochs"] == 4
    assert with_budget(FAST | {"optimizer": "sam", "epochs": 2}, 44, "gradient_evaluations")["epochs"] == 2
    with pytest.raises(ConfigError, match="cannot be spent in epochs = 3"):
        make_trial_config(values | {"epochs": 3, "budget": 44, "budget_unit": "gradient_evaluations"})


class StopAfterFirstEpoch:
    def __init__(self):
        self.saved = None

    def on_epoch(self, record, checkpoint, final):
        self.saved = checkpoint()
        raise KeyboardInterrupt


def test_a_resumed_late_sam_trial_keeps_counting_from_sam_start():
    # sam_start 0.4 of 2 epochs begins inside the first: the count since then crosses the checkpoint
    config = make_trial_config(FAST | {"optimizer": "sam", "epochs": 2, "sam_start": 0.4, "sam_every": 5})
    whole = train(config)
    stopped = StopAfterFirstEpoch()
    with pytest.raises(KeyboardInterrupt):
        train(config, stopped)
    assert stopped.saved["sam_steps"] == 12 - math.ceil(0.4 * 24)
    resumed = train(config, resume=stopped.saved)
    for key in ("gradient_evaluations", "train_loss", "test_loss"):
        assert resumed.history[-1][key] == whole.history[-1][key], key


# -- data-parallel: a plain step's gradient is averaged by DDP -------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        config = make_trial_config(FAST | {"optimizer": "gsam", "epochs": 1, "sam_every": 2, "budget": 5,
                                           "batch_size": 32, "train_eval_examples": 0})
        trial = Trial(config, replica=Replica(rank, world))
        trial.run_epoch(0)
        # BN statistics stay per worker until epoch_record aligns them; the weights must agree
        torch.save({"params": dict(trial.model.named_parameters()), "evals": trial.state.gradient_evaluations},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned workers: ~15 s, most of it importing torch twice
def test_data_parallel_plain_and_sam_steps_keep_the_workers_equal(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert first["evals"] == second["evals"] == 2 + 1 + 2 + 1 + 2
    for name, tensor in first["params"].items():
        assert torch.equal(tensor, second["params"][name]), name
