"""The ViT recipe inside a trial: both SAM passes on the same mixed batch, training error
against the hard labels, budgets over several passes, exact resume, and one
`samtune train` run of ViT-T on digits with the whole recipe recorded in MLflow."""


import pytest
import torch
from trial_sinks import assert_resume_is_exact

from samtune.config import make_trial_config
from samtune.data.worker_loader import WorkerLoader
from samtune.trial.loop import Trial, train

RECIPE = {"autoaugment": True, "random_erasing": 0.25, "cutmix_prob": 0.25, "mixup_prob": 0.25,
          "epoch_passes": 3, "label_smoothing": 0.1, "augment_pipeline": "workers"}
FAST = {"batch_size": 32, "batch_stages": 1, "num_threads": 1, "sharpness": [], "train_eval_examples": 128,
        "device": "cpu"}


def test_both_sam_passes_see_the_same_mixed_batch():
    config = make_trial_config(FAST | RECIPE | {"cutmix_prob": 0.5, "mixup_prob": 0.5, "optimizer": "sam",
                                                "budget": 3, "epochs": 1})
    trial = Trial(config)
    assert isinstance(trial.loader, WorkerLoader) and trial.mixer is not None
    inputs, targets, raw = [], [], []
    trial.model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    loss_fn = trial.loss_fn
    trial.loss_fn = lambda outputs, t: targets.append(t.clone()) or loss_fn(outputs, t)
    mixer = trial.mixer
    trial.mixer = lambda x, y: raw.append(x.clone()) or mixer(x, y)
    trial.run_epoch(0)
    assert len(inputs) == len(targets) == 6 and len(raw) == 3
    for step in range(3):
        first, second = inputs[2 * step], inputs[2 * step + 1]
        assert torch.equal(first, second) and not torch.equal(first, raw[step])
        assert torch.equal(targets[2 * step], targets[2 * step + 1]) and targets[2 * step].dim() == 2


def test_training_error_counts_against_the_hard_labels():
    config = make_trial_config(FAST | RECIPE | {"optimizer": "sgd", "cutmix_prob": 0.0,
                                                "mixup_prob": 1.0, "epochs": 1})
    trial = Trial(config)
    x, y = next(iter(trial.loader))
    mixed, soft = trial.mixer(x, y)
    with torch.no_grad():
        expected = (trial.model(mixed).argmax(1) != y).sum()
    _, errors = trial.train_step(mixed, y, soft)  # counted on the outputs before the update
    assert errors == expected


@pytest.mark.parametrize("unit, budget", [("samples", 797 * 3 + 100), ("steps", 80)])
def test_budget_is_spent_exactly_over_passes(unit, budget):
    config = make_trial_config(FAST | {"epoch_passes": 3, "budget": budget, "budget_unit": unit, "epochs": 2,
                                       "optimizer": "sgd", "lr_shape": "linear", "lr_final": 0.001})
    result = train(config)
    last = result.history[-1]
    assert (last["samples_seen"] if unit == "samples" else last["steps"]) == budget
    assert result.history[0]["steps"] == 797 * 3 // 32


def test_resumed_recipe_trial_is_identical_to_uninterrupted():
    config = make_trial_config(FAST | RECIPE | {"epochs": 2, "epoch_passes": 1, "loader_workers": 1})
    assert_resume_is_exact(config)


VIT_RECIPE = RECIPE | {
    "model": "vit_tiny", "optimizer": "gsam", "base_optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05,
    "warmup_epochs": 1, "lr_final": 1e-5, "lr_shape": "cosine", "rho": 0.6, "alpha": 0.1, "drop_path": 0.1,
    "epochs": 2, "batch_size": 64, "batch_growth_ratio": 2.0, "batch_stages": 2, "loader_workers": 2,
    "num_threads": 1, "train_eval_examples": 256, "sharpness": ["norm_param_l2"], "device": "cpu",
}


@pytest.mark.slow  # a ViT through the CLI and its store
def test_cli_trains_vit_tiny_with_the_whole_recipe(tmp_path, monkeypatch, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from samtune.cli import main

    monkeypatch.chdir(tmp_path)
    uri = mlflow_uri
    settings = [arg for key, value in VIT_RECIPE.items()
                for arg in ("--set", f"{key}=[{', '.join(value)}]" if isinstance(value, list) else f"{key}={value}")]
    assert main(["train", "--tracking-uri", uri, *settings]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("samtune-train").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["samtune.status"] == "completed"
    for key in ("autoaugment", "random_erasing", "cutmix_prob", "mixup_prob", "epoch_passes", "drop_path",
                "label_smoothing", "model", "base_optimizer"):
        assert run.data.params[key] == str(VIT_RECIPE[key]), key
    for metric in ("train_loss", "test_error", "batch_size", "steps"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, metric)) == [1, 2], metric
    steps = client.get_metric_history(run.info.run_id, "steps")
    assert max(m.value for m in steps) == 797 * 3 // 64 + 797 * 3 // 128
    assert "norm_param_l2" in run.data.metrics and run.data.metrics["final_test_error"] < 0.9
