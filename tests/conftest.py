"""Fixtures shared by the end-to-end tests."""

import pytest

from samtune.search import configure_ray_environment

# Ray reads some of these when it is first imported, and a test module may import it
# while pytest collects: set them before any, so every local Ray binds to 127.0.0.1.
configure_ray_environment(local=True)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray bound to 127.0.0.1 for one test module, with two CPUs."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    yield
    ray.shutdown()
