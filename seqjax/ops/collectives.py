"""The collectives that the sequence-parallel ops share (inside ``jax.shard_map``).

Every ``*_sp`` op splits the length contiguously over a mesh axis and needs
the same three pieces, written once here:

* :func:`match_vma` / :func:`varying_axes`: device-variance typing. Inside
  ``shard_map`` with ``check_vma`` every value carries the mesh axes along
  which it may differ; a loop carry built from constants must be cast to
  varying before it meets device-varying inputs.
* :func:`global_segment_starts`: segment starts in scan order, where a shard's
  first position starts a segment if the previous shard's last id differs
  (one ``ppermute`` of a ``(b,)`` id vector).
* :func:`combine_shards`: the one communication of a linear recurrence split
  over devices. Each shard acts on the state entering it through the pair
  (decay product over the shard, its final state from zero); one
  ``all_gather`` of those pairs and an exclusive prefix combine over the ``P``
  devices give every device the state entering its shard and the global final
  state.
"""

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.ops.common import segment_starts


def varying_axes(x) -> frozenset:
    """The manual mesh axes over which ``x`` varies (empty outside ``shard_map``).

    Args:
      x: an array or tracer.

    Returns:
      A frozenset of axis names.
    """
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)  # jax >= 0.9: ManualAxisType
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def match_vma(tree, *refs):
    """Marks ``tree``'s leaves as varying over every mesh axis the ``refs`` vary over.

    A loop carry initialised from constants (zeros, ``-inf``) is device-
    invariant, while the loop body mixes in device-varying inputs; inside
    ``shard_map`` the carry types must match, so constants are cast to varying
    first. A no-op outside ``shard_map``.

    Args:
      tree: a pytree of arrays (the constants).
      *refs: pytrees of arrays whose varying axes the result must cover.

    Returns:
      ``tree`` with each leaf cast (``lax.pcast(..., to="varying")``) as needed.
    """
    want = frozenset().union(*(varying_axes(r) for r in jax.tree.leaves(refs)))
    if not want:
        return tree

    def cast(x):
        missing = tuple(sorted(want - varying_axes(x)))
        return lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree)


def all_gather(tree, axis_name: str):
    """``lax.all_gather`` of every leaf that keeps device-invariance typing right.

    With ``check_vma`` the gathered table is the same on every device
    (``to="invarying"``), so values derived from it alone (the global final
    state) may leave ``shard_map`` with a replicated out_spec. Without
    ``check_vma`` (no variance typing) the plain all_gather is the one whose
    transpose (a reduce-scatter) sums the cotangents of all devices.

    Args:
      tree: a pytree of per-device arrays.
      axis_name: the mesh axis to gather over.

    Returns:
      The pytree with a leading axis of size ``P`` on every leaf.
    """

    def gather(x):
        to = "invarying" if axis_name in varying_axes(x) else "varying"
        return lax.all_gather(x, axis_name, to=to)

    return jax.tree.map(gather, tree)


def global_segment_starts(segment_ids: jax.Array, axis_name: str, *, reverse: bool = False) -> jax.Array:
    """Segment starts of a length shard in scan order, the shard's first position included.

    Args:
      segment_ids: local ``(b, n)`` ids of a length split contiguously over
        ``axis_name``.
      axis_name: the mesh axis that splits the length.
      reverse: scan order from the global end.

    Returns:
      ``(b, n)`` booleans: where the state restarts from zero.
    """
    if segment_ids.ndim != 2:
        raise ValueError(f"segment_ids must be (batch, length), got {segment_ids.shape}")
    num_devices = lax.axis_size(axis_name)
    idx = lax.axis_index(axis_name)
    local = segment_starts(segment_ids, reverse=reverse)
    # The neighbour that precedes this shard in scan order sends its boundary id.
    if reverse:
        edge, perm, first = segment_ids[:, 0], [(j + 1, j) for j in range(num_devices - 1)], -1
        has_prev = idx < num_devices - 1
    else:
        edge, perm, first = segment_ids[:, -1], [(j, j + 1) for j in range(num_devices - 1)], 0
        has_prev = idx > 0
    prev = lax.ppermute(edge, axis_name, perm)
    cut = has_prev & (segment_ids[:, first] != prev)
    return local.at[:, first].set(local[:, first] | cut)


def before_first_start(starts: jax.Array, dtype) -> jax.Array:
    """``(b, n)`` mask, 1 until the first segment start of the shard (that start excluded).

    The state entering a shard reaches a position only while no segment has
    started since the shard's first position.

    Args:
      starts: ``(b, n)`` booleans from :func:`global_segment_starts`.
      dtype: dtype of the mask.

    Returns:
      ``(b, n)`` of ``dtype``.
    """
    return (jnp.cumsum(starts.astype(jnp.int32), axis=1) == 0).astype(dtype)


def combine_shards(decay: jax.Array, final: jax.Array, initial: jax.Array, axis_name: str,
                   *, reverse: bool = False, matrix: bool = False) -> tuple[jax.Array, jax.Array]:
    """The state entering this device's shard, and the global final state.

    A shard maps the state entering it, ``S``, to ``decay · S + final`` (an
    affine map: ``decay`` the product of the shard's decays, ``final`` its
    final state from zero). One ``all_gather`` of the pairs, then an exclusive
    prefix over the ``P`` devices in scan order from ``initial``.

    Args:
      decay: this shard's decay product, broadcastable against ``final``
        after appending trailing axes (e.g. ``(b, h)`` against ``(b, h, p, n)``).
      final: this shard's final state from a zero state.
      initial: the state before the global first position (replicated).
      axis_name: the mesh axis that splits the length.
      reverse: the carry flows from device ``i + 1`` to device ``i``.
      matrix: ``decay`` is a matrix acting on the state's second-to-last
        axis, ``decay @ S + final`` (the delta rule's product of
        Householder-like transitions, ``(b, h, dk, dk)`` against ``(b, h, dk, dv)``).

    Returns:
      ``(entering, final)``: the state entering this device's shard and the
      state after the whole sequence (the same on every device).
    """
    all_a, all_h = all_gather((decay, final), axis_name)  # (P, ...) each
    initial = match_vma(initial, all_a, all_h)  # e.g. replicated against batch-sharded inputs

    def combine(carry, pair):
        a, h = pair
        if matrix:
            return jnp.einsum("...ij,...jk->...ik", a, carry, precision=lax.Precision.HIGHEST) + h, carry
        a = a.reshape(a.shape + (1,) * (carry.ndim - a.ndim))
        return a * carry + h, carry

    last, entering = lax.scan(combine, initial, (all_a, all_h), reverse=reverse)
    return entering[lax.axis_index(axis_name)], last


__all__ = ["varying_axes", "match_vma", "all_gather", "global_segment_starts", "before_first_start",
           "combine_shards"]
