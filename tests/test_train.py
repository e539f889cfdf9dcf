"""The trial loop on the digits set: schedules applied per epoch, resume
identical to an uninterrupted run, divergence recorded, MLflow run layout."""

import math

import pandas as pd
import pytest
from trial_sinks import Recorder, assert_resume_is_exact

from samtune.config import make_trial_config
from samtune.trial.loop import Trial, train

FAST = {"epochs": 4, "batch_size": 32, "batch_growth_ratio": 2.0, "batch_stages": 2,
        "num_threads": 1, "sharpness": [], "train_eval_examples": 256}


def test_schedules_drive_batch_lr_and_counters():
    config = make_trial_config(FAST | {"lr_shape": "cosine", "lr_final": 0.001})
    sink = Recorder()
    result = train(config, sink)
    batches = [r["batch_size"] for r in sink.records]
    assert batches == [32, 32, 64, 64]
    train_size = Trial(config).data.train_size
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


def test_resumed_trial_is_identical_to_uninterrupted():
    assert_resume_is_exact(make_trial_config(FAST | {"optimizer": "gsam", "lr_shape": "linear", "lr_final": 0.01}),
                           after=2)


def test_non_finite_loss_ends_trial_as_diverged():
    result = train(make_trial_config(FAST | {"optimizer": "sgd", "lr": 1e6, "momentum": 0.0}))
    assert result.status == "diverged"
    assert "non-finite" in result.error
    assert not math.isfinite(result.history[-1]["train_loss"])


def test_cli_train_records_one_mlflow_run(tmp_path, monkeypatch, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from samtune.cli import main

    monkeypatch.chdir(tmp_path)
    uri = mlflow_uri
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
    assert {"config.yaml", "history.csv"} <= artifacts
    # the final model: a logged model of the run, with its files, params and linked final metrics
    (model,) = client.search_logged_models([experiment.experiment_id])
    assert (model.name, model.source_run_id, str(model.status)) == ("model", run.info.run_id, "READY")
    assert {a.path for a in client.list_logged_model_artifacts(model.model_id)} == {"model.pt", "config.yaml"}
    assert model.params["epochs"] == "2" and "device" not in model.params  # hyperparameters only
    linked = {m.key: m for m in model.metrics}
    assert linked["final_test_error"].value == run.data.metrics["final_test_error"]
    evaluation = next(i.dataset for i in run.inputs.dataset_inputs if i.tags[0].value == "evaluation")
    assert linked["final_test_error"].dataset_digest == evaluation.digest
    assert linked["final_train_error"].dataset_digest is None
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    csv = pd.read_csv(client.download_artifacts(run.info.run_id, "history.csv"))
    assert list(csv["epoch"]) == [1, 2]
    # the saved model can be measured again from its run id
    from samtune.commands.sharpness import measure_saved_trial

    values = measure_saved_trial(run.info.run_id, names=("ascent",), device="cpu", tracking_uri=uri)
    assert values["sharpness_ascent"] == pytest.approx(run.data.metrics["sharpness_ascent"], rel=1e-5)


def _png(path, size):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)


@pytest.mark.parametrize(("layout", "fragment"), [
    ({"train/a/0.png": (8, 8), "train/b/0.png": (8, 8), "test/z/0.png": (8, 8)},
     "test has classes with no train folder: ['z']"),
    ({"train/a/0.png": (8, 8), "train/b/notes.txt": None, "test/a/0.png": (8, 8)},
     "class folders with no images under {folder}/train: ['b']"),
    ({"train/a/0.png": (8, 8), "train/a/1.png": (9, 8), "test/a/0.png": (8, 8)},
     "all images must have the same size"),
    ({"train/a/0.png": (8, 8)}, "no held-out split at {folder}"),
])
def test_cli_train_refuses_a_malformed_image_folder(tmp_path, monkeypatch, capsys, layout, fragment):
    """Exit 2 naming the folder and what was expected, before anything is recorded."""
    from samtune.cli import main

    folder = tmp_path / "images"
    for name, size in layout.items():
        if size is None:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("not an image")
        else:
            _png(folder / name, size)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--set", f"dataset=imagefolder:{folder}", "--set", "epochs=1", "--set", "batch_stages=1",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err
    assert code == 2 and fragment.format(folder=folder) in err and str(folder) in err
    assert not (tmp_path / "mlflow.db").exists()
