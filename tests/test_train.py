"""The trial loop on the digits set: schedules applied per epoch, resume
identical to an uninterrupted run, divergence recorded, MLflow run layout."""

import io
import math

import pandas as pd
import pytest
import torch
from trial_sinks import Recorder

from samtune.config import make_trial_config
from samtune.train import Trial, train

FAST = {"epochs": 4, "batch_size": 32, "batch_growth_ratio": 2.0, "batch_stages": 2,
        "num_threads": 1, "sharpness": [], "train_eval_examples": 256}


def test_schedules_drive_batch_lr_and_counters():
    config = make_trial_config(FAST | {"lr_shape": "cosine", "lr_final": 0.001})
    sink = Recorder()
    result = train(config, sink)
    batches = [r["batch_size"] for r in sink.records]
    assert batches == [32, 32, 64, 64]
    train_size = Trial(config).data.train_x.shape[0]
    expected_steps = sum(train_size // b for b in batches)  # drop_last
    assert sink.records[-1]["steps"] == expected_steps
    assert sink.records[-1]["samples_seen"] == sum(train_size // b * b for b in batches)
    lrs = [r["lr"] for r in sink.records]
    assert lrs[0] == pytest.approx(config.lr) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert result.status == "completed"
    assert result.final["final_test_error"] == sink.records[-1]["test_error"]
    assert sink.records[-1]["gen_gap"] == pytest.approx(
        sink.records[-1]["test_error"] - sink.records[-1]["train_error"])


def test_default_trial_learns_digits():
    result = train(make_trial_config({"sharpness": [], "epochs": 6, "num_threads": 1}))
    assert result.final["final_test_error"] < 0.05


def test_resumed_trial_is_identical_to_uninterrupted(tmp_path):
    config = make_trial_config(FAST | {"optimizer": "gsam", "lr_shape": "linear", "lr_final": 0.01})
    full = Recorder()
    train(config, full)
    interrupted = Recorder(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        train(config, interrupted)
    # through a file, as a real checkpoint travels
    buffer = io.BytesIO()
    torch.save(interrupted.checkpoints[-1], buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = Recorder()
    train(config, resumed, resume=state)
    assert [r["epoch"] for r in resumed.records] == [3, 4]
    for a, b in zip(full.records[2:], resumed.records):
        for key in ("train_loss", "test_loss", "test_error", "batch_size", "lr", "steps"):
            assert a[key] == b[key], key
    final_full, final_resumed = full.checkpoints[-1]["model"], resumed.checkpoints[-1]["model"]
    for name in final_full:
        assert torch.equal(final_full[name], final_resumed[name]), name


def test_non_finite_loss_ends_trial_as_diverged():
    result = train(make_trial_config(FAST | {"optimizer": "sgd", "lr": 1e6, "momentum": 0.0}))
    assert result.status == "diverged"
    assert "non-finite" in result.error
    assert not math.isfinite(result.history[-1]["train_loss"])


def test_cli_train_records_one_mlflow_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from samtune.cli import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/store.db"
    code = main(["train", "--tracking-uri", uri, "--set", "epochs=2", "--set", "batch_stages=2",
                 "--set", "num_threads=1", "--set", "sharpness=[ascent, norm_param_l2]"])
    assert code == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("samtune-train")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["samtune.status"] == "completed"
    assert run.data.params["optimizer"] == "gsam" and run.data.params["epochs"] == "2"
    for key in ("final_test_error", "final_gen_gap", "sharpness_ascent", "norm_param_l2"):
        assert key in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "test_error")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "history.csv", "model.pt"} <= artifacts
    csv = pd.read_csv(client.download_artifacts(run.info.run_id, "history.csv"))
    assert list(csv["epoch"]) == [1, 2]
    # the saved model can be measured again from its run id
    from samtune.one_trial import measure_saved_trial

    values = measure_saved_trial(run.info.run_id, names=("ascent",), device="cpu", tracking_uri=uri)
    assert values["sharpness_ascent"] == pytest.approx(run.data.metrics["sharpness_ascent"], rel=1e-5)
