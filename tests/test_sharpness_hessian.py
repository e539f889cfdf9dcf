"""Hessian measures against Hessians computed independently (numpy closed forms,
torch.autograd.functional.hessian + eigvalsh)."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samtune import sharpness
from samtune.sharpness import _hvp
from samtune.sharpness._hessian_bn import affine_batchnorm
from samtune.sharpness._hvp import HessianProducts
from samtune.sharpness._lanczos import lanczos
from samtune.sharpness._surface import loss_surface
from samtune.sharpness.hessian import control_variate_mean

ROUTES = ["double_backward", "forward_over_reverse", "auto"]


def mse(outputs, targets):
    return ((outputs.squeeze(-1) - targets) ** 2).mean()


def regression_data(n=200, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype) * torch.linspace(0.5, 3.0, d, dtype=dtype)
    y = torch.randn(n, generator=g, dtype=dtype)
    return x, y


def regression_hessian(x):
    """MSE of a linear model with bias: H = 2 X̃ᵀX̃ / n, X̃ = [X, 1] (weight then bias)."""
    xt = np.hstack([x.double().numpy(), np.ones((len(x), 1))])
    return 2.0 * xt.T @ xt / len(x)


def linear_model(d, dtype=torch.float64, seed=1):
    torch.manual_seed(seed)
    return nn.Linear(d, 1).to(dtype)


def split(x, y, sizes):
    bounds = np.cumsum([0, *sizes])
    return [(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def test_linear_regression_max_eigenvalue_matches_numpy_float32():
    x, y = regression_data(dtype=torch.float32)
    truth = np.linalg.eigvalsh(regression_hessian(x)).max()
    model = linear_model(5, torch.float32)
    result = sharpness.hessian_max_eigenvalue(model, mse, split(x, y, [50] * 4), tol=1e-6)
    assert result.value == pytest.approx(truth, rel=1e-3)
    assert abs(result.value - truth) <= result.residual + 1e-4 * truth


def test_unequal_batches_are_weighted_by_size():
    x, y = regression_data()
    truth = np.linalg.eigvalsh(regression_hessian(x)).max()
    model = linear_model(5)
    result = sharpness.hessian_max_eigenvalue(model, mse, split(x, y, [120, 30, 50]), tol=1e-10)
    assert result.value == pytest.approx(truth, rel=1e-8)
    # an unweighted mean of the batch Hessians is a different matrix
    unweighted = np.mean([regression_hessian(xb) for xb, _ in split(x, y, [120, 30, 50])], axis=0)
    assert abs(np.linalg.eigvalsh(unweighted).max() - truth) > 1e-3 * truth


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # centred, orthogonal columns => X̃ᵀX̃ is diagonal and every Rademacher probe
    # gives vᵀHv = tr(H)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((64, 4)))
    q -= q.mean(axis=0)
    q, _ = np.linalg.qr(np.hstack([np.ones((64, 1)), q]))
    x = torch.tensor(q[:, 1:] * np.array([1.0, 2.0, 3.0, 4.0]))
    hessian = regression_hessian(x)
    assert np.abs(hessian - np.diag(np.diag(hessian))).max() < 1e-12
    y = torch.zeros(64, dtype=torch.float64)
    result = sharpness.hessian_trace(linear_model(4), mse, [(x, y)], samples=3, deflation=0)
    assert result.value == pytest.approx(np.trace(hessian), rel=1e-10)
    assert result.stderr < 1e-10
    # a partial deflation is noisier here; the control variate falls back to vᵀHv
    result = sharpness.hessian_trace(linear_model(4), mse, [(x, y)], samples=4, deflation=2)
    assert result.value == pytest.approx(np.trace(hessian), rel=1e-10)
    assert result.stderr < 1e-10 * np.trace(hessian)
    # deflating the whole space leaves nothing to sample: exact again
    result = sharpness.hessian_trace(linear_model(4), mse, [(x, y)], samples=3, deflation=5)
    assert result.value == pytest.approx(np.trace(hessian), rel=1e-10)
    assert result.stderr < 1e-10


def test_hutchinson_trace_within_its_standard_error():
    x, y = regression_data()
    truth = np.trace(regression_hessian(x))
    result = sharpness.hessian_trace(linear_model(5), mse, split(x, y, [100, 100]), samples=400,
                                     deflation=0)
    assert abs(result.value - truth) < 4 * result.stderr
    # Var(vᵀHv) = 2 Σ_{i≠j} H_ij² for Rademacher v
    hessian = regression_hessian(x)
    expected = np.sqrt(2 * (np.sum(hessian ** 2) - np.sum(np.diag(hessian) ** 2)) / 400)
    assert result.stderr == pytest.approx(expected, rel=0.25)


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def mlp_hessian(model, x, y):
    """Full Hessian of the cross-entropy as a function of the flat parameters,
    with the network written out by hand."""
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(w):
        w1, b1, w2, b2 = w[:12].view(4, 3), w[12:16], w[16:24].view(2, 4), w[24:26]
        logits = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return nn.functional.cross_entropy(logits, y)

    return torch.autograd.functional.hessian(loss, w0)


def test_mlp_max_eigenvalue_and_trace_match_full_hessian():
    torch.manual_seed(0)
    model = TinyMLP().double()
    x, y = torch.randn(40, 3, dtype=torch.float64) * 2, torch.randint(0, 2, (40,))
    eigenvalues = torch.linalg.eigvalsh(mlp_hessian(model, x, y))
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    top = sharpness.hessian_max_eigenvalue(model, nn.functional.cross_entropy, batches, tol=1e-9)
    assert top.value == pytest.approx(eigenvalues.max().item(), rel=1e-7)
    truth = eigenvalues.sum().item()
    plain = sharpness.hessian_trace(model, nn.functional.cross_entropy, batches, samples=300,
                                    deflation=0)
    assert abs(plain.value - truth) < 4 * plain.stderr
    deflated = sharpness.hessian_trace(model, nn.functional.cross_entropy, batches,
                                       samples=300, deflation=4)
    assert abs(deflated.value - truth) < 4 * deflated.stderr


def test_deflation_removes_the_variance_of_outlier_eigenvalues():
    x, y = regression_data(n=100, d=8)
    x = x @ torch.randn(8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[:, 0] *= 20.0  # one outlier eigenvalue dominates ‖H‖_F
    truth = np.trace(regression_hessian(x))
    plain = sharpness.hessian_trace(linear_model(8), mse, [(x, y)], samples=50, deflation=0)
    deflated = sharpness.hessian_trace(linear_model(8), mse, [(x, y)], samples=50, deflation=2)
    assert abs(plain.value - truth) < 4 * plain.stderr
    assert abs(deflated.value - truth) < 4 * deflated.stderr
    assert deflated.stderr < 0.2 * plain.stderr


def test_lanczos_returns_largest_algebraic_eigenvalue_and_bounds_its_error():
    diagonal = torch.tensor([-10.0, 3.0, 2.9, 1.0, 0.5, -1.0], dtype=torch.float64)
    start = torch.ones(6, dtype=torch.float64)
    run = lanczos(lambda v: diagonal * v, start, iters=6, tol=0.0)
    assert run.theta == pytest.approx(3.0, rel=1e-12)  # not -10, the largest magnitude
    assert torch.allclose(run.basis @ run.basis.T, torch.eye(6, dtype=torch.float64),
                          atol=1e-12)
    assert sum(run.alphas) == pytest.approx(diagonal.sum().item(), abs=1e-12)
    # stopped early, the residual still bounds the distance to an eigenvalue
    run = lanczos(lambda v: diagonal * v, start, iters=3, tol=0.0)
    assert run.steps == 3 and run.residual > 0
    assert (diagonal - run.theta).abs().min().item() <= run.residual


@pytest.mark.parametrize("hvp", ROUTES)
@pytest.mark.parametrize("cache_graphs", [True, False])
def test_hessian_vector_products_match_the_full_hessian_with_batchnorm(cache_graphs, hvp):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    model(torch.randn(16, 3, dtype=torch.float64))  # non-trivial running statistics
    model.eval()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(w):  # the network by hand, BatchNorm with its running statistics
        w1, b1, gamma, beta, w2, b2 = torch.split(w, [12, 4, 4, 4, 8, 2])
        h = x @ w1.view(4, 3).T + b1
        bn = model[1]
        h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * gamma + beta
        return nn.functional.cross_entropy(torch.tanh(h) @ w2.view(2, 4).T + b2, y)

    hessian = torch.autograd.functional.hessian(loss, w0)
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    with loss_surface(model, nn.functional.cross_entropy, batches) as surface:
        products = HessianProducts(surface, cache_graphs=cache_graphs, hvp=hvp)
        v = torch.randn(surface.dim, dtype=torch.float64)
        assert torch.allclose(products.hvp(v), hessian @ v, rtol=1e-10, atol=1e-12)
        assert torch.allclose(products.hvp(2 * v), 2 * hessian @ v, rtol=1e-10, atol=1e-12)


def test_control_variate_mean_is_the_ols_intercept():
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    c = rng.standard_normal(30)
    x = 5.0 + 2.0 * c + 0.3 * rng.standard_normal(30)
    fit = sm.OLS(x, sm.add_constant(c)).fit()
    value, stderr = control_variate_mean(torch.tensor(x), torch.tensor(c))
    assert value == pytest.approx(fit.params[0], rel=1e-12)
    assert stderr == pytest.approx(fit.bse[0], rel=1e-10)


def test_trace_does_not_depend_on_whether_graphs_are_kept():
    x, y = regression_data()
    batches = split(x, y, [100, 60, 40])
    kept = sharpness.hessian_trace(linear_model(5), mse, batches, samples=6, deflation=2,
                                   cache_graphs=True)
    rebuilt = sharpness.hessian_trace(linear_model(5), mse, batches, samples=6, deflation=2,
                                      cache_graphs=False)
    assert rebuilt.value == pytest.approx(kept.value, rel=1e-12)
    assert rebuilt.stderr == pytest.approx(kept.stderr, rel=1e-9)


def test_hessian_trace_is_reproducible_and_seeded_locally():
    x, y = regression_data()
    model = linear_model(5)
    state = torch.get_rng_state()
    first = sharpness.hessian_trace(model, mse, [(x, y)], samples=5, deflation=2, seed=3)
    again = sharpness.hessian_trace(model, mse, [(x, y)], samples=5, deflation=2, seed=3)
    other = sharpness.hessian_trace(model, mse, [(x, y)], samples=5, deflation=2, seed=4)
    assert first.value == again.value and first.value != other.value
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("kwargs, key", [({"iters": 0}, "iters"), ({"tol": -1.0}, "tol"),
                                         ({"cache_graphs": "yes"}, "cache_graphs"),
                                         ({"hvp": "reverse"}, "hvp"), ({"stop": "change"}, "stop")])
def test_bad_lanczos_settings_are_refused(kwargs, key):
    x, y = regression_data(n=10)
    with pytest.raises(ValueError, match=key):
        sharpness.hessian_max_eigenvalue(linear_model(5), mse, [(x, y)], **kwargs)


def test_trace_needs_two_samples_for_a_standard_error():
    x, y = regression_data(n=10)
    with pytest.raises(ValueError, match="samples"):
        sharpness.hessian_trace(linear_model(5), mse, [(x, y)], samples=1)


# -- a small CNN with BatchNorm: both product routes, both stopping rules ------------


class TinyCNN(nn.Module):
    """conv(1→2, 3×3) − BN − ReLU − 2×2 max-pool − linear(8→3) on 4×4 images: 53
    parameters, every layer kind of the digits CNN."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(F.max_pool2d(torch.relu(self.bn(self.conv(x))), 2).flatten(1))


@functools.cache
def tiny_cnn_case(dtype):
    """(model, x, y, exact float64 Hessian), made once per dtype; tests only read them."""
    model, x, y = tiny_cnn_setup(dtype)
    return model, x, y, tiny_cnn_hessian(model, x, y)


def tiny_cnn_setup(dtype):
    torch.manual_seed(0)
    model = TinyCNN().to(dtype)
    model(torch.randn(32, 1, 4, 4, dtype=dtype))  # train mode: running statistics move
    model.eval()
    x, y = torch.randn(24, 1, 4, 4, dtype=dtype), torch.randint(0, 3, (24,))
    return model, x, y


def tiny_cnn_hessian(model, x, y):
    """The exact Hessian in float64, the network written with torch.nn.functional and
    eval-mode ``F.batch_norm`` (not the affine form the products use)."""
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    x = x.double()
    mean, var, eps = model.bn.running_mean.double(), model.bn.running_var.double(), model.bn.eps

    def loss(w):
        cw, cb, gamma, beta, hw, hb = torch.split(w, [18, 2, 2, 2, 24, 3])
        h = F.conv2d(x, cw.view(2, 1, 3, 3), cb, padding=1)
        h = F.batch_norm(h, mean, var, gamma, beta, False, 0.0, eps)
        h = F.max_pool2d(torch.relu(h), 2).flatten(1)
        return F.cross_entropy(h @ hw.view(3, 8).T + hb, y)

    return torch.autograd.functional.hessian(loss, w0)


@pytest.mark.parametrize("hvp", ROUTES)
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_both_routes_give_the_exact_hessian_product_of_a_cnn(hvp, dtype, rtol):
    model, x, y, hessian = tiny_cnn_case(dtype)  # the Hessian in float64 whatever ``dtype``
    with loss_surface(model, F.cross_entropy, [(x[:10], y[:10]), (x[10:], y[10:])]) as surface:
        products = HessianProducts(surface, cache_graphs=False, hvp=hvp)
        v = torch.randn(surface.dim, generator=torch.Generator().manual_seed(1), dtype=dtype)
        exact = hessian @ v.double()
        for product in (products.hvp(v), products.batch_operator(0)(v)):
            assert product.dtype == dtype
        error = torch.linalg.vector_norm(products.hvp(v).double() - exact)
        assert error <= rtol * torch.linalg.vector_norm(exact)


@pytest.mark.parametrize("hvp", ["double_backward", "forward_over_reverse"])
@pytest.mark.parametrize("stop", ["residual", "error"])
def test_cnn_max_eigenvalue_matches_eigvalsh(hvp, stop):
    model, x, y, hessian = tiny_cnn_case(torch.float64)
    truth = torch.linalg.eigvalsh(hessian).max().item()
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    # tight: the value to 1e-9 relative, whichever route and rule
    tight = sharpness.hessian_max_eigenvalue(model, F.cross_entropy, batches, tol=1e-10,
                                             stop=stop, hvp=hvp)
    assert tight.value == pytest.approx(truth, rel=1e-9)
    # the default tolerance 1e-3: the relative error is below it under either rule, and
    # the residual bounds the distance to an eigenvalue
    loose = sharpness.hessian_max_eigenvalue(model, F.cross_entropy, batches, stop=stop,
                                             hvp=hvp)
    assert abs(loose.value - truth) <= 1e-3 * truth
    assert abs(loose.value - truth) <= loose.residual


def test_error_rule_stops_earlier_and_its_estimate_covers_the_error():
    eigenvalues = torch.tensor([10.0, 7.0, 5.0, *np.linspace(0.0, 3.0, 47)], dtype=torch.float64)
    start = torch.ones(50, dtype=torch.float64)
    matvec = lambda v: eigenvalues * v  # noqa: E731
    for tol in (1e-2, 1e-4, 1e-8):
        by_error = lanczos(matvec, start, iters=50, tol=tol, stop="error")
        by_residual = lanczos(matvec, start, iters=50, tol=tol)
        error = 10.0 - by_error.theta
        assert 0.0 <= error <= by_error.error_estimate <= tol * by_error.theta
        assert by_error.steps < by_residual.steps
        assert abs(10.0 - by_residual.theta) <= by_residual.residual


def test_affine_batchnorm_computes_eval_batchnorm_and_is_undone():
    torch.manual_seed(0)
    layers = [(nn.BatchNorm1d(3), (5, 3)), (nn.BatchNorm1d(3, affine=False), (5, 3, 4)),
              (nn.BatchNorm2d(3), (5, 3, 4, 4)), (nn.BatchNorm3d(3), (5, 3, 2, 2, 2))]
    for layer, shape in layers:
        layer(torch.randn(*shape) * 3 + 1)  # running statistics away from 0 and 1
        if layer.affine:
            nn.init.normal_(layer.weight)
            nn.init.normal_(layer.bias)
        layer.eval()
        x = torch.randn(*shape)
        expected = layer(x)
        with affine_batchnorm(layer):
            assert "forward" in vars(layer)
            assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
        assert "forward" not in vars(layer)
    training = nn.BatchNorm1d(3)  # batch statistics: not an affine map, left alone
    with pytest.raises(RuntimeError, match="inside"), affine_batchnorm(training):
        assert "forward" not in vars(training)
        raise RuntimeError("inside")
    assert "forward" not in vars(training)


def test_auto_times_the_routes_only_where_each_product_rebuilds_its_graph():
    model, x, y, _ = tiny_cnn_case(torch.float64)
    _hvp._COSTS.clear()
    with loss_surface(model, F.cross_entropy, [(x, y)]) as surface:
        kept = HessianProducts(surface)  # one batch: its graph is kept
        assert kept.keeps_graphs and kept.mode(reused=True) == "double_backward"
        kept.hvp(torch.ones(surface.dim, dtype=torch.float64))
        assert not _hvp._COSTS
        rebuilt = HessianProducts(surface, cache_graphs=False)
        assert rebuilt.mode(reused=False) in ("double_backward", "forward_over_reverse")
        assert len(_hvp._COSTS) == 1
        costs = next(iter(_hvp._COSTS.values()))
        assert costs.build > 0 and costs.double_backward > 0 and costs.forward_over_reverse > 0
        HessianProducts(surface, cache_graphs=False).mode(reused=False)
        assert len(_hvp._COSTS) == 1  # once per architecture and batch shape


def test_trace_is_the_same_by_either_route():
    model, x, y, _ = tiny_cnn_case(torch.float64)
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    settings = [("double_backward", True), ("double_backward", False),
                ("forward_over_reverse", None)]
    values = [sharpness.hessian_trace(model, F.cross_entropy, batches, samples=5, deflation=3,
                                      hvp=hvp, cache_graphs=cache) for hvp, cache in settings]
    for other in values[1:]:
        assert other.value == pytest.approx(values[0].value, rel=1e-10)
        assert other.stderr == pytest.approx(values[0].stderr, rel=1e-8)
