"""Sequence-parallel SSD (Mamba-2) with the length split over a mesh axis.

Called *inside* ``jax.shard_map`` on local shards whose length axis is split
contiguously over the mesh axis ``axis_name``. SSD's recurrence
``H_t = exp(dt_t A) H_{t-1} + dt_t x_t ⊗ B_t`` is affine in the state, so the
same three steps as :func:`seqjax.ops.linear_scan_sp.linear_scan_sp` apply,
with the shard as the unit: a local :func:`seqjax.ops.ssd.ssd` from a zero
state, one all-gather of (decay product, final state) pairs with the prefix
combine over devices (:func:`seqjax.ops.collectives.combine_shards`), and a
correction ``y_t += exp(Σ_{start ≤ s ≤ t} dt_s A) · S C_t`` for the state
``S`` entering the shard.
"""

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.ops import dispatch
from seqjax.ops.collectives import before_first_start, combine_shards, global_segment_starts
from seqjax.ops.ssd import ssd
from seqjax.types import SegmentIds


@dispatch.register_sequence_parallel("ssd")
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
    if initial_state is not None and jnp.shape(initial_state) != x.shape[:1] + x.shape[2:] + B.shape[3:]:
        raise ValueError(
            f"ssd: initial_state must be (b, h, p, n) = {x.shape[:1] + x.shape[2:] + B.shape[3:]}, "
            f"got {jnp.shape(initial_state)}")
    y, final_local = ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, segment_ids=segment_ids,
                         impl=impl)
    dtype = final_local.dtype
    batch, _, heads, p = x.shape
    groups, n = B.shape[2:]
    # Σ_{start ≤ s ≤ t} dt_s A from the shard's start: a plain prefix sum (no
    # difference of two large sums, whose gradient would cancel).
    cs = jnp.cumsum(dt.astype(dtype) * A.astype(dtype), axis=1)  # (b, n, h)
    keep = None
    if segment_ids is not None:
        starts = global_segment_starts(jnp.asarray(segment_ids), axis_name)
        keep = before_first_start(starts, bool)[..., None]  # (b, n, 1)
        # The decay is cut by a segment start: exp(-inf) = 0 with a zero gradient.
        cs = jnp.where(keep, cs, -jnp.inf)
    decay = jnp.exp(cs)  # (b, n, h): what the entering state is scaled by at t

    s = (jnp.zeros((batch, heads, p, n), dtype) if initial_state is None
         else jnp.asarray(initial_state).astype(dtype))
    s_in, final = combine_shards(decay[:, -1], final_local, s, axis_name)  # (b, h) against (b, h, p, n)
    s_in = s_in.reshape(batch, groups, heads // groups, p, n)
    Cf = C.astype(dtype)
    corr = jnp.einsum("btgn,bgepn->btgep", Cf, s_in, precision=lax.Precision.HIGHEST)
    corr = corr.reshape(batch, -1, heads, p) * decay[..., None]
    return (y.astype(dtype) + corr).astype(y.dtype), final
