"""Hessian measures against Hessians computed independently (numpy closed forms,
torch.autograd.functional.hessian + eigvalsh)."""

import numpy as np
import pytest
import torch
from torch import nn

from samtune import sharpness
from samtune.sharpness._hvp import HessianProducts
from samtune.sharpness._lanczos import lanczos
from samtune.sharpness._surface import loss_surface
from samtune.sharpness.hessian import control_variate_mean


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


@pytest.mark.parametrize("cache_graphs", [True, False])
def test_hessian_vector_products_match_the_full_hessian_with_batchnorm(cache_graphs):
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
        products = HessianProducts(surface, cache_graphs=cache_graphs)
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
                                         ({"cache_graphs": "yes"}, "cache_graphs")])
def test_bad_lanczos_settings_are_refused(kwargs, key):
    x, y = regression_data(n=10)
    with pytest.raises(ValueError, match=key):
        sharpness.hessian_max_eigenvalue(linear_model(5), mse, [(x, y)], **kwargs)


def test_trace_needs_two_samples_for_a_standard_error():
    x, y = regression_data(n=10)
    with pytest.raises(ValueError, match="samples"):
        sharpness.hessian_trace(linear_model(5), mse, [(x, y)], samples=1)
