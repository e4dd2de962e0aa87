"""Sequence-parallel delta rule with the length split over a mesh axis.

Called *inside* ``jax.shard_map`` on local shards whose length axis (axis 1) is
split contiguously over the mesh axis ``axis_name`` (``P`` devices; device
``i`` holds positions ``[i n, (i + 1) n)``). The (gated) delta rule

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = S_t^T q_t

is affine in the state, like the other linear recurrences, but its transition
is a ``dk x dk`` matrix rather than a scale: a shard maps the state entering
it, ``S_in``, to ``T S_in + F`` with ``T`` the product of the shard's
transitions and ``F`` its final state from zero, and inside the shard
``S_t = T_t S_in + F_t`` (``T_t`` the product up to ``t``), so

    o_t = F_t^T q_t + S_in^T (T_t^T q_t).

Both pieces come out of *one* local run of
:func:`~seqjax.ops.delta_rule.delta_rule` (any ``impl``): the values get
``dk`` extra zero columns and the run starts from ``[0 | I]``. The state then
carries ``[F_t | T_t]`` (the recurrence acts on every column of the state the
same way, and the extra values write nothing), its outputs are ``[F_t^T q_t |
T_t^T q_t]`` and its final state ``[F | T]``. A segment start inside the
shard zeroes both blocks, as it must: the entering state no longer reaches
those positions. The algorithm:

1. the local run above (``dv + dk`` value columns);
2. one ``all_gather`` of the per-shard pairs ``(T (b, h, dk, dk), F (b, h,
   dk, dv))`` and the exclusive prefix ``S <- T S + F`` over the ``P`` devices
   from ``initial_state`` (matrix products; plus, with segments, one
   ``ppermute`` of ``b`` boundary ids);
3. the correction ``(T_t^T q_t)^T S_in``, one ``(b, n, h, dk) x (b, h, dk,
   dv)`` contraction, zero from the first segment start of the shard on.

The extra cost over the unsharded op is the ``dk`` extra value columns (for
``dk = dv`` twice the state work) and ``P`` small matrix products. Gradients
are plain autodiff through these steps.
"""

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.ops import dispatch
from seqjax.ops.collectives import before_first_start, combine_shards, global_segment_starts, match_vma
from seqjax.ops.common import accum_dtype
from seqjax.ops.delta_rule import check_inputs, delta_rule
from seqjax.types import AttnOut, Keys, LinAttnState, Queries, SegmentIds, Values


@dispatch.register_sequence_parallel("delta_rule")
def delta_rule_sp(
    q: Queries,
    k: Keys,
    v: Values,
    beta: jax.Array,
    *,
    axis_name: str,
    log_decay: jax.Array | None = None,
    initial_state: LinAttnState | None = None,
    segment_ids: SegmentIds | None = None,
    chunk_size: int = 64,
    impl: str = "auto",
) -> tuple[AttnOut, LinAttnState]:
    """``delta_rule`` over a sequence split across the devices of ``axis_name``.

    Must be called inside ``jax.shard_map`` with the length axis of ``q``,
    ``k``, ``v``, ``beta``, ``log_decay`` and ``segment_ids`` split
    contiguously over ``axis_name``; ``initial_state`` is replicated over it.

    Args:
      q, k, v, beta, log_decay, segment_ids, chunk_size, impl: as in
        :func:`seqjax.ops.delta_rule`, with local lengths; ``impl`` and
        ``chunk_size`` apply to the local run.
      axis_name: the mesh axis that splits the length.
      initial_state: ``(b, h, dk, dv)`` state before the *global* first
        position (zeros if None); it applies to the first segment only.

    Returns:
      ``(o, final_state)``: the local ``o`` ``(b, n, h, dv)`` in the inputs'
      dtype and the global final state ``(b, h, dk, dv)`` in the accumulation
      dtype, the same on every device of ``axis_name``.

    Raises:
      ValueError: the errors of :func:`seqjax.ops.delta_rule`.
    """
    q, k, v, beta = (jnp.asarray(x) for x in (q, k, v, beta))
    log_decay = None if log_decay is None else jnp.asarray(log_decay)
    initial_state = None if initial_state is None else jnp.asarray(initial_state)
    segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
    check_inputs(q, k, v, beta, log_decay, initial_state, segment_ids, chunk_size)
    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    extra = [x.dtype for x in (beta, log_decay, initial_state) if x is not None]
    dtype = accum_dtype(q.dtype, k.dtype, v.dtype, *extra)
    q, k, v, beta = (x.astype(dtype) for x in (q, k, v, beta))

    # 1. One local run carrying [F_t | T_t]: dk zero value columns, entered with [0 | I].
    v_ext = jnp.concatenate([v, jnp.zeros((batch, length, heads, dk), dtype)], axis=-1)
    start = jnp.concatenate([jnp.zeros((batch, heads, dk, dv), dtype),
                             jnp.broadcast_to(jnp.eye(dk, dtype=dtype), (batch, heads, dk, dk))], axis=-1)
    start = match_vma(start, q, k, v, beta)  # the local scan's carry mixes in device-varying inputs
    o_ext, s_ext = delta_rule(q, k, v_ext, beta, log_decay=log_decay, initial_state=start,
                              segment_ids=segment_ids, chunk_size=chunk_size, impl=impl)
    o_ext = o_ext.astype(dtype)
    o_local, tq = o_ext[..., :dv], o_ext[..., dv:]  # F_t^T q_t and T_t^T q_t
    final_local, transition = s_ext[..., :dv], s_ext[..., dv:]  # F, T
    if segment_ids is not None:
        # A start on the shard's first position (the previous shard ended another
        # segment) cuts the entering state off too; the local run cannot see it.
        keep = before_first_start(global_segment_starts(segment_ids, axis_name), dtype)  # (b, n)
        tq = tq * keep[:, :, None, None]
        transition = transition * keep[:, -1, None, None, None]

    # 2. The only communication, (P, b, h, dk, dk) and (P, b, h, dk, dv), and the
    # exclusive prefix over the devices.
    s0 = jnp.zeros((batch, heads, dk, dv), dtype) if initial_state is None else initial_state.astype(dtype)
    s_in, final = combine_shards(transition, final_local, s0, axis_name, matrix=True)

    # 3. The entering state's share of every local output.
    o = o_local + jnp.einsum("blhk,bhkv->blhv", tq, s_in, precision=lax.Precision.HIGHEST)
    return o.astype(out_dtype), final


__all__ = ["delta_rule_sp"]
