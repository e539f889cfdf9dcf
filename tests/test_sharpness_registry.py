"""The registry, measure_all / measure_settings, and the contract every measure
keeps: the model is left exactly as it was found."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from samtune import sharpness

# cheap settings so every registered measure runs in well under a second
FAST = {
    "harada": {"steps": 3}, "worst_linf": {"steps": 3}, "worst_linf_adaptive": {"steps": 3},
    "worst_l2": {"steps": 3}, "worst_l2_adaptive": {"steps": 3},
    "avg_l2": {"samples": 3}, "avg_l2_adaptive": {"samples": 3}, "avg_sphere": {"samples": 3},
    "worst_linf_adaptive_lognorm": {"steps": 3}, "worst_l2_adaptive_lognorm": {"steps": 3},
    "avg_l2_adaptive_lognorm": {"samples": 3}, "avg_linf": {"samples": 3},
    "avg_linf_adaptive": {"samples": 3}, "avg_linf_adaptive_lognorm": {"samples": 3},
    "keskar": {"steps": 3}, "hessian_max_eig": {"iters": 4},
    "hessian_trace": {"samples": 3, "deflation": 2},
}


def bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    for _ in range(3):  # non-trivial running statistics and num_batches_tracked
        model(torch.randn(16, 1, 6, 6))
    return model


def data(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2:], y[n // 2:])]


def snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "rng": torch.get_rng_state(),
    }


def assert_unchanged(before, model):
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    for old, new in zip(before["grad"], after["grad"]):
        assert (old is None and new is None) or torch.equal(old, new)
    assert torch.equal(before["rng"], after["rng"])


@pytest.fixture
def prepared_model():
    model = bn_model()
    model[1].eval()  # a mixed state: one BatchNorm already in eval mode
    model[5].weight.requires_grad_(False)
    model[0].weight.grad = torch.randn_like(model[0].weight)  # stale grads stay as they were
    return model


@pytest.mark.filterwarnings("ignore:harada is defined")
@pytest.mark.parametrize("name", sorted(sharpness.MEASURES))
def test_every_measure_leaves_the_model_exactly_as_found(name, prepared_model):
    init = [p.detach().clone() * 0.9 for p in prepared_model.parameters()]
    before = snapshot(prepared_model)
    result = sharpness.measure_all(prepared_model, nn.functional.cross_entropy, data(),
                                   names=[name], init_params=init, overrides=FAST)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.values())
    assert_unchanged(before, prepared_model)


def test_lbfgsb_keskar_leaves_the_model_exactly_as_found(prepared_model):
    before = snapshot(prepared_model)
    sharpness.keskar(prepared_model, nn.functional.cross_entropy, data(), method="lbfgsb",
                     steps=3)
    assert_unchanged(before, prepared_model)


def test_mode_is_restored_when_the_loss_raises(prepared_model):
    before = snapshot(prepared_model)
    calls = []

    def failing_loss(outputs, targets):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(outputs, targets)

    with pytest.raises(RuntimeError, match="boom"):
        sharpness.worst_case(prepared_model, failing_loss, data())
    assert_unchanged(before, prepared_model)


def test_measures_use_running_statistics_not_batch_statistics():
    model = bn_model()
    model[3].p = 0.0  # no dropout noise, so only BatchNorm tells the modes apart
    batches = data()
    in_train_mode = sharpness.ascent(model, nn.functional.cross_entropy, batches).value
    assert model.training
    model.eval()
    in_eval_mode = sharpness.ascent(model, nn.functional.cross_entropy, batches).value
    assert in_train_mode == in_eval_mode
    # the comparison means something: batch statistics give other outputs
    x = batches[0][0]
    with torch.no_grad():
        eval_outputs = model(x)
        train_outputs = copy.deepcopy(model).train()(x)
    assert not torch.allclose(eval_outputs, train_outputs, atol=1e-3)


@pytest.mark.filterwarnings("ignore:harada is defined")
def test_measure_all_keys_and_defaults():
    model = bn_model()
    init = [p.detach().clone() * 0.9 for p in model.parameters()]
    result = sharpness.measure_all(model, nn.functional.cross_entropy, data(),
                                   init_params=init, overrides=FAST)
    assert list(result) == sharpness.metric_names(sharpness.DEFAULT_MEASURES)
    assert "sharpness_harada" in result and "sharpness_hessian_trace_stderr" in result
    assert result["norm_dist_from_init"] > 0
    # without init_params the default set skips the distance from init ...
    result = sharpness.measure_all(model, nn.functional.cross_entropy, data(), overrides=FAST)
    assert "norm_dist_from_init" not in result and "norm_param_l2" in result
    # ... and asking for it explicitly is an error
    with pytest.raises(ValueError, match="init_params"):
        sharpness.measure_all(model, nn.functional.cross_entropy, data(),
                              names=["norm_dist_from_init"])


def test_norms_match_numpy():
    model = bn_model()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()
    init = {name: p.detach() + 0.5 for name, p in model.named_parameters()}
    result = sharpness.measure_all(model, nn.functional.cross_entropy, data(),
                                   names=["norm_param_l2", "norm_dist_from_init"],
                                   init_params=init)
    assert result["norm_param_l2"] == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    assert result["norm_dist_from_init"] == pytest.approx(0.5 * np.sqrt(flat.size), rel=1e-6)


def test_measure_all_is_seeded():
    model = bn_model()
    names = ["avg_l2", "hessian_trace"]
    first = sharpness.measure_all(model, nn.functional.cross_entropy, data(), names=names,
                                  overrides=FAST, seed=5)
    again = sharpness.measure_all(model, nn.functional.cross_entropy, data(), names=names,
                                  overrides=FAST, seed=5)
    other = sharpness.measure_all(model, nn.functional.cross_entropy, data(), names=names,
                                  overrides=FAST, seed=6)
    assert first == again
    assert first["sharpness_avg_l2"] != other["sharpness_avg_l2"]


def test_overrides_change_the_definition():
    model = bn_model()
    small = sharpness.measure_all(model, nn.functional.cross_entropy, data(), names=["ascent"])
    large = sharpness.measure_all(model, nn.functional.cross_entropy, data(), names=["ascent"],
                                  overrides={"ascent": {"rho": 0.5}})
    assert large["sharpness_ascent"] > small["sharpness_ascent"]


def test_harada_settings_are_flat_strings():
    x = torch.zeros(1024, 1)
    y = torch.zeros(1024, dtype=torch.long)
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 1024, 128)]
    params = sharpness.measure_settings(["harada", "hessian_trace", "norm_param_l2"],
                                        batches=batches)
    assert params["sharpness.harada.rho"] == "0.0002"
    assert params["sharpness.harada.norm"] == "linf"
    assert params["sharpness.harada.adaptive"] == "False"
    assert params["sharpness.harada.steps"] == "20"
    assert params["sharpness.harada.n_examples"] == "1024"
    assert params["sharpness.harada.m"] == "128"
    assert params["sharpness.hessian_trace.samples"] == "10"
    assert params["sharpness.hessian_trace.deflation"] == "10"
    assert "sharpness.hessian_trace.m" not in params  # a full-batch quantity
    assert not any(key.startswith("sharpness.norm_param_l2") for key in params)
    overridden = sharpness.measure_settings(["harada"], {"harada": {"rho": 1e-3}})
    assert overridden["sharpness.harada.rho"] == "0.001"


def test_harada_warns_when_the_data_differ_from_its_definition():
    model = bn_model()
    with pytest.warns(UserWarning, match="1024 examples in batches of 128"):
        sharpness.measure_all(model, nn.functional.cross_entropy, data(), names=["harada"],
                              overrides=FAST)


def test_unknown_names_and_settings_are_refused():
    model = bn_model()
    with pytest.raises(ValueError, match="unknown sharpness measure 'sharpest'.*harada"):
        sharpness.measure_all(model, nn.functional.cross_entropy, data(), names=["sharpest"])
    with pytest.raises(ValueError, match="unknown sharpness measure"):
        sharpness.measure_settings(["sharpest"])
    with pytest.raises(ValueError, match=r"overrides\['harada'\].*'radius'.*allowed: rho"):
        sharpness.measure_settings(["harada"], {"harada": {"radius": 1.0}})
    with pytest.raises(ValueError, match="unknown sharpness measure 'nope'"):
        sharpness.measure_settings(["harada"], {"nope": {}})
