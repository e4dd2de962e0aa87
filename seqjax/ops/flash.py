"""The flash-attention block kernel, shared by blockwise and ring attention.

FlashAttention-2 on the internal layout ``q (b, hk, g, lq, dk)``, ``k, v (b,
hk, lk, d)`` (query heads split as ``(kv head, group)`` so every score block is
one batched matmul without repeating K/V): for each block of ``block_q``
queries a ``lax.fori_loop`` runs over only the key blocks that causality and
the window leave visible (bounds computed from the block index), folding each
block into a running :class:`~seqjax.ops.online_softmax.SoftmaxState` with the
one :func:`~seqjax.ops.online_softmax.merge`. :func:`flash` is a
``jax.custom_vjp`` that saves only the output and the per-row logsumexp; its
backward pass (:func:`flash_backward`) loops over key blocks (outer) and their
visible query blocks (inner), recomputing the scores of one block pair at a
time to form dV, dK, dQ and, when a bias is given, dbias (summed to the bias's
broadcast shape).

:func:`seqjax.ops.attention.attention` (``impl="blockwise"``) pads its inputs
to whole blocks and calls :func:`flash`; ring attention
(:mod:`seqjax.ops.ring_attention`) calls :func:`flash_forward` and
:func:`flash_backward` once per arriving K/V block. The argument checks and
masks that both share live here too.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.ops import online_softmax as osm
from seqjax.ops.collectives import match_vma
from seqjax.ops.common import accum_dtype


# On CPU (one thread, causal, d=64) 128 and 256 tie at L=4096 (forward 278 ms,
# forward+backward 1.02 s) while 512 is 30% slower and 128 wins at L=1024.
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 128


class FlashConfig(NamedTuple):
    """Static settings of one flash call (hashable: a ``custom_vjp`` static argument).

    Attributes:
      scale: score scale.
      left: visible distance to the past (None: unbounded).
      right: visible distance to the future (None: unbounded; 0 when causal).
      lq: true query length (the inputs may be padded past it).
      lk: true key length.
      block_q: query block (divides the padded query length).
      block_k: key block (divides the padded key length).
    """

    scale: float
    left: int | None
    right: int | None
    lq: int
    lk: int
    block_q: int
    block_k: int

# --- validation and masks --------------------------------------------------


def check_qkv(q, k, v) -> tuple[int, int, int, int, int, int, int]:
    """Validates ``q (b, lq, h, dk)``, ``k (b, lk, hk, dk)``, ``v (b, lk, hk, dv)``; returns ``(b, lq, h, hk, dk, lk, dv)``."""
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


def check_segments(segment_ids, b, lq, lk):
    """``(q_ids (b, lq), kv_ids (b, lk))`` from ids or an id pair, or ``(None, None)``; validated."""
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


def visible(qpos, kpos, lq_end, lk, left, right, seg_q, seg_k):
    """``(b|1, 1, 1, nq, nk)`` mask of the keys at kpos visible from the queries at qpos.

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


def scores(qi, kj, bias_ij, scale, dtype):
    s = jnp.einsum("bhgqd,bhkd->bhgqk", qi, kj, preferred_element_type=dtype) * scale
    if bias_ij is not None:
        s = s + bias_ij.astype(dtype)
    return s


# --- the kernel ---------------------------------------------------------------


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
    return visible(qpos, k0 + jnp.arange(bk), lk, lk, left, right, seg_qi, seg_kj)


def flash_forward(cfg: FlashConfig, q, k, v, bias, segs):
    """Forward pass on padded inputs: ``(out (b, hk, g, lq_pad, dv), lse (b, hk, g, lq_pad))``."""
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
            s = scores(qi, kj, _bias_block(bias, q0, k0, bq, bk), scale, dtype)
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
def flash(cfg: FlashConfig, q, k, v, bias, segs):
    """Flash attention on padded inputs (a ``custom_vjp`` that recomputes in the backward pass).

    Args:
      cfg: the static :class:`FlashConfig`.
      q: ``(b, hk, g, lq_pad, dk)``.
      k: ``(b, hk, lk_pad, dk)``.
      v: ``(b, hk, lk_pad, dv)``.
      bias: ``(B, H1, H2, Q, K)`` broadcastable to the scores, or None.
      segs: ``(q_ids (b, lq_pad), kv_ids (b, lk_pad))`` or None.

    Returns:
      ``(b, hk, g, lq_pad, dv)`` in ``q``'s dtype.
    """
    return flash_forward(cfg, q, k, v, bias, segs)[0]


def _flash_fwd(cfg, q, k, v, bias, segs):
    out, lse = flash_forward(cfg, q, k, v, bias, segs)
    return out, (q, k, v, bias, segs, out, lse)


def flash_backward(cfg: FlashConfig, res, d_out):
    """The backward pass: ``(dq, dk, dv, dbias, None)`` from the residuals ``(q, k, v, bias, segs, out, lse)``."""
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
            s = scores(qi, kj, _bias_block(bias, q0, k0, bq, bk), scale, dtype)
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


flash.defvjp(_flash_fwd, flash_backward)
