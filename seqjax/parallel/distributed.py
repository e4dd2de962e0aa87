"""Multi-host primitives: start ``jax.distributed``, build global batches, fetch results.

A multi-host run is N processes (one per host, or several on one machine for
tests), each owning its local devices; together they see
``jax.device_count()`` global devices and build one mesh over all of them.
Every process runs the same program; what differs per process is only which
rows of the global batch it reads and which shards of the arrays it holds.

- :func:`initialize` starts the distributed runtime from ``config.distributed``
  (or ``SEQJAX_*`` environment variables, or a detected cluster) and is a
  no-op for a single process. Call it before anything touches a JAX backend.
- :func:`local_rows` says which rows of the global batch this process must
  load; :func:`global_batch` turns those host-local numpy rows into global
  ``jax.Array`` s; :func:`host_array_to_global` does the same for an array
  that every host built identically (e.g. an eval batch from a fixed seed).
- :func:`fetch` brings global arrays back as numpy on every host (a
  collective: call it on all processes, in the same order).
- :func:`is_primary` is true on process 0 only: log and write files there.

All of these work unchanged with one process, so the trainer needs no
single-host branch. This module does not import Flax.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from seqjax.errors import ConfigError

#: Fields of ``config.distributed`` (all optional).
FIELDS = (
    "enabled",
    "coordinator_address",
    "num_processes",
    "process_id",
    "local_device_ids",
    "initialization_timeout",
)

#: Environment variables read when the config leaves a field unset (None).
ENV_VARS = {
    "coordinator_address": "SEQJAX_COORDINATOR_ADDRESS",
    "num_processes": "SEQJAX_NUM_PROCESSES",
    "process_id": "SEQJAX_PROCESS_ID",
}

_ENABLED_CHOICES = ("auto", True, False)


def _field(name: str) -> str:
    return f"config.distributed.{name}"


def _as_dict(section) -> dict:
    if section is None:
        return {}
    if hasattr(section, "to_dict"):  # ml_collections ConfigDict / FrozenConfigDict
        section = section.to_dict()
    if not isinstance(section, Mapping):
        raise ConfigError(f"config.distributed={section!r} must be a ConfigDict or dict with fields: {', '.join(FIELDS)}")
    unknown = sorted(set(section) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config.distributed.{unknown[0]} is not a field; fields: {', '.join(FIELDS)}")
    return dict(section)


def _int_or_none(name: str, value, *, minimum: int) -> int | None:
    """Validates an optional int field (ints given as strings come from env vars)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def _resolve(section: dict) -> dict:
    """Config values, falling back to ``SEQJAX_*`` env vars, validated."""
    out = {}
    sources = {}
    for key, env in ENV_VARS.items():
        value = section.get(key)
        sources[key] = _field(key)
        if value is None and os.environ.get(env, "") != "":
            value, sources[key] = os.environ[env], env
        out[key] = value

    addr = out["coordinator_address"]
    if addr is not None:
        host, sep, port = str(addr).rpartition(":")
        if not isinstance(addr, str) or not sep or not host or not port.isdigit():
            raise ConfigError(f"{sources['coordinator_address']}={addr!r} must be 'host:port' (e.g. 'localhost:12345')")
    out["num_processes"] = _int_or_none(sources["num_processes"], out["num_processes"], minimum=1)
    out["process_id"] = _int_or_none(sources["process_id"], out["process_id"], minimum=0)
    n, pid = out["num_processes"], out["process_id"]
    if n is not None and pid is not None and pid >= n:
        raise ConfigError(f"{sources['process_id']}={pid} must be < num_processes={n}")

    ids = section.get("local_device_ids")
    if ids is not None:
        seq = [ids] if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool) else ids
        if isinstance(seq, str) or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in seq):
            raise ConfigError(f"{_field('local_device_ids')}={ids!r} must be None, an int or a list of ints >= 0")
        ids = [int(i) for i in seq]
    out["local_device_ids"] = ids

    timeout = section.get("initialization_timeout")
    out["initialization_timeout"] = _int_or_none(_field("initialization_timeout"), timeout, minimum=1)
    return out


def detect_cluster() -> str | None:
    """Names the multi-process cluster environment this process runs in, if any.

    Plain environment-variable checks, mirroring what ``jax.distributed.initialize()``
    auto-detects (``jax._src.clusters``) without importing private modules:

    - ``"slurm"``: ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_PROCID``,
      ``SLURM_LOCALID`` set and ``SLURM_NTASKS`` > 1 (an ``srun`` with several tasks;
      a one-task job is single-process);
    - ``"ompi"``: ``OMPI_MCA_orte_hnp_uri`` set and ``OMPI_COMM_WORLD_SIZE`` > 1 (``mpirun``);
    - ``"tpu"``: ``MEGASCALE_COORDINATOR_ADDRESS`` set, or ``TPU_WORKER_HOSTNAMES`` /
      ``TPU_PROCESS_ADDRESSES`` listing more than one host (GKE multi-host TPU).

    A GCE TPU pod slice that sets none of these is found by JAX through the
    metadata server; set ``config.distributed.enabled=True`` there.

    Returns:
      ``"slurm"``, ``"ompi"``, ``"tpu"`` or None.
    """
    env = os.environ

    def count(var: str) -> int:
        try:
            return int(env.get(var, "1"))
        except ValueError:
            return 1

    if all(v in env for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")) and count(
        "SLURM_NTASKS"
    ) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1:
        return "ompi"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    for var in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        if len([h for h in env.get(var, "").split(",") if h.strip()]) > 1:
            return "tpu"
    return None


def _ensure_cpu_collectives() -> None:
    """Makes CPU cross-process collectives available (gloo) unless the user chose one.

    In JAX 0.10.2 ``jax_cpu_collectives_implementation`` already defaults to
    ``"gloo"`` (allowed: ``"gloo"``, ``"mpi"``, ``"megascale"``); older releases
    defaulted to none, under which a multi-process CPU computation fails. The
    flag is read when the CPU client is created, so this must run before any
    backend initialises; it only affects the CPU backend.
    """
    try:
        current = jax.config.jax_cpu_collectives_implementation
    except AttributeError:  # a JAX without the option
        return
    if current in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(section=None) -> bool:
    """Starts the JAX distributed runtime when this is a multi-process run.

    Call once per process, first thing, before any JAX computation or
    ``jax.devices()``. Fields of ``section`` (``config.distributed``), all optional:

    - ``enabled``: ``"auto"`` (default), ``True`` or ``False``.
      ``False``: never initialise (single process). ``"auto"``: initialise when
      the settings below give ``num_processes > 1``, or, with none of them set,
      when :func:`detect_cluster` finds SLURM / Open MPI / multi-host TPU
      (JAX then fills in the values itself); otherwise a no-op.
      ``True``: always initialise, letting ``jax.distributed.initialize`` detect
      whatever the settings leave unset (e.g. a GCE TPU pod via its metadata server).
    - ``coordinator_address``: ``"host:port"`` of process 0
      (env ``SEQJAX_COORDINATOR_ADDRESS``).
    - ``num_processes``: total processes (env ``SEQJAX_NUM_PROCESSES``).
    - ``process_id``: this process, ``0 <= process_id < num_processes``
      (env ``SEQJAX_PROCESS_ID``).
    - ``local_device_ids``: restrict this process to these local devices (GPU).
    - ``initialization_timeout``: seconds to wait for all processes (JAX default 300).

    A config value that is None falls back to the environment variable.
    On CPU, cross-process collectives use gloo (see :func:`_ensure_cpu_collectives`).

    Args:
      section: ``config.distributed`` (ConfigDict or dict), or None for
        environment variables / cluster detection only.

    Returns:
      True if the distributed runtime is running (started now or earlier),
      False for a single-process run (nothing was done).

    Raises:
      ConfigError: a field has a bad value, or explicit settings are incomplete
        and no cluster environment can fill them in.
      RuntimeError: a JAX backend was already initialised in this process.
    """
    if jax.distributed.is_initialized():
        return True
    fields = _as_dict(section)
    enabled = fields.get("enabled", "auto")
    if enabled is None:
        enabled = "auto"
    if isinstance(enabled, str) and enabled.lower() in ("true", "false"):
        enabled = enabled.lower() == "true"
    if not any(enabled is c if isinstance(c, bool) else enabled == c for c in _ENABLED_CHOICES):
        raise ConfigError(f"{_field('enabled')}={enabled!r} is not allowed; allowed: auto, True, False")
    if enabled is False:
        return False

    values = _resolve(fields)
    explicit = {k: values[k] for k in ENV_VARS}
    cluster = detect_cluster()
    if enabled == "auto":
        n = explicit["num_processes"]
        if n == 1 or (n is None and cluster is None):
            if n is None and (explicit["coordinator_address"] is not None or explicit["process_id"] is not None):
                raise ConfigError(
                    f"{_field('num_processes')} is unset (env SEQJAX_NUM_PROCESSES) but coordinator_address/process_id "
                    "are set; set num_processes too"
                )
            return False
    if cluster is None and enabled == "auto":
        missing = [k for k, v in explicit.items() if v is None]
        if missing:
            raise ConfigError(
                f"{_field(missing[0])} is unset (env {ENV_VARS[missing[0]]}) and no cluster environment "
                f"(SLURM, Open MPI, TPU) was detected; set {', '.join(missing)}"
            )

    _ensure_cpu_collectives()
    kwargs: dict[str, Any] = {k: v for k, v in explicit.items() if v is not None}
    if values["local_device_ids"] is not None:
        kwargs["local_device_ids"] = values["local_device_ids"]
    if values["initialization_timeout"] is not None:
        kwargs["initialization_timeout"] = values["initialization_timeout"]
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # JAX could not fill in what the config left unset
        raise ConfigError(
            f"jax.distributed.initialize failed ({e}); set config.distributed.coordinator_address, "
            "num_processes and process_id (or SEQJAX_* env vars)"
        ) from e
    return True


def is_primary() -> bool:
    """True on process 0 (the one that logs and writes shared files)."""
    return jax.process_index() == 0


def _leaves_with_shardings(tree, shardings):
    """Pairs each leaf of ``tree`` with its sharding (one sharding may serve all)."""
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda _: shardings, tree)
    return shardings


def local_rows(sharding: jax.sharding.Sharding, global_shape) -> slice:
    """The rows (leading axis) of the global array that this process must supply.

    With a batch sharding such as ``P(("data", "fsdp"))`` over a mesh whose
    devices are ordered by process (``jax.make_mesh`` does this), each process
    holds one contiguous block of rows: a data loader reads ``rows`` of the
    global batch and passes them to :func:`global_batch`.

    Args:
      sharding: the sharding of the global array.
      global_shape: its global shape (an int is taken as the number of rows of
        a rank-1 array).

    Returns:
      ``slice(start, stop)`` into the leading axis; ``slice(0, n)`` when the
      leading axis is not split across processes.

    Raises:
      ValueError: this process's rows are not one contiguous block (a mesh whose
        device order interleaves processes).
    """
    shape = (global_shape,) if isinstance(global_shape, (int, np.integer)) else tuple(global_shape)
    n = shape[0]
    blocks = set()
    for index in sharding.addressable_devices_indices_map(shape).values():
        rows = index[0] if index else slice(None)
        start, stop, _ = rows.indices(n)
        blocks.add((start, stop))
    blocks = sorted(blocks)
    for (_, prev_stop), (next_start, _) in zip(blocks, blocks[1:]):
        if next_start != prev_stop:
            raise ValueError(f"rows of process {jax.process_index()} are not one contiguous block under {sharding}")
    start, stop = blocks[0][0], blocks[-1][1]
    return slice(start, stop)


def global_batch(local_batch, shardings):
    """Host-local rows → global ``jax.Array`` s.

    Each process passes its rows of the global batch (see :func:`local_rows`;
    processes in order along the batch axis). A leaf whose sharding is fully
    replicated is taken as the whole value (it must then be equal on all hosts).
    With one process this is a ``device_put`` of the whole batch.

    Args:
      local_batch: pytree of numpy-like arrays, this process's rows.
      shardings: one ``jax.sharding.Sharding`` for every leaf, or a pytree of
        them with the structure of ``local_batch``.

    Returns:
      A pytree of global arrays with the given shardings; the leading axis of
      a sharded leaf is ``process_count`` times the local one (for a batch
      sharding over all devices).
    """

    def one(local, sharding):
        local = np.asarray(local)
        if sharding.is_fully_replicated:
            return jax.make_array_from_process_local_data(sharding, local, local.shape)
        return jax.make_array_from_process_local_data(sharding, local)

    return jax.tree.map(one, local_batch, _leaves_with_shardings(local_batch, shardings))


def host_array_to_global(x, sharding: jax.sharding.Sharding) -> jax.Array:
    """An array that every host holds in full (and identically) → a global array.

    Each process places only the slices that its own devices need, so nothing
    crosses hosts. Use it for data that every host generated from the same
    seed, e.g. a fixed eval batch.

    Args:
      x: numpy-like array, equal on all processes.
      sharding: the sharding of the result.

    Returns:
      A ``jax.Array`` of ``x.shape`` with ``sharding``.
    """
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def fetch(tree):
    """Global arrays → numpy arrays holding the full value, on every process.

    Arrays this process can read whole (fully addressable, or replicated) are
    copied locally; the others are gathered from all processes in one
    ``process_allgather`` call, so every process must call :func:`fetch` with
    the same tree structure at the same point of the program.

    Args:
      tree: pytree of ``jax.Array`` s (other leaves pass through ``np.asarray``).

    Returns:
      The same pytree with numpy leaves.
    """
    leaves, treedef = jax.tree.flatten(tree)
    out: list[Any] = [None] * len(leaves)
    remote = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if leaf.is_fully_replicated:
                out[i] = np.asarray(leaf.addressable_data(0))
            else:
                remote.append(i)
        else:
            out[i] = np.asarray(leaf)
    if remote:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather([leaves[i] for i in remote], tiled=True)
        for i, value in zip(remote, gathered):
            out[i] = np.asarray(value)
    return jax.tree.unflatten(treedef, out)
