"""Fixtures shared by the end-to-end tests."""

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray bound to 127.0.0.1 for one test module, with two CPUs."""
    from samtune.search import configure_ray_environment

    configure_ray_environment(local=True)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    yield
    ray.shutdown()
