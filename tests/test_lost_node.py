"""A node lost mid-search: a two-node Ray cluster on 127.0.0.1 (Ray's own
``cluster_utils.Cluster``), one trial on each node, the second node killed without
warning.  The search must finish with the lost trial restarted from its last
checkpoint on the surviving node: one run per trial, every epoch present, none
left RUNNING."""

import os
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from samtune.search import configure_ray_environment, run_search
from samtune.spec import parse_search_spec

pytestmark = pytest.mark.slow

EPOCHS = 12
TRIAL = {"epochs": EPOCHS, "batch_size": 16, "batch_growth_ratio": 1.0, "batch_stages": 1,
         "train_eval_examples": 256, "sharpness": ["norm_param_l2"], "optimizer": "gsam"}
KILL_WAIT_S = 300  # the most the killer waits for both trials to be under way


@pytest.fixture
def two_node_cluster(no_ray):
    configure_ray_environment(local=False)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # both nodes on 127.0.0.1
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": 128 * 2**20})
    worker = cluster.add_node(num_cpus=1, object_store_memory=128 * 2**20)
    try:
        yield cluster, worker
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def epochs_logged(client, experiment_name):
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], "tags.`samtune.kind` = 'trial'")
    return {run.info.run_id: len(client.get_metric_history(run.info.run_id, "test_error")) for run in runs}


def kill_when_both_trials_run(cluster, worker, uri, name, killed):
    """Remove the second node, ungracefully, once both trials have logged an epoch
    and neither has finished."""
    client = MlflowClient(uri)
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline:
        logged = epochs_logged(client, name)
        if len(logged) == 2 and all(1 <= n < EPOCHS - 2 for n in logged.values()):
            cluster.remove_node(worker, allow_graceful=False)
            killed.set()
            return
        time.sleep(0.5)


def test_search_survives_losing_a_node(tmp_path, two_node_cluster, mlflow_uri):
    cluster, worker = two_node_cluster
    uri = mlflow_uri
    MlflowClient(uri).search_experiments()  # the store exists before two processes use it
    spec = parse_search_spec({"name": "lost-node", "trial": TRIAL, "samples": 2, "concurrency": 2,
                              "resources": {"cpu": 1}, "max_failures": 3,
                              "search": {"rho": {"uniform": [0.02, 0.1]}}})
    killed = threading.Event()
    killer = threading.Thread(target=kill_when_both_trials_run,
                              args=(cluster, worker, uri, "lost-node", killed), daemon=True)
    killer.start()
    started = time.monotonic()
    code = run_search(spec, tracking_uri=uri, address=cluster.address, storage=str(tmp_path / "ray"))
    killer.join(timeout=1)
    print(f"lost-node search: {time.monotonic() - started:.0f} s")
    assert killed.is_set(), "the second node was never killed mid-search"
    assert code == 0

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lost-node")
    runs = client.search_runs([experiment.experiment_id], "tags.`samtune.kind` = 'trial'")
    assert len(runs) == 2 and len({r.data.tags["samtune.trial_id"] for r in runs}) == 2
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["samtune.status"] == "completed"
        steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "test_error")})
        assert steps == list(range(1, EPOCHS + 1))
    # the lost trial failed once and was restored from its checkpoint
    errors = [p for p in Path(tmp_path / "ray").rglob("error.txt")]
    assert errors, "no trial recorded a failure: the node loss did not hit a trial"
