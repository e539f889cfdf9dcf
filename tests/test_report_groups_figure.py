"""The Groups section's figure, figures/groups.png: the group table as a picture.

On a small trials frame built here (no MLflow, no Ray) the figure is read back from its
Axes: one panel per quantity, the cell means the table's, every trial a dot, the y scale
chosen per measure.  Two small MLflow stores then show the report placing it in the
Groups section, and leaving it out when all trials are one group.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from mlflow_trials import log_completed_trial

from analysis.group_figure import MAX_PANELS, MEANS_GID, PNG, TRIALS_GID, caption, groups_figure
from analysis.tables import Grouping, choose_grouping, group_table, with_schedule

TARGET = "final_test_error"
# the order the table (and so the figure) puts them in
OPTIMIZERS, SCHEDULES = ["sgd", "sam"], ["constant", "+B", "+C"]
SCHEDULE_PARAMS = {"constant": (1.0, "constant"), "+B": (2.0, "constant"), "+C": (1.0, "cosine")}
# trials per (optimizer, schedule): sam +C has one, so no spread and no bar
TRIALS_PER_CELL = {("sgd", "constant"): 3, ("sgd", "+B"): 3, ("sgd", "+C"): 2,
                   ("sam", "constant"): 2, ("sam", "+B"): 3, ("sam", "+C"): 1}
WIDE, NARROW, SIGNED = "sharpness_wide", "sharpness_narrow", "norm_signed"
# seven measures: the first five get a panel, the last two are left to the table
MEASURES = [WIDE, NARROW, SIGNED, "sharpness_d", "sharpness_e", "sharpness_f", "sharpness_g"]


def _trials(rng) -> pd.DataFrame:
    rows = []
    for (optimizer, schedule), n in TRIALS_PER_CELL.items():
        ratio, shape = SCHEDULE_PARAMS[schedule]
        for seed in range(n):
            rows.append({"optimizer": optimizer, "batch_growth_ratio": ratio, "lr_shape": shape, "seed": seed,
                         TARGET: rng.uniform(0.1, 0.3),
                         WIDE: 10 ** rng.uniform(-3, 1),          # positive, spans 10^4
                         NARROW: rng.uniform(1.0, 1.5),          # positive, within 10×
                         SIGNED: rng.uniform(-50.0, 50.0),      # wide, but not positive
                         **{m: rng.uniform(1.0, 2.0) for m in MEASURES[3:]}})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)  # not in table order


class Drawn(NamedTuple):
    trials: pd.DataFrame
    grouping: Grouping
    groups: pd.DataFrame     # the group table
    fig: Figure
    panels: dict[str, Axes]  # the visible panels by title


@pytest.fixture(scope="module")
def drawn() -> Drawn:
    trials = _trials(np.random.default_rng(3))
    grouping = choose_grouping(trials, [])
    groups = group_table(trials, grouping, values=[TARGET, *MEASURES])
    fig = groups_figure(trials, groups=groups, grouping=grouping, target=TARGET, measures=MEASURES)
    return Drawn(trials, grouping, groups, fig, {ax.get_title(): ax for ax in fig.axes if ax.get_visible()})


def _lines(ax, gid: str) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines() if line.get_gid() == gid}


def _by_color(ax, gid: str) -> dict[tuple, object]:
    return {tuple(line.get_color()): line for line in ax.get_lines() if line.get_gid() == gid}


def test_one_panel_for_the_target_then_each_measure_up_to_six(drawn):
    groups, fig, panels = drawn.groups, drawn.fig, drawn.panels
    assert list(groups[["optimizer", "schedule"]].itertuples(index=False, name=None)) == list(TRIALS_PER_CELL)
    assert list(panels) == [TARGET, *MEASURES[:MAX_PANELS - 1]]
    for ax in panels.values():
        assert [t.get_text() for t in ax.get_xticklabels()] == SCHEDULES
    assert [t.get_text() for t in fig.legends[0].get_texts()] == OPTIMIZERS
    # honest about the cells' sizes: they differ, and one has no spread
    assert "mean ± std over trials per cell (n per cell: 1–3; no bar where n = 1)" in fig._suptitle.get_text()
    text = caption(TARGET, MEASURES, drawn.grouping)
    assert "the first 5 measures per schedule, one color per optimizer" in text
    assert "Not drawn: sharpness_f, sharpness_g; see the table above and groups.csv" in text
    assert "Not drawn" not in caption(TARGET, MEASURES[:5], drawn.grouping)


def test_cell_means_are_the_group_tables(drawn):
    groups, panels = drawn.groups, drawn.panels
    for quantity, ax in panels.items():
        means = _lines(ax, MEANS_GID)
        assert list(means) == OPTIMIZERS
        for optimizer, line in means.items():
            rows = groups[groups["optimizer"] == optimizer]
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            # each mean sits beside its schedule's tick, the optimizers side by side
            assert [SCHEDULES[int(round(v))] for v in x] == rows["schedule"].tolist()
            assert np.all(np.abs(x - np.round(x)) < 0.4)
            assert y == pytest.approx(rows[f"{quantity}_mean"].to_numpy(float))


def test_error_bars_are_one_sample_std_and_absent_for_a_single_trial(drawn):
    groups, panels = drawn.groups, drawn.panels
    ax = panels[TARGET]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(OPTIMIZERS)
    segments = [seg for bar in bars for seg in bar.lines[2][0].get_segments()]
    replicated = groups[groups["n"] > 1]
    assert len(segments) == len(replicated) == len(groups) - 1
    half_widths = sorted((seg[1, 1] - seg[0, 1]) / 2 for seg in segments)
    assert half_widths == pytest.approx(sorted(replicated[f"{TARGET}_std"]))


def test_every_trial_is_a_dot_of_its_optimizers_color(drawn):
    trials, panels = drawn.trials, drawn.panels
    for quantity, ax in panels.items():
        means, dots = _by_color(ax, MEANS_GID), _by_color(ax, TRIALS_GID)
        assert set(dots) == set(means)
        for color, line in dots.items():
            optimizer = means[color].get_label()
            own = trials.loc[trials["optimizer"] == optimizer, quantity].to_numpy(float)
            assert sorted(line.get_ydata()) == pytest.approx(sorted(own))
            # near its cell's mean: the dot's schedule is the tick it sits beside
            labels = with_schedule(trials[trials["optimizer"] == optimizer])["schedule"]
            at = [SCHEDULES[int(round(v))] for v in line.get_xdata()]
            assert sorted(at) == sorted(labels)


def test_log_axis_only_for_a_wide_positive_measure(drawn):
    trials, panels = drawn.trials, drawn.panels
    assert trials[SIGNED].min() < 0 < trials[SIGNED].max()
    scales = {quantity: ax.get_yscale() for quantity, ax in panels.items()}
    assert scales[WIDE] == "log"
    assert {q for q, s in scales.items() if s != "linear"} == {WIDE}   # narrow, signed and the target


# ---------------------------------------------------------------- in the report


def _experiment(client, root, name, cells):
    """One search of ``cells``: (optimizer, batch_growth_ratio, rho, seed) per trial."""
    experiment_id = client.create_experiment(name, artifact_location=(root / name).as_uri())
    parent = client.create_run(experiment_id, run_name="search", tags={"samtune.kind": "search"}).info.run_id
    rng = np.random.default_rng(1)
    for i, (optimizer, ratio, rho, seed) in enumerate(cells):
        params = {"dataset": "digits", "model": "small_cnn", "epochs": "3", "optimizer": optimizer,
                  "batch_size": "16", "batch_growth_ratio": ratio, "lr_shape": "constant", "lr": "0.05",
                  "rho": rho, "seed": seed}
        final = {TARGET: rng.uniform(0.1, 0.3), "final_train_error": 0.05, "final_train_loss": rng.uniform(0.01, 0.1),
                 "sharpness_planted": rng.uniform(1, 5)}
        log_completed_trial(client, experiment_id, parent, f"t{i}", params, final)
    client.set_terminated(parent, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_in):
    root = tmp_path_factory.mktemp("groups-figure")
    uri = store_in(root)
    client = MlflowClient(uri)
    _experiment(client, root, "paper-grid", [(o, r, 0.05, s) for o in ("sgd", "sam") for r in (1.0, 2.0)
                                             for s in (0, 1)])
    # rho differs in every trial, nothing else does: one group of all trials
    _experiment(client, root, "one-group", [("sam", 1.0, rho, 0) for rho in (0.01, 0.05, 0.2, 0.5)])
    return uri


def _section(markdown: str, title: str) -> str:
    return re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", markdown, re.S | re.M).group(1)


def test_the_report_draws_the_figure_after_the_group_table(store, tmp_path):
    from analysis import build_report

    out = tmp_path / "report"
    result = build_report("paper-grid", tracking_uri=store, out_dir=out, n_resamples=9, log_to_mlflow=False)
    assert (out / PNG).read_bytes().startswith(b"\x89PNG") and out / PNG in result.figures
    groups = _section((out / "report.md").read_text(), "Groups")
    reference = re.search(rf"!\[([^]]*)\]\({PNG}\)", groups)
    assert reference.group(1).startswith(f"The group table as a picture: {TARGET} and each measure per "
                                         "schedule, one color per optimizer")
    assert groups.index("| optimizer | schedule |") < reference.start()   # after the table
    assert PNG not in (out / "report.md").read_text().replace(groups, "")


def test_no_figure_for_a_single_group(store, tmp_path):
    from analysis import build_report

    out = tmp_path / "report"
    result = build_report("one-group", tracking_uri=store, out_dir=out, n_resamples=9, log_to_mlflow=False)
    groups = _section((out / "report.md").read_text(), "Groups")
    assert "| all trials | 4 |" in groups
    assert not (out / PNG).exists() and out / PNG not in result.figures and "![" not in groups
