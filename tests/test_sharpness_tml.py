"""Andriushchenko et al.'s average-case linf and logit-normalized measures against
transcriptions of their code (tests/tml_sharpness.py), on a small network
trained on scikit-learn's digits so that the losses are not trivial.

Everything runs in float64, so the two sides agree to rounding of sums taken in
another order (rel 1e-9), except where a tolerance says why not.
"""

import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from tml_sharpness import LogitNormalizationWrapper, eval_average_sharpness, reference_m_apgd
from torch import nn

from samtune import sharpness

ce = nn.functional.cross_entropy
SUMS = 1e-9  # float64 sums in another order


@pytest.fixture(scope="module")
def trained():
    """A BatchNorm MLP after 40 SGD steps on digits (train loss ≈ 0.3, not 0), and
    three batches of 32 of its training examples."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float64)
    y = torch.tensor(digits.target)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                              nn.Linear(32, 10)).double()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
        for _ in range(40):
            rows = torch.randint(0, len(y), (64,))
            optimizer.zero_grad()
            ce(model(x[rows]), y[rows]).backward()
            optimizer.step()
    model.eval()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    with torch.no_grad():
        loss = ce(model(x[:96]), y[:96]).item()
    assert 0.05 < loss < 1.0
    return model, batches


def reference_model(model, normalize_logits):
    return LogitNormalizationWrapper(copy.deepcopy(model), normalize_logits)


class FlatNormalDraws:
    """``randn_like`` for the reference that hands out samtune's draws: one flat
    N(0, I) vector per perturbation from a generator seeded like samtune's, cut
    into the parameter tensors in order (CPU normal draws of one vector differ
    from per-tensor draws, so the reference's own calls would not match)."""

    def __init__(self, model, seed):
        self.sizes = [p.numel() for p in model.parameters()]
        self.generator = torch.Generator().manual_seed(seed)
        self.pieces = []

    def __call__(self, like):
        if not self.pieces:
            flat = torch.randn(sum(self.sizes), generator=self.generator, dtype=like.dtype)
            self.pieces = list(flat.split(self.sizes))
        return self.pieces.pop(0).view_as(like).clone()


# -- average case in the linf box -------------------------------------------------


@pytest.mark.parametrize("name", ["avg_linf", "avg_linf_adaptive", "avg_linf_adaptive_lognorm"])
def test_average_linf_equals_the_reference_for_the_same_seed(trained, name):
    # The reference draws with torch.rand_like per tensor from the global RNG; on the
    # CPU that stream is the one samtune's single flat draw from a generator seeded
    # alike gives, so the same seed means the same perturbations.
    model, batches = trained
    settings = sharpness.MEASURES[name].settings
    ours = sharpness.measure_all(model, ce, batches, names=[name], seed=7)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        theirs = eval_average_sharpness(
            reference_model(model, settings.get("normalize_logits", False)), batches, ce,
            n_iters=settings["samples"], rho=settings["rho"], adaptive=settings["adaptive"],
            norm="linf")
    value = ours[f"sharpness_{name}"]
    assert value != 0 and ours[f"sharpness_{name}_stderr"] > 0
    assert value == pytest.approx(theirs, rel=SUMS)


def test_average_linf_draws_fill_the_box_uniformly():
    # the reference's random_init_lw(norm='linf'): uniform in [-ρ c, ρ c], not ±ρ c
    seen = []

    class Record(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, -4.0], dtype=torch.float64))

        def forward(self, x):
            seen.append(self.w.detach().clone())
            return self.w.sum()

    sharpness.average_box(Record(), lambda out, y: out, [(torch.zeros(1), torch.zeros(1))],
                          rho=0.5, adaptive=True, samples=2000)
    deltas = torch.stack(seen[1:]) - torch.tensor([1.0, -4.0], dtype=torch.float64)
    bound = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert (deltas.abs() <= bound).all()
    assert np.allclose((deltas / bound).var(dim=0).numpy(), 1 / 3, rtol=0.1)  # U[-1, 1]: 1/3
    assert (deltas.abs() < 0.9 * bound).float().mean() > 0.8  # not the sign vector


# -- logit-normalized measures -------------------------------------------------------


def test_average_l2_lognorm_equals_the_reference_for_the_same_draws(trained):
    model, batches = trained
    settings = sharpness.MEASURES["avg_l2_adaptive_lognorm"].settings
    ours = sharpness.measure_all(model, ce, batches, names=["avg_l2_adaptive_lognorm"], seed=3)
    theirs = eval_average_sharpness(
        reference_model(model, True), batches, ce, n_iters=settings["samples"],
        rho=settings["sigma"], adaptive=True, norm="l2", randn_like=FlatNormalDraws(model, 3))
    plain = sharpness.measure_all(model, ce, batches, names=["avg_l2_adaptive"], seed=3)
    assert ours["sharpness_avg_l2_adaptive_lognorm"] == pytest.approx(theirs, rel=SUMS)
    # the same draws on another loss: the normalization is what differs
    assert plain["sharpness_avg_l2_adaptive"] != pytest.approx(theirs, rel=0.1)


def test_worst_linf_lognorm_follows_the_reference_apgd(trained):
    model, batches = trained
    rho = sharpness.MEASURES["worst_linf_adaptive_lognorm"].settings["rho"]
    ours = sharpness.measure_all(model, ce, batches, names=["worst_linf_adaptive_lognorm"])
    theirs = reference_m_apgd(reference_model(model, True), ce, batches, rho, 20, "linf", True)
    plain = sharpness.worst_case(model, ce, batches, rho=rho, norm="linf", adaptive=True).value
    assert ours["sharpness_worst_linf_adaptive_lognorm"] > 0
    assert ours["sharpness_worst_linf_adaptive_lognorm"] == pytest.approx(theirs, rel=SUMS)
    assert plain != pytest.approx(theirs, rel=0.1)


def test_worst_l2_lognorm_follows_the_reference_apgd(trained):
    # The reference projects onto the ellipsoid by bisection until
    # |‖δ/|w|‖ − ρ| ≤ 1e-5, samtune by Newton's method to 1e-6 ρ: the iterates
    # differ by about 1e-5 of ρ, and so do the values (1.6e-5 relative here).
    model, batches = trained
    rho = sharpness.MEASURES["worst_l2_adaptive_lognorm"].settings["rho"]
    ours = sharpness.measure_all(model, ce, batches, names=["worst_l2_adaptive_lognorm"])
    theirs = reference_m_apgd(reference_model(model, True), ce, batches, rho, 20, "l2", True)
    assert ours["sharpness_worst_l2_adaptive_lognorm"] > 0
    assert ours["sharpness_worst_l2_adaptive_lognorm"] == pytest.approx(theirs, rel=1e-4)


def test_normalize_logits_matches_the_reference_wrapper():
    logits = torch.randn(5, 7, dtype=torch.float64) * 30
    logits[2] = 4.0  # all equal: the 1e-10 floor gives zeros, not NaN
    ours = sharpness.normalize_logits(logits)
    theirs = LogitNormalizationWrapper(nn.Identity(), True)(logits)
    assert torch.allclose(ours, theirs, rtol=1e-15, atol=0)
    assert torch.equal(ours[2], torch.zeros(7, dtype=torch.float64))
    assert torch.allclose(ours.norm(dim=-1)[[0, 1, 3, 4]], torch.ones(4, dtype=torch.float64))


# -- definitions ------------------------------------------------------------------------


def test_lognorm_measures_are_logged_as_their_own_definition():
    params = sharpness.measure_settings(["worst_linf_adaptive", "worst_linf_adaptive_lognorm",
                                         "avg_linf_adaptive_lognorm"])
    assert params["sharpness.worst_linf_adaptive_lognorm.normalize_logits"] == "True"
    assert params["sharpness.avg_linf_adaptive_lognorm.normalize_logits"] == "True"
    # the plain measure keeps the definition earlier trials logged, and cannot be
    # switched to normalized logits under its own name
    assert "sharpness.worst_linf_adaptive.normalize_logits" not in params
    with pytest.raises(ValueError, match=r"overrides\['worst_linf_adaptive'\].*normalize_logits"):
        sharpness.measure_settings(["worst_linf_adaptive"],
                                   {"worst_linf_adaptive": {"normalize_logits": True}})
    lognorm = {k.split(".", 2)[2]: v for k, v in params.items()
               if k.startswith("sharpness.worst_linf_adaptive_lognorm.")}
    plain = {k.split(".", 2)[2]: v for k, v in params.items()
             if k.startswith("sharpness.worst_linf_adaptive.")}
    assert lognorm == {**plain, "normalize_logits": "True"}


@pytest.mark.parametrize("call, key", [
    (lambda m, b: sharpness.average_box(m, ce, b, rho=-0.1), "rho"),
    (lambda m, b: sharpness.average_box(m, ce, b, adaptive=1), "adaptive"),
    (lambda m, b: sharpness.average_box(m, ce, b, samples=1), "samples"),
    (lambda m, b: sharpness.average_box(m, ce, b, normalize_logits="yes"), "normalize_logits"),
    (lambda m, b: sharpness.worst_case(m, ce, b, normalize_logits=None), "normalize_logits"),
    (lambda m, b: sharpness.average_case(m, ce, b, normalize_logits=0), "normalize_logits"),
])
def test_bad_settings_name_the_key(call, key):
    model = nn.Linear(3, 2)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    with pytest.raises(ValueError, match=key):
        call(model, batches)


def test_normalized_logits_need_classes():
    model = nn.Linear(3, 1)
    batches = [(torch.randn(4, 3), torch.zeros(4, 1))]
    with pytest.raises(ValueError, match=r"normalize_logits needs class logits.*\(4, 1\)"):
        sharpness.worst_case(model, nn.functional.mse_loss, batches, normalize_logits=True)
