"""Shared fixtures.  Ray is expensive to start (about 10 s here), so every test that
needs it shares one local instance for the whole session."""

import pytest


@pytest.fixture(scope="session")
def ray_address():
    """A local Ray instance for the session; yields the address other drivers can join."""
    import ray

    from engine.distributed import init_ray

    init_ray(None, num_cpus=4)  # two workers plus headroom for Ray Train's own actors
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
