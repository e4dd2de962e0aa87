"""Test set-up: 8 host CPU devices before JAX starts, and shared fixtures."""

import os

# Must run before jax initialises its backends: gives 8 CPU devices so that
# sharding tests run on any machine.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name: fresh per test, reproducible.

    crc32, not hash(): Python salts string hashes per process, which would give
    every run (and every xdist worker) different inputs.
    """
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    """Clears chex's trace counter before each test.

    chex keys it on function identity, and a function object collected after
    one test can hand its id to another test's function: without this, a
    ``chex.assert_max_traces`` test could fail (or pass) because of an earlier one.
    """
    import chex

    chex.clear_trace_counter()
    yield
