"""Schedules against closed forms written independently with numpy."""

import dataclasses
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from samtune.config import make_trial_config
from samtune.schedules import (
    LR_SHAPES,
    SCHEDULE_KEYS,
    TrialSchedule,
    batch_size_schedule,
    lr_batch_factor,
    lr_schedule,
    rho_schedule,
)

LR, LR_FINAL, EPOCHS, WARMUP, POWER = 0.1, 0.001, 200.0, 10.0, 2.0


def reference_lr(shape, e, *, lr=LR, lr_final=LR_FINAL, epochs=EPOCHS, warmup=WARMUP, power=POWER):
    """numpy closed forms of every shape, vectorized over e."""
    e = np.asarray(e, dtype=float)
    t = np.clip((e - warmup) / (epochs - warmup), 0.0, 1.0)
    decayed = {
        "constant": np.full_like(t, lr),
        "cosine": lr_final + 0.5 * (lr - lr_final) * (1 + np.cos(np.pi * t)),
        "linear": (1 - t) * lr + t * lr_final,
        "polynomial": lr_final + (lr - lr_final) * (1 - t) ** power,
        "exponential": np.exp((1 - t) * np.log(lr) + t * np.log(lr_final)),
        "step": lr * 0.2 ** ((t >= 0.3).astype(int) + (t >= 0.6) + (t >= 0.8)),
        "diminishing": lr / (np.floor(np.maximum(e - warmup, 0)) + 1) ** power,
        "diminishing_from1": lr / np.maximum(np.floor(np.maximum(e - warmup, 0)), 1) ** power,
        "diminishing_klogk": _klogk_closed_form(lr, np.floor(np.maximum(e - warmup, 0))),
    }[shape]
    ramp = lr_final + (lr - lr_final) * e / warmup if warmup > 0 else decayed
    return np.where(e < warmup, ramp, decayed)


def _klogk_closed_form(lr, k):
    j = 3 + np.floor((np.maximum(k, 1) - 1) / 5)
    return np.where(k < 1, lr, lr / (j * np.log(j)))


def make_lr(shape, **overrides):
    kwargs = dict(lr=LR, lr_final=LR_FINAL, epochs=EPOCHS, warmup_epochs=WARMUP, lr_power=POWER)
    kwargs.update(overrides)
    return lr_schedule(shape, **kwargs)


# points: start, inside warmup, just before / at the warmup boundary, mid-decay,
# milestone neighbourhoods, end
PROBES = [0.0, 3.7, WARMUP - 1e-6, WARMUP, 10.5, 11.0, 66.9, 67.0, 105.0, 123.4, 161.9, 162.0, 199.99, EPOCHS]


@pytest.mark.parametrize("shape", LR_SHAPES)
def test_lr_shape_matches_closed_form(shape):
    schedule = make_lr(shape)
    got = [schedule(e) for e in PROBES]
    np.testing.assert_allclose(got, reference_lr(shape, PROBES), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", LR_SHAPES)
def test_lr_shape_without_warmup(shape):
    schedule = make_lr(shape, warmup_epochs=0.0, lr_power=0.5)
    probes = [0.0, 0.5, 1.0, 59.9, 60.0, 100.0, 120.0, 160.0, 200.0]
    np.testing.assert_allclose(
        [schedule(e) for e in probes], reference_lr(shape, probes, warmup=0.0, power=0.5), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("shape", LR_SHAPES)
def test_every_shape_starts_at_lr_after_warmup_and_never_increases(shape):
    schedule = make_lr(shape)
    assert schedule(WARMUP) == pytest.approx(LR, rel=1e-12)
    assert schedule(WARMUP - 1e-6) == pytest.approx(LR, rel=1e-6)  # continuous at the boundary
    values = [schedule(e) for e in np.linspace(WARMUP, EPOCHS, 2001)]
    assert np.all(np.diff(values) <= 1e-15)


def test_decaying_shapes_end_at_lr_final():
    for shape in ("cosine", "linear", "polynomial", "exponential"):
        assert make_lr(shape)(EPOCHS) == pytest.approx(LR_FINAL, rel=1e-12), shape
    assert make_lr("constant")(EPOCHS) == LR
    assert make_lr("cosine")(EPOCHS + 50) == pytest.approx(LR_FINAL, rel=1e-12)  # past the end: clipped


def test_harada_cosine_and_vit_warmup():
    # "+C" (main_CNN.py): cosine 0.1 -> 0.001 over 200 epochs, no warmup
    cosine = lr_schedule("cosine", lr=0.1, lr_final=0.001, epochs=200)
    assert cosine(0) == pytest.approx(0.1)
    assert cosine(100) == pytest.approx((0.1 + 0.001) / 2)
    assert cosine(200) == pytest.approx(0.001)
    # ViT (main_ViT.py): 10-epoch warmup 1e-5 -> 1e-3, then cosine back to 1e-5 at epoch 100
    vit = lr_schedule("cosine", lr=1e-3, lr_final=1e-5, epochs=100, warmup_epochs=10)
    assert vit(0) == pytest.approx(1e-5)
    assert vit(5) == pytest.approx((1e-5 + 1e-3) / 2)
    assert vit(10) == pytest.approx(1e-3)
    assert vit(55) == pytest.approx((1e-5 + 1e-3) / 2)
    assert vit(100) == pytest.approx(1e-5)


def test_step_shape_milestones_of_gsam_example():
    # GSAM example/utility/step_lr.py with 200 epochs: x0.2 at epochs 60, 120, 160
    step = lr_schedule("step", lr=0.1, epochs=200)
    assert [step(e) for e in (0, 59.999, 60, 119.999, 120, 159.999, 160, 199.99)] == pytest.approx(
        [0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008], rel=1e-12
    )


def test_diminishing_is_per_epoch_like_khanh_diminish_1():
    # Khanh et al. Diminish 1: eta_e = eta0 / (e + 1), constant within epoch e
    schedule = lr_schedule("diminishing", lr=0.1, epochs=200)
    for epoch in range(5):
        for frac in (0.0, 0.5, 0.999):
            assert schedule(epoch + frac) == pytest.approx(0.1 / (epoch + 1), rel=1e-12)
    sqrt_like = lr_schedule("diminishing", lr=0.1, epochs=200, lr_power=0.5001)
    assert sqrt_like(3) == pytest.approx(0.1 / 4**0.5001, rel=1e-12)


def khanh_lrs(rule, eta0, epochs):
    """The lr each epoch trains with under Khanh et al.'s per-epoch schedulers
    (lhchau/fundamental-sam): the optimizer starts at eta0 and the scheduler's
    step() runs after every epoch, setting the next epoch's lr."""
    lrs, lr, counter, base_step, prev = [], eta0, 0, 2, None
    for _ in range(epochs):
        lrs.append(lr)
        if rule == 2:
            lr = eta0 / (counter + 1) ** 0.5001
        else:
            if counter % 5 == 0:
                base_step += 1
                prev = eta0 / (base_step * math.log(base_step))
            lr = prev
        counter += 1
    return lrs


@pytest.mark.parametrize("rule, shape, power", [(2, "diminishing_from1", 0.5001),
                                                 (3, "diminishing_klogk", 1.0)])
def test_khanh_diminish_2_and_3_match_their_scheduler_epoch_by_epoch(rule, shape, power):
    schedule = lr_schedule(shape, lr=0.1, epochs=40, lr_power=power)
    expected = khanh_lrs(rule, 0.1, 40)
    for epoch in range(40):
        for frac in (0.0, 0.5, 0.999):
            assert schedule(epoch + frac) == pytest.approx(expected[epoch], rel=1e-12), (epoch, frac)
    if rule == 3:  # k grows every five epochs after the first: epochs 1-5 share one lr, 6 starts the next
        assert schedule(5) == schedule(1) != schedule(6) and schedule(0) == 0.1


def test_constant_shape_may_be_all_warmup():
    schedule = lr_schedule("constant", lr=0.1, lr_final=0.01, epochs=5, warmup_epochs=5)
    assert schedule(2.5) == pytest.approx(0.055)
    assert schedule(5) == pytest.approx(0.1)


def _raises_naming(key, value, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=rf"^{key}\b.*{re.escape(repr(value))}"):
        fn(*args, **kwargs)


@pytest.mark.parametrize(
    ("shape", "overrides", "key", "value"),
    [
        ("cubic", {}, "lr_shape", "cubic"),
        ("cosine", {"lr": 0.0}, "lr", 0.0),
        ("cosine", {"lr": -0.1}, "lr", -0.1),
        ("cosine", {"lr_final": -0.001}, "lr_final", -0.001),
        ("cosine", {"lr_final": 0.2}, "lr_final", 0.2),
        ("cosine", {"epochs": 0.0}, "epochs", 0.0),
        ("cosine", {"warmup_epochs": -1.0}, "warmup_epochs", -1.0),
        ("cosine", {"warmup_epochs": EPOCHS}, "warmup_epochs", EPOCHS),
        ("constant", {"warmup_epochs": EPOCHS + 1}, "warmup_epochs", EPOCHS + 1),
        ("polynomial", {"lr_power": 0.0}, "lr_power", 0.0),
        ("exponential", {"lr_final": 0.0}, "lr_final", 0.0),
        ("cosine", {"lr": float("nan")}, "lr", float("nan")),
    ],
)
def test_lr_schedule_errors_name_the_key(shape, overrides, key, value):
    _raises_naming(key, value, make_lr, shape, **overrides)


def test_unknown_shape_lists_allowed_ones():
    with pytest.raises(ValueError, match="constant, cosine, linear, polynomial, exponential, step, diminishing, "
                       "diminishing_from1, diminishing_klogk"):
        make_lr("cubic")


def test_negative_progress_is_refused():
    with pytest.raises(ValueError, match="elapsed epochs"):
        make_lr("cosine")(-0.5)


# ---------------------------------------------------------------------------
# batch size


def test_harada_increasing_batch_boundaries():
    schedule = batch_size_schedule(batch_size=16, epochs=200, batch_growth_ratio=2, batch_stages=5)
    expected = [16] * 40 + [32] * 40 + [64] * 40 + [128] * 40 + [256] * 40
    assert [schedule(epoch) for epoch in range(200)] == expected
    assert (schedule(39), schedule(40), schedule(79), schedule(80), schedule(199)) == (16, 32, 32, 64, 256)
    assert schedule(250) == 256  # past the end: last stage


def test_harada_vit_batch_boundaries():
    schedule = batch_size_schedule(batch_size=64, epochs=100, batch_growth_ratio=2, batch_stages=4)
    assert [schedule(e) for e in (0, 24, 25, 49, 50, 74, 75, 99)] == [64, 64, 128, 128, 256, 256, 512, 512]


@pytest.mark.parametrize(("epochs", "stages", "ratio"), [(10, 3, 2.0), (7, 7, 1.5), (13, 4, 3.0), (200, 1, 2.0)])
def test_uneven_stages_match_closed_form(epochs, stages, ratio):
    schedule = batch_size_schedule(batch_size=10, epochs=epochs, batch_growth_ratio=ratio, batch_stages=stages)
    index = np.arange(epochs)
    stage = np.minimum(np.floor(index * stages / epochs), stages - 1)
    expected = np.round(10 * ratio**stage).astype(int)
    assert [schedule(int(e)) for e in index] == expected.tolist()


def test_batch_max_caps_and_ratio_one_is_constant():
    capped = batch_size_schedule(batch_size=16, epochs=200, batch_growth_ratio=2, batch_stages=5, batch_max=100)
    assert [capped(e) for e in (0, 40, 80, 120, 160)] == [16, 32, 64, 100, 100]
    constant = batch_size_schedule(batch_size=128, epochs=200, batch_growth_ratio=1.0, batch_stages=5)
    assert {constant(e) for e in range(200)} == {128}


@pytest.mark.parametrize(
    ("overrides", "key", "value"),
    [
        ({"batch_size": 0}, "batch_size", 0),
        ({"batch_size": 16.5}, "batch_size", 16.5),
        ({"epochs": 0}, "epochs", 0),
        ({"batch_growth_ratio": 0.5}, "batch_growth_ratio", 0.5),
        ({"batch_stages": 0}, "batch_stages", 0),
        ({"batch_stages": 201}, "batch_stages", 201),
        ({"batch_max": 8}, "batch_max", 8),
    ],
)
def test_batch_schedule_errors_name_the_key(overrides, key, value):
    kwargs = dict(batch_size=16, epochs=200, batch_growth_ratio=2.0, batch_stages=5)
    kwargs.update(overrides)
    _raises_naming(key, value, batch_size_schedule, **kwargs)


def test_lr_batch_factor():
    assert lr_batch_factor("none", 256, 16) == 1.0
    assert lr_batch_factor("linear", 256, 16) == 16.0
    assert lr_batch_factor("linear", 16, 64) == 0.25
    assert lr_batch_factor("sqrt", 256, 16) == 4.0
    assert lr_batch_factor("sqrt", 32, 16) == pytest.approx(math.sqrt(2), rel=1e-15)
    _raises_naming("lr_batch_scaling", "cubic", lr_batch_factor, "cubic", 32, 16)


# ---------------------------------------------------------------------------
# rho


def test_rho_proportional_endpoints_and_interior():
    rho = rho_schedule("lr_proportional", rho=0.04, rho_min=0.02, lr_max=1.6, lr_min=0.016, epochs=90)
    assert rho(0, 1.6) == pytest.approx(0.04, rel=1e-12)
    assert rho(90, 0.016) == pytest.approx(0.02, rel=1e-12)
    lr = 0.5
    assert rho(10, lr) == pytest.approx(0.02 + 0.02 * (lr - 0.016) / (1.6 - 0.016), rel=1e-12)
    # outside [lr_min, lr_max] (e.g. warmup from 0): clipped to [rho_min, rho]
    assert rho(0, 0.0) == pytest.approx(0.02)
    assert rho(0, 3.2) == pytest.approx(0.04)


def test_rho_proportional_with_constant_lr_is_rho():
    rho = rho_schedule("lr_proportional", rho=0.05, rho_min=0.01, lr_max=0.1, lr_min=0.1, epochs=200)
    assert rho(0, 0.1) == 0.05 and rho(150, 0.1) == 0.05


def test_rho_constant_and_diminishing():
    constant = rho_schedule("constant", rho=0.05, lr_max=0.1, lr_min=0.0, epochs=10)
    assert constant(7.3, 0.01) == 0.05
    dimin = rho_schedule("diminishing", rho=0.5, rho_min=0.1, lr_max=0.1, lr_min=0.0, epochs=10)
    for e, k in ((0.0, 0), (0.99, 0), (1.0, 1), (4.5, 4), (10.0, 10), (12.0, 10)):
        assert dimin(e, 0.1) == pytest.approx(0.1 + 0.4 / (k + 1), rel=1e-12), e


@pytest.mark.parametrize(
    ("kind", "overrides", "key", "value"),
    [
        ("constant", {"rho": -0.1}, "rho", -0.1),
        ("constant", {"rho_min": -0.01}, "rho_min", -0.01),
        ("lr_proportional", {"rho_min": 0.06}, "rho_min", 0.06),
        ("lr_proportional", {"lr_min": 0.2}, "lr_min", 0.2),
        ("sometimes", {}, "rho_schedule", "sometimes"),
    ],
)
def test_rho_schedule_errors_name_the_key(kind, overrides, key, value):
    kwargs = dict(rho=0.05, rho_min=0.0, lr_max=0.1, lr_min=0.001, epochs=200)
    kwargs.update(overrides)
    _raises_naming(key, value, rho_schedule, kind, **kwargs)


# ---------------------------------------------------------------------------
# one trial


def test_trial_schedule_harada_plus_b_with_scaling():
    sched = TrialSchedule.from_params(
        lr=0.1, epochs=200, batch_size=16, batch_growth_ratio=2, batch_stages=5, lr_batch_scaling="linear"
    )
    assert [sched.stage(e) for e in (0, 39, 40, 199)] == [0, 0, 1, 4]
    for epoch, batch in ((0, 16), (40, 32), (199, 256)):
        assert sched.batch_size(epoch) == batch
        assert sched.lr(epoch + 0.5, sched.batch_size(epoch)) == pytest.approx(0.1 * batch / 16, rel=1e-12)
    sqrt = TrialSchedule(sched.params.model_copy(update={"lr_batch_scaling": "sqrt"}))
    assert sqrt.lr(80, sqrt.batch_size(80)) == pytest.approx(0.1 * 2.0, rel=1e-12)  # batch 64 = 4 x 16
    assert sched.rho(100) == 0.05


def test_trial_schedule_rho_follows_unscaled_lr():
    sched = TrialSchedule.from_params(
        lr=0.1,
        lr_shape="cosine",
        lr_final=0.001,
        epochs=100,
        batch_size=32,
        batch_growth_ratio=2,
        batch_stages=2,
        lr_batch_scaling="linear",
        rho=0.6,
        rho_min=0.1,
        rho_schedule="lr_proportional",
    )
    assert sched.rho(0) == pytest.approx(0.6)
    assert sched.rho(100) == pytest.approx(0.1)
    # at mid-training the cosine lr is halfway, so rho is halfway; the batch doubling does not enter
    assert sched.rho(50) == pytest.approx(0.35)
    assert sched.base_lr(50) == pytest.approx((0.1 + 0.001) / 2)
    assert sched.lr(50, sched.batch_size(50)) == pytest.approx(0.101, rel=1e-12)


def test_trial_schedule_rho_range_is_the_range_the_lr_shape_spans():
    # step decay never reaches lr_final (0 here): rho_min is reached at the final lr 0.1 * 0.2^3
    sched = TrialSchedule.from_params(
        lr=0.1, lr_shape="step", epochs=100, batch_size=8, rho=0.05, rho_min=0.01, rho_schedule="lr_proportional"
    )
    lr_end = 0.1 * 0.2**3
    assert sched.rho(0) == pytest.approx(0.05)
    assert sched.rho(45) == pytest.approx(0.01 + 0.04 * (0.02 - lr_end) / (0.1 - lr_end), rel=1e-12)
    assert sched.rho(99.5) == pytest.approx(0.01, rel=1e-12)
    # a constant lr keeps a proportional rho at rho (Harada's "fix" runs)
    flat = TrialSchedule(sched.params.model_copy(update={"lr_shape": "constant"}))
    assert {flat.rho(e) for e in (0, 50, 100)} == {0.05}


def test_trial_schedule_from_config_object_and_mapping():
    cfg = SimpleNamespace(
        dataset="digits", lr=0.05, epochs=12, batch_size=16, batch_growth_ratio=2.0, batch_stages=4,
        batch_max=None, lr_shape="linear", lr_final=0.005, rho_min=None,
    )  # fmt: skip
    from_obj = TrialSchedule.from_config(cfg)
    assert from_obj == TrialSchedule.from_config(vars(cfg))
    assert [from_obj.batch_size(e) for e in (0, 2, 3, 5, 6, 9, 11)] == [16, 16, 32, 32, 64, 128, 128]
    assert from_obj.base_lr(6) == pytest.approx(0.05 + (0.005 - 0.05) * 0.5)
    assert from_obj.params.rho_min == 0.0 and from_obj.params.rho_schedule == "constant"


def test_trial_schedule_refuses_bad_and_unknown_params():
    with pytest.raises(ValueError, match="unknown schedule parameter.*learning_rate"):
        TrialSchedule.from_params(learning_rate=0.1, lr=0.1, epochs=10, batch_size=8)
    # absent keys take the trial defaults, the same ones TrialConfig has
    params = TrialSchedule.from_params(lr=0.1, epochs=10).params
    config = make_trial_config({"lr": 0.1, "epochs": 10})
    assert {k: getattr(params, k) for k in SCHEDULE_KEYS} == {k: getattr(config, k) for k in SCHEDULE_KEYS}
    _raises_naming("batch_stages", 11, TrialSchedule.from_params, lr=0.1, epochs=10, batch_size=8, batch_stages=11)
    with pytest.raises(ValidationError, match=r"(?s)lr_batch_scaling.*'none', 'linear' or 'sqrt'.*'cube'"):
        TrialSchedule.from_params(lr=0.1, epochs=10, batch_size=8, lr_batch_scaling="cube")
    sched = TrialSchedule.from_params(lr=0.1, epochs=10, batch_size=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sched.params = None
    with pytest.raises(ValidationError):
        sched.params.lr_shape = "cosine"
