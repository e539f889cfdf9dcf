"""Seeds as the noise floor (analysis.noise_floor) on planted data where the answer is known."""

import numpy as np
import pandas as pd
import pytest

from analysis.noise_floor import mean_kendall, noise_floor, noise_floor_table, replicated

KEYS = ("rho", "seed")


def planted(config_step: float, seed_sd: float, configs: int = 5, seeds: int = 4, rng_seed: int = 0) -> pd.DataFrame:
    """``configs`` values of rho, each under ``seeds`` seeds: quantity = config_step x i + the seed's
    offset, the same offsets (spread seed_sd) in every configuration, in a shuffled order."""
    rng = np.random.default_rng(rng_seed)
    offsets = seed_sd * np.linspace(-1.5, 1.5, seeds)
    rows = [{"rho": 0.01 * (i + 1), "seed": s, "q": config_step * i + q, "m": config_step * i + m}
            for i in range(configs)
            for s, (q, m) in enumerate(zip(rng.permutation(offsets), rng.permutation(offsets)))]
    return pd.DataFrame(rows)


def test_configurations_closer_than_seeds_are_within_seed_noise():
    found = noise_floor(planted(config_step=0.01, seed_sd=1.0), "q", KEYS)
    assert found.verdict == "within seed noise" and found.p > 0.05
    assert found.within_sd > found.between_sd and found.pairs_exceeding == 0
    assert (found.configurations, found.seeds, found.pairs) == (5, 4, 10)


def test_configurations_farther_apart_than_seeds_exceed_it():
    found = noise_floor(planted(config_step=1.0, seed_sd=0.05), "q", KEYS)
    assert found.verdict == "exceed seed noise" and found.p < 1e-6
    assert found.pairs_exceeding == found.pairs == 10 and found.icc > 0.99


def test_the_anova_and_the_pooled_spread_match_their_closed_forms():
    table = pd.DataFrame({"rho": [1, 1, 2, 2, 3, 3], "seed": [0, 1] * 3, "q": [1.0, 3.0, 2.0, 4.0, 6.0, 8.0]})
    found = noise_floor(table, "q", KEYS)
    # each configuration's two seeds differ by 2: within variance 2; means 2, 3, 7
    assert found.within_sd == pytest.approx(np.sqrt(2.0))
    assert found.between_sd == pytest.approx(np.std([2.0, 3.0, 7.0], ddof=1))
    msb = 2 * ((2 - 4) ** 2 + (3 - 4) ** 2 + (7 - 4) ** 2) / 2  # n per group x squared deviations / (k - 1)
    assert found.f == pytest.approx(msb / 2.0)
    assert found.icc == pytest.approx((msb - 2.0) / (msb + 2.0))


def test_kendall_over_configuration_means_carries_the_seed_spread():
    tight = mean_kendall(planted(1.0, 0.05), "m", "q", KEYS, n_resamples=200)
    loose = mean_kendall(planted(0.01, 1.0), "m", "q", KEYS, n_resamples=200)
    # seed noise cannot reorder the means here
    assert tight[0] == pytest.approx(1.0) and tight[1] == pytest.approx(1.0) and tight[3] == 5
    assert loose[2] - loose[1] > 1.0  # it can reorder them here: a wide interval


def test_only_replicated_configurations_count():
    single = planted(1.0, 0.1, seeds=1)
    assert not replicated(single, KEYS) and noise_floor(single, "q", KEYS) is None
    assert noise_floor_table(single, ["q"], KEYS).empty
    assert replicated(planted(1.0, 0.1), KEYS)
