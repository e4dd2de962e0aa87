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
  * ``"blockwise"``: FlashAttention-2, the block kernel of
    :mod:`seqjax.ops.flash` (online softmax over the visible key blocks only,
    a ``custom_vjp`` that saves the output and the logsumexp and recomputes
    the scores block by block in the backward pass). Memory O(l · block)
    besides the inputs; any lengths (padded here, padding masked).
  * ``"pallas"``, ``"cudnn"``, ``"splash"``: registered by
    :mod:`seqjax.kernels` (``import seqjax`` imports it): our Pallas flash
    kernel (Triton on GPU, Mosaic TPU on TPU, interpreted on CPU; segments,
    windows, GQA, any lengths; no bias), cuDNN's fused attention (GPU; 16-bit,
    no segments) and splash attention (TPU; lq == lk, a multiple of 128). See
    :mod:`seqjax.kernels.attention` and :mod:`seqjax.kernels.attention_vendor`.
  * ``"auto"``: on GPU ``"cudnn"`` where it serves the call, else
    ``"pallas"``; on TPU ``"splash"`` where it serves the call, else
    ``"pallas"`` (neither with a bias or float64 inputs: those take the CPU
    rule). On CPU (and for those calls): ``"blockwise"`` when ``lq * lk >= 256²``,
    else ``"reference"``. Measured on this project's CPU machine (one thread,
    min of repeats; ``benchmarks/bench_attention.py`` has the large sizes): with
    b=8, h=4, d=32 the two are within noise up to L=128 (forward 1.1-1.5 ms
    reference vs 1.8-2.4 ms blockwise; forward+backward 8-11 ms vs 10 ms), at
    L=256 the forward is still a tie (6.5 vs 9.1 ms causal) but forward+backward
    is 100 ms vs 49-72 ms, and at L=512 the reference loses 414 vs 164 ms; with
    b=1, h=4, d=64 at L=1024 forward+backward is 266 vs 74 ms. Below 256² the
    reference's L² memory is small and its plain autodiff is simplest. The
    keys the rules read are those of :func:`call_sizes`.

Sequence parallelism: with ``sequence_axis=`` (inside ``jax.shard_map``, the
length split over that mesh axis) the call goes to ring attention
(:func:`seqjax.ops.ring_attention.ring_attention`, registered with the front
door), which runs a flash kernel per K/V block (the Pallas kernels on GPU and
TPU under ``"auto"``); see ``docs/parallelism.md``.

Registered implementations take ``fn(q5, k4, v4, bias5, seg_q, seg_k, scale,
left, right, block_q, block_k)`` on the internal layout of
:mod:`seqjax.ops.flash` and return ``(b, hk, g, lq, dv)``.

Softmax statistics are kept in float32 (or float64 for float64 inputs); the
output has ``q``'s dtype. A query that sees no key outputs 0 (and gets zero
gradients), never NaN.
"""

import jax
import jax.numpy as jnp

from seqjax.ops import dispatch
from seqjax.ops import online_softmax as osm
from seqjax.ops.collectives import match_vma
from seqjax.ops.common import accum_dtype, pad_axis
from seqjax.ops.flash import (
    DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, FlashConfig, check_qkv, check_segments, flash, resolve_window, scores,
    visible)
from seqjax.types import AttnBias, AttnOut, Keys, Queries, SegmentIds, Values




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
      impl: ``"auto"``, ``"reference"``, ``"blockwise"``, ``"pallas"``,
        ``"cudnn"`` (GPU) or ``"splash"`` (TPU); see the module docstring.
      block_q: query block size of ``"blockwise"`` and ``"pallas"`` (each
        platform's kernel rounds it to its tiling).
      block_k: key block size of ``"blockwise"`` and ``"pallas"``.
      sequence_axis: sequence parallelism. When set, this call must run inside
        ``jax.shard_map`` with the length axis of ``q, k, v`` (and of
        ``segment_ids``) split over the mesh axis of this name; the arrays are
        the local shards and the result is the local shard of the output.
        Computed by :func:`seqjax.ops.ring_attention.ring_attention`, a flash
        kernel per K/V block: ``impl`` must then be ``"auto"`` (the Pallas
        kernels on GPU and TPU, XLA's on CPU), ``"blockwise"`` (XLA) or
        ``"pallas"``. ``window`` and ``bias`` are not supported with it.
      sequence_layout: which positions each shard holds when ``sequence_axis``
        is set: ``"contiguous"`` or ``"zigzag"`` (see
        :func:`seqjax.ops.ring_attention.zigzag_permute`).

    Returns:
      ``(b, lq, h, dv)`` in ``q``'s dtype; 0 for a query with no visible key.
    """
    dispatch.check("attention", impl)
    if sequence_axis is not None:
        return _sequence_parallel(q, k, v, causal, segment_ids, window, bias, scale, impl,
                                  block_q, block_k, sequence_axis, sequence_layout)
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    b, lq, h, hk, dk, lk, dv = check_qkv(q, k, v)
    left, right = resolve_window(window, causal)
    seg_q, seg_k = check_segments(segment_ids, b, lq, lk)
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

    g = h // hk
    # Internal layout: heads before length, query heads split as (hk, g), so
    # every score block is one batched matmul over (b, hk) without repeating k.
    q5 = q.reshape(b, lq, hk, g, dk).transpose(0, 2, 3, 1, 4)
    k4 = k.transpose(0, 2, 1, 3)
    v4 = v.transpose(0, 2, 1, 3)
    impl = dispatch.resolve("attention", impl, **call_sizes(q5, k4, v4, bias5, seg_q, seg_k, left, right))
    out = dispatch.implementation("attention", impl)(q5, k4, v4, bias5, seg_q, seg_k, scale, left, right,
                                                     block_q, block_k)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, dv).astype(q.dtype)


def call_sizes(q5, k4, v4, bias5, seg_q, seg_k, left, right) -> dict[str, int]:
    """The keys the ``auto`` rules read (:func:`seqjax.ops.dispatch.resolve`), from the internal layout.

    ``lq``, ``lk``, ``scores`` (lq·lk); ``bias``, ``segments`` (0/1); ``bits`` (the widest
    input's bits); ``half`` (1 when q, k, v share one 16-bit float dtype);
    ``head_dim``, ``v_head_dim``; ``same_length`` (lq == lk); ``causal``
    (``right == 0``); ``left_window`` (``left`` bounded); ``right_window``
    (``right`` bounded and > 0); ``shared_segments`` (one id array for queries
    and keys: ``segment_ids`` given as a single array).

    Args:
      q5, k4, v4, bias5, seg_q, seg_k, left, right: as the implementations take them.

    Returns:
      A dict of ints.
    """
    dtypes = {jnp.dtype(x.dtype) for x in (q5, k4, v4)}
    lq, lk = q5.shape[3], k4.shape[2]
    return dict(
        lq=lq, lk=lk, scores=lq * lk, bias=int(bias5 is not None), segments=int(seg_q is not None),
        bits=8 * max(d.itemsize for d in dtypes),
        half=int(len(dtypes) == 1 and dtypes <= {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)}),
        head_dim=q5.shape[4], v_head_dim=v4.shape[3], same_length=int(lq == lk), causal=int(right == 0),
        left_window=int(left is not None), right_window=int(right not in (None, 0)),
        shared_segments=int(seg_q is not None and seg_q is seg_k))


def _sequence_parallel(q, k, v, causal, segment_ids, window, bias, scale, impl, block_q, block_k,
                       axis_name, layout):
    for name, val in (("window", window), ("bias", bias)):
        if val is not None:
            raise NotImplementedError(
                f"attention: {name}= is not implemented with sequence_axis (ring attention); "
                f"call it without sequence_axis on gathered sequences instead")
    if impl not in ("auto", "blockwise", "pallas"):
        raise NotImplementedError(
            f"attention: impl={impl!r} is not available with sequence_axis; ring attention "
            "computes every K/V block with a flash kernel (use 'auto', 'blockwise' or 'pallas')")
    return dispatch.sequence_parallel("attention")(
        q, k, v, axis_name=axis_name, causal=causal, segment_ids=segment_ids, scale=scale, layout=layout,
        block_q=block_q, block_k=block_k, impl=impl)


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


# --- implementations -----------------------------------------------------------


@dispatch.register("attention", "reference")
def _reference(q5, k4, v4, bias5, seg_q, seg_k, scale, left, right, block_q, block_k):
    # Materialised scores; plain autodiff.
    del block_q, block_k
    lq, lk = q5.shape[3], k4.shape[2]
    dtype = accum_dtype(q5.dtype, k4.dtype, v4.dtype)
    s = scores(q5, k4, bias5, scale, dtype)
    mask = visible(jnp.arange(lq) + lk - lq, jnp.arange(lk), lk, lk, left, right, seg_q, seg_k)
    # values (b, hk, 1, 1, lk, dv): shared by the g heads and lq queries.
    return osm.finalize(osm.from_scores(s, v4[:, :, None, None], mask))


@dispatch.register("attention", "blockwise")
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
    cfg = FlashConfig(scale, left, right, lq, lk, bq, bk)
    # Inside shard_map the custom_vjp returns gradients typed like its inputs:
    # a replicated input (K/V or bias against sharded queries) is cast to
    # varying, and the cast's transpose sums its gradient over the devices.
    q5, k4, v4, bias5 = match_vma((q5, k4, v4, bias5), q5, k4, v4, bias5)
    out = flash(cfg, q5, k4, v4, bias5, segs)
    return out[:, :, :, :lq]
