"""Trial schedulers as the search builds them: ASHA in compute-fair units, PBT and PB2.

ASHA is fed results by hand (no Ray cluster): an SGD trial costs one gradient evaluation
per step, a SAM trial two, so at equal epochs SAM has spent twice the compute.  Counted
in gradient evaluations, the SGD trial meets the first rung one epoch later than it would
counted in epochs, at equal compute."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from samtune.config import ConfigError
from samtune.search.runner import _tune_config
from samtune.spec import asha_max_t, parse_search_spec

STEPS_PER_EPOCH = 797 // 64  # digits, batch 64


@dataclass(frozen=True)
class FakeTrial:
    trial_id: str


def spec_with(scheduler, **extra):
    data = {"name": "sched", "trial": {"epochs": 4, "batch_size": 64, "batch_growth_ratio": 1.0, "batch_stages": 1},
            "search": {"lr": {"loguniform": [0.01, 0.1]}, "rho": {"uniform": [0.01, 0.1]}}, "samples": 4,
            "scheduler": scheduler} | extra
    return parse_search_spec(data)


def results(evals_per_step: int, test_errors: list[float]):
    for epoch, error in enumerate(test_errors, start=1):
        yield {"training_iteration": epoch, "epoch": epoch, "test_error": error,
               "gradient_evaluations": epoch * STEPS_PER_EPOCH * evals_per_step}


def stopping_epoch(scheduler, trial, stream) -> int | None:
    for result in stream:
        if scheduler.on_trial_result(None, trial, result) == "STOP":
            return result["epoch"]
    return None


@pytest.mark.parametrize(("time_attr", "grace", "sgd_stops_at"), [
    ("epoch", 1, 1),  # one epoch each: SAM has spent twice SGD's compute at this rung
    ("gradient_evaluations", 2 * STEPS_PER_EPOCH, 2),  # equal compute: SGD's second epoch
])
def test_asha_rungs_in_gradient_evaluations_are_compute_fair(time_attr, grace, sgd_stops_at):
    spec = spec_with({"asha": {"grace_period": grace, "reduction_factor": 2, "time_attr": time_attr}})
    scheduler = _tune_config(spec).scheduler
    sam, sgd = FakeTrial("sam"), FakeTrial("sgd")
    for trial in (sam, sgd):
        scheduler.on_trial_add(None, trial)
    assert stopping_epoch(scheduler, sam, results(2, [0.10])) is None  # the first at the rung
    assert stopping_epoch(scheduler, sgd, results(1, [0.50, 0.40, 0.30, 0.20])) == sgd_stops_at


def test_asha_horizon_defaults_to_what_a_trial_can_reach():
    for unit, expected in (("epoch", 4), ("samples_seen", 4 * 797), ("gradient_evaluations", 2 * 4 * 797)):
        assert asha_max_t(spec_with({"asha": {"time_attr": unit}})) == expected
    assert asha_max_t(spec_with({"asha": {"time_attr": "samples_seen", "max_t": 1000}})) == 1000


def test_pbt_mutates_the_searched_keys_and_pb2_their_bounds():
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2
    from ray.tune.schedulers.pbt import _explore

    pbt = _tune_config(spec_with({"pbt": {"interval": 2, "quantile": 0.5}},
                                 search={"lr": {"loguniform": [0.01, 0.1]}, "batch_size": {"choice": [16, 32, 64]}},
                                 trial={"epochs": 4, "batch_growth_ratio": 1.0, "batch_stages": 1})).scheduler
    assert isinstance(pbt, PopulationBasedTraining) and not isinstance(pbt, PB2)
    assert set(pbt._hyperparam_mutations) == {"lr", "batch_size"} and pbt._perturbation_interval == 2
    # a choice moves to a neighbouring value; scaled by 0.8 or 1.2 it would leave the choices
    assert pbt._hyperparam_mutations["batch_size"] == [16, 32, 64]
    config = {"lr": 0.05, "batch_size": 32}
    for _ in range(20):
        explored, _ = _explore(config, pbt._hyperparam_mutations, 0.0, pbt._perturbation_factors, None)
        assert explored["batch_size"] in (16, 32, 64)
    pb2 = _tune_config(spec_with({"pb2": {"mutate": ["rho"]}})).scheduler
    assert isinstance(pb2, PB2) and pb2._hyperparam_bounds == {"rho": [0.01, 0.1]}


@pytest.mark.parametrize(("scheduler", "extra", "fragment"), [
    ({"pbt": {"mutate": ["lr_shape"]}}, {}, "scheduler.pbt.mutate"),
    ({"pbt": {"mutate": ["batch_size"]}}, {}, "'batch_size' is not searched"),
    ({"pb2": {}}, {"search": {"momentum": {"choice": [0.0, 0.9]}}}, "PB2 explores continuous ranges"),
    ({"pbt": {"interval": 4}}, {}, "interval = 4 epochs leaves no exploit step"),
    ({"pbt": {}}, {"search": None, "grid": {"rho": [0.01, 0.1]}}, "evolves a population drawn from `search`"),
    ({"pbt": {}}, {"resources": {"workers": 2}}, "use workers: 1"),
    ({"pbt": {}, "asha": {}}, {}, "allowed: none, or one of"),
    ({"asha": {"time_attr": "seconds"}}, {}, "scheduler.asha.time_attr"),
    ({"asha": {"time_attr": "samples_seen"}}, {"trial": {"dataset": "imagefolder:/x", "epochs": 4}},
     "give scheduler.asha.max_t"),
])
def test_scheduler_mistakes_are_refused(scheduler, extra, fragment):
    with pytest.raises(ConfigError, match=fragment):
        spec_with(scheduler, **extra)


def test_a_clone_trains_with_its_own_values_not_its_donors():
    """PBT restores a donor's checkpoint into a trial with perturbed values: the optimizer
    state comes from the donor, its hyperparameters from the clone's config."""
    from samtune.config import make_trial_config
    from samtune.trial.loop import Trial

    common = {"optimizer": "gsam", "epochs": 2, "batch_stages": 1, "sharpness": [], "device": "cpu", "num_threads": 1}
    donor = Trial(make_trial_config(common | {"alpha": 0.1, "weight_decay": 5e-4, "momentum": 0.9}))
    clone = Trial(make_trial_config(common | {"alpha": 0.3, "weight_decay": 1e-3, "momentum": 0.5}))
    clone.restore(donor.checkpoint())
    for group in clone.optimizer.param_groups:
        assert (group["alpha"], group["weight_decay"], group["momentum"]) == (0.3, 1e-3, 0.5)
