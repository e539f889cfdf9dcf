"""The group table (:mod:`analysis.tables`) as a picture: one panel per quantity, the
schedules along x, one color per optimizer.

Each panel shows every trial as a small faint dot and each cell's mean with a ±1
sample standard deviation bar, both read from the group table the report prints, so
figure and table cannot disagree.  Like :mod:`analysis.figures` it builds a
``matplotlib.figure.Figure`` without pyplot and never saves it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.figures import group_colors
from analysis.search_figures import wide_positive
from analysis.tables import SCHEDULE, Grouping, with_schedule
from analysis.ticks import compact, log_ticks

PNG = "figures/groups.png"
MAX_PANELS = 6           # the target and the first five measures; the table has the rest
LOG_RATIO = 10.0         # a positive measure spanning more than this gets a log y axis
COLOR_COLUMN = "optimizer"
# gids of the artists, so a reader (or a test) can tell the trials from the means
TRIALS_GID, MEANS_GID = "trials", "means"


def panel_measures(measures: Sequence[str]) -> tuple[str, ...]:
    """The measures that get a panel beside the target's."""
    return tuple(measures[:MAX_PANELS - 1])


def caption(target: str, measures: Sequence[str], grouping: Grouping) -> str:
    drawn = panel_measures(measures)
    which = "each measure" if len(drawn) == len(measures) else f"the first {len(drawn)} measures"
    colored = ", one color per optimizer" if _colored(grouping) else ""
    text = (f"The group table as a picture: {target} and {which} per {' × '.join(_x_columns(grouping))}{colored}; "
            "faint dots: the trials; large markers: the cell means with ±1 sample standard deviation (no bar "
            f"for a cell of one trial). A positive measure spanning more than {LOG_RATIO:g}× is on a log axis.")
    rest = measures[len(drawn):]
    if rest:
        text += f" Not drawn: {', '.join(rest)}; see the table above and groups.csv."
    return text


def groups_figure(trials: pd.DataFrame, *, groups: pd.DataFrame, grouping: Grouping, target: str,
                  measures: Sequence[str], ncols: int = 3) -> Figure:
    """``groups`` is :func:`analysis.tables.group_table` of ``trials`` under ``grouping``
    (two cells or more) with ``target`` and ``measures`` among its values: one panel for
    the target, then one per measure of :func:`panel_measures`."""
    quantities = (target, *panel_measures(measures))
    cells = _cell_of_trial(trials, groups, grouping)
    names = _series_names(groups, grouping)
    colors = group_colors(names)
    x = _x_categories(groups, grouping)
    categories = list(x.cat.categories)
    fig, axes = _grid(len(quantities), ncols)
    for ax, quantity in zip(axes, quantities):
        _panel(ax, trials[quantity].to_numpy(float), cells, groups, names, x, colors, quantity)
        _y_axis(ax, trials[quantity].to_numpy(float), log=quantity != target)
        rotate = {"rotation": 20, "ha": "right"} if max(map(len, categories)) > 8 else {}
        ax.set_xticks(range(len(categories)), categories, **rotate)
        ax.set_xlim(-0.5, len(categories) - 0.5)
        ax.set_title(quantity, fontsize="medium")
    for ax in axes[len(quantities):]:
        ax.set_visible(False)
    if len(colors) > 1:
        handles = [Line2D([], [], color=color, marker="o", ls="none", label=name) for name, color in colors.items()]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5),
                   fontsize="small", frameon=False)
    fig.suptitle(f"{target} and measures per {' × '.join(grouping.columns)}: mean ± std over trials per cell "
                 f"(n per cell: {_n_range(groups['n'])})")
    return fig


# ---------------------------------------------------------------- cells

def _x_columns(grouping: Grouping) -> list[str]:
    """The grouping columns along x: all but the optimizer, which is the color."""
    return [c for c in grouping.columns if c != COLOR_COLUMN] if _colored(grouping) else list(grouping.columns)


def _key(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    # as text, so a missing budget (NaN) of a trial matches the NaN of its cell
    return frame[list(columns)].astype(str).agg("\x1f".join, axis=1)


def _cell_of_trial(trials: pd.DataFrame, groups: pd.DataFrame, grouping: Grouping) -> np.ndarray:
    """Each trial's row in ``groups`` (its cell), by the grouping columns' values."""
    row_of_key = pd.Series(groups.index, index=_key(groups, grouping.columns).to_numpy())
    return _key(with_schedule(trials), grouping.columns).map(row_of_key).to_numpy()


def _colored(grouping: Grouping) -> bool:
    """Whether the optimizer is the color: when it is a grouping column beside others."""
    return COLOR_COLUMN in grouping.columns and len(grouping.columns) > 1


def _series_names(groups: pd.DataFrame, grouping: Grouping) -> pd.Series:
    """Each cell's colored series: its optimizer, or one series of all cells."""
    if _colored(grouping):
        return groups[COLOR_COLUMN].astype(str)
    return pd.Series("cells", index=groups.index)


def _x_label(row: pd.Series) -> str:
    """``+B``, or ``+B budget=800`` when budgets are cell columns too."""
    return " ".join(str(v) if c == SCHEDULE else f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}"
                    for c, v in row.items())


def _x_categories(groups: pd.DataFrame, grouping: Grouping) -> pd.Series:
    """Each cell's x category, the categories in the table's order."""
    labels = groups[_x_columns(grouping)].apply(_x_label, axis=1).astype(str)
    categories = pd.CategoricalDtype(list(dict.fromkeys(labels)), ordered=True)
    return labels.astype(categories)


# ---------------------------------------------------------------- drawing

def _grid(n_panels: int, ncols: int) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.3 * nrows + 0.4), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()


def _panel(ax, values: np.ndarray, cells: np.ndarray, groups: pd.DataFrame, names: pd.Series,
           x: pd.Series, colors: dict, quantity: str) -> None:
    """Per series (optimizer) at its own offset beside each category: the trials' dots,
    then the cell means with their std bars on top.  ``values``: the trials' values of
    ``quantity``; ``cells``: each trial's row in ``groups``."""
    step = min(0.22, 0.66 / len(colors))
    for i, (name, color) in enumerate(colors.items()):
        rows = groups.index[names == name]
        at = x[rows].cat.codes.to_numpy(float) + (i - (len(colors) - 1) / 2) * step
        _trial_dots(ax, [values[cells == row] for row in rows], at, color, spread=step / 4)
        mean = groups.loc[rows, f"{quantity}_mean"].to_numpy(float)
        std = groups.loc[rows, f"{quantity}_std"].to_numpy(float)
        ax.plot(at, mean, marker="o", ms=6.5, ls="none", color=color, mec="white", mew=0.6,
                zorder=3, gid=MEANS_GID, label=name)
        spread = np.isfinite(std)   # a cell of one trial has no sample std: no bar
        if spread.any():
            ax.errorbar(at[spread], mean[spread], yerr=std[spread], fmt="none", ecolor=color,
                        elinewidth=1.3, capsize=3, zorder=2.5)


def _trial_dots(ax, per_cell: Sequence[np.ndarray], at: np.ndarray, color, *, spread: float) -> None:
    """Each cell's trials spread a little across its x, so equal values stay visible."""
    xs, ys = [], []
    for center, own in zip(at, per_cell):
        own = own[np.isfinite(own)]
        xs += list(center + np.linspace(-spread, spread, len(own)) if len(own) > 1 else [center] * len(own))
        ys += list(own)
    ax.plot(xs, ys, marker="o", ms=3.5, ls="none", color=color, alpha=0.4, mew=0, zorder=2, gid=TRIALS_GID)


def _y_axis(ax, values: np.ndarray, *, log: bool) -> None:
    """A measure positive and spanning more than LOG_RATIO on a log axis; short tick
    labels either way (measures run from about 1e-4 to 1e4)."""
    from matplotlib import ticker

    finite = values[np.isfinite(values)]
    if log and wide_positive(finite, LOG_RATIO):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.FixedLocator(log_ticks(float(finite.min()), float(finite.max()))))
    else:
        ax.yaxis.set_major_locator(ticker.MaxNLocator(5))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: compact(value)))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(axis="y", color="0.9", lw=0.6)
    ax.set_axisbelow(True)


def _n_range(n: pd.Series) -> str:
    low, high = int(n.min()), int(n.max())
    if low == high:
        return str(low)
    return f"{low}–{high}" + ("; no bar where n = 1" if low == 1 else "")
