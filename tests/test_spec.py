"""Search-spec and trial-config validation: every mistake is refused before
anything starts, with the key, the value and what is allowed."""

import pickle
import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from samtune import schema
from samtune.config import ConfigError, load_trial_config, make_trial_config
from samtune.spec import (
    bundle_table,
    bundled_space_names,
    define_by_run,
    describe,
    expand_bundles,
    load_search_spec,
    parse_search_spec,
    reported_metrics,
    sample_configs,
)

VALID = {
    "name": "unit",
    "trial": {"epochs": 4},
    "search": {"alpha": {"uniform": [0.0, 0.5]},
               "lr_shape": {"choice": ["constant", "polynomial"]},
               "lr_power": {"uniform": [0.5, 2.0], "when": {"lr_shape": "polynomial"}}},
    "samples": 4,
}


def spec_with(**changes):
    data = yaml.safe_load(yaml.safe_dump(VALID, sort_keys=False))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


BAD_SPECS = [
    # (changes, words the message must contain)
    ({"colour": "red"}, ["colour", "allowed"]),
    ({"name": ""}, ["name"]),
    ({"trial": {"rho": -0.1}}, ["trial.rho", "-0.1", "greater than or equal to 0"]),
    ({"trial": {"lr_shape": "sawtooth"}}, ["lr_shape", "sawtooth", "cosine"]),
    ({"trial": {"batch_growth_ratio": 0.5}}, ["batch_growth_ratio", "0.5", "greater than or equal to 1"]),
    ({"trial": {"learning_rate": 0.1}}, ["learning_rate", "allowed keys"]),
    ({"search": {"rho": {"uniform": [-1.0, 0.5]}}}, ["rho", "-1.0"]),
    ({"search": {"rho": {"normal": [0, 1]}}}, ["search.rho", "uniform", "loguniform", "choice"]),
    ({"search": {"rho": {"uniform": [0.5, 0.1]}}}, ["search.rho", "lo must be < hi"]),
    ({"search": {"rho": {"loguniform": [0.0, 0.1]}}}, ["search.rho", "> 0"]),
    ({"search": {"batch_stages": {"int": [1.5, 3]}}}, ["search.batch_stages", "integers"]),
    ({"search": {"optimizer": {"choice": ["sgd", "adam"]}}}, ["optimizer", "adam"]),
    ({"search": {"momentum_x": {"uniform": [0.0, 0.9]}}}, ["search.momentum_x", "unknown"]),
    ({"search": {"lr_power": {"uniform": [0.5, 2.0], "when": {"lr_shape": "cosine"}}}},
     ["search.lr_power.when.lr_shape", "choice"]),
    ({"search": {"lr_shape": {"choice": ["constant", "polynomial"]},
                 "lr_power": {"uniform": [0.5, 2.0], "when": {"lr_shape": "cosine"}}}},
     ["search.lr_power.when.lr_shape", "cosine", "polynomial"]),
    ({"trial": {"rho": 0.1}, "search": {"rho": {"uniform": [0.01, 0.2]}}},
     ["search.rho", "trial.rho", "one place"]),
    ({"grid": {"optimizer": ["sgd", "gsam"]}}, ["search and grid"]),
    ({"objective": {"metric": "val_accuracy", "mode": "max"}},
     ["val_accuracy", "never reported", "final_test_error"]),
    ({"objective": {"metric": "test_error", "mode": "lowest"}}, ["objective.mode", "lowest"]),
    ({"objective": {"metric": "sharpness_hessian_trace", "mode": "min"},
      "sharpness": ["harada"]}, ["sharpness_hessian_trace", "never reported"]),
    ({"samples": 0}, ["samples", "0", "greater than or equal to 1"]),
    ({"concurrency": "two"}, ["concurrency", "two"]),
    ({"resources": {"cpu": 1, "tpu": 1}}, ["resources"]),
    ({"resources": {"cpu": 1, "gpu": -0.5}}, ["resources.gpu", "-0.5"]),
    ({"scheduler": "hyperband"}, ["scheduler", "hyperband", "asha"]),
    ({"scheduler": {"asha": {"metric": "final_test_error"}}}, ["scheduler.asha.metric", "per-epoch"]),
    ({"scheduler": {"asha": {"reduction_factor": 1}}}, ["reduction_factor"]),
    ({"sharpness": ["harada", "bogus_measure"]}, ["sharpness", "bogus_measure"]),
    ({"objective": {"metric": ["final_test_error", "sharpness_harada"], "mode": ["min", "min"]},
      "scheduler": {"asha": {}}, "sharpness": ["harada"]}, ["Pareto"]),
    # nested sections name their own keys
    ({"scheduler": {"asha": {"patience": 3}}},
     ["scheduler.asha", "patience", "grace_period", "reduction_factor"]),
    ({"scheduler": {"hyperband": {}}}, ["scheduler", "hyperband", "asha"]),
    ({"search": {"rho": {"uniform": [0.0, 0.1], "step": 0.01}}}, ["search.rho", "step", "uniform", "when"]),
    ({"search": {"rho": {"uniform": [0.0, 0.1], "choice": [0.1]}}}, ["search.rho", "exactly one"]),
    ({"search": {"rho": {"uniform": [0.0, 0.1, 0.2]}}}, ["search.rho.uniform", "[lo, hi]"]),
    ({"search": {"rho": {"uniform": [True, 0.1]}}}, ["search.rho.uniform", "True", "number"]),
    ({"search": {"sharpness": {"choice": [["harada"], "keskar"]}}},
     ["search.sharpness.choice", "harada", "string"]),
    ({"search": {"lr_shape": {"choice": ["constant", "cosine"], "when": {"optimizer": "sgd"}},
                 "optimizer": {"choice": ["sgd", "sam"], "when": {"lr_shape": "cosine"}}}},
     ["when", "cycle"]),
    ({"objective": {"metric": ["final_test_error", "final_gen_gap"], "mode": ["min"]}},
     ["objective", "one mode per metric"]),
    ({"objective": {"metric": ["final_test_error", "final_gen_gap", "final_test_loss"]}},
     ["objective.metric", "at most 2"]),
    ({"name": None}, ["name", "required"]),
    ({"name": "a/b"}, ["name", "a/b", "'/'"]),
    ({"trial": "digits"}, ["trial", "digits", "dictionary"]),
    ({"resources": {"cpu": 0}}, ["resources.cpu", "0", "greater than 0"]),
    ({"seed": -1}, ["seed", "-1", "greater than or equal to 0"]),
    ({"max_failures": 1.5}, ["max_failures", "1.5", "integer"]),
    # grid axes: a trial parameter takes a list, a bundle axis a mapping of named bundles
    ({"search": None, "grid": {"optimizer": ["sgd", "adam"]}}, ["grid.optimizer", "adam", "gsam"]),
    ({"search": None, "grid": {"rho": [0.1, -0.1]}}, ["grid.rho", "-0.1", "greater than or equal to 0"]),
    ({"search": None, "grid": {"optimizer": []}}, ["grid.optimizer", "at least 1"]),
    ({"search": None, "grid": {"optimiser": ["sgd"]}}, ["grid.optimiser", "unknown trial parameter"]),
    ({"search": None, "grid": {"optimizer": "sgd"}}, ["grid.optimizer", "'sgd'", "list of values"]),
    ({"search": None, "trial": {"epochs": 4, "optimizer": "sgd"}, "grid": {"optimizer": ["sam"]}},
     ["grid.optimizer", "trial.optimizer", "one place"]),
    ({"search": None, "grid": {"rho": {"small": {"rho": 0.01}}}}, ["grid.rho", "list of values"]),
    ({"search": None, "grid": {"schedule": {"fast": {"rho": -1}}}}, ["grid.schedule.fast.rho", "-1"]),
    ({"search": None, "grid": {"schedule": {"fast": {"learning_rate": 1}}}},
     ["grid.schedule.fast", "learning_rate", "allowed keys"]),
    ({"search": None, "grid": {"schedule": {"fast": 3}}}, ["grid.schedule.fast", "3", "dictionary"]),
    ({"search": None, "grid": {"optimizer": ["sgd"], "schedule": {"fast": {"optimizer": "sam"}}}},
     ["grid.schedule.fast", "optimizer", "also a grid axis"]),
]


@pytest.mark.parametrize("changes, words", BAD_SPECS)
def test_bad_spec_is_refused_with_key_value_and_allowed(changes, words):
    data = spec_with(**changes)
    with pytest.raises(ConfigError) as info:
        parse_search_spec(data)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_valid_spec_resolves_defaults():
    spec = parse_search_spec(spec_with())
    assert spec.samples == 4 and spec.concurrency == 2 and spec.scheduler is None
    assert spec.objective.metrics == ("final_test_error",) and spec.objective.modes == ("min",)
    assert spec.searched_keys == ("alpha", "lr_shape", "lr_power")


def test_conditional_key_sampled_only_when_parent_matches():
    spec = parse_search_spec(spec_with(samples=4))
    samples = sample_configs(spec, 30)
    assert any(s["lr_shape"] == "polynomial" for s in samples)
    assert any(s["lr_shape"] == "constant" for s in samples)
    for sample in samples:
        assert ("lr_power" in sample) == (sample["lr_shape"] == "polynomial")
        assert 0.0 <= sample["alpha"] <= 0.5


def test_sampling_is_seeded():
    spec = parse_search_spec(spec_with())
    assert sample_configs(spec, 5) == sample_configs(spec, 5)
    other = parse_search_spec(spec_with(seed=1))
    assert sample_configs(other, 5) != sample_configs(spec, 5)


def test_harada_grid_expands_the_paper_regimes():
    spec = load_search_spec("harada2024_cifar100_resnet18")
    combos = sample_configs(spec, 100)
    assert len(combos) == 9
    table = bundle_table(spec)
    values, labels = expand_bundles({**spec.trial, **{"optimizer": "gsam", "schedule": "+B"}}, table)
    config = make_trial_config(values)
    from samtune.schedules import TrialSchedule

    schedule = TrialSchedule.from_config(config)
    assert [schedule.batch_size(e) for e in (0, 39, 40, 80, 120, 160, 199)] == [16, 16, 32, 64, 128, 256, 256]
    assert labels == {"schedule": "+B"}
    plus_c = make_trial_config(expand_bundles({**spec.trial, "schedule": "+C"}, table)[0])
    assert TrialSchedule.from_config(plus_c).lr(200, 128) == pytest.approx(0.001)
    assert plus_c.momentum == 0 and plus_c.weight_decay == 0 and plus_c.alpha == 0.02


@pytest.mark.parametrize("name", bundled_space_names())
def test_bundled_spaces_are_valid(name):
    spec = load_search_spec(name)
    for sample in sample_configs(spec, 3):
        make_trial_config(expand_bundles({**spec.trial, **sample}, bundle_table(spec))[0])


def test_trial_overrides_parse_yaml_values(tmp_path):
    config = load_trial_config(None, ["rho=0.2", "adaptive=true", "lr_shape=cosine", "epochs=4"])
    assert config.rho == 0.2 and config.adaptive is True and config.lr_shape == "cosine"
    with pytest.raises(ConfigError, match="rho.*-1"):
        load_trial_config(None, ["rho=-1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_trial_config(None, ["rho"])


def test_cross_field_mistakes_are_refused():
    with pytest.raises(ConfigError, match="rho_min"):
        make_trial_config({"rho": 0.05, "rho_min": 0.1})
    with pytest.raises(ConfigError, match="batch_max"):
        make_trial_config({"batch_size": 64, "batch_max": 32})


def _samtune(*args, cwd):
    return subprocess.run([sys.executable, "-m", "samtune.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_refuses_bad_spec_without_traceback_and_records_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_with(trial={"rho": -0.5})))
    done = _samtune("search", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert "trial.rho" in done.stderr and "-0.5" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_cli_train_refuses_unknown_key_before_training(tmp_path):
    done = _samtune("train", "--set", "lr_shape=sawtooth", cwd=tmp_path)
    assert done.returncode == 2 and "lr_shape" in done.stderr and "sawtooth" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_dry_run_prints_space_and_samples(tmp_path):
    done = _samtune("search", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resolved search space" in done.stdout and "loguniform" in done.stdout
    samples = [line for line in done.stdout.splitlines() if line.startswith("- {")]
    assert len(samples) == 5 and all("rho" in s for s in samples)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_value_is_refused_for_its_own_key_not_for_combinations():
    # rho_min <= rho and lr_final <= lr are checked when each sampled trial starts, once
    # every key has its value: a range that reaches past them is not a mistake by itself;
    # a grid's cells are all known, so a cell that breaks them is refused before launch
    spec = parse_search_spec(spec_with(trial={"epochs": 4, "rho": 0.05, "lr": 0.1},
                                       search={"rho_min": {"uniform": [0.0, 0.2]},
                                               "lr_final": {"loguniform": [0.001, 0.5]}}))
    assert [d.key for d in spec.search] == ["rho_min", "lr_final"]
    grid = parse_search_spec(spec_with(search=None, trial={"epochs": 4, "rho": 0.05},
                                       grid={"rho_min": [0.0, 0.05]}))
    assert grid.grid_axes() == {"rho_min": [0.0, 0.05]}
    with pytest.raises(ConfigError, match=r"grid cell \{rho_min: 0\.1\}: rho_min must be in \[0, rho=0\.05\]"):
        parse_search_spec(spec_with(search=None, trial={"epochs": 4, "rho": 0.05}, grid={"rho_min": [0.0, 0.1]}))
    with pytest.raises(ConfigError, match=r"rho_min = -0\.1"):
        parse_search_spec(spec_with(search={"rho_min": {"uniform": [-0.1, 0.2]}}))


def test_top_level_seed_leaves_a_seed_axis_alone():
    spec = parse_search_spec(spec_with(search=None, samples=None, seed=3, grid={"seed": [0, 1, 2]}))
    assert "seed" not in spec.trial and spec.seed == 3
    assert spec.grid_axes() == {"seed": [0, 1, 2]} and spec.total_trials == 3
    fixed = parse_search_spec(spec_with(seed=3))
    assert fixed.trial["seed"] == 3


def test_spec_interface_as_the_runner_reads_it():
    spec = load_search_spec("gsam_schedule_search", ["samples=3", "trial.epochs=50"])
    assert spec.name == "gsam-schedules-cifar100-resnet18" and spec.trial["epochs"] == 50
    assert spec.samples == 3 and spec.total_trials == 3 and spec.grid_axes() == {}
    assert spec.resources == {"cpu": 2, "gpu": 0.25}
    asha = spec.scheduler
    assert (asha.grace_period, asha.reduction_factor, asha.metric, asha.mode) == (20, 3, "test_error", "min")
    assert spec.search and spec.searched_keys[-1] == "lr_power"
    assert spec.searched_keys.index("lr_shape") < spec.searched_keys.index("lr_power")
    assert "gsam-schedules-cifar100-resnet18" in spec.source and spec.source.startswith("#")
    assert not spec.objective.is_pareto
    assert parse_search_spec(spec.resolved()).resolved() == spec.resolved()
    with pytest.raises(ValidationError, match="frozen"):
        spec.samples = 5

    grid = load_search_spec("harada2024_cifar10_resnet18")
    assert not grid.search and grid.scheduler is None and "gpu" in grid.resources
    assert grid.grid_axes() == {"optimizer": ["sgd", "sam", "gsam"], "schedule": ["constant", "+B", "+C"]}
    assert grid.total_trials == 9 and grid.searched_keys == ("optimizer", "schedule")
    assert set(bundle_table(grid)) == {"schedule"}
    assert parse_search_spec(grid.resolved()).resolved() == grid.resolved()

    pareto = parse_search_spec(spec_with(objective={"metric": ["final_test_error", "sharpness_harada"],
                                                    "mode": "min"}, sharpness=["harada"]))
    assert pareto.objective.is_pareto and pareto.objective.modes == ("min", "min")
    assert pareto.trial["sharpness"] == ["harada"]


def test_define_by_run_is_picklable_and_only_suggests():
    spec = parse_search_spec(spec_with())
    space = pickle.loads(pickle.dumps(define_by_run(spec)))
    assert [d.key for d in space.distributions] == ["alpha", "lr_shape", "lr_power"]
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    trial = study.ask()
    assert space(trial) is None and set(trial.params) <= {"alpha", "lr_shape", "lr_power"}


def test_bundled_space_by_name_or_file(tmp_path, monkeypatch):
    assert {"default", "harada2024_cifar10_resnet18"} <= set(bundled_space_names())
    assert load_search_spec("default").name == load_search_spec("default.yaml").name == "samtune-default"
    # `samtune search` and `samtune report` default to this space and its experiment
    assert load_search_spec(schema.DEFAULT_SPACE).name == schema.DEFAULT_EXPERIMENT_SEARCH
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(spec_with(name="mine")))
    assert load_search_spec(str(mine)).name == "mine"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default.yaml").write_text(yaml.safe_dump(spec_with(name="local")))
    assert load_search_spec("default.yaml").name == "local"  # a file wins over a bundled name
    with pytest.raises(ConfigError, match="'nope' not found.*bundled: .*default"):
        load_search_spec("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_search_spec("missing/default.yaml")


def test_objective_metrics_come_from_the_schema():
    metrics = reported_metrics(make_trial_config({}))
    assert set(schema.EPOCH_METRICS) | set(schema.FINAL_METRICS) <= set(metrics)
    assert set(schema.measure_metric_names(None)) <= set(metrics)
    assert not any(m.startswith("sharpness_") for m in reported_metrics(make_trial_config({"sharpness": []})))


def test_describe_validates_each_sample():
    text = describe(parse_search_spec(spec_with()), count=3)
    assert text.startswith("# resolved search space") and "4 Optuna TPE samples" in text
    assert len([line for line in text.splitlines() if line.startswith("- {")]) == 3


def test_data_parallel_workers_split_every_stage_of_the_global_batch():
    spec = parse_search_spec(spec_with(resources={"cpu": 1, "workers": 4}, search=None,
                                       trial={"batch_size": 16, "batch_growth_ratio": 2.0, "batch_stages": 3}))
    assert (spec.workers, spec.worker_resources) == (4, {"cpu": 1})
    with pytest.raises(ConfigError, match=r"batch 24 \(a stage of its growing batch\) does not split evenly across "
                                          r"its 16 workers \(resources.workers = 16\)"):
        parse_search_spec(spec_with(resources={"workers": 16}, search=None,
                                    trial={"batch_size": 16, "batch_growth_ratio": 1.5, "batch_stages": 2}))
    with pytest.raises(ConfigError, match=r"grid cell \{batch_size: 18\}: batch 18 does not split"):
        parse_search_spec(spec_with(resources={"workers": 4}, search=None, grid={"batch_size": [16, 18]}))
    for bad in (0, 1.5, "two"):
        with pytest.raises(ConfigError, match="resources.workers"):
            parse_search_spec(spec_with(resources={"workers": bad}))
    with pytest.raises(ConfigError, match="budget_unit = 'samples' may end inside a global batch"):
        parse_search_spec(spec_with(resources={"workers": 2}, search=None,
                                    trial={"batch_size": 16, "budget": 2000, "budget_unit": "samples"}))
    assert "workers" not in parse_search_spec(spec_with()).resources  # one worker: as before


def test_workers_that_grow_with_the_batch_plan_one_stage_per_count():
    spec = parse_search_spec(spec_with(resources={"cpu": 1, "per_worker_batch": 32, "max_workers": 4}, search=None,
                                       trial={"epochs": 8, "batch_size": 16, "batch_growth_ratio": 2.0,
                                              "batch_stages": 4}))
    assert spec.layout.data_parallel and spec.workers == 4 and spec.worker_resources == {"cpu": 1}
    # batches 16, 32, 64, 128: one worker until the batch outgrows 32 images, then one per 32
    assert [(s.first, s.end, s.workers) for s in spec.layout.stages(spec.trial)] == [(0, 4, 1), (4, 6, 2), (6, 8, 4)]
    assert "epochs 1-4 on 1, epochs 5-6 on 2, epochs 7-8 on 4" in describe(spec)
    with pytest.raises(ConfigError, match=r"batch 45 .* across its 2 workers \(resources.per_worker_batch = 40\)"):
        parse_search_spec(spec_with(resources={"per_worker_batch": 40, "max_workers": 4}, search=None,
                                    trial={"epochs": 2, "batch_size": 45, "batch_stages": 1,
                                           "batch_growth_ratio": 1.0}))
    refusals = [({"workers": 2, "per_worker_batch": 32, "max_workers": 4}, "both set the worker count"),
                ({"per_worker_batch": 32}, "per_worker_batch is given without resources.max_workers"),
                ({"max_workers": 4}, "max_workers is given without resources.per_worker_batch"),
                ({"sync_batchnorm": True}, "sync_batchnorm = true needs a fixed worker count"),
                ({"per_worker_batch": 0, "max_workers": 2}, "per_worker_batch")]
    for resources, message in refusals:
        with pytest.raises(ConfigError, match=message):
            parse_search_spec(spec_with(resources=resources, search=None))
    assert parse_search_spec(spec_with(resources={"workers": 2, "sync_batchnorm": True},
                                       search=None)).layout.sync_batchnorm


def test_imagenet_space_grows_its_workers_with_the_batch():
    spec = load_search_spec("harada2024_imagenet_resnet50")
    assert spec.workers == 8 and spec.worker_resources["gpu"] == 1
    plus_b = next(c for c in spec.cells() if c["batch_size"] == 16)
    assert [(s.workers, s.end - s.first) for s in spec.layout.stages(plus_b)] == [(1, 80), (2, 40), (4, 40), (8, 40)]
    cells = spec.cells()
    assert len(cells) == 9 and {c["dataset"] for c in cells} == {"imagenet"}
    assert {(c["lr"], c["momentum"], c["weight_decay"], c["rho"], c["alpha"]) for c in cells} == {
        (0.1, 0.0, 0.0, 0.05, 0.02)}
    text = describe(spec)
    assert "workers grow with the batch: batch / 32 of them, at most 8, each of 6 CPU, 1 GPU" in text
