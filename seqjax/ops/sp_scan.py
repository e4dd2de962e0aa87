"""Sequence-parallel linear scan: ``h_t = a_t h_{t-1} + b_t`` with the length split.

Called *inside* ``jax.shard_map`` on local shards ``(batch, n, ...)`` whose
length axis is split contiguously over the mesh axis ``axis_name`` (``P``
devices; device ``i`` holds positions ``[i n, (i + 1) n)``). The recurrence is
affine in the state, so a shard's effect on any incoming state is the pair
``(A_i, H_i)`` = (product of its decays, its final state from zero), and

    h_t = h_t^local + (Π_{start ≤ s ≤ t} a_s) · h_start

where ``h_t^local`` is the scan of the shard from zero and ``h_start`` the state
entering the shard. The algorithm:

1. each shard scans locally from zero with :func:`~seqjax.ops.scan.linear_scan`
   (any ``impl``) and takes the cumulative product of its decays;
2. one ``all_gather`` of the per-shard ``(A_i, H_i)`` (one decay product and
   one state per device) — the only communication;
3. every device runs the small exclusive prefix combine over the ``P`` pairs
   (``h_start_{i+1} = A_i h_start_i + H_i`` from ``h0``), picks its own
   ``h_start`` and fixes its outputs with the formula above. The same
   combine gives the global final state on every device.

Gradients are plain autodiff through these steps (the local scans bring their
own adjoint scan; the all_gather transposes to a reduce-scatter).

Segments (packed sequences) are supported: a segment start zeroes the decay at
that position, and whether a shard's first position starts a segment is
decided from the last id of the previous shard (one ``ppermute`` of a
``(batch,)`` id vector).
"""

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.ops._util import accum_dtype, match_vma, segment_starts, varying_axes
from seqjax.ops.scan import DEFAULT_CHUNK, _check_shapes, linear_scan
from seqjax.types import ScanCoeff, ScanState, SegmentIds


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
    _check_shapes(a, b, h0, segment_ids, chunk_size)
    num_devices = lax.axis_size(axis_name)
    idx = lax.axis_index(axis_name)
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
        starts = _global_starts(jnp.asarray(segment_ids), axis_name, num_devices, idx, reverse)
        starts = starts.reshape(starts.shape + (1,) * (b.ndim - 2))
        a = jnp.where(starts, jnp.zeros((), dtype), a)

    h_local, last_local = linear_scan(a, b, None, reverse=reverse, impl=impl, chunk_size=chunk_size)
    # Π_{start ≤ s ≤ t} a_s in scan order: what an incoming state is scaled by,
    # as the linear scan of a from a state of ones with no input. (Not
    # jnp.cumprod: its autodiff leaves zero-sized residuals that segfault the
    # compiler of jax/jaxlib 0.11.x inside shard_map.)
    ones = jnp.ones(a.shape[:1] + a.shape[2:], dtype)
    a_cum, a_total = linear_scan(a, jnp.zeros_like(a), ones, reverse=reverse, impl=impl,
                                 chunk_size=chunk_size)

    all_a, all_h = _all_gather((a_total, last_local), axis_name)  # (P, ...) each
    h = jnp.zeros(state_shape, dtype) if h0 is None else jnp.broadcast_to(h0.astype(dtype), state_shape)
    h = match_vma(h, all_a, all_h)  # e.g. a replicated h0 against batch-sharded inputs

    def combine(carry, pair):
        a_i, h_i = pair
        return a_i * carry + h_i, carry

    # Exclusive prefix over devices in scan order: starts[i] enters device i.
    h_last, starts = lax.scan(combine, h, (all_a, all_h), reverse=reverse)
    h_start = starts[idx]
    h_out = h_local.astype(dtype) + a_cum * h_start[:, None]
    return h_out.astype(out_dtype), h_last


def _all_gather(tree, axis_name):
    """all_gather that keeps device-invariance typing right inside shard_map.

    With ``check_vma`` the gathered table is the same on every device
    (``to="invarying"``), so values derived from it alone (the global final
    state) may leave ``shard_map`` with a replicated out_spec. Without
    ``check_vma`` (no variance typing) the plain all_gather is the one whose
    transpose (a reduce-scatter) sums the cotangents of all devices.
    """
    def gather(x):
        to = "invarying" if axis_name in varying_axes(x) else "varying"
        return lax.all_gather(x, axis_name, to=to)

    return jax.tree.map(gather, tree)


def _global_starts(segment_ids, axis_name, num_devices, idx, reverse):
    """(b, n) bools: segment starts in scan order, the shard's first position included."""
    if segment_ids.ndim != 2:
        raise ValueError(f"linear_scan_sp: segment_ids must be (batch, length), got {segment_ids.shape}")
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


def ssd_sp(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    *,
    axis_name: str,
    chunk_size: int = 64,
    D: jax.Array | None = None,
    initial_state: jax.Array | None = None,
    segment_ids: SegmentIds | None = None,
    impl: str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """Mamba-2 ``ssd`` over a sequence split across the devices of ``axis_name``.

    The same three steps as :func:`linear_scan_sp` with the shard as the unit:
    each shard runs :func:`seqjax.ops.ssd` from a zero state, the shards
    all-gather their ``(decay product exp(Σ dt A) (b, h), final state
    (b, h, p, n))``, each device combines the pairs of the shards before it
    into its entering state ``S`` and adds its contribution
    ``y_t += exp(Σ_{start ≤ s ≤ t} dt_s A) · S C_t`` (zero after a segment
    start within the shard).

    Must be called inside ``jax.shard_map`` with the length axis of ``x, dt, B,
    C`` (and ``segment_ids``) split contiguously over ``axis_name``; ``A``,
    ``D`` and ``initial_state`` are replicated over it.

    Args:
      x, dt, A, B, C, chunk_size, D, segment_ids, impl: as in
        :func:`seqjax.ops.ssd`, with local lengths.
      axis_name: the mesh axis that splits the length.
      initial_state: ``(b, h, p, n)`` state before the global first position.

    Returns:
      ``(y, final_state)``: the local ``y`` and the global final state (the same
      on every device of ``axis_name``).
    """
    from seqjax.ops.state_space_duality import ssd

    if initial_state is not None and jnp.shape(initial_state) != x.shape[:1] + x.shape[2:] + B.shape[3:]:
        raise ValueError(
            f"ssd: initial_state must be (b, h, p, n) = {x.shape[:1] + x.shape[2:] + B.shape[3:]}, "
            f"got {jnp.shape(initial_state)}")
    y, final_local = ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, segment_ids=segment_ids,
                         impl=impl)
    num_devices = lax.axis_size(axis_name)
    idx = lax.axis_index(axis_name)
    dtype = final_local.dtype
    batch, _, heads, p = x.shape
    groups, n = B.shape[2:]
    # Σ_{start ≤ s ≤ t} dt_s A from the shard's start: a plain prefix sum (no
    # difference of two large sums, whose gradient would cancel).
    cs = jnp.cumsum(dt.astype(dtype) * A.astype(dtype), axis=1)  # (b, n, h)
    keep = None
    if segment_ids is not None:
        starts = _global_starts(jnp.asarray(segment_ids), axis_name, num_devices, idx, False)
        keep = (jnp.cumsum(starts.astype(jnp.int32), axis=1) == 0)[..., None]  # (b, n, 1)
        # The decay is cut by a segment start: exp(-inf) = 0 with a zero gradient.
        cs = jnp.where(keep, cs, -jnp.inf)
    decay = jnp.exp(cs)  # (b, n, h): what the entering state is scaled by at t

    all_a, all_h = _all_gather((decay[:, -1], final_local), axis_name)  # (P, b, h), (P, b, h, p, n)
    s = (jnp.zeros((batch, heads, p, n), dtype) if initial_state is None
         else jnp.asarray(initial_state).astype(dtype))
    s = match_vma(s, all_a, all_h)

    def combine(carry, pair):
        a_i, h_i = pair
        return a_i[..., None, None] * carry + h_i, carry

    final, entering = lax.scan(combine, s, (all_a, all_h))
    s_in = entering[idx].reshape(batch, groups, heads // groups, p, n)
    Cf = C.astype(dtype)
    corr = jnp.einsum("btgn,bgepn->btgep", Cf, s_in, precision=lax.Precision.HIGHEST)
    corr = corr.reshape(batch, -1, heads, p) * decay[..., None]
    return (y.astype(dtype) + corr).astype(y.dtype), final
