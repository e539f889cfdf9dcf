"""Trials' models in MLflow and the researcher's commands on them, without Ray: the
logged model of a trial run, opening any source, keeping the best k, run names, the
Optuna study's storage, system metrics and ``samtune show``."""

import math
import time

import pytest
import torch
import yaml

from samtune import schema
from samtune.commands.sources import open_weights, run_of
from samtune.config import make_trial_config
from samtune.search.study import study_storage
from samtune.tracking.models import keep_best_models, trial_model_id
from samtune.tracking.run_names import trial_number, trial_run_name, tune_trial_name
from samtune.tracking.store import Tracker
from samtune.tracking.trial_run import TrialRun

CONFIG = make_trial_config({"epochs": 2, "batch_stages": 1, "rho": 0.05})


def weights(seed: int) -> dict:
    return {"weight": torch.full((2, 3), float(seed)), "bias": torch.zeros(2)}


def trial_with_model(tracker: Tracker, experiment_id: str, seed: int, *, parent: str | None = None,
                     final: float = 0.1) -> TrialRun:
    run = TrialRun.start(tracker, experiment_id, CONFIG, run_name=f"t{seed}", trial_id=f"t{seed}",
                         parent_run_id=parent, keep_model=True)
    run.log_model({"config": CONFIG.model_dump(mode="json"), "model": weights(seed)},
                  {"final_test_error": final}, step=2)
    run.end(schema.FAILED)  # the state does not matter here; a run must not stay open
    return run


def test_a_trial_model_is_a_logged_model_that_every_source_opens(mlflow_uri, tmp_path):
    tracker = Tracker(mlflow_uri)
    experiment_id = tracker.ensure_experiment("models")
    run = trial_with_model(tracker, experiment_id, 7)
    model_id = trial_model_id(tracker, run.run_id)
    assert model_id == run.model_id and model_id.startswith("m-")
    model = tracker.client.get_logged_model(model_id)
    assert (model.name, model.model_type, model.params["rho"]) == ("model", schema.LOGGED_MODEL_TYPE, "0.05")
    assert {m.key: m.value for m in model.metrics} == {"final_test_error": 0.1}
    by_run, by_uri = open_weights(run.run_id, mlflow_uri), open_weights(f"models:/{model_id}", mlflow_uri)
    for saved in (by_run, by_uri):
        assert torch.equal(saved.model["weight"], torch.full((2, 3), 7.0))
        assert make_trial_config(saved.config) == CONFIG and saved.run_id == run.run_id
    assert run_of(f"models:/{model_id}", tracker) == run.run_id
    # the experiment opens in the UI's model-training view
    assert tracker.client.get_experiment(experiment_id).tags[schema.TAG_EXPERIMENT_KIND] == schema.EXPERIMENT_KIND


def test_a_file_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"config": CONFIG.model_dump(mode="json"), "model": torch.nn.Linear(3, 2)}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        open_weights(str(path), None)
    torch.save({"config": CONFIG.model_dump(mode="json"), "model": weights(1)}, path)
    assert torch.equal(open_weights(str(path), None).model["weight"], torch.full((2, 3), 1.0))


def test_a_run_without_model_falls_back_to_its_checkpoint_else_says_why(mlflow_uri, tmp_path):
    tracker = Tracker(mlflow_uri)
    experiment_id = tracker.ensure_experiment("models")
    run = TrialRun.start(tracker, experiment_id, CONFIG, run_name="pruned", trial_id="pruned")
    run.end(schema.PRUNED)
    with pytest.raises(FileNotFoundError, match=f"run {run.run_id} .* holds no model"):
        open_weights(run.run_id, mlflow_uri)
    checkpoint = tmp_path / "checkpoint_000001"
    checkpoint.mkdir()
    tracker.set_tag(run.run_id, schema.TAG_CHECKPOINT, str(checkpoint))
    with pytest.raises(FileNotFoundError, match="is gone"):
        open_weights(run.run_id, mlflow_uri)
    torch.save({"config": CONFIG.model_dump(mode="json"), "model": weights(3), "epoch": 1},
               checkpoint / schema.RAY_CHECKPOINT_FILE)
    saved = open_weights(run.run_id, mlflow_uri)
    assert "last Ray checkpoint" in saved.origin and torch.equal(saved.model["weight"], torch.full((2, 3), 3.0))
    with pytest.raises(FileNotFoundError, match="no MLflow run 'feedbeef'"):
        open_weights("feedbeef", mlflow_uri)


def test_keep_best_models_keeps_the_k_best_by_the_objective(mlflow_uri):
    tracker = Tracker(mlflow_uri)
    experiment_id = tracker.ensure_experiment("models")
    parent = tracker.start_search_run(experiment_id, run_name="s", spec_yaml="name: s\n", search_keys=["rho"])
    runs = {error: trial_with_model(tracker, experiment_id, i, parent=parent, final=error)
            for i, error in enumerate([0.3, 0.1, 0.2])}
    unscored = trial_with_model(tracker, experiment_id, 9, parent=parent, final=math.nan)
    assert keep_best_models(tracker, experiment_id, parent, metric="final_test_error", mode="min", keep=2) == 2
    kept = {m.source_run_id for m in tracker.client.search_logged_models([experiment_id])}
    assert kept == {runs[0.1].run_id, runs[0.2].run_id} and unscored.run_id not in kept
    assert keep_best_models(tracker, experiment_id, parent, metric="final_test_error", mode="max", keep=2) == 1
    assert {m.source_run_id for m in tracker.client.search_logged_models([experiment_id])} == {runs[0.2].run_id}


def test_run_names_tell_the_searched_values_apart():
    values = {"optimizer": "gsam", "rho": 0.021134, "alpha": 0.04417, "batch_growth_ratio": 2.1534,
              "lr_shape": "constant", "epochs": 12}
    searched = ["rho", "alpha", "batch_growth_ratio", "lr_shape"]
    assert trial_run_name(values, searched, 3) == "#3 ρ=0.0211 α=0.0442 ×2.15 constant"
    assert trial_run_name({"optimizer": "sgd", "schedule": "+C", "seed": 2, "adaptive": True},
                          ["optimizer", "schedule", "seed", "adaptive"]) == "sgd +C seed=2 adaptive=True"
    assert trial_run_name({"optimizer": "gsam"}, []) == "gsam"  # nothing searched: what it is
    assert trial_number(tune_trial_name(12)) == 12 and trial_number("samtune_trial_83c8adbc") is None


@pytest.mark.parametrize(("uri", "storage", "expected"), [
    ("sqlite:////data/runs/mlflow.db", "/ray", "/data/runs/optuna.journal"),
    ("postgresql://u:p@127.0.0.1:5432/mlflow", "/ray", "postgresql://u:p@127.0.0.1:5432/mlflow"
                                                       "?options=-csearch_path%3Doptuna"),
    ("http://127.0.0.1:5000", "/ray/results", "/ray/results/optuna.journal"),
    ("http://127.0.0.1:5000", "s3://bucket/ray", None),
])
def test_the_optuna_study_lives_beside_the_tracking_store(uri, storage, expected):
    found = study_storage(uri, storage)
    assert (found.location if found else None) == expected


def test_system_metrics_sample_into_the_run_until_it_ends(mlflow_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    tracker = Tracker(mlflow_uri)
    experiment_id = tracker.ensure_experiment("system")
    first = TrialRun.start(tracker, experiment_id, CONFIG, run_name="a", trial_id="a").monitor_system()
    deadline = time.monotonic() + 30
    while not any(k.startswith("system/cpu") for k in tracker.client.get_run(first.run_id).data.metrics):
        assert time.monotonic() < deadline, "no system metric within 30 s"
        time.sleep(0.2)
    second = TrialRun.start(tracker, experiment_id, CONFIG, run_name="b", trial_id="b").monitor_system()
    assert first._monitor is None  # one monitor per process: the next trial's replaces it
    second.end(schema.FAILED)
    assert second._monitor is None


def test_show_prints_a_trial_that_samtune_train_runs_again(mlflow_uri):
    from samtune.commands.show import show_trial

    tracker = Tracker(mlflow_uri)
    run = trial_with_model(tracker, tracker.ensure_experiment("models"), 5)
    shown = show_trial(run.run_id, mlflow_uri)
    assert f"# model: models:/{run.model_id}" in shown and "#   final_test_error: 0.1" in shown
    assert make_trial_config(yaml.safe_load(shown)) == CONFIG
