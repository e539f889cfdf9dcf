"""avg_sphere and ascent_full against closed forms: the sphere's draws (radius,
isotropy), E[L(w + δ)] − L(w) = ½ ρ² tr(A)/d for a quadratic loss, and SAM's
step along the full-batch gradient of a linear regression computed in numpy."""

import numpy as np
import pytest
import torch
from torch import nn

from samtune import sharpness


class Echo(nn.Module):
    """Outputs its own parameter vector, so the loss sees w + δ itself."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64).clone())

    def forward(self, x):
        return self.w


def sampled_perturbations(w, samples, **settings):
    """Every δ avg_sphere evaluates, recorded by the loss (one batch)."""
    seen = []

    def recording_loss(outputs, targets):
        seen.append(outputs.detach().clone())
        return outputs.sum()

    sharpness.average_sphere(Echo(w), recording_loss, [(torch.zeros(1), torch.zeros(1))],
                             samples=samples, **({"antithetic": False} | settings))
    w0, *perturbed = seen  # the first evaluation is the clean loss
    assert torch.equal(w0, torch.as_tensor(w, dtype=torch.float64))
    return (torch.stack(perturbed) - w0).numpy()


def test_sphere_draws_have_norm_rho_and_are_isotropic():
    d, n, rho = 6, 4000, 0.3
    w = np.linspace(-1.0, 2.0, d)
    deltas = sampled_perturbations(w, n, rho=rho, seed=3)
    assert deltas.shape == (n, d)
    np.testing.assert_allclose(np.linalg.norm(deltas, axis=1), rho, rtol=1e-12)
    u = deltas / rho
    # each coordinate of a uniform unit vector has mean 0 and variance 1/d;
    # u_i² has variance 3/(d(d+2)) − 1/d², and u_i u_j (i ≠ j) 1/(d(d+2))
    assert np.abs(u.mean(axis=0)).max() < 5 / np.sqrt(d * n)
    second = u.T @ u / n
    bound = 5 * np.sqrt(3 / (d * (d + 2)) / n)
    assert np.abs(second - np.eye(d) / d).max() < bound


def test_adaptive_draws_lie_on_the_ellipsoid():
    w = np.array([0.5, -2.0, 1.5, 3.0])
    deltas = sampled_perturbations(w, 50, rho=0.1, adaptive=True, seed=1)
    np.testing.assert_allclose(np.linalg.norm(deltas / np.abs(w), axis=1), 0.1, rtol=1e-12)


def regression_problem(sizes=(40, 25, 35), p=4, seed=0):
    """A float64 linear model, MSE, and batches of different sizes."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = nn.Linear(p, 1).double()
    batches = []
    for n in sizes:
        x = rng.standard_normal((n, p)) * np.array([1.0, 3.0, 0.5, 2.0])[:p]
        y = x @ rng.standard_normal(p) + rng.standard_normal(n)
        batches.append((torch.from_numpy(x), torch.from_numpy(y)))
    return model, batches


def mse(outputs, targets):
    return ((outputs.squeeze(-1) - targets) ** 2).mean()


def design(x):
    """Rows [x, 1]: the model's parameters are (weight, bias) in this order."""
    return np.hstack([np.asarray(x), np.ones((len(x), 1))])


def flat_w(model):
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def hessians(batches):
    return [2.0 / len(y) * design(x).T @ design(x) for x, y in batches]


def weights(batches):
    sizes = np.array([len(y) for _, y in batches], dtype=float)
    return sizes / sizes.sum()


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("adaptive", [False, True])
def test_sphere_average_of_a_quadratic_is_half_rho_squared_trace_over_d(adaptive, antithetic):
    model, batches = regression_problem()
    rho = 0.5
    w = flat_w(model)
    d = w.size
    curvature = [np.diag(a) @ (w ** 2) if adaptive else np.trace(a) for a in hessians(batches)]
    expected = 0.5 * rho ** 2 * np.dot(weights(batches), curvature) / d
    result = sharpness.average_sphere(model, mse, batches, rho=rho, adaptive=adaptive,
                                      samples=400, seed=0, antithetic=antithetic)
    assert result.stderr > 0 and result.iterations == 400
    assert abs(result.value - expected) < 4 * result.stderr
    # the check has teeth: the stderr is well below the value it brackets
    assert result.stderr < 0.25 * expected


def test_antithetic_draws_cancel_the_first_order_term():
    """For a quadratic, ½[L(w+δ) + L(w−δ)] − L(w) = ½ δᵀAδ exactly: what is left of the
    noise is the spread of the curvature over directions, far below the one-sided
    estimator's, whose draws carry ρ gᵀu/‖u‖."""
    model, batches = regression_problem()
    one_sided = sharpness.average_sphere(model, mse, batches, rho=0.5, samples=50, seed=1, antithetic=False)
    paired = sharpness.average_sphere(model, mse, batches, rho=0.5, samples=50, seed=1, antithetic=True)
    assert paired.stderr < one_sided.stderr / 3


def test_sphere_is_registered_per_batch_with_a_stderr():
    model, batches = regression_problem()
    values = sharpness.measure_all(model, mse, batches, names=["avg_sphere"],
                                   overrides={"avg_sphere": {"samples": 5}}, seed=2)
    direct = sharpness.average_sphere(model, mse, batches, samples=5, seed=2)
    assert values == {"sharpness_avg_sphere": direct.value, "sharpness_avg_sphere_stderr": direct.stderr}
    params = sharpness.measure_settings(["avg_sphere", "ascent_full"], batches=batches)
    assert params["sharpness.avg_sphere.rho"] == "0.05" and params["sharpness.avg_sphere.m"] == "40"
    assert params["sharpness.ascent_full.rho"] == "0.05" and "sharpness.ascent_full.m" not in params
    assert params["sharpness.ascent_full.n_examples"] == "100"
    assert "avg_sphere" not in sharpness.DEFAULT_MEASURES
    assert "ascent_full" not in sharpness.DEFAULT_MEASURES


def batch_loss_and_grad(w, x, y):
    residual = design(x) @ w - np.asarray(y)
    return np.mean(residual ** 2), 2.0 / len(y) * design(x).T @ residual


def full_loss_and_grad(w, batches):
    x = np.vstack([np.asarray(x) for x, _ in batches])
    y = np.concatenate([np.asarray(y) for _, y in batches])
    return batch_loss_and_grad(w, x, y)


def step(w, g, rho, adaptive):
    if adaptive:
        return rho * w * (w * g) / (np.linalg.norm(w * g) + 1e-12)
    return rho * g / (np.linalg.norm(g) + 1e-12)


@pytest.mark.parametrize("adaptive", [False, True])
def test_ascent_full_steps_along_the_gradient_of_all_examples(adaptive):
    model, batches = regression_problem()
    w, rho = flat_w(model), 0.2
    clean, g = full_loss_and_grad(w, batches)
    expected = full_loss_and_grad(w + step(w, g, rho, adaptive), batches)[0] - clean
    result = sharpness.ascent_full(model, mse, batches, rho=rho, adaptive=adaptive)
    assert result.value == pytest.approx(expected, rel=1e-10)
    assert sharpness.measure_all(model, mse, batches, names=["ascent_full"],
                                 overrides={"ascent_full": {"rho": rho, "adaptive": adaptive}}
                                 ) == {"sharpness_ascent_full": result.value}


def test_ascent_full_differs_from_per_batch_ascent_when_batches_pull_apart():
    # two batches fitted by opposite slopes: each batch's gradient is large, the
    # full-batch gradient (their mean) nearly cancels
    x = np.linspace(-1.0, 1.0, 10)[:, None]
    batches = [(torch.from_numpy(x), torch.from_numpy(2.0 * x[:, 0])),
               (torch.from_numpy(x), torch.from_numpy(-2.0 * x[:, 0] + 0.1))]
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(0.0)
    w, rho = flat_w(model), 0.5
    per_batch = sum(0.5 * (batch_loss_and_grad(w + step(w, g, rho, False), xb, yb)[0] - loss)
                    for xb, yb in batches for loss, g in [batch_loss_and_grad(w, xb, yb)])
    clean, g = full_loss_and_grad(w, batches)
    full = full_loss_and_grad(w + step(w, g, rho, False), batches)[0] - clean
    assert sharpness.ascent(model, mse, batches, rho=rho).value == pytest.approx(per_batch, rel=1e-10)
    assert sharpness.ascent_full(model, mse, batches, rho=rho).value == pytest.approx(full, rel=1e-10)
    # by hand: the batch gradients are (∓4·mean x², 0) and (0, −0.2) apart, their mean
    # ḡ = (0, −0.1) lies along the bias, where the MSE's curvature is 2: the full step
    # gains ρ‖ḡ‖ + ρ², each batch's own step about ρ·4·mean x²
    assert g == pytest.approx([0.0, -0.1])
    assert full == pytest.approx(rho * 0.1 + rho ** 2, rel=1e-10)
    assert per_batch > rho * 4 * np.mean(x ** 2) > 2 * full
