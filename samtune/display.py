"""Values as a person reads them: floats to 3 significant digits (``0.0141``, not
``0.014061448697390061``), more only where 3 would print two different values alike."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping

SIGNIFICANT = 3
_MAX_SIGNIFICANT = 17  # enough to print any float exactly


def value_text(value, among: Iterable = ()) -> str:
    """``value`` in as few characters as tell it apart: a float with ``SIGNIFICANT``
    significant digits, or more where fewer would print it like another value of
    ``among`` (``0.01234`` beside ``0.01236``); an int as an int; a list or tuple
    item by item; anything else (a string, None) as ``str`` gives it."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(item, among) for item in value) + "]"
    if isinstance(value, numbers.Integral) or not isinstance(value, numbers.Real):
        return str(value)
    value = float(value)
    others = {float(o) for o in among if isinstance(o, numbers.Real) and float(o) != value}
    for digits in range(SIGNIFICANT, _MAX_SIGNIFICANT + 1):
        text = f"{value:.{digits}g}"
        if all(f"{other:.{digits}g}" != text for other in others):
            return text
    return repr(value)


def values_text(values: Mapping) -> str:
    """``rho=0.0141, alpha=0.358, lr_shape=linear``."""
    return ", ".join(f"{key}={value_text(value)}" for key, value in values.items())
