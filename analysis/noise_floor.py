"""Seeds as the noise floor: is a difference between configurations larger than what a
change of seed alone gives?

A configuration is a setting of every varying hyperparameter but the seed; trials of one
configuration under several seeds (``design: {replicates: k}``) measure the seed noise.
For each quantity (a target or a measure):

- the spread across seeds within a configuration (pooled standard deviation) against the
  spread of the configurations' means;
- one-way ANOVA over the replicated configurations (``scipy.stats.f_oneway``): the
  differences between configurations exceed seed noise when p < α; the intraclass
  correlation ICC(1) says which share of the variance is between configurations;
- Tukey's HSD (``scipy.stats.tukey_hsd``) over every pair of configurations: how many pairs
  differ by more than seed noise.

And for each measure against a target, Kendall's τ over the configurations' means, with a
percentile CI from a bootstrap over seeds within configurations (each configuration's
seeds resampled with replacement, the means and τ recomputed): the seed noise carried
into the interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis import schema

ALPHA = 0.05


@dataclass(frozen=True)
class NoiseFloor:
    quantity: str
    configurations: int      # configurations with at least two seeds
    seeds: int               # the median seeds per configuration
    within_sd: float         # pooled standard deviation across seeds of one configuration
    between_sd: float        # standard deviation of the configurations' means
    f: float
    p: float
    icc: float
    pairs: int
    pairs_exceeding: int     # configuration pairs Tukey's HSD separates at ALPHA

    @property
    def exceeds(self) -> bool:
        return bool(self.p < ALPHA)

    @property
    def verdict(self) -> str:
        return "exceed seed noise" if self.exceeds else "within seed noise"


def configuration_labels(trials: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """One label per trial: its values of ``keys`` but the seed."""
    settings = [k for k in keys if k != schema.SEED]
    if not settings:
        return pd.Series("all", index=trials.index)
    return trials[settings].astype(str).agg(" | ".join, axis=1)


def replicated(trials: pd.DataFrame, keys: Sequence[str]) -> bool:
    """Whether some configuration ran under two seeds or more."""
    if schema.SEED not in trials:
        return False
    return bool(trials.groupby(configuration_labels(trials, keys))[schema.SEED].nunique().max() >= 2)


def _samples(trials: pd.DataFrame, quantity: str, keys: Sequence[str]) -> list[np.ndarray]:
    data = trials.dropna(subset=[quantity])
    groups = data.groupby(configuration_labels(data, keys))[quantity]
    return [g.to_numpy(float) for _, g in groups if len(g) >= 2]


def noise_floor(trials: pd.DataFrame, quantity: str, keys: Sequence[str]) -> NoiseFloor | None:
    """The seed noise of ``quantity`` against its configurations' differences; None below
    two replicated configurations."""
    samples = _samples(trials, quantity, keys)
    if len(samples) < 2:
        return None
    sizes = np.array([len(s) for s in samples])
    within_var = sum((len(s) - 1) * s.var(ddof=1) for s in samples) / (sizes.sum() - len(samples))
    means = np.array([s.mean() for s in samples])
    anova = stats.f_oneway(*samples)
    msb = sum(len(s) * (s.mean() - np.concatenate(samples).mean()) ** 2 for s in samples) / (len(samples) - 1)
    n0 = (sizes.sum() - (sizes ** 2).sum() / sizes.sum()) / (len(samples) - 1)
    icc = (msb - within_var) / (msb + (n0 - 1) * within_var) if msb + (n0 - 1) * within_var > 0 else np.nan
    tukey = stats.tukey_hsd(*samples).pvalue
    upper = tukey[np.triu_indices(len(samples), k=1)]
    return NoiseFloor(quantity, len(samples), int(np.median(sizes)), float(np.sqrt(within_var)),
                      float(means.std(ddof=1)), float(anova.statistic), float(anova.pvalue), float(icc),
                      len(upper), int((upper < ALPHA).sum()))


def mean_kendall(trials: pd.DataFrame, measure: str, target: str, keys: Sequence[str], *,
                 n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float, int]:
    """(τ, low, high, configurations): Kendall's τ over configuration means, and its
    percentile CI from resampling each configuration's seeds."""
    data = trials.dropna(subset=[measure, target])
    groups = [g[[measure, target]].to_numpy(float) for _, g in data.groupby(configuration_labels(data, keys))]
    if len(groups) < 3:
        return np.nan, np.nan, np.nan, len(groups)
    means = np.array([g.mean(axis=0) for g in groups])
    tau = stats.kendalltau(means[:, 0], means[:, 1]).statistic
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        resampled = np.array([g[rng.integers(0, len(g), len(g))].mean(axis=0) for g in groups])
        draws.append(stats.kendalltau(resampled[:, 0], resampled[:, 1]).statistic)
    finite = np.array([d for d in draws if np.isfinite(d)])
    if not finite.size:
        return float(tau), np.nan, np.nan, len(groups)
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(tau), float(low), float(high), len(groups)


def noise_floor_table(trials: pd.DataFrame, quantities: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    rows = []
    for quantity in quantities:
        found = noise_floor(trials, quantity, keys)
        if found is not None:
            rows.append({"quantity": quantity, "configurations": found.configurations, "seeds": found.seeds,
                         "within_sd": found.within_sd, "between_sd": found.between_sd, "F": found.f,
                         "p": found.p, "ICC": found.icc,
                         "pairs_exceeding": f"{found.pairs_exceeding} of {found.pairs}", "verdict": found.verdict})
    return pd.DataFrame(rows)
