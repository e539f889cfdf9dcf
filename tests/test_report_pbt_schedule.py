"""The report's section on the schedules a population-based search found, on small
MLflow stores recorded here (no Ray): each trial's schedule.csv written by samtune's own
writer (samtune.trial.lineage.schedule_csv) from segments chosen by hand.

A PBT search (the bundled gsam_pbt_schedule spec) of six trials: t0 has the lowest test
error and a four-segment schedule whose epoch ranges are worked out below; t5 has no
schedule.csv.  A grid search and an Optuna search of three trials each get no section.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow_trials import log_completed_trial

from analysis import schema, search_figures
from analysis.pbt import PNG, TITLE, evolved_keys, schedule_ranges
from analysis.search_spec import parse_scheduler
from samtune.trial.lineage import schedule_csv, segment

EPOCHS = 8
PBT, GRID, OPTUNA, UNSPECIFIED = "pbt-population", "grid-search", "optuna-search", "no-spec-population"
PBT_SPEC = (Path(__file__).parents[1] / "search_spaces" / "gsam_pbt_schedule.yaml").read_text()
GRID_SPEC = "name: grid-search\ngrid:\n  rho: [0.01, 0.05, 0.1]\nobjective: {metric: final_test_error, mode: min}\n"
OPTUNA_SPEC = ("name: optuna-search\nsearch:\n  rho: {loguniform: [0.01, 0.5]}\n"
               "objective: {metric: final_test_error, mode: min}\n")
FIXED = {"weight_decay": 5e-4, "momentum": 0.9}


def _values(rho, alpha, lr, batch_size):
    return {"rho": rho, "alpha": alpha, "lr": lr, "batch_size": batch_size, **FIXED}


V1, V2, V3 = _values(0.05, 0.1, 0.05, 32), _values(0.06, 0.1, 0.05, 64), _values(0.06, 0.1, 0.02, 64)
# each trial's segments (first epoch - 1, trial that trained, values), and its test error
POPULATION = {
    # the best: epochs 1-2 inherited from t3, 3-4 from t1 (cloned with V2), then its own
    "t0": ([(0, "t3", V1), (2, "t1", V2), (4, "t0", V2), (6, "t0", V3)], 0.10),
    "t1": ([(0, "t1", V2)], 0.14),
    "t2": ([(0, "t2", _values(0.2, 0.3, 0.1, 16)), (4, "t2", _values(0.25, 0.3, 0.1, 16))], 0.30),
    "t3": ([(0, "t3", V1), (4, "t3", _values(0.04, 0.1, 0.06, 32))], 0.18),
    "t4": ([(0, "t4", _values(0.01, 0.0, 0.005, 128))], 0.40),
    "t5": (None, 0.20),   # completed, but recorded no schedule.csv
}
# t0's schedule as epoch ranges with constant values, worked out from its segments above:
# epochs 1-2 under V1 (t3), 3-6 under V2 (t1 then t0: same values, one range), 7-8 under V3
T0_RANGES = [("1–2", 0.05, 0.1, 0.05, 32.0, "t3"), ("3–6", 0.06, 0.1, 0.05, 64.0, "t1, t0"),
             ("7–8", 0.06, 0.1, 0.02, 64.0, "t0")]


def _schedule(segments) -> str:
    """schedule.csv as samtune writes it: per epoch, the values of the segment that trained it."""
    parts = [segment(start, trial, f"run-{trial}", values) for start, trial, values in segments]
    history = []
    for epoch in range(1, EPOCHS + 1):
        values = [s for s in parts if s["epoch"] < epoch][-1]["values"]
        history.append({"epoch": epoch, "lr": values["lr"], "rho": values["rho"],
                        "batch_size": values["batch_size"]})
    return schedule_csv(history, parts)


def _final(test_error):
    return {"final_test_error": test_error, "final_train_error": 0.02, "final_train_loss": 0.02 + 0.1 * test_error,
            "final_gen_gap": test_error - 0.02, "final_test_loss": 1.0 + test_error,
            "sharpness_harada": 1.0 + 10 * test_error}


def _search(client, root, name, spec):
    experiment = client.create_experiment(name, artifact_location=(root / f"art-{name}").as_uri())
    parent = client.create_run(experiment, run_name="search", tags={
        "samtune.kind": "search", "samtune.search_keys": "rho,alpha,lr,batch_size"}).info.run_id
    if spec is not None:
        client.log_text(parent, spec, schema.ARTIFACT_SEARCH_SPEC)
    client.set_terminated(parent, "FINISHED")
    return experiment, parent


def _population(client, root, name, spec):
    experiment, parent = _search(client, root, name, spec)
    for trial_id, (segments, test_error) in POPULATION.items():
        first = segments[-1][2] if segments else V1   # a trial's params: where it started
        params = {**first, "seed": 0, "optimizer": "gsam"}
        log_completed_trial(client, experiment, parent, trial_id, params, _final(test_error),
                            _schedule(segments) if segments else None)


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_in):
    root = tmp_path_factory.mktemp("mlflow")
    uri = store_in(root)
    client = MlflowClient(uri)
    _population(client, root, PBT, PBT_SPEC)
    _population(client, root, UNSPECIFIED, None)   # an older search: no search.yaml on its run
    for name, spec in ((GRID, GRID_SPEC), (OPTUNA, OPTUNA_SPEC)):
        experiment, parent = _search(client, root, name, spec)
        for i, rho in enumerate((0.01, 0.05, 0.1)):
            log_completed_trial(client, experiment, parent, f"g{i}", {**V1, "rho": rho, "seed": 0},
                                _final(0.1 + 0.1 * i))
    return uri


def _report(store, tmp_path_factory, experiment):
    from analysis import build_report

    out = tmp_path_factory.mktemp(f"report-{experiment}")
    build_report(experiment, tracking_uri=store, out_dir=out, log_to_mlflow=False, n_resamples=19)
    return out


@pytest.fixture(scope="module")
def pbt_report(store, tmp_path_factory):
    return _report(store, tmp_path_factory, PBT)


def _section(markdown: str) -> str:
    return markdown.split(f"## {TITLE}\n", 1)[1].split("\n## ", 1)[0]


# ---------------------------------------------------------------- units

def test_schedule_ranges_merge_epochs_with_equal_values():
    frame = pd.read_csv(io.StringIO(_schedule(POPULATION["t0"][0])))
    frame = frame.rename(columns={"trial_id": "trained_in_trial"})
    keys = ["rho", "alpha", "lr", "batch_size"]
    ranges = schedule_ranges(frame, keys)
    assert list(ranges.columns) == ["epochs", *keys, "trained in"]
    assert [tuple(row) for row in ranges.itertuples(index=False)] == T0_RANGES


def test_evolved_keys_are_those_that_vary():
    frames = [pd.read_csv(io.StringIO(_schedule(s))) for s, _ in POPULATION.values() if s]
    # weight_decay and momentum are the same everywhere: not evolved
    assert evolved_keys(pd.concat(frames)) == ["rho", "alpha", "lr", "batch_size"]


def test_parse_scheduler_names_the_section_key():
    assert parse_scheduler(PBT_SPEC) == "pbt"
    assert parse_scheduler("scheduler: {pb2: {interval: 2}}") == "pb2"
    assert parse_scheduler(GRID_SPEC) == "none" and parse_scheduler("scheduler: none") == "none"


def test_figure_draws_the_best_trial_bold_and_labelled():
    frames = [pd.read_csv(io.StringIO(_schedule(s))).assign(run_id=f"run-{t}")
              for t, (s, _) in POPULATION.items() if s]
    keys = ["rho", "batch_size"]
    fig = search_figures.pbt_schedules(pd.concat(frames), keys=keys, best="run-t0", best_label="best: t0")
    for ax, key in zip(fig.axes, keys):
        stairs = ax.patches
        assert len(stairs) == 5
        bold = [p for p in stairs if p.get_linewidth() > 2]
        assert [p.get_label() for p in bold] == ["best: t0"]
        assert all(p.get_edgecolor()[:3] == (0.6, 0.6, 0.6) for p in stairs if p not in bold)
        assert np.allclose(bold[0].get_data().values, frames[0][key])   # t0's value, epoch by epoch
    assert fig.axes[1].get_yscale() == "log"   # batch size: log2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["best: t0", "other trials (4)"]


# ---------------------------------------------------------------- the report

def test_pbt_report_has_the_section_and_the_png(pbt_report):
    markdown = (pbt_report / "report.md").read_text()
    assert f"## {TITLE}" in markdown and (pbt_report / PNG).stat().st_size > 0
    assert f"]({PNG})" in markdown
    page = (pbt_report / "report.html").read_text()
    section = page.split(f"<h2>{TITLE}</h2>", 1)[1].split("</section>", 1)[0]
    assert re.search(r'<img [^>]*src="data:image/png;base64,', section)
    text = _section(markdown)
    assert "The search's scheduler (PBT) evolved rho, alpha, lr, batch_size" in text
    assert "it is one population on one seed, not an optimal schedule" in text


def test_pbt_report_marks_the_best_trial(pbt_report):
    text = _section((pbt_report / "report.md").read_text())
    assert "Bold: t0, the best trial by the objective, final_test_error (min)" in text
    assert "bold: t0 (best: final_test_error = 0.1)" in text
    table = pd.read_csv(pbt_report / "pbt_schedules.csv")
    assert set(table.loc[table["best"], "trial_id"]) == {"t0"}
    assert set(table["trial_id"]) == {"t0", "t1", "t2", "t3", "t4"} and len(table) == 5 * EPOCHS


def test_pbt_report_lists_the_best_schedule_as_epoch_ranges(pbt_report):
    text = _section((pbt_report / "report.md").read_text())
    assert "| epochs | rho | alpha | lr | batch_size | trained in |" in text
    for epochs, rho, alpha, lr, batch, trials in T0_RANGES:
        assert f"| {epochs} | {rho:g} | {alpha:g} | {lr:g} | {batch:.0f} | {trials} |" in text
    rows = [line for line in text.splitlines() if re.match(r"\| \d", line)]
    assert len(rows) == len(T0_RANGES)


def test_pbt_report_counts_trials_without_a_schedule(pbt_report):
    text = _section((pbt_report / "report.md").read_text())
    assert re.search(r"1 of 6 comparable trials is left out: it has no schedule\.csv artifact .*: t5\.", text)


@pytest.mark.parametrize("experiment", [GRID, OPTUNA])
def test_other_searches_get_no_section(store, tmp_path_factory, experiment):
    out = _report(store, tmp_path_factory, experiment)
    markdown = (out / "report.md").read_text()
    assert TITLE not in markdown and "population-based" not in markdown
    assert not (out / PNG).exists() and not (out / "pbt_schedules.csv").exists()


def test_a_population_without_spec_is_found_by_its_schedules(store, tmp_path):
    from analysis.load import load_trials
    from analysis.pbt import pbt_view

    usable = load_trials(UNSPECIFIED, tracking_uri=store).usable
    view = pbt_view(usable, tracking_uri=store, out=tmp_path, save=lambda fig, path: None)
    (section,) = view.sections
    assert section.title == TITLE and section.paragraphs[0].startswith("Population-based training (the trials")
    assert np.array_equal(section.table["epochs"], [r[0] for r in T0_RANGES])
    usable = load_trials(GRID, tracking_uri=store).usable
    assert pbt_view(usable, tracking_uri=store, out=tmp_path, save=lambda fig, path: None).sections == ()
