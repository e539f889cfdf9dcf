"""Searches designed for the question (samtune.spec.design, samtune.search.design_search):
one-axis neighbours of each sampled configuration, seed replicates, a search that runs until
its question is settled, and the spec's rules."""

import numpy as np
import pytest
from ray.tune.search import Searcher

from samtune.config import ConfigError
from samtune.search.design_search import DesignSearch
from samtune.spec import parse_search_spec
from samtune.spec.design import neighbours, range_points

SEARCH = {"rho": {"loguniform": [0.01, 1.0]},
          "lr_shape": {"choice": ["constant", "cosine", "polynomial"]},
          "lr_power": {"uniform": [1.0, 3.0], "when": {"lr_shape": ["polynomial"]}}}


def spec(**design):
    return parse_search_spec({"name": "design", "search": SEARCH, "samples": 2, "design": design})


def test_range_points_are_evenly_spaced_inside_the_range():
    dists = {d.key: d for d in spec(coupled=True).search}
    assert range_points(dists["rho"], 2) == pytest.approx([10 ** (-2 + 2 / 3), 10 ** (-2 + 4 / 3)])
    assert range_points(dists["lr_power"], 3) == pytest.approx([1.5, 2.0, 2.5])


def test_each_neighbour_moves_one_searched_key_and_keeps_the_conditions():
    dists = spec(coupled=True).search
    base = {"rho": 0.05, "lr_shape": "constant"}
    found = neighbours(base, dists, points=2)
    moved = [{k for k in set(base) | set(n) if base.get(k) != n.get(k)} for n in found]
    # rho to two points; lr_shape to cosine, and to polynomial (which makes lr_power active)
    assert moved == [{"rho"}, {"rho"}, {"lr_shape"}, {"lr_shape", "lr_power"}]
    assert found[3] == {"rho": 0.05, "lr_shape": "polynomial", "lr_power": pytest.approx(5 / 3)}
    polynomial = {"rho": 0.05, "lr_shape": "polynomial", "lr_power": 2.2}
    to_constant = [n for n in neighbours(polynomial, dists, 2) if n["lr_shape"] == "constant"]
    assert to_constant == [{"rho": 0.05, "lr_shape": "constant"}]  # lr_power inactive: dropped


class Suggests(Searcher):
    """A stand-in sampler: hands out fixed configurations and records what it is told."""

    def __init__(self, configs):
        super().__init__(metric="final_test_error", mode="min")
        self.configs, self.told = list(configs), []

    def suggest(self, trial_id):
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append(trial_id)


def test_the_design_follows_each_suggestion_with_its_group_and_tells_the_sampler_its_own(tmp_path):
    sampler = Suggests([{"rho": 0.05, "lr_shape": "cosine"}, {"rho": 0.2, "lr_shape": "constant"}])
    search = DesignSearch(sampler, spec(coupled=True, replicates=2))
    configs = [search.suggest(f"t{i}") for i in range(12)]
    # the group: the suggestion, rho at two points, lr_shape to its two other values; each under 2 seeds
    assert configs[0] == {"rho": 0.05, "lr_shape": "cosine", "seed": 0}
    assert configs[1] == {"rho": 0.05, "lr_shape": "cosine", "seed": 1}
    assert {c["seed"] for c in configs} == {0, 1}
    assert [c["lr_shape"] for c in configs[6:10:2]] == ["constant", "polynomial"]
    assert configs[10] == {"rho": 0.2, "lr_shape": "constant", "seed": 0}  # the next suggestion
    for i in range(12):
        search.on_trial_complete(f"t{i}", {"final_test_error": 0.1})
    assert sampler.told == ["t0", "t10"]
    path = tmp_path / "searcher.pkl"
    search.save(str(path))
    restored = DesignSearch(Suggests([]), spec(coupled=True, replicates=2))
    restored.restore(str(path))
    assert restored.suggest("t12") == search.suggest("t12")


def test_the_search_size_counts_every_neighbour_and_seed():
    assert spec().total_trials == 2
    # 1 + rho 2 points + lr_shape 2 other values + lr_power 2 points (when active), x 3 seeds
    assert spec(coupled=True, replicates=3).total_trials == 2 * 7 * 3
    assert spec(replicates=2).total_trials == 4


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"grid": {"rho": [0.1, 0.2]}, "search": None}, "design applies to an Optuna search"),
    ({"scheduler": {"asha": {"grace_period": 1}}}, "a trial stopped early would leave its pairs unmatched"),
    ({"search": SEARCH | {"seed": {"int": [0, 5]}}, "design": {"replicates": 2}}, "replicates choose the seeds"),
    ({"design": {"coupled": "yes please"}}, "design.coupled"),
    ({"design": {"replicates": 0}}, "design.replicates"),
])
def test_design_mistakes_are_refused(changes, fragment):
    data = {"name": "design", "search": SEARCH, "design": {"coupled": True}} | changes
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError, match=fragment):
        parse_search_spec(data)


# -- until: run until the answer is settled ------------------------------------------------
def test_kendall_interval_is_fishers_z_with_fieller_variance():
    from scipy import stats

    from samtune.spec.until import kendall_interval

    x = [0.1, 0.4, 0.2, 0.8, 0.5, 0.9, 0.3, 0.7, 0.6, 1.0]
    y = [1.0, 2.0, 3.0, 5.0, 4.0, 8.0, 2.5, 6.0, 7.0, 9.0]
    tau, low, high = kendall_interval(x, y, 0.95)
    assert tau == pytest.approx(stats.kendalltau(x, y).statistic)
    half = 1.959964 * (0.437 / 6) ** 0.5
    assert (low, high) == pytest.approx((np.tanh(np.arctanh(tau) - half), np.tanh(np.arctanh(tau) + half)))


def planted_results(n, slope, rng_seed=0):
    """Completed trials whose measure tracks the target with the given slope, plus noise."""
    rng = np.random.default_rng(rng_seed)
    measure = rng.uniform(0, 1, n)
    target = slope * measure + rng.normal(0, 0.1, n)
    return [{"samtune_status": "completed", "sharpness_harada": m, "final_test_error": t}
            for m, t in zip(measure, target)]


@pytest.mark.parametrize("rule", [{"excludes_zero": True}, {"ci_width": 0.5}])
def test_the_search_stops_launching_once_the_answer_is_settled_and_not_before(rule):
    from samtune.search.until_search import UntilSettled
    from samtune.spec.until import Until

    until = Until(measure="sharpness_harada", **rule)
    results = planted_results(40, slope=0.2)  # a weak planted relationship: settled after 18 and 22 trials
    expected = next(n for n in range(until.min_trials, 41)
                    if until.answer([r["sharpness_harada"] for r in results[:n]],
                                    [r["final_test_error"] for r in results[:n]]) is not None)
    search = UntilSettled(Suggests([{"rho": 0.1}] * 40), until)
    for i, result in enumerate(results[:expected]):
        assert search.suggest(f"t{i}") == {"rho": 0.1}  # still open: launch another
        search.on_trial_complete(f"t{i}", result)
        assert (search.settled is None) == (i + 1 < expected)
    assert search.suggest("next") is Searcher.FINISHED
    assert f"settled after {expected} completed trials" in search.settled
    assert until.min_trials + 5 <= expected < 40  # the rule, not the minimum, decided


def test_an_unrelated_measure_is_not_settled_early():
    from samtune.search.until_search import UntilSettled
    from samtune.spec.until import Until

    search = UntilSettled(Suggests([{"rho": 0.1}] * 12), Until(measure="sharpness_harada", ci_width=0.2))
    for i, result in enumerate(planted_results(12, slope=0.0)):
        search.suggest(f"t{i}")
        search.on_trial_complete(f"t{i}", result)
    assert search.settled is None  # an interval 0.2 wide needs far more than 12 trials
    failed = {"samtune_status": "failed", "sharpness_harada": 1.0, "final_test_error": 0.0}
    search.on_trial_complete("bad", failed)
    assert len(search.measures) == 12  # a trial that did not complete is not evidence


def test_until_needs_an_optuna_search_and_reported_metrics():
    base = {"name": "u", "search": {"rho": {"uniform": [0.01, 0.1]}}}
    with pytest.raises(ConfigError, match="until.measure = 'sharpness_nope' is never reported"):
        parse_search_spec(base | {"until": {"measure": "sharpness_nope", "excludes_zero": True}})
    with pytest.raises(ConfigError, match="give one stopping rule"):
        parse_search_spec(base | {"until": {"measure": "sharpness_harada"}})
    with pytest.raises(ConfigError, match="until applies to an Optuna search"):
        parse_search_spec({"name": "u", "grid": {"rho": [0.1, 0.2]},
                           "until": {"measure": "sharpness_harada", "excludes_zero": True}})
