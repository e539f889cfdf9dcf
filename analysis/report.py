"""``build_report``: MLflow trials → fits → HTML (interactive figures, plotly.min.js
beside it) + Markdown + CSV + PNG, logged back to MLflow as a run tagged
``samtune.kind=report``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import definitions, embed, figures, group_figure, interactive, noise_floor, pbt, probes, schema
from analysis.criterion import DEFAULT_MAX_TRAIN_ERROR, TrainingFit, exclusion_phrases
from analysis.errors import NotEnoughTrials
from analysis.fits import FitOptions, FitResults, fit_all
from analysis.granulated import agreement_table
from analysis.load import TrialTable, grouping_keys, load_histories, load_trials, mlflow_client, searched_axes
from analysis.render import Document, FigureRef, Section, has_plots, render_html, render_markdown
from analysis.search_view import SearchView, build_search_view
from analysis.summary import SummaryInputs, summarize
from analysis.tables import Grouping, choose_grouping, group_table, with_schedule

FIGURE_DPI = 110


@dataclass(frozen=True)
class ReportResult:
    out_dir: Path
    html: Path
    markdown: Path
    trials_csv: Path
    fits_csv: Path
    figures: tuple[Path, ...]
    files: tuple[Path, ...]           # every file written, figures included
    summary: str
    n_usable: int
    n_excluded: int
    excluded: dict[str, int]          # excluded trials per status
    report_run_id: str | None         # None when log_to_mlflow=False
    excluded_kinds: dict[str, int]    # excluded trials per kind (status, not_fit, other_criterion…)
    training_fit: TrainingFit         # the criterion compared at and who fit the training set


def build_report(experiment: str, *, tracking_uri: str | None = None, search_run_id: str | None = None,
                 out_dir: str | Path, log_to_mlflow: bool = True, n_resamples: int = 999,
                 confidence_level: float = 0.95, seed: int = 0,
                 max_train_error: float | None = DEFAULT_MAX_TRAIN_ERROR) -> ReportResult:
    """Write the sharpness–generalization report of ``experiment`` into ``out_dir``.

    Only trials that fit their training set are analysed (:mod:`analysis.criterion`):
    with a training criterion, those that reached it, and only those trained under the
    most common criterion setting; without one, those whose ``final_train_error`` is at
    most ``max_train_error`` (default 0.5, the majority rule; None applies no threshold).
    Every other trial is named in the report with the reason.

    Raises ``UnknownExperiment`` (unknown experiment or search run) or ``NotEnoughTrials``
    (fewer than 3 usable trials; the message lists why the others were excluded), both
    ``ValueError`` (``AnalysisError``), as is a ``max_train_error`` outside [0, 1].
    """
    options = FitOptions(n_resamples=n_resamples, confidence_level=confidence_level, seed=seed)
    table = load_trials(experiment, tracking_uri=tracking_uri, search_run_id=search_run_id,
                        max_train_error=max_train_error)
    usable = _check_usable(table)
    # a usable trial has a finite target and measure, so neither list is empty
    measures, targets = schema.measure_columns(usable, table.params), schema.target_columns(usable)
    axes = searched_axes(usable, table.params, table.declared_search_keys)
    keys = grouping_keys(usable, table.params)
    results = fit_all(usable, measures=measures, targets=targets, axes=axes, keys=keys, options=options)
    grouping = choose_grouping(usable, axes)
    usable = usable.assign(**{schema.GROUP: grouping.labels})

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    history = load_histories(table.tracking_uri, usable[schema.RUN_ID].tolist(), schema.HISTORY_METRICS)
    figure_refs = _write_figures(out, usable, history, results, measures, targets, options)
    search = _search_view(out, table, usable, history, axes, measures, options)
    figure_refs["search"] = list(search.figures)
    compute = [c for c in schema.COMPUTE if c in usable and usable[c].notna().any()]
    groups = group_table(usable, grouping, values=[targets[0], *compute, *measures])
    figure_refs["groups"] = _groups_figure(out, usable, groups, grouping, targets[0], measures)
    csvs = _write_tables(out, table, usable, results, groups, history, search.tables)

    inputs = SummaryInputs(experiment, search_run_id, len(usable), table.exclusion_kinds(), axes,
                           int(usable[schema.SEED].nunique()) if schema.SEED in usable else 1,
                           results.fits, confidence_level,
                           definitions.summary_sentence(table.measure_definitions), table.training_fit)
    paragraphs = summarize(inputs, targets)
    document = Document(f"Sharpness and generalization: {experiment}", tuple(paragraphs),
                        _sections(table, axes, results, groups, grouping, targets, measures, figure_refs,
                                  options, compute, search))
    documents = write_documents(out, document)
    html_path, md_path = documents[:2]

    figure_paths = tuple(out / ref.path for refs in figure_refs.values() for ref in refs)
    files = (*documents, *csvs.values(), *figure_paths)
    run_id = _log_report_run(table, files, out, options, len(usable)) if log_to_mlflow else None
    return ReportResult(out, html_path, md_path, csvs["trials"], csvs["fits"], figure_paths, files,
                        "\n\n".join(paragraphs), len(usable), len(table.excluded),
                        table.exclusion_counts(), run_id, table.exclusion_kinds(), table.training_fit)


def _check_usable(table: TrialTable) -> pd.DataFrame:
    usable = table.usable
    if len(usable) >= schema.MIN_TRIALS:
        return usable
    where = f"experiment {table.experiment_name!r}"
    if table.search_run_id:
        where += f", search run {table.search_run_id!r}"
    counts = ", ".join(exclusion_phrases(table.exclusion_kinds(), table.training_fit)) or "none"
    reasons = "; ".join(dict.fromkeys(table.excluded[schema.EXCLUDED]).keys())
    hint = ""
    if table.exclusion_kinds().get(schema.NOT_FIT) and table.training_fit.threshold_applied:
        hint = (f". Trials that did not fit their training set ({schema.TRAIN_ERROR} above max_train_error "
                f"= {table.training_fit.max_train_error:g}) are never compared; train longer, or raise "
                "max_train_error to compare trials that fit it less well")
    raise NotEnoughTrials(
        f"{where}: {len(usable)} usable trials, at least {schema.MIN_TRIALS} are needed to fit "
        f"anything ({len(table.trials)} trials found; excluded: {counts}"
        + (f"; reasons: {reasons[:500]}" if reasons else "") + ")" + hint)


# ---------------------------------------------------------------- files

def write_documents(out: Path, document: Document) -> tuple[Path, ...]:
    """report.html and report.md into ``out``, whose figures/ already holds the PNGs, and
    plotly.min.js beside them when report.html has interactive figures."""
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(render_html(document, out), encoding="utf-8")
    md_path.write_text(render_markdown(document), encoding="utf-8")
    return (html_path, md_path, *((embed.write_plotly_js(out),) if has_plots(document) else ()))


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=FIGURE_DPI, format="png")


def _write_figures(out: Path, usable: pd.DataFrame, history: pd.DataFrame, results: FitResults,
                   measures: Sequence[str], targets: Sequence[str],
                   options: FitOptions) -> dict[str, list[FigureRef]]:
    refs: dict[str, list[FigureRef]] = {"ranking": [], "scatter": [], "curves": []}
    labels = usable[schema.GROUP]
    for target in targets:
        path = f"figures/ranking_{_slug(target)}.png"
        _save(figures.measure_ranking(results.fits, target=target), out / path)
        refs["ranking"].append(FigureRef(f"Measures ranked by |Kendall τ| with {target}, and Ψ", path))
        path = f"figures/{_slug(target)}_vs_measures.png"
        scatter = {"measures": measures, "target": target, "labels": labels, "fits": results.fits,
                   "confidence_level": options.confidence_level}
        _save(figures.target_vs_measures(usable, **scatter), out / path)
        refs["scatter"].append(FigureRef(f"{target} against each measure, colored by group", path,
                                         plot=interactive.measure_scatter(usable, **scatter)))
    if not history.empty:
        refs["curves"].append(_training_curves(out, usable, history))
    return refs


def _training_curves(out: Path, usable: pd.DataFrame, history: pd.DataFrame) -> FigureRef:
    path = "figures/training_curves.png"
    labels = usable[schema.GROUP]
    by_run = pd.Series(labels.to_numpy(), index=usable[schema.RUN_ID])
    _save(figures.training_curves(history, labels=by_run), out / path)
    return FigureRef("Per-epoch test error, batch size and learning rate by group", path,
                     plot=interactive.training_curves(history, trials=usable, labels=labels),
                     plot_caption="Per-epoch test and train error, batch size and learning rate of every trial, "
                                  "colored by group")


def _groups_figure(out: Path, usable: pd.DataFrame, groups: pd.DataFrame, grouping: Grouping,
                   target: str, measures: Sequence[str]) -> list[FigureRef]:
    """The group table as a picture, figures/groups.png; none for a single group, which
    the table alone says all about."""
    if len(groups) < 2:
        return []
    drawn = group_figure.groups_figure(usable, groups=groups, grouping=grouping, target=target, measures=measures)
    _save(drawn, out / group_figure.PNG)
    return [FigureRef(group_figure.caption(target, measures, grouping), group_figure.PNG)]


def _search_view(out: Path, table: TrialTable, usable: pd.DataFrame, history: pd.DataFrame,
                 axes: Sequence[str], measures: Sequence[str], options: FitOptions) -> SearchView:
    """The search's own sections (importance, parallel coordinates, Pareto front), the
    schedules of a population-based search, then the theory probes."""
    view = build_search_view(usable, tracking_uri=table.tracking_uri, declared=table.declared_search_keys,
                             axes=axes, measures=measures, out=out, seed=options.seed, save=_save)
    population = pbt.pbt_view(usable, tracking_uri=table.tracking_uri, out=out, save=_save)
    probe = probes.probes_section(usable, history, tracking_uri=table.tracking_uri, out=out, save=_save)
    return SearchView((*view.sections, *population.sections, probe),
                      (*view.figures, *population.figures, *probe.figures),
                      {**view.tables, **population.tables}, (*view.methods, *population.methods))


def _write_tables(out: Path, table: TrialTable, usable: pd.DataFrame, results: FitResults,
                  groups: pd.DataFrame, history: pd.DataFrame,
                  extra: dict[str, pd.DataFrame] | None = None) -> dict[str, Path]:
    trials = with_schedule(table.trials)
    trials[schema.GROUP] = trials[schema.RUN_ID].map(usable.set_index(schema.RUN_ID)[schema.GROUP])
    frames = {
        "trials": trials[_trial_columns(trials, table.params)],
        "fits": results.fits,
        "granulated": agreement_table(results.granulated),
        "regression_terms": results.regression_terms,
        "groups": groups,
        "history": history,
        **(extra or {}),
    }
    paths = {}
    for name, frame in frames.items():
        paths[name] = out / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def _trial_columns(trials: pd.DataFrame, params: Sequence[str]) -> list[str]:
    book = [c for c in (schema.RUN_ID, schema.TRIAL_ID, schema.RUN_NAME, schema.STATUS, schema.EXCLUDED,
                        schema.EXCLUDED_KIND, schema.GROUP, "schedule", schema.ERROR, schema.PARENT)
            if c in trials]
    metrics = sorted(c for c in trials.columns if c not in book and c not in params)
    finals = [c for c in metrics if c.startswith(schema.FINAL_PREFIX)]
    return book + list(params) + finals + [c for c in metrics if c not in finals]


# ---------------------------------------------------------------- document

def _ci(low: float, high: float) -> str:
    return f"[{low:.3g}, {high:.3g}]" if np.isfinite(low) and np.isfinite(high) else "—"


def fits_display(fits: pd.DataFrame, target: str) -> pd.DataFrame:
    rows = fits[fits["target"] == target]
    return pd.DataFrame({
        "measure": rows["measure"],
        "n": rows["n"],
        "Kendall τ": rows["kendall_tau"],
        "τ CI": [_ci(a, b) for a, b in zip(rows["kendall_ci_low"], rows["kendall_ci_high"])],
        "Spearman ρ": rows["spearman"],
        "slope on ln(measure)": rows["ols_slope"],
        "slope CI (HC3)": [_ci(a, b) for a, b in zip(rows["ols_slope_ci_low"], rows["ols_slope_ci_high"])],
        "R²": rows["r2"],
        "Ψ": rows["granulated_psi"],
        "sign-error mean": rows["sign_error_mean"],
        "sign-error worst": rows["sign_error_worst"],
        "one-axis pairs": rows["one_axis_pairs"],
        f"partial r | {schema.CONTROL}": rows["partial_r"],
        "R² hparams": rows["r2_hparams"],
        "R² hparams + measure": rows["r2_hparams_measure"],
        "hparam shrink": rows["hparams_shrink"],
    }).reset_index(drop=True)


def fit_notes(fits: pd.DataFrame, target: str) -> tuple[str, ...]:
    rows = fits[(fits["target"] == target) & (fits["notes"].fillna("") != "")]
    return tuple(f"{m}: {note}" for m, note in zip(rows["measure"], rows["notes"]))


def groups_display(groups: pd.DataFrame, grouping: Grouping, values: Sequence[str],
                   compute: Sequence[str] = ()) -> pd.DataFrame:
    """The group table as shown: ``n``, the compute each cell got (``compute``, rounded
    to whole numbers), then ``values`` as mean ± std."""
    columns = list(grouping.columns) or [schema.GROUP]
    shown = groups[columns + ["n"]].copy()
    for value in compute:
        if value not in schema.COMPUTE_SHOWN:
            continue
        mean, std = groups[f"{value}_mean"], groups[f"{value}_std"]
        shown[schema.COMPUTE_SHOWN[value]] = [
            "—" if not np.isfinite(m) else f"{m:.0f} ± {s:.0f}" if np.isfinite(s) and s > 0 else f"{m:.0f}"
            for m, s in zip(mean, std)]
    for value in values:
        mean, std = groups[f"{value}_mean"], groups[f"{value}_std"]
        shown[value] = [f"{m:.4g} ± {s:.2g}" if np.isfinite(s) else f"{m:.4g}" for m, s in zip(mean, std)]
    return shown


def _sections(table: TrialTable, axes: Sequence[str], results: FitResults, groups: pd.DataFrame,
              grouping: Grouping, targets: Sequence[str], measures: Sequence[str],
              refs: dict[str, list[FigureRef]], options: FitOptions,
              compute: Sequence[str] = (), search: SearchView | None = None) -> tuple[Section, ...]:
    level = f"{options.confidence_level:.0%}"
    # a measure split by definition changes what every table below means: say so first
    sections = [_definitions_section(table)] if table.split_measures else []
    sections.append(Section("Measures ranked", (f"Error bars: {level} paired bootstrap CIs (BCa, "
                                                f"{options.n_resamples} resamples, seed {options.seed}).",),
                            figures=tuple(refs["ranking"])))
    for target in targets:
        sections.append(Section(f"Fits against {target}", table=fits_display(results.fits, target),
                                notes=fit_notes(results.fits, target)))
    sections.append(Section("Scatter plots", (f"Black line: OLS of the target on ln(measure); band: {level} "
                                              "CI of the fitted mean (HC3).",),
                            figures=tuple(refs["scatter"])))
    group_text = ("Mean ± sample standard deviation per cell; schedule: constant, +B "
                  "(batch_growth_ratio > 1), +C (cosine learning rate), other learning-rate shapes by name.",)
    if any(c in schema.COMPUTE_SHOWN for c in compute):
        group_text += ("steps and gradient evaluations: the optimizer updates and gradient evaluations "
                       "(two per step for the SAM family, one for a base-optimizer step) each cell's trials "
                       "got, from final_steps and final_gradient_evaluations."
                       + (" Budgets differ across the trials, so the budget is a cell column."
                          if set(grouping.columns) & {schema.BUDGET, schema.BUDGET_UNIT} else ""),)
    sections.append(Section("Groups", group_text,
                            table=groups_display(groups, grouping, [targets[0], *measures], compute),
                            figures=tuple(refs.get("groups", ()))))
    if refs["curves"]:
        sections.append(Section("Training curves", figures=tuple(refs["curves"])))
    if search is not None:
        sections += search.sections
    sections.append(_axes_section(axes, results, targets[0]))
    if noise_floor.replicated(table.usable, axes):
        sections += _noise_floor_sections(table.usable, axes, targets, measures, options)
    if not table.split_measures:
        sections.append(_definitions_section(table))
    sections.append(_trials_section(table))
    sections.append(Section("Methods", _METHODS + (search.methods if search is not None else ())))
    return tuple(sections)


def _axes_section(axes: Sequence[str], results: FitResults, target: str) -> Section:
    if not axes:
        return Section("One-axis comparisons", ("No hyperparameter varies across the usable trials.",))
    agreement = agreement_table(results.granulated)
    agreement = agreement[agreement["target"] == target].drop(columns="target")
    if agreement["pairs"].sum() == 0:
        return Section("One-axis comparisons", (
            f"No two trials differ in one searched axis only ({', '.join(axes)}), with every other "
            "parameter and the seed equal, so the granulated Kendall Ψ and the sign-error are not "
            "available. TPE and random searches rarely produce such pairs; a grid search, or an Optuna "
            "search with `design: {coupled: true}`, does.",))
    text = (f"Per searched axis, against {target}: groups of trials equal in every other parameter "
            "(seed included), the pairs they contain, ψ, the sign-errors (mean and worst over environment "
            "pairs) and the share of environment pairs the measure orders wrongly (sign-error above ½).",)
    return Section("One-axis comparisons", text, table=agreement.reset_index(drop=True))


def _noise_floor_sections(usable: pd.DataFrame, axes: Sequence[str], targets: Sequence[str],
                          measures: Sequence[str], options: FitOptions) -> tuple[Section, Section]:
    """Configurations run under several seeds: their differences against the seed noise,
    and each measure's τ over configuration means with the seed spread in its interval."""
    floor = noise_floor.noise_floor_table(usable, [*targets, *measures], axes)
    level = f"{options.confidence_level:.0%}"
    rows = []
    for measure in measures:
        tau, low, high, n = noise_floor.mean_kendall(usable, measure, targets[0], axes, seed=options.seed,
                                                     n_resamples=max(options.n_resamples, 200),
                                                     level=options.confidence_level)
        rows.append({"measure": measure, "configurations": n, "τ": tau, f"{level} CI": _ci(low, high)})
    exceeding = [r.quantity for r in floor.itertuples() if r.verdict == "exceed seed noise"]
    within = [r.quantity for r in floor.itertuples() if r.verdict != "exceed seed noise"]
    floor_text = (
        "Configurations (every varying hyperparameter but the seed) run under several seeds. Per quantity: the "
        "spread across seeds within a configuration (pooled SD) against the spread of the configurations' means; "
        "one-way ANOVA (F, p: the differences exceed seed noise when p < 0.05), ICC(1), and the configuration "
        "pairs Tukey's HSD separates at 0.05.",
        f"Differences between configurations exceed seed noise for: {', '.join(exceeding) or 'none'}; they are "
        f"within seed noise for: {', '.join(within) or 'none'}.")
    means_text = (f"Kendall's τ between each measure and {targets[0]} over the configurations' means (each "
                  f"configuration's seeds averaged), with a {level} percentile interval from resampling each "
                  "configuration's seeds with replacement: the seed noise carried into the interval.",)
    return (Section("Seeds as the noise floor", floor_text, table=floor),
            Section("Fits on configuration means", means_text, table=pd.DataFrame(rows)))


def _definitions_section(table: TrialTable) -> Section:
    """Which definition (settings) each sharpness measure was computed under; split
    measures first, with the reason."""
    usable = table.usable
    found = table.measure_definitions
    if not found:
        return Section("Measure definitions", ("No sharpness measure was recorded.",))
    split = table.split_measures
    if split:
        text = tuple(definitions.split_paragraph(d, usable) for d in split)
    else:
        text = ("Every sharpness measure was computed under one definition across the trials; its "
                "settings (params sharpness.<name>.<setting>) are listed below.",)
    return Section("Measure definitions", text, table=definitions.definitions_table(found, usable))


def _trials_section(table: TrialTable) -> Section:
    counts = table.trials[schema.STATUS].value_counts().sort_index()
    text = [f"{len(table.trials)} trials found: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "."]
    if table.training_fit.sentence():
        text.append(table.training_fit.sentence())
    excluded = table.excluded
    if excluded.empty:
        text.append("No trial was excluded.")
        return Section("Trials", tuple(text))
    phrases = exclusion_phrases(table.exclusion_kinds(), table.training_fit)
    text.append(f"{len(excluded)} trials were excluded from every fit, table, figure and correlation "
                f"({', '.join(phrases)}):")
    return Section("Trials", tuple(text), table=excluded.drop(columns=schema.RUN_ID))


_METHODS = (
    "Kendall τ is τ-b (scipy.stats.kendalltau), Spearman ρ is scipy.stats.spearmanr; their CIs are paired "
    "bootstrap CIs (scipy.stats.bootstrap, BCa, percentile where BCa is undefined).",
    "OLS (statsmodels) of the target on ln(measure) and on the measure, with HC3 robust standard errors and "
    "t-based CIs; measures with non-positive values get no log fit.",
    "Partial correlation: partial Spearman. Measure, target and final_train_loss are ranked; the ranks of "
    "the measure and of the target are residualized on the rank of final_train_loss by OLS and correlated "
    "(scipy.stats.pearsonr); the p-value is that of the measure's rank in OLS(target rank ~ control rank + "
    "measure rank).",
    "Granulated Kendall Ψ (Jiang et al., ICLR 2020): for each searched axis, Kendall τ inside each group of "
    "trials equal in every other parameter (seed included), averaged over groups (ψ_axis), then over axes. "
    "Sign-error (Dziugaite et al., NeurIPS 2020): ½(1 − sgn ΔC · sgn Δg) over pairs that differ in one "
    "axis, averaged over seeds per pair of settings; mean and worst over those pairs.",
    "Hyperparameter regression (statsmodels formula API): target ~ searched hyperparameters (numeric as-is, "
    "or log when positive and spanning ≥ 10×; categorical as C()), then + ln(measure). Shrink = 1 − "
    "Σ|β_with|·sd / Σ|β_without|·sd over the hyperparameter coefficients: the share of their effect that "
    "runs through the measure.",
    "A measure is its name and its settings (params sharpness.<name>.<setting>: ρ, norm, adaptive, steps, "
    "batch size m, number of examples, precision). A measure computed under different settings across the "
    "trials (a setting not logged counting as its own value) is split into one measure per definition, "
    "named <measure>[<differing settings>], each over the trials measured with it only.",
    "Excluded from every fit: trials that diverged, failed, were pruned or are still running, and completed "
    "trials without a finite target or measure.",
    "Trials are compared only once each has fit its training set (Jiang et al., ICLR 2020: train to "
    "cross-entropy 0.01). A training criterion (trial keys stop_train_loss / stop_train_error) is part of "
    "what a trial is: the trials trained under the most common criterion setting are compared and the others "
    "excluded; with a criterion, a trial whose criterion_reached is 0 is excluded; without one, a trial "
    "whose final_train_error is above max_train_error (default 0.5: a network that misclassifies most of its "
    "training examples has not fit them, while chance, 1 − 1/K, is at least 0.5 for K ≥ 2 classes) is "
    "excluded.",
)


# ---------------------------------------------------------------- MLflow

def _log_report_run(table: TrialTable, files: Sequence[Path], out: Path, options: FitOptions,
                    n_usable: int) -> str:
    from mlflow.entities import Metric, Param

    client = mlflow_client(table.tracking_uri)
    tags = {schema.TAG_KIND: schema.KIND_REPORT}
    if table.search_run_id:
        tags[schema.TAG_REPORTED_SEARCH] = table.search_run_id
    run_id = client.create_run(table.experiment_id, run_name=f"report-{time.strftime('%Y%m%d-%H%M%S')}",
                               tags=tags).info.run_id
    try:
        stamp = int(time.time() * 1000)
        params = {"experiment": table.experiment_name, "search_run_id": table.search_run_id or "",
                  "n_resamples": options.n_resamples, "confidence_level": options.confidence_level,
                  "seed": options.seed, "training_criterion": table.training_fit.criterion.label,
                  "max_train_error": table.training_fit.max_train_error}
        kinds = table.exclusion_kinds()
        metrics = {"n_trials_usable": n_usable, "n_trials_excluded": len(table.excluded),
                   "n_trials_not_fit": kinds.get(schema.NOT_FIT, 0),
                   "n_trials_other_criterion": kinds.get(schema.OTHER_CRITERION, 0)}
        client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
                         params=[Param(k, str(v)) for k, v in params.items()])
        for path in files:
            folder = path.parent.relative_to(out).as_posix()
            client.log_artifact(run_id, str(path), artifact_path=None if folder == "." else folder)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
