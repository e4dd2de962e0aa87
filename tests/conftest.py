"""Test set-up: 8 host CPU devices before JAX starts, and shared fixtures."""

import os

# Must run before jax initialises its backends: gives 8 CPU devices so that
# sharding tests run on any machine.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# LLVM at -O0 for XLA:CPU's machine code: the suite mostly compiles small
# programs, and LLVM's optimisation was a third of its time (the whole suite
# on 2 workers: 24.6 instead of 36.2 min, 2026-12-07). XLA's own passes do not
# depend on this level, so the tests see the same HLO; results can differ in
# the last bits where LLVM would have fused a multiply and an add. The first
# -O0 run failed 4 tests, all by autodiff through a softmax's max (a NaN when
# a recomputed score no longer equals the max): seqjax.ops.online_softmax and
# a test reference now stop that gradient. Setting the level yourself in
# XLA_FLAGS (=3 is XLA's default) keeps yours.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()

# Where libtpu is installed (the TPU compile step of .ci/run), the lowering
# tests also compile the TPU kernels with it (tests/kernels/lowering.py), in
# every xdist worker: libtpu refuses a second process without this.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# One persistent compilation cache for the whole run, shared by the xdist
# workers and the CLI subprocesses the tests start: many tests compile the
# same programs (a mixer's init and apply at the contract's shapes, say): the
# mixer contract tests ran in 354 s instead of 567 s with it (2 workers).
# Created once, by the process that loads this file first (the xdist
# controller, whose environment the workers inherit), and removed when that
# process's session ends. A cache of one's own (JAX_COMPILATION_CACHE_DIR
# set) is used as it is and kept.
import shutil  # noqa: E402
import tempfile  # noqa: E402

_OWN_JAX_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_JAX_CACHE = tempfile.mkdtemp(prefix="seqjax-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_JAX_CACHE
    # Programs that took 0.3 s or more to compile (JAX's default, 1 s, skips
    # most of a test suite's; 0, caching everything, made tests/models 11 %
    # slower by writing entries nothing reads again; 0.3: as fast as no cache
    # there, and the contract tests keep their gain).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# After the environment above (importing seqjax imports jax, which reads it)
# and before the backends start: keep XLA:CPU's per-call scratch memory mapped
# (seqjax.host_allocator), as the experiment entrypoints do.
from seqjax import host_allocator  # noqa: E402

host_allocator.configure()

import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


# The smoke subset (``pytest -m smoke``): a few op tests, one mixer, one
# model under sequence parallelism and one training run. .ci/run also runs it
# on the newest JAX that pip gives Python 3.12. Node ids, with or without
# parameters; tests/test_smoke_subset.py fails on an entry that matches no
# test, so a renamed test cannot silently leave the subset.
SMOKE = (
    "tests/test_smoke_subset.py",
    "tests/ops/test_linear_scan.py::test_complex",
    "tests/ops/test_linear_scan.py::test_shared_decay_stays_compact_in_memory",
    "tests/ops/test_linear_scan_sp.py::test_linear_scan_sp[p8_complex_shared_decay]",
    "tests/ops/test_linear_scan_sp.py::test_sp_scan_is_exact_in_float64",
    "tests/mixers/test_s5.py",
    "tests/parallel/test_sequence_models.py::test_sequence_sharded_model_equals_unsharded[s5]",
    "tests/test_lra_smoke.py::test_other_families_on_listops[s5]",
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    def in_entry(nodeid, entry):
        return nodeid == entry or nodeid.startswith((entry + "[", entry + "::"))

    matched = set()
    for item in items:
        for entry in SMOKE:
            if in_entry(item.nodeid, entry):
                item.add_marker(pytest.mark.smoke)
                matched.add(entry)
    # Stale: an entry whose file was collected, or no longer exists, that matches no test.
    files = {item.nodeid.split("::")[0] for item in items}
    config.smoke_stale = [e for e in SMOKE if e not in matched and (
        e.split("::")[0] in files or not (config.rootpath / e.split("::")[0]).exists())]


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


# Each compiled XLA:CPU program keeps a few memory mappings, and an xdist
# worker that runs for half an hour compiles tens of thousands of programs: at
# Linux's default vm.max_map_count (65,530) the next compile segfaults inside
# LLVM (seen in CI as a worker crash in whichever test compiled next). Dropping
# JAX's caches when a worker passes the threshold releases those programs; the
# tests that follow recompile what they need.
_MAX_MAPS = int(os.environ.get("SEQJAX_TEST_MAX_MAPS", "20000"))


def _map_count():
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no such limit to stay under
        return 0


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if _map_count() > _MAX_MAPS:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


def pytest_sessionfinish(session, exitstatus):
    """Removes the run's compilation cache in the process that made it (workers leave it)."""
    if _OWN_JAX_CACHE is not None:
        shutil.rmtree(_OWN_JAX_CACHE, ignore_errors=True)
