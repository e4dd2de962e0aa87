"""Whole-model sequence parallelism: run a mixer's core op on length shards.

The model runs in the *global* view under ``jit`` (the partitioner splits the
projections, norms, MLPs and convolutions like any other op, following the
logical-axis constraints). Only a mixer's sequence-mixing core — the scan, the
attention — needs to know that the length is split: a mixer with
``sequence_axis`` set wraps that core in :func:`sequence_map`, which

* finds the context mesh (``jax.set_mesh`` / :func:`seqjax.parallel.activate`);
* when the mesh has the axis with size > 1, runs the core inside
  ``jax.shard_map`` with the per-token arrays split as
  ``P(batch axes, sequence_axis)`` and the shared ones (parameters such as
  ``A``, ``D``) replicated, and hands the core the axis name, so that it calls
  the op with ``sequence_axis=<axis>`` (ring attention, the sequence-parallel
  scans of ``seqjax.ops``);
* otherwise (no mesh, as in ``model.init`` or a one-device run) calls the core
  directly with ``None``: the same code runs unsharded.

The batch axes are the mesh axes of the ``batch`` rule of the context rules
(``data``, ``fsdp``) that divide the batch; all other mesh axes are replicated
inside the core.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from seqjax.errors import ConfigError


def _batch_axes(mesh, axis: str, batch: int) -> tuple[str, ...]:
    rules = nn.get_logical_axis_rules() or ()
    entry = dict(rules).get("batch", ("data", "fsdp"))
    axes = (entry,) if isinstance(entry, str) else tuple(entry)
    out, size = [], 1
    for a in axes:
        if a == axis or a not in mesh.shape or mesh.shape[a] == 1:
            continue
        if batch % (size * mesh.shape[a]) == 0:
            out.append(a)
            size *= mesh.shape[a]
    return tuple(out)


def sequence_size(axis: str | None) -> int:
    """How many shards the length is split into under the context mesh (1: not split).

    Args:
      axis: the mixer's ``sequence_axis`` (None: not sequence-parallel).

    Returns:
      The size of ``axis`` in the context mesh, or 1 without a mesh or axis.
    """
    if axis is None:
        return 1
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or axis not in mesh.shape:
        return 1
    return mesh.shape[axis]


def sequence_map(
    core: Callable[..., Any],
    axis: str | None,
    per_token: Sequence[jax.Array | None],
    shared: Sequence[jax.Array | None] = (),
    *,
    what: str = "mixer",
) -> Any:
    """Calls ``core(axis_or_None, *per_token, *shared)`` on length shards when the mesh splits ``axis``.

    Args:
      core: the sequence-mixing function. Its first argument is the axis name
        to pass to the ``seqjax.ops`` call as ``sequence_axis`` (None when not
        split); it returns a pytree of per-token arrays ``(b, l, ...)``.
      axis: the mixer's ``sequence_axis`` (None: never split).
      per_token: arrays ``(b, l, ...)`` (or None), split over batch and length.
      shared: arrays used whole on every shard (parameters), or None.
      what: the caller's name, for error messages.

    Returns:
      ``core``'s outputs in the global view.

    Raises:
      ConfigError: the length is not divisible by the size of ``axis``.
    """
    size = sequence_size(axis)
    if size == 1:
        return core(None, *per_token, *shared)
    mesh = jax.sharding.get_abstract_mesh()
    first = next(x for x in per_token if x is not None)
    b, length = first.shape[:2]
    if length % size:
        raise ConfigError(
            f"{what}: length {length} is not divisible by the {axis!r} mesh axis ({size} devices, config.mesh.{axis}); "
            f"pad the sequences to a multiple of {size}"
        )
    batch_axes = _batch_axes(mesh, axis, b)
    token_spec = PartitionSpec(batch_axes if batch_axes else None, axis)
    # shard_map takes arrays only: pass the non-None ones and rebuild the lists.
    present_t = [x is not None for x in per_token]
    present_s = [x is not None for x in shared]
    args = [x for x in per_token if x is not None] + [x for x in shared if x is not None]
    specs = tuple([token_spec] * sum(present_t) + [PartitionSpec()] * sum(present_s))

    def local(*arrays):
        it = iter(arrays)
        tokens = [next(it) if p else None for p in present_t]
        params = [next(it) if p else None for p in present_s]
        return core(axis, *tokens, *params)

    # One spec as the prefix of every output leaf: all are per-token.
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=token_spec)(*args)


__all__ = ["sequence_map", "sequence_size"]
