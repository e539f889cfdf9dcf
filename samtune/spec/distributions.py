"""The ``search:`` section: one Optuna distribution per searched key (uniform,
loguniform, int, choice), each optionally sampled only ``when`` other searched
``choice`` keys take given values.

The same distributions are the define-by-run space Optuna samples
(:meth:`_Distribution.suggest`), the domains Ray samples a PBT population from, and
the bounds the pre-launch checks hold a search to (:func:`upper_bound`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Discriminator, Field, PrivateAttr, Tag

from samtune import schema
from samtune.spec.values import Categorical, IntRange, Range, WhenValues, _positive, _Section, _tag


class _Distribution(_Section):
    """One searched key, optionally sampled only ``when`` other searched ``choice``
    keys take given values.  ``key`` is the trial parameter it samples."""

    kind: ClassVar[str]
    values: tuple = Field(description="the bounds (lo, hi), or the choices; spelled `kind` in YAML")
    when: dict[str, WhenValues] = Field(default_factory=dict, description=(
        "sample this key only when each named earlier `choice` key takes one of the given values"))
    _key: str = PrivateAttr("")

    @property
    def key(self) -> str:
        return self._key

    def __repr_args__(self):
        yield "key", self.key
        yield self.kind, self.values
        if self.when:
            yield "when", self.when

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for a value (define-by-run)."""
        raise NotImplementedError

    def active(self, chosen: Mapping[str, Any]) -> bool:
        return all(chosen.get(key) in allowed for key, allowed in self.when.items())

    def resolved(self) -> dict[str, Any]:
        when = {"when": {key: list(allowed) for key, allowed in self.when.items()}} if self.when else {}
        return {self.kind: list(self.values), **when}


class Uniform(_Distribution):
    kind: ClassVar[str] = "uniform"
    values: Range = Field(alias=kind, description="`[lo, hi]`: a float drawn uniformly")

    def suggest(self, trial) -> float:
        return trial.suggest_float(self.key, *self.values)


class LogUniform(_Distribution):
    kind: ClassVar[str] = "loguniform"
    values: Annotated[Range, AfterValidator(_positive)] = Field(alias=kind, description=(
        "`[lo, hi]`, both > 0: a float drawn uniformly on a log scale"))

    def suggest(self, trial) -> float:
        return trial.suggest_float(self.key, *self.values, log=True)


class IntUniform(_Distribution):
    kind: ClassVar[str] = "int"
    values: IntRange = Field(alias=kind, description="`[lo, hi]`: an integer, both ends included")

    def suggest(self, trial) -> int:
        return trial.suggest_int(self.key, *self.values)


class Choice(_Distribution):
    kind: ClassVar[str] = "choice"
    values: tuple[Categorical, ...] = Field(alias=kind, min_length=1, description=(
        "`[values]`: numbers, strings, booleans or null"))

    def suggest(self, trial) -> Any:
        return trial.suggest_categorical(self.key, list(self.values))


_DISTRIBUTION_CLASSES = (Uniform, LogUniform, IntUniform, Choice)
DISTRIBUTIONS = tuple(cls.kind for cls in _DISTRIBUTION_CLASSES)
# the report reads a logged spec's distributions by these names (analysis imports schema only)
assert DISTRIBUTIONS == schema.SEARCH_DISTRIBUTIONS


def _distribution_tag(value: Any) -> str | None:
    if isinstance(value, _Distribution):
        return _tag(value.kind)
    kinds = [kind for kind in DISTRIBUTIONS if isinstance(value, Mapping) and kind in value]
    return _tag(kinds[0]) if len(kinds) == 1 else None


Distribution = Annotated[
    Annotated[Uniform, Tag(_tag("uniform"))] | Annotated[LogUniform, Tag(_tag("loguniform"))]
    | Annotated[IntUniform, Tag(_tag("int"))] | Annotated[Choice, Tag(_tag("choice"))],
    Discriminator(_distribution_tag, custom_error_type="distribution",
                  custom_error_message="expected exactly one of {uniform: [lo, hi]}, {loguniform: [lo, hi]}, "
                                       "{int: [lo, hi]} or {choice: [values]}, plus an optional "
                                       "when: {KEY: value or [values]}"),
]


def upper_bound(dist: _Distribution) -> Any:
    """The largest value ``dist`` may give its key: a range's upper bound, a choice's
    largest number (None when None is among the choices: for ``batch_max``, no cap)."""
    if isinstance(dist, Choice):
        if None in dist.values:
            return None  # batch_max: None is no cap, the largest
        return max(v for v in dist.values if isinstance(v, (int, float)) and not isinstance(v, bool))
    return dist.values[1]


def _check_when(dist: _Distribution, search: tuple[_Distribution, ...]) -> None:
    """``when`` names other ``choice`` keys of the search, sampled before ``dist``, and
    values among their choices."""
    choices = {d.key: d for d in search if isinstance(d, Choice) and d.key != dist.key}
    earlier = set(itertools.takewhile(lambda key: key != dist.key, (d.key for d in search)))
    for key, allowed in dist.when.items():
        parent = choices.get(key)
        if parent is None:
            raise ValueError(f"search.{dist.key}.when.{key}: must name another `choice` key of search; "
                             f"choice keys: {', '.join(choices) or 'none'}")
        if key not in earlier:
            raise ValueError(f"search.{dist.key}.when.{key}: the `when` conditions of {dist.key} and "
                             f"{key} form a cycle")
        bad = [value for value in allowed if value not in parent.values]
        if bad:
            raise ValueError(f"search.{dist.key}.when.{key} = {bad!r}: not among "
                             f"search.{key}.choice {list(parent.values)}")


def _parents_first(dists: dict[str, _Distribution]) -> tuple[_Distribution, ...]:
    """Order so that a conditional key is sampled after the keys it depends on (keys
    whose conditions form a cycle keep their order; :func:`_check_when` refuses them)."""
    ordered: list[_Distribution] = []
    pending = dict(dists)
    while pending:
        ready = [d for d in pending.values() if all(key not in pending for key in d.when)]
        for dist in ready or list(pending.values()):
            ordered.append(pending.pop(dist.key))
    return tuple(ordered)
