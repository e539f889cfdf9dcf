"""report.html's interactive figures (plotly), on generated trial tables: one plotly div
per interactive figure, hover text naming each trial's run, plotly.js written once
beside the report, report.md still on the PNGs; and legible tick labels on the
matplotlib measure panels."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis import embed, figures, interactive, schema
from analysis.render import Document, FigureRef, Section
from analysis.report import write_documents
from analysis.search_spec import Objective
from analysis.search_view import pareto_frame

N = 8
MEASURE, TARGET = "sharpness_avg_l2", "final_test_error"
OBJECTIVE = Objective((TARGET, MEASURE), ("min", "max"))
EPOCHS = 4


def _trials(low: float = 1e-4, high: float = 3e-3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = np.geomspace(low, high, N) if low > 0 else np.linspace(low, high, N)
    names = [f"trial-{i}" for i in range(N - 1)] + ["odd</script>name"]
    return pd.DataFrame({
        schema.RUN_ID: [f"{i:02d}" + "ab" * 15 for i in range(N)],
        schema.RUN_NAME: names,
        schema.TRIAL_ID: [f"t{i}" for i in range(N)],
        "rho": np.geomspace(0.01, 1.0, N),
        "lr_shape": ["constant", "cosine"] * (N // 2),
        MEASURE: x,
        "norm_param_l2": rng.uniform(10, 20, N),
        TARGET: 0.3 + 0.02 * np.log(np.abs(x) + 1e-5) + rng.normal(0, 0.005, N),
        schema.GROUP: ["constant", "cosine"] * (N // 2),
    })


def _history(trials: pd.DataFrame) -> pd.DataFrame:
    rows = [(run_id, metric, epoch, value / epoch)
            for run_id in trials[schema.RUN_ID] for epoch in range(1, EPOCHS + 1)
            for metric, value in (("test_error", 0.5), ("train_error", 0.4), ("lr", 0.1))]
    rows += [(run_id, "batch_size", epoch, 16.0 * 2 ** epoch)
             for run_id in trials[schema.RUN_ID] for epoch in range(1, EPOCHS + 1)]
    return pd.DataFrame(rows, columns=[schema.RUN_ID, "metric", "step", "value"])


def _scatter(trials: pd.DataFrame) -> dict:
    return json.loads(interactive.measure_scatter(trials, measures=[MEASURE, "norm_param_l2"], target=TARGET,
                                                  labels=trials[schema.GROUP]))


def _hovered(figure: dict) -> set[tuple[str, str]]:
    return {tuple(point) for trace in figure["data"] if "customdata" in trace for point in trace["customdata"]}


def _ids(trials: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(trials[schema.RUN_NAME], trials[schema.RUN_ID]))


def test_scatter_hover_names_each_trial_run_and_its_values():
    trials = _trials()
    figure = _scatter(trials)
    points = [t for t in figure["data"] if t.get("mode") == "markers"]
    assert len(points) == 2 * 2           # two groups in each of two panels
    for trace in points:
        template = trace["hovertemplate"]
        assert "%{customdata[0]}" in template and "run ID %{customdata[1]}" in template
        assert "%{x" in template and "%{y" in template
    assert _hovered(figure) == _ids(trials)
    axes = {k: v for k, v in figure["layout"].items() if k.startswith("xaxis")}
    assert {a["title"]["text"]: a.get("type") for a in axes.values()} == {MEASURE: "log", "norm_param_l2": "log"}


def test_curves_parallel_and_pareto_figures():
    trials = _trials()
    curves = json.loads(interactive.training_curves(_history(trials), trials=trials, labels=trials[schema.GROUP]))
    titles = [a["text"] for a in curves["layout"]["annotations"]]
    assert titles == list(schema.TRIAL_CURVE_METRICS)
    assert len(curves["data"]) == N * len(titles) and _hovered(curves) == _ids(trials)
    assert interactive.training_curves(_history(trials).iloc[:0], trials=trials, labels=trials[schema.GROUP]) is None

    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dists = {"rho": FloatDistribution(0.01, 1.0, log=True), "lr_shape": CategoricalDistribution(["constant", "cosine"])}
    parallel = json.loads(interactive.parallel_coordinates(trials, dists, OBJECTIVE.metrics, OBJECTIVE.modes))
    dimensions = parallel["data"][0]["dimensions"]
    assert [d["label"] for d in dimensions] == ["rho (log)", "lr_shape", f"{TARGET} (min)", f"{MEASURE} (max)"]
    assert dimensions[1]["ticktext"] == ["constant", "cosine"]

    frame = pareto_frame(trials, OBJECTIVE, ["rho"])
    pareto = json.loads(interactive.pareto_front(frame, OBJECTIVE.metrics, OBJECTIVE.modes))
    front = {trace["name"]: {tuple(p) for p in trace["customdata"]} for trace in pareto["data"]}
    assert front["non-dominated"] == _ids(frame[frame["pareto"]]) and _hovered(pareto) == _ids(trials)


def _document(out, trials: pd.DataFrame) -> tuple[Document, int]:
    (out / "figures").mkdir(parents=True)
    png = Figure(figsize=(1, 1))
    plots = {"scatter": interactive.measure_scatter(trials, measures=[MEASURE], target=TARGET,
                                                    labels=trials[schema.GROUP]),
             "curves": interactive.training_curves(_history(trials), trials=trials, labels=trials[schema.GROUP]),
             "ranking": None}
    refs = []
    for name, plot in plots.items():
        png.savefig(out / "figures" / f"{name}.png", format="png")
        refs.append(FigureRef(f"the {name}", f"figures/{name}.png", plot=plot))
    sections = (Section("Figures", ("text",), figures=tuple(refs[:2])), Section("More", figures=tuple(refs[2:])))
    return Document("report", ("summary",), sections), sum(p is not None for p in plots.values())


def test_report_html_draws_each_interactive_figure_with_plotly_js_once(tmp_path):
    trials = _trials()
    document, n_plots = _document(tmp_path, trials)
    written = write_documents(tmp_path, document)
    assert [p.name for p in written] == ["report.html", "report.md", embed.PLOTLY_JS]
    page = (tmp_path / "report.html").read_text()
    assert len(re.findall(r'<div class="plotly-graph-div" id="([^"]+)"', page)) == n_plots
    blocks = re.findall(r'<script type="application/json" data-plot="([^"]+)">(.*?)</script>', page, flags=re.S)
    assert len(blocks) == n_plots
    # every PNG stays: shown until plotly.js draws, and where it does not
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 3
    scatter = json.loads(blocks[0][1])
    assert _hovered(scatter) == _ids(trials)
    assert "odd</script>name" not in page     # a run name cannot end its JSON block

    assert re.findall(r"<script [^>]*src=\"([^\"]*)\"", page) == [embed.PLOTLY_JS]
    assert [p.name for p in tmp_path.rglob("*.js")] == [embed.PLOTLY_JS]
    script = (tmp_path / embed.PLOTLY_JS).read_text()
    assert len(script) > 1_000_000 and script[:2000] not in page and "cdn" not in page.lower()

    markdown = (tmp_path / "report.md").read_text()
    for name in ("scatter", "curves", "ranking"):
        assert f"](figures/{name}.png)" in markdown
    assert "plotly" not in markdown


def test_report_without_interactive_figures_has_no_scripts(tmp_path):
    (tmp_path / "figures").mkdir()
    Figure(figsize=(1, 1)).savefig(tmp_path / "figures" / "a.png", format="png")
    document = Document("report", ("summary",), (Section("A", figures=(FigureRef("a", "figures/a.png"),)),))
    assert [p.name for p in write_documents(tmp_path, document)] == ["report.html", "report.md"]
    assert "<script" not in (tmp_path / "report.html").read_text()


def _tick_labels(fig: Figure) -> dict[str, list]:
    """Per panel (its x label), the bounding boxes of the x tick labels drawn inside it."""
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = {}
    for ax in fig.axes:
        low, high = sorted(ax.get_xlim())
        labels = [label for tick, label in zip(ax.get_xticks(), ax.get_xticklabels())
                  if low <= tick <= high and label.get_visible() and label.get_text()]
        found[ax.get_xlabel()] = [(label.get_text(), label.get_window_extent(renderer)) for label in labels]
    return found


@pytest.mark.parametrize("low, high", [(1e-4, 3e-3), (1.1e-3, 1.4e-3), (2e-4, 9e-4), (1e-4, 1e-2), (-1e-4, 3e-3)])
def test_measure_panel_x_tick_labels_do_not_overlap(low, high):
    trials = _trials(low, high)
    fig = figures.target_vs_measures(trials, measures=[MEASURE, "norm_param_l2", MEASURE], target=TARGET,
                                     labels=trials[schema.GROUP])
    for panel, labels in _tick_labels(fig).items():
        assert len(labels) >= 2, (panel, labels)
        boxes = [box for _, box in labels]
        clashes = [(labels[i][0], labels[j][0]) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                   if boxes[i].overlaps(boxes[j])]
        assert not clashes, (panel, clashes)
