"""Fixtures shared by the tests: a tracking store to write to, and a local Ray."""

import os
import shutil
import sys
import tempfile

import pytest

from samtune.search import configure_ray_environment

# Ray reads some of these when it is first imported, and a test module may import it
# while pytest collects: set them before any, so every local Ray binds to 127.0.0.1.
configure_ray_environment(local=True)
# commands run in-process write their log files here, not into the working tree
os.environ.setdefault("SAMTUNE_LOG_DIR", tempfile.mkdtemp(prefix="samtune-test-logs-"))


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory):
    """An empty SQLite tracking store with MLflow's tables made.  A new file spends
    seconds in MLflow's schema migrations on first use; each test's store is a copy."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def store_in(migrated_store):
    """``store_in(folder)``: a fresh tracking store ``folder/mlflow.db``, and its URI."""
    def make(folder) -> str:
        shutil.copyfile(migrated_store, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return make


@pytest.fixture
def mlflow_uri(tmp_path, store_in):
    """A fresh tracking store for one test: ``sqlite:///<tmp_path>/mlflow.db``."""
    return store_in(tmp_path)


def _start_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    return ray


@pytest.fixture
def local_ray():
    """A local Ray bound to 127.0.0.1 with two CPUs.  Starting one costs seconds, so it
    is kept for the tests after; a test that needs a process without Ray (its own
    cluster, or an environment Ray must start in) asks for ``no_ray``."""
    import ray

    return ray if ray.is_initialized() else _start_ray()


@pytest.fixture
def no_ray():
    """No Ray in this process when the test starts, and none left when it ends."""
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under ``-n 2 --dist loadgroup`` (``make test``) the end-to-end tests run one after
    another in one process (they each start Ray, servers or several processes, and keep
    both cores busy) while the unit tests share the other."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("end-to-end"))


def pytest_sessionfinish(session, exitstatus):
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def one_thread():
    """Per-image work is single-threaded; intra-op threads only contend on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
