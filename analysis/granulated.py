"""Agreement of a measure with a target over trials that differ in one axis only.

Granulated Kendall coefficient (Jiang et al., "Fantastic Generalization Measures
and Where to Find Them", ICLR 2020, §4 eq. 4–5): for axis i, the trials that
share every other parameter form a group; ψ_i is the mean over groups of
Kendall's τ(measure, target) inside the group, and Ψ = mean_i ψ_i.

Sign-error (Dziugaite et al., "In Search of Robust Measures of Generalization",
NeurIPS 2020, §3): for two trials a, b,
    e(a, b) = ½ (1 − sgn(C_a − C_b) · sgn(g_a − g_b))   (a tie counts ½);
an *environment pair* is two hyperparameter settings that differ in one axis; its
sign-error is e averaged over the seeds run at both settings (pairs share a seed).
We report the mean over environment pairs, the worst (max) one, and the share of
environment pairs whose sign-error is above ½ (the distribution's robust summary).

"Every other parameter" means every parameter that varies across the trials,
the seed included; run settings (device, threads…) are ignored. TPE trials
rarely share all other values, so an axis may have no groups: its ψ is then
"not available" and the reason is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from analysis import schema


@dataclass(frozen=True)
class AxisAgreement:
    axis: str
    groups: int            # groups with ≥ 2 distinct values of the axis
    pairs: int             # trial pairs that differ in this axis only
    psi: float             # ψ_axis, nan when not available
    sign_error_mean: float
    sign_error_worst: float
    note: str
    environment_errors: tuple[float, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Granulated:
    psi: float
    sign_error_mean: float
    sign_error_worst: float
    pairs: int
    note: str
    axes: tuple[AxisAgreement, ...]


def one_axis_groups(trials: pd.DataFrame, axis: str, keys: Sequence[str]) -> list[pd.DataFrame]:
    """Groups of trials equal in every key but ``axis`` with ≥ 2 distinct ``axis`` values."""
    others = [k for k in keys if k != axis]
    labels = trials[others].astype(str) if others else None
    grouped = [trials] if labels is None else [g for _, g in trials.groupby(
        [labels[k] for k in others], sort=True, dropna=False)]
    return [g for g in grouped if g[axis].astype(str).nunique() >= 2]


def sign_error(measure_a: float, measure_b: float, target_a: float, target_b: float) -> float:
    """½ (1 − sgn ΔC · sgn Δg) (Dziugaite et al. 2020)."""
    return 0.5 * (1.0 - np.sign(measure_a - measure_b) * np.sign(target_a - target_b))


def axis_agreement(trials: pd.DataFrame, axis: str, keys: Sequence[str],
                   measure: str, target: str) -> AxisAgreement:
    data = trials.dropna(subset=[measure, target])
    groups = one_axis_groups(data, axis, keys)
    if not groups:
        return AxisAgreement(axis, 0, 0, np.nan, np.nan, np.nan,
                             f"not available: no two trials differ in {axis} only (all other searched "
                             "parameters and the seed equal); TPE/random searches rarely give such "
                             "pairs, a grid or design: {coupled: true} does")
    taus = [stats.kendalltau(g[measure], g[target]).statistic for g in groups]
    finite = [t for t in taus if np.isfinite(t)]
    env_errors = _environment_sign_errors(groups, axis, keys, measure, target)
    pairs = sum(_count_pairs(g[axis]) for g in groups)
    notes = []
    if len(finite) < len(taus):
        notes.append(f"{len(taus) - len(finite)} of {len(taus)} groups had a constant measure "
                     "or target (τ undefined) and were skipped")
    return AxisAgreement(axis, len(groups), pairs, float(np.mean(finite)) if finite else np.nan,
                         float(np.mean(env_errors)), float(np.max(env_errors)), "; ".join(notes),
                         tuple(env_errors))


def _count_pairs(values: pd.Series) -> int:
    labels = values.astype(str).to_numpy()
    return sum(1 for a, b in combinations(labels, 2) if a != b)


def _environment_sign_errors(groups: list[pd.DataFrame], axis: str, keys: Sequence[str],
                             measure: str, target: str) -> list[float]:
    """Sign-error per environment pair, averaged over the seeds (the groups fix the seed)."""
    settings = [k for k in keys if k not in (axis, schema.SEED)]
    per_env: dict[tuple, list[float]] = {}
    for group in groups:
        rows = group.to_dict("records")
        for a, b in combinations(rows, 2):
            if str(a[axis]) == str(b[axis]):
                continue
            env = (tuple(str(a[k]) for k in settings), tuple(sorted((str(a[axis]), str(b[axis])))))
            per_env.setdefault(env, []).append(sign_error(a[measure], b[measure], a[target], b[target]))
    return [float(np.mean(errors)) for errors in per_env.values()]


def granulated_agreement(trials: pd.DataFrame, axes: Sequence[str], keys: Sequence[str],
                         measure: str, target: str) -> Granulated:
    """Ψ, mean and worst sign-error over all ``axes`` (see module docstring)."""
    if not axes:
        return Granulated(np.nan, np.nan, np.nan, 0, "not available: no hyperparameter varies "
                          "across the trials", ())
    per_axis = tuple(axis_agreement(trials, a, keys, measure, target) for a in axes)
    psis = [a.psi for a in per_axis if np.isfinite(a.psi)]
    pairs = sum(a.pairs for a in per_axis)
    errors = [a for a in per_axis if a.pairs]
    if not psis and not errors:
        return Granulated(np.nan, np.nan, np.nan, 0,
                          "not available: no two trials differ in one searched axis only "
                          "(typical of TPE/random search; a grid gives such pairs)", per_axis)
    missing = [a.axis for a in per_axis if not np.isfinite(a.psi)]
    note = f"Ψ averages {len(psis)} of {len(axes)} axes; none for {', '.join(missing)}" if missing else ""
    pooled = [e for a in errors for e in a.environment_errors]
    return Granulated(float(np.mean(psis)) if psis else np.nan, float(np.mean(pooled)),
                      float(np.max(pooled)), pairs, note, per_axis)


def wrong_sign_share(environment_errors: Sequence[float]) -> float:
    """Dziugaite et al.'s robust view: the share of environment pairs whose sign-error is
    above ½, where the measure orders the pair the wrong way more often than not."""
    return float(np.mean(np.asarray(environment_errors) > 0.5)) if len(environment_errors) else np.nan


def agreement_table(results: dict[tuple[str, str], Granulated]) -> pd.DataFrame:
    """Long table: one row per (measure, target, axis)."""
    rows = [{"measure": m, "target": t, "axis": a.axis, "groups": a.groups, "pairs": a.pairs,
             "psi": a.psi, "sign_error_mean": a.sign_error_mean,
             "sign_error_worst": a.sign_error_worst, "wrong_sign_share": wrong_sign_share(a.environment_errors),
             "note": a.note}
            for (m, t), g in results.items() for a in g.axes]
    columns = ["measure", "target", "axis", "groups", "pairs", "psi", "sign_error_mean",
               "sign_error_worst", "wrong_sign_share", "note"]
    return pd.DataFrame(rows, columns=columns)
