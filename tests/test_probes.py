"""The theory probes against closed forms: linear least squares, where the SAM and GSAM
directions are explicit; the model left exactly as found; a digits trial reporting them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samtune import schema
from samtune.config import make_trial_config
from samtune.models import create_model
from samtune.trial.loop import train
from samtune.trial.probes import Direction, draw_batches, probe_metrics, update_direction

RHO, ALPHA = 0.3, 0.4


def least_squares(seed: int = 0, n: int = 40, d: int = 5):
    """f(w, b) = ‖Xw + b − y‖²/(2n) as a float64 linear model, and its data."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=n)
    model = torch.nn.Linear(d, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(rng.normal(size=(1, d))))
        model.bias.fill_(0.7)
    return model, torch.from_numpy(x), torch.from_numpy(y)


def half_mse(outputs, targets):
    return 0.5 * ((outputs.squeeze(-1) - targets) ** 2).mean()


def closed_form_direction(model, x, y, rho, alpha):
    """g = Xᵀ(Xw − y)/n, g_s = g + ρ H g/‖g‖ (H = XᵀX/n, exact for a quadratic), GSAM on top;
    the bias is the coefficient of a column of ones."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    w = np.append(model.weight.detach().numpy().ravel(), model.bias.item())
    g = xa.T @ (xa @ w - y) / len(y)
    g_s = g + rho * (xa.T @ xa / len(y)) @ g / np.linalg.norm(g)
    return g_s - alpha * (g - (g @ g_s) / (g_s @ g_s) * g_s)


@pytest.mark.parametrize("alpha", [0.0, ALPHA])  # SAM, GSAM
def test_probes_match_the_least_squares_closed_forms(alpha):
    model, x, y = least_squares()
    direction = Direction.of_optimizer("gsam" if alpha else "sam", rho=RHO, alpha=alpha)
    batches = draw_batches(len(y), 16, count=3, seed=5)
    metrics = probe_metrics(model, half_mse, x, y, direction, batches, chunk=7)
    xn, yn = x.numpy(), y.numpy()
    full = closed_form_direction(model, xn, yn, RHO, alpha)
    assert metrics["probe_sam_grad_sq"] == pytest.approx(full @ full, rel=1e-10, abs=1e-12)
    msd = np.mean([np.sum((closed_form_direction(model, xn[b], yn[b], RHO, alpha) - full) ** 2)
                   for b in (b.numpy() for b in batches)])
    assert metrics["probe_direction_msd"] == pytest.approx(msd, rel=1e-10, abs=1e-12)


def test_plain_sgd_probes_the_gradient_and_usam_does_not_normalize():
    model, x, y = least_squares(seed=1)
    xn, yn = x.numpy(), y.numpy()
    xa = np.hstack([xn, np.ones((len(yn), 1))])
    g = np.concatenate([t.numpy().ravel() for t in update_direction(model, half_mse, x, y, Direction())])
    w = np.append(model.weight.detach().numpy().ravel(), model.bias.item())
    np.testing.assert_allclose(g, xa.T @ (xa @ w - yn) / len(yn), rtol=1e-12)
    usam = Direction.of_optimizer("usam", rho=RHO)
    d = np.concatenate([t.numpy().ravel() for t in update_direction(model, half_mse, x, y, usam)])
    np.testing.assert_allclose(d, g + RHO * (xa.T @ xa / len(yn)) @ g, rtol=1e-12)


def test_batches_are_drawn_with_replacement_reproducibly_for_any_size():
    first, again = draw_batches(10, 32, count=2, seed=3), draw_batches(10, 32, count=2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(len(b) == 32 and 0 <= b.min() and b.max() < 10 for b in first)


def test_the_model_is_left_exactly_as_found():
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    list(model.modules())[-1].eval()  # a mixed mode, to be restored as it was
    x, y = torch.randn(24, 1, 8, 8), torch.randint(10, (24,))
    model(x)  # BN statistics away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    metrics = probe_metrics(model, torch.nn.functional.cross_entropy, x, y,
                            Direction.of_optimizer("gsam", rho=0.05, alpha=0.1), draw_batches(24, 8, 2, seed=0))
    assert all(np.isfinite(v) and v > 0 for v in metrics.values())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_digits_trial_with_probes_reports_them_every_epoch_without_changing_training():
    values = {"epochs": 2, "batch_size": 64, "batch_stages": 1, "sharpness": [], "train_eval_examples": 64,
              "num_threads": 1, "probe_examples": 64, "probe_batches": 2}
    probed = train(make_trial_config(values | {"probes": True}))
    plain = train(make_trial_config(values))
    for with_probes, without in zip(probed.history, plain.history):
        assert all(np.isfinite(with_probes[k]) and with_probes[k] > 0 for k in schema.PROBE_METRICS)
        assert not set(schema.PROBE_METRICS) & set(without)
        for key in ("train_loss", "test_loss", "test_error", "gradient_evaluations"):
            assert with_probes[key] == without[key], key
