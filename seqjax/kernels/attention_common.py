"""What the GPU and TPU attention kernels share: the static config, the mask, the visible block ranges, the matmuls.

The mask follows :mod:`seqjax.ops.attention`: query ``i`` sits at key position
``lk - lq + i`` (ends aligned); key ``j`` is visible from query position ``p``
iff ``p - left <= j <= p + right`` (None: unbounded) and, with segments, the
ids match. The block ranges bound the loops (GPU) or guard the grid steps
(TPU) so that blocks hidden by causality or the window cost nothing. They
divide with ``lax.div`` on non-negative ints: ``//`` on signed ints lowers
through ``sign``, which Mosaic TPU lowers only for a known chip.
"""

import functools
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax


class AttnConfig(NamedTuple):
    """Static settings of one kernel call (a ``custom_vjp`` static argument).

    Attributes:
      scale: score scale.
      left: visible distance to the past (None: unbounded).
      right: visible distance to the future (None: unbounded; 0 when causal).
      lq: query length.
      lk: key length.
      block_q: query block (the requested one; each platform's kernel rounds it).
      block_k: key block (likewise).
      segments: whether segment ids are passed.
      interpret: None (the platform's kernel), or ``"gpu"``/``"tpu"`` to force
        that kernel in interpret mode.
    """

    scale: float
    left: int | None
    right: int | None
    lq: int
    lk: int
    block_q: int
    block_k: int
    segments: bool
    interpret: str | None


def visible(qpos, kpos, cfg: AttnConfig, lk_padded: bool, seg_q=None, seg_k=None):
    """Mask of the keys at ``kpos`` visible from the queries at ``qpos`` (broadcastable arrays).

    ``qpos`` are key positions of the queries (index + lk - lq): a padded query
    sits at ``>= lk`` and sees nothing; when ``lk_padded``, a key at ``>= lk``
    is padding and is seen by nothing.
    """
    vis = qpos < cfg.lk
    if lk_padded:
        vis = vis & (kpos < cfg.lk)
    if cfg.left is not None:
        vis = vis & (qpos - kpos <= cfg.left)
    if cfg.right is not None:
        vis = vis & (kpos - qpos <= cfg.right)
    if seg_q is not None:
        vis = vis & (seg_q == seg_k)
    return vis


def _bounds(cfg):
    # None (unbounded) becomes a distance no pair of positions reaches.
    big = cfg.lq + cfg.lk
    return big if cfg.left is None else cfg.left, big if cfg.right is None else cfg.right


def key_block_range(q0, cfg: AttnConfig, bq: int, bk: int):
    """``[lo, hi)`` of the key blocks (of ``bk``) that the query block of ``bq`` starting at ``q0`` can see."""
    left, right = _bounds(cfg)
    p0 = q0 + cfg.lk - cfg.lq  # the block's first query position
    k_lo = jnp.clip(p0 - left, 0, cfg.lk)
    k_hi = jnp.clip(p0 + bq - 1 + right + 1, 0, cfg.lk)  # exclusive
    lo, hi = lax.div(k_lo, bk), lax.div(k_hi + bk - 1, bk)
    return lo, jnp.maximum(lo, hi)


def query_block_range(k0, cfg: AttnConfig, bq: int, bk: int):
    """``[lo, hi)`` of the query blocks (of ``bq``) that can see the key block of ``bk`` starting at ``k0``."""
    left, right = _bounds(cfg)
    off = cfg.lk - cfg.lq
    # Query position p sees key j iff j - right <= p <= j + left.
    i_lo = jnp.clip(k0 - right - off, 0, cfg.lq)
    i_hi = jnp.clip(k0 + bk - 1 + left - off + 1, 0, cfg.lq)  # exclusive
    lo, hi = lax.div(i_lo, bq), lax.div(i_hi + bq - 1, bq)
    return lo, jnp.maximum(lo, hi)


def dot_nt(a, b):
    """``a @ b.T`` with float32 accumulation (scores ``q kᵀ``, ``dO vᵀ``)."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def dot_tn(a, b):
    """``a.T @ b`` with float32 accumulation (``Pᵀ dO``, ``dSᵀ q``)."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _ceil_div(x, n):
    return lax.div(jnp.maximum(x, 0) + n - 1, n)


def _floor_div(x, n):
    return lax.div(jnp.maximum(x, 0), n)


def whole_key_blocks(q0, cfg: AttnConfig, bq: int, bk: int):
    """``[lo, hi)`` of the key blocks that every query of the block at ``q0`` sees entirely.

    Such a block pair needs no mask (the kernels skip building it). Empty with
    segments (ids are data), for a query block holding padding, and past the
    last key block free of padding.
    """
    if cfg.segments:
        return 0, 0
    p0 = q0 + cfg.lk - cfg.lq
    p1 = p0 + bq - 1
    unpadded = cfg.lk // bk
    lo = 0 if cfg.left is None else _ceil_div(p1 - cfg.left, bk)
    hi = unpadded if cfg.right is None else jnp.minimum(_floor_div(p0 + cfg.right + 1, bk), unpadded)
    hi = jnp.where(p1 < cfg.lk, hi, lo)
    return lo, jnp.maximum(lo, hi)


def whole_query_blocks(k0, cfg: AttnConfig, bq: int, bk: int):
    """``[lo, hi)`` of the query blocks that see the key block at ``k0`` entirely (see :func:`whole_key_blocks`)."""
    if cfg.segments:
        return 0, 0
    off = cfg.lk - cfg.lq
    unpadded = cfg.lq // bq
    lo = 0 if cfg.right is None else _ceil_div(k0 + bk - 1 - cfg.right - off, bq)
    hi = unpadded if cfg.left is None else jnp.minimum(_floor_div(k0 + cfg.left - off + 1, bq), unpadded)
    hi = jnp.where(k0 + bk <= cfg.lk, hi, lo)
    return lo, jnp.maximum(lo, hi)


def split_loop(lo, hi, whole, body, carry):
    """``fori_loop`` over ``[lo, hi)`` as three loops: masked blocks, whole blocks (``whole``), masked blocks.

    ``body(i, carry, masked)``; ``masked`` is a Python bool, so the whole
    blocks' loop carries no mask arithmetic.
    """
    whole_lo = jnp.clip(whole[0], lo, hi)
    whole_hi = jnp.clip(whole[1], whole_lo, hi)
    carry = lax.fori_loop(lo, whole_lo, functools.partial(body, masked=True), carry)
    carry = lax.fori_loop(whole_lo, whole_hi, functools.partial(body, masked=False), carry)
    return lax.fori_loop(whole_hi, hi, functools.partial(body, masked=True), carry)
