"""Sequence-parallel linear attention with the length split over a mesh axis.

Called *inside* ``jax.shard_map`` on local shards whose length axis (axis 1) is
split contiguously over the mesh axis ``axis_name`` (``P`` devices; device
``i`` holds positions ``[i n, (i + 1) n)``). The causal recurrence

    S_t = diag(a_t) S_{t-1} + k_t v_t^T,      o_t = S_t^T q_t

(``S`` of shape ``(b, h, dk, dv)``, ``a_t = exp(log_decay_t)``) is affine in
``S``, so a shard acts on the state that enters it through the pair (decay
product ``exp(Σ_shard log_decay)``, its final state from zero), and the
entering state ``S_start`` adds

    o_t += (q_t ⊙ exp(c_t))^T S_start,      c_t = Σ_{start ≤ s ≤ t} log_decay_s

to the outputs. The algorithm:

1. each shard runs :func:`~seqjax.ops.linear_attention.linear_attention` from a
   zero state (any ``impl``) and the prefix sum ``c`` of its log decays;
2. one ``all_gather`` of the per-shard (decay product ``(b, h, e)`` with
   ``e = dk`` for a per-channel decay and 1 otherwise, final state
   ``(b, h, dk, dv)``) — the only communication (plus, with segments, one
   ``ppermute`` of ``b`` boundary ids);
3. every device runs the exclusive prefix combine over the ``P`` pairs from
   ``initial_state`` (so it enters shard 0 only), picks the state entering its
   shard and adds the correction above (zero after a segment start inside the
   shard). The same combine gives the global final state on every device.

The correction costs one ``(b, n, h, dk) x (b, h, dk, dv)`` contraction; no
tensor larger than the local inputs and one state is built.

``causal=False`` (no decay, no initial state, no segments): every position
reads the sum of ``k_s v_s^T`` over the whole sequence, one ``psum`` of the
local ``(b, h, dk, dv)`` sums.

Gradients are plain autodiff through these steps (the all_gather transposes to
a reduce-scatter; a replicated ``(h,)`` log decay or initial state gets the sum
of the per-device gradients).
"""

import jax.numpy as jnp
from jax import lax

from seqjax.ops import dispatch
from seqjax.ops.collectives import before_first_start, combine_shards, global_segment_starts, match_vma
from seqjax.ops.common import accum_dtype
from seqjax.ops.linear_attention import check_inputs, linear_attention, per_step_log_decay
from seqjax.types import AttnOut, Keys, LinAttnState, LogDecay, Queries, SegmentIds, Values


@dispatch.register_sequence_parallel("linear_attention")
def linear_attention_sp(
    q: Queries,
    k: Keys,
    v: Values,
    *,
    axis_name: str,
    log_decay: LogDecay | None = None,
    causal: bool = True,
    initial_state: LinAttnState | None = None,
    segment_ids: SegmentIds | None = None,
    chunk_size: int = 64,
    impl: str = "auto",
) -> tuple[AttnOut, LinAttnState]:
    """``linear_attention`` over a sequence split across the devices of ``axis_name``.

    Must be called inside ``jax.shard_map`` with the length axis of ``q``,
    ``k``, ``v`` (and of a ``(b, l, h)`` / ``(b, l, h, dk)`` ``log_decay`` and of
    ``segment_ids``) split contiguously over ``axis_name``; an ``(h,)``
    ``log_decay`` and ``initial_state`` are replicated over it.

    Args:
      q, k, v, log_decay, segment_ids, chunk_size, impl: as in
        :func:`seqjax.ops.linear_attention`, with local lengths; ``impl`` and
        ``chunk_size`` apply to the local runs.
      axis_name: the mesh axis that splits the length.
      causal: True for the recurrence; False for the bidirectional sum over
        the whole sequence (without ``log_decay``, ``initial_state`` and
        ``segment_ids``).
      initial_state: ``(b, h, dk, dv)`` state before the *global* first
        position (zeros if None); it applies to the first segment only.

    Returns:
      ``(o, final_state)``: the local ``o`` ``(b, n, h, dv)`` in the inputs'
      dtype and the global final state ``(b, h, dk, dv)`` in the accumulation
      dtype, the same on every device of ``axis_name``.

    Raises:
      ValueError: for ``causal=False`` with ``segment_ids`` (segments that cross
        shards would need a segment-wise reduction), and for the errors of
        :func:`seqjax.ops.linear_attention`.
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    log_decay = None if log_decay is None else jnp.asarray(log_decay)
    initial_state = None if initial_state is None else jnp.asarray(initial_state)
    segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
    check_inputs(q, k, v, log_decay, initial_state, segment_ids, chunk_size)
    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    extra = [x.dtype for x in (log_decay, initial_state) if x is not None]
    dtype = accum_dtype(q.dtype, k.dtype, v.dtype, *extra)
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)

    if not causal:
        if log_decay is not None or initial_state is not None or segment_ids is not None:
            raise ValueError(
                "linear_attention: causal=False with sequence_axis takes no log_decay, "
                "initial_state or segment_ids")
        total = lax.psum(jnp.einsum("blhk,blhv->bhkv", k, v), axis_name)
        return jnp.einsum("blhk,bhkv->blhv", q, total).astype(out_dtype), total

    # 1. The local run from a zero state (cast to varying: it is the carry of
    # the local scan over chunks, whose body mixes in the device's inputs).
    zero = match_vma(jnp.zeros((batch, heads, dk, dv), dtype), q, k, v)
    o, s_local = linear_attention(q, k, v, log_decay=log_decay, causal=True, initial_state=zero,
                                  segment_ids=segment_ids, chunk_size=chunk_size, impl=impl)
    g = per_step_log_decay(log_decay, batch, length, heads, dtype)  # (b, n, h, e) or None
    # Σ_{start ≤ s ≤ t} log_decay_s: a plain prefix sum from the shard's start.
    c = None if g is None else jnp.cumsum(g, axis=1)
    keep = None
    if segment_ids is not None:
        keep = before_first_start(global_segment_starts(segment_ids, axis_name), dtype)  # (b, n)
    decay_total = jnp.ones((batch, heads, 1), dtype) if c is None else jnp.exp(c[:, -1])
    if keep is not None:
        decay_total = decay_total * keep[:, -1, None, None]
    decay_total = match_vma(decay_total, s_local)

    # 2. The only communication, (P, b, h, e) and (P, b, h, dk, dv), and the
    # exclusive prefix over the devices.
    s = (jnp.zeros((batch, heads, dk, dv), dtype) if initial_state is None
         else initial_state.astype(dtype))
    s_start, final = combine_shards(decay_total, s_local, s, axis_name)
    q_in = q if c is None else q * jnp.exp(c)
    if keep is not None:
        q_in = q_in * keep[:, :, None, None]
    o = o.astype(dtype) + jnp.einsum("blhk,bhkv->blhv", q_in, s_start)
    return o.astype(out_dtype), final
