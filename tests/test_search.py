"""End-to-end searches on a local Ray (127.0.0.1): Optuna, grid, ASHA, an
injected failure retried from its checkpoint, and an MLflow server checked
through its REST API."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from samtune.search import run_search
from samtune.spec import parse_search_spec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

TINY_TRIAL = {"epochs": 2, "batch_size": 64, "batch_growth_ratio": 1.0, "batch_stages": 1,
              "train_eval_examples": 256, "sharpness": ["ascent", "norm_param_l2"]}


def make_spec(name, **extra):
    data = {"name": name, "trial": dict(TINY_TRIAL), "samples": 4, "concurrency": 2,
            "resources": {"cpu": 1}, "seed": 3}
    data.update(extra)
    return parse_search_spec(data)


def children(uri, name):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("samtune.kind") == "search"]
    trials = [r for r in runs if r.data.tags.get("samtune.kind") == "trial"]
    return client, parents, trials


def test_optuna_search_records_every_trial_as_a_child_run(tmp_path, mlflow_uri):
    uri = mlflow_uri
    spec = make_spec("optuna-e2e", search={
        "rho": {"loguniform": [0.01, 0.3]},
        "lr_shape": {"choice": ["constant", "cosine"]}})
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray")) == 0
    client, parents, trials = children(uri, "optuna-e2e")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 4
    assert len({t.data.tags["samtune.trial_id"] for t in trials}) == 4
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["samtune.status"] == "completed"
        assert run.info.status == "FINISHED"
        assert 0.01 <= float(run.data.params["rho"]) <= 0.3
        for key in ("final_test_error", "final_gen_gap", "sharpness_ascent", "norm_param_l2"):
            assert key in run.data.metrics
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_error")]
        assert sorted(steps) == [1, 2]
    # Optuna sampled distinct radii (TPE, seeded)
    assert len({t.data.params["rho"] for t in trials}) == 4
    # each trial's final model is a logged model of its run; run names tell the trials apart
    experiment = client.get_experiment(parents[0].info.experiment_id)
    models = client.search_logged_models([experiment.experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(t.info.run_id for t in trials)
    names = {t.info.run_name for t in trials}
    assert sorted(n.split(" ")[0] for n in names) == ["#1", "#2", "#3", "#4"], names
    assert all(n.split(" ")[1].startswith("ρ=") for n in names)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the model-training view
    assert "min final_test_error" in parents[0].data.tags["mlflow.note.content"]
    # the Optuna study, in a journal file beside the SQLite store, with every trial told
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = parents[0].data.tags["samtune.optuna_storage"]
    assert journal.endswith("optuna.journal") and os.path.dirname(journal) == os.path.dirname(
        uri.removeprefix("sqlite:///"))
    study = optuna.load_study(study_name=parents[0].data.tags["samtune.optuna_study"],
                              storage=optuna.storages.JournalStorage(JournalFileBackend(journal)))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert sorted(t.params["rho"] for t in study.trials) == sorted(float(t.data.params["rho"]) for t in trials)
    # and the report reads the search back from MLflow
    from samtune.cli import main

    out = tmp_path / "report"
    assert main(["report", "--experiment", "optuna-e2e", "--search", parents[0].info.run_id,
                 "--tracking-uri", uri, "--out", str(out)]) == 0
    fits = (out / "fits.csv").read_text()
    assert "sharpness_ascent" in fits and "norm_param_l2" in fits
    assert (out / "report.html").stat().st_size > 0 and list((out / "figures").glob("*.png"))


def test_grid_search_runs_every_combination_with_bundles(tmp_path, capsys, mlflow_uri):
    uri = mlflow_uri
    spec = make_spec("grid-e2e", samples=1, keep_models=1, grid={
        "optimizer": ["sgd", "gsam"],
        "schedule": {"constant": {"lr_shape": "constant"},
                     "+C": {"lr_shape": "cosine", "lr_final": 0.001}}})
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray")) == 0
    client, _, trials = children(uri, "grid-e2e")
    combos = sorted((t.data.params["optimizer"], t.data.params["schedule"], t.data.params["lr_shape"])
                    for t in trials)
    assert combos == [("gsam", "+C", "cosine"), ("gsam", "constant", "constant"),
                      ("sgd", "+C", "cosine"), ("sgd", "constant", "constant")]
    names = sorted(t.info.run_name.split(" ", 1) for t in trials)
    assert [number for number, _ in names] == ["#1", "#2", "#3", "#4"]
    assert {rest for _, rest in names} == {"sgd constant", "gsam constant", "sgd +C", "gsam +C"}
    # keep_models: 1 keeps the best trial's model; the others are read from their last Ray checkpoint
    best = min(trials, key=lambda t: t.data.metrics["final_test_error"])
    (kept,) = client.search_logged_models([best.info.experiment_id])
    assert kept.source_run_id == best.info.run_id
    other = next(t for t in trials if t.info.run_id != best.info.run_id)
    researcher_loop_after_a_search(tmp_path, capsys, uri, "grid-e2e", best, other, kept.model_id)


def researcher_loop_after_a_search(tmp_path, capsys, uri, experiment, best, other, model_id):
    """What a researcher does next, each command exiting 0: the best trial, a trial as YAML,
    a measure the trials did not take, and the line between two trials."""
    import yaml

    from samtune.cli import main
    from samtune.config import make_trial_config

    capsys.readouterr()
    assert main(["best", experiment, "--tracking-uri", uri]) == 0
    assert f"(run {best.info.run_id})" in capsys.readouterr().out
    assert main(["show", other.info.run_id, "--tracking-uri", uri]) == 0
    shown = capsys.readouterr().out
    assert "# model: the last Ray checkpoint" in shown and "# status: completed" in shown
    assert make_trial_config(yaml.safe_load(shown)).optimizer == other.data.params["optimizer"]
    assert main(["sharpness", other.info.run_id, "--measures", "harada", "--tracking-uri", uri]) == 0
    assert "sharpness_harada" in capsys.readouterr().out
    out = tmp_path / "line"
    assert main(["interpolate", f"models:/{model_id}", other.info.run_id, "--points", "3", "--examples", "64",
                 "--tracking-uri", uri, "--out", str(out)]) == 0
    import pandas as pd

    curve = pd.read_csv(out / "interpolation.csv")
    assert {0.0, 1.0} <= set(curve["a"]) and curve["test_error"].between(0, 1).all()  # both trials on the line


def failing_once_after_epoch(epoch, marker_dir):
    """samtune's trainable, but each trial raises once, right after reporting ``epoch``
    (with its checkpoint): a worker crash at the worst moment for bookkeeping."""
    from unittest import mock

    from samtune.search.trainable import samtune_trial

    def trainable(hparams, context):
        from ray import tune

        report = tune.report
        marker = os.path.join(marker_dir, tune.get_context().get_trial_id())

        def report_then_fail(metrics, checkpoint=None):
            report(metrics, checkpoint=checkpoint)
            if metrics.get("epoch") == epoch:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # once per trial
                except FileExistsError:
                    return
                raise RuntimeError(f"injected fault after epoch {epoch}")

        with mock.patch.object(tune, "report", report_then_fail):
            samtune_trial(hparams, context)

    return trainable


def test_failed_trial_resumes_from_checkpoint_into_its_own_run(tmp_path, mlflow_uri):
    uri = mlflow_uri
    markers = tmp_path / "faults"
    markers.mkdir()
    spec = make_spec("retry-e2e", samples=2, trial=TINY_TRIAL | {"epochs": 3},
                     search={"rho": {"uniform": [0.02, 0.1]}})
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray"),
                      trainable=failing_once_after_epoch(1, str(markers))) == 0
    client, _, trials = children(uri, "retry-e2e")
    assert len(trials) == 2  # no second run for a retried trial
    assert len(list(markers.iterdir())) == 2  # both trials did fail once
    for run in trials:
        assert run.data.tags["samtune.status"] == "completed"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_error"))
        assert steps == [1, 2, 3]  # resumed at epoch 2 from the epoch-1 checkpoint
        samples = client.get_metric_history(run.info.run_id, "samples_seen")
        assert len(samples) == 3


def test_asha_stops_trials_and_marks_them_pruned(tmp_path, mlflow_uri):
    uri = mlflow_uri
    spec = make_spec("asha-e2e", samples=4, trial=TINY_TRIAL | {"epochs": 4},
                     search={"lr": {"loguniform": [1e-4, 0.1]}},
                     scheduler={"asha": {"grace_period": 1, "reduction_factor": 2}})
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray")) == 0
    _, _, trials = children(uri, "asha-e2e")
    assert len(trials) == 4
    assert all(t.info.status != "RUNNING" for t in trials)
    statuses = {t.data.tags["samtune.status"] for t in trials}
    assert statuses <= {"completed", "pruned"} and "completed" in statuses
    # which trials ASHA stops depends on report timing; a stopped one is closed as pruned,
    # and measured again as it stopped, from its last Ray checkpoint
    from samtune.commands.sharpness import measure_saved_trial

    for t in trials:
        assert os.path.isdir(t.data.tags["samtune.checkpoint"])
        if t.data.tags["samtune.status"] == "pruned":
            assert t.info.status == "KILLED"
            values = measure_saved_trial(t.info.run_id, names=("norm_param_l2",), device="cpu", tracking_uri=uri)
            assert values["norm_param_l2"] > 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{tmp_path}/server.db", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            assert server.poll() is None, "mlflow server exited"
            time.sleep(0.5)  # polling for readiness, not waiting out a race
    yield url
    os.killpg(server.pid, 15)
    server.wait(timeout=60)


def _rest(url, path, payload=None):
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_search_against_mlflow_server_is_visible_through_rest(tmp_path, mlflow_server):
    spec = make_spec("server-e2e", samples=3, search={"alpha": {"uniform": [0.0, 0.5]}})
    assert run_search(spec, tracking_uri=mlflow_server, storage=str(tmp_path / "ray")) == 0
    experiment = _rest(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=server-e2e")
    experiment_id = experiment["experiment"]["experiment_id"]
    found = _rest(mlflow_server, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment_id], "filter": "tags.`samtune.kind` = 'trial'", "max_results": 100})
    runs = found["runs"]
    assert len(runs) == 3
    for run in runs:
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"final_test_error", "test_error", "sharpness_ascent"} <= metrics
        assert run["info"]["status"] == "FINISHED"


def test_equal_budget_grid_trains_every_cell_for_the_same_steps(tmp_path, mlflow_uri):
    uri = mlflow_uri
    spec = make_spec("equal-e2e", samples=1, trial=TINY_TRIAL | {"epochs": 2, "batch_size": 128},
                     grid={"schedule": {"constant": {"batch_size": 128},
                                        "+B": {"batch_size": 64, "batch_growth_ratio": 2.0,
                                               "batch_stages": 2}}},
                     equal_budget={"unit": "steps", "like": {"schedule": "+B"}})
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray")) == 0
    _, _, trials = children(uri, "equal-e2e")
    budget = 797 // 64 + 797 // 128  # the +B cell's two epochs
    assert sorted(t.data.params["schedule"] for t in trials) == ["+B", "constant"]
    for run in trials:
        assert run.data.metrics["final_steps"] == budget
        assert run.data.params["budget"] == str(budget)
    constant = next(t for t in trials if t.data.params["schedule"] == "constant")
    assert constant.data.params["epochs"] == str(-(-budget // (797 // 128)))  # raised to hold it


def data_parallel_failing_once(marker_dir):
    """The data-parallel trainable whose rank 0 raises once, right after reporting
    epoch 1 with its checkpoint, in the trial with eval_batch_size 512 only."""
    from samtune.search.parallel import samtune_parallel_trial, train_worker

    def worker_loop(loop_config):
        from unittest import mock

        import ray.train

        report = ray.train.report
        faulty = loop_config["values"]["eval_batch_size"] == 512 and ray.train.get_context().get_world_rank() == 0

        def report_then_fail(metrics, checkpoint=None):
            report(metrics, checkpoint=checkpoint)
            if faulty and metrics.get("epoch") == 1:
                try:
                    os.close(os.open(os.path.join(marker_dir, "fault"), os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    return
                raise RuntimeError("injected fault after epoch 1")

        with mock.patch.object(ray.train, "report", report_then_fail):
            train_worker(loop_config)

    def trainable(hparams, context):
        samtune_parallel_trial(hparams, context, worker_loop=worker_loop)

    return trainable


def test_two_worker_trials_record_one_run_each_and_resume_to_the_same_weights(tmp_path, mlflow_uri):
    """Two identical two-worker trials (they differ in eval_batch_size, a run setting);
    one fails after its first epoch and is retried from the Ray Train checkpoint."""
    uri = mlflow_uri
    markers = tmp_path / "faults"
    markers.mkdir()
    spec = make_spec("parallel-e2e", samples=1, resources={"cpu": 0.45, "workers": 2}, max_failures=1,
                     trial=TINY_TRIAL | {"epochs": 2, "batch_size": 32, "batch_growth_ratio": 2.0,
                                         "batch_stages": 2, "optimizer": "gsam"},
                     grid={"eval_batch_size": [256, 512]})
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray"),
                      trainable=data_parallel_failing_once(str(markers))) == 0
    client, _, trials = children(uri, "parallel-e2e")
    assert len(trials) == 2 and (markers / "fault").exists()  # one run per trial, retried into its own
    finals = []
    for run in trials:
        assert run.data.tags["samtune.status"] == "completed"
        history = client.get_metric_history(run.info.run_id, "samples_seen")
        assert sorted((m.step, m.value) for m in history) == [(1, 24 * 32), (2, 24 * 32 + 12 * 64)]
        finals.append({k: v for k, v in run.data.metrics.items() if k.startswith(("final_", "sharpness_", "norm_"))})
    assert "sharpness_ascent" in finals[0]
    assert finals[0] == finals[1]  # the retried trial ends on the same weights as its twin
    # the logged model holds rank 0's final weights: measured again, they give the recorded norm
    from samtune.commands.sharpness import measure_saved_trial

    (model,) = client.search_logged_models([trials[0].info.experiment_id],
                                           filter_string=f"source_run_id = '{trials[0].info.run_id}'")
    again = measure_saved_trial(f"models:/{model.model_id}", names=("norm_param_l2",), device="cpu", tracking_uri=uri)
    assert again["norm_param_l2"] == pytest.approx(finals[0]["norm_param_l2"], rel=1e-6)


def growing_trial_failing_at_and_across_a_boundary(marker_dir):
    """The data-parallel trainable whose trial with eval_batch_size 512 fails twice: rank 0
    raises right after reporting epoch 1, the last of the first stage (at a boundary), and
    then as the third stage starts, before it reports anything (so the retry crosses the
    second boundary again)."""
    from samtune.search.parallel import samtune_parallel_trial, train_worker

    def once(name):
        try:
            os.close(os.open(os.path.join(marker_dir, name), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    def worker_loop(loop_config):
        from unittest import mock

        import ray.train

        report = ray.train.report
        faulty = loop_config["values"]["eval_batch_size"] == 512 and ray.train.get_context().get_world_rank() == 0
        if faulty and loop_config["until"] == 3 and once("across"):
            raise RuntimeError("injected fault as the third stage starts")

        def report_then_fail(metrics, checkpoint=None):
            report(metrics, checkpoint=checkpoint)
            if faulty and metrics.get("epoch") == 1 and once("boundary"):
                raise RuntimeError("injected fault at the end of the first stage")

        with mock.patch.object(ray.train, "report", report_then_fail):
            train_worker(loop_config)

    def trainable(hparams, context):
        samtune_parallel_trial(hparams, context, worker_loop=worker_loop)

    return trainable


def test_trials_whose_workers_grow_share_the_cluster_and_resume_across_boundaries(tmp_path, mlflow_uri):
    """Two trials on 1, 2 and 4 workers (a stage an epoch); 4 workers take 1.2 of the 2
    CPUs, so only while one is in its small stages can both train at once.  One fails
    at and across a stage boundary and is retried; it ends on its twin's weights."""
    from samtune import schema

    uri = mlflow_uri
    markers = tmp_path / "faults"
    markers.mkdir()
    spec = make_spec("growing-e2e", samples=1, max_failures=2,
                     resources={"cpu": 0.3, "per_worker_batch": 32, "max_workers": 4},
                     trial=TINY_TRIAL | {"epochs": 3, "batch_size": 32, "batch_growth_ratio": 2.0,
                                         "batch_stages": 3, "optimizer": "gsam"},
                     grid={"eval_batch_size": [256, 512]})
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray"),
                      trainable=growing_trial_failing_at_and_across_a_boundary(str(markers))) == 0
    client, _, trials = children(uri, "growing-e2e")
    assert len(trials) == 2 and {p.name for p in markers.iterdir()} == {"boundary", "across"}
    finals, spans = [], []
    for run in trials:
        assert run.data.tags["samtune.status"] == "completed"
        assert run.data.tags[schema.TAG_WORKERS] == "1 (epochs 1-1), 2 (epochs 2-2), 4 (epochs 3-3)"
        workers = sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, "workers"))
        assert [(step, value) for step, value, _ in workers] == [(1, 1), (2, 2), (3, 4)]  # each epoch once
        seen = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "samples_seen"))
        assert seen == [(1, 24 * 32), (2, 24 * 32 + 12 * 64), (3, 24 * 32 + 12 * 64 + 6 * 128)]
        spans.append((workers[0][2], workers[-1][2]))
        finals.append({k: v for k, v in run.data.metrics.items() if k.startswith(("final_", "sharpness_", "norm_"))})
    # the twice-retried trial ends on its twin's weights (its test loss sums its shard in
    # batches of 512, not 256: another rounding)
    loss = [f.pop("final_test_loss") for f in finals]
    assert finals[0] == finals[1] and loss[0] == pytest.approx(loss[1], rel=1e-6)
    assert all(run.data.tags[schema.TAG_STAGES_DONE] == "2" for run in trials)  # the third ended the trial
    # each trained its first stage before the other ended: fixed at 4 workers, they could not
    # have trained at once (2 x 1.2 CPUs); the small stages left room for the other trial
    assert max(first for first, _ in spans) < min(last for _, last in spans)


def artifact_text(client, run_id, name):
    from pathlib import Path

    return Path(client.download_artifacts(run_id, name)).read_text()


def test_pbt_population_records_lineage_and_its_replay_follows_the_schedule(tmp_path, mlflow_uri):
    import csv
    import io

    from samtune import schema
    from samtune.cli import main

    uri = mlflow_uri
    spec = make_spec("pbt-e2e", samples=4, concurrency=4, resources={"cpu": 0.5},
                     trial={k: v for k, v in TINY_TRIAL.items() if k != "batch_size"}
                     | {"epochs": 4, "optimizer": "gsam", "sharpness": ["norm_param_l2"]},
                     search={"lr": {"loguniform": [1e-4, 0.3]}, "rho": {"loguniform": [0.01, 0.2]},
                             "batch_size": {"choice": [16, 32, 64]}},
                     scheduler={"pbt": {"interval": 1, "quantile": 0.5}})
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray")) == 0
    client, _, trials = children(uri, "pbt-e2e")
    assert len(trials) == 4  # a clone continues in its own run
    cloned = [r for r in trials if schema.TAG_CLONED_FROM in r.data.tags]
    assert cloned, "no trial was exploited"
    run = cloned[0]
    lineage = json.loads(artifact_text(client, run.info.run_id, schema.ARTIFACT_LINEAGE))
    donor, epoch = run.data.tags[schema.TAG_CLONED_FROM].split(" at epoch ")
    assert len(lineage["segments"]) >= 2 and lineage["segments"][-2]["trial_id"] == donor.strip()
    assert lineage["segments"][-1]["epoch"] == int(epoch)
    schedule = list(csv.DictReader(io.StringIO(artifact_text(client, run.info.run_id, schema.ARTIFACT_SCHEDULE))))
    assert [int(float(row["epoch"])) for row in schedule] == [1, 2, 3, 4]

    (model,) = client.search_logged_models([run.info.experiment_id],
                                           filter_string=f"source_run_id = '{run.info.run_id}'")
    assert main(["replay", f"models:/{model.model_id}", "--tracking-uri", uri, "--device", "cpu"]) == 0
    replays = [r for r in client.search_runs([run.info.experiment_id])
               if r.data.tags.get(schema.TAG_REPLAY_OF) == run.info.run_id]
    assert len(replays) == 1
    for key in ("lr", "rho", "batch_size"):
        replayed = sorted((m.step, m.value) for m in client.get_metric_history(replays[0].info.run_id, key))
        assert replayed == [(int(float(row["epoch"])), float(row[key])) for row in schedule], key


def test_a_coupled_optuna_search_gives_every_searched_key_its_pairs(tmp_path, mlflow_uri):
    """design: {coupled: true} runs each sampled configuration's one-axis neighbours: the
    report then has Ψ and sign-errors for every searched key of an Optuna search."""
    import pandas as pd

    from samtune.cli import main

    uri = mlflow_uri
    spec = make_spec("coupled-e2e", samples=1, design={"coupled": True, "points": 2},
                     trial=TINY_TRIAL | {"sharpness": ["norm_param_l2"]},
                     search={"rho": {"loguniform": [0.01, 0.3]}, "lr_shape": {"choice": ["constant", "cosine"]}})
    assert spec.total_trials == 4  # the sample, rho at two points, lr_shape's other value
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray")) == 0
    _, _, trials = children(uri, "coupled-e2e")
    assert len(trials) == 4 and len({t.data.params["seed"] for t in trials}) == 1  # coupled: the seed shared
    out = tmp_path / "report"
    assert main(["report", "--tracking-uri", uri, "--out", str(out), "--max-train-error", "1"]) == 0
    agreement = pd.read_csv(out / "granulated.csv")
    pairs = agreement[agreement.measure == "norm_param_l2"].groupby("axis")["pairs"].max()
    assert pairs.to_dict() == {"lr_shape": 1, "rho": 3}  # rho: three values in one group
