"""Our flash attention in Pallas (``impl="pallas"``), and the ``auto`` rows of the attention op.

**The kernel** is FlashAttention-2 on the op's internal layout ``q (b, hk, g,
lq, dk)``, ``k, v (b, hk, lk, d)``: the forward pass keeps the online-softmax
statistics (running max and sum, float32) on chip and writes the output and
the per-row logsumexp; the backward pass (a ``custom_vjp``) recomputes the
scores block by block from the logsumexp and ``delta = rowsum(dO * O)``, in
two kernels: dq (per query block, looping over key blocks) and dk/dv (per key
block, looping over the ``g`` query heads of its key head and their query
blocks, so grouped-query attention reads K/V once per key head and sums the
``g`` heads' gradients on chip: K/V are never repeated in HBM). It covers what
the vendor kernels cannot: segment ids (packed documents) together with local
windows ``(left, right)``, GQA, causal with the ends aligned (query ``i`` at key
position ``lk - lq + i``), any lengths (padded to the block, padding masked),
bf16 inputs with float32 statistics and accumulation (float64 inputs are
refused: the statistics would drop to float32). Key blocks that causality or
the window hide from a whole query block are skipped (the loop bounds, or on
TPU the grid step, come from the block index), so the work scales with what is
visible; blocks hidden only by segments are computed and masked. Block pairs
that the mask leaves whole (no segments, no padding, inside causality and the
window: most of them in causal attention) run without building the mask
(``attention_common.split_loop`` on GPU, a second ``pl.when`` branch on TPU). A query that
sees no key outputs 0 and gets zero gradients. ``bias`` is not taken (a call
with one raises in one line; ``auto`` sends bias calls to the XLA paths,
which differentiate the bias): a bias block per score block would add a
``(lq, lk)`` read to a kernel that otherwise reads O(l·d).

Where it runs (:func:`seqjax.kernels.common.on_platform`, chosen when lowered):

* **GPU** (``cuda``): Pallas' **Triton** backend, deprecated from JAX 0.11 but
  the one that can express this kernel: Mosaic GPU, the default Pallas GPU
  backend, lowers a kernel written over register arrays ("lane" semantics)
  without matmuls or transposes (JAX 0.10.2: ``Unimplemented primitive in
  Pallas Mosaic GPU lowering: transpose``); a Mosaic GPU attention has to be
  written in warpgroup semantics (``wgmma`` from shared-memory refs, a
  hand-made TMA pipeline, as ``jax.experimental.pallas.ops.gpu.attention_mgpu``
  does), which interpret mode on a CPU cannot check. Grid ``(b·hk·g, query
  blocks)`` for the forward and dq kernels (each program loops over its
  visible key blocks with ``fori_loop``; the K/V of its key head are read in
  place, block by block), ``(b·hk, key blocks)`` for dk/dv. Blocks: the op's
  ``block_q × block_k`` (default 128 × 128, FlashAttention-2's forward tile)
  in the forward, at most 64 × 64 in the backward (which holds K, V, dK, dV of
  a block in registers at once: 128-row blocks would spill at d = 128), and
  streamed tiles (K/V blocks; Q/dO blocks in the dk/dv kernel) of at most
  :data:`GPU_TILE_BYTES` (so 64 rows for float32 at d = 128 or bf16 at
  d = 256), which keeps two pipeline stages within shared memory; 8
  warps from d = 128 on, else 4; 2 pipeline stages. Triton needs power-of-two
  tiles, so blocks are powers of two (and at most the padded length) and head
  dims are zero-padded to one (at least 16, the smallest tensor-core tile).
  Float32 inputs get Triton's default matmul precision (TF32 on Ampere and
  later), as XLA's float32 matmuls on GPU do.
* **TPU**: Mosaic TPU (:mod:`seqjax.kernels.attention_tpu`, which has its
  grids and blocks).
* **CPU**: the GPU kernel in Pallas interpret mode (slow; for tests).

**Ring attention's blocks** (:class:`seqjax.ops.ring_attention.BlockKernels`,
registered here as ``"pallas"``): :func:`ring_block_forward` returns a
block's ``(out, lse)``, :func:`ring_block_backward` its gradients from the
ring's *final* output and logsumexp (the same dq and dk/dv kernels).

**auto** (rows added here, tried before the op's XLA rows): on GPU cuDNN
(``impl="cudnn"``) where :func:`seqjax.kernels.attention_vendor.cudnn_serves`,
else this kernel; on TPU splash attention (``impl="splash"``) where
:func:`seqjax.kernels.attention_vendor.splash_serves`, else this kernel; in
both cases not with a bias or float64 inputs (the XLA rows then). CPU keeps the
op's own rows. None of the GPU/TPU rows is timed yet (no accelerator was lent
when they were written): they follow the issue's rule that a maintained kernel
serves where it can.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from seqjax.kernels import attention_tpu, attention_vendor
from seqjax.kernels.attention_common import (
    AttnConfig, dot_nt, dot_tn, key_block_range, query_block_range, split_loop, visible, whole_key_blocks,
    whole_query_blocks)
from seqjax.kernels.common import on_platform, out_struct, vary_alike
from seqjax.ops import dispatch
from seqjax.ops.common import pad_axis
from seqjax.ops.flash import resolve_window
from seqjax.ops.ring_attention import BLOCK_OP, BlockKernels

# The GPU backward's blocks (see the module docstring).
GPU_BWD_BLOCK = 64
# Largest tile (rows x padded head dim x bytes) the GPU kernels stream: two
# pipeline stages of a K and a V tile then take 128 KiB of the H100/H200's
# 227 KiB of shared memory (an estimate: Triton allocates at compile time, on
# the device, so lowering cannot check it).
GPU_TILE_BYTES = 32 * 1024


def _pow2_at_most(n):
    return 1 << (max(n, 1).bit_length() - 1)


def _pow2_at_least(n, floor=16):
    return max(floor, 1 << (max(n, 1) - 1).bit_length())




# --- GPU kernels (Triton backend; interpret mode on CPU) ------------------------


def _gpu_fwd_kernel(cfg, bq, bk, lk_padded, q_ref, k_ref, v_ref, *refs):
    if cfg.segments:
        sq_ref, sk_ref, o_ref, lse_ref = refs
    else:
        o_ref, lse_ref = refs
    q0 = pl.program_id(1) * bq
    q = q_ref[...]
    qpos = (q0 + cfg.lk - cfg.lq + jnp.arange(bq))[:, None]
    seg_q = sq_ref[...][:, None] if cfg.segments else None

    def key_block(j, carry, masked):
        m, l, acc = carry
        k0 = pl.multiple_of(j * bk, bk)
        kb, vb = k_ref[pl.ds(k0, bk), :], v_ref[pl.ds(k0, bk), :]
        s = dot_nt(q, kb) * cfg.scale
        if masked:
            seg_k = sk_ref[pl.ds(k0, bk)][None, :] if cfg.segments else None
            vis = visible(qpos, (k0 + jnp.arange(bk))[None, :], cfg, lk_padded, seg_q, seg_k)
            s = jnp.where(vis, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        # A row with no visible key yet keeps m = -inf; shift it by 0 instead
        # (a whole block gives every row a finite max).
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
        p = jnp.exp(s - m_safe[:, None])
        alpha = jnp.exp(m - m_safe)
        l = l * alpha + jnp.sum(p, axis=1)
        acc = acc * alpha[:, None] + jnp.dot(p.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
        return m_new, l, acc

    lo, hi = key_block_range(q0, cfg, bq, bk)
    init = (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
            jnp.zeros((bq, o_ref.shape[-1]), jnp.float32))
    m, l, acc = split_loop(lo, hi, whole_key_blocks(q0, cfg, bq, bk), key_block, init)
    seen = l > 0
    o_ref[...] = (acc / jnp.where(seen, l, 1.0)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)


def _gpu_dq_kernel(cfg, bq, bk, lk_padded, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs):
    if cfg.segments:
        sq_ref, sk_ref, dq_ref = refs
    else:
        (dq_ref,) = refs
    q0 = pl.program_id(1) * bq
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    qpos = (q0 + cfg.lk - cfg.lq + jnp.arange(bq))[:, None]
    seg_q = sq_ref[...][:, None] if cfg.segments else None

    def key_block(j, dq, masked):
        k0 = pl.multiple_of(j * bk, bk)
        kb, vb = k_ref[pl.ds(k0, bk), :], v_ref[pl.ds(k0, bk), :]
        s = dot_nt(q, kb) * cfg.scale - lse
        if masked:
            seg_k = sk_ref[pl.ds(k0, bk)][None, :] if cfg.segments else None
            vis = visible(qpos, (k0 + jnp.arange(bk))[None, :], cfg, lk_padded, seg_q, seg_k)
            s = jnp.where(vis, s, -jnp.inf)
        p = jnp.exp(s)
        ds = p * (dot_nt(do, vb) - delta)
        return dq + jnp.dot(ds.astype(kb.dtype), kb, preferred_element_type=jnp.float32)

    lo, hi = key_block_range(q0, cfg, bq, bk)
    dq = split_loop(lo, hi, whole_key_blocks(q0, cfg, bq, bk), key_block, jnp.zeros(dq_ref.shape, jnp.float32))
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _gpu_dkdv_kernel(cfg, bq, bk, lk_padded, g, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs):
    if cfg.segments:
        sq_ref, sk_ref, dk_ref, dv_ref = refs
    else:
        dk_ref, dv_ref = refs
    k0 = pl.program_id(1) * bk
    kb, vb = k_ref[...], v_ref[...]
    kpos = (k0 + jnp.arange(bk))[None, :]
    seg_k = sk_ref[...][None, :] if cfg.segments else None
    lo, hi = query_block_range(k0, cfg, bq, bk)
    whole = whole_query_blocks(k0, cfg, bq, bk)

    def query_block(i, carry, gg, masked):
        dk, dv = carry
        q0 = pl.multiple_of(i * bq, bq)
        rows = pl.ds(q0, bq)
        qb, dob = q_ref[gg, rows, :], do_ref[gg, rows, :]
        lse, delta = lse_ref[gg, rows][:, None], delta_ref[gg, rows][:, None]
        s = dot_nt(qb, kb) * cfg.scale - lse
        if masked:
            seg_q = sq_ref[rows][:, None] if cfg.segments else None
            vis = visible((q0 + cfg.lk - cfg.lq + jnp.arange(bq))[:, None], kpos, cfg, lk_padded, seg_q, seg_k)
            s = jnp.where(vis, s, -jnp.inf)
        p = jnp.exp(s)
        dv = dv + dot_tn(p.astype(dob.dtype), dob)
        ds = p * (dot_nt(dob, vb) - delta)
        dk = dk + dot_tn(ds.astype(qb.dtype), qb)
        return dk, dv

    def head(gg, carry):
        return split_loop(lo, hi, whole, functools.partial(query_block, gg=gg), carry)

    init = (jnp.zeros(dk_ref.shape, jnp.float32), jnp.zeros(dv_ref.shape, jnp.float32))
    dk, dv = lax.fori_loop(0, g, head, init)
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _gpu_params(d):
    return plgpu.CompilerParams(num_warps=8 if d >= 128 else 4, num_stages=2)


def _gpu_pad(cfg, bq, bk, q, k, v, segs, *rows):
    """Pads lengths to the blocks and head dims to a power of two; ``rows`` are (b, hk, g, lq, d?) arrays."""
    dk, dv = _pow2_at_least(q.shape[-1]), _pow2_at_least(v.shape[-1])
    q, k = pad_axis(pad_axis(q, bq, 3), dk, 4), pad_axis(pad_axis(k, bk, 2), dk, 3)
    v = pad_axis(pad_axis(v, bk, 2), dv, 3)
    rows = [pad_axis(pad_axis(r, bq, 3), dv, 4) if r.ndim == 5 else pad_axis(r, bq, 3) for r in rows]
    if cfg.segments:
        segs = (pad_axis(segs[0], bq, 1), pad_axis(segs[1], bk, 1))
    return q, k, v, segs, rows


def _gpu_blocks(cfg, backward, d, itemsize):
    """Power-of-two blocks: the op's (the backward's at most 64), at most GPU_TILE_BYTES per tile."""
    rows = max(16, _pow2_at_most(GPU_TILE_BYTES // (d * itemsize)))
    # The query tile stays resident (one copy, not pipelined): twice the rows.
    bq, bk = min(_pow2_at_most(cfg.block_q), 2 * rows), min(_pow2_at_most(cfg.block_k), rows)
    if backward:
        bq, bk = min(bq, GPU_BWD_BLOCK, rows), min(bk, GPU_BWD_BLOCK)
    return min(bq, _pow2_at_least(cfg.lq)), min(bk, _pow2_at_least(cfg.lk))


def _gpu_forward(cfg, interpret):
    def fwd(q, k, v, *segs):
        b, hk, g, dv_true = *q.shape[:3], v.shape[-1]
        bq, bk = _gpu_blocks(cfg, False, _pow2_at_least(max(q.shape[-1], v.shape[-1])), q.dtype.itemsize)
        q, k, v, segs, _ = _gpu_pad(cfg, bq, bk, q, k, v, segs)
        lqp, dk, lkp, dv = q.shape[3], q.shape[4], k.shape[2], v.shape[3]
        qrow = lambda n, i: (n // (hk * g), n // g % hk, n % g, i, 0)  # noqa: E731
        kv = lambda n, i: (n // (hk * g), n // g % hk, 0, 0)  # noqa: E731
        in_specs = [pl.BlockSpec((None, None, None, bq, dk), qrow), pl.BlockSpec((None, None, lkp, dk), kv),
                    pl.BlockSpec((None, None, lkp, dv), kv)]
        if cfg.segments:
            in_specs += [pl.BlockSpec((None, bq), lambda n, i: (n // (hk * g), i)),
                         pl.BlockSpec((None, lkp), lambda n, i: (n // (hk * g), 0))]
        out, lse = pl.pallas_call(
            functools.partial(_gpu_fwd_kernel, cfg, bq, bk, lkp != cfg.lk),
            grid=(b * hk * g, lqp // bq),
            in_specs=in_specs,
            out_specs=[pl.BlockSpec((None, None, None, bq, dv), qrow),
                       pl.BlockSpec((None, None, None, bq), lambda n, i: qrow(n, i)[:4])],
            out_shape=[out_struct((b, hk, g, lqp, dv), q.dtype, q), out_struct((b, hk, g, lqp), jnp.float32, q)],
            compiler_params=_gpu_params(max(dk, dv)),
            interpret=interpret,
            name="seqjax_attention_fwd",
        )(q, k, v, *(segs or ()))
        return out[:, :, :, :cfg.lq, :dv_true], lse[:, :, :, :cfg.lq]

    return fwd


def _gpu_backward(cfg, interpret):
    def bwd(q, k, v, d_out, lse, delta, *segs):
        b, hk, g, lq, dk_true = q.shape
        dv_true = v.shape[-1]
        bq, bk = _gpu_blocks(cfg, True, _pow2_at_least(max(dk_true, dv_true)), q.dtype.itemsize)
        q, k, v, segs, (d_out, lse, delta) = _gpu_pad(cfg, bq, bk, q, k, v, segs, d_out, lse, delta)
        lqp, dk, lkp, dv = q.shape[3], q.shape[4], k.shape[2], v.shape[3]
        lk_padded = lkp != cfg.lk
        seg_args = tuple(segs or ())
        params = _gpu_params(max(dk, dv))

        qrow = lambda n, i: (n // (hk * g), n // g % hk, n % g, i, 0)  # noqa: E731
        kv = lambda n, i: (n // (hk * g), n // g % hk, 0, 0)  # noqa: E731
        specs = [pl.BlockSpec((None, None, None, bq, dk), qrow), pl.BlockSpec((None, None, lkp, dk), kv),
                 pl.BlockSpec((None, None, lkp, dv), kv), pl.BlockSpec((None, None, None, bq, dv), qrow),
                 pl.BlockSpec((None, None, None, bq), lambda n, i: qrow(n, i)[:4]),
                 pl.BlockSpec((None, None, None, bq), lambda n, i: qrow(n, i)[:4])]
        if cfg.segments:
            specs += [pl.BlockSpec((None, bq), lambda n, i: (n // (hk * g), i)),
                      pl.BlockSpec((None, lkp), lambda n, i: (n // (hk * g), 0))]
        dq = pl.pallas_call(
            functools.partial(_gpu_dq_kernel, cfg, bq, bk, lk_padded),
            grid=(b * hk * g, lqp // bq), in_specs=specs,
            out_specs=pl.BlockSpec((None, None, None, bq, dk), qrow),
            out_shape=out_struct(q.shape, q.dtype, q),
            compiler_params=params, interpret=interpret, name="seqjax_attention_dq",
        )(q, k, v, d_out, lse, delta, *seg_args)

        heads = lambda n, j: (n // hk, n % hk, 0, 0, 0)  # noqa: E731
        krow = lambda n, j: (n // hk, n % hk, j, 0)  # noqa: E731
        specs = [pl.BlockSpec((None, None, g, lqp, dk), heads), pl.BlockSpec((None, None, bk, dk), krow),
                 pl.BlockSpec((None, None, bk, dv), krow), pl.BlockSpec((None, None, g, lqp, dv), heads),
                 pl.BlockSpec((None, None, g, lqp), lambda n, j: heads(n, j)[:4]),
                 pl.BlockSpec((None, None, g, lqp), lambda n, j: heads(n, j)[:4])]
        if cfg.segments:
            specs += [pl.BlockSpec((None, lqp), lambda n, j: (n // hk, 0)),
                      pl.BlockSpec((None, bk), lambda n, j: (n // hk, j))]
        dk_, dv_ = pl.pallas_call(
            functools.partial(_gpu_dkdv_kernel, cfg, bq, bk, lk_padded, g),
            grid=(b * hk, lkp // bk), in_specs=specs,
            out_specs=[pl.BlockSpec((None, None, bk, dk), krow), pl.BlockSpec((None, None, bk, dv), krow)],
            out_shape=[out_struct(k.shape, k.dtype, q), out_struct(v.shape, v.dtype, q)],
            compiler_params=params, interpret=interpret, name="seqjax_attention_dkdv",
        )(q, k, v, d_out, lse, delta, *seg_args)
        return dq[:, :, :, :lq, :dk_true], dk_[:, :, :cfg.lk, :dk_true], dv_[:, :, :cfg.lk, :dv_true]

    return bwd


# --- custom_vjp over both platforms ----------------------------------------------


def _forward(cfg, q, k, v, segs):
    def build(kind, interpret):
        return (_gpu_forward if kind == "gpu" else attention_tpu.forward)(cfg, interpret)

    return on_platform(build, q, k, v, *(segs or ()), interpret=cfg.interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def flash_attention(cfg: AttnConfig, q, k, v, segs):
    """Flash attention (the Pallas kernels) on the op's internal layout.

    Args:
      cfg: the static :class:`AttnConfig`.
      q: ``(b, hk, g, lq, dk)``.
      k: ``(b, hk, lk, dk)``.
      v: ``(b, hk, lk, dv)``.
      segs: ``(q_ids (b, lq), kv_ids (b, lk))`` int32, or None.

    Returns:
      ``(b, hk, g, lq, dv)`` in ``q``'s dtype.
    """
    return _forward(cfg, q, k, v, segs)[0]


def _flash_fwd(cfg, q, k, v, segs):
    out, lse = _forward(cfg, q, k, v, segs)
    return out, (q, k, v, segs, out, lse)


def _backward(cfg, q, k, v, segs, out, lse, d_out):
    """``(dq, dk, dv)`` from the rows' output and logsumexp (the final ones, in ring attention)."""
    # FlashAttention-2's delta_i = rowsum(dO_i * O_i) = Σ_j P_ij dP_ij.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    d_out = d_out.astype(q.dtype)

    def build(kind, interpret):
        return (_gpu_backward if kind == "gpu" else attention_tpu.backward)(cfg, interpret)

    return on_platform(build, q, k, v, d_out, lse, delta, *(segs or ()), interpret=cfg.interpret)


def _flash_bwd(cfg, res, d_out):
    q, k, v, segs, out, lse = res
    return (*_backward(cfg, q, k, v, segs, out, lse, d_out), None)


flash_attention.defvjp(_flash_fwd, _flash_bwd)


def pallas_attention(q5, k4, v4, bias5, seg_q, seg_k, scale, left, right, block_q, block_k,
                     interpret=None):
    """The registered ``impl="pallas"``: the op's arguments to :func:`flash_attention`.

    Args:
      q5, k4, v4, bias5, seg_q, seg_k, scale, left, right, block_q, block_k:
        as :mod:`seqjax.ops.attention` passes them (``bias5`` must be None).
      interpret: None, or ``"gpu"``/``"tpu"`` (tests: that kernel interpreted).

    Returns:
      ``(b, hk, g, lq, dv)``.
    """
    if bias5 is not None:
        raise ValueError("attention: impl='pallas' takes no bias=; use impl='blockwise' (or 'auto')")
    dtype = jnp.result_type(q5.dtype, k4.dtype, v4.dtype)
    if jnp.dtype(dtype).itemsize > 4:
        raise ValueError(f"attention: impl='pallas' computes in float32 at most; got {dtype} inputs")
    q5, k4, v4 = q5.astype(dtype), k4.astype(dtype), v4.astype(dtype)
    segs = None if seg_q is None else (seg_q.astype(jnp.int32), seg_k.astype(jnp.int32))
    cfg = AttnConfig(float(scale), left, right, q5.shape[3], k4.shape[2], block_q, block_k, segs is not None,
                     interpret)
    return flash_attention(cfg, *vary_alike(q5, k4, v4, segs))  # before the custom_vjp: see vary_alike


dispatch.register("attention", "pallas")(pallas_attention)


# --- ring attention's per-block kernels --------------------------------------------


def _ring_cfg(q5, k4, seg_q, causal, scale, block_q, block_k):
    left, right = resolve_window(None, causal)
    return AttnConfig(float(scale), left, right, q5.shape[3], k4.shape[2], block_q, block_k, seg_q is not None,
                      None)


def _ring_segs(seg_q, seg_k):
    return None if seg_q is None else (seg_q.astype(jnp.int32), seg_k.astype(jnp.int32))


def ring_block_forward(q5, k4, v4, seg_q, seg_k, *, causal, scale, block_q, block_k):
    """Ring attention's block forward by the Pallas kernel: ``(out, lse)`` (see ``BlockKernels``)."""
    cfg = _ring_cfg(q5, k4, seg_q, causal, scale, block_q, block_k)
    # One dtype for the kernel: the ring hands float32 queries with the inputs' K/V.
    dtype = jnp.result_type(q5.dtype, k4.dtype, v4.dtype)
    return _forward(cfg, q5.astype(dtype), k4.astype(dtype), v4.astype(dtype), _ring_segs(seg_q, seg_k))


def ring_block_backward(q5, k4, v4, seg_q, seg_k, out, lse, d_out, *, causal, scale, block_q, block_k):
    """Ring attention's block gradients by the Pallas dq and dk/dv kernels, from the final ``out``, ``lse``."""
    cfg = _ring_cfg(q5, k4, seg_q, causal, scale, block_q, block_k)
    dtype = jnp.result_type(q5.dtype, k4.dtype, v4.dtype)
    return _backward(cfg, q5.astype(dtype), k4.astype(dtype), v4.astype(dtype), _ring_segs(seg_q, seg_k), out,
                     lse, d_out)


dispatch.register(BLOCK_OP, "pallas")(BlockKernels(ring_block_forward, ring_block_backward))


# --- the auto rows ---------------------------------------------------------------


def _ours(sizes):
    return not sizes["bias"] and sizes["bits"] <= 32


# The keys of seqjax.ops.attention.call_sizes that the rows below read.
_KEYS = ("lq", "bias", "segments", "shared_segments", "bits", "half", "head_dim", "v_head_dim", "same_length",
         "causal", "left_window", "right_window")


def _given_all(serves):
    """A row condition that does not match when a caller passed only some keys (e.g. only ``scores``).

    Such a caller (a benchmark asking what auto would pick, say) then gets the
    op's XLA rows, as before these rows existed, instead of a KeyError.
    """
    def when(sizes):
        return all(key in sizes for key in _KEYS) and serves(sizes)

    return when


dispatch.add_rules(
    dispatch.Rule("attention", "gpu", "cudnn", _given_all(attention_vendor.cudnn_serves),
                  why="cuDNN's fused flash attention where it serves the call (H200, bf16, l=8192, d=128, causal: "
                      "2.45 ms forward+backward through auto = 1.01x cuDNN called directly, 6.5 ms for our kernel)"),
    dispatch.Rule("attention", "gpu", "pallas", _given_all(_ours),
                  why="our Triton flash kernel: segments, windows, GQA, lq != lk, float32 (no bias); H200, l=8192: "
                      "6.2x (float32) and 24x (bf16) faster than the XLA blockwise path with gradients"),
    dispatch.Rule("attention", "tpu", "splash", _given_all(attention_vendor.splash_serves),
                  why="splash attention, the maintained TPU kernel, where it serves the call"),
    dispatch.Rule("attention", "tpu", "pallas", _given_all(_ours),
                  why="our Mosaic TPU flash kernel where splash cannot (no bias); not yet timed on a TPU"),
    dispatch.Rule(BLOCK_OP, "gpu", "pallas", lambda s: s["bits"] <= 32,
                  why="ring attention's blocks by our Triton flash kernels (cuDNN gives no logsumexp to merge "
                      "with); the kernel alone: 6.2-24x the XLA blockwise path with gradients on an H200"),
    dispatch.Rule(BLOCK_OP, "tpu", "pallas", lambda s: s["bits"] <= 32,
                  why="ring attention's blocks by our Mosaic TPU flash kernels; not yet timed on a TPU"),
)
