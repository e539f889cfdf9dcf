"""When a trial stops: a training criterion checked after each epoch, and budgets
in steps, samples or gradient evaluations spent exactly across batch-size changes."""

import math

import pytest

from samtune.config import ConfigError, make_trial_config
from samtune.data.catalogue import CATALOGUE
from samtune.schedules import lr_schedule
from samtune.trial.loop import Trial, train

N_TRAIN = CATALOGUE["digits"].train_size
FAST = {"train_eval_examples": 128, "sharpness": ["norm_param_l2"], "eval_batch_size": 1024}


def planted_train_losses(monkeypatch, losses):
    """Replace the measured training loss of epoch k by ``losses[k]``."""
    measured = Trial.epoch_record

    def planted(self, epoch, stats):
        return measured(self, epoch, stats) | {"train_loss": losses[epoch]}

    monkeypatch.setattr(Trial, "epoch_record", planted)


def test_criterion_stops_after_the_first_epoch_that_meets_it(monkeypatch):
    planted_train_losses(monkeypatch, [0.9, 0.4, 0.05, 0.009, 0.02, 0.001, 0.001, 0.001])
    config = make_trial_config(FAST | {"epochs": 8, "batch_size": 32, "batch_growth_ratio": 1.0,
                                       "batch_stages": 1, "stop_train_loss": 0.01, "optimizer": "sgd"})
    result = train(config)
    assert len(result.history) == 4  # epoch 4 is the first at or below 0.01
    steps_per_epoch = N_TRAIN // 32
    assert result.final["criterion_reached"] == 1.0
    assert result.final["criterion_epoch"] == 4
    assert result.final["criterion_steps"] == 4 * steps_per_epoch
    assert result.final["criterion_samples"] == 4 * steps_per_epoch * 32


def test_criterion_bounds_must_all_hold_and_an_unmet_criterion_is_recorded(monkeypatch):
    planted_train_losses(monkeypatch, [0.001] * 3)
    config = make_trial_config(FAST | {"epochs": 3, "batch_size": 64, "batch_stages": 1,
                                       "stop_train_loss": 0.01, "stop_train_error": 0.0, "lr": 1e-6})
    result = train(config)  # the loss bound holds, the error bound (no mistake) cannot at lr 1e-6
    assert len(result.history) == 3 and result.history[-1]["train_error"] > 0
    assert result.final["criterion_reached"] == 0.0
    assert all(math.isnan(result.final[k]) for k in ("criterion_epoch", "criterion_steps"))


def expected_steps(batches_by_epoch, budget):
    """Steps per epoch when ``budget`` steps are spent over drop-last epochs."""
    out, left = [], budget
    for batch in batches_by_epoch:
        take = min(N_TRAIN // batch, left)
        out.append(take)
        left -= take
        if not left:
            return out
    raise AssertionError("budget larger than the epochs allow")


def test_step_budget_is_spent_exactly_across_batch_growth_and_stretches_the_lr():
    # batch 16 -> 32 -> 64 -> 128 over 8 epochs: 49, 49, 24, 24, 12, 12, 6, 6 steps per epoch
    config = make_trial_config(FAST | {"epochs": 8, "batch_size": 16, "batch_growth_ratio": 2.0,
                                       "batch_stages": 4, "budget": 130, "lr_shape": "linear",
                                       "lr_final": 0.0, "optimizer": "gsam"})
    result = train(config)
    batches = [16, 16, 32, 32, 64, 64, 128, 128]
    steps = expected_steps(batches, 130)  # [49, 49, 24, 8]: ends inside the fourth epoch
    assert [int(r["batch_size"]) for r in result.history] == batches[:len(steps)]
    assert [int(r["steps"]) for r in result.history] == [sum(steps[:k + 1]) for k in range(len(steps))]
    assert result.final["final_steps"] == 130
    assert result.final["final_samples_seen"] == sum(s * b for s, b in zip(steps, batches))
    assert result.final["final_gradient_evaluations"] == 2 * 130  # GSAM: two per step
    # the linear lr decays over the budget, not over the epochs: epoch k starts at the
    # fraction of the budget spent before it
    shape = lr_schedule("linear", lr=config.lr, epochs=8, lr_final=0.0)
    spent_before = [0] + [sum(steps[:k]) for k in range(1, len(steps))]
    for record, spent in zip(result.history, spent_before):
        assert record["lr"] == pytest.approx(shape(8 * spent / 130), rel=1e-12)


@pytest.mark.parametrize("unit, budget, optimizer", [("samples", 1000, "sam"),
                                                    ("gradient_evaluations", 40, "sgd"),
                                                    ("gradient_evaluations", 40, "sam")])
def test_sample_and_gradient_evaluation_budgets_end_exactly(unit, budget, optimizer):
    config = make_trial_config(FAST | {"epochs": 4, "batch_size": 64, "batch_stages": 1,
                                       "budget": budget, "budget_unit": unit, "optimizer": optimizer})
    result = train(config)
    final = {"samples": "final_samples_seen", "gradient_evaluations": "final_gradient_evaluations"}[unit]
    assert result.final[final] == budget
    per_step = 1 if optimizer == "sgd" else 2
    if unit == "samples":  # 12 full batches of 64 (one epoch), then 232 examples: 3 full and one of 40
        assert result.final["final_steps"] == 12 + 4
    else:
        assert result.final["final_steps"] == budget // per_step


@pytest.mark.parametrize("values, fragment", [
    ({"budget": 10_000, "epochs": 2, "batch_size": 64, "batch_stages": 1},
     "budget = 10000 steps cannot be spent in epochs = 2 (24 steps at most"),
    ({"budget": 101, "budget_unit": "gradient_evaluations", "optimizer": "sam"},
     "budget = 101: an sam step costs 2 gradient evaluations"),
    ({"budget_unit": "epochs"}, "trial.budget_unit = 'epochs': Input should be 'steps', 'samples' or"),
    ({"budget": 0}, "trial.budget = 0"),
    ({"stop_train_error": 1.5}, "trial.stop_train_error = 1.5"),
    ({"stop_test_error": 0.1}, "unknown key(s) 'stop_test_error'"),
])
def test_impossible_budgets_and_criteria_on_unknown_quantities_are_refused(values, fragment):
    with pytest.raises(ConfigError) as err:
        make_trial_config(values)
    assert fragment in str(err.value)


# -- equal budgets across a grid ---------------------------------------------------------
from samtune.spec import parse_search_spec  # noqa: E402

PAPER_GRID = {"optimizer": ["sgd", "sam"],
              "schedule": {"constant": {"batch_size": 128, "batch_growth_ratio": 1.0, "batch_stages": 1},
                           "+B": {"batch_size": 16, "batch_growth_ratio": 2.0, "batch_stages": 5}}}


def equal_budget_spec(**equal_budget):
    return parse_search_spec({"name": "eq", "trial": {"epochs": 10, "lr": 0.05}, "grid": PAPER_GRID,
                              "equal_budget": equal_budget})


def test_equal_steps_give_every_cell_the_growing_batch_cells_updates():
    spec = equal_budget_spec(unit="steps", like={"schedule": "+B"})
    # +B: 2 epochs at each of 16, 32, 64, 128, 256 over 797 examples (drop-last batches)
    plus_b = sum(2 * (N_TRAIN // batch) for batch in (16, 32, 64, 128, 256))
    assert spec.budget == (plus_b, "steps")
    for cell in spec.cells():
        assert cell["budget"] == plus_b and cell["budget_unit"] == "steps"
        per_epoch = N_TRAIN // cell["batch_size"]
        if cell["batch_growth_ratio"] == 1.0:  # the fewest epochs of 6 steps that hold the budget
            assert cell["epochs"] == math.ceil(plus_b / per_epoch)
        else:
            assert cell["epochs"] == 10


def test_equal_gradient_evaluations_must_name_the_optimizer():
    with pytest.raises(ConfigError, match="spend different budgets .* name more axes in `like`"):
        equal_budget_spec(unit="gradient_evaluations", like={"schedule": "+B"})
    spec = equal_budget_spec(unit="gradient_evaluations", like={"schedule": "+B", "optimizer": "sam"})
    assert spec.budget[0] == 2 * sum(2 * (N_TRAIN // b) for b in (16, 32, 64, 128, 256))
    sgd_cells = [cell for cell in spec.cells() if cell["optimizer"] == "sgd"]
    assert all(cell["epochs"] > 10 for cell in sgd_cells)  # one evaluation a step: twice the steps


@pytest.mark.parametrize("data, fragment", [
    ({"unit": "steps", "like": {"schedule": "+X"}}, "equal_budget.like.schedule = '+X': not among grid.schedule"),
    ({"unit": "steps", "like": {"lr": 0.1}}, "equal_budget.like.lr: not a grid axis"),
    ({"unit": "epochs", "like": {"schedule": "+B"}}, "equal_budget.unit = 'epochs'"),
    ({"like": {}}, "equal_budget.like"),
])
def test_equal_budget_mistakes_are_refused(data, fragment):
    with pytest.raises(ConfigError) as err:
        equal_budget_spec(**data)
    assert fragment in str(err.value)


def test_equal_budget_needs_a_grid_and_one_place_for_the_budget():
    with pytest.raises(ConfigError, match="equal_budget: needs a grid"):
        parse_search_spec({"name": "eq", "search": {"rho": {"uniform": [0.01, 0.1]}},
                           "equal_budget": {"like": {"schedule": "+B"}}})
    with pytest.raises(ConfigError, match="equal_budget and trial.budget are both given"):
        parse_search_spec({"name": "eq", "trial": {"budget": 10}, "grid": PAPER_GRID,
                           "equal_budget": {"like": {"schedule": "+B"}}})
