"""Statistics of one measure against one target across trials.

Every statistic comes from scipy or statsmodels:

- rank correlation: Kendall τ-b (``scipy.stats.kendalltau``) and Spearman ρ
  (``scipy.stats.spearmanr``), with paired BCa bootstrap CIs
  (``scipy.stats.bootstrap``, seeded; percentile CIs where BCa is undefined);
- OLS of the target on ln(measure) and on the measure (``statsmodels.OLS``) with
  HC3 heteroskedasticity-robust standard errors and t-based CIs;
- partial Spearman correlation controlling for ``final_train_loss``: measure,
  target and control are ranked, both ranks are residualized on the control's rank
  by OLS and the residuals correlated with ``scipy.stats.pearsonr``; the p-value is
  the t-test of the measure's rank in OLS(rank target ~ rank control + rank
  measure), which has the correct n − 3 degrees of freedom;
- a multiple regression of the target on the searched hyperparameters, without and
  with ln(measure) (``statsmodels.formula.api.ols``): R² both ways, the measure's
  coefficient, and how far the hyperparameter coefficients shrink once the measure
  is in the model (the share of their effect that goes through the measure).
"""

from __future__ import annotations

import keyword
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats

from analysis import schema
from analysis.granulated import Granulated, granulated_agreement

# columns of fits.csv, in order
FIT_COLUMNS = [
    "measure", "target", "n",
    "kendall_tau", "kendall_p", "kendall_ci_low", "kendall_ci_high",
    "spearman", "spearman_p", "spearman_ci_low", "spearman_ci_high",
    "ols_slope", "ols_slope_se", "ols_slope_ci_low", "ols_slope_ci_high", "ols_slope_p",
    "ols_intercept", "r2",
    "lin_slope", "lin_slope_se", "lin_slope_ci_low", "lin_slope_ci_high", "lin_slope_p",
    "lin_intercept", "lin_r2",
    "granulated_psi", "sign_error_mean", "sign_error_worst", "one_axis_pairs",
    "partial_r", "partial_p",
    "r2_hparams", "r2_hparams_measure", "hparams_measure_coef", "hparams_measure_p", "hparams_shrink",
    "notes",
]
# a positive hyperparameter spanning at least this ratio enters the regression as its log
LOG_SPAN = 10.0
# below this many residual degrees of freedom the hyperparameter regression gets a caution
FEW_RESIDUAL_DF = 5


@dataclass(frozen=True)
class FitOptions:
    """Bootstrap and CI settings shared by every fit."""

    n_resamples: int = 999
    confidence_level: float = 0.95
    seed: int = 0
    control: str = schema.CONTROL

    def __post_init__(self) -> None:
        if self.n_resamples < 0:
            raise ValueError(f"n_resamples must be >= 0 (0 = no bootstrap CI), got {self.n_resamples!r}")
        if not 0.0 < self.confidence_level < 1.0:
            raise ValueError(f"confidence_level must be in (0, 1), got {self.confidence_level!r}")


# ---------------------------------------------------------------- rank correlation

def _kendall(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return stats.kendalltau(x, y, axis=axis).statistic


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    # Spearman's ρ is Pearson's r of the ranks; this form is vectorized over resamples
    return stats.pearsonr(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis=axis).statistic


def bootstrap_ci(x: np.ndarray, y: np.ndarray, statistic, options: FitOptions) -> tuple[float, float]:
    """Paired bootstrap CI (BCa, or percentile where BCa is undefined); nan if neither is."""
    if options.n_resamples == 0:
        return np.nan, np.nan
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples are judged by the result below
            result = stats.bootstrap((x, y), statistic, paired=True, vectorized=True,
                                     n_resamples=options.n_resamples, method=method,
                                     confidence_level=options.confidence_level,
                                     rng=np.random.default_rng(options.seed))
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high)
    return np.nan, np.nan


def rank_correlations(x: np.ndarray, y: np.ndarray, options: FitOptions) -> dict[str, float]:
    kendall = stats.kendalltau(x, y)
    spearman = stats.spearmanr(x, y)
    k_low, k_high = bootstrap_ci(x, y, _kendall, options)
    s_low, s_high = bootstrap_ci(x, y, _spearman, options)
    return {"kendall_tau": float(kendall.statistic), "kendall_p": float(kendall.pvalue),
            "kendall_ci_low": k_low, "kendall_ci_high": k_high,
            "spearman": float(spearman.statistic), "spearman_p": float(spearman.pvalue),
            "spearman_ci_low": s_low, "spearman_ci_high": s_high}


# ---------------------------------------------------------------- simple OLS

@dataclass(frozen=True)
class OlsFit:
    slope: float
    slope_se: float       # HC3
    slope_ci_low: float
    slope_ci_high: float
    slope_p: float
    intercept: float
    r2: float
    n: int


def _ols(x: np.ndarray, y: np.ndarray):
    return sm.OLS(y, sm.add_constant(x, has_constant="add")).fit(cov_type="HC3", use_t=True)


def ols_fit(x: np.ndarray, y: np.ndarray, *, confidence_level: float = 0.95) -> OlsFit:
    """y = a + b·x by OLS; CI of b from HC3 standard errors and Student t (n − 2 df)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HC3 with a leverage-1 point: nan, kept as nan
        result = _ols(x, y)
        low, high = np.asarray(result.conf_int(alpha=1.0 - confidence_level))[1]
    return OlsFit(float(result.params[1]), float(result.bse[1]), float(low), float(high),
                  float(result.pvalues[1]), float(result.params[0]), float(result.rsquared), len(y))


def fit_band(x: np.ndarray, y: np.ndarray, grid: np.ndarray, *, log: bool,
             confidence_level: float = 0.95) -> pd.DataFrame:
    """Fitted mean of y over ``grid`` with its (HC3) confidence band: ``x, mean, low, high``;
    ``log`` regresses on ln(x)."""
    transform = np.log if log else np.asarray
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in ols_fit: an undefined HC3 band stays nan
        result = _ols(transform(x), y)
        frame = result.get_prediction(sm.add_constant(transform(grid), has_constant="add")).summary_frame(
            alpha=1.0 - confidence_level)
    return pd.DataFrame({"x": grid, "mean": frame["mean"].to_numpy(),
                         "low": frame["mean_ci_lower"].to_numpy(), "high": frame["mean_ci_upper"].to_numpy()})


def _ols_columns(fit: OlsFit | None, prefix: str, r2_name: str) -> dict[str, float]:
    names = ["slope", "slope_se", "slope_ci_low", "slope_ci_high", "slope_p", "intercept"]
    if fit is None:
        return {**{f"{prefix}_{k}": np.nan for k in names}, r2_name: np.nan}
    return {**{f"{prefix}_{k}": getattr(fit, k) for k in names}, r2_name: fit.r2}


# ---------------------------------------------------------------- partial correlation

def partial_spearman(x: np.ndarray, y: np.ndarray, control: np.ndarray) -> tuple[float, float]:
    """Partial Spearman r(x, y | control) and its p-value (see module docstring).

    Raises ``ValueError`` when the ranks of x or y are a linear function of the control's
    ranks (then the partial correlation is 0/0).
    """
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, control))
    z = sm.add_constant(rz, has_constant="add")
    res_x = sm.OLS(rx, z).fit().resid
    res_y = sm.OLS(ry, z).fit().resid
    for name, residual, ranks in (("measure", res_x, rx), ("target", res_y, ry)):
        if np.ptp(residual) <= 1e-9 * np.ptp(ranks):
            raise ValueError(f"the {name}'s ranks are a linear function of the control's ranks")
    r = stats.pearsonr(res_x, res_y).statistic
    joint = sm.OLS(ry, np.column_stack([z, rx])).fit()
    return float(r), float(joint.pvalues[2])


# ---------------------------------------------------------------- hyperparameter regression

@dataclass(frozen=True)
class HyperparameterRegression:
    r2_without: float
    r2_with: float
    measure_coef: float
    measure_p: float
    shrink: float
    note: str
    terms: pd.DataFrame  # term, coef_without, coef_with, shrink


def _safe_name(name: str) -> str:
    """A formula-safe column name (patsy parses names as Python)."""
    safe = re.sub(r"\W", "_", name)
    return safe if safe.isidentifier() and not keyword.iskeyword(safe) else f"p_{safe}"


def hyperparameter_design(trials: pd.DataFrame, axes: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Columns and formula terms for the searched hyperparameters.

    Numeric axes enter as-is, or as their log when all values are positive and span
    ≥ ``LOG_SPAN`` (ρ, lr, batch size searched on a log scale); string axes and numeric
    axes with missing values (conditional parameters) enter as categories ``C(...)``.
    """
    design, terms = pd.DataFrame(index=trials.index), []
    for axis in axes:
        values, name = trials[axis], _safe_name(axis)
        numeric = pd.api.types.is_numeric_dtype(values) and values.notna().all()
        if numeric and (values > 0).all() and values.max() / values.min() >= LOG_SPAN:
            design[f"log_{name}"] = np.log(values.astype(float))
            terms.append(f"log_{name}")
        elif numeric:
            design[name] = values.astype(float)
            terms.append(name)
        else:
            design[name] = values.astype(str)
            terms.append(f"C({name})")
    return design, terms


def _fit_formula(formula: str, data: pd.DataFrame):
    """The fitted model, or the reason it cannot identify its coefficients."""
    model = smf.ols(formula, data)
    n, k = model.exog.shape
    if n <= k:
        return None, f"not available: {n} trials for {k} coefficients"
    result = model.fit()
    rank = np.linalg.matrix_rank(model.exog)
    if rank < k:
        return result, (f"rank-deficient (rank {rank} of {k} columns: hyperparameters collinear with "
                        "each other or with the measure); R² shown, coefficients not identified")
    return result, ""


def hyperparameter_regression(trials: pd.DataFrame, *, target: str, measure: str,
                              axes: Sequence[str]) -> HyperparameterRegression:
    """target ~ hyperparameters, and target ~ hyperparameters + ln(measure).

    shrink_j = 1 − β_j(with) / β_j(without) per coefficient; the summary
    ``shrink`` = 1 − Σ_j |β_j(with)| s_j / Σ_j |β_j(without)| s_j with s_j the standard
    deviation of design column j (so coefficients of different units add up).
    """
    empty = pd.DataFrame(columns=["term", "coef_without", "coef_with", "shrink"])
    if not axes:
        return HyperparameterRegression(np.nan, np.nan, np.nan, np.nan, np.nan,
                                        "not available: no hyperparameter varies", empty)
    design, terms = hyperparameter_design(trials, axes)
    values = trials[measure].astype(float)
    log = bool((values > 0).all())
    design["target_value"] = trials[target].astype(float)
    design["measure_value"] = np.log(values) if log else values
    base = "target_value ~ " + " + ".join(terms)
    without, note_without = _fit_formula(base, design)
    with_measure, note_with = _fit_formula(base + " + measure_value", design)
    few_df = (with_measure is not None and not note_with and with_measure.df_resid < FEW_RESIDUAL_DF)
    notes = [f"hyperparameters only: {note_without}" if note_without else "",
             f"with the measure: {note_with}" if note_with else "",
             f"only {int(with_measure.df_resid)} residual degree(s) of freedom with the measure: "
             "R² is inflated" if few_df else "",
             "" if log else "measure enters linearly (non-positive values)"]
    note = "; ".join(n for n in notes if n)
    r2_without = without.rsquared if without is not None else np.nan
    r2_with = with_measure.rsquared if with_measure is not None else np.nan
    if note_without or note_with:
        return HyperparameterRegression(r2_without, r2_with, np.nan, np.nan, np.nan, note, empty)
    table, shrink = _shrinkage(without, with_measure)
    return HyperparameterRegression(r2_without, r2_with, float(with_measure.params["measure_value"]),
                                    float(with_measure.pvalues["measure_value"]), shrink, note, table)


def _shrinkage(without, with_measure) -> tuple[pd.DataFrame, float]:
    names = [n for n in without.params.index if n != "Intercept"]
    before = without.params[names]
    after = with_measure.params[names]
    scale = pd.Series(without.model.exog.std(axis=0), index=without.params.index)[names]
    table = pd.DataFrame({"term": names, "coef_without": before.to_numpy(), "coef_with": after.to_numpy(),
                          "shrink": (1.0 - after / before).to_numpy()})
    total = float((before.abs() * scale).sum())
    shrink = 1.0 - float((after.abs() * scale).sum()) / total if total > 0 else np.nan
    return table, shrink


# ---------------------------------------------------------------- all measures × targets

@dataclass(frozen=True)
class FitResults:
    fits: pd.DataFrame                               # FIT_COLUMNS, one row per measure × target
    granulated: dict[tuple[str, str], Granulated]    # per (measure, target)
    regression_terms: pd.DataFrame                   # per (measure, target, term)


def fit_pair(trials: pd.DataFrame, *, measure: str, target: str, axes: Sequence[str],
             keys: Sequence[str], options: FitOptions) -> tuple[dict, Granulated, pd.DataFrame]:
    """Every statistic of one measure against one target (rows with both finite)."""
    data = trials[np.isfinite(trials[measure].astype(float)) & np.isfinite(trials[target].astype(float))]
    x, y = data[measure].to_numpy(float), data[target].to_numpy(float)
    row: dict = {"measure": measure, "target": target, "n": len(data)}
    notes: list[str] = []
    if len(data) < schema.MIN_TRIALS or np.ptp(x) == 0 or np.ptp(y) == 0:
        why = (f"n = {len(data)} < {schema.MIN_TRIALS}" if len(data) < schema.MIN_TRIALS
               else "the measure or the target is constant")
        row["notes"] = f"no fit: {why}"
        return row, Granulated(np.nan, np.nan, np.nan, 0, f"not available: {why}", ()), pd.DataFrame()
    row.update(rank_correlations(x, y, options))
    if (x > 0).all():
        log_fit = ols_fit(np.log(x), y, confidence_level=options.confidence_level)
        row.update(_ols_columns(log_fit, "ols", "r2"))
    else:
        row.update(_ols_columns(None, "ols", "r2"))
        notes.append(f"log fit not available: measure has non-positive values (min {x.min():.3g})")
    row.update(_ols_columns(ols_fit(x, y, confidence_level=options.confidence_level), "lin", "lin_r2"))
    # an axis constant over these trials (e.g. one that varies only between the definitions
    # of a split measure) carries nothing here: it would only make the design rank-deficient
    axes = [a for a in axes if data[a].astype(str).nunique() > 1]
    agreement = granulated_agreement(data, axes, keys, measure, target)
    row.update(granulated_psi=agreement.psi, sign_error_mean=agreement.sign_error_mean,
               sign_error_worst=agreement.sign_error_worst, one_axis_pairs=agreement.pairs)
    notes += [f"granulated: {agreement.note}"] if agreement.note else []
    row.update(_partial_columns(data, x, y, options.control, notes))
    regression = hyperparameter_regression(data, target=target, measure=measure, axes=axes)
    row.update(r2_hparams=regression.r2_without, r2_hparams_measure=regression.r2_with,
               hparams_measure_coef=regression.measure_coef, hparams_measure_p=regression.measure_p,
               hparams_shrink=regression.shrink)
    notes += [f"hyperparameter regression: {regression.note}"] if regression.note else []
    row["notes"] = "; ".join(notes)
    terms = regression.terms.assign(measure=measure, target=target)
    return row, agreement, terms


def _partial_columns(data: pd.DataFrame, x: np.ndarray, y: np.ndarray, control: str,
                     notes: list[str]) -> dict[str, float]:
    if control not in data or not np.isfinite(data[control].astype(float)).all():
        notes.append(f"partial correlation not available: {control} missing")
        return {"partial_r": np.nan, "partial_p": np.nan}
    if len(x) < 4:
        notes.append(f"partial correlation not available: n = {len(x)} < 4")
        return {"partial_r": np.nan, "partial_p": np.nan}
    try:
        r, p = partial_spearman(x, y, data[control].to_numpy(float))
    except ValueError as err:
        notes.append(f"partial correlation undefined: {err} (no information beyond {control})")
        return {"partial_r": np.nan, "partial_p": np.nan}
    return {"partial_r": r, "partial_p": p}


def fit_all(trials: pd.DataFrame, *, measures: Sequence[str], targets: Sequence[str],
            axes: Sequence[str], keys: Sequence[str], options: FitOptions = FitOptions()) -> FitResults:
    """``fit_pair`` for every measure × target."""
    rows, agreements, terms = [], {}, []
    for target in targets:
        for measure in measures:
            row, agreement, term_table = fit_pair(trials, measure=measure, target=target, axes=axes,
                                                  keys=keys, options=options)
            rows.append(row)
            agreements[(measure, target)] = agreement
            terms.append(term_table)
    fits = pd.DataFrame(rows).reindex(columns=FIT_COLUMNS)
    term_columns = ["measure", "target", "term", "coef_without", "coef_with", "shrink"]
    nonempty = [t for t in terms if not t.empty]
    regression_terms = (pd.concat(nonempty, ignore_index=True)[term_columns] if nonempty
                        else pd.DataFrame(columns=term_columns))
    return FitResults(fits, agreements, regression_terms)
