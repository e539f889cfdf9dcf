"""Figures of the search itself: parallel coordinates over the searched keys, the
Pareto front of a two-metric objective, the theory probes per epoch, and the schedules
population-based training found.

Like :mod:`analysis.figures` they build a ``matplotlib.figure.Figure`` without
pyplot and never save it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis import schema
from analysis.figures import group_colors
from analysis.ticks import compact, log_ticks

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

LOG_RATIO = 100.0


def wide_positive(values: np.ndarray, ratio: float = LOG_RATIO) -> bool:
    finite = values[np.isfinite(values)]
    return bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > ratio)


def _scaled(values: pd.Series, dist: BaseDistribution | None) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values mapped onto [0, 1] and the ticks (position, label) of their axis: a
    categorical key at evenly spaced integer positions, a number on its own (log) scale."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        span = max(len(choices) - 1, 1)
        index = {c: i for i, c in enumerate(choices)}
        mapped = values.map(lambda v: index.get(v, np.nan) / span if pd.notna(v) else np.nan)
        ticks = [(i / span, str(c)) for i, c in enumerate(choices)]
        return mapped.to_numpy(float), ticks
    x = pd.to_numeric(values, errors="coerce").to_numpy(float)
    log = getattr(dist, "log", False) if dist is not None else wide_positive(x)
    shown = np.log(x) if log else x
    low, high = np.nanmin(shown), np.nanmax(shown)
    span = high - low if high > low else 1.0
    positions = np.linspace(0.0, 1.0, 3)
    labels = [f"{np.exp(low + p * span) if log else low + p * span:.3g}" for p in positions]
    return (shown - low) / span, list(zip(positions, labels))


def parallel_coordinates(trials: pd.DataFrame, dists: Mapping[str, BaseDistribution],
                         metrics: Sequence[str], modes: Sequence[str]) -> Figure:
    """One line per trial over the searched keys then the objective's metrics, colored by
    the first metric; the best trials are drawn last, on top."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    columns = [*dists, *metrics]
    scaled = {c: _scaled(trials[c], dists.get(c)) for c in columns}
    color_values = pd.to_numeric(trials[metrics[0]], errors="coerce").to_numpy(float)
    order = np.argsort(-color_values if modes[0] == "min" else color_values, kind="stable")
    cmap = colormaps["viridis_r" if modes[0] == "min" else "viridis"]
    norm = Normalize(np.nanmin(color_values), np.nanmax(color_values))
    fig = Figure(figsize=(max(6.0, 1.5 * len(columns) + 2), 4.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(columns))
    for i in order:
        y = np.array([scaled[c][0][i] for c in columns])
        ax.plot(x, y, color=cmap(norm(color_values[i])), lw=1.2, alpha=0.8)
    for position, column in zip(x, columns):
        ax.axvline(position, color="black", lw=0.8)
        for tick, label in scaled[column][1]:
            ax.text(position + 0.03, tick, label, fontsize="x-small", va="center")
    ax.set_xticks(x, columns, rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(columns) - 0.5)
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=f"{metrics[0]} ({modes[0]})")
    fig.suptitle("Comparable trials over the searched keys and the objective")
    return fig


def pareto_front(frame: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> Figure:
    """The two objective metrics of every trial (column ``pareto`` flags the front): the
    front in color joined in order of the first metric, the dominated trials in grey."""
    fig = Figure(figsize=(6.0, 4.6), layout="constrained")
    ax = fig.subplots()
    x_name, y_name = metrics[:2]
    front = frame[frame["pareto"]].sort_values([x_name, y_name])
    rest = frame[~frame["pareto"]]
    ax.scatter(rest[x_name], rest[y_name], color="0.6", s=22, label="dominated")
    ax.plot(front[x_name], front[y_name], "-o", color="tab:red", ms=5, lw=1.2, label="non-dominated")
    for axis, name in (("x", x_name), ("y", y_name)):
        if wide_positive(frame[name].to_numpy(float)):
            getattr(ax, f"set_{axis}scale")("log")
    ax.set_xlabel(f"{x_name} ({modes[0]})")
    ax.set_ylabel(f"{y_name} ({modes[1]})")
    ax.legend(fontsize="small", frameon=False)
    fig.suptitle(f"Pareto front: {len(front)} of {len(frame)} trials non-dominated")
    return fig


def probe_curves(wide: pd.DataFrame, *, labels: pd.Series, grad: str, msd: str) -> Figure:
    """Theory probes per trial, colored by group: ``grad`` and ``msd`` against the epoch,
    ``msd`` against the epoch's batch size and learning rate; log y.  ``wide`` holds one
    row per (run, epoch) with columns ``run_id, step`` and the metrics."""
    panels = [(grad, "step"), (msd, "step"), (msd, "batch_size"), (msd, "lr")]
    panels = [(y, x) for y, x in panels if y in wide and x in wide]
    fig = Figure(figsize=(4.0 * min(len(panels), 2), 3.3 * ((len(panels) + 1) // 2)), layout="constrained")
    axes = fig.subplots((len(panels) + 1) // 2, min(len(panels), 2), squeeze=False).ravel()
    colors = group_colors(labels)
    for ax, (y_name, x_name) in zip(axes, panels):
        for run_id, run in wide.groupby(schema.RUN_ID, sort=False):
            run = run.sort_values("step")
            color = colors.get(str(labels.get(run_id)), "black")
            ax.plot(run[x_name], run[y_name], "-o", color=color, ms=2.5, lw=1.0, alpha=0.8)
        _probe_axes(ax, wide, x_name, y_name)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if len(colors) > 1:
        handles = [axes[0].plot([], [], color=c, label=name)[0] for name, c in colors.items()]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(colors), 5),
                   fontsize="small", frameon=False)
    fig.suptitle("Theory probes, one line per trial")
    return fig


def _probe_axes(ax, wide: pd.DataFrame, x_name: str, y_name: str) -> None:
    y = pd.to_numeric(wide[y_name], errors="coerce").to_numpy(float)
    if np.nanmin(y) > 0:
        ax.set_yscale("log")
    x = pd.to_numeric(wide[x_name], errors="coerce").to_numpy(float)
    if x_name != "step" and wide_positive(x, 3.9):
        from matplotlib import ticker

        ax.set_xscale("log", base=2 if x_name == "batch_size" else 10)
        # plain short numbers: 10^k mantissas on neighbouring minor ticks overlap
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: compact(value)))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("epoch" if x_name == "step" else x_name)
    ax.set_ylabel(y_name)


# a positive key whose values span more than this ratio gets a log axis in the schedules
SCHEDULE_LOG_RATIO = 10.0
BEST_COLOR, OTHER_COLOR = "tab:red", "0.6"


def pbt_schedules(schedules: pd.DataFrame, *, keys: Sequence[str], best: str | None,
                  best_label: str = "best trial") -> Figure:
    """One panel per evolved key against the epoch, one step line per trial: ``schedules``
    is long (``run_id, epoch`` and the keys, one row per trial and epoch); the run ``best``
    is drawn bold in color and labelled ``best_label``, the others thin and grey."""
    ncols = 2 if len(keys) == 4 else min(len(keys), 3)   # four panels as 2 × 2, not 3 + 1
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    runs = dict(tuple(schedules.groupby(schema.RUN_ID, sort=False)))
    for ax, key in zip(axes, keys):
        for run_id, run in runs.items():
            if run_id != best:
                _schedule_steps(ax, run, key, color=OTHER_COLOR, lw=0.9, alpha=0.8)
        if best in runs:  # last, so no grey line hides it
            _schedule_steps(ax, runs[best], key, color=BEST_COLOR, lw=2.4, label=best_label, zorder=3)
        _schedule_axes(ax, pd.to_numeric(schedules[key], errors="coerce").to_numpy(float), key)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    others = len(runs) - (best in runs)
    handles = [Line2D([], [], color=BEST_COLOR, lw=2.4, label=best_label)] if best in runs else []
    handles.append(Line2D([], [], color=OTHER_COLOR, lw=0.9, label=f"other trials ({others})"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small", frameon=False)
    fig.suptitle("Schedules found by population-based training: values trained on, per epoch")
    return fig


def _schedule_steps(ax, run: pd.DataFrame, key: str, **style) -> None:
    """Epoch e trains from e − 1 to e: one stair per epoch at the value it trained with."""
    run = run[[schema.EPOCH, key]].apply(pd.to_numeric, errors="coerce").dropna().sort_values(schema.EPOCH)
    if run.empty:
        return
    epochs = run[schema.EPOCH].to_numpy(float)
    ax.stairs(run[key].to_numpy(float), np.concatenate([[epochs[0] - 1], epochs]), baseline=None, **style)


def _schedule_axes(ax, values: np.ndarray, key: str) -> None:
    """Batch size on a log2 axis labelled at powers of 2; another positive key spanning
    more than SCHEDULE_LOG_RATIO on a log axis; short tick labels either way."""
    from matplotlib import ticker

    finite = values[np.isfinite(values)]
    if key == "batch_size" and finite.size and finite.min() > 0:
        ax.set_yscale("log", base=2)
        low, high = np.floor(np.log2(finite.min())), np.ceil(np.log2(finite.max()))
        ax.yaxis.set_major_locator(ticker.FixedLocator([2.0 ** k for k in np.arange(low, high + 1)]))
    elif wide_positive(finite, SCHEDULE_LOG_RATIO):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.FixedLocator(log_ticks(float(finite.min()), float(finite.max()))))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: compact(value)))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
