"""Tick positions and labels that stay legible on a small panel, whatever the scale of
the values: measures run from about 1e-4 to 1e4, and matplotlib's defaults label
them with long decimals (``0.00115``) packed too closely to read."""

from __future__ import annotations

import math

import numpy as np

MAX_TICKS = 5
LOG_SUBS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0))


def compact(value: float) -> str:
    """``0.05``, ``250``, but ``2e-4`` and ``1.5e4``: never more than a few characters."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if 1e-2 <= abs(value) < 1e4:
        text = f"{value:.3g}"
        return f"{value:.0f}" if "e" in text else text
    mantissa, exponent = f"{value:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def log_ticks(low: float, high: float, max_ticks: int = MAX_TICKS) -> list[float]:
    """Between 2 and ``max_ticks`` round positions in [low, high] (both > 0): decades
    (every few over a wide range), else 1-2-5 steps, else finer steps, preferring three
    or more; evenly spaced round numbers for a range too narrow for any of these."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    found = []
    for subs in LOG_SUBS:
        ticks = [m * 10.0 ** k for k in range(first, last + 1) for m in subs if low <= m * 10.0 ** k <= high]
        if len(ticks) > max_ticks:
            ticks = ticks[::math.ceil(len(ticks) / max_ticks)] if subs == LOG_SUBS[0] else []
        if len(ticks) >= 3:
            return ticks
        found.append(ticks)
    two = [ticks for ticks in found if len(ticks) == 2]
    return two[0] if two else linear_ticks(low, high, max_ticks)


def linear_ticks(low: float, high: float, max_ticks: int = MAX_TICKS) -> list[float]:
    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(max_ticks - 1, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
    inside = [float(t) for t in ticks if low <= t <= high]
    return inside if len(inside) >= 2 else [low, high]


def legible_x(ax, values: np.ndarray, *, log: bool) -> None:
    """Set ``ax``'s x scale and label at most ``MAX_TICKS`` ticks inside the data's range,
    in :func:`compact` form."""
    from matplotlib import ticker

    finite = values[np.isfinite(values)]
    if log:
        ax.set_xscale("log")
    if finite.size == 0 or finite.min() == finite.max():
        ax.xaxis.set_major_locator(ticker.MaxNLocator(3))
    else:
        pick = log_ticks if log else linear_ticks
        ax.xaxis.set_major_locator(ticker.FixedLocator(pick(float(finite.min()), float(finite.max()))))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: compact(value)))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
