"""Report figures: functions ``(data, *, options) -> Figure``.

They build a ``matplotlib.figure.Figure`` directly (no pyplot, so no global state
and no GUI backend) and never save or show it: the caller does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import schema
from analysis.fits import fit_band
from analysis.ticks import legible_x


def group_colors(labels: pd.Series) -> dict[str, tuple]:
    """A stable color per group label (tab10, or tab20 beyond ten groups)."""
    from matplotlib import colormaps

    names = list(dict.fromkeys(labels.astype(str)))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _grid(n_panels: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def target_vs_measures(trials: pd.DataFrame, *, measures: Sequence[str], target: str,
                       labels: pd.Series, fits: pd.DataFrame | None = None,
                       confidence_level: float = 0.95, ncols: int = 3) -> Figure:
    """Target against each measure: one dot per trial colored by group, log x axis
    with the OLS fit on ln(measure) and its confidence band (linear axis and fit for
    measures with non-positive values)."""
    fig, axes = _grid(len(measures), ncols, (4.2, 3.4))
    colors = group_colors(labels)
    for ax, measure in zip(axes, measures):
        _scatter_with_fit(ax, trials, measure, target, labels, colors, confidence_level)
        if fits is not None:
            _annotate(ax, fits, measure, target)
    handles = [ax.scatter([], [], color=c, label=name) for name, c in colors.items()] if axes else []
    if handles and len(colors) > 1:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(colors), 5),
                   fontsize="small", frameon=False)
    fig.suptitle(f"{target} against each measure ({confidence_level:.0%} CI band of the mean)")
    return fig


def _scatter_with_fit(ax, trials, measure, target, labels, colors, confidence_level) -> None:
    finite = np.isfinite(trials[measure].astype(float)) & np.isfinite(trials[target].astype(float))
    data, group = trials[finite], labels[finite].astype(str)
    x, y = data[measure].to_numpy(float), data[target].to_numpy(float)
    for name, color in colors.items():
        mask = (group == name).to_numpy()
        if mask.any():
            ax.scatter(x[mask], y[mask], s=22, color=color, alpha=0.85, edgecolors="none")
    log = bool(len(x) and (x > 0).all())
    legible_x(ax, x, log=log)
    ax.set_xlabel(measure if log else f"{measure} (linear: values ≤ 0)")
    ax.set_ylabel(target)
    if len(x) >= schema.MIN_TRIALS and np.ptp(x) > 0:
        grid = np.geomspace(x.min(), x.max(), 60) if log else np.linspace(x.min(), x.max(), 60)
        band = fit_band(x, y, grid, log=log, confidence_level=confidence_level)
        ax.plot(band["x"], band["mean"], color="black", lw=1.2)
        ax.fill_between(band["x"], band["low"], band["high"], color="black", alpha=0.12, lw=0)


def _annotate(ax, fits: pd.DataFrame, measure: str, target: str) -> None:
    row = fits[(fits["measure"] == measure) & (fits["target"] == target)]
    if row.empty or not np.isfinite(row["kendall_tau"].iloc[0]):
        return
    r = row.iloc[0]
    ax.set_title(f"τ = {r['kendall_tau']:.2f} [{r['kendall_ci_low']:.2f}, {r['kendall_ci_high']:.2f}], "
                 f"n = {int(r['n'])}", fontsize="small")


def measure_ranking(fits: pd.DataFrame, *, target: str) -> Figure:
    """Measures ranked by |Kendall τ| with bootstrap CIs, beside the granulated Ψ."""
    rows = fits[(fits["target"] == target) & np.isfinite(fits["kendall_tau"].astype(float))]
    rows = rows.assign(order=rows["kendall_tau"].abs()).sort_values("order")
    fig = Figure(figsize=(9.5, 0.45 * max(len(rows), 2) + 1.4), layout="constrained")
    ax_tau, ax_psi = fig.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    positions = np.arange(len(rows))
    tau = rows["kendall_tau"].to_numpy(float)
    # drawn as segments, not error bars: a BCa interval need not contain the estimate
    low, high = rows["kendall_ci_low"].to_numpy(float), rows["kendall_ci_high"].to_numpy(float)
    shown = np.isfinite(low) & np.isfinite(high)
    ax_tau.hlines(positions[shown], low[shown], high[shown], color="tab:blue", lw=1.2)
    for edge in (low, high):
        ax_tau.plot(edge[shown], positions[shown], "|", color="tab:blue", ms=8)
    ax_tau.plot(tau, positions, "o", color="tab:blue")
    ax_tau.axvline(0.0, color="grey", lw=0.8)
    ax_tau.set_yticks(positions, rows["measure"])
    ax_tau.set_xlim(-1.05, 1.05)
    ax_tau.set_xlabel("Kendall τ (bootstrap CI)")
    psi = rows["granulated_psi"].to_numpy(float)
    ax_psi.barh(positions, np.nan_to_num(psi), color="tab:orange")
    for pos, value in zip(positions, psi):
        if not np.isfinite(value):
            ax_psi.text(0.0, pos, " n/a (no one-axis pairs)", va="center", fontsize="small", color="grey")
    ax_psi.axvline(0.0, color="grey", lw=0.8)
    ax_psi.set_xlim(-1.05, 1.05)
    ax_psi.set_xlabel("granulated Kendall Ψ")
    fig.suptitle(f"Measures ranked by |τ| with {target}")
    return fig


def training_curves(history: pd.DataFrame, *, labels: pd.Series,
                    metrics: Sequence[str] = schema.CURVE_METRICS) -> Figure:
    """Per-epoch ``metrics`` (long table ``run_id, metric, step, value``): mean over the
    trials of each group, shaded ± one standard deviation. ``labels`` maps run_id → group."""
    fig, axes = _grid(len(metrics), len(metrics), (4.2, 3.2))
    colors = group_colors(labels)
    data = history.assign(group=history[schema.RUN_ID].map(labels).astype(str))
    for ax, metric in zip(axes, metrics):
        curves = data[data["metric"] == metric]
        for name, color in colors.items():
            per_step = curves[curves["group"] == name].groupby("step")["value"].agg(["mean", "std"])
            if per_step.empty:
                continue
            steps = per_step.index.to_numpy(float)
            ax.plot(steps, per_step["mean"], color=color, lw=1.4, label=name)
            spread = per_step["std"].fillna(0.0)
            ax.fill_between(steps, per_step["mean"] - spread, per_step["mean"] + spread,
                            color=color, alpha=0.15, lw=0)
        values = curves["value"].astype(float)
        if metric == "batch_size" and len(values) and values.min() > 0 and values.max() / values.min() >= 4:
            ax.set_yscale("log", base=2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
    if len(colors) > 1 and axes:
        handles = [axes[0].plot([], [], color=c, label=name)[0] for name, c in colors.items()]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(colors), 5),
                   fontsize="small", frameon=False)
    fig.suptitle("Per-epoch curves by group (mean ± std over trials)")
    return fig
