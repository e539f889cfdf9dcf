"""End to end on a local Ray (127.0.0.1): two searches into one experiment that differ
only in ``sharpness_batch`` measure ``ascent`` under two batch sizes m; the report
never pools those numbers into one column."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from samtune.search import run_search
from samtune.spec import parse_search_spec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

EXPERIMENT = "ascent-two-m"
TINY_TRIAL = {"epochs": 2, "batch_size": 64, "batch_growth_ratio": 1.0, "batch_stages": 1,
              "train_eval_examples": 256, "sharpness_examples": 256, "sharpness": ["ascent", "norm_param_l2"]}
M32, M64 = "sharpness_ascent[m=32]", "sharpness_ascent[m=64]"


def _spec(sharpness_batch: int):
    return parse_search_spec({
        "name": EXPERIMENT, "trial": TINY_TRIAL | {"sharpness_batch": sharpness_batch},
        "search": {"rho": {"loguniform": [0.01, 0.3]}},
        "samples": 3, "concurrency": 2, "resources": {"cpu": 1}, "seed": 3})


def test_two_searches_differing_in_sharpness_batch_are_two_measures(tmp_path, mlflow_uri):
    from samtune.cli import main

    uri = mlflow_uri
    for m in (32, 64):
        assert run_search(_spec(m), tracking_uri=uri, storage=str(tmp_path / f"ray-{m}")) == 0

    out = tmp_path / "report"
    assert main(["report", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--out", str(out)]) == 0
    fits = pd.read_csv(out / "fits.csv")
    measures = set(fits["measure"])
    assert {M32, M64} <= measures and "sharpness_ascent" not in measures
    assert set(fits.loc[fits["measure"].isin([M32, M64]), "n"]) == {3}
    assert "norm_param_l2" in measures          # no settings: one quantity over all six trials
    assert set(fits.loc[fits["measure"] == "norm_param_l2", "n"]) == {6}
    trials = pd.read_csv(out / "trials.csv")
    assert "sharpness_ascent" not in trials.columns
    assert trials[M32].notna().sum() == 3 and trials[M64].notna().sum() == 3
    for name in ("report.md", "report.html"):
        text = (out / name).read_text()
        assert "sharpness_ascent was measured under 2 definitions that differ in m" in text
        assert M32 in text and M64 in text
    assert not any(column == "sharpness_ascent" for column in pd.read_csv(out / "groups.csv").columns)

    # the trials themselves say which m they measured with (samtune's trial side)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "tags.`samtune.kind` = 'trial'")
    logged = sorted(r.data.params.get("sharpness.ascent.m") for r in runs)
    assert logged == ["32"] * 3 + ["64"] * 3, (
        f"trial runs should log param sharpness.ascent.m (got {logged}); the report above read m from "
        "sharpness_batch instead")
