"""Worst-case, average-case, Keskar and ascent sharpness on losses whose answer
is known in closed form (linear and quadratic in the parameters), and the
invariances that separate adaptive from plain measures."""

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from tml_sharpness import reference_m_apgd
from torch import nn

from samtune import sharpness
from samtune.sharpness._constraints import project_onto_ellipsoid


class Echo(nn.Module):
    """Outputs its own parameter vector, so the loss is a function of w alone."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64).clone())

    def forward(self, x):
        return self.w


def quadratic_loss(a, center, g=None):
    """L(w) = ½ (w − c)ᵀ A (w − c) [+ gᵀw]."""
    a, center = torch.as_tensor(a), torch.as_tensor(center)
    g = torch.zeros_like(center) if g is None else torch.as_tensor(g)

    def loss(w, targets):
        d = w - center
        return 0.5 * d @ a @ d + g @ w

    return loss


def linear_loss(g, offset=0.0):
    g = torch.as_tensor(g, dtype=torch.float64)
    return lambda w, targets: g @ w + offset


DUMMY = [(torch.zeros(1), torch.zeros(1))]


def spd(eigenvalues, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return q @ np.diag(eigenvalues) @ q.T


def max_quadratic_on_ball(a, g, rho):
    """max_{‖δ‖ ≤ ρ} gᵀδ + ½ δᵀAδ (trust-region subproblem, maximization form):
    δ = (μI − A)⁻¹ g with μ > λ_max(A) and ‖δ‖ = ρ (g not ⟂ top eigenvector)."""
    lam, vec = np.linalg.eigh(a)
    gq = vec.T @ g

    def norm_minus_rho(mu):
        return np.linalg.norm(gq / (mu - lam)) - rho

    mu = brentq(norm_minus_rho, lam.max() + 1e-12, lam.max() + np.linalg.norm(g) / rho + 1.0)
    delta = vec @ (gq / (mu - lam))
    return g @ delta + 0.5 * delta @ a @ delta


# -- worst case ---------------------------------------------------------------


def test_apgd_checkpoints_for_20_iterations():
    assert sharpness.apgd_checkpoints(20) == (5, 9, 12, 15, 16, 18, 19)


def test_linf_worst_case_of_linear_loss_is_rho_times_l1_norm():
    g = np.array([0.5, -2.0, 1.5, -0.25])
    w = np.array([1.0, -3.0, 0.5, 2.0])
    rho = 0.01
    plain = sharpness.worst_case(Echo(w), linear_loss(g), DUMMY, rho=rho, norm="linf",
                                 adaptive=False)
    assert plain.value == pytest.approx(rho * np.abs(g).sum(), rel=1e-5)
    adaptive = sharpness.worst_case(Echo(w), linear_loss(g), DUMMY, rho=rho, norm="linf",
                                    adaptive=True)
    assert adaptive.value == pytest.approx(rho * np.abs(g * w).sum(), rel=1e-5)


def test_l2_worst_case_of_linear_loss_is_rho_times_l2_norm():
    g = np.array([0.5, -2.0, 1.5, -0.25])
    w = np.array([2.0, -2.0, 2.0, 2.0])  # equal |w|: the adaptive ellipsoid is a ball
    rho = 0.1
    plain = sharpness.worst_case(Echo(w), linear_loss(g), DUMMY, rho=rho, norm="l2",
                                 adaptive=False)
    assert plain.value == pytest.approx(rho * np.linalg.norm(g), rel=1e-5)
    adaptive = sharpness.worst_case(Echo(w), linear_loss(g), DUMMY, rho=rho, norm="l2",
                                    adaptive=True)
    assert adaptive.value == pytest.approx(2.0 * rho * np.linalg.norm(g), rel=1e-5)


def test_l2_worst_case_at_a_minimum_is_half_rho_squared_lambda_max():
    a = spd([4.0, 1.5, 1.0, 0.2])
    center = np.array([0.3, -0.2, 0.1, 0.4])
    rho = 0.05
    # at the minimum every gradient is 0: APGD needs a random start to move
    result = sharpness.worst_case(Echo(center), quadratic_loss(a, center), DUMMY, rho=rho,
                                  norm="l2", adaptive=False, steps=100, rand_init=True)
    assert result.value == pytest.approx(0.5 * rho ** 2 * 4.0, rel=1e-3)
    stuck = sharpness.worst_case(Echo(center), quadratic_loss(a, center), DUMMY, rho=rho,
                                 norm="l2", adaptive=False)
    assert stuck.value == 0.0


def test_l2_worst_case_away_from_the_minimum_solves_the_trust_region_problem():
    a = spd([3.0, 1.0, -0.5, 0.3], seed=1)  # indefinite
    center = np.zeros(4)
    w = np.array([0.2, -0.1, 0.05, 0.3])
    rho = 0.2
    truth = max_quadratic_on_ball(a, a @ (w - center), rho)
    result = sharpness.worst_case(Echo(w), quadratic_loss(a, center), DUMMY, rho=rho,
                                  norm="l2", adaptive=False, steps=100)
    assert result.value == pytest.approx(truth, rel=1e-3)


def test_worst_case_is_averaged_over_batches_with_one_delta_each():
    # batch b has loss g_bᵀw: per-batch maxima ρ‖g_b‖₁ differ from the max of the mean
    gs = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)

    def loss(w, targets):
        return gs[int(targets[0])] @ w

    batches = [(torch.zeros(1), torch.zeros(1)), (torch.zeros(1), torch.ones(1))]
    result = sharpness.worst_case(Echo([0.0, 0.0]), loss, batches, rho=0.1, adaptive=False)
    assert result.value == pytest.approx(0.1 * 2.0, rel=1e-5)  # not 0.1 * ‖mean g‖₁ = 0.1


def test_ellipsoid_projection_matches_independent_secular_solution():
    rng = np.random.default_rng(0)
    y, c, rho = rng.standard_normal(50), rng.uniform(0.1, 2.0, 50), 0.7
    x = project_onto_ellipsoid(torch.tensor(y), torch.tensor(c), rho).numpy()
    mu = brentq(lambda m: np.linalg.norm(y * c / (c ** 2 + m)) - rho, 0.0, 1e6)
    assert np.allclose(x, y * c ** 2 / (c ** 2 + mu), rtol=1e-6, atol=1e-9)
    assert np.linalg.norm(x / c) <= rho * (1 + 1e-12)
    inside = 0.1 * y / np.linalg.norm(y / c)
    assert np.array_equal(project_onto_ellipsoid(torch.tensor(inside), torch.tensor(c),
                                                 rho).numpy(), inside)


def test_ellipsoid_projection_pins_zero_scale_coordinates():
    x = project_onto_ellipsoid(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([1.0, 1.0, 0.0]), 1.0)
    assert torch.allclose(x, torch.tensor([0.6, 0.8, 0.0]))


# -- average case -------------------------------------------------------------


def test_average_case_of_quadratic_is_half_sigma_squared_trace():
    a = spd([2.0, 1.0, 0.5, 0.25, 3.0])
    center = np.zeros(5)
    w = np.array([0.1, -0.2, 0.3, 0.0, 0.05])
    sigma, samples = 0.1, 2000
    result = sharpness.average_case(Echo(w), quadratic_loss(a, center), DUMMY, sigma=sigma,
                                    samples=samples)
    truth = 0.5 * sigma ** 2 * np.trace(a)
    assert abs(result.value - truth) < 4 * result.stderr
    # per-draw difference gᵀδ + ½δᵀAδ has variance σ²‖g‖² + ½σ⁴ tr(A²)
    g = a @ (w - center)
    variance = sigma ** 2 * g @ g + 0.5 * sigma ** 4 * np.trace(a @ a)
    assert result.stderr == pytest.approx(np.sqrt(variance / samples), rel=0.1)


def test_adaptive_average_case_of_quadratic_scales_noise_by_weights():
    a = spd([2.0, 1.0, 0.5, 0.25])
    w = np.array([1.0, -2.0, 0.5, 3.0])
    sigma = 0.05
    result = sharpness.average_case(Echo(w), quadratic_loss(a, w), DUMMY, sigma=sigma,
                                    adaptive=True, samples=2000)
    truth = 0.5 * sigma ** 2 * np.sum(np.diag(a) * w ** 2)
    assert abs(result.value - truth) < 4 * result.stderr


def test_average_box_of_quadratic_is_sixth_of_rho_squared_trace():
    # δ_i = ρ c_i (2u_i − 1) has variance ρ² c_i²/3, so E ½δᵀAδ = (ρ²/6) Σ A_ii c_i²
    a = spd([2.0, 1.0, 0.5, 0.25])
    w = np.array([1.0, -2.0, 0.5, 3.0])
    rho = 0.1
    for adaptive, c2 in ((False, np.ones(4)), (True, w ** 2)):
        result = sharpness.average_box(Echo(w), quadratic_loss(a, w), DUMMY, rho=rho,
                                       adaptive=adaptive, samples=2000)
        truth = rho ** 2 / 6 * np.sum(np.diag(a) * c2)
        assert abs(result.value - truth) < 4 * result.stderr


# -- Keskar and ascent ----------------------------------------------------------


@pytest.mark.parametrize("method", ["apgd", "lbfgsb"])
def test_keskar_of_linear_loss_is_the_box_maximum(method):
    g = np.array([0.5, -2.0, 1.5])
    w = np.array([1.0, -3.0, 0.0])
    epsilon, offset = 1e-3, 0.7
    steps = {"apgd": 20, "lbfgsb": 10}[method]
    result = sharpness.keskar(Echo(w), linear_loss(g, offset), DUMMY, epsilon=epsilon,
                              method=method, steps=steps)
    clean = g @ w + offset
    truth = 100 * epsilon * np.sum((np.abs(w) + 1) * np.abs(g)) / (1 + clean)
    assert result.value == pytest.approx(truth, rel=1e-4)


def test_ascent_of_quadratic_matches_closed_form():
    a = spd([2.0, 1.0, 0.5])
    center = np.zeros(3)
    w = np.array([0.3, -0.1, 0.2])
    rho = 0.05
    g = a @ w
    direction = g / np.linalg.norm(g)
    truth = rho * np.linalg.norm(g) + 0.5 * rho ** 2 * direction @ a @ direction
    result = sharpness.ascent(Echo(w), quadratic_loss(a, center), DUMMY, rho=rho)
    assert result.value == pytest.approx(truth, rel=1e-9)


# -- rescaling symmetry -------------------------------------------------------------


def relu_net_and_rescaled(c=4.0):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    rescaled = copy.deepcopy(net)
    with torch.no_grad():
        rescaled[0].weight.mul_(c)
        rescaled[0].bias.mul_(c)
        rescaled[2].weight.div_(c)
    return net, rescaled


@pytest.fixture(scope="module")
def rescaling_setup():
    net, rescaled = relu_net_and_rescaled()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    assert torch.allclose(net(x), rescaled(x), rtol=1e-12)  # same function
    return net, rescaled, batches


def both(measure, setup, **kwargs):
    net, rescaled, batches = setup
    return (measure(net, nn.functional.cross_entropy, batches, **kwargs).value,
            measure(rescaled, nn.functional.cross_entropy, batches, **kwargs).value)


def test_adaptive_linf_worst_case_is_invariant_to_relu_rescaling(rescaling_setup):
    original, rescaled = both(sharpness.worst_case, rescaling_setup, rho=0.05, norm="linf",
                              adaptive=True)
    assert original > 0 and rescaled == pytest.approx(original, rel=1e-6)
    original, rescaled = both(sharpness.worst_case, rescaling_setup, rho=0.05, norm="linf",
                              adaptive=False)
    assert abs(rescaled - original) > 0.1 * original


def test_adaptive_average_case_is_invariant_to_relu_rescaling(rescaling_setup):
    original, rescaled = both(sharpness.average_case, rescaling_setup, sigma=0.2,
                              adaptive=True, samples=10)
    assert original != 0 and rescaled == pytest.approx(original, rel=1e-9)
    original, rescaled = both(sharpness.average_case, rescaling_setup, sigma=0.2,
                              adaptive=False, samples=10)
    assert abs(rescaled - original) > 0.1 * abs(original)


def test_hessian_measures_change_under_relu_rescaling(rescaling_setup):
    original, rescaled = both(sharpness.hessian_max_eigenvalue, rescaling_setup, tol=1e-8)
    assert abs(rescaled - original) > 0.1 * original
    original, rescaled = both(sharpness.hessian_trace, rescaling_setup, samples=20)
    assert abs(rescaled - original) > 0.1 * original


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, key", [
    ({"rho": -1.0}, "rho"), ({"norm": "l1"}, "norm"), ({"steps": 0}, "steps"),
    ({"adaptive": "yes"}, "adaptive"), ({"rho": float("nan")}, "rho"),
])
def test_bad_worst_case_settings_are_refused(kwargs, key):
    with pytest.raises(ValueError, match=key):
        sharpness.worst_case(Echo([1.0]), linear_loss([1.0]), DUMMY, **kwargs)


def test_bad_batches_and_losses_are_refused():
    with pytest.raises(ValueError, match="batches is empty"):
        sharpness.ascent(Echo([1.0]), linear_loss([1.0]), [])
    with pytest.raises(ValueError, match=r"batches\[0\]"):
        sharpness.ascent(Echo([1.0]), linear_loss([1.0]), [torch.zeros(3)])
    with pytest.raises(ValueError, match="scalar"):
        sharpness.ascent(Echo([1.0, 2.0]), lambda w, t: w * 2, DUMMY)
    with pytest.raises(ValueError, match="method"):
        sharpness.keskar(Echo([1.0]), linear_loss([1.0]), DUMMY, method="newton")
    with pytest.raises(ValueError, match="sigma"):
        sharpness.average_case(Echo([1.0]), linear_loss([1.0]), DUMMY, sigma=-0.1)


# -- fidelity to the reference APGD -------------------------------------------------


@pytest.mark.parametrize("norm, adaptive, rho", [
    ("linf", False, 0.02), ("linf", True, 0.05), ("l2", False, 0.5),
])
def test_worst_case_follows_the_reference_apgd_trajectory(norm, adaptive, rho):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(48, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (48,))
    batches = [(x[:24], y[:24]), (x[24:], y[24:])]
    ours = sharpness.worst_case(model, nn.functional.cross_entropy, batches, rho=rho,
                                norm=norm, adaptive=adaptive).value
    reference = reference_m_apgd(copy.deepcopy(model), nn.functional.cross_entropy, batches,
                                 rho, 20, norm, adaptive)
    assert ours > 0
    assert ours == pytest.approx(reference, rel=1e-9)
