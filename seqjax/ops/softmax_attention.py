"""Softmax attention: a materialising reference and a blockwise (flash) path.

``attention(q, k, v)`` computes, per batch ``b``, query head ``h`` and query ``i``,

    out[b, i, h] = Σ_j softmax_j(scale · q[b, i, h] · k[b, j, h // g] + bias[b, h, i, j]) v[b, j, h // g]

over the keys ``j`` visible to query ``i`` (``g = h / hk`` query heads share one
key/value head: grouped-query attention). Query ``i`` sits at key position
``lk - lq + i`` (ends aligned, as for a chunk of new queries appended to a
prefix), and the causal and window masks compare those positions.

Implementations (``impl``):
  * ``"reference"``: materialises the ``(b, h, lq, lk)`` scores; plain autodiff.
    Memory O(lq · lk).
  * ``"blockwise"``: FlashAttention-2. For each block of ``block_q`` queries a
    ``lax.fori_loop`` runs over only the key blocks that causality and the
    window leave visible (bounds computed from the block index), folding each
    block into a running :class:`~seqjax.ops.online_softmax.SoftmaxState` with
    the one :func:`~seqjax.ops.online_softmax.merge`. A ``jax.custom_vjp`` saves
    only the output and the per-row logsumexp; its backward pass loops over key
    blocks (outer) and their visible query blocks (inner), recomputing the
    scores of one block pair at a time to form dV, dK, dQ and, when a bias is
    given, dbias (summed to the bias's broadcast shape). Memory O(l · block)
    besides the inputs; any lengths (padded internally, padding masked).
  * ``"auto"``: ``"blockwise"`` when ``lq * lk >= AUTO_BLOCKWISE_MIN`` (256²),
    else ``"reference"``. Measured on this project's CPU machine (one thread,
    min of repeats; ``benchmarks/bench_attention.py`` has the large sizes): with
    b=8, h=4, d=32 the two are within noise up to L=128 (forward 1.1-1.5 ms
    reference vs 1.8-2.4 ms blockwise; forward+backward 8-11 ms vs 10 ms), at
    L=256 the forward is still a tie (6.5 vs 9.1 ms causal) but forward+backward
    is 100 ms vs 49-72 ms, and at L=512 the reference loses 414 vs 164 ms; with
    b=1, h=4, d=64 at L=1024 forward+backward is 266 vs 74 ms. Below 256² the
    reference's L² memory is small and its plain autodiff is simplest.
  * ``"pallas"`` (later, in ``seqjax/kernels``) will take the same arguments.

Sequence parallelism: with ``sequence_axis=`` (inside ``jax.shard_map``, the
length split over that mesh axis) the call goes to ring attention
(``ring_attention.py``), which runs this module's blockwise kernel per K/V
block; see ``docs/parallelism.md``.

Softmax statistics are kept in float32 (or float64 for float64 inputs); the
output has ``q``'s dtype. A query that sees no key outputs 0 (and gets zero
gradients), never NaN.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.ops import online_softmax as osm
from seqjax.ops._util import accum_dtype, check_impl, match_vma, pad_axis
from seqjax.types import AttnBias, AttnOut, Keys, Queries, SegmentIds, Values

IMPLS = ("auto", "reference", "blockwise")
# On CPU (one thread, causal, d=64) 128 and 256 tie at L=4096 (forward 278 ms,
# forward+backward 1.02 s) while 512 is 30% slower and 128 wins at L=1024.
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 128
# lq * lk from which "auto" picks "blockwise" (see the module docstring).
AUTO_BLOCKWISE_MIN = 256 * 256


def attention(
    q: Queries,
    k: Keys,
    v: Values,
    *,
    causal: bool = False,
    segment_ids: SegmentIds | tuple[SegmentIds, SegmentIds] | None = None,
    window: int | tuple[int, int] | None = None,
    bias: AttnBias | None = None,
    scale: float | jax.Array | None = None,
    impl: str = "auto",
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
    sequence_axis: str | None = None,
    sequence_layout: str = "contiguous",
) -> AttnOut:
    """Multi-head (grouped-query) softmax attention.

    Args:
      q: queries ``(b, lq, h, dk)``.
      k: keys ``(b, lk, hk, dk)``; ``hk`` divides ``h`` and query head ``i``
        uses key/value head ``i // (h // hk)``.
      v: values ``(b, lk, hk, dv)``.
      causal: query ``i`` (at key position ``lk - lq + i``) sees only keys at
        positions ``<=`` its own.
      segment_ids: ``(b, l)`` integer ids when ``lq == lk``, or a tuple
        ``(q_segment_ids (b, lq), kv_segment_ids (b, lk))``; a query sees only
        keys with its own id (packed sequences behave as separate ones).
      window: local attention. An int ``w``: key ``j`` is visible to query
        position ``i`` iff ``i - w < j <= i`` when causal, ``|i - j| < w`` when
        not. A tuple ``(left, right)``: iff ``i - left <= j <= i + right``
        (and ``j <= i`` when causal).
      bias: additive score bias broadcastable to ``(b, h, lq, lk)``;
        differentiable.
      scale: score scale, ``dk ** -0.5`` by default; a traced value is folded
        into ``q`` (and is then differentiable).
      impl: ``"auto"``, ``"reference"`` or ``"blockwise"``.
      block_q: query block size of ``"blockwise"``.
      block_k: key block size of ``"blockwise"``.
      sequence_axis: sequence parallelism. When set, this call must run inside
        ``jax.shard_map`` with the length axis of ``q, k, v`` (and of
        ``segment_ids``) split over the mesh axis of this name; the arrays are
        the local shards and the result is the local shard of the output.
        Computed by :func:`seqjax.ops.ring_attention.ring_attention` (the
        blockwise kernel per K/V block, so ``impl`` must be ``"auto"`` or
        ``"blockwise"``). ``window`` and ``bias`` are not supported with it.
      sequence_layout: which positions each shard holds when ``sequence_axis``
        is set: ``"contiguous"`` or ``"zigzag"`` (see
        :func:`seqjax.ops.ring_attention.zigzag_permute`).

    Returns:
      ``(b, lq, h, dv)`` in ``q``'s dtype; 0 for a query with no visible key.
    """
    check_impl("attention", impl, IMPLS)
    if sequence_axis is not None:
        return _sequence_parallel(q, k, v, causal, segment_ids, window, bias, scale, impl,
                                  block_q, block_k, sequence_axis, sequence_layout)
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    b, lq, h, hk, dk, lk, dv = _check_qkv(q, k, v)
    left, right = resolve_window(window, causal)
    seg_q, seg_k = _check_segments(segment_ids, b, lq, lk)
    bias5 = None if bias is None else _bias5(jnp.asarray(bias), b, h, hk, lq, lk)
    for name, val in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"attention: {name} must be a positive int, got {val!r}")
    if scale is None:
        scale = dk**-0.5
    if not isinstance(scale, (int, float)):
        # A traced scale cannot be a static argument of the custom_vjp; scaling q
        # instead is the same product and lets autodiff handle d/dscale.
        q = q * jnp.asarray(scale).astype(q.dtype)
        scale = 1.0
    scale = float(scale)
    if impl == "auto":
        impl = "blockwise" if lq * lk >= AUTO_BLOCKWISE_MIN else "reference"

    g = h // hk
    # Internal layout: heads before length, query heads split as (hk, g), so
    # every score block is one batched matmul over (b, hk) without repeating k.
    q5 = q.reshape(b, lq, hk, g, dk).transpose(0, 2, 3, 1, 4)
    k4 = k.transpose(0, 2, 1, 3)
    v4 = v.transpose(0, 2, 1, 3)
    if impl == "reference":
        out = _reference(q5, k4, v4, bias5, seg_q, seg_k, scale, left, right)
    else:
        out = _blockwise(q5, k4, v4, bias5, seg_q, seg_k, scale, left, right, block_q, block_k)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, dv).astype(q.dtype)


def _sequence_parallel(q, k, v, causal, segment_ids, window, bias, scale, impl, block_q, block_k,
                       axis_name, layout):
    for name, val in (("window", window), ("bias", bias)):
        if val is not None:
            raise NotImplementedError(
                f"attention: {name}= is not implemented with sequence_axis (ring attention); "
                f"call it without sequence_axis on gathered sequences instead")
    if impl == "reference":
        raise NotImplementedError(
            "attention: impl='reference' is not available with sequence_axis; ring attention "
            "computes every K/V block with the blockwise kernel (use 'auto' or 'blockwise')")
    # Imported here: ring_attention imports this module.
    from seqjax.ops.ring_attention import ring_attention

    return ring_attention(q, k, v, axis_name=axis_name, causal=causal, segment_ids=segment_ids,
                          scale=scale, layout=layout, block_q=block_q, block_k=block_k)


# ----------------------------------------------------------------------------
# Validation and masks.


def _check_qkv(q, k, v):
    for name, x, letters in (("q", q, "(b, lq, h, dk)"), ("k", k, "(b, lk, hk, dk)"),
                             ("v", v, "(b, lk, hk, dv)")):
        if x.ndim != 4:
            raise ValueError(f"attention: {name} must have shape {letters}, got {x.shape}")
    b, lq, h, dk = q.shape
    bk_, lk, hk, dk_k = k.shape
    if bk_ != b or v.shape[0] != b:
        raise ValueError(
            f"attention: batch sizes differ: q {q.shape}, k {k.shape}, v {v.shape}")
    if dk_k != dk:
        raise ValueError(
            f"attention: key dim of k {k.shape} (dk={dk_k}) must equal that of q {q.shape} "
            f"(dk={dk})")
    if v.shape[1:3] != (lk, hk):
        raise ValueError(
            f"attention: v {v.shape} must have k's length and heads (b, {lk}, {hk}, dv)")
    if hk == 0 or h % hk != 0:
        raise ValueError(
            f"attention: query heads h={h} (q {q.shape}) must be a multiple of key/value "
            f"heads hk={hk} (k {k.shape})")
    if lq == 0 or lk == 0:
        raise ValueError(f"attention: empty sequence: q {q.shape}, k {k.shape}")
    return b, lq, h, hk, dk, lk, v.shape[3]


def resolve_window(window, causal: bool) -> tuple[int | None, int | None]:
    """Turns ``window``/``causal`` into visible distances ``(left, right)``.

    Key ``j`` is visible from query position ``i`` iff ``i - j <= left`` and
    ``j - i <= right``; None means unbounded.

    Args:
      window: None, an int ``w >= 1`` or a tuple ``(left, right)`` of ints >= 0.
      causal: whether future keys are hidden.

    Returns:
      ``(left, right)``.
    """
    if window is None:
        left, right = None, None
    elif isinstance(window, int) and not isinstance(window, bool):
        if window < 1:
            raise ValueError(f"window must be an int >= 1 or a tuple (left, right), got {window!r}")
        left = right = window - 1
    elif (isinstance(window, (tuple, list)) and len(window) == 2
          and all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in window)):
        left, right = int(window[0]), int(window[1])
    else:
        raise ValueError(
            f"window must be an int >= 1 or a tuple (left, right) of ints >= 0, got {window!r}")
    if causal:
        right = 0
    return left, right


def _check_segments(segment_ids, b, lq, lk):
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, (tuple, list)):
        if len(segment_ids) != 2:
            raise ValueError("attention: segment_ids tuple must be (q_segment_ids, kv_segment_ids)")
        seg_q, seg_k = jnp.asarray(segment_ids[0]), jnp.asarray(segment_ids[1])
    else:
        if lq != lk:
            raise ValueError(
                f"attention: with lq={lq} != lk={lk}, segment_ids must be a tuple "
                "(q_segment_ids, kv_segment_ids)")
        seg_q = seg_k = jnp.asarray(segment_ids)
    if seg_q.shape != (b, lq):
        raise ValueError(
            f"attention: q segment_ids must have shape (b, lq)=({b}, {lq}), got {seg_q.shape}")
    if seg_k.shape != (b, lk):
        raise ValueError(
            f"attention: kv segment_ids must have shape (b, lk)=({b}, {lk}), got {seg_k.shape}")
    return seg_q, seg_k


def _bias5(bias, b, h, hk, lq, lk):
    """bias broadcastable to (b, h, lq, lk) -> (B, H1, H2, Q, K) matching (b, hk, g, lq, lk)."""
    full = (b, h, lq, lk)
    if bias.ndim > 4 or any(s not in (1, f) for s, f in zip(bias.shape[::-1], full[::-1])):
        raise ValueError(
            f"attention: bias of shape {bias.shape} is not broadcastable to (b, h, lq, lk)={full}")
    bias4 = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    bb, bh, bq, bkk = bias4.shape
    heads = (1, 1) if bh == 1 else (hk, h // hk)
    return bias4.reshape(bb, *heads, bq, bkk)


def _visible(qpos, kpos, lq_end, lk, left, right, seg_q, seg_k):
    """(b|1, 1, 1, nq, nk) mask of the keys at kpos visible from the queries at qpos.

    qpos are key positions of the queries (index + lk - lq); positions at or past
    lq_end / lk are padding and see / are seen by nothing.
    """
    dist = qpos[:, None] - kpos[None, :]
    vis = (kpos[None, :] < lk) & (qpos[:, None] < lq_end)
    if left is not None:
        vis = vis & (dist <= left)
    if right is not None:
        vis = vis & (-dist <= right)
    vis = vis[None, None, None]
    if seg_q is not None:
        vis = vis & (seg_q[:, None, None, :, None] == seg_k[:, None, None, None, :])
    return vis


def _scores(qi, kj, bias_ij, scale, dtype):
    s = jnp.einsum("bhgqd,bhkd->bhgqk", qi, kj, preferred_element_type=dtype) * scale
    if bias_ij is not None:
        s = s + bias_ij.astype(dtype)
    return s


# ----------------------------------------------------------------------------
# Reference: materialised scores.


def _reference(q5, k4, v4, bias5, seg_q, seg_k, scale, left, right):
    lq, lk = q5.shape[3], k4.shape[2]
    dtype = accum_dtype(q5.dtype, k4.dtype, v4.dtype)
    s = _scores(q5, k4, bias5, scale, dtype)
    mask = _visible(jnp.arange(lq) + lk - lq, jnp.arange(lk), lk, lk, left, right, seg_q, seg_k)
    # values (b, hk, 1, 1, lk, dv): shared by the g heads and lq queries.
    return osm.finalize(osm.from_scores(s, v4[:, :, None, None], mask))


# ----------------------------------------------------------------------------
# Blockwise (flash) attention.


def _blockwise(q5, k4, v4, bias5, seg_q, seg_k, scale, left, right, block_q, block_k):
    lq, lk = q5.shape[3], k4.shape[2]
    # Small inputs: one block covers them; no point padding to a big block.
    bq, bk = min(block_q, lq), min(block_k, lk)
    q5 = pad_axis(q5, bq, axis=3)
    k4, v4 = pad_axis(k4, bk, axis=2), pad_axis(v4, bk, axis=2)
    segs = None
    if seg_q is not None:
        segs = (pad_axis(seg_q, bq, axis=1), pad_axis(seg_k, bk, axis=1))
    if bias5 is not None:
        if bias5.shape[3] > 1:
            bias5 = pad_axis(bias5, bq, axis=3)
        if bias5.shape[4] > 1:
            bias5 = pad_axis(bias5, bk, axis=4)
    cfg = (scale, left, right, lq, lk, bq, bk)
    # Inside shard_map the custom_vjp returns gradients typed like its inputs:
    # a replicated input (K/V or bias against sharded queries) is cast to
    # varying, and the cast's transpose sums its gradient over the devices.
    q5, k4, v4, bias5 = match_vma((q5, k4, v4, bias5), q5, k4, v4, bias5)
    out = _flash(cfg, q5, k4, v4, bias5, segs)
    return out[:, :, :, :lq]


def _slice(x, start, size, axis):
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _bias_block(bias5, q0, k0, bq, bk):
    if bias5 is None:
        return None
    if bias5.shape[3] > 1:
        bias5 = _slice(bias5, q0, bq, 3)
    if bias5.shape[4] > 1:
        bias5 = _slice(bias5, k0, bk, 4)
    return bias5


def _seg_block(segs, q0, k0, bq, bk):
    if segs is None:
        return None, None
    return _slice(segs[0], q0, bq, 1), _slice(segs[1], k0, bk, 1)


def _bounds(left, right, lq, lk):
    # None (unbounded) becomes a distance no pair of positions reaches.
    big = lq + lk
    return big if left is None else left, big if right is None else right


def _key_block_range(q0, cfg):
    """[lo, hi) of the key blocks that the query block starting at q0 can see."""
    _, left, right, lq, lk, bq, bk = cfg
    left, right = _bounds(left, right, lq, lk)
    p0 = q0 + lk - lq  # first query position of the block
    p1 = p0 + bq - 1
    k_lo = jnp.clip(p0 - left, 0, lk)
    k_hi = jnp.clip(p1 + right + 1, 0, lk)  # exclusive
    lo, hi = k_lo // bk, (k_hi + bk - 1) // bk
    return lo, jnp.maximum(lo, hi)


def _query_block_range(k0, cfg):
    """[lo, hi) of the query blocks that can see the key block starting at k0."""
    _, left, right, lq, lk, bq, bk = cfg
    left, right = _bounds(left, right, lq, lk)
    off = lk - lq
    # Query position p sees key j iff j - right <= p <= j + left.
    i_lo = jnp.clip(k0 - right - off, 0, lq)
    i_hi = jnp.clip(k0 + bk - 1 + left - off + 1, 0, lq)  # exclusive
    lo, hi = i_lo // bq, (i_hi + bq - 1) // bq
    return lo, jnp.maximum(lo, hi)


def _block_mask(q0, k0, segs, cfg):
    _, left, right, lq, lk, bq, bk = cfg
    seg_qi, seg_kj = _seg_block(segs, q0, k0, bq, bk)
    qpos = q0 + jnp.arange(bq) + (lk - lq)
    return _visible(qpos, k0 + jnp.arange(bk), lk, lk, left, right, seg_qi, seg_kj)


def _flash_forward(cfg, q, k, v, bias, segs):
    scale, _, _, _, _, bq, bk = cfg
    b, hk, g, lqp, _ = q.shape
    dv = v.shape[-1]
    dtype = accum_dtype(q.dtype, k.dtype, v.dtype)

    def query_block(iq):
        q0 = iq * bq
        qi = _slice(q, q0, bq, 3)

        def key_block(jk, state):
            k0 = jk * bk
            kj, vj = _slice(k, k0, bk, 2), _slice(v, k0, bk, 2)
            s = _scores(qi, kj, _bias_block(bias, q0, k0, bq, bk), scale, dtype)
            mask = _block_mask(q0, k0, segs, cfg)
            return osm.merge(state, osm.from_scores(s, vj[:, :, None, None], mask))

        lo, hi = _key_block_range(q0, cfg)
        # Inside shard_map the constant initial state must vary like the inputs.
        init = match_vma(osm.empty((b, hk, g, bq), dv, dtype), qi, k, v, bias)
        state = lax.fori_loop(lo, hi, key_block, init)
        return osm.finalize(state).astype(q.dtype), osm.logsumexp(state)

    out, lse = lax.map(query_block, jnp.arange(lqp // bq))
    # (nq, b, hk, g, bq, ...) -> (b, hk, g, nq * bq, ...)
    out = jnp.moveaxis(out, 0, 3).reshape(b, hk, g, lqp, dv)
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, hk, g, lqp)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg, q, k, v, bias, segs):
    return _flash_forward(cfg, q, k, v, bias, segs)[0]


def _flash_fwd(cfg, q, k, v, bias, segs):
    out, lse = _flash_forward(cfg, q, k, v, bias, segs)
    return out, (q, k, v, bias, segs, out, lse)


def _flash_bwd(cfg, res, d_out):
    scale, _, _, _, _, bq, bk = cfg
    q, k, v, bias, segs, out, lse = res
    dtype = accum_dtype(q.dtype, k.dtype, v.dtype)
    lkp = k.shape[2]
    d_out = d_out.astype(dtype)
    # FlashAttention-2's D_i = rowsum(dO_i * O_i) = Σ_j P_ij dP_ij.
    delta = jnp.sum(d_out * out.astype(dtype), axis=-1)
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)  # rows with no key: P = 0 anyway

    def key_block(carry, jk):
        dq, dbias = carry
        k0 = jk * bk
        kj, vj = _slice(k, k0, bk, 2), _slice(v, k0, bk, 2)

        def query_block(iq, c):
            dk_j, dv_j, dq, dbias = c
            q0 = iq * bq
            qi, doi = _slice(q, q0, bq, 3), _slice(d_out, q0, bq, 3)
            lse_i, delta_i = _slice(lse, q0, bq, 3), _slice(delta, q0, bq, 3)
            s = _scores(qi, kj, _bias_block(bias, q0, k0, bq, bk), scale, dtype)
            mask = _block_mask(q0, k0, segs, cfg)
            p = jnp.exp(jnp.where(mask, s - lse_i[..., None], -jnp.inf))
            dv_j = dv_j + jnp.einsum("bhgqk,bhgqv->bhkv", p, doi)
            dp = jnp.einsum("bhgqv,bhkv->bhgqk", doi, vj, preferred_element_type=dtype)
            ds = p * (dp - delta_i[..., None])
            dk_j = dk_j + scale * jnp.einsum(
                "bhgqk,bhgqd->bhkd", ds, qi, preferred_element_type=dtype)
            dq_i = scale * jnp.einsum("bhgqk,bhkd->bhgqd", ds, kj, preferred_element_type=dtype)
            dq = lax.dynamic_update_slice_in_dim(dq, _slice(dq, q0, bq, 3) + dq_i, q0, axis=3)
            if dbias is not None:
                dbias = _add_dbias(dbias, ds, q0, k0, bq, bk)
            return dk_j, dv_j, dq, dbias

        lo, hi = _query_block_range(k0, cfg)
        init = (*match_vma((jnp.zeros(kj.shape, dtype), jnp.zeros(vj.shape, dtype)), kj, vj, q, d_out),
                dq, dbias)
        dk_j, dv_j, dq, dbias = lax.fori_loop(lo, hi, query_block, init)
        return (dq, dbias), (dk_j, dv_j)

    dbias0 = None if bias is None else jnp.zeros(bias.shape, dtype)
    init = match_vma((jnp.zeros(q.shape, dtype), dbias0), q, k, v, bias, d_out, out)
    (dq, dbias), (dk, dv) = lax.scan(key_block, init, jnp.arange(lkp // bk))
    # (nk, b, hk, bk, d) -> (b, hk, nk * bk, d)
    dk = jnp.moveaxis(dk, 0, 2).reshape(k.shape)
    dv = jnp.moveaxis(dv, 0, 2).reshape(v.shape)
    dbias = None if bias is None else dbias.astype(bias.dtype)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbias, None


def _add_dbias(dbias, ds, q0, k0, bq, bk):
    """Adds the block's dS, summed over the axes the bias broadcasts along."""
    axes = tuple(ax for ax in range(5) if dbias.shape[ax] == 1 and ds.shape[ax] != 1)
    ds = jnp.sum(ds, axis=axes, keepdims=True)
    q_start = q0 if dbias.shape[3] > 1 else 0
    k_start = k0 if dbias.shape[4] > 1 else 0
    start = (0, 0, 0, q_start, k_start)
    cur = lax.dynamic_slice(dbias, start, ds.shape)
    return lax.dynamic_update_slice(dbias, cur + ds, start)


_flash.defvjp(_flash_fwd, _flash_bwd)
