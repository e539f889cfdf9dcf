"""1-D interpolation between two models: the endpoints are the two models, a linear
model's MSE is a quadratic in a, BatchNorm statistics are interpolated, mistakes
are refused, and ``samtune interpolate`` on two recorded digits trials."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samtune import schema
from samtune.config import ConfigError
from samtune.sharpness import interpolation


def bn_model(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    for _ in range(seed + 2):  # running statistics and num_batches_tracked of its own
        model(torch.randn(16, 5) * (seed + 1))
    return model.eval()


def batches(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
    return [(x[:24], y[:24]), (x[24:], y[24:])]


def direct(model, data):
    """Mean cross-entropy and error of the model itself over all examples."""
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    with torch.no_grad():
        outputs = model.eval()(x)
    return F.cross_entropy(outputs, y).item(), (outputs.argmax(1) != y).float().mean().item()


def test_endpoints_are_the_two_models_and_the_model_is_left_as_found():
    one, two = bn_model(0), bn_model(1)
    train, test = batches(seed=0), batches(seed=1)
    architecture = bn_model(7).train()
    before = copy.deepcopy(architecture.state_dict())
    frame = interpolation.interpolation_curve(architecture, one.state_dict(), two.state_dict(),
                                              train, test, [0.0, 0.5, 1.0])
    assert list(frame.columns) == list(interpolation.COLUMNS)
    for row, model in ((0, one), (2, two)):
        got = frame.iloc[row]
        assert (got.train_loss, got.train_error) == pytest.approx(direct(model, train), rel=1e-6)
        assert (got.test_loss, got.test_error) == pytest.approx(direct(model, test), rel=1e-6)
    assert frame.train_loss[1] != pytest.approx(frame.train_loss[0])
    assert architecture.training
    for key, value in architecture.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_batchnorm_statistics_are_interpolated_and_counts_kept():
    one, two = bn_model(0).state_dict(), bn_model(1).state_dict()
    for a in (0.0, 1.0, 0.3):
        state = interpolation.interpolate_state(one, two, a)
        for key in ("1.running_mean", "1.running_var", "0.weight"):
            expected = one[key] if a == 0 else two[key] if a == 1 else (1 - a) * one[key] + a * two[key]
            torch.testing.assert_close(state[key], expected, rtol=0, atol=1e-7)
        assert torch.equal(state["1.num_batches_tracked"], one["1.num_batches_tracked"])
    assert one["1.num_batches_tracked"] != two["1.num_batches_tracked"]
    # the endpoints are the models bit for bit
    assert all(torch.equal(v, one[k]) for k, v in interpolation.interpolate_state(one, two, 0.0).items())
    assert all(torch.equal(v, two[k]) for k, v in interpolation.interpolate_state(one, two, 1.0).items()
               if v.is_floating_point())
    # an extrapolated variance below zero is clamped
    var = {"bn.running_var": torch.tensor([1.0, 0.2])}
    low = {"bn.running_var": torch.tensor([0.2, 1.0])}
    assert interpolation.interpolate_state(var, low, 2.0)["bn.running_var"].tolist() == pytest.approx([0.0, 1.8])


def test_mse_of_a_linear_model_is_a_quadratic_in_a():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((30, 4)))
    y = torch.from_numpy(rng.standard_normal((30, 2)))
    data = [(x[:20], y[:20]), (x[20:], y[20:])]
    model = nn.Linear(4, 2).double()
    one = {k: torch.from_numpy(rng.standard_normal(v.shape)) for k, v in model.state_dict().items()}
    two = {k: torch.from_numpy(rng.standard_normal(v.shape)) for k, v in model.state_dict().items()}
    alphas = interpolation.grid(13, -1.0, 2.0)
    frame = interpolation.interpolation_curve(model, one, two, data, data, alphas, loss_fn=F.mse_loss)
    fit_at = [0, 6, 12]
    coefficients = np.polyfit(frame.a[fit_at], frame.train_loss[fit_at], 2)
    np.testing.assert_allclose(np.polyval(coefficients, frame.a), frame.train_loss, rtol=1e-10)
    assert coefficients[0] > 0  # convex in a, and not degenerate
    # and the endpoints are the two weight sets' own MSE
    for a, weights in ((0.0, one), (1.0, two)):
        w, b = weights["weight"], weights["bias"]
        expected = F.mse_loss(x @ w.T + b, y, reduction="sum").item() / y.numel()
        assert frame.train_loss[frame.a == a].item() == pytest.approx(expected, rel=1e-12)


def test_grid_contains_both_models_exactly():
    default = interpolation.grid()
    assert len(default) == 31 and default[0] == -1.0 and default[-1] == 2.0
    assert 0.0 in default and 1.0 in default
    np.testing.assert_allclose(np.diff(default), 0.1, rtol=1e-9)
    coarse = interpolation.grid(5, -1.0, 2.0)  # spacing 0.75 misses both: they are added
    assert list(coarse) == [-1.0, -0.25, 0.0, 0.5, 1.0, 1.25, 2.0]
    assert list(interpolation.grid(3, 0.0, 1.0)) == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("points, lo, hi, message", [
    (2, -1.0, 2.0, r"points = 2: allowed an integer >= 3"),
    (31, 1.0, 0.5, r"range = 1.0 0.5: allowed two finite numbers lo < hi"),
    (31, 1.0, 1.0, r"range = 1.0 1.0: allowed two finite numbers lo < hi"),
    (31, 0.2, 2.0, r"range = 0.2 2.0: allowed lo <= 0 and hi >= 1"),
    (31, -1.0, 0.5, r"range = -1.0 0.5: allowed lo <= 0 and hi >= 1"),
])
def test_bad_grids_are_refused(points, lo, hi, message):
    with pytest.raises(ConfigError, match=message):
        interpolation.grid(points, lo, hi)


def test_different_architectures_are_refused():
    one = bn_model(0).state_dict()
    wider = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).state_dict()
    with pytest.raises(ConfigError, match=r"3.weight has shape \(3, 8\) in A and \(4, 8\) in B"):
        interpolation.check_compatible(one, wider, ("A", "B"))


def test_figure_has_a_log_loss_axis_and_marks_both_models(tmp_path):
    frame = pd.DataFrame({"a": [-1.0, 0.0, 1.0, 2.0], "train_loss": [3.0, 0.1, 0.2, 4.0],
                          "train_error": [0.6, 0.0, 0.01, 0.7], "test_loss": [3.1, 0.3, 0.4, 4.2],
                          "test_error": [0.6, 0.05, 0.06, 0.7]})
    fig = interpolation.interpolation_figure(frame, ("run-a", "run-b"))
    loss_ax = fig.axes[0]
    assert loss_ax.get_yscale() == "log"
    assert {t.get_text() for t in loss_ax.texts} == {"θ₁ run-a", "θ₂ run-b"}
    csv, png = interpolation.write_outputs(frame, ("run-a", "run-b"), tmp_path / "out")
    assert csv.name == schema.ARTIFACT_INTERPOLATION_CSV and png.name == schema.ARTIFACT_INTERPOLATION_PNG
    pd.testing.assert_frame_equal(pd.read_csv(csv), frame)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the command on two recorded trials ---------------------------------------------------
def train_run(uri, *settings):
    from samtune.cli import main

    assert main(["train", "--tracking-uri", uri, "--set", "epochs=1", "--set", "batch_stages=1",
                 "--set", "num_threads=1", "--set", "sharpness=[]", *settings]) == 0


def test_cli_interpolates_two_recorded_trials(tmp_path, monkeypatch, capsys, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from samtune.cli import main

    monkeypatch.chdir(tmp_path)
    uri = mlflow_uri
    train_run(uri, "--set", "batch_size=16")  # Keskar's small batch ...
    train_run(uri, "--set", "batch_size=128", "--set", "seed=1")  # ... and large batch
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(schema.DEFAULT_EXPERIMENT_TRAIN)
    small, large = sorted(client.search_runs([experiment.experiment_id]),
                          key=lambda r: int(r.data.params["batch_size"]))
    a, b = small.info.run_id, large.info.run_id

    out = tmp_path / "curve"
    assert main(["interpolate", a, b, "--points", "7", "--range", "-0.5", "1.5", "--out", str(out),
                 "--tracking-uri", uri]) == 0
    frame = pd.read_csv(out / schema.ARTIFACT_INTERPOLATION_CSV)
    # seven values 1/3 apart, which miss a = 0 and a = 1: both are added
    assert list(frame.a) == pytest.approx([-0.5, -1 / 6, 0.0, 1 / 6, 0.5, 5 / 6, 1.0, 7 / 6, 1.5])
    assert (out / schema.ARTIFACT_INTERPOLATION_PNG).stat().st_size > 0
    # the endpoints are what each trial reported of itself (all 797 training examples)
    for a_value, run in ((0.0, small), (1.0, large)):
        row = frame[frame.a == a_value].iloc[0]
        for key in ("train_loss", "train_error", "test_loss", "test_error"):
            assert row[key] == pytest.approx(run.data.metrics[f"final_{key}"], rel=1e-5, abs=1e-7), key

    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{schema.TAG_KIND}` = '{schema.KIND_INTERPOLATION}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags[schema.TAG_INTERPOLATED_RUNS] == f"{a},{b}"
    assert run.data.params["points"] == "9" and run.data.params["range"] == "-0.5,1.5"
    assert run.data.params["train_examples"] == "797" and run.data.params["test_examples"] == "1000"
    history = client.get_metric_history(run.info.run_id, "interp_train_loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(list(frame.train_loss))
    assert {m.step for m in client.get_metric_history(run.info.run_id, "interp_a")} == set(range(9))
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert artifacts == {schema.ARTIFACT_INTERPOLATION_CSV, schema.ARTIFACT_INTERPOLATION_PNG}

    # a different model is refused, naming both, and nothing is recorded
    from samtune.commands.sources import open_weights

    saved = open_weights(a, uri)
    state = {"config": saved.config, "model": saved.model}
    other = tmp_path / "other.pt"
    torch.save({"config": dict(state["config"], model="vit_tiny"), "model": state["model"]}, other)
    capsys.readouterr()
    assert main(["interpolate", a, str(other), "--tracking-uri", uri, "--out", str(tmp_path / "no")]) == 2
    error = capsys.readouterr().err
    assert "model: 'small_cnn'" in error and "'vit_tiny'" in error and str(other) in error
    assert main(["interpolate", a, b, "--points", "2", "--tracking-uri", uri]) == 2
    assert "points = 2: allowed an integer >= 3" in capsys.readouterr().err
    assert main(["interpolate", a, b, "--range", "0.5", "2", "--tracking-uri", uri]) == 2
    assert "range = 0.5 2.0: allowed lo <= 0" in capsys.readouterr().err
    assert len(client.search_runs([experiment.experiment_id])) == 3
    assert not (tmp_path / "no").exists() and not (tmp_path / "interpolations").exists()
