"""SAM / GSAM / ASAM / USAM against closed forms and independent torch.func computations."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from samtune.optim import (
    GSAM,
    OPTIMIZERS,
    SAM,
    create_optimizer,
    frozen_bn_stats,
    is_two_pass,
    set_rho,
)

EPS = 1e-12


# ----------------------------------------------------------------------------- helpers


def spd_matrix(dim: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(dim, dim))
    return m @ m.T + dim * np.eye(dim)


class Quadratic:
    """f(w) = ½ wᵀAw with ∇f(w) = Aw, on one float64 parameter."""

    def __init__(self, seed: int = 0):
        self.a = spd_matrix(seed=seed)
        self.w0 = np.random.default_rng(seed + 1).normal(size=self.a.shape[0])
        self.param = nn.Parameter(torch.tensor(self.w0))
        self.a_t = torch.tensor(self.a)

    def backward(self) -> None:
        (0.5 * self.param @ self.a_t @ self.param).backward()

    def w(self) -> np.ndarray:
        return self.param.detach().numpy().copy()


def two_pass_step(opt, loss_fn) -> None:
    loss_fn().backward()
    opt.first_step(zero_grad=True)
    loss_fn().backward()
    opt.second_step(zero_grad=True)


def make_mlp(dtype=torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def make_batch(dtype=torch.float64, n: int = 16):
    gen = torch.Generator().manual_seed(123)
    return torch.randn(n, 4, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen)


def mlp_loss(model, x, y):
    return lambda: F.cross_entropy(model(x), y)


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ----------------------------------------------------------------------------- SAM on a quadratic


def test_sam_step_matches_closed_form_on_quadratic():
    q = Quadratic()
    rho, lr = 0.3, 0.05
    opt = SAM([q.param], torch.optim.SGD, rho=rho, lr=lr)
    w = q.w0.copy()
    for _ in range(3):
        g = q.a @ w
        e = rho * g / (np.linalg.norm(g) + EPS)
        q.backward()
        opt.first_step(zero_grad=True)
        np.testing.assert_allclose(q.w(), w + e, rtol=1e-13, atol=1e-14)
        q.backward()
        opt.second_step(zero_grad=True)
        w = w - lr * (q.a @ (w + e))
        np.testing.assert_allclose(q.w(), w, rtol=1e-13, atol=1e-14)


def test_weight_decay_and_momentum_only_in_descent_step():
    q = Quadratic(seed=3)
    rho, lr, momentum, wd = 0.2, 0.03, 0.9, 0.1
    opt = SAM([q.param], torch.optim.SGD, rho=rho, lr=lr, momentum=momentum, weight_decay=wd)
    w, buf = q.w0.copy(), None
    for _ in range(3):
        g = q.a @ w  # the loss gradient alone: no wd term in the ascent
        e = rho * g / np.linalg.norm(g)
        q.backward()
        opt.first_step(zero_grad=True)
        np.testing.assert_allclose(q.w() - w, e, rtol=1e-11, atol=1e-14)
        q.backward()
        opt.second_step(zero_grad=True)
        d = q.a @ (w + e) + wd * w  # decay at the restored w
        buf = d if buf is None else momentum * buf + d
        w = w - lr * buf
        np.testing.assert_allclose(q.w(), w, rtol=1e-12, atol=1e-14)


def test_rho_is_per_group_with_a_global_norm():
    a = nn.Parameter(torch.tensor([3.0, 0.0], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = SAM([{"params": [a], "rho": 0.5}, {"params": [b]}], torch.optim.SGD, rho=0.1, lr=0.1)
    ga, gb = np.array([1.0, 2.0]), np.array([-2.0, 4.0])
    a.grad, b.grad = torch.tensor(ga), torch.tensor(gb)
    opt.first_step()
    norm = math.sqrt((ga**2).sum() + (gb**2).sum()) + EPS
    np.testing.assert_allclose(a.detach().numpy(), [3.0, 0.0] + 0.5 * ga / norm, rtol=1e-14)
    np.testing.assert_allclose(b.detach().numpy(), [1.0, -2.0] + 0.1 * gb / norm, rtol=1e-14)


def test_rho_change_takes_effect_at_next_step():
    q = Quadratic(seed=5)
    lr = 0.05
    opt = SAM([q.param], torch.optim.SGD, rho=0.05, lr=lr)
    two_pass_step(opt, lambda: 0.5 * q.param @ q.a_t @ q.param)

    opt.param_groups[0]["rho"] = 0.4
    w = q.w()
    q.backward()
    opt.first_step(zero_grad=True)
    assert np.linalg.norm(q.w() - w) == pytest.approx(0.4, rel=1e-12)
    q.backward()
    opt.second_step(zero_grad=True)

    set_rho(opt, 0.0)  # rho = 0 is plain SGD: w - lr * A w
    w = q.w()
    two_pass_step(opt, lambda: 0.5 * q.param @ q.a_t @ q.param)
    np.testing.assert_allclose(q.w(), w - lr * (q.a @ w), rtol=1e-13)


# ----------------------------------------------------------------------------- ASAM, USAM


def test_asam_elementwise_scaling_with_eta():
    w_data = np.array([[1.0, -2.0], [0.5, 0.0]])
    b_data = np.array([3.0, -1.0])
    g_w, g_b = np.array([[0.3, 0.1], [-0.4, 2.0]]), np.array([0.5, -0.7])
    w, b = nn.Parameter(torch.tensor(w_data)), nn.Parameter(torch.tensor(b_data))
    rho, eta = 0.3, 0.1
    opt = SAM([w, b], torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=0.1)
    w.grad, b.grad = torch.tensor(g_w), torch.tensor(g_b)
    opt.first_step()
    t_w, t_b = np.abs(w_data) + eta, np.abs(b_data) + eta
    norm = math.sqrt(((t_w * g_w) ** 2).sum() + ((t_b * g_b) ** 2).sum()) + EPS
    np.testing.assert_allclose(w.detach().numpy() - w_data, rho * t_w**2 * g_w / norm, rtol=1e-12)
    np.testing.assert_allclose(b.detach().numpy() - b_data, rho * t_b**2 * g_b / norm, rtol=1e-12)
    # The zero weight still moves because eta > 0.
    assert w.detach()[1, 1].item() != 0.0


def test_usam_ascent_is_unnormalized():
    p = nn.Parameter(torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64))
    g = np.array([3.0, -4.0, 12.0])
    opt = SAM([p], torch.optim.SGD, rho=0.1, normalize=False, lr=0.1)
    p.grad = torch.tensor(g)
    opt.first_step()
    np.testing.assert_allclose(p.detach().numpy() - [1.0, 2.0, -1.0], 0.1 * g, rtol=1e-14)


# ----------------------------------------------------------------------------- GSAM


def gsam_reference(model, x, y, rho, alpha, sign=1.0):
    """One GSAM update direction per fact sheet A5, from torch.func gradients."""
    names = [n for n, _ in model.named_parameters()]
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_at(params):
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    g = grad(loss_at)(w0)
    g_flat = torch.cat([g[n].flatten() for n in names])
    e = {n: rho * g[n] / (g_flat.norm() + EPS) for n in names}
    g_s = grad(loss_at)({n: w0[n] + e[n] for n in names})
    gs_flat = torch.cat([g_s[n].flatten() for n in names])
    cosine = g_flat @ gs_flat / (gs_flat.norm() * g_flat.norm() + EPS)
    g_perp = g_flat - cosine * g_flat.norm() * gs_flat / (gs_flat.norm() + EPS)
    return gs_flat - sign * alpha * g_perp, gs_flat


def test_gsam_direction_matches_torch_func_reference():
    model = make_mlp()
    x, y = make_batch()
    rho, alpha, lr = 0.5, 0.5, 0.1
    d_expected, g_s = gsam_reference(model, x, y, rho, alpha)
    d_wrong_sign, _ = gsam_reference(model, x, y, rho, alpha, sign=-1.0)
    w0 = torch.cat([p.flatten() for p in params_of(model)])

    opt = GSAM(model.parameters(), torch.optim.SGD, rho=rho, alpha=alpha, lr=lr)
    two_pass_step(opt, mlp_loss(model, x, y))
    d_taken = (w0 - torch.cat([p.detach().flatten() for p in model.parameters()])) / lr

    torch.testing.assert_close(d_taken, d_expected, rtol=1e-9, atol=1e-12)
    gap = (d_expected - d_wrong_sign).norm()
    assert gap > 1e-3 * d_expected.norm()
    assert (d_taken - d_wrong_sign).norm() > 0.5 * gap
    # The correction is orthogonal to g_s: it leaves the perturbed loss unchanged to first order.
    assert abs(((d_taken - g_s) @ g_s).item()) < 1e-10 * g_s.norm().item() ** 2


def test_gsam_with_alpha_zero_equals_sam():
    x, y = make_batch(torch.float32)
    models = [make_mlp(torch.float32), make_mlp(torch.float32)]
    kwargs = dict(rho=0.1, lr=0.1, momentum=0.9, weight_decay=5e-4)
    opts = [
        SAM(models[0].parameters(), torch.optim.SGD, **kwargs),
        GSAM(models[1].parameters(), torch.optim.SGD, alpha=0.0, **kwargs),
    ]
    for _ in range(3):
        for model, opt in zip(models, opts):
            two_pass_step(opt, mlp_loss(model, x, y))
    for p_sam, p_gsam in zip(*(m.parameters() for m in models)):
        assert torch.equal(p_sam, p_gsam)


# ----------------------------------------------------------------------------- restore, closure, state


@pytest.mark.parametrize(
    "base, kwargs",
    [
        (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=5e-4)),
        (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
    ],
)
@pytest.mark.parametrize("wrapper", [SAM, GSAM])
def test_restore_is_bit_identical_to_base_step_from_w(wrapper, base, kwargs):
    x, y = make_batch(torch.float32)
    model = make_mlp(torch.float32)
    reference = copy.deepcopy(model)
    w0 = params_of(model)
    opt = wrapper(model.parameters(), base, rho=0.2, **kwargs)

    mlp_loss(model, x, y)().backward()
    opt.first_step(zero_grad=True)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))
    mlp_loss(model, x, y)().backward()
    direction = [p.grad.clone() for p in model.parameters()]
    if wrapper is GSAM:  # alpha = 0: d = g_s - 0 * g_perp must be g_s bit for bit
        opt.gradient_decompose()
        assert all(torch.equal(p.grad, d) for p, d in zip(model.parameters(), direction))
    opt.second_step(zero_grad=True)

    base_opt = base(reference.parameters(), **kwargs)
    for p, d in zip(reference.parameters(), direction):
        p.grad = d
    base_opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)


def test_step_closure_equals_two_step_api():
    x, y = make_batch(torch.float32)
    models = [make_mlp(torch.float32), make_mlp(torch.float32)]
    opts = [GSAM(m.parameters(), torch.optim.SGD, rho=0.1, alpha=0.3, lr=0.1, momentum=0.9) for m in models]
    for _ in range(3):
        two_pass_step(opts[0], mlp_loss(models[0], x, y))

        loss = mlp_loss(models[1], x, y)
        loss().backward()

        def closure(loss=loss):
            value = loss()
            value.backward()
            return value

        with torch.no_grad():  # step must re-enable grad for the closure itself
            opts[1].step(closure)
        opts[1].zero_grad()
    for p, q in zip(*(m.parameters() for m in models)):
        assert torch.equal(p, q)


def test_state_dict_round_trip_steps_in_lockstep():
    x, y = make_batch(torch.float32)
    model = make_mlp(torch.float32)
    opt = GSAM(model.parameters(), torch.optim.SGD, rho=0.1, alpha=0.2, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        two_pass_step(opt, mlp_loss(model, x, y))
    set_rho(opt, 0.07)
    opt.param_groups[0]["lr"] = 0.05

    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    assert {key for state in saved["state"].values() for key in state} == {"momentum_buffer"}

    clone = copy.deepcopy(model)
    resumed = GSAM(
        clone.parameters(), torch.optim.SGD, rho=0.5, alpha=0.0, lr=1.0, momentum=0.9, weight_decay=5e-4
    )
    resumed.load_state_dict(saved)
    group = resumed.param_groups[0]
    assert (group["rho"], group["alpha"], group["lr"]) == (0.07, 0.2, 0.05)
    assert resumed.base_optimizer.param_groups is resumed.param_groups

    for _ in range(3):
        two_pass_step(opt, mlp_loss(model, x, y))
        two_pass_step(resumed, mlp_loss(clone, x, y))
        for p, q in zip(model.parameters(), clone.parameters()):
            assert torch.equal(p, q)


def test_second_step_without_first_step_raises():
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="first_step"):
        opt.second_step()
    gsam = GSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="first_step"):
        gsam.gradient_decompose()


# ----------------------------------------------------------------------------- autocast


def test_step_under_cpu_bfloat16_autocast_is_finite_and_fp32():
    x, y = make_batch(torch.float32)
    model = make_mlp(torch.float32)
    w0 = params_of(model)
    opt = GSAM(model.parameters(), torch.optim.SGD, rho=0.1, alpha=0.2, adaptive=True, lr=0.1, momentum=0.9)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        two_pass_step(opt, mlp_loss(model, x, y))
    for p, p0 in zip(model.parameters(), w0):
        assert p.dtype == torch.float32
        assert torch.isfinite(p).all()
        assert not torch.equal(p, p0)


def test_optimizer_arithmetic_is_unaffected_by_autocast():
    """Given the same gradients, first_step/second_step give the same bits inside autocast."""
    models = [make_mlp(torch.float32), make_mlp(torch.float32)]
    opts = [
        GSAM(m.parameters(), torch.optim.SGD, rho=0.5, alpha=0.3, adaptive=True, eta=0.01, lr=0.1)
        for m in models
    ]
    gen = torch.Generator().manual_seed(7)
    grads = [[torch.randn(p.shape, generator=gen) for p in models[0].parameters()] for _ in range(2)]
    for model, opt, autocast in zip(models, opts, (False, True)):
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=autocast):
            for p, g in zip(model.parameters(), grads[0]):
                p.grad = g.clone()
            opt.first_step(zero_grad=True)
            for p, g in zip(model.parameters(), grads[1]):
                p.grad = g.clone()
            opt.second_step(zero_grad=True)
    for p, q in zip(*(m.parameters() for m in models)):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------- BatchNorm


def make_bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        nn.BatchNorm1d(5, momentum=None),  # cumulative average: would change even with "momentum 0"
    )


def bn_buffers(model) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


def test_frozen_bn_stats_leaves_buffers_bitwise_unchanged():
    model = make_bn_model().train()
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    model(x)  # non-trivial running statistics
    before = bn_buffers(model)
    unfrozen = copy.deepcopy(model)

    with frozen_bn_stats(model):
        out = model(x * 1.5)
        out.sum().backward()
    for name, buf in model.named_buffers():
        assert torch.equal(buf, before[name]), name
    # Normalization still uses the batch statistics, as in an ordinary train-mode pass.
    assert torch.equal(out, unfrozen(x * 1.5))

    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d))
    model(x - 1.0)  # a batch with other statistics than the first one
    after = bn_buffers(model)
    for name in before:
        assert not torch.equal(after[name], before[name]), name
    assert after["1.num_batches_tracked"].item() == before["1.num_batches_tracked"].item() + 1


def test_frozen_bn_stats_restores_flags_on_error_and_keeps_eval_behaviour():
    model = make_bn_model()
    model[1].track_running_stats = True
    model[5].track_running_stats = False  # already untracked: must stay so
    with pytest.raises(KeyError):
        with frozen_bn_stats(model):
            assert not model[1].track_running_stats
            raise KeyError("boom")
    assert model[1].track_running_stats and not model[5].track_running_stats

    model = make_bn_model().train()
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    model(x)
    model.eval()
    expected = model(x)
    with frozen_bn_stats(model):
        assert torch.equal(model(x), expected)


# ----------------------------------------------------------------------------- factory and validation


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_every_registered_optimizer_builds_and_steps(name, base):
    x, y = make_batch(torch.float32)
    model = make_mlp(torch.float32)
    w0 = params_of(model)
    opt = create_optimizer(
        model.parameters(), optimizer=name, base_optimizer=base,
        lr=0.05, momentum=0.9, weight_decay=1e-3, rho=0.1, alpha=0.2, eta=0.01,
    )
    assert is_two_pass(name) == is_two_pass(opt) == OPTIMIZERS[name].two_pass
    inner = opt.base_optimizer if is_two_pass(opt) else opt
    assert isinstance(inner, {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[base])
    group = opt.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 1e-3
    assert ("momentum" in group) == (base == "sgd")
    if is_two_pass(opt):
        two_pass_step(opt, mlp_loss(model, x, y))
    else:
        mlp_loss(model, x, y)().backward()
        opt.step()
    assert all(torch.isfinite(p).all() and not torch.equal(p, p0) for p, p0 in zip(model.parameters(), w0))


def test_factory_maps_names_to_variants():
    params = list(make_mlp().parameters())

    def make(name, **kwargs):
        return create_optimizer(params, optimizer=name, lr=0.1, rho=0.2, alpha=0.3, eta=0.01, **kwargs)

    sgd = make("sgd")
    assert type(sgd) is torch.optim.SGD and "rho" not in sgd.param_groups[0]
    assert type(make("sam")) is SAM and not make("sam").param_groups[0]["adaptive"]
    asam = make("asam").param_groups[0]
    assert asam["adaptive"] and asam["eta"] == 0.01 and asam["normalize"]
    assert not make("usam").param_groups[0]["normalize"]
    gsam = make("gsam", adaptive=True)
    assert type(gsam) is GSAM and gsam.param_groups[0]["alpha"] == 0.3 and gsam.param_groups[0]["adaptive"]
    set_rho(sgd, 0.5)  # no-op on a one-pass optimizer
    assert "rho" not in sgd.param_groups[0]


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda p: SAM(p, torch.optim.SGD, rho=-0.1, lr=0.1), "rho"),
        (lambda p: SAM(p, torch.optim.SGD, rho=float("nan"), lr=0.1), "rho"),
        (lambda p: SAM(p, torch.optim.SGD, adaptive=True, eta=-1.0, lr=0.1), "eta"),
        (lambda p: GSAM(p, torch.optim.SGD, alpha=-0.5, lr=0.1), "alpha"),
        (lambda p: GSAM(p, torch.optim.SGD(p, lr=0.1), lr=0.1), "base_optimizer"),
        (lambda p: create_optimizer(p, optimizer="adam", lr=0.1), "optimizer"),
        (lambda p: create_optimizer(p, optimizer="sam", base_optimizer="rmsprop", lr=0.1), "base_optimizer"),
        (lambda p: set_rho(SAM(p, torch.optim.SGD, lr=0.1), -1.0), "rho"),
        (lambda p: is_two_pass("lion"), "optimizer"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(build, argument):
    params = list(make_mlp().parameters())
    with pytest.raises(ValueError, match=argument):
        build(params)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"\['asam', 'gsam', 'sam', 'sgd', 'usam'\]"):
        create_optimizer([nn.Parameter(torch.zeros(1))], optimizer="Adam", lr=0.1)


def test_negative_rho_set_in_a_group_is_caught_at_next_step():
    q = Quadratic()
    opt = GSAM([q.param], torch.optim.SGD, lr=0.1)
    opt.param_groups[0]["alpha"] = -0.1
    q.backward()
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0, got -0.1"):
        opt.first_step()
