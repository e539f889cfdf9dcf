"""The report compares trials that fit their training set, at one training criterion
(the evidence protocol), and shows the compute each group got.

Synthetic MLflow stores with planted non-learners (train and test error 0.9, chance for
ten classes) among learners; every expectation is computed here, independently of the
analysis package, over the trials that should remain.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from analysis import AnalysisError, schema
from analysis.criterion import DEFAULT_MAX_TRAIN_ERROR, apply_training_fit
from analysis.load import exclusion_kinds, exclusion_reasons, load_trials, searched_axes

THRESHOLD, CRITERION, MIXED, BUDGETS = "non-learners", "criterion", "mixed-criteria", "budgets"
EPOCHS = 20
MEASURE, TARGET = "sharpness_harada", "final_test_error"


def _log_trial(client, experiment_id, parent, trial_id, params, metrics, *, status="completed"):
    from mlflow.entities import Metric, Param

    tags = {"samtune.kind": "trial", "samtune.trial_id": trial_id, "samtune.status": status,
            "mlflow.parentRunId": parent}
    run_id = client.create_run(experiment_id, run_name=trial_id, tags=tags).info.run_id
    stamp = int(time.time() * 1000)
    logged = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
    if "final_test_error" in metrics:       # a test-error curve, read for the training-curves figure
        logged += [Metric("test_error", metrics["final_test_error"] + 0.1 / e, stamp, e) for e in (1, 2, 3)]
    client.log_batch(run_id, metrics=logged, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id, "FINISHED" if status == "completed" else "FAILED")
    return run_id


def _params(**extra) -> dict[str, str]:
    # trial params as samtune logs them: an unset criterion or budget is ""
    params = {"dataset": "digits", "model": "small_cnn", "optimizer": "sam", "epochs": EPOCHS,
              "batch_size": 16, "lr": 0.05, "lr_shape": "constant", "batch_growth_ratio": 1.0,
              "stop_train_loss": "", "stop_train_error": "", "budget": "", "budget_unit": "steps",
              "train_eval_examples": 10000, "device": "cpu"}
    params.update(extra)
    return params


def _learner(rng, rho: float) -> dict[str, float]:
    """A trial that fit its training set; test error rises with ln(sharpness)."""
    log_sharp = -np.log(rho) + rng.normal(0, 0.4)
    train_error = rng.uniform(0.0, 0.08)
    test_error = 0.1 + 0.02 * log_sharp + rng.normal(0, 0.01)
    return {"final_test_error": test_error, "final_train_error": train_error,
            "final_gen_gap": test_error - train_error, "final_train_loss": rng.uniform(0.002, 0.01),
            "final_test_loss": 0.3 + 0.1 * log_sharp, MEASURE: np.exp(log_sharp),
            "norm_param_l2": rng.uniform(10, 20), "final_steps": 600.0, "final_samples_seen": 9600.0,
            "final_gradient_evaluations": 1200.0}


def _non_learner() -> dict[str, float]:
    """A trial that never learned: chance error for ten classes and a flat network."""
    return {"final_test_error": 0.9, "final_train_error": 0.9, "final_gen_gap": 0.0,
            "final_train_loss": 2.3, "final_test_loss": 2.3, MEASURE: 1e-4, "norm_param_l2": 5.0,
            "final_steps": 600.0, "final_samples_seen": 9600.0, "final_gradient_evaluations": 1200.0}


def _new_experiment(client, root, name):
    experiment_id = client.create_experiment(name, artifact_location=(root / name).as_uri())
    parent = client.create_run(experiment_id, run_name="search", tags={"samtune.kind": "search"}).info.run_id
    return experiment_id, parent


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_in):
    root = tmp_path_factory.mktemp("mlflow-training-fit")
    uri = store_in(root)
    client = MlflowClient(uri)
    rng = np.random.default_rng(2020)
    planted: dict[str, list[dict]] = {THRESHOLD: [], CRITERION: [], MIXED: [], BUDGETS: []}

    def log(name, experiment_id, parent, trial_id, params, metrics, **kw):
        run_id = _log_trial(client, experiment_id, parent, trial_id, params, metrics, **kw)
        planted[name].append({"run_id": run_id, "trial_id": trial_id, **params, **metrics})

    # 14 learners on a rho × seed grid, 2 non-learners, 1 diverged trial; no criterion
    eid, parent = _new_experiment(client, root, THRESHOLD)
    for rho in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0):
        for seed in (0, 1):
            log(THRESHOLD, eid, parent, f"learn-rho{rho}-s{seed}", _params(rho=rho, seed=seed),
                _learner(rng, rho))
    for trial_id, rho in (("never-a", 0.05), ("never-b", 0.2)):
        log(THRESHOLD, eid, parent, trial_id, _params(rho=rho, seed=2), _non_learner())
    log(THRESHOLD, eid, parent, "nan-loss", _params(rho=0.1, seed=3), {}, status="diverged")

    # trained to train_loss <= 0.01: 10 reached it, one never learned (criterion_reached 0),
    # one did not log criterion_reached and stopped at train_loss 0.4 (train error 0.1,
    # under the default threshold: the criterion decides, not the threshold)
    eid, parent = _new_experiment(client, root, CRITERION)
    reached = {"criterion_reached": 1.0, "criterion_epoch": 9.0, "criterion_steps": 450.0,
               "criterion_samples": 7200.0}
    for i, rho in enumerate(np.geomspace(0.01, 1.0, 10)):
        log(CRITERION, eid, parent, f"reached-{i}", _params(rho=rho, seed=0, stop_train_loss=0.01),
            _learner(rng, rho) | reached)
    log(CRITERION, eid, parent, "never", _params(rho=0.1, seed=0, stop_train_loss=0.01),
        _non_learner() | {"criterion_reached": 0.0, "criterion_epoch": np.nan})
    log(CRITERION, eid, parent, "slow", _params(rho=0.3, seed=0, stop_train_loss=0.01),
        _learner(rng, 0.3) | {"final_train_loss": 0.4, "final_train_error": 0.1})

    # 8 trials at train_loss <= 0.01, 4 without a criterion, 3 at train_error <= 0.05
    eid, parent = _new_experiment(client, root, MIXED)
    for i, rho in enumerate(np.geomspace(0.01, 1.0, 8)):
        log(MIXED, eid, parent, f"loss-{i}", _params(rho=rho, seed=0, stop_train_loss=0.01),
            _learner(rng, rho) | reached)
    for i, rho in enumerate((0.02, 0.1, 0.3, 0.8)):
        log(MIXED, eid, parent, f"none-{i}", _params(rho=rho, seed=0), _learner(rng, rho))
    for i, rho in enumerate((0.03, 0.2, 0.6)):
        log(MIXED, eid, parent, f"error-{i}", _params(rho=rho, seed=0, stop_train_error=0.05),
            _learner(rng, rho) | reached)

    # sgd / sam × a budget of 400 / 800 steps × 2 seeds: the compute each cell got
    eid, parent = _new_experiment(client, root, BUDGETS)
    for optimizer, evals in (("sgd", 1), ("sam", 2)):
        for budget in (400, 800):
            for seed in (0, 1):
                rho = 0.05 * (1 + seed) * (budget / 400)
                metrics = _learner(rng, rho) | {"final_steps": budget, "final_samples_seen": 16 * budget,
                                                "final_gradient_evaluations": evals * budget}
                log(BUDGETS, eid, parent, f"{optimizer}-{budget}-s{seed}",
                    _params(optimizer=optimizer, budget=budget, rho=rho, seed=seed), metrics)
    return {"uri": uri, "planted": {k: pd.DataFrame(v) for k, v in planted.items()}}


def _report(store, tmp_path, experiment, **kwargs):
    from analysis import build_report

    out = tmp_path / "report"
    result = build_report(experiment, tracking_uri=store["uri"], out_dir=out, log_to_mlflow=False,
                          n_resamples=99, **kwargs)
    return result, out


def _fit_row(out, measure=MEASURE, target=TARGET) -> pd.Series:
    fits = pd.read_csv(out / "fits.csv")
    return fits[(fits["measure"] == measure) & (fits["target"] == target)].iloc[0]


def _r2_on_log_rho(frame: pd.DataFrame) -> float:
    design = np.column_stack([np.ones(len(frame)), np.log(frame["rho"].astype(float))])
    y = frame[TARGET].to_numpy(float)
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    return 1.0 - np.sum((y - design @ beta) ** 2) / np.sum((y - y.mean()) ** 2)


# ---------------------------------------------------------------- no criterion: the threshold

def test_non_learners_leave_every_fit_and_are_named(store, tmp_path):
    planted = store["planted"][THRESHOLD]
    completed = planted[planted[TARGET].notna()]
    learners = completed[completed["final_train_error"] < 0.5]
    assert len(learners) == 14 and len(completed) == 16
    result, out = _report(store, tmp_path, THRESHOLD)
    assert (result.n_usable, result.n_excluded) == (14, 3)
    assert result.excluded_kinds == {"diverged": 1, "not_fit": 2}

    # the fits: over the learners only, whatever the statistic
    row = _fit_row(out)
    expected = stats.kendalltau(learners[MEASURE], learners[TARGET]).statistic
    pooled = stats.kendalltau(completed[MEASURE], completed[TARGET]).statistic
    assert abs(expected - pooled) > 0.1          # the planted non-learners do move the pooled τ
    assert row["n"] == 14 and row["kendall_tau"] == pytest.approx(expected, abs=1e-12)
    assert row["spearman"] == pytest.approx(stats.spearmanr(learners[MEASURE], learners[TARGET]).statistic)
    assert row["r2_hparams"] == pytest.approx(_r2_on_log_rho(learners), rel=1e-9)
    fits = pd.read_csv(out / "fits.csv")
    assert set(fits["n"]) == {14}
    # every table and figure input: groups, curves, the trial table's group column
    assert pd.read_csv(out / "groups.csv")["n"].sum() == 14
    never = set(planted.loc[planted["trial_id"].str.startswith("never"), "run_id"])
    assert not never & set(pd.read_csv(out / "history.csv")["run_id"])
    trials = pd.read_csv(out / "trials.csv").set_index("trial_id")
    reason = ("did not fit its training set: final_train_error 0.9 > max_train_error 0.5 "
              "(no training criterion was set)")
    for trial_id in ("never-a", "never-b"):
        assert trials.loc[trial_id, "excluded_reason"] == reason
        assert trials.loc[trial_id, "excluded_kind"] == "not_fit"
        assert pd.isna(trials.loc[trial_id, "group"])

    # the report names them with the reason, and the summary says what was applied
    markdown = (out / "report.md").read_text()
    assert f"| never-a | completed | {reason} |" in markdown
    assert f"| never-b | completed | {reason} |" in markdown
    assert "(1 diverged, 2 that did not fit the training set)" in result.summary
    assert ("a trial whose final_train_error is above max_train_error = 0.5 did not fit its training set "
            "and is excluded: 2 of 16.") in result.summary
    low, high = learners["final_train_error"].min(), learners["final_train_error"].max()
    assert f"final_train_error from {low:.3g} to {high:.3g}" in result.summary
    assert "No training criterion was set" in result.summary


def test_threshold_is_settable_and_can_be_switched_off(store, tmp_path):
    planted = store["planted"][THRESHOLD]
    completed = planted[planted[TARGET].notna()]
    everything, _ = _report(store, tmp_path / "all", THRESHOLD, max_train_error=None)
    assert everything.n_usable == 16 and "no train-error threshold applied" in everything.summary
    row = _fit_row(tmp_path / "all" / "report")
    assert row["kendall_tau"] == pytest.approx(
        stats.kendalltau(completed[MEASURE], completed[TARGET]).statistic, abs=1e-12)

    strict = completed[completed["final_train_error"] <= 0.04]
    assert 3 <= len(strict) < 14
    tight, _ = _report(store, tmp_path / "tight", THRESHOLD, max_train_error=0.04)
    assert tight.n_usable == len(strict) and tight.excluded_kinds["not_fit"] == 16 - len(strict)
    row = _fit_row(tmp_path / "tight" / "report")
    assert row["kendall_tau"] == pytest.approx(stats.kendalltau(strict[MEASURE], strict[TARGET]).statistic,
                                               abs=1e-12)
    for bad in (5, -0.1, "much"):
        with pytest.raises(AnalysisError, match="max_train_error"):
            load_trials(THRESHOLD, tracking_uri=store["uri"], max_train_error=bad)
    assert DEFAULT_MAX_TRAIN_ERROR == 0.5


def test_too_few_fitting_trials_says_why_and_what_to_change(store, tmp_path):
    from analysis import NotEnoughTrials, build_report

    with pytest.raises(NotEnoughTrials, match=r"0 usable trials.*16 that did not fit the training set.*"
                                              r"raise max_train_error"):
        build_report(THRESHOLD, tracking_uri=store["uri"], out_dir=tmp_path, log_to_mlflow=False,
                     max_train_error=0.0)


# ---------------------------------------------------------------- with a criterion

def test_trials_that_missed_the_criterion_are_excluded(store, tmp_path):
    planted = store["planted"][CRITERION]
    kept = planted[planted["trial_id"].str.startswith("reached")]
    result, out = _report(store, tmp_path, CRITERION)
    assert result.n_usable == 10 and result.excluded_kinds == {"not_fit": 2}
    assert result.training_fit.criterion.label == "train_loss <= 0.01"
    row = _fit_row(out)
    assert row["n"] == 10
    assert row["kendall_tau"] == pytest.approx(stats.kendalltau(kept[MEASURE], kept[TARGET]).statistic,
                                               abs=1e-12)
    trials = pd.read_csv(out / "trials.csv").set_index("trial_id")
    assert trials.loc["never", "excluded_reason"] == (
        "did not reach the training criterion train_loss <= 0.01 within its 20 epochs (final train_loss 2.3)")
    # no criterion_reached logged: judged from its final train_loss, though its train error (0.1)
    # is under the threshold that applies without a criterion
    assert trials.loc["slow", "excluded_reason"] == (
        "did not reach the training criterion train_loss <= 0.01 within its 20 epochs (final train_loss 0.4)")
    assert trials.loc["reached-0", "criterion_reached"] == 1.0      # criterion metrics reach the table
    assert ("Trials are compared at the training criterion train_loss <= 0.01: 10 of 12 reached it; "
            "2 that did not were excluded.") in result.summary
    assert "(2 that did not reach the training criterion)" in result.summary
    assert "max_train_error" not in result.summary
    markdown = (out / "report.md").read_text()
    assert "| never | completed | did not reach the training criterion train_loss <= 0.01" in markdown


def test_mixed_criteria_are_not_pooled(store, tmp_path):
    planted = store["planted"][MIXED]
    at_loss = planted[planted["trial_id"].str.startswith("loss")]
    table = load_trials(MIXED, tracking_uri=store["uri"])
    assert sorted(table.usable["trial_id"]) == sorted(at_loss["trial_id"])
    # the criterion is what the trials are, not a searched axis of the compared trials
    assert {"stop_train_loss", "stop_train_error"} <= set(searched_axes(table.trials, table.params))
    assert searched_axes(table.usable, table.params) == ["rho"]
    reasons = dict(zip(table.trials["trial_id"], table.trials["excluded_reason"]))
    assert reasons["none-0"] == ("trained under a different criterion (none); the report compares trials "
                                 "at the training criterion train_loss <= 0.01")
    assert reasons["error-0"] == ("trained under a different criterion (train_error <= 0.05); the report "
                                  "compares trials at the training criterion train_loss <= 0.01")
    assert table.exclusion_kinds() == {"other_criterion": 7}

    result, out = _report(store, tmp_path, MIXED)
    row = _fit_row(out)
    assert row["n"] == 8 and row["kendall_tau"] == pytest.approx(
        stats.kendalltau(at_loss[MEASURE], at_loss[TARGET]).statistic, abs=1e-12)
    assert set(pd.read_csv(out / "fits.csv")["n"]) == {8}
    assert ("Excluded as trained under a different criterion: 7 trials (none: 4; train_error <= 0.05: 3); "
            "trials trained to different criteria are not comparable.") in result.summary


def _frame(criteria, reached, train_error) -> pd.DataFrame:
    return pd.DataFrame({
        schema.STATUS: "completed", schema.ERROR: "", "final_test_error": 0.1, "sharpness_x": 1.0,
        "stop_train_loss": [c if c is not None else np.nan for c in criteria],
        "criterion_reached": reached, "final_train_error": train_error, "final_train_loss": 0.005})


def _judge(frame, max_train_error=DEFAULT_MAX_TRAIN_ERROR):
    reasons = exclusion_reasons(frame)
    return apply_training_fit(frame, reasons, exclusion_kinds(frame, reasons), max_train_error)


def test_the_most_common_criterion_is_compared_ties_go_to_the_one_that_fit():
    # 3 with a criterion (one missed it), 3 without (all fit): the setting whose trials fit wins a tie
    frame = _frame([0.01] * 3 + [None] * 3, [1.0, 1.0, 0.0] + [np.nan] * 3, [0.01] * 6)
    reasons, kinds, fit = _judge(frame)
    assert not fit.criterion.is_set and fit.others == (("train_loss <= 0.01", 3),)
    assert list(kinds) == ["other_criterion"] * 3 + [""] * 3
    # equally many that fit: a criterion is preferred over none
    frame = _frame([0.01] * 3 + [None] * 3, [1.0] * 3 + [np.nan] * 3, [0.01] * 6)
    reasons, kinds, fit = _judge(frame)
    assert fit.criterion.label == "train_loss <= 0.01" and (fit.compared, fit.fit) == (3, 3)
    assert list(reasons[:3]) == [""] * 3 and set(kinds[3:]) == {"other_criterion"}
    # a trial without a final_train_error cannot be judged: kept, counted unchecked
    frame = _frame([None] * 4, [np.nan] * 4, [0.01, 0.02, np.nan, 0.7])
    reasons, kinds, fit = _judge(frame)
    assert list(kinds) == ["", "", "", "not_fit"] and (fit.fit, fit.unchecked, fit.not_fit) == (2, 1, 1)
    assert "1 trial without a finite final_train_error was kept" in fit.sentence()


# ---------------------------------------------------------------- budgets

def test_group_table_shows_the_compute_each_cell_got(store, tmp_path):
    planted = store["planted"][BUDGETS]
    result, out = _report(store, tmp_path, BUDGETS)
    assert result.n_usable == 8
    assert "budget" in searched_axes(load_trials(BUDGETS, tracking_uri=store["uri"]).usable,
                                     load_trials(BUDGETS, tracking_uri=store["uri"]).params)
    assert "Budgets differ (budget varies" in result.summary
    groups = pd.read_csv(out / "groups.csv")
    # the budget is a cell column: no cell pools 400 and 800 steps
    assert list(groups.columns[:4]) == ["optimizer", "schedule", "budget", "n"]
    assert len(groups) == 4 and set(groups["n"]) == {2}
    expected = planted.groupby(["optimizer", "budget"])[["final_steps", "final_gradient_evaluations"]].mean()
    for _, cell in groups.iterrows():
        want = expected.loc[(cell["optimizer"], int(cell["budget"]))]
        assert cell["final_steps_mean"] == want["final_steps"]
        assert cell["final_gradient_evaluations_mean"] == want["final_gradient_evaluations"]
    markdown = (out / "report.md").read_text()
    header = "| optimizer | schedule | budget | n | steps | gradient evaluations | final_test_error |"
    assert header in markdown
    assert "| sam | constant | 800 | 2 | 800 | 1600 |" in markdown
    assert "| sgd | constant | 400 | 2 | 400 | 400 |" in markdown


def test_analysis_takes_the_criterion_and_budget_names_from_samtune():
    from samtune import schema as samtune_schema
    from samtune.config import HYPERPARAM_KEYS

    assert schema.MEASUREMENT_KEYS == frozenset(samtune_schema.MEASUREMENT_KEYS)
    assert schema.TAG_REPORTED_SEARCH == samtune_schema.TAG_REPORTED_SEARCH
    assert set(schema.CRITERION_PARAMS.values()) | {schema.BUDGET, schema.BUDGET_UNIT, schema.EPOCHS} <= set(
        HYPERPARAM_KEYS)
    # train_eval_examples must match for a one-axis comparison, but is never an axis itself
    assert schema.is_grouping_candidate("train_eval_examples")
    assert not schema.is_axis_candidate("train_eval_examples")
    assert not schema.is_grouping_candidate("sharpness_batch")
