"""Shared fixtures.  Ray is expensive to start (about 10 s here), so every test that
needs it shares one local instance for the whole session, and is marked ``slow``."""

import pytest
import torch

import engine.compute.builtins  # noqa: F401  (as the command line and the API: the registries fill on first use)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items):
    """A test on the shared Ray instance is slow whether or not it says so: ``-m "not slow"``
    never starts Ray."""
    for item in items:
        if "ray_address" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_address():
    """A local Ray instance for the session; yields the address other drivers can join.  It is
    started as for users: token authentication on, 127.0.0.1 only; a driver started with this
    process's environment (RAY_AUTH_MODE=token, set by Ray) and HOME (~/.ray/auth_token) joins it."""
    import ray

    from engine.trial.distributed import init_ray

    # Two workers plus headroom for Ray Train's own actors; one logical GPU (none needs to exist)
    # for the resource arithmetic of trials packed onto a GPU (tests/suite/test_packing.py).
    init_ray(None, num_cpus=4, num_gpus=1)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    one intra-op thread is as fast on an idle machine and far faster on a loaded CI runner,
    where spinning worker threads fight over the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


@pytest.fixture
def count_host_reads(monkeypatch):
    """Call it to start counting: returns a list that records (method name, tensor) for
    every read of a tensor's value on the host (item, tolist, bool, float, int, numpy)
    until the test calls ``monkeypatch.undo()``."""

    def start() -> list:
        reads = []
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def counting(self, *args, _original=original, _name=name, **kwargs):
                reads.append((_name, self))
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counting)
        return reads

    return start


@pytest.fixture
def aws(s3, monkeypatch):
    """This process reads the bucket of the module's ``s3`` server as a user would: through
    the AWS_* variables, with no filesystem cached from another test."""
    from engine.storage import object_store

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(object_store, "_OBJECT_STORES", {})
    return s3
