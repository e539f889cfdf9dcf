"""A Tune searcher that stops launching trials once a search's ``until:`` question is
settled (:mod:`samtune.spec.until`): it passes another searcher's suggestions through,
reads each completed trial's measure and target, and from the moment the answer is
settled suggests nothing more, so the trials running finish and the search ends.  The
answer is written on the search's parent run (tag ``samtune.settled``)."""

from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.search import Searcher

from samtune import schema
from samtune.spec.until import Until
from samtune.tracking.store import Tracker


class UntilSettled(Searcher):
    def __init__(self, sampler: Searcher, until: Until, tracker: Tracker | None = None,
                 parent_run_id: str | None = None):
        super().__init__(metric=sampler.metric, mode=sampler.mode)
        self.sampler, self.until = sampler, until
        self.tracker, self.parent_run_id = tracker, parent_run_id
        self.measures: list[float] = []
        self.targets: list[float] = []
        self.settled: str | None = None

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.sampler.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return Searcher.FINISHED if self.settled else self.sampler.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.sampler.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.sampler.on_trial_complete(trial_id, result, error)
        if error or not result or result.get(schema.STATUS_RESULT_KEY) != schema.COMPLETED:
            return
        measure, target = (result.get(key) for key in (self.until.measure, self.until.target))
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (measure, target)):
            return
        self.measures.append(float(measure))
        self.targets.append(float(target))
        if self.settled is None and (answer := self.until.answer(self.measures, self.targets)) is not None:
            tau, low, high = answer
            self.settled = (f"settled after {len(self.measures)} completed trials: {self.until.question()}; "
                            f"τ = {tau:.3f}, interval [{low:.3f}, {high:.3f}]")
            if self.tracker is not None:
                self.tracker.set_tag(self.parent_run_id, schema.TAG_SETTLED, self.settled)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
