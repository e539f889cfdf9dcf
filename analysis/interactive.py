"""Interactive report figures: functions ``(data, *, options) -> str``, a plotly figure
as JSON, built from the same tables as the matplotlib figures of
:mod:`analysis.figures` and :mod:`analysis.search_figures`.

Every point or line of a trial names the trial's run and MLflow run ID when hovered.
:mod:`analysis.embed` puts them into report.html; report.md keeps the PNGs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import schema
from analysis.figures import group_colors
from analysis.fits import fit_band
from analysis.search_figures import wide_positive
from analysis.ticks import compact, linear_ticks, log_ticks

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

PANEL_HEIGHT = 330
# customdata columns of every trial's point: (run name, run ID)
TRIAL_HOVER = "<b>%{customdata[0]}</b><br>run ID %{customdata[1]}<br>"
BAND = "rgba(0,0,0,0.12)"


def _hex(color) -> str:
    from matplotlib.colors import to_hex

    return to_hex(color)


def _ids(frame: pd.DataFrame) -> list[list[str]]:
    return frame[[schema.RUN_NAME, schema.RUN_ID]].astype(str).to_numpy().tolist()


def _layout(fig, title: str, rows: int, *, height: int | None = None, **extra) -> str:
    height = height or PANEL_HEIGHT * rows + 160
    margin = {"t": 90, "b": 100, "l": 60, "r": 20}
    # the legend goes below the bottom row's axis titles, a fixed number of pixels down
    legend = {"orientation": "h", "y": -70 / (height - margin["t"] - margin["b"]), "yanchor": "top"}
    fig.update_layout(title={"text": title, "x": 0.5}, height=height, template="plotly_white", legend=legend,
                      margin=margin, hoverlabel={"align": "left"})
    fig.update_layout(**extra)
    return fig.to_json()


def _log_axis(values: np.ndarray, *, powers_of_two: bool = False) -> dict:
    """A log axis labelled as the PNGs are (:mod:`analysis.ticks`), not with plotly's
    unlabelled 2…9 minor digits."""
    finite = values[np.isfinite(values) & (values > 0)]
    if finite.size == 0 or finite.min() == finite.max():
        return {"type": "log"}
    low, high = float(finite.min()), float(finite.max())
    if powers_of_two:
        ticks = [2.0 ** k for k in range(math.floor(math.log2(low)), math.ceil(math.log2(high)) + 1)]
    else:
        ticks = log_ticks(low, high)
    return {"type": "log", "tickvals": ticks, "ticktext": [compact(t) for t in ticks]}


def _subplots(n_panels: int, ncols: int, titles: Sequence[str]):
    from plotly.subplots import make_subplots

    ncols = max(1, min(ncols, n_panels))
    rows = math.ceil(n_panels / ncols)
    fig = make_subplots(rows, ncols, subplot_titles=list(titles), horizontal_spacing=0.08,
                        vertical_spacing=min(0.15, 0.5 / rows))
    return fig, rows, ncols


# ---------------------------------------------------------------- measures

def measure_scatter(trials: pd.DataFrame, *, measures: Sequence[str], target: str, labels: pd.Series,
                    fits: pd.DataFrame | None = None, confidence_level: float = 0.95, ncols: int = 3) -> str:
    """``target`` against each measure, one panel per measure, one dot per trial colored
    by group (``labels``, aligned with ``trials``); log x with the OLS fit on
    ln(measure) and its band, as in :func:`analysis.figures.target_vs_measures`."""
    import plotly.graph_objects as go

    titles = [_panel_title(fits, m, target) for m in measures]
    fig, rows, ncols = _subplots(len(measures), ncols, titles)
    colors = {name: _hex(c) for name, c in group_colors(labels).items()}
    shown: set[str] = set()
    for i, measure in enumerate(measures):
        cell = {"row": i // ncols + 1, "col": i % ncols + 1}
        x = pd.to_numeric(trials[measure], errors="coerce").to_numpy(float)
        y = pd.to_numeric(trials[target], errors="coerce").to_numpy(float)
        finite = np.isfinite(x) & np.isfinite(y)
        log = bool(finite.any() and (x[finite] > 0).all())
        for trace in _fit_traces(x[finite], y[finite], log, confidence_level):
            fig.add_trace(trace, **cell)
        group = labels.astype(str).to_numpy()
        hover = TRIAL_HOVER + f"{measure}: %{{x:.4g}}<br>{target}: %{{y:.4g}}<extra>%{{fullData.name}}</extra>"
        for name, color in colors.items():
            mask = finite & (group == name)
            if not mask.any():
                continue
            fig.add_trace(go.Scatter(x=x[mask], y=y[mask], mode="markers", name=name, legendgroup=name,
                                     showlegend=name not in shown, marker={"color": color, "size": 7},
                                     customdata=_ids(trials[mask]), hovertemplate=hover), **cell)
            shown.add(name)
        axis = _log_axis(x[finite]) if log else {"type": "linear"}
        fig.update_xaxes(title_text=measure if log else f"{measure} (linear)", **axis, **cell)
        fig.update_yaxes(title_text=target, **cell)
    title = f"{target} against each measure ({confidence_level:.0%} CI band of the mean)"
    return _layout(fig, title, rows)


def _panel_title(fits: pd.DataFrame | None, measure: str, target: str) -> str:
    row = pd.DataFrame() if fits is None else fits[(fits["measure"] == measure) & (fits["target"] == target)]
    if row.empty or not np.isfinite(row["kendall_tau"].iloc[0]):
        return measure
    r = row.iloc[0]
    return (f"{measure}<br><sup>τ = {r['kendall_tau']:.2f} [{r['kendall_ci_low']:.2f}, "
            f"{r['kendall_ci_high']:.2f}], n = {int(r['n'])}</sup>")


def _fit_traces(x: np.ndarray, y: np.ndarray, log: bool, confidence_level: float) -> list:
    import plotly.graph_objects as go

    if len(x) < schema.MIN_TRIALS or np.ptp(x) == 0:
        return []
    grid = np.geomspace(x.min(), x.max(), 60) if log else np.linspace(x.min(), x.max(), 60)
    band = fit_band(x, y, grid, log=log, confidence_level=confidence_level)
    quiet = {"showlegend": False, "hoverinfo": "skip", "mode": "lines"}
    return [go.Scatter(x=band["x"], y=band["low"], line={"width": 0}, **quiet),
            go.Scatter(x=band["x"], y=band["high"], line={"width": 0}, fill="tonexty", fillcolor=BAND, **quiet),
            go.Scatter(x=band["x"], y=band["mean"], line={"color": "black", "width": 1.5}, **quiet)]


# ---------------------------------------------------------------- training curves

def training_curves(history: pd.DataFrame, *, trials: pd.DataFrame, labels: pd.Series,
                    metrics: Sequence[str] = schema.TRIAL_CURVE_METRICS) -> str | None:
    """Every trial's per-epoch ``metrics`` (long table ``run_id, metric, step, value``),
    one line per trial colored by its group (``labels``, aligned with ``trials``); None
    when no trial logged any of them."""
    import plotly.graph_objects as go

    present = [m for m in metrics if (history["metric"] == m).any()]
    if not present:
        return None
    fig, rows, ncols = _subplots(len(present), 2, present)
    colors = {name: _hex(c) for name, c in group_colors(labels).items()}
    info = trials.assign(**{schema.GROUP: labels.astype(str).to_numpy()}).set_index(schema.RUN_ID)
    shown: set[str] = set()
    for i, metric in enumerate(present):
        cell = {"row": i // ncols + 1, "col": i % ncols + 1}
        curves = history[history["metric"] == metric]
        hover = TRIAL_HOVER + f"epoch %{{x}}<br>{metric}: %{{y:.4g}}<extra>%{{fullData.name}}</extra>"
        for run_id, run in curves.groupby(schema.RUN_ID, sort=False):
            if run_id not in info.index:
                continue
            run = run.sort_values("step")
            group, name = info.at[run_id, schema.GROUP], str(info.at[run_id, schema.RUN_NAME])
            fig.add_trace(go.Scatter(x=run["step"].to_numpy(), y=run["value"].to_numpy(float), mode="lines+markers",
                                     name=group, legendgroup=group, showlegend=group not in shown,
                                     line={"color": colors.get(group, "black"), "width": 1.2},
                                     marker={"size": 4}, opacity=0.8, customdata=[[name, run_id]] * len(run),
                                     hovertemplate=hover), **cell)
            shown.add(group)
        values = curves["value"].to_numpy(float)
        if metric == "batch_size" and len(values) and values.min() > 0 and values.max() / values.min() >= 4:
            fig.update_yaxes(**_log_axis(values, powers_of_two=True), **cell)
        fig.update_xaxes(title_text="epoch", **cell)
    return _layout(fig, "Per-epoch curves, one line per trial (colored by group)", rows)


# ---------------------------------------------------------------- the search

def parallel_coordinates(trials: pd.DataFrame, dists: Mapping[str, BaseDistribution],
                         metrics: Sequence[str], modes: Sequence[str]) -> str:
    """One line per trial over the searched keys then the objective's metrics, colored by
    the first metric (the best yellow and drawn last, as in the PNG); dragging along an
    axis filters the trials."""
    import plotly.graph_objects as go

    color = pd.to_numeric(trials[metrics[0]], errors="coerce").to_numpy(float)
    order = np.argsort(-color if modes[0] == "min" else color, kind="stable")
    trials, color = trials.iloc[order], color[order]
    dimensions = [_dimension(trials[key], key, dists[key]) for key in dists]
    dimensions += [_dimension(trials[m], f"{m} ({mode})", None) for m, mode in zip(metrics, modes)]
    line = {"color": color, "colorscale": "Viridis", "reversescale": modes[0] == "min", "showscale": True,
            "colorbar": {"title": {"text": f"{metrics[0]} ({modes[0]})", "side": "right"}}}
    crowded = len(dimensions) > 6
    fig = go.Figure(go.Parcoords(line=line, dimensions=dimensions, labelangle=-20 if crowded else 0,
                                 labelside="top"))
    return _layout(fig, "Comparable trials over the searched keys and the objective (drag along an axis to filter)",
                   1, height=PANEL_HEIGHT + 200, margin={"t": 170 if crowded else 130, "b": 40, "l": 70, "r": 40})


def _dimension(values: pd.Series, label: str, dist: BaseDistribution | None) -> dict:
    """A categorical key at integer positions labelled with its choices; a log-scaled key
    as log10, labelled with round values; a number as it is."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        index = {c: i for i, c in enumerate(dist.choices)}
        mapped = values.map(lambda v: index.get(v, np.nan) if pd.notna(v) else np.nan).to_numpy(float)
        return {"label": label, "values": mapped, "tickvals": list(range(len(index))),
                "ticktext": [str(c) for c in dist.choices], "range": [0, max(len(index) - 1, 1)]}
    x = pd.to_numeric(values, errors="coerce").to_numpy(float)
    low, high = float(np.nanmin(x)), float(np.nanmax(x))
    if low == high:
        return {"label": label, "values": x}
    # round ticks in place of plotly's unrounded range ends (0.0018549)
    if getattr(dist, "log", False) if dist is not None else wide_positive(x):
        ticks = log_ticks(low, high)
        return {"label": f"{label} (log)", "values": np.log10(x), "tickvals": np.log10(ticks).tolist(),
                "ticktext": [compact(t) for t in ticks], "range": [math.log10(low), math.log10(high)]}
    ticks = linear_ticks(low, high)
    return {"label": label, "values": x, "tickvals": ticks, "ticktext": [compact(t) for t in ticks],
            "range": [low, high]}


def pareto_front(frame: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> str:
    """The two objective metrics of every trial (column ``pareto`` flags the front): the
    front in red joined in order of the first metric, the dominated trials in grey."""
    import plotly.graph_objects as go

    x_name, y_name = metrics[:2]
    front = frame[frame["pareto"]].sort_values([x_name, y_name])
    rest = frame[~frame["pareto"]]
    hover = TRIAL_HOVER + f"{x_name}: %{{x:.4g}}<br>{y_name}: %{{y:.4g}}<extra>%{{fullData.name}}</extra>"
    fig = go.Figure([
        go.Scatter(x=rest[x_name], y=rest[y_name], mode="markers", name="dominated",
                   marker={"color": "#999999", "size": 8}, customdata=_ids(rest), hovertemplate=hover),
        go.Scatter(x=front[x_name], y=front[y_name], mode="lines+markers", name="non-dominated",
                   marker={"color": "#d62728", "size": 9}, line={"color": "#d62728"},
                   customdata=_ids(front), hovertemplate=hover)])
    for axis, name, mode in (("x", x_name, modes[0]), ("y", y_name, modes[1])):
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(float)
        scale = _log_axis(values) if wide_positive(values) else {"type": "linear"}
        getattr(fig, f"update_{axis}axes")(title_text=f"{name} ({mode})", **scale)
    return _layout(fig, f"Pareto front: {len(front)} of {len(frame)} trials non-dominated", 1,
                   height=PANEL_HEIGHT + 200)
