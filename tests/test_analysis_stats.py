"""Statistics of the analysis package on generated tables (no MLflow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import schema
from analysis.fits import (
    FitOptions,
    fit_all,
    fit_pair,
    hyperparameter_regression,
    ols_fit,
    partial_spearman,
    rank_correlations,
)
from analysis.granulated import granulated_agreement, sign_error
from analysis.load import coerce_param, exclusion_reasons, grouping_keys, searched_axes
from analysis.tables import choose_grouping, group_table, schedule_label

FAST = FitOptions(n_resamples=199, seed=0)


def test_rank_correlations_equal_scipy_and_ci_covers_estimate():
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=25)
    y = np.log(x) + rng.normal(scale=1.0, size=25)
    out = rank_correlations(x, y, FAST)
    assert out["kendall_tau"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert out["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert out["kendall_ci_low"] < out["kendall_tau"] < out["kendall_ci_high"]
    assert out["spearman_ci_low"] < out["spearman"] < out["spearman_ci_high"]
    # seeded: the same options give the same interval, another seed another one
    again = rank_correlations(x, y, FAST)
    other = rank_correlations(x, y, FitOptions(n_resamples=199, seed=5))
    assert again["kendall_ci_low"] == out["kendall_ci_low"]
    assert other["kendall_ci_low"] != out["kendall_ci_low"]


def test_ols_matches_numpy_least_squares_and_hc3_by_hand():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 3, size=20)
    y = 1.5 - 0.7 * x + rng.normal(scale=0.3 + 0.2 * x, size=20)
    fit = ols_fit(x, y)
    design = np.column_stack([np.ones_like(x), x])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    assert (fit.intercept, fit.slope) == pytest.approx(tuple(beta), abs=1e-10)
    # HC3 (MacKinnon & White 1985): (X'X)⁻¹ X' diag(e²/(1−h)²) X (X'X)⁻¹
    bread = np.linalg.inv(design.T @ design)
    resid = y - design @ beta
    leverage = np.einsum("ij,jk,ik->i", design, bread, design)
    meat = design.T @ (design * (resid**2 / (1 - leverage) ** 2)[:, None])
    se = np.sqrt((bread @ meat @ bread)[1, 1])
    assert fit.slope_se == pytest.approx(se, rel=1e-10)
    half = stats.t.ppf(0.975, df=len(x) - 2) * se
    assert (fit.slope_ci_low, fit.slope_ci_high) == pytest.approx((beta[1] - half, beta[1] + half), rel=1e-10)
    r2 = 1 - resid.var() / y.var()
    assert fit.r2 == pytest.approx(r2, rel=1e-10)


def test_granulated_kendall_and_sign_error_match_hand_worked_example():
    # axes a ∈ {1, 2, 3} and b ∈ {x, y}, one trial per cell
    table = pd.DataFrame({
        "a": [1, 2, 3, 1, 2, 3],
        "b": ["x", "x", "x", "y", "y", "y"],
        "m": [1.0, 2.0, 3.0, 1.5, 2.5, 3.5],
        "g": [10.0, 20.0, 30.0, 15.0, 25.0, 18.0],
    })
    # axis a, group b=x: m 1, 2, 3 / g 10, 20, 30: 3 concordant pairs → τ = 1
    #         group b=y: m 1.5, 2.5, 3.5 / g 15, 25, 18: 2 concordant, 1 discordant → τ = 1/3
    psi_a = (1 + 1 / 3) / 2
    # axis b, group a=1: (1, 10) (1.5, 15) concordant → τ = 1
    #         group a=2: (2, 20) (2.5, 25) concordant → τ = 1
    #         group a=3: (3, 30) (3.5, 18) discordant → τ = −1
    psi_b = (1 + 1 - 1) / 3
    result = granulated_agreement(table, ["a", "b"], ["a", "b"], "m", "g")
    per_axis = {a.axis: a for a in result.axes}
    assert per_axis["a"].psi == pytest.approx(psi_a)
    assert per_axis["b"].psi == pytest.approx(psi_b)
    assert result.psi == pytest.approx((psi_a + psi_b) / 2)
    assert (per_axis["a"].groups, per_axis["a"].pairs) == (2, 6)
    assert (per_axis["b"].groups, per_axis["b"].pairs) == (3, 3)
    # sign-errors: axis a has 1 discordant pair of 6, axis b 1 of 3; 2 of 9 overall
    assert per_axis["a"].sign_error_mean == pytest.approx(1 / 6)
    assert per_axis["b"].sign_error_mean == pytest.approx(1 / 3)
    assert result.sign_error_mean == pytest.approx(2 / 9)
    assert result.sign_error_worst == 1.0
    assert result.pairs == 9
    # the robust view: of 9 environment pairs, 2 are ordered wrongly
    from analysis.granulated import agreement_table, wrong_sign_share

    assert wrong_sign_share([e for a in result.axes for e in a.environment_errors]) == pytest.approx(2 / 9)
    table = agreement_table({("m", "g"): result}).set_index("axis")
    assert table.loc["a", "wrong_sign_share"] == pytest.approx(1 / 6)
    assert table.loc["b", "wrong_sign_share"] == pytest.approx(1 / 3)


def test_sign_error_averages_over_seeds_per_pair_of_settings():
    # two settings of axis a, three seeds: the order agrees for seeds 0 and 1, not for seed 2
    table = pd.DataFrame({"a": [1, 2] * 3, "seed": [0, 0, 1, 1, 2, 2],
                          "m": [1.0, 2.0, 1.0, 2.0, 1.0, 2.0],
                          "g": [0.1, 0.2, 0.1, 0.3, 0.3, 0.2]})
    result = granulated_agreement(table, ["a"], ["a", "seed"], "m", "g")
    assert result.pairs == 3
    assert result.sign_error_mean == pytest.approx(1 / 3)   # one environment pair, error 1/3
    assert result.sign_error_worst == pytest.approx(1 / 3)
    assert sign_error(1.0, 1.0, 0.1, 0.2) == 0.5            # a tie counts one half


def test_granulated_not_available_without_one_axis_pairs():
    rng = np.random.default_rng(3)
    tpe = pd.DataFrame({"rho": rng.uniform(0.01, 0.5, 12), "alpha": rng.uniform(0, 0.5, 12),
                        "m": rng.lognormal(size=12), "g": rng.uniform(size=12)})
    result = granulated_agreement(tpe, ["rho", "alpha"], ["rho", "alpha"], "m", "g")
    assert np.isnan(result.psi) and result.pairs == 0
    assert "not available" in result.note and "TPE" in result.note
    assert all(a.pairs == 0 and "differ in" in a.note for a in result.axes)


def test_partial_correlation_separates_training_loss_proxy_from_genuine_measure():
    rng = np.random.default_rng(4)
    n = 400
    train_loss = rng.uniform(0.01, 0.5, n)
    genuine = rng.lognormal(sigma=0.8, size=n)
    proxy = np.exp(3 * train_loss) * (1 + rng.normal(scale=1e-3, size=n))   # tracks training loss only
    test_error = 0.1 + 0.3 * train_loss + 0.03 * np.log(genuine) + rng.normal(scale=0.01, size=n)
    r_proxy, _ = partial_spearman(proxy, test_error, train_loss)
    r_genuine, p_genuine = partial_spearman(genuine, test_error, train_loss)
    assert abs(stats.kendalltau(proxy, test_error).statistic) > 0.3   # raw association is strong
    assert abs(r_proxy) < 0.2
    assert r_genuine > 0.5 and p_genuine < 1e-6


def test_partial_p_value_has_n_minus_3_degrees_of_freedom():
    rng = np.random.default_rng(5)
    x, y, z = rng.normal(size=(3, 15))
    r, p = partial_spearman(x, y, z)
    t = r * np.sqrt((15 - 3) / (1 - r**2))
    assert p == pytest.approx(2 * stats.t.sf(abs(t), df=15 - 3), rel=1e-8)


def _mediated_grid(seed: int = 6) -> pd.DataFrame:
    """rho × lr_shape × seed; the target depends on the hyperparameters only through
    the measure (full mediation), a second measure is unrelated noise."""
    rng = np.random.default_rng(seed)
    rows = [{"rho": rho, "lr_shape": shape, "seed": s}
            for rho in (0.01, 0.03, 0.1, 0.3, 1.0) for shape in ("constant", "cosine") for s in range(4)]
    frame = pd.DataFrame(rows)
    log_sharp = -np.log(frame["rho"]) + 0.8 * (frame["lr_shape"] == "cosine") + rng.normal(0, 0.3, len(frame))
    frame["sharpness_mediator"] = np.exp(log_sharp)
    frame["sharpness_noise"] = rng.lognormal(size=len(frame))
    frame["final_test_error"] = 0.2 + 0.04 * log_sharp + rng.normal(0, 0.005, len(frame))
    frame["final_train_loss"] = rng.uniform(0.01, 0.1, len(frame))
    return frame


def test_hyperparameter_regression_shrinks_when_measure_mediates():
    frame = _mediated_grid()
    mediated = hyperparameter_regression(frame, target="final_test_error", measure="sharpness_mediator",
                                         axes=["rho", "lr_shape"])
    unrelated = hyperparameter_regression(frame, target="final_test_error", measure="sharpness_noise",
                                          axes=["rho", "lr_shape"])
    assert mediated.note == ""
    assert mediated.r2_with > mediated.r2_without > 0.5
    assert mediated.shrink > 0.8                       # the hyperparameters act through the measure
    assert mediated.measure_coef == pytest.approx(0.04, abs=0.01)
    assert abs(unrelated.shrink) < 0.15
    # rho spans 100x, so it enters as its log; lr_shape is categorical
    assert set(mediated.terms["term"]) == {"log_rho", "C(lr_shape)[T.cosine]"}


def test_hyperparameter_regression_reports_too_few_trials():
    frame = _mediated_grid().iloc[[0, 4, 8]]
    result = hyperparameter_regression(frame, target="final_test_error", measure="sharpness_mediator",
                                       axes=["rho", "lr_shape"])
    assert np.isnan(result.shrink)
    assert "not available" in result.note


def test_fit_pair_recovers_planted_slope_and_flags_non_positive_measure():
    frame = _mediated_grid()
    frame["sharpness_signed"] = np.log(frame["sharpness_mediator"])  # takes negative values
    row, _, _ = fit_pair(frame, measure="sharpness_mediator", target="final_test_error",
                         axes=["rho", "lr_shape"], keys=["rho", "lr_shape", "seed"], options=FAST)
    assert row["ols_slope_ci_low"] < 0.04 < row["ols_slope_ci_high"]
    assert row["granulated_psi"] > 0.5 and row["one_axis_pairs"] == 8 * 10 + 20 * 1
    signed, _, _ = fit_pair(frame, measure="sharpness_signed", target="final_test_error",
                            axes=["rho", "lr_shape"], keys=["rho", "lr_shape", "seed"], options=FAST)
    assert np.isnan(signed["ols_slope"]) and "log fit not available" in signed["notes"]
    assert signed["lin_slope"] == pytest.approx(row["ols_slope"], rel=1e-10)   # same regressor


def test_fit_all_drops_rows_missing_the_measure():
    frame = _mediated_grid()
    frame.loc[:4, "sharpness_noise"] = np.nan
    result = fit_all(frame, measures=["sharpness_mediator", "sharpness_noise"],
                     targets=["final_test_error"], axes=["rho"], keys=["rho", "lr_shape", "seed"],
                     options=FitOptions(n_resamples=0))
    n = dict(zip(result.fits["measure"], result.fits["n"]))
    assert n == {"sharpness_mediator": 40, "sharpness_noise": 35}
    assert result.fits["kendall_ci_low"].isna().all()   # n_resamples=0: no bootstrap


def test_fit_pair_with_two_trials_says_why():
    frame = _mediated_grid().iloc[:2]
    row, _, _ = fit_pair(frame, measure="sharpness_mediator", target="final_test_error",
                         axes=[], keys=[], options=FAST)
    assert row["notes"] == "no fit: n = 2 < 3"


def test_fit_options_reject_bad_values():
    with pytest.raises(ValueError, match="confidence_level"):
        FitOptions(confidence_level=95)
    with pytest.raises(ValueError, match="n_resamples"):
        FitOptions(n_resamples=-1)


@pytest.mark.parametrize("trial, label", [
    ({"batch_growth_ratio": 1.0, "lr_shape": "constant"}, "constant"),
    ({"batch_growth_ratio": 2.0, "lr_shape": "constant"}, "+B"),
    ({"batch_growth_ratio": 2.0, "batch_stages": 1.0, "lr_shape": "constant"}, "constant"),
    ({"batch_growth_ratio": 1.0, "lr_shape": "cosine"}, "+C"),
    ({"batch_growth_ratio": 2.0, "lr_shape": "cosine"}, "+B+C"),
    ({"batch_growth_ratio": 1.0, "lr_shape": "linear"}, "+linear"),
    ({}, "constant"),
])
def test_schedule_label(trial, label):
    assert schedule_label(pd.Series(trial, dtype=object)) == label


def test_group_table_mean_and_std_per_optimizer_and_schedule():
    frame = pd.DataFrame({
        "optimizer": ["sgd", "sgd", "sam", "sam", "sam"],
        "batch_growth_ratio": [1.0, 1.0, 1.0, 2.0, 2.0],
        "lr_shape": ["constant"] * 5,
        "final_test_error": [0.30, 0.20, 0.25, 0.10, 0.14],
        "sharpness_x": [5.0, 7.0, 2.0, 1.0, 3.0],
    })
    grouping = choose_grouping(frame, ["optimizer", "batch_growth_ratio"])
    assert grouping.columns == ("optimizer", "schedule")
    table = group_table(frame, grouping, values=["final_test_error", "sharpness_x"])
    assert table[["optimizer", "schedule"]].values.tolist() == [["sgd", "constant"], ["sam", "constant"],
                                                               ["sam", "+B"]]
    assert table["n"].tolist() == [2, 1, 2]
    assert table["sharpness_x_mean"].tolist() == pytest.approx([6.0, 2.0, 2.0])
    assert table["final_test_error_std"].iloc[0] == pytest.approx(np.std([0.30, 0.20], ddof=1))
    assert np.isnan(table["final_test_error_std"].iloc[1])   # one trial: no spread


def test_coerce_param_converts_numbers_and_keeps_strings():
    assert coerce_param(pd.Series(["0.1", "1e-3", "", "None"])).tolist()[:2] == [0.1, 0.001]
    assert coerce_param(pd.Series(["0.1", "", "None"])).isna().tolist() == [False, True, True]
    assert coerce_param(pd.Series(["cosine", "constant"])).tolist() == ["cosine", "constant"]
    assert coerce_param(pd.Series(["True", "False"])).tolist() == ["True", "False"]


def test_exclusion_reasons_and_axes():
    trials = pd.DataFrame({
        schema.STATUS: ["completed", "diverged", "failed", "completed", "completed", "completed"],
        schema.ERROR: ["", "", "RuntimeError: boom", "", "", ""],
        "final_test_error": [0.1, np.nan, np.nan, np.nan, 0.2, 0.3],
        "sharpness_x": [1.0, np.nan, np.nan, 2.0, np.nan, 3.0],
        "rho": [0.1, 0.2, 0.1, 0.2, 0.1, 0.2],
        "seed": [0, 0, 1, 1, 2, 2],
        "device": ["cpu", "cuda", "cpu", "cpu", "cpu", "cpu"],
        "epochs": [3, 3, 3, 3, 3, 3],
    })
    reasons = exclusion_reasons(trials).tolist()
    assert reasons[0] == "" and reasons[5] == ""
    assert reasons[1].startswith("diverged")
    assert reasons[2] == "failed: RuntimeError: boom"
    assert "no finite final_test_error" in reasons[3]
    assert "no finite sharpness_*" in reasons[4]
    params = ["rho", "seed", "device", "epochs"]
    assert searched_axes(trials, params) == ["rho"]
    assert grouping_keys(trials, params) == ["rho", "seed"]


def test_summary_of_tpe_like_trials_says_what_is_not_available():
    from analysis.summary import SummaryInputs, summarize

    rng = np.random.default_rng(7)
    n = 8
    frame = pd.DataFrame({"rho": np.exp(rng.uniform(np.log(0.01), np.log(0.5), n)),
                          "lr_shape": rng.choice(["constant", "cosine"], n),
                          "batch_growth_ratio": rng.uniform(1, 4, n), "seed": 0})
    log_sharp = -np.log(frame["rho"]) + rng.normal(0, 0.3, n)
    frame["sharpness_x"] = np.exp(log_sharp)
    frame["final_test_error"] = 0.2 + 0.03 * log_sharp + rng.normal(0, 0.01, n)
    frame["final_train_loss"] = rng.uniform(0.01, 0.1, n)
    axes = ["rho", "lr_shape", "batch_growth_ratio"]
    fits = fit_all(frame, measures=["sharpness_x"], targets=["final_test_error"], axes=axes,
                   keys=axes, options=FAST).fits
    assert fits["one_axis_pairs"].iloc[0] == 0
    inputs = SummaryInputs("tpe", None, n, {"diverged": 1}, axes, 1, fits, 0.95)
    text = " ".join(summarize(inputs, ["final_test_error"]))
    assert "8 usable trials" in text and "(1 diverged)" in text
    assert "Ψ and the sign-error need trials that differ in one searched hyperparameter only" in text
    assert "residual degree(s) of freedom" in text   # 8 trials, 5 + 1 coefficients


def test_render_escapes_html_and_markdown_pipes(tmp_path):
    from analysis.render import Document, Section, render_html, render_markdown

    table = pd.DataFrame({"measure": ["a|b <x>"], "value": [0.123456]})
    document = Document("t <1>", ("s & t",), (Section("sec", ("p",), table=table, notes=("n1",)),))
    page = render_html(document, tmp_path)
    assert "a|b &lt;x&gt;" in page and "t &lt;1&gt;" in page and "s &amp; t" in page and "0.123" in page
    markdown = render_markdown(document)
    assert "| a\\|b <x> | 0.123 |" in markdown and "- n1" in markdown
