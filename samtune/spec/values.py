"""The value types every section of a search spec is built from, and how a refusal is
worded.

:class:`_Section` is one mapping of the YAML file (frozen, unknown keys refused with
the list of known ones).  :func:`_explain` turns pydantic's errors into the messages
a user sees, ``where = value: what is allowed``; union members carry a tag
(:func:`_tag`) that it leaves out of those locations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from samtune import schema
from samtune.config import TRIAL_KEYS, TrialConfig


def _pair(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("expected [lo, hi]: a list of two numbers")
    return value


def _ordered(bounds: tuple) -> tuple:
    if not bounds[0] < bounds[1]:
        raise ValueError("lo must be < hi")
    return bounds


def _positive(bounds: tuple) -> tuple:
    if bounds[0] <= 0:
        raise ValueError("both bounds must be > 0 (the scale is logarithmic)")
    return bounds


def _integral(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError("bounds must be integers")
    return int(value)


def _categorical(value: Any) -> Any:
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError("a choice must be a number, a string, a boolean or null")
    return value


def _listed(value: Any) -> Any:
    return value if isinstance(value, (list, tuple)) else [value]


def _trial_parameter(key: str) -> str:
    if key not in TRIAL_KEYS:
        raise ValueError(f"unknown trial parameter; allowed: {', '.join(TRIAL_KEYS)}")
    return key


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Number = Annotated[int | float, BeforeValidator(_number)]  # an int stays an int
Range = Annotated[tuple[Number, Number], BeforeValidator(_pair), AfterValidator(_ordered)]
IntBound = Annotated[int, BeforeValidator(_integral)]
IntRange = Annotated[tuple[IntBound, IntBound], BeforeValidator(_pair), AfterValidator(_ordered)]
Categorical = Annotated[Any, AfterValidator(_categorical)]
WhenValues = Annotated[tuple[Categorical, ...], BeforeValidator(_listed), Field(min_length=1)]
TrialKey = Annotated[str, AfterValidator(_trial_parameter)]
Mode = Literal[schema.OBJECTIVE_MODES]
MeasureKey = Literal[tuple(schema.MEASURES)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]


class _Section(BaseModel):
    """One mapping of the YAML file: frozen, and an unknown key is refused with the
    list of known ones (the YAML spellings, i.e. the aliases)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _not_in_yaml: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def yaml_keys(cls) -> tuple[str, ...]:
        return tuple(field.alias or name for name, field in cls.model_fields.items()
                     if name not in cls._not_in_yaml)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            return data  # pydantic says what was expected
        allowed = cls.yaml_keys()
        unknown = [key for key in data if key not in allowed]
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
        return cls._prepare(dict(data), info)

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Fill in what the YAML leaves implicit (a hook for subclasses)."""
        return data


# Every tag :func:`_tag` has made; the unions of the spec are built at import, so the
# set is complete before anything is validated.
_UNION_TAGS: set[str] = set()


def _tag(name: str) -> str:
    """A union member's tag: pydantic puts it in error locations; :func:`_explain` drops it."""
    tag = f"<{name}>"
    _UNION_TAGS.add(tag)
    return tag


def _explain(problems: list[dict[str, Any]], prefix: str = "") -> str:
    """pydantic's errors as ``where = value: what is allowed``, joined by ``; ``."""
    lines = []
    for problem in problems:
        loc = [str(part) for part in problem["loc"] if part not in _UNION_TAGS]
        names_key = bool(loc) and loc[-1] == "[key]"  # the mapping key itself is wrong
        path = ".".join(filter(None, [prefix, *loc[:-1 if names_key else None]]))
        message = problem["msg"].removeprefix("Value error, ")
        if not path:  # a check across keys: its message names them
            lines.append(message)
        elif problem["type"] == "missing":
            lines.append(f"{path}: required")
        elif names_key:
            lines.append(f"{path}: {message}")
        else:
            lines.append(f"{path} = {problem.get('input')!r}: {message}")
    return "; ".join(lines)


def _refuse_fixed(section: str, key: str, trial: Mapping[str, Any]) -> None:
    if key in trial:
        raise ValueError(f"{section}.{key} is also fixed in trial.{key}: give it in one place only")


def _refuse_invalid_value(section: str, key: str, value: Any, trial: Mapping[str, Any]) -> None:
    """Refuse ``value`` if it is invalid for ``key`` itself (e.g. rho < 0): validate it over
    the fixed trial values and keep the errors located at ``key``.  An error with no
    location comes from a check across keys (lr_final <= lr, ...), which each trial
    makes when it starts, once every key has its value."""
    try:
        TrialConfig.model_validate({**trial, key: value})
    except ValidationError as err:
        own = [problem for problem in err.errors() if problem["loc"][:1] == (key,)]
        if own:
            raise ValueError(_explain(own, prefix=section)) from None
