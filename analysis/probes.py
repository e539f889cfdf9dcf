"""The theory probes of Harada & Iiduka (trial key ``probes``): per epoch, the squared
norm of the full-batch SAM/GSAM direction ``probe_sam_grad_sq`` (the quantity their
bound drives to ε) and the mean squared deviation of the mini-batch direction from
it, ``probe_direction_msd`` (the search-direction noise, bounded by σ²/b), drawn
against the epoch, the epoch's batch size and its learning rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import schema, search_figures
from analysis.load import load_histories
from analysis.render import FigureRef, Section

GRAD, MSD = schema.PROBE_METRICS
TITLE, PNG = "Theory probes", "figures/theory_probes.png"
SCHEDULE = ("batch_size", "lr")


def probe_table(history: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, epoch) of the runs that logged a probe: ``run_id, step``, the
    probes and the epoch's batch size and learning rate."""
    wide = history.pivot_table(index=[schema.RUN_ID, "step"], columns="metric", values="value",
                               aggfunc="last").reset_index().rename_axis(columns=None)
    probes = [m for m in schema.PROBE_METRICS if m in wide]
    if not probes:
        return pd.DataFrame(columns=[schema.RUN_ID, "step", *schema.PROBE_METRICS, *SCHEDULE])
    with_probe = wide.loc[wide[probes].notna().any(axis=1), schema.RUN_ID].unique()
    return wide[wide[schema.RUN_ID].isin(with_probe)].reset_index(drop=True)


def batch_slope(run: pd.DataFrame) -> float:
    """OLS slope of ln(direction msd) on ln(batch size) over one trial's epochs (NaN when
    the batch size never changes): the σ²/b bound predicts about −1."""
    data = run[[MSD, "batch_size"]].apply(pd.to_numeric, errors="coerce").dropna() if "batch_size" in run \
        else pd.DataFrame()
    data = data[(data[MSD] > 0) & (data["batch_size"] > 0)] if not data.empty else data
    if data.empty or data["batch_size"].nunique() < 2:
        return float("nan")
    return float(np.polyfit(np.log(data["batch_size"]), np.log(data[MSD]), 1)[0])


def trials_listing(wide: pd.DataFrame, usable: pd.DataFrame) -> pd.DataFrame:
    """One row per trial with probes: its group, epochs probed, last and smallest values."""
    info = usable.set_index(schema.RUN_ID)
    rows = []
    for run_id, run in wide.groupby(schema.RUN_ID, sort=False):
        run = run.sort_values("step")
        row = {"trial": info.at[run_id, schema.TRIAL_ID], "group": info[schema.GROUP].get(run_id, ""),
               "epochs probed": int(run[[m for m in schema.PROBE_METRICS if m in run]].notna().any(axis=1).sum())}
        for metric in (m for m in schema.PROBE_METRICS if m in run):
            values = run[metric].dropna()
            row[f"last {metric}"] = values.iloc[-1] if len(values) else np.nan
            row[f"min {metric}"] = values.min() if len(values) else np.nan
        if MSD in run:
            row["slope ln msd / ln batch"] = batch_slope(run)
        rows.append(row)
    return pd.DataFrame(rows)


def probes_section(usable: pd.DataFrame, history: pd.DataFrame, *, tracking_uri: str | None, out: Path,
                   save) -> Section:
    """The probes section over the comparable trials; ``history`` already holds their batch
    size and learning rate per epoch (the probes are fetched here).  One line when no
    trial logged probes."""
    probes = load_histories(tracking_uri, usable[schema.RUN_ID].tolist(), schema.PROBE_METRICS)
    if probes.empty:
        return Section(TITLE, ("No comparable trial logged the theory probes (trial key probes off).",))
    schedule = history[history["metric"].isin(SCHEDULE)]
    wide = probe_table(pd.concat([probes, schedule], ignore_index=True))
    labels = pd.Series(usable[schema.GROUP].astype(str).to_numpy(), index=usable[schema.RUN_ID])
    save(search_figures.probe_curves(wide, labels=labels, grad=GRAD, msd=MSD), out / PNG)
    listing = trials_listing(wide, usable)
    text = (f"{len(listing)} of {len(usable)} comparable trials logged the probes on their fixed probe set: "
            f"{GRAD}, the squared norm of the full-batch SAM/GSAM direction (the theory bounds its minimum over "
            f"epochs), and {MSD}, the mean squared deviation of the mini-batch direction from it at the epoch's "
            "batch size (the search-direction noise, which the theory bounds by σ²/b, so it should fall as the "
            "batch grows). Slope: OLS of ln msd on ln batch size over a trial's epochs (about −1 under σ²/b, "
            "though the weights change across those epochs too; — when the batch size is constant).",)
    caption = f"{GRAD} and {MSD} against the epoch, {MSD} against batch size and learning rate (log y)"
    return Section(TITLE, text, table=listing, figures=(FigureRef(caption, PNG),))
