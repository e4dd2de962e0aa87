"""Sequence-parallel linear scan: ``h_t = a_t h_{t-1} + b_t`` with the length split.

Called *inside* ``jax.shard_map`` on local shards ``(batch, n, ...)`` whose
length axis is split contiguously over the mesh axis ``axis_name`` (``P``
devices; device ``i`` holds positions ``[i n, (i + 1) n)``). The recurrence is
affine in the state, so a shard's effect on any incoming state is the pair
``(A_i, H_i)`` = (product of its decays, its final state from zero), and

    h_t = h_t^local + (Π_{start ≤ s ≤ t} a_s) · h_start

where ``h_t^local`` is the scan of the shard from zero and ``h_start`` the state
entering the shard. The algorithm:

1. each shard scans locally from zero with :func:`~seqjax.ops.linear_scan.linear_scan`
   (any ``impl``) and takes the cumulative product of its decays;
2. one ``all_gather`` of the per-shard ``(A_i, H_i)`` (one decay product and
   one state per device) — the only communication — and the small exclusive
   prefix combine over the ``P`` pairs (``h_start_{i+1} = A_i h_start_i +
   H_i`` from ``h0``), both in :func:`seqjax.ops.collectives.combine_shards`;
3. every device fixes its outputs with the formula above. The same combine
   gives the global final state on every device.

Gradients are plain autodiff through these steps (the local scans bring their
own adjoint scan; the all_gather transposes to a reduce-scatter).

Segments (packed sequences) are supported: a segment start zeroes the decay at
that position, and whether a shard's first position starts a segment is
decided from the last id of the previous shard (one ``ppermute`` of a
``(batch,)`` id vector).
"""

import jax.numpy as jnp

from seqjax.ops import dispatch
from seqjax.ops.collectives import combine_shards, global_segment_starts, match_vma
from seqjax.ops.common import accum_dtype
from seqjax.ops.linear_scan import DEFAULT_CHUNK, check_shapes, linear_scan
from seqjax.types import ScanCoeff, ScanState, SegmentIds


@dispatch.register_sequence_parallel("linear_scan")
def linear_scan_sp(
    a: ScanCoeff,
    b: ScanCoeff,
    h0: ScanState | None = None,
    *,
    axis_name: str,
    reverse: bool = False,
    segment_ids: SegmentIds | None = None,
    impl: str = "auto",
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[ScanCoeff, ScanState]:
    """``linear_scan`` over a sequence split across the devices of ``axis_name``.

    Must be called inside ``jax.shard_map`` with the length axis (axis 1) of
    ``a``, ``b`` (and ``segment_ids``) split contiguously over ``axis_name``.

    Args:
      a: local decays, broadcastable to ``b``'s shape with the same rank (a
        length-1 axis 1 means time-invariant). Real or complex.
      b: local inputs ``(batch, n, *rest)``.
      h0: the state before the *global* first position (before the last one
        when ``reverse``), broadcastable to ``(batch, *rest)``; replicated
        over ``axis_name``; zeros if None.
      axis_name: the mesh axis that splits the length.
      reverse: scan from the global end (the carry flows from device ``i + 1``
        to device ``i``).
      segment_ids: local ``(batch, n)`` ids; the state restarts from zero
        where the id changes (across shard boundaries too).
      impl: the ``linear_scan`` implementation of the local scans.
      chunk_size: chunk length of ``impl="chunked"``.

    Returns:
      ``(h, h_last)``: the local outputs of ``b``'s shape and dtype rules as in
      ``linear_scan``, and the global final state (after the global last
      position, or first when reversed), the same on every device of
      ``axis_name``, in the accumulation dtype.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    h0 = None if h0 is None else jnp.asarray(h0)
    check_shapes(a, b, h0, segment_ids, chunk_size)
    out_dtype = jnp.result_type(a, b)
    dtype = accum_dtype(a.dtype, b.dtype, *(() if h0 is None else (h0.dtype,)))
    state_shape = (b.shape[0],) + b.shape[2:]
    a = jnp.broadcast_to(a.astype(dtype), a.shape[:1] + b.shape[1:2] + a.shape[2:])
    # A replicated decay (time-invariant) is cast to varying like b: every
    # shard's cumulative product then is a per-device value, as it must be
    # for autodiff inside shard_map, and the cast's transpose sums da.
    a, b = match_vma((a, b), a, b)
    if segment_ids is not None:
        # Cutting the chain at every segment start (shard boundaries included)
        # makes the segmented scan a plain one.
        starts = global_segment_starts(jnp.asarray(segment_ids), axis_name, reverse=reverse)
        starts = starts.reshape(starts.shape + (1,) * (b.ndim - 2))
        a = jnp.where(starts, jnp.zeros((), dtype), a)

    h_local, last_local = linear_scan(a, b, None, reverse=reverse, impl=impl, chunk_size=chunk_size)
    # Π_{start ≤ s ≤ t} a_s in scan order: what an incoming state is scaled by,
    # as the linear scan of a from a state of ones with no input. (Not
    # jnp.cumprod: its autodiff leaves zero-sized residuals that segfault the
    # compiler of jax/jaxlib 0.11.x inside shard_map.)
    ones = jnp.ones(a.shape[:1] + a.shape[2:], dtype)
    a_cum, a_total = linear_scan(a, jnp.zeros_like(a), ones, reverse=reverse, impl=impl, chunk_size=chunk_size)

    h = jnp.zeros(state_shape, dtype) if h0 is None else jnp.broadcast_to(h0.astype(dtype), state_shape)
    h_start, h_last = combine_shards(a_total, last_local, h, axis_name, reverse=reverse)
    h_out = h_local.astype(dtype) + a_cum * h_start[:, None]
    return h_out.astype(out_dtype), h_last
