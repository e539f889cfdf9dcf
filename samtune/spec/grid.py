"""The ``grid:`` and ``equal_budget:`` sections: grid axes, bundles, the cells of a
grid and the budget every cell gets under ``equal_budget``.

An axis is a trial parameter with a list of values, or a named axis of bundles whose
values each set several trial parameters (``schedule: {constant: {...}, +B: {...}}``).
A cell is one combination of the axes' values; :func:`grid_cells` gives each one with
the label messages name it by.

The functions here take the whole :class:`~samtune.spec.search_spec.SearchSpec`;
that module imports this one, so the type is not imported here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, RootModel, Tag

from samtune import schema
from samtune.budgets import capacity, with_budget
from samtune.config import TRIAL_KEYS, make_trial_config
from samtune.spec.values import _refuse_fixed, _refuse_invalid_value, _Section, _tag

AxisValues = TypeVar("AxisValues")


class _Axis(RootModel[AxisValues]):
    """One grid axis; ``name`` is its key in ``grid``."""

    model_config = ConfigDict(frozen=True)
    _name: str = PrivateAttr("")

    @property
    def name(self) -> str:
        return self._name

    def __repr_args__(self):
        yield "name", self.name
        yield "root", self.root

    @property
    def choices(self) -> list:
        """What ``tune.grid_search`` iterates over: the values, or the bundle names."""
        return list(self.root)


class ValueAxis(_Axis[Annotated[tuple[Any, ...], Field(min_length=1)]]):
    """``KEY: [values]``: a trial parameter and the values the grid takes."""

    @property
    def bundles(self) -> dict[str, dict[str, Any]]:
        return {}

    def resolved(self) -> list:
        return list(self.root)

    def check(self, trial: Mapping[str, Any], axes: tuple[str, ...]) -> None:
        if self.name not in TRIAL_KEYS:
            raise ValueError(f"grid.{self.name}: unknown trial parameter; allowed: {', '.join(TRIAL_KEYS)} "
                             f"(or a mapping NAME: {{trial parameters}} for an axis of bundles)")
        _refuse_fixed("grid", self.name, trial)
        for value in self.root:
            _refuse_invalid_value("grid", self.name, value, trial)


class BundleAxis(_Axis[Annotated[dict[Annotated[str, BeforeValidator(str)], dict[str, Any]],
                                Field(min_length=1)]]):
    """``NAME: {bundle: {trial parameters}, ...}``: a named axis whose values each set
    several trial parameters (``schedule: {constant: {...}, +B: {...}}``)."""

    @property
    def bundles(self) -> dict[str, dict[str, Any]]:
        return self.root

    def resolved(self) -> dict[str, dict[str, Any]]:
        return {name: dict(values) for name, values in self.root.items()}

    def check(self, trial: Mapping[str, Any], axes: tuple[str, ...]) -> None:
        if self.name in TRIAL_KEYS:
            raise ValueError(f"grid.{self.name}: a trial parameter takes a list of values, not a mapping")
        for name, values in self.root.items():
            clash = sorted(set(values) & set(axes))
            if clash:
                raise ValueError(f"grid.{self.name}.{name} sets {', '.join(clash)}, which is also a grid "
                                 f"axis: give each parameter in one place only")
            make_trial_config({**trial, **values}, where=f"grid.{self.name}.{name}")


def _axis_tag(value: Any) -> str | None:
    if isinstance(value, (list, tuple, ValueAxis)):
        return _tag("values")
    if isinstance(value, (Mapping, BundleAxis)):
        return _tag("bundles")
    return None


GridAxis = Annotated[
    Annotated[ValueAxis, Tag(_tag("values"))] | Annotated[BundleAxis, Tag(_tag("bundles"))],
    Discriminator(_axis_tag, custom_error_type="grid_axis",
                  custom_error_message="expected a non-empty list of values (a trial parameter) or a "
                                       "mapping NAME: {trial parameters} (an axis of bundles)"),
]


class EqualBudget(_Section):
    """``equal_budget: {unit: steps, like: {schedule: +B}}``: every grid cell trains for
    the budget the cells matching ``like`` (grid axis -> value) spend in their epochs."""

    unit: Literal[schema.BUDGET_UNITS] = Field("steps", description=(
        "`steps`, `samples` or `gradient_evaluations`"))
    like: dict[str, Any] = Field(min_length=1, description=(
        "grid axis → value: the cells whose budget every cell gets (e.g. `{schedule: +B}`)"))


# -- bundles ---------------------------------------------------------------------------------
def bundle_table(spec) -> dict[str, dict[str, dict[str, Any]]]:
    """Axis -> bundle name -> trial parameters, for the grid's axes of bundles."""
    return {axis.name: axis.bundles for axis in spec.grid if axis.bundles}


def expand_bundles(values: dict[str, Any], bundles: dict[str, dict[str, dict[str, Any]]]
                   ) -> tuple[dict[str, Any], dict[str, str]]:
    """Replace bundle-axis choices by their trial parameters; returns (trial values, labels)."""
    values, labels = dict(values), {}
    for axis, table in bundles.items():
        if axis in values:
            name = str(values.pop(axis))
            labels[axis] = name
            values.update(table[name])
    return values, labels


# -- cells -----------------------------------------------------------------------------------
def grid_size(spec) -> int:
    return math.prod(len(axis.choices) for axis in spec.grid) if spec.grid else 0


def grid_choices(spec) -> Iterator[dict[str, Any]]:
    """Every grid cell as axis -> its value (a bundle's name on an axis of bundles)."""
    names = [axis.name for axis in spec.grid]
    for combo in itertools.product(*(axis.choices for axis in spec.grid)):
        yield dict(zip(names, combo, strict=True))


def grid_cells(spec, *, budgeted: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """Every grid cell as ``(label, trial values)``: the label, ``grid cell {axis: value,
    ...}``, names the cell in messages; the values are the fixed ones with the cell's
    bundles expanded and, if ``budgeted``, the spec's equal budget applied (what the
    cell's trial runs with)."""
    bundles = bundle_table(spec)
    cells = []
    for chosen in grid_choices(spec):
        values, _ = expand_bundles({**spec.trial, **chosen}, bundles)
        if budgeted and spec.budget:
            values = with_budget(values, *spec.budget)
        label = "grid cell {" + ", ".join(f"{name}: {value}" for name, value in chosen.items()) + "}"
        cells.append((label, values))
    return cells


def _check_grid_cells(spec) -> None:
    """Every cell of a grid is known before launch, so the checks across keys (a ViT option
    on a CNN, lr_final <= lr, ...) are made for each one now, not when its trial starts."""
    for label, values in grid_cells(spec, budgeted=False):
        make_trial_config(values, where=label)


# -- equal budget ----------------------------------------------------------------------------
def _equal_budget(spec) -> int:
    """The budget of the grid cells matching ``equal_budget.like``; refuses a spec
    where they disagree or where some cell cannot be given it."""
    where = "equal_budget"
    if not spec.grid:
        raise ValueError(f"{where}: needs a grid (its cells get the budget of the cells named in `like`)")
    if "budget" in spec.trial:
        raise ValueError(f"{where} and trial.budget are both given: give the budget in one place only")
    axes = {axis.name: axis for axis in spec.grid}
    for key, value in spec.equal_budget.like.items():
        if key not in axes:
            raise ValueError(f"{where}.like.{key}: not a grid axis; axes: {', '.join(axes)}")
        if value not in axes[key].choices:
            raise ValueError(f"{where}.like.{key} = {value!r}: not among grid.{key} {axes[key].choices}")
    unit, like = spec.equal_budget.unit, spec.equal_budget.like
    budgets = set()
    for cell in grid_choices(spec):
        if all(cell[key] == value for key, value in like.items()):
            values, _ = expand_bundles({**spec.trial, **cell}, bundle_table(spec))
            budgets.add(capacity(values, unit))
    if len(budgets) > 1:
        raise ValueError(f"{where}.like = {dict(like)}: the cells it matches spend different budgets "
                         f"({', '.join(map(str, sorted(budgets)))} {unit}); name more axes in `like`")
    budget = budgets.pop()
    for _, values in grid_cells(spec, budgeted=False):
        make_trial_config(with_budget(values, budget, unit), where=f"{where} cell")
    return budget
