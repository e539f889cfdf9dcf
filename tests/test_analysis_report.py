"""The report pipeline on MLflow stores with planted relationships.

One SQLite store per module: a planted grid (rho × lr_shape × seed, 30 usable
trials and 5 that must be excluded) and a second experiment with two searches.
"""

from __future__ import annotations

import base64
import re
import time

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from analysis import NotEnoughTrials, UnknownExperiment
from analysis.fits import FitOptions, fit_all
from analysis.load import grouping_keys, load_histories, load_trials, searched_axes

GRID = "planted-grid"
SPLIT = "two-searches"
SLOPE = 0.05           # final_test_error = 0.2 + SLOPE · ln(sharpness_planted) + noise
EPOCHS = 3
FIT_COLUMNS = ["measure", "target", "n", "kendall_tau", "kendall_ci_low", "kendall_ci_high", "spearman",
               "ols_slope", "ols_slope_ci_low", "ols_slope_ci_high", "r2", "granulated_psi", "partial_r"]


def _fixed_params(**extra) -> dict[str, str]:
    params = {"dataset": "digits", "model": "small_cnn", "epochs": str(EPOCHS), "optimizer": "sam",
              "batch_size": "16", "batch_growth_ratio": "1.0", "lr": "0.05", "alpha": "0.0",
              "device": "cpu", "data_dir": "", "sharpness": "worst_linf_adaptive"}
    params.update({k: str(v) for k, v in extra.items()})
    return params


def _log_trial(client, experiment_id, parent, trial_id, params, *, status, final=None, error=None,
               curves=True):
    from mlflow.entities import Metric, Param, RunTag

    tags = {"samtune.kind": "trial", "samtune.trial_id": trial_id, "samtune.status": status,
            "mlflow.parentRunId": parent}
    if error:
        tags["samtune.error"] = error
    run_id = client.create_run(experiment_id, run_name=trial_id, tags=tags).info.run_id
    stamp = int(time.time() * 1000)
    metrics = [Metric(k, float(v), stamp, 0) for k, v in (final or {}).items()]
    if curves:
        lr, batch = float(params["lr"]), float(params["batch_size"])
        for epoch in range(1, EPOCHS + 1):
            cosine = params.get("lr_shape") == "cosine"
            metrics += [Metric("test_error", 0.5 / epoch, stamp, epoch),
                        Metric("lr", lr * (1 - (epoch - 1) / EPOCHS) if cosine else lr, stamp, epoch),
                        Metric("batch_size", batch, stamp, epoch),
                        Metric("train_loss", 1.0 / epoch, stamp, epoch)]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag("samtune.status", status)])
    client.set_terminated(run_id, "FINISHED" if status == "completed" else "FAILED")
    return run_id


def _planted_trials(rng):
    """30 trials; the planted relation is on ln(sharpness_planted)."""
    for rho in (0.01, 0.03, 0.1, 0.3, 1.0):
        for shape in ("constant", "cosine"):
            for seed in range(3):
                log_sharp = -np.log(rho) + 0.5 * (shape == "cosine") + rng.normal(0, 0.4)
                train_loss = rng.uniform(0.01, 0.2)
                test_error = 0.2 + SLOPE * log_sharp + rng.normal(0, 0.01)
                train_error = 0.5 * train_loss
                final = {"final_test_error": test_error, "final_train_error": train_error,
                         "final_gen_gap": test_error - train_error, "final_train_loss": train_loss,
                         "final_test_loss": 0.8 + 0.3 * log_sharp + rng.normal(0, 0.05),
                         "sharpness_planted": np.exp(log_sharp),
                         "sharpness_train_proxy": np.exp(5 * train_loss),
                         "norm_param_l2": rng.uniform(10, 20)}
                yield {"rho": rho, "lr_shape": shape, "seed": seed}, final


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_in):
    root = tmp_path_factory.mktemp("mlflow")
    uri = store_in(root)
    client = MlflowClient(uri)
    grid_id = client.create_experiment(GRID, artifact_location=(root / "artifacts-grid").as_uri())
    parent = client.create_run(grid_id, run_name="search", tags={
        "samtune.kind": "search", "samtune.search_keys": "rho,lr_shape,seed"}).info.run_id
    rng = np.random.default_rng(0)
    planted = []
    for i, (hp, final) in enumerate(_planted_trials(rng)):
        _log_trial(client, grid_id, parent, f"t{i:02d}", _fixed_params(**hp), status="completed", final=final)
        planted.append({**hp, **final})
    bad = _fixed_params(rho=0.1, lr_shape="constant", seed=9)
    _log_trial(client, grid_id, parent, "div1", bad, status="diverged", curves=False)
    _log_trial(client, grid_id, parent, "div2", bad, status="diverged", curves=False)
    _log_trial(client, grid_id, parent, "fail", bad, status="failed", error="RuntimeError: boom",
               curves=False)
    _log_trial(client, grid_id, parent, "prune", bad, status="pruned", curves=False)
    _log_trial(client, grid_id, parent, "nomeasure", bad, status="completed",
               final={"final_test_error": 0.3, "final_train_loss": 0.1})
    client.set_terminated(parent, "FINISHED")

    client.create_experiment("empty", artifact_location=(root / "artifacts-empty").as_uri())
    split_id = client.create_experiment(SPLIT, artifact_location=(root / "artifacts-split").as_uri())
    searches = {}
    for name, n_ok in (("small", 2), ("large", 4)):
        search = client.create_run(split_id, run_name=name, tags={"samtune.kind": "search"}).info.run_id
        for i in range(n_ok):
            _log_trial(client, split_id, search, f"{name}{i}", _fixed_params(rho=0.01 * (i + 1), seed=0),
                       status="completed", curves=False,
                       final={"final_test_error": 0.1 * (i + 1), "final_train_loss": 0.05 * (i + 1),
                              "sharpness_planted": 1.0 + i})
        _log_trial(client, split_id, search, f"{name}-failed", _fixed_params(rho=0.5, seed=0),
                   status="failed", error="ValueError: bad", curves=False)
        searches[name] = search
    return {"uri": uri, "parent": parent, "planted": pd.DataFrame(planted), "searches": searches,
            "root": root}


def test_load_counts_usable_and_excluded_trials(store):
    table = load_trials(GRID, tracking_uri=store["uri"])
    assert len(table.trials) == 35 and len(table.usable) == 30
    assert table.exclusion_counts() == {"completed": 1, "diverged": 2, "failed": 1, "pruned": 1}
    reasons = dict(zip(table.trials["trial_id"], table.trials["excluded_reason"]))
    assert reasons["fail"] == "failed: RuntimeError: boom"
    assert "no finite sharpness_*" in reasons["nomeasure"]
    assert table.usable["rho"].dtype == float and set(table.usable["lr_shape"]) == {"constant", "cosine"}
    assert table.declared_search_keys == ("rho", "lr_shape", "seed")
    assert searched_axes(table.usable, table.params, table.declared_search_keys) == ["rho", "lr_shape"]
    assert grouping_keys(table.usable, table.params) == ["lr_shape", "rho", "seed"]


def test_fits_on_loaded_trials_match_planted_data(store):
    table = load_trials(GRID, tracking_uri=store["uri"])
    usable = table.usable
    result = fit_all(usable, measures=["sharpness_planted", "sharpness_train_proxy"],
                     targets=["final_test_error"], axes=["rho", "lr_shape"],
                     keys=grouping_keys(usable, table.params), options=FitOptions(n_resamples=199))
    row = result.fits.set_index("measure").loc["sharpness_planted"]
    planted = store["planted"]
    expected = stats.kendalltau(planted["sharpness_planted"], planted["final_test_error"]).statistic
    assert row["kendall_tau"] == pytest.approx(expected, abs=1e-12)
    assert row["n"] == 30
    assert row["ols_slope_ci_low"] < SLOPE < row["ols_slope_ci_high"]
    # rho axis: 2 shapes × 3 seeds groups of 5 (10 pairs each); lr_shape axis: 15 groups of 2
    assert row["one_axis_pairs"] == 6 * 10 + 15
    assert row["granulated_psi"] > 0.3


def test_search_run_filter_and_unknown_names(store):
    large = load_trials(SPLIT, tracking_uri=store["uri"], search_run_id=store["searches"]["large"])
    assert sorted(large.trials["trial_id"]) == ["large-failed", "large0", "large1", "large2", "large3"]
    assert len(load_trials(SPLIT, tracking_uri=store["uri"]).trials) == (2 + 1) + (4 + 1)
    with pytest.raises(UnknownExperiment, match="'no-such-experiment'.*planted-grid"):
        load_trials("no-such-experiment", tracking_uri=store["uri"])
    with pytest.raises(UnknownExperiment, match="not a search run of experiment"):
        load_trials(SPLIT, tracking_uri=store["uri"], search_run_id=store["parent"])


def test_fewer_than_three_usable_trials_is_a_clear_error(store, tmp_path):
    from analysis import build_report

    with pytest.raises(NotEnoughTrials, match=r"2 usable trials, at least 3 .*1 failed"):
        build_report(SPLIT, tracking_uri=store["uri"], search_run_id=store["searches"]["small"],
                     out_dir=tmp_path, log_to_mlflow=False)
    assert not (tmp_path / "report.html").exists()
    with pytest.raises(NotEnoughTrials, match=r"'empty': 0 usable trials.*0 trials found"):
        build_report("empty", tracking_uri=store["uri"], out_dir=tmp_path, log_to_mlflow=False)


def test_histories_are_read_per_epoch(store):
    table = load_trials(GRID, tracking_uri=store["uri"])
    run_ids = table.usable["run_id"].tolist()[:4]
    history = load_histories(store["uri"], run_ids)
    assert set(history["metric"]) == {"test_error", "batch_size", "lr"}
    assert len(history) == 4 * 3 * EPOCHS
    assert history[history["metric"] == "test_error"]["value"].tolist()[:EPOCHS] == \
        pytest.approx([0.5 / e for e in range(1, EPOCHS + 1)])


def test_build_report_end_to_end(store, tmp_path):
    from analysis import build_report

    out = tmp_path / "report"
    result = build_report(GRID, tracking_uri=store["uri"], out_dir=out, n_resamples=99)
    assert (result.n_usable, result.n_excluded) == (30, 5)
    for name in ("report.html", "report.md", "trials.csv", "fits.csv"):
        assert (out / name).stat().st_size > 0
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "training_curves.png" in figures and "ranking_final_test_error.png" in figures
    assert "final_test_error_vs_measures.png" in figures

    fits = pd.read_csv(out / "fits.csv")
    assert set(FIT_COLUMNS) <= set(fits.columns)
    assert set(fits["measure"]) == {"sharpness_planted", "sharpness_train_proxy", "norm_param_l2"}
    assert set(fits["target"]) == {"final_test_error", "final_gen_gap", "final_test_loss"}
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 35 and trials["excluded_reason"].notna().sum() == 5

    page = (out / "report.html").read_text()
    images = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert len(images) == len(figures)
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    # offline: the one script loaded is plotly.js, written beside the report
    assert re.findall(r"<script [^>]*src=\"([^\"]*)\"", page) == ["plotly.min.js"]
    assert (out / "plotly.min.js").stat().st_size > 0 and not re.search(r"<link\b", page)
    assert "30 usable trials" in result.summary and "2 diverged" in result.summary
    # three seeds per (rho, lr_shape): the seeds set the noise floor the configurations are held to
    markdown = (out / "report.md").read_text()
    assert "## Seeds as the noise floor" in markdown and "## Fits on configuration means" in markdown
    exceeding = re.search(r"exceed seed noise for: ([^;]*);", markdown).group(1).split(", ")
    assert "final_test_error" in exceeding and "sharpness_planted" in exceeding

    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name(GRID)
    reports = client.search_runs([experiment.experiment_id], "tags.`samtune.kind` = 'report'")
    assert [r.info.run_id for r in reports] == [result.report_run_id]
    logged = {a.path for a in client.list_artifacts(result.report_run_id)}
    assert {"report.html", "report.md", "trials.csv", "fits.csv", "figures"} <= logged
    # the report run is not mistaken for a trial by the next report
    assert len(load_trials(GRID, tracking_uri=store["uri"]).trials) == 35
