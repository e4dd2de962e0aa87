"""Tests of seqjax.parallel.distributed: config checks in-process, and a real
2-process × 4-CPU-device run compared with 1 process × 8 devices.

The multi-process test starts tests/parallel/mp_worker_primitives.py through
mp_launch (gloo CPU collectives over localhost); ~20 s on 2 loaded cores.
"""

import time

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from seqjax.errors import ConfigError
from seqjax.parallel import distributed
from tests.parallel import mp_launch

_CLUSTER_VARS = (
    "SEQJAX_COORDINATOR_ADDRESS",
    "SEQJAX_NUM_PROCESSES",
    "SEQJAX_PROCESS_ID",
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "OMPI_MCA_orte_hnp_uri",
    "OMPI_COMM_WORLD_SIZE",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
)


@pytest.fixture
def clean_env(monkeypatch):
    """No cluster or SEQJAX_* variables (CI could run inside SLURM)."""
    for var in _CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# --- initialize: decisions and config errors (never starts the runtime here) ---


def test_initialize_single_process_is_noop(clean_env):
    assert distributed.initialize() is False
    assert distributed.initialize(ConfigDict({"enabled": "auto", "num_processes": 1})) is False
    clean_env.setenv("SEQJAX_NUM_PROCESSES", "4")  # enabled=False wins over the environment
    assert distributed.initialize({"enabled": False}) is False
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize(
    "section, env, field",
    [
        ({"enabled": "yes"}, {}, "config.distributed.enabled"),
        ({"num_processes": 0}, {}, "config.distributed.num_processes"),
        ({"num_processes": 2, "process_id": 2, "coordinator_address": "h:1"}, {}, "config.distributed.process_id"),
        ({"coordinator_address": "localhost", "num_processes": 2, "process_id": 0}, {}, "coordinator_address"),
        ({"local_device_ids": "0,1"}, {"SEQJAX_NUM_PROCESSES": "2"}, "config.distributed.local_device_ids"),
        ({"initialization_timeout": -1}, {"SEQJAX_NUM_PROCESSES": "2"}, "config.distributed.initialization_timeout"),
        ({"coordinator": "h:1"}, {}, "config.distributed.coordinator"),
        ({}, {"SEQJAX_NUM_PROCESSES": "two"}, "SEQJAX_NUM_PROCESSES"),
        # Incomplete explicit settings and no cluster to fill them in:
        ({"num_processes": 2}, {}, "config.distributed.coordinator_address"),
        ({}, {"SEQJAX_COORDINATOR_ADDRESS": "h:1", "SEQJAX_NUM_PROCESSES": "2"}, "config.distributed.process_id"),
        ({"process_id": 1}, {}, "config.distributed.num_processes"),
    ],
)
def test_initialize_rejects_bad_values(clean_env, section, env, field):
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as info:
        distributed.initialize(section)
    assert "\n" not in str(info.value)
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1"}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"}, "slurm"),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}, None),  # salloc shell, no srun step
        ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "4"}, "ompi"),
        ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "1"}, None),
        ({"TPU_WORKER_HOSTNAMES": "host-a"}, None),
        ({"TPU_WORKER_HOSTNAMES": "host-a,host-b"}, "tpu"),
        ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1:8080"}, "tpu"),
    ],
)
def test_detect_cluster(clean_env, env, expected):
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert distributed.detect_cluster() == expected


# --- data primitives with one process (8 host devices from conftest) ---


def test_primitives_single_process(rng):
    mesh = jax.make_mesh((2, 4), ("fsdp", "data"), axis_types=(AxisType.Auto,) * 2)
    batch_sharding = NamedSharding(mesh, P(("fsdp", "data")))
    repl = NamedSharding(mesh, P())
    x = rng.standard_normal((16, 3)).astype(np.float32)
    scale = rng.standard_normal((3,)).astype(np.float32)

    assert distributed.local_rows(batch_sharding, x.shape) == slice(0, 16)
    assert distributed.local_rows(repl, 16) == slice(0, 16)
    out = distributed.global_batch({"x": x, "scale": scale}, {"x": batch_sharding, "scale": repl})
    assert out["x"].sharding == batch_sharding and out["scale"].sharding == repl
    np.testing.assert_array_equal(np.asarray(out["x"]), x)
    g = distributed.host_array_to_global(x, NamedSharding(mesh, P(None, None)))
    y = jax.jit(lambda a, s: a * s, out_shardings=batch_sharding)(out["x"], out["scale"])
    fetched = distributed.fetch({"y": y, "g": g, "n": 3})
    np.testing.assert_allclose(fetched["y"], x * scale, rtol=1e-6)
    np.testing.assert_array_equal(fetched["g"], x)
    assert isinstance(fetched["y"], np.ndarray) and fetched["n"] == 3
    assert distributed.is_primary()


def test_local_rows_single_process_covers_all_rows():
    # With one process every device is local, so any batch split is one block;
    # the 2-process worker checks the split (and the interleaved-order error).
    mesh = jax.make_mesh((2, 4), ("fsdp", "data"), axis_types=(AxisType.Auto,) * 2)
    assert distributed.local_rows(NamedSharding(mesh, P(("data", "fsdp"))), (8, 2)) == slice(0, 8)
    sub = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    assert distributed.local_rows(NamedSharding(sub, P("data")), 8) == slice(0, 8)


# --- the launcher itself ---


def test_launcher_reports_failure_and_kills_on_timeout():
    with pytest.raises(mp_launch.MultiProcessError, match="No module named"):
        mp_launch.run_processes("tests.parallel.no_such_worker", num_processes=2, timeout=60)
    start = time.monotonic()
    with pytest.raises(mp_launch.MultiProcessError, match="timed out"):
        # Sleeps 30 s unless killed.
        mp_launch.run_processes("timeit", ["-n", "1", "-r", "1", "import time; time.sleep(30)"], timeout=1)
    assert time.monotonic() - start < 15


# --- 2 processes × 4 devices against 1 process × 8 devices ---


def test_two_processes_match_one_process(tmp_path):
    start = time.monotonic()
    worker = "tests.parallel.mp_worker_primitives"
    two = mp_launch.run_processes(worker, ["--ckpt_dir", tmp_path / "ckpt_2x4"], num_processes=2, devices_per_process=4)
    one = mp_launch.run_processes(
        worker,
        ["--ckpt_dir", tmp_path / "ckpt_1x8", "--restore_from", tmp_path / "ckpt_2x4"],
        num_processes=1,
        devices_per_process=8,
    )
    elapsed = time.monotonic() - start

    two_train, two_ckpt = zip(*(mp_launch.results(c) for c in two))
    ((one_train, one_ckpt),) = (mp_launch.results(c) for c in one)

    for pid, r in enumerate(two_train):
        assert r["process_index"] == pid and r["process_count"] == 2 and r["initialized"]
        assert r["device_count"] == 8 and r["local_device_count"] == 4
        assert r["is_primary"] == (pid == 0)
        assert r["rows"] == [16 * pid, 16 * pid + 16]  # each host fed only its half of the batch
        # Batch split data-major while devices are numbered fsdp-major: each
        # process's rows interleave with the other's, which local_rows refuses.
        assert r["interleaved_rows_error"]
        # Parameters are split across the two processes, so fetch() really gathered.
        assert not r["params_fully_addressable"] and not r["preds_fully_addressable"]
        assert r["step"] == 3
    assert not one_train["interleaved_rows_error"]
    assert one_train["process_count"] == 1 and one_train["device_count"] == 8 and not one_train["initialized"]

    # Same losses, predictions and parameters as one process (float32 tolerance),
    # and both hosts agree exactly on everything they fetched.
    assert two_train[0]["losses"] == two_train[1]["losses"]
    assert two_train[0]["preds"] == two_train[1]["preds"]
    np.testing.assert_allclose(two_train[0]["losses"], one_train["losses"], rtol=1e-5)
    assert len(set(np.round(one_train["losses"], 4))) == 3  # the loss moved
    np.testing.assert_allclose(two_train[0]["preds"], one_train["preds"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two_train[0]["w1_sum"], one_train["w1_sum"], rtol=1e-5, atol=1e-5)

    # Checkpoint written by all processes into one directory, restored exactly into
    # the same shardings; a step from it gives the same loss as from the live state.
    for r in (*two_ckpt, one_ckpt):
        assert r["restore_equal"] and r["restore_shardings_ok"]
        assert r["loss_live"] == r["loss_restored"]
    # The 2×4 checkpoint restores into the 1×8 layout.
    assert one_ckpt["cross_max_abs_diff"] < 1e-5
    assert elapsed < 60, f"multi-process test took {elapsed:.1f} s"
