"""The plain-language summary that opens a report: what the fits say, with caveats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import schema
from analysis.criterion import DEFAULT_MAX_TRAIN_ERROR, Criterion, TrainingFit, exclusion_phrases

# partial correlations with a p-value below this are called an association that remains
SIGNIFICANT = 0.05


@dataclass(frozen=True)
class SummaryInputs:
    experiment: str
    search_run_id: str | None
    n_usable: int
    excluded: dict[str, int]          # excluded trials per kind (TrialTable.exclusion_kinds)
    axes: Sequence[str]
    seeds: int                        # distinct seeds among usable trials
    fits: pd.DataFrame
    confidence_level: float
    definitions_note: str = ""        # which measures were split by definition ("" when none)
    training_fit: TrainingFit = TrainingFit(Criterion(), DEFAULT_MAX_TRAIN_ERROR)


def _ci(row: pd.Series, low: str, high: str) -> str:
    if not (np.isfinite(row[low]) and np.isfinite(row[high])):
        return "CI not available"
    return f"CI {row[low]:.2f} to {row[high]:.2f}"


def _excludes_zero(row: pd.Series) -> bool:
    return bool(row["kendall_ci_low"] > 0 or row["kendall_ci_high"] < 0)


def data_paragraph(inputs: SummaryInputs) -> str:
    source = f"experiment “{inputs.experiment}”"
    if inputs.search_run_id:
        source += f" (search run {inputs.search_run_id})"
    text = f"This report covers {inputs.n_usable} usable trials of {source}."
    dropped = sum(inputs.excluded.values())
    if dropped:
        parts = ", ".join(exclusion_phrases(inputs.excluded, inputs.training_fit))
        text += f" {dropped} trials were left out of every fit ({parts})."
    comparison = inputs.training_fit.sentence()
    if comparison:
        text += f" {comparison}"
    axes = ", ".join(inputs.axes) if inputs.axes else "none"
    text += f" Hyperparameters that vary across the trials: {axes}."
    budgets = [a for a in inputs.axes if a in (schema.BUDGET, schema.BUDGET_UNIT)]
    if budgets:
        text += (f" Budgets differ ({' and '.join(budgets)} {'vary' if len(budgets) > 1 else 'varies'}, "
                 "treated as a searched hyperparameter); the Groups table shows the steps and gradient "
                 "evaluations each cell got.")
    if inputs.seeds > 1:
        text += f" Each setting was run with up to {inputs.seeds} seeds."
    if inputs.definitions_note:
        text += f" {inputs.definitions_note}"
    return text


def headline_paragraph(fits: pd.DataFrame, target: str, level: float) -> str:
    rows = fits[(fits["target"] == target) & np.isfinite(fits["kendall_tau"].astype(float))]
    if rows.empty:
        return f"No measure could be fitted against {target}."
    rows = rows.assign(strength=rows["kendall_tau"].abs()).sort_values("strength", ascending=False)
    best = rows.iloc[0]
    direction = "higher" if best["kendall_tau"] > 0 else "lower"
    measure, ci = best["measure"], _ci(best, "kendall_ci_low", "kendall_ci_high")
    text = (f"Against {target}, the measure whose ranking agrees best is {measure}: "
            f"Kendall τ = {best['kendall_tau']:.2f} ({level:.0%} {ci}, n = {int(best['n'])}); "
            f"trials with a larger {measure} tend to have a {direction} {target}.")
    if np.isfinite(best["ols_slope"]):
        change = best["ols_slope"] * np.log(10)
        text += (f" A tenfold larger {measure} goes with a change of {change:+.3g} "
                 f"in {target} ({_ci_scaled(best)}; R² = {best['r2']:.2f}).")
    reliable = [r["measure"] for _, r in rows.iterrows() if _excludes_zero(r)]
    unclear = [m for m in rows["measure"] if m not in reliable]
    if reliable:
        text += f" τ's CI excludes zero for: {', '.join(reliable)}."
    if unclear:
        text += f" It overlaps zero (no reliable association at this n) for: {', '.join(unclear)}."
    return text


def _ci_scaled(row: pd.Series) -> str:
    low, high = row["ols_slope_ci_low"] * np.log(10), row["ols_slope_ci_high"] * np.log(10)
    if not (np.isfinite(low) and np.isfinite(high)):
        return "CI not available"
    return f"CI {low:+.3g} to {high:+.3g}"


def confounding_paragraph(fits: pd.DataFrame, target: str) -> str:
    fitted = fits[(fits["target"] == target) & np.isfinite(fits["kendall_tau"].astype(float))]
    rows = fitted[np.isfinite(fitted["partial_r"].astype(float))]
    proxies = [m for m, note in zip(fitted["measure"], fitted["notes"].fillna(""))
               if "partial correlation undefined" in note]
    proxy_text = (f" The ranks of {', '.join(proxies)} follow {schema.CONTROL} exactly: no information "
                  "beyond training loss." if proxies else "")
    if rows.empty and proxies:
        return f"Holding {schema.CONTROL} fixed is not possible:{proxy_text}"
    if rows.empty:
        return (f"The partial correlation controlling for {schema.CONTROL} is not available, so part of "
                "any association may only reflect how well each trial fit its training set.")
    kept = [r for _, r in rows.iterrows() if r["partial_p"] < SIGNIFICANT]
    explained = [r["measure"] for _, r in rows.iterrows()
                 if _excludes_zero(r) and r["partial_p"] >= SIGNIFICANT]
    text = f"Holding {schema.CONTROL} fixed (partial Spearman correlation): "
    if kept:
        text += "an association remains (p < 0.05) for " + ", ".join(
            f"{r['measure']} (r = {r['partial_r']:.2f})" for r in kept) + "."
    else:
        text += "no measure keeps an association distinguishable from zero (p < 0.05)."
    if explained:
        text += (f" For {', '.join(explained)}, the association with {target} is no longer distinguishable "
                 "from zero: it is largely explained by training loss.")
    return text + proxy_text


def _regression_note(notes: str) -> str:
    marker = "hyperparameter regression: "
    return notes.split(marker, 1)[1].split("; measure enters")[0] if marker in notes else ""


def hyperparameter_paragraph(fits: pd.DataFrame, target: str) -> str:
    rows = fits[(fits["target"] == target) & np.isfinite(fits["r2_hparams_measure"].astype(float))]
    if rows.empty:
        notes = fits.loc[fits["target"] == target, "notes"].fillna("")
        reason = next((_regression_note(n) for n in notes if _regression_note(n)), "no hyperparameter varies")
        return f"The regression on the searched hyperparameters is not available ({reason})."
    best = rows.assign(gain=rows["r2_hparams_measure"] - rows["r2_hparams"]).sort_values("gain").iloc[-1]
    text = (f"The searched hyperparameters alone explain R² = {best['r2_hparams']:.2f} of {target}; "
            f"adding {best['measure']} raises it to {best['r2_hparams_measure']:.2f}")
    if np.isfinite(best["hparams_shrink"]):
        text += (f", and the hyperparameters' coefficients shrink by {best['hparams_shrink']:.0%} "
                 "(the share of their effect that runs through this measure).")
    else:
        text += " (coefficients not identified)."
    caution = _regression_note(best["notes"] if isinstance(best["notes"], str) else "")
    return text + (f" Caution: {caution}." if caution else "")


def granulated_paragraph(fits: pd.DataFrame, target: str) -> str:
    rows = fits[fits["target"] == target]
    available = rows[np.isfinite(rows["granulated_psi"].astype(float))]
    if available.empty:
        return ("The granulated Kendall Ψ and the sign-error need trials that differ in one searched "
                "hyperparameter only; these trials have none (typical of TPE/random search; a grid "
                "search gives such pairs), so they are not available.")
    best = available.sort_values("granulated_psi").iloc[-1]
    return (f"Over trials that differ in one hyperparameter only ({int(best['one_axis_pairs'])} pairs), "
            f"{best['measure']} has the highest granulated Kendall Ψ = {best['granulated_psi']:.2f}, with a "
            f"mean sign-error of {best['sign_error_mean']:.2f} and a worst case of "
            f"{best['sign_error_worst']:.2f} (0 = always ordered like {target}, 0.5 = chance).")


def caveats_paragraph(inputs: SummaryInputs) -> str:
    text = (f"Caveats: with {inputs.n_usable} trials the intervals are wide, and a τ whose CI overlaps "
            "zero is not evidence of a relationship. These are correlations across trials: the "
            "hyperparameters move both sharpness and test error, so they do not show that flatness "
            "causes generalization. p-values are not corrected for testing many measures and targets.")
    if (inputs.fits["one_axis_pairs"].fillna(0) < 10).all():
        text += " Few or no one-axis pairs exist, so Ψ and the sign-error rest on little data."
    return text


def summarize(inputs: SummaryInputs, targets: Sequence[str]) -> list[str]:
    """Paragraphs, primary target (the first) first."""
    primary = targets[0]
    paragraphs = [data_paragraph(inputs), headline_paragraph(inputs.fits, primary, inputs.confidence_level),
                  confounding_paragraph(inputs.fits, primary), hyperparameter_paragraph(inputs.fits, primary),
                  granulated_paragraph(inputs.fits, primary)]
    for target in targets[1:]:
        paragraphs.append(headline_paragraph(inputs.fits, target, inputs.confidence_level))
    paragraphs.append(caveats_paragraph(inputs))
    return paragraphs
