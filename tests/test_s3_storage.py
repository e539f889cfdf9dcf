"""``samtune search --storage s3://...`` against a real S3 protocol: moto's standalone
server on 127.0.0.1 in MinIO's place (tests/servers.py), reached as docs/how-to/ray-cluster.md tells users
(the AWS keys in the environment, the endpoint in the storage URI), with the MLflow
server of deploy/compose.yaml proxying its artifacts into a bucket of the same server.
A search is interrupted (Ctrl-C) after its first trial's first epoch, then resumed with
``--resume`` from the bucket; both trials complete, Ray's experiment state and
checkpoints lie in the bucket, and the runs' artifacts and logged models are read back
through MLflow."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import servers
import yaml

USER = "samtune"
NAME = "s3-e2e"
RAY_BUCKET, ARTIFACT_BUCKET = "samtune-ray", "mlflow-artifacts"  # as in deploy/compose.yaml
# one trial at a time: when the first trial's first epoch is in MLflow, the second has not started
SPACE = {"name": NAME, "samples": 2, "concurrency": 1, "seed": 3, "resources": {"cpu": 1},
         "trial": {"epochs": 3, "batch_size": 64, "batch_growth_ratio": 1.0, "batch_stages": 1,
                   "train_eval_examples": 256, "sharpness": ["norm_param_l2"]},
         "search": {"rho": {"loguniform": [0.01, 0.3]}}}
FIRST_EPOCH_TIMEOUT_S = 150


def _samtune(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "samtune.cli", *args], env=env, cwd=log.parent,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(process: subprocess.Popen, log: Path, timeout_s: float) -> str:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()  # its own session: Ray's processes share the driver's fate
        process.wait(timeout=60)
    return log.read_text(errors="replace")


def _trial_runs(client, experiment_name: str):
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id], max_results=100)
            if r.data.tags.get("samtune.kind") == "trial"]


def _first_epoch_done(client) -> bool:
    return any(client.get_metric_history(run.info.run_id, "test_error") for run in _trial_runs(client, NAME))


def test_data_parallel_trials_keep_the_storage_uris_query_last():
    """The Ray Train runs of data-parallel trials go under the search's Ray folder; with
    an S3 endpoint in the URI the query stays at its end (else pyarrow reads the scheme
    as ``http/data_parallel``)."""
    from samtune.search.context import build_context
    from samtune.spec import parse_search_spec

    ray_path = "s3://samtune-ray/ray_results/s3-e2e-1?endpoint_override=127.0.0.1:9000&scheme=http"
    context = build_context(parse_search_spec(SPACE), tracking_uri="http://127.0.0.1:5000", experiment_id="1",
                            parent_run_id="p", resources={"cpu": 1}, ray_path=ray_path)
    assert context.parallel_storage == ("s3://samtune-ray/ray_results/s3-e2e-1/data_parallel"
                                        "?endpoint_override=127.0.0.1:9000&scheme=http")


@pytest.mark.slow
def test_search_on_s3_storage_interrupted_then_resumed(tmp_path, monkeypatch):
    import mlflow
    import torch
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    with servers.moto_server(tmp_path / "s3", buckets=(RAY_BUCKET, ARTIFACT_BUCKET)) as s3, \
            servers.postgres() as db, servers.mlflow_server(db, tmp_path / "mlflow", s3=s3) as server:
        server.create_user(USER)
        ready_s = time.monotonic() - started
        space = tmp_path / "space.yaml"
        space.write_text(yaml.safe_dump(SPACE))
        # docs/how-to/ray-cluster.md: S3 keys from AWS_*, the endpoint in the URI
        storage = f"s3://{RAY_BUCKET}/ray_results?endpoint_override={s3.endpoint}&scheme=http"
        credentials = {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": server.users[USER]}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env |= s3.credentials | credentials | {
            "AWS_DEFAULT_REGION": s3.region, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
            "SAMTUNE_LOG_DIR": str(tmp_path / "logs")}
        for key, value in credentials.items():
            monkeypatch.setenv(key, value)  # this process reads MLflow as the same user
        client = MlflowClient(server.url)
        command = ["search", str(space), "--storage", storage, "--tracking-uri", server.url]

        # 1. the search, interrupted once its first trial has an epoch in MLflow
        first_log = tmp_path / "first.log"
        first = _samtune(command, env, first_log)
        deadline = time.monotonic() + FIRST_EPOCH_TIMEOUT_S
        try:
            while not _first_epoch_done(client):
                assert first.poll() is None, first_log.read_text(errors="replace")
                assert time.monotonic() < deadline, f"no epoch after {FIRST_EPOCH_TIMEOUT_S} s:\n" + \
                    first_log.read_text(errors="replace")
                time.sleep(0.5)  # polling MLflow for the first finished epoch
            first.send_signal(signal.SIGINT)  # Ctrl-C
        finally:
            output = _finish(first, first_log, timeout_s=120)
        first_s = time.monotonic() - started - ready_s
        assert first.returncode == 130, output
        interrupted = _trial_runs(client, NAME)
        assert sum(r.data.tags.get("samtune.status") == "completed" for r in interrupted) < 2, output
        parent, = [r for r in client.search_runs([interrupted[0].info.experiment_id])
                   if r.data.tags.get("samtune.kind") == "search"]
        assert parent.info.status == "KILLED"
        ray_name = parent.data.tags["samtune.ray_name"]
        assert parent.data.tags["samtune.storage"] == storage
        # what --resume needs is in the bucket, not on this machine
        state = s3.keys(RAY_BUCKET, f"ray_results/{ray_name}/")
        assert any(Path(k).name.startswith("experiment_state") for k in state), state
        assert f"ray_results/{ray_name}/tuner.pkl" in state

        # 2. --resume from the bucket finishes it
        resumed_log = tmp_path / "resumed.log"
        resumed = _samtune([*command, "--resume"], env, resumed_log)
        output = _finish(resumed, resumed_log, timeout_s=240)
        resume_s = time.monotonic() - started - ready_s - first_s
        assert resumed.returncode == 0, output
        assert "2/2 trials finished (2 completed)" in output, output

        runs = _trial_runs(client, NAME)
        ids = sorted(r.data.tags["samtune.trial_id"] for r in runs)
        assert len(ids) == 2 and len(set(ids)) == 2, ids  # no run twice, none lost
        for run in runs:
            assert run.info.status == "FINISHED" and run.data.tags["samtune.status"] == "completed"
            assert {m.step for m in client.get_metric_history(run.info.run_id, "test_error")} == {1, 2, 3}
        assert client.get_run(parent.info.run_id).info.status == "FINISHED"

        # Ray's experiment state and both trials' checkpoints are objects in the bucket
        keys = s3.keys(RAY_BUCKET, f"ray_results/{ray_name}/")
        for trial_id in ids:
            checkpoints = {k.split("/")[3] for k in keys
                           if k.startswith(f"ray_results/{ray_name}/trial_{trial_id}/checkpoint_")}
            assert checkpoints, (trial_id, keys)

        # MLflow's artifacts went to the other bucket of the same server, through the MLflow server
        experiment_id = runs[0].info.experiment_id
        assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
        artifacts = s3.keys(ARTIFACT_BUCKET)
        for run in runs:
            assert f"{experiment_id}/{run.info.run_id}/artifacts/config.yaml" in artifacts, artifacts
        # each trial's logged model: listed by MLflow, its files in the bucket, its weights read back
        models = client.search_logged_models(experiment_ids=[experiment_id])
        # (a set: a trial whose last epoch ended as Ctrl-C landed, before Tune recorded it as
        # done, runs that epoch again on --resume and logs its model again, in the same run)
        assert {m.source_run_id for m in models} == {r.info.run_id for r in runs}
        for model in models:
            assert model.status == LoggedModelStatus.READY
            assert any(k.endswith(f"{model.model_id}/artifacts/model.pt") for k in artifacts), artifacts
            path = mlflow.artifacts.download_artifacts(artifact_uri=f"{model.artifact_location}/model.pt",
                                                       dst_path=str(tmp_path / model.model_id),
                                                       tracking_uri=server.url)
            state = torch.load(path, weights_only=True)
            assert set(state) == {"config", "model"}
            assert state["model"] and all(isinstance(t, torch.Tensor) for t in state["model"].values())
    print(f"\nmoto + PostgreSQL + MLflow ready in {ready_s:.1f} s; interrupted search {first_s:.1f} s; "
          f"resumed search {resume_s:.1f} s; {time.monotonic() - started:.1f} s in all")
