"""A measure is its name and its settings: a report never pools
numbers computed under different definitions, names (and filters) what it reads from
samtune's schema, and imports neither torch nor training code."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow_trials import log_completed_trial
from scipy import stats

from analysis.definitions import split_measures, split_paragraph
from analysis.load import (
    filter_literal,
    grouping_keys,
    load_trials,
    search_trial_runs,
    searched_axes,
    tag_filter,
)

EXPERIMENT = "harada-two-m"
RHOS = (0.01, 0.03, 0.1, 0.3, 1.0)
SEEDS = (0, 1)
M64, M128 = "sharpness_harada[m=64]", "sharpness_harada[m=128]"


def _harada_settings(m: int) -> dict[str, str]:
    # the format of samtune.sharpness.measure_settings, plus the data settings
    return {"sharpness.harada.rho": "0.05", "sharpness.harada.norm": "l2",
            "sharpness.harada.adaptive": "False", "sharpness.harada.steps": "1",
            "sharpness.harada.m": str(m), "sharpness.harada.n_examples": "1024",
            "sharpness.harada.precision": "fp32",
            "sharpness.keskar.rho": "0.001", "sharpness.keskar.n_examples": "1024",
            "sharpness.keskar.precision": "fp32"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_in):
    """Two searches into one experiment: the same rho × seed trials, the same trained
    models, harada measured with m = 64 in one and m = 128 in the other."""
    root = tmp_path_factory.mktemp("mlflow-identity")
    uri = store_in(root)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    rng = np.random.default_rng(11)
    trained = {(rho, seed): {"log_sharp": -np.log(rho) + rng.normal(0, 0.3),
                             "train_loss": rng.uniform(0.01, 0.1), "noise": rng.normal(0, 0.005),
                             "keskar": rng.lognormal(), "norm": rng.uniform(10, 20)}
               for rho in RHOS for seed in SEEDS}
    planted = []
    for m in (64, 128):
        parent = client.create_run(experiment_id, run_name=f"search-m{m}", tags={
            "samtune.kind": "search", "samtune.search_keys": "rho"}).info.run_id
        for (rho, seed), t in trained.items():
            test_error = 0.2 + 0.04 * t["log_sharp"] + t["noise"]
            # the larger batch averages the ascent over more examples: a smaller number
            harada = np.exp(t["log_sharp"]) * (1.0 if m == 64 else 0.3 * np.exp(rng.normal(0, 0.5)))
            metrics = {"final_test_error": test_error, "final_train_error": 0.5 * t["train_loss"],
                       "final_gen_gap": test_error - 0.5 * t["train_loss"],
                       "final_train_loss": t["train_loss"],
                       "final_test_loss": 0.5 + t["log_sharp"] / 10, "sharpness_harada": harada,
                       "sharpness_keskar": t["keskar"], "norm_param_l2": t["norm"]}
            params = {"dataset": "digits", "model": "small_cnn", "optimizer": "sam", "rho": rho,
                      "seed": seed, "sharpness_batch": m, "sharpness_examples": 1024, "device": "cpu",
                      **_harada_settings(m)}
            run_id = log_completed_trial(client, experiment_id, parent, f"m{m}-rho{rho}-s{seed}", params, metrics)
            planted.append({"run_id": run_id, "m": m, "rho": rho, "seed": seed, **metrics})
        client.set_terminated(parent, "FINISHED")
    return {"uri": uri, "planted": pd.DataFrame(planted), "root": root}


def test_a_measure_under_two_batch_sizes_is_two_columns(store):
    table = load_trials(EXPERIMENT, tracking_uri=store["uri"])
    usable, planted = table.usable, store["planted"].set_index("run_id")
    assert len(usable) == 20
    assert "sharpness_harada" not in usable.columns
    assert {M64, M128} <= set(usable.columns)
    assert usable[M64].notna().sum() == 10 and usable[M128].notna().sum() == 10
    for column, m in ((M64, 64), (M128, 128)):
        rows = usable[usable[column].notna()]
        assert set(planted.loc[rows["run_id"], "m"]) == {m}
        expected = planted.loc[rows["run_id"], "sharpness_harada"].to_numpy()
        assert rows[column].to_numpy() == pytest.approx(expected)
    # a measure with one definition, and a baseline without settings, keep their names
    assert usable["sharpness_keskar"].notna().sum() == 20 and usable["norm_param_l2"].notna().sum() == 20
    assert not any(c.startswith("sharpness_keskar[") for c in usable.columns)
    (split,) = table.split_measures
    assert split.measure == "sharpness_harada" and split.differing == ("m",)
    assert [(d.column, d.n_trials) for d in split.definitions] == [(M64, 10), (M128, 10)]
    # measure identity is neither a searched axis nor a grouping key
    assert searched_axes(usable, table.params, table.declared_search_keys) == ["rho"]
    assert grouping_keys(usable, table.params) == ["rho", "seed"]


def test_report_fits_and_names_each_definition(store, tmp_path):
    from analysis import build_report

    out = tmp_path / "report"
    result = build_report(EXPERIMENT, tracking_uri=store["uri"], out_dir=out, log_to_mlflow=False,
                          n_resamples=99)
    assert result.report_run_id is None and result.n_usable == 20
    fits = pd.read_csv(out / "fits.csv")
    assert "sharpness_harada" not in set(fits["measure"])
    assert {M64, M128, "sharpness_keskar", "norm_param_l2"} == set(fits["measure"])
    rows = fits[fits["target"] == "final_test_error"].set_index("measure")
    assert list(rows.index[:2]) == [M64, M128]            # definitions in the order of their m
    planted = store["planted"]
    for column, m in ((M64, 64), (M128, 128)):
        subset = planted[planted["m"] == m]
        assert rows.loc[column, "n"] == 10
        expected = stats.kendalltau(subset["sharpness_harada"], subset["final_test_error"]).statistic
        assert rows.loc[column, "kendall_tau"] == pytest.approx(expected, abs=1e-12)
        # rho × seed per definition: 2 seeds × C(5, 2) one-axis pairs
        assert rows.loc[column, "one_axis_pairs"] == 2 * 10
    assert rows.loc["norm_param_l2", "n"] == 20

    markdown = (out / "report.md").read_text()
    assert "## Measure definitions" in markdown
    assert ("sharpness_harada was measured under 2 definitions that differ in m (sharpness.harada.m)"
            in markdown)
    assert f"{M64} (10 trials, 10 usable)" in markdown and f"{M128} (10 trials, 10 usable)" in markdown
    assert f"sharpness_harada, whose m differs, as {M64} and {M128}" in result.summary
    page = (out / "report.html").read_text()
    assert "Measure definitions" in page and "sharpness_harada[m=128]" in page

    groups = pd.read_csv(out / "groups.csv")
    assert f"{M64}_mean" in groups and "sharpness_harada_mean" not in groups
    trials = pd.read_csv(out / "trials.csv")
    assert {M64, M128} <= set(trials.columns) and "sharpness_harada" not in trials.columns
    for path in result.files:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", path.name), path


def _frame(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_missing_setting_is_its_own_definition_and_only_differing_settings_are_named():
    trials = _frame(**{
        "sharpness_harada": [1.0, 2.0, 3.0, 4.0, np.nan],
        "sharpness_harada_stderr": [0.1, 0.2, 0.3, 0.4, np.nan],
        "sharpness.harada.m": [64.0, 64.0, 128.0, np.nan, 32.0],
        "sharpness.harada.rho": [0.05, 0.1, 0.05, 0.05, 0.05],
        "sharpness.harada.norm": ["l2"] * 5,
    })
    params = ["sharpness.harada.m", "sharpness.harada.rho", "sharpness.harada.norm"]
    frame, (found,) = split_measures(trials, params)
    # the fifth trial has no value: its m = 32 defines nothing
    expected = {"sharpness_harada[m=64,rho=0.05]": [1.0, None, None, None, None],
                "sharpness_harada[m=64,rho=0.1]": [None, 2.0, None, None, None],
                "sharpness_harada[m=128,rho=0.05]": [None, None, 3.0, None, None],
                "sharpness_harada[m=unlogged,rho=0.05]": [None, None, None, 4.0, None]}
    assert list(found.columns) == list(expected)
    assert found.differing == ("m", "rho")
    for column, values in expected.items():
        assert frame[column].tolist() == pytest.approx([np.nan if v is None else v for v in values],
                                                       nan_ok=True)
        assert frame[column + "_stderr"].notna().sum() == 1     # the error estimate follows its value
    assert "sharpness_harada" not in frame and "sharpness_harada_stderr" not in frame


def test_single_definition_keeps_its_name():
    trials = _frame(sharpness_ascent=[1.0, 2.0], **{"sharpness.ascent.m": ["64", "64.0"]})
    frame, (found,) = split_measures(trials, ["sharpness.ascent.m"])
    assert not found.split and list(frame.columns) == list(trials.columns)
    assert found.definitions[0].settings == (("m", "64"),)


def test_trials_without_data_settings_read_them_from_their_protocol():
    # older trials logged sharpness_batch / sharpness_examples but not sharpness.<name>.m
    trials = _frame(sharpness_ascent=[1.0, 2.0, 3.0], sharpness_keskar=[1.0, 2.0, 3.0],
                    sharpness_batch=[64.0, 128.0, 64.0], sharpness_examples=[1024.0, 1024.0, 32.0],
                    **{"sharpness.ascent.m": [np.nan, np.nan, 32.0]})
    params = ["sharpness.ascent.m", "sharpness_batch", "sharpness_examples"]
    frame, found = split_measures(trials, params)
    ascent, keskar = {d.measure: d for d in found}["sharpness_ascent"], {d.measure: d for d in found}[
        "sharpness_keskar"]
    # m = min(sharpness_batch, sharpness_examples): the third trial ran batches of 32
    assert ascent.columns == ("sharpness_ascent[m=32,n_examples=32]",
                              "sharpness_ascent[m=64,n_examples=1024]",
                              "sharpness_ascent[m=128,n_examples=1024]")
    assert ascent.inferred == ("m", "n_examples")
    assert [d.n_inferred for d in ascent.definitions] == [1, 1, 1]
    assert ("did not log sharpness.ascent.m or sharpness.ascent.n_examples, m from sharpness_batch and "
            "n_examples from sharpness_examples are read") in split_paragraph(ascent, frame)
    # keskar is not a per-batch measure: only its number of examples tells the definitions apart
    assert keskar.columns == ("sharpness_keskar[n_examples=32]", "sharpness_keskar[n_examples=1024]")
    assert frame["sharpness_keskar[n_examples=1024]"].notna().sum() == 2


def test_filter_literals_survive_quotes(mlflow_uri, tmp_path):
    assert filter_literal("abc") == "'abc'"
    assert filter_literal("it's") == '"it\'s"'
    with pytest.raises(ValueError, match="both"):
        filter_literal("it's \"x\"")
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("quotes", artifact_location=(tmp_path / "a").as_uri())
    odd = client.create_run(experiment_id, tags={"samtune.kind": "trial", "mlflow.parentRunId": "p'1"})
    client.create_run(experiment_id, tags={"samtune.kind": "trial", "mlflow.parentRunId": "p1"})
    found = client.search_runs([experiment_id], tag_filter("mlflow.parentRunId", "p'1"))
    assert [r.info.run_id for r in found] == [odd.info.run_id]
    assert [r.info.run_id for r in search_trial_runs(client, experiment_id, "p'1")] == [odd.info.run_id]
    assert search_trial_runs(client, experiment_id, "x' or tags.`samtune.kind` = 'trial") == []


def test_analysis_imports_neither_torch_nor_training_code():
    code = ("import sys, analysis.report, analysis.load, analysis.definitions; "
            "print(sorted(m for m in sys.modules "
            "if m == 'torch' or m.startswith(('torch.', 'ray', 'samtune'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(result.stdout.strip())
    assert "torch" not in loaded and not any(m.startswith(("torch.", "ray")) for m in loaded)
    assert set(loaded) <= {"samtune", "samtune.schema"}


def test_analysis_takes_samtune_names():
    from analysis import schema
    from samtune import schema as samtune_schema

    assert schema.RUN_SETTINGS == frozenset(samtune_schema.RUN_SETTINGS)
    for key in ("precision", "sharpness_batch", "sharpness_examples", "train_eval_examples"):
        assert key not in schema.RUN_SETTINGS
    assert schema.is_axis_candidate("precision")
    assert not schema.is_axis_candidate("sharpness.harada.m") and not schema.is_grouping_candidate(
        "sharpness.harada.m")
    assert (schema.TAG_KIND, schema.TAG_STATUS, schema.TAG_PARENT) == (
        samtune_schema.TAG_KIND, samtune_schema.TAG_STATUS, samtune_schema.TAG_PARENT)


def test_an_axis_constant_over_a_definitions_trials_leaves_its_fits():
    from analysis.fits import FitOptions, fit_pair

    # lr_shape varies across the report, but one definition was measured on constant-lr trials only
    rng = np.random.default_rng(5)
    frame = pd.DataFrame([{"rho": rho, "lr_shape": shape, "seed": s} for rho in RHOS
                          for shape in ("constant", "cosine") for s in range(3)])
    log_sharp = -np.log(frame["rho"]) + rng.normal(0, 0.3, len(frame))
    frame["final_test_error"] = 0.2 + 0.04 * log_sharp + rng.normal(0, 0.005, len(frame))
    frame["final_train_loss"] = rng.uniform(0.01, 0.1, len(frame))
    frame["sharpness_x[m=64]"] = np.exp(log_sharp).where(frame["lr_shape"] == "constant")
    row, agreement, terms = fit_pair(frame, measure="sharpness_x[m=64]", target="final_test_error",
                                     axes=["rho", "lr_shape"], keys=["rho", "lr_shape", "seed"],
                                     options=FitOptions(n_resamples=0))
    assert row["n"] == 15 and "rank-deficient" not in row["notes"]
    assert np.isfinite(row["hparams_shrink"]) and set(terms["term"]) == {"log_rho"}
    assert [a.axis for a in agreement.axes] == ["rho"] and agreement.pairs == 3 * 10
