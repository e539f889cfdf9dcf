"""Harada & Iiduka's ViT schedules: warmup inside a growing batch, AdamW state across stages.

The reference is ``iiduka-researches/GSAM_batch_inc`` ``main_ViT.py`` with its scheduler
``gsam/scheduler.py``: for +B it builds one loader per stage (batch 64, 128, 256, 512; 25
epochs each, RASampler with three passes per epoch) and a fresh ``CosineScheduler`` with
``warmup_steps = 10 * len(loader)`` in the first stage only, starting at ``lr * 0.01``;
the AdamW instance is created once, so its moments carry over.  The scheduler is
transcribed below and compared with samtune's schedule step by step.
"""

from __future__ import annotations

import itertools
import math

import pytest

from samtune.config import make_trial_config
from samtune.schedules import TrialSchedule
from samtune.spec import load_search_spec

CIFAR_TRAIN = 50_000


class ReferenceScheduler:
    """``gsam/scheduler.py`` ``CosineScheduler``: value at the scheduler's step t."""

    def __init__(self, total_steps: int, max_value: float, min_value: float, init_value: float,
                 warmup_steps: int) -> None:
        self.total, self.max, self.min = total_steps, max_value, min_value
        self.init, self.warmup = init_value, warmup_steps

    def value(self, t: int) -> float:
        if t < self.warmup:
            return self.init + (self.max - self.init) * t / self.warmup
        if t == self.warmup:
            return self.max
        phase = (t - self.warmup) / (self.total - self.warmup) * math.pi
        return self.min + (self.max - self.min) * (math.cos(phase) + 1.0) / 2.0


def reference_plus_b(lr: float = 1e-3, warmup_epochs: int = 10, stage_epochs: int = 25,
                     batches=(64, 128, 256, 512), passes: int = 3) -> list[tuple[int, int, float]]:
    """(epoch, batch, lr) of every optimizer step of the paper's +B run, with the lr its
    scheduler computes for that step (its one-step lag behind the optimizer is left out)."""
    steps = []
    for stage, batch in enumerate(batches):
        per_epoch = passes * CIFAR_TRAIN // batch  # RASampler, drop_last
        first = stage == 0
        scheduler = ReferenceScheduler(stage_epochs * per_epoch, lr, lr, lr * 0.01 if first else lr,
                                       warmup_epochs * per_epoch if first else 0)
        for t in range(stage_epochs * per_epoch):
            steps.append((stage * stage_epochs + t // per_epoch, batch, scheduler.value(t)))
    return steps


def cells(space: str) -> dict[str, dict]:
    """The grid's trials by "optimizer schedule" (cells() follows the axes' product order)."""
    spec = load_search_spec(space)
    names = [" ".join(combo) for combo in itertools.product(*spec.grid_axes().values())]
    return dict(zip(names, spec.cells(), strict=True))


@pytest.mark.parametrize("space", ["harada2024_cifar100_vit_tiny", "harada2024_cifar100_vit_small"])
def test_vit_spaces_are_the_papers_three_by_three_grid(space):
    grid = cells(space)
    assert set(grid) == {f"{o} {s}" for o in ("sgd", "sam", "gsam") for s in ("fix", "+B", "+C")}
    for values in grid.values():
        config = make_trial_config(values)
        assert (config.base_optimizer, config.lr, config.weight_decay, config.epochs) == ("adamw", 1e-3, 0.05, 100)
        assert (config.rho, config.alpha, config.label_smoothing, config.epoch_passes) == (0.6, 0.1, 0.1, 3)
        assert config.cutmix_prob + config.mixup_prob == 0.5 and config.random_erasing == 0.25
        assert config.pipeline == "device"


def test_plus_b_warmup_sits_in_the_first_stage_step_by_step():
    config = make_trial_config(cells("harada2024_cifar100_vit_tiny")["gsam +B"])
    schedule = TrialSchedule.from_config(config)
    reference = reference_plus_b()
    position = 0
    for epoch in range(config.epochs):
        batch = schedule.batch_size(epoch)
        per_epoch = schedule.steps_in_epoch(epoch, config.epoch_examples(CIFAR_TRAIN))
        for i in range(per_epoch):
            ref_epoch, ref_batch, ref_lr = reference[position]
            assert (epoch, batch) == (ref_epoch, ref_batch)
            assert schedule.lr(epoch + i / per_epoch, batch) == pytest.approx(ref_lr, rel=1e-9, abs=1e-15)
            position += 1
    assert position == len(reference)


def test_plus_b_values_at_the_stage_boundaries():
    config = make_trial_config(cells("harada2024_cifar100_vit_tiny")["gsam +B"])
    schedule = TrialSchedule.from_config(config)
    first_stage_steps = 3 * CIFAR_TRAIN // 64
    # warmup: 1e-5 at the first step, halfway at 5 epochs, 1e-3 from epoch 10 on
    assert schedule.lr(0.0, 64) == pytest.approx(1e-5)
    assert schedule.lr(5.0, 64) == pytest.approx((1e-5 + 1e-3) / 2)
    assert schedule.lr(10 - 1 / first_stage_steps, 64) < 1e-3
    for epoch, batch in ((10, 64), (24, 64), (25, 128), (49, 128), (50, 256), (75, 512), (99, 512)):
        assert schedule.batch_size(epoch) == batch
        assert schedule.lr(float(epoch), batch) == 1e-3  # no second warmup when the batch grows
        assert schedule.rho(float(epoch)) == 0.6
    assert [schedule.steps_in_epoch(e, config.epoch_examples(CIFAR_TRAIN)) for e in (0, 25, 50, 75)] == [
        2343, 1171, 585, 292]


def test_plus_c_cosine_ends_where_the_warmup_starts():
    config = make_trial_config(cells("harada2024_cifar100_vit_small")["sam +C"])
    schedule = TrialSchedule.from_config(config)
    per_epoch = 3 * CIFAR_TRAIN // 128
    reference = ReferenceScheduler(100 * per_epoch, 1e-3, 1e-5, 1e-5, 10 * per_epoch)
    for t in (0, 1, per_epoch * 10 - 1, per_epoch * 10, per_epoch * 55, 100 * per_epoch - 1):
        assert schedule.lr(t / per_epoch, 128) == pytest.approx(reference.value(t), rel=1e-9)


def test_adamw_moments_carry_across_a_batch_stage():
    """One AdamW instance for the whole trial: its step count runs on over the batch
    boundary (a rebuilt optimizer would restart it at the new stage's steps)."""
    from samtune.trial.loop import train

    config = make_trial_config({
        "model": "small_cnn", "optimizer": "gsam", "base_optimizer": "adamw", "lr": 1e-3,
        "weight_decay": 0.05, "epochs": 2, "batch_size": 16, "batch_growth_ratio": 2.0, "batch_stages": 2,
        "warmup_epochs": 0.5, "lr_final": 1e-5, "sharpness": [], "train_eval_examples": 64,
        "device": "cpu", "num_threads": 1})
    seen = []

    class Spy:
        def on_epoch(self, record, checkpoint, final):
            state = checkpoint()["optimizer"]["state"]
            seen.append((record["batch_size"], int(state[0]["step"]), state[0]["exp_avg"].abs().sum().item()))

    train(config, Spy())
    (batch_1, steps_1, moment_1), (batch_2, steps_2, _) = seen
    assert (batch_1, batch_2) == (16, 32)
    assert steps_1 == 797 // 16
    assert steps_2 == 797 // 16 + 797 // 32
    assert moment_1 > 0
