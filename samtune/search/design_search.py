"""A Tune searcher that runs a design around another searcher's suggestions
(:mod:`samtune.spec.design`): each configuration Optuna suggests is followed by its
one-axis neighbours and every one of them by its seed replicates, before Optuna is asked
again.  Optuna is told only the results of its own suggestions (their first seed), so it
samples as it would without the design."""

from __future__ import annotations

import pickle
from collections import deque
from typing import Any

from ray.tune.search import Searcher

from samtune.spec import SearchSpec
from samtune.spec.design import neighbours


class DesignSearch(Searcher):
    def __init__(self, sampler: Searcher, spec: SearchSpec):
        super().__init__(metric=sampler.metric, mode=sampler.mode)
        self.sampler = sampler
        self.distributions = spec.search
        self.design, self.seed = spec.design, spec.seed
        self.searched = set(spec.searched_keys)
        self.queued: deque[dict[str, Any]] = deque()
        self.sampled: set[str] = set()  # trials whose config the sampler gave

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.sampler.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not self.queued:
            config = self.sampler.suggest(trial_id)
            if not isinstance(config, dict):  # None (wait) or Searcher.FINISHED
                return config
            self.sampled.add(trial_id)
            self.queued.extend(self.group(config))
        return self.queued.popleft()

    def group(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """The configuration, its neighbours (coupled), each under every replicate seed."""
        searched = {k: v for k, v in config.items() if k in self.searched}
        members = [searched] + (neighbours(searched, self.distributions, self.design.points)
                                if self.design.coupled else [])
        if self.design.replicates == 1:
            return members
        return [m | {"seed": self.seed + r} for m in members for r in range(self.design.replicates)]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.sampled:
            self.sampler.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.sampled:
            self.sampler.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
