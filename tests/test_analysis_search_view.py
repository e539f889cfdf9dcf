"""The report's view of the search itself, on planted MLflow stores: hyperparameter
importance (PED-ANOVA, fANOVA), parallel coordinates, the Pareto front of a
two-metric objective, and the theory probes.

A search of 16 trials whose test error depends on rho only and whose sharpness on
alpha only (a categorical lr_shape besides, and per-epoch probes on four trials), and
a two-metric search of 6 trials (test error min × sharpness max) whose front is known
by construction.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.search_spec import Objective, parse_spec
from analysis.search_view import (
    MIN_IMPORTANCE_TRIALS,
    SearchSpace,
    importance_display,
    importance_table,
    infer_distribution,
    non_dominated,
    read_search_space,
    search_distributions,
)

IMPORTANCE = "search-importance"
PARETO = "search-pareto"
EPOCHS = 4
SPEC = """name: search-importance
trial: {dataset: digits, model: small_cnn}
search:
  rho: {loguniform: [0.01, 1.0]}
  alpha: {uniform: [0.0, 0.5]}
  lr_shape: {choice: [constant, cosine]}
objective: {metric: final_test_error, mode: min}
"""
PARETO_SPEC = """name: search-pareto
search:
  rho: {loguniform: [0.01, 1.0]}
  alpha: {uniform: [0.0, 0.5]}
objective: {metric: [final_test_error, sharpness_harada], mode: [min, max]}
"""
# (final_test_error, sharpness_harada).  Test error min × sharpness max: p0 has the lowest
# error, p5 the highest sharpness, p3 trades between them; p3 dominates p1, p2 and p4.
PARETO_POINTS = {"p0": (0.10, 5.0), "p1": (0.20, 3.0), "p2": (0.30, 1.0), "p3": (0.15, 7.0),
                 "p4": (0.25, 6.0), "p5": (0.40, 9.0)}
PARETO_FRONT = {"p0", "p3", "p5"}


def _log_trial(client, experiment_id, parent, trial_id, params, final, *, probes=False, growing=False):
    from mlflow.entities import Metric, Param

    tags = {"samtune.kind": "trial", "samtune.trial_id": trial_id, "samtune.status": "completed",
            "mlflow.parentRunId": parent}
    run_id = client.create_run(experiment_id, run_name=trial_id, tags=tags).info.run_id
    stamp = int(time.time() * 1000)
    metrics = [Metric(k, float(v), stamp, 0) for k, v in final.items()]
    for epoch in range(1, EPOCHS + 1):
        batch = 16 * 2 ** (epoch - 1) if growing else 16
        lr = 0.1 / epoch
        metrics += [Metric("test_error", 0.5 / epoch, stamp, epoch), Metric("lr", lr, stamp, epoch),
                    Metric("batch_size", batch, stamp, epoch)]
        if probes:
            metrics += [Metric("probe_sam_grad_sq", 2.0 / epoch, stamp, epoch),
                        Metric("probe_direction_msd", 3.0 / batch, stamp, epoch)]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _search_run(client, experiment_id, keys, spec):
    parent = client.create_run(experiment_id, run_name="search", tags={
        "samtune.kind": "search", "samtune.search_keys": keys}).info.run_id
    client.log_text(parent, spec, "search.yaml")
    client.set_terminated(parent, "FINISHED")
    return parent


def _final(test_error, sharpness, train_loss):
    return {"final_test_error": test_error, "final_train_error": 0.02, "final_train_loss": train_loss,
            "final_gen_gap": test_error - 0.02, "final_test_loss": 1.0 + test_error,
            "sharpness_harada": sharpness}


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_in):
    root = tmp_path_factory.mktemp("mlflow")
    uri = store_in(root)
    client = MlflowClient(uri)
    rng = np.random.default_rng(1)
    exp = client.create_experiment(IMPORTANCE, artifact_location=(root / "art-importance").as_uri())
    parent = _search_run(client, exp, "rho,alpha,lr_shape", SPEC)
    rhos = np.exp(rng.permutation(np.linspace(np.log(0.01), np.log(1.0), 16)))
    alphas = rng.permutation(np.linspace(0.0, 0.5, 16))
    probed = {}
    for i, (rho, alpha) in enumerate(zip(rhos, alphas)):
        test_error = 0.3 + 0.05 * np.log(rho) + rng.normal(0, 0.002)
        sharpness = np.exp(6 * alpha) * (1 + rng.normal(0, 0.01))
        params = {"rho": rho, "alpha": alpha, "lr_shape": ("constant", "cosine")[i % 2], "seed": 0,
                  "lr": 0.1, "batch_size": 16, "dataset": "digits", "model": "small_cnn"}
        final = _final(test_error, sharpness, rng.uniform(0.01, 0.1))
        run_id = _log_trial(client, exp, parent, f"t{i:02d}", params, final, probes=i < 4, growing=i < 2)
        if i < 4:
            probed[f"t{i:02d}"] = run_id
    exp = client.create_experiment(PARETO, artifact_location=(root / "art-pareto").as_uri())
    parent = _search_run(client, exp, "rho,alpha", PARETO_SPEC)
    for i, (name, (test_error, sharpness)) in enumerate(PARETO_POINTS.items()):
        params = {"rho": 0.01 * (i + 1), "alpha": (0.3, 0.1, 0.5, 0.0, 0.2, 0.4)[i], "seed": 0, "lr": 0.1,
                  "batch_size": 16}
        _log_trial(client, exp, parent, name, params, _final(test_error, sharpness, 0.01 * (i + 1)))
    return {"uri": uri, "probed": probed}


@pytest.fixture(scope="module")
def importance_report(store, tmp_path_factory):
    from analysis import build_report

    out = tmp_path_factory.mktemp("report-importance")
    return build_report(IMPORTANCE, tracking_uri=store["uri"], out_dir=out, log_to_mlflow=False,
                        n_resamples=49)


@pytest.fixture(scope="module")
def pareto_report(store, tmp_path_factory):
    from analysis import build_report

    out = tmp_path_factory.mktemp("report-pareto")
    return build_report(PARETO, tracking_uri=store["uri"], out_dir=out, log_to_mlflow=False, n_resamples=49)


# ---------------------------------------------------------------- units

@pytest.mark.parametrize("modes, front", [
    (("min", "min"), {0, 1, 2}),
    (("max", "max"), {5}),
    (("min", "max"), {0, 3, 5}),
    (("max", "min"), {2, 5}),
])
def test_non_dominated_follows_each_mode(modes, front):
    import optuna

    values = np.array(list(PARETO_POINTS.values()))
    assert set(np.flatnonzero(non_dominated(values, modes))) == front
    # Optuna's own front of the same points agrees
    study = optuna.create_study(directions=["minimize" if m == "min" else "maximize" for m in modes])
    study.add_trials([optuna.trial.create_trial(values=list(v)) for v in values])
    assert {t.number for t in study.best_trials} == front


def test_non_dominated_keeps_ties_and_drops_weakly_dominated():
    values = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 2.0], [2.0, 1.0], [0.5, 3.0]])
    assert non_dominated(values, ("min", "min")).tolist() == [True, True, False, False, True]


def test_parse_spec_reads_kinds_and_objective():
    kinds, objective = parse_spec(PARETO_SPEC)
    assert kinds == {"rho": "loguniform", "alpha": "uniform"}
    assert objective.metrics == ("final_test_error", "sharpness_harada") and objective.modes == ("min", "max")
    kinds, objective = parse_spec("name: x\nsearch: {s: {choice: [a, b]}}\ngrid: {seed: [0, 1]}\n")
    assert kinds == {"s": "choice", "seed": "grid"} and objective is None
    _, objective = parse_spec("name: x\nobjective: {metric: [a, b], mode: max}\n")
    assert objective.modes == ("max", "max")


def test_infer_distribution_scale_and_categories():
    wide = pd.Series([0.001, 0.01, 1.0])
    dist, note = infer_distribution(wide, None)
    assert dist.log and "inferred" in note
    dist, note = infer_distribution(wide, "uniform")
    assert not dist.log and note == ""
    dist, _ = infer_distribution(pd.Series([64.0, 128.0, 64.0]), "choice")
    assert list(dist.choices) == [64.0, 128.0]
    dist, _ = infer_distribution(pd.Series(["cosine", None, "constant"]), None)
    assert list(dist.choices) == ["constant", "cosine"]
    assert infer_distribution(pd.Series([0.1, 0.1]), "loguniform")[0] is None


# ---------------------------------------------------------------- reports

def test_importance_ranks_the_key_the_target_depends_on(importance_report):
    table = pd.read_csv(importance_report.out_dir / "importance.csv")
    assert set(table["evaluator"]) == {"PED-ANOVA", "fANOVA"}
    assert set(table["key"]) == {"rho", "alpha", "lr_shape"}      # seed does not vary: not a key
    for (target, evaluator), rows in table.groupby(["target", "evaluator"]):
        ranked = rows.sort_values("importance", ascending=False)["key"].tolist()
        expected = "alpha" if target == "sharpness_harada" else "rho"
        assert ranked[0] == expected, (target, evaluator, rows)
        assert rows["importance"].sum() == pytest.approx(1.0)
        assert np.isfinite(rows.loc[rows["key"] == "lr_shape", "importance"]).all()
        assert (rows["n_trials"] == 16).all()
    assert {"final_test_error", "sharpness_harada"} <= set(table["target"])


def _conditional_frame(n=24):
    rng = np.random.default_rng(3)
    shape = np.array(["constant", "cosine", "polynomial"] * (n // 3))
    frame = pd.DataFrame({"rho": np.exp(np.linspace(-4.6, 0.0, n)), "alpha": rng.uniform(0, 0.5, n),
                          "lr_shape": shape,
                          "lr_power": np.where(shape == "polynomial", rng.uniform(0.5, 3.0, n), np.nan)})
    frame["final_test_error"] = 0.3 + 0.05 * np.log(frame["rho"]) + rng.normal(0, 0.002, n)
    frame["sharpness_flat"] = 1.0
    kinds = {"rho": "loguniform", "alpha": "uniform", "lr_shape": "choice"}
    space = SearchSpace(("rho", "alpha", "lr_shape", "lr_power"), kinds, Objective(("final_test_error",), ("min",)))
    return frame, space


def test_importance_conditional_key_constant_target_and_reproducible():
    frame, space = _conditional_frame()
    dists, notes = search_distributions(frame, space)
    assert dists["rho"].log and not dists["alpha"].log and notes == ()
    targets = {"final_test_error": "min", "sharpness_flat": "min"}
    table, skipped = importance_table(frame, dists, targets, seed=0)
    assert skipped == ("sharpness_flat: the same value in every trial; not assessed.",)
    power = table.set_index(["evaluator", "key"]).loc[:, "importance"]
    # fANOVA would keep only the trials that sampled lr_power: it leaves the key out
    assert np.isnan(power["fANOVA", "lr_power"]) and np.isfinite(power["PED-ANOVA", "lr_power"])
    assert power["fANOVA"].idxmax() == power["PED-ANOVA"].idxmax() == "rho"
    again, _ = importance_table(frame, dists, targets, seed=0)
    pd.testing.assert_frame_equal(table, again)
    shown = importance_display(table)
    assert list(shown.columns) == ["target", "evaluator", "n", "rho", "alpha", "lr_shape", "lr_power"]


def test_report_shows_the_search_sections(importance_report):
    out = importance_report.out_dir
    page = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    for title in ("Hyperparameter importance", "Parallel coordinates", "Theory probes"):
        assert f"<h2>{title}</h2>" in page and f"## {title}" in markdown
    assert "<h2>Pareto front</h2>" not in page        # a one-metric objective has no front
    for name in ("parallel_coordinates.png", "theory_probes.png"):
        assert (out / "figures" / name).stat().st_size > 0
        assert out / "figures" / name in importance_report.figures
    assert out / "importance.csv" in importance_report.files
    images = re.findall(r"<img [^>]*src=\"data:image/png;base64,", page)
    assert len(images) == len(importance_report.figures)


def test_probes_section_lists_the_probed_trials(importance_report, store):
    markdown = (importance_report.out_dir / "report.md").read_text()
    section = markdown.split("## Theory probes", 1)[1].split("\n## ", 1)[0]
    assert "4 of 16 comparable trials" in section
    listed = set(re.findall(r"^\| (t\d\d) \|", section, flags=re.M))
    assert listed == set(store["probed"])
    # msd = 3 / batch over a doubling batch: slope −1 exactly for the two growing trials
    rows = [line for line in section.splitlines() if line.startswith(("| t00", "| t01"))]
    assert all("| -1 |" in row for row in rows)


def test_pareto_report_flags_the_known_front(pareto_report):
    out = pareto_report.out_dir
    frame = pd.read_csv(out / "pareto.csv")
    assert set(frame.loc[frame["pareto"], "trial_id"]) == PARETO_FRONT
    assert len(frame) == len(PARETO_POINTS)
    assert (out / "figures" / "pareto_front.png").stat().st_size > 0
    markdown = (out / "report.md").read_text()
    section = markdown.split("## Pareto front", 1)[1].split("\n## ", 1)[0]
    assert "3 of 6 comparable trials are non-dominated" in section
    assert "final_test_error (min) × sharpness_harada (max)" in section
    assert set(re.findall(r"^\| (p\d) \|", section, flags=re.M)) == PARETO_FRONT


def test_too_few_trials_skip_importance_with_the_reason(pareto_report):
    markdown = (pareto_report.out_dir / "report.md").read_text()
    section = markdown.split("## Hyperparameter importance", 1)[1].split("\n## ", 1)[0]
    assert f"6 comparable trials, fewer than the {MIN_IMPORTANCE_TRIALS}" in section
    assert not (pareto_report.out_dir / "importance.csv").exists()
    probes = markdown.split("## Theory probes", 1)[1].split("\n## ", 1)[0]
    assert "No comparable trial logged the theory probes" in probes


def test_importance_imports_neither_torch_nor_ray():
    code = ("import sys; sys.path.insert(0, 'tests'); "
            "from test_analysis_search_view import _conditional_frame; "
            "from analysis.search_view import importance_table, search_distributions; "
            "frame, space = _conditional_frame(); dists, _ = search_distributions(frame, space); "
            "importance_table(frame, dists, {'final_test_error': 'min'}, seed=0); "
            "heavy = {'torch', 'ray'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_search_space_without_spec_artifact_says_what_it_assumed(store):
    client = MlflowClient(store["uri"])
    experiment = client.create_experiment("no-spec")
    parent = client.create_run(experiment, run_name="search", tags={"samtune.kind": "search"}).info.run_id
    space = read_search_space(store["uri"], pd.Series([parent, parent, None]), ("rho",))
    assert space.objective == Objective(("final_test_error",), ("min",)) and space.kinds == {}
    assert len(space.notes) == 1 and "No search.yaml" in space.notes[0]
