"""The TPU (Mosaic TPU) flash-attention kernels behind :mod:`seqjax.kernels.attention`.

Forward: grid ``(b, hk, g, query blocks, key blocks)``, the key axis last and
``"arbitrary"`` (sequential on one core), so the running max, sum and output
accumulator live in VMEM scratch across it: initialised at the first key
block, written out (output and logsumexp) at the last. Backward: a dq kernel
on the same grid, and a dk/dv kernel on ``(b, hk, key blocks, g, query
blocks)`` whose last two axes are sequential, so the ``g`` query heads of one
key head add their dK/dV in the same scratch (grouped-query attention never
repeats K/V). A grid step whose block pair causality or the window hides does
no work (``pl.when``), and its index map repeats the nearest visible block so
the pipeline issues no DMA for it; a pair that the mask leaves whole (no
segments, no padding, inside causality and the window) skips building the
mask.

Blocks: the op's ``block_q`` rounded up to 16 rows (bf16 packs 16 rows per
(8, 128) tile) and ``block_k`` to 128 lanes (the key axis is the score block's
lane axis, and 128 matches the MXU's width on v5e and half of it on v6e); a
block longer than the (padded) sequence becomes the whole sequence. With the
op's default 128 × 128 at d = 128 a grid step holds ~0.3 MiB of VMEM (double-
buffered bf16 q, k, v, out blocks, float32 scratch), far under the 16-32 MiB
scoped VMEM: ``block_q``/``block_k`` of 512 fit too and cut the per-step
overhead, to be chosen when timed on a TPU. In interpret mode (tests)
``block_k`` may be any multiple of 16, so small tests still cross key blocks.
Segment ids are passed as ``(b, lq, 1)`` and ``(b, 1, lk)`` so their blocks are
a column and a row of the score block; the logsumexp and delta are ``(b, hk,
g, lq, 1)``, a (rows, 1) block matching the statistics' column layout.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from seqjax.kernels.attention_common import (
    dot_nt, dot_tn, key_block_range, query_block_range, visible, whole_key_blocks, whole_query_blocks)
from seqjax.kernels.common import out_struct
from seqjax.ops.common import pad_axis

_ROWS = 16
_LANES = 128


def _round(n, m):
    return -(-n // m) * m


def blocks(cfg, interpret):
    """``(block_q, block_k)`` for the TPU kernels (see the module docstring)."""
    bq = min(_round(cfg.block_q, _ROWS), _round(cfg.lq, _ROWS))
    bk = min(_round(cfg.block_k, _ROWS if interpret else _LANES), _round(cfg.lk, _ROWS))
    return bq, bk


def _mask(cfg, lk_padded, i, j, bq, bk, sq_ref, sk_ref):
    qpos = i * bq + (cfg.lk - cfg.lq) + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    kpos = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    segs = (sq_ref[...], sk_ref[...]) if cfg.segments else (None, None)
    return visible(qpos, kpos, cfg, lk_padded, *segs)


def _split(step, idx, visible_range, whole_range):
    """Runs ``step(masked)`` when ``idx`` is visible: unmasked inside ``whole_range``, masked elsewhere."""
    (lo, hi), (whole_lo, whole_hi) = visible_range, whole_range
    whole = (idx >= whole_lo) & (idx < whole_hi)
    pl.when((idx >= lo) & (idx < hi) & ~whole)(functools.partial(step, True))
    pl.when(whole)(functools.partial(step, False))


def _clamp(idx, lo, hi, n):
    """The block index a grid step reads: ``idx`` inside [lo, hi), else the nearest visible one."""
    return jnp.clip(jnp.clip(idx, lo, hi - 1), 0, n - 1)


def _fwd_kernel(cfg, bq, bk, lk_padded, nk, q_ref, k_ref, v_ref, *refs):
    if cfg.segments:
        sq_ref, sk_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc = refs
    else:
        (o_ref, lse_ref, m_sc, l_sc, acc_sc), sq_ref, sk_ref = refs, None, None
    i, j = pl.program_id(3), pl.program_id(4)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    def step(masked):
        v = v_ref[...]
        s = dot_nt(q_ref[...], k_ref[...]) * cfg.scale
        if masked:
            s = jnp.where(_mask(cfg, lk_padded, i, j, bq, bk, sq_ref, sk_ref), s, -jnp.inf)
        m = m_sc[...]
        m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
        # No visible key yet: shift by 0 (a whole block gives every row a finite max).
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
        p = jnp.exp(s - m_safe)
        alpha = jnp.exp(m - m_safe)
        l_sc[...] = l_sc[...] * alpha + jnp.sum(p, axis=1, keepdims=True)
        acc_sc[...] = acc_sc[...] * alpha + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        m_sc[...] = m_new

    _split(step, j, key_block_range(i * bq, cfg, bq, bk), whole_key_blocks(i * bq, cfg, bq, bk))

    @pl.when(j == nk - 1)
    def _end():
        l = l_sc[...]
        seen = l > 0
        o_ref[...] = (acc_sc[...] / jnp.where(seen, l, 1.0)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(seen, m_sc[...] + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)


def _dq_kernel(cfg, bq, bk, lk_padded, nk, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs):
    if cfg.segments:
        sq_ref, sk_ref, dq_ref, dq_sc = refs
    else:
        (dq_ref, dq_sc), sq_ref, sk_ref = refs, None, None
    i, j = pl.program_id(3), pl.program_id(4)

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    def step(masked):
        k = k_ref[...]
        s = dot_nt(q_ref[...], k) * cfg.scale - lse_ref[...]
        if masked:
            s = jnp.where(_mask(cfg, lk_padded, i, j, bq, bk, sq_ref, sk_ref), s, -jnp.inf)
        p = jnp.exp(s)
        ds = p * (dot_nt(do_ref[...], v_ref[...]) - delta_ref[...])
        dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    _split(step, j, key_block_range(i * bq, cfg, bq, bk), whole_key_blocks(i * bq, cfg, bq, bk))

    @pl.when(j == nk - 1)
    def _end():
        dq_ref[...] = (dq_sc[...] * cfg.scale).astype(dq_ref.dtype)


def _dkdv_kernel(cfg, bq, bk, lk_padded, g, nq, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs):
    if cfg.segments:
        sq_ref, sk_ref, dk_ref, dv_ref, dk_sc, dv_sc = refs
    else:
        (dk_ref, dv_ref, dk_sc, dv_sc), sq_ref, sk_ref = refs, None, None
    j, gg, i = pl.program_id(2), pl.program_id(3), pl.program_id(4)

    @pl.when((gg == 0) & (i == 0))
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    def step(masked):
        q, do = q_ref[...], do_ref[...]
        s = dot_nt(q, k_ref[...]) * cfg.scale - lse_ref[...]
        if masked:
            s = jnp.where(_mask(cfg, lk_padded, i, j, bq, bk, sq_ref, sk_ref), s, -jnp.inf)
        p = jnp.exp(s)
        dv_sc[...] += dot_tn(p.astype(do.dtype), do)
        ds = p * (dot_nt(do, v_ref[...]) - delta_ref[...])
        dk_sc[...] += dot_tn(ds.astype(q.dtype), q)

    _split(step, i, query_block_range(j * bk, cfg, bq, bk), whole_query_blocks(j * bk, cfg, bq, bk))

    @pl.when((gg == g - 1) & (i == nq - 1))
    def _end():
        dk_ref[...] = (dk_sc[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _params(interpret):
    return dict(
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
        interpret=interpret)


def _pad(cfg, bq, bk, q, k, v, segs):
    q, k, v = pad_axis(q, bq, 3), pad_axis(k, bk, 2), pad_axis(v, bk, 2)
    seg_args = ()
    if cfg.segments:
        seg_args = (pad_axis(segs[0], bq, 1)[:, :, None], pad_axis(segs[1], bk, 1)[:, None, :])
    return q, k, v, seg_args


def forward(cfg, interpret):
    """``fn(q, k, v, *segs) -> (out (b, hk, g, lq, dv), lse (b, hk, g, lq))``: the forward kernel.

    Args:
      cfg: the :class:`seqjax.kernels.attention.AttnConfig`.
      interpret: what ``pallas_call(interpret=...)`` takes.
    """
    def fwd(q, k, v, *segs):
        b, hk, g, _, dk = q.shape
        dv = v.shape[-1]
        bq, bk = blocks(cfg, interpret)
        q, k, v, seg_args = _pad(cfg, bq, bk, q, k, v, segs)
        lqp, lkp = q.shape[3], k.shape[2]
        nq, nk = lqp // bq, lkp // bk

        def kblock(i, j):
            return _clamp(j, *key_block_range(i * bq, cfg, bq, bk), nk)

        in_specs = [pl.BlockSpec((None, None, None, bq, dk), lambda n, h, gg, i, j: (n, h, gg, i, 0)),
                    pl.BlockSpec((None, None, bk, dk), lambda n, h, gg, i, j: (n, h, kblock(i, j), 0)),
                    pl.BlockSpec((None, None, bk, dv), lambda n, h, gg, i, j: (n, h, kblock(i, j), 0))]
        if cfg.segments:
            in_specs += [pl.BlockSpec((None, bq, 1), lambda n, h, gg, i, j: (n, i, 0)),
                         pl.BlockSpec((None, 1, bk), lambda n, h, gg, i, j: (n, 0, kblock(i, j)))]
        row = lambda n, h, gg, i, j: (n, h, gg, i, 0)  # noqa: E731
        out, lse = pl.pallas_call(
            functools.partial(_fwd_kernel, cfg, bq, bk, lkp != cfg.lk, nk),
            grid=(b, hk, g, nq, nk),
            in_specs=in_specs,
            out_specs=[pl.BlockSpec((None, None, None, bq, dv), row), pl.BlockSpec((None, None, None, bq, 1), row)],
            out_shape=[out_struct((b, hk, g, lqp, dv), q.dtype, q), out_struct((b, hk, g, lqp, 1), jnp.float32, q)],
            scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                            pltpu.VMEM((bq, dv), jnp.float32)],
            name="seqjax_attention_fwd",
            **_params(interpret),
        )(q, k, v, *seg_args)
        return out[:, :, :, :cfg.lq], lse[:, :, :, :cfg.lq, 0]

    return fwd


def backward(cfg, interpret):
    """``fn(q, k, v, d_out, lse, delta, *segs) -> (dq, dk, dv)``: the two backward kernels.

    Args:
      cfg: the :class:`seqjax.kernels.attention.AttnConfig`.
      interpret: what ``pallas_call(interpret=...)`` takes.
    """
    def bwd(q, k, v, d_out, lse, delta, *segs):
        b, hk, g, lq, dk = q.shape
        dv = v.shape[-1]
        bq, bk = blocks(cfg, interpret)
        q, k, v, seg_args = _pad(cfg, bq, bk, q, k, v, segs)
        d_out = pad_axis(d_out, bq, 3)
        lse, delta = (pad_axis(x, bq, 3)[..., None] for x in (lse, delta))
        lqp, lkp = q.shape[3], k.shape[2]
        nq, nk = lqp // bq, lkp // bk
        lk_padded = lkp != cfg.lk

        def kblock(i, j):
            return _clamp(j, *key_block_range(i * bq, cfg, bq, bk), nk)

        row = lambda n, h, gg, i, j: (n, h, gg, i, 0)  # noqa: E731
        key = lambda n, h, gg, i, j: (n, h, kblock(i, j), 0)  # noqa: E731
        specs = [pl.BlockSpec((None, None, None, bq, dk), row), pl.BlockSpec((None, None, bk, dk), key),
                 pl.BlockSpec((None, None, bk, dv), key), pl.BlockSpec((None, None, None, bq, dv), row),
                 pl.BlockSpec((None, None, None, bq, 1), row), pl.BlockSpec((None, None, None, bq, 1), row)]
        if cfg.segments:
            specs += [pl.BlockSpec((None, bq, 1), lambda n, h, gg, i, j: (n, i, 0)),
                      pl.BlockSpec((None, 1, bk), lambda n, h, gg, i, j: (n, 0, kblock(i, j)))]
        dq = pl.pallas_call(
            functools.partial(_dq_kernel, cfg, bq, bk, lk_padded, nk),
            grid=(b, hk, g, nq, nk), in_specs=specs,
            out_specs=pl.BlockSpec((None, None, None, bq, dk), row),
            out_shape=out_struct(q.shape, q.dtype, q),
            scratch_shapes=[pltpu.VMEM((bq, dk), jnp.float32)],
            name="seqjax_attention_dq", **_params(interpret),
        )(q, k, v, d_out, lse, delta, *seg_args)

        def qblock(j, i):
            return _clamp(i, *query_block_range(j * bk, cfg, bq, bk), nq)

        qrow = lambda n, h, j, gg, i: (n, h, gg, qblock(j, i), 0)  # noqa: E731
        krow = lambda n, h, j, gg, i: (n, h, j, 0)  # noqa: E731
        specs = [pl.BlockSpec((None, None, None, bq, dk), qrow), pl.BlockSpec((None, None, bk, dk), krow),
                 pl.BlockSpec((None, None, bk, dv), krow), pl.BlockSpec((None, None, None, bq, dv), qrow),
                 pl.BlockSpec((None, None, None, bq, 1), qrow), pl.BlockSpec((None, None, None, bq, 1), qrow)]
        if cfg.segments:
            specs += [pl.BlockSpec((None, bq, 1), lambda n, h, j, gg, i: (n, qblock(j, i), 0)),
                      pl.BlockSpec((None, 1, bk), lambda n, h, j, gg, i: (n, 0, j))]
        dk_, dv_ = pl.pallas_call(
            functools.partial(_dkdv_kernel, cfg, bq, bk, lk_padded, g, nq),
            grid=(b, hk, nk, g, nq), in_specs=specs,
            out_specs=[pl.BlockSpec((None, None, bk, dk), krow), pl.BlockSpec((None, None, bk, dv), krow)],
            out_shape=[out_struct(k.shape, k.dtype, q), out_struct(v.shape, v.dtype, q)],
            scratch_shapes=[pltpu.VMEM((bk, dk), jnp.float32), pltpu.VMEM((bk, dv), jnp.float32)],
            name="seqjax_attention_dkdv", **_params(interpret),
        )(q, k, v, d_out, lse, delta, *seg_args)
        return dq[:, :, :, :lq], dk_[:, :, :cfg.lk], dv_[:, :, :cfg.lk]

    return bwd
