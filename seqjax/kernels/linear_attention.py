"""Pallas kernel for causal chunked linear attention (no decay, per-head decay, GLA).

The chunkwise form of :mod:`seqjax.ops.linear_attention` as
flash-linear-attention lays out GLA (kernels in :mod:`seqjax.kernels.chunked`):

  1. **states pass**: the chunk-boundary states ``h`` (one ``(dv, dk)`` float32
     matrix per chunk, the state *entering* it) and the final state;
  2. **chunk pass**: every chunk in parallel,
     ``o = (q ⊙ exp(from_start)) hᵀ + (q kᵀ ⊙ decay mask) v``.

Numerics (issue 13, item 4): no decay is a difference of running sums; every
exponent is a masked sum of genuine log decays (see
:mod:`seqjax.kernels.chunked`). The per-channel (GLA) mask is built one query
row at a time from a running sum: ``C`` steps of ``C x dk`` exponentials per
chunk, exact, and 4-8x the exponentials of FLA's sub-chunk factorisation.
Segments are folded into the decay: a segment start gets log decay ``-1e30``
(finite, so no ``inf - inf``), whose ``exp`` clears the state and every mask
entry across the boundary; the initial state belongs to the first segment.

Blocks: chunk ``C = 64`` (flash-linear-attention's GLA chunk; the ``C x C``
scores and ``C x dk`` decays stay small next to the ``(dv, dk)`` state).
  * **GPU**, Triton backend: the Mosaic GPU backend of JAX 0.10/0.11 does not
    lower ``dot_general`` in a plain ``pallas_call`` body (it needs warpgroup
    ``wgmma`` with explicit shared-memory layouts), so these kernels pass
    ``pallas.triton.CompilerParams`` (deprecated from JAX 0.11, still there in
    0.11.2). States pass: grid ``(b, h, dv / 64)``, each program walking its
    chunks with ``fori_loop``, the ``64 x dk`` float32 state in registers,
    4 warps. Chunk pass: grid ``(b, h, chunks)``, blocks ``(C, dk)``,
    ``(C, dv)``, ``(dv, dk)``, 8 warps; the backward's on ``(b, h, chunks,
    dv / 64)``, one value tile per program (whole ``(dv, dk)`` float32 state
    and state-gradient blocks overflowed shared memory at dk = dv = 128). ``dk`` and ``dv`` are padded with
    zeros to powers of two >= 16 (Triton's tensor shapes; ``tl.dot``'s minimum).
  * **TPU**, Mosaic TPU: states pass on the grid ``(b, h, chunks)``, chunk axis
    last and ``"arbitrary"``, the state in a VMEM scratch that persists
    across it; chunk pass on the same grid, all ``"parallel"``. Blocks
    ``(C, dk)``, ``(C, dv)``, ``(C, 1 or dk)``, ``(dv, dk)``: ``C = 64`` is a
    multiple of 8 and the last dims are whole. VMEM per step at dk = dv = 128,
    float32, double-buffered: well under 1 MiB.

Matmuls take the inputs' dtype (bf16 runs bf16 tensor cores) and accumulate
in float32; float32 operands run at ``precision=HIGHEST`` on TPU and as split
TF32 tensor-core products on GPU (:func:`seqjax.kernels.chunked._split_dot`:
exact for the 0/1 decay sums, ~2^-21 relative per product otherwise; Triton's
IEEE dot is a CUDA-core loop), so the kernel is held to float32 tolerances. It
computes in float32 whatever the inputs (no float64 on the accelerators). The
op's front door casts inputs to the accumulation dtype before any
implementation, so through ``linear_attention(impl="pallas")`` the kernel sees
float32 even for bf16 inputs; :func:`linear_attention_pallas` keeps bf16.

Gradients (``custom_vjp``, the backward recomputes the chunk states): a
reverse states pass gives the gradient of the state leaving each chunk, a
chunk pass ``dq``, ``dk``, ``dv`` and the log-decay gradient. The latter is a
sum of genuine terms inside each chunk (the pairs whose decay spans the
position, the carried state's terms), not FLA's ``q·dq - k·dk`` suffix sum,
which cancels to ~5e-3 relative error in SSD's ``dA`` at ``Σ dt·A ≈ -1e3``;
0 at segment starts, whose decay meets a cleared state. For a per-channel
decay the chunk pass walks the query rows as the forward does (``C`` steps,
each with a ``C x C`` by ``C x dk`` product for the spanning pairs).

Reached as ``linear_attention(..., impl="pallas")`` for causal calls; the
bidirectional form (``causal=False``) is the op's own: einsums without
segments, two causal kernel runs with segments. ``chunk_size`` is ignored by
the kernel (its block is ``C``).
"""

import functools

import jax
import jax.numpy as jnp

from seqjax.kernels import chunked
from seqjax.kernels.common import vary_alike
from seqjax.ops import dispatch
from seqjax.ops.common import pad_axis

CHUNK = 64


def fold_segments(g, run, shape):
    """Log decays ``(b, l, h, e)`` float32 with ``RESET`` at segment starts; None if neither is given.

    Args:
      g: ``(b, l, h, e)`` log decays or None.
      run: ``(b, l)`` segment run indices or None.
      shape: ``(b, l, h)``.
    """
    if run is None:
        return None if g is None else g.astype(jnp.float32)
    base = jnp.zeros(shape + (1,), jnp.float32) if g is None else g.astype(jnp.float32)
    return jnp.where(_starts(run)[:, :, None, None], chunked.RESET, base)


def _starts(run):
    return jnp.concatenate([jnp.zeros_like(run[:, :1], bool), run[:, 1:] != run[:, :-1]], axis=1)


def _to_kernel(x, chunk):
    """``(b, l, h, d)`` -> ``(b, h, L, d)``, ``L`` padded to a multiple of ``chunk`` with zeros.

    Float64 becomes float32: the accelerators' kernels have no float64.
    """
    if x is None:
        return None
    if x.dtype == jnp.float64:
        x = x.astype(jnp.float32)
    return jnp.swapaxes(pad_axis(x, chunk, axis=1), 1, 2)


def _from_kernel(x, length):
    return jnp.swapaxes(x, 1, 2)[:, :length]


def _forward(q, k, v, g, s0, run, chunk, grp, interpret):
    batch, length, heads, _ = v.shape
    g = fold_segments(g, run, (batch, length, heads))
    o, final = chunked.forward(
        *(_to_kernel(x, chunk) for x in (q, k, v, g)), jnp.swapaxes(s0, 2, 3).astype(jnp.float32),
        chunk=chunk, heads_per_group=grp, interpret=interpret)
    return _from_kernel(o, length), jnp.swapaxes(final, 2, 3)


def _decay_grad(pairs, u, z, chunk, length, run):
    """``∂L/∂g`` ``(b, l, h, e)`` from the chunk pass's parts ``(b, h, L, e)``.

    ``pairs[r] + Σ_{t≥r} u_t + Σ_{s<r} z_s`` with both sums inside r's chunk:
    prefix sums of genuine terms, no differences. 0 at segment starts, whose
    decay meets a cleared state.
    """
    batch, heads, padded, e = pairs.shape
    split = lambda x: x.reshape(batch, heads, padded // chunk, chunk, e)  # noqa: E731
    u, z = split(u), split(z)
    from_r = jnp.flip(jnp.cumsum(jnp.flip(u, 3), axis=3), 3)
    before_r = jnp.concatenate([jnp.zeros_like(z[:, :, :, :1]), jnp.cumsum(z[:, :, :, :-1], axis=3)], axis=3)
    dg = _from_kernel((split(pairs) + from_r + before_r).reshape(batch, heads, padded, e), length)
    if run is not None:
        dg = jnp.where(_starts(run)[:, :, None, None], 0.0, dg)
    return dg


def _kernel_grads(q, k, v, g, s0, run, do, dfinal, chunk, grp, interpret):
    """Gradients by the backward kernels."""
    batch, length, heads, dk = v.shape[:3] + (q.shape[-1],)
    groups = q.shape[2]
    gk = fold_segments(g, run, (batch, length, heads))
    dq, dk_, dv, ds0, *dg_parts = chunked.backward(
        *(_to_kernel(x, chunk) for x in (q, k, v, gk)), jnp.swapaxes(s0, 2, 3).astype(jnp.float32),
        _to_kernel(do, chunk), jnp.swapaxes(dfinal, 2, 3),
        chunk=chunk, heads_per_group=grp, interpret=interpret)
    dq, dk_, dv = (_from_kernel(x, length) for x in (dq, dk_, dv))
    dg = None if g is None else _decay_grad(*dg_parts, chunk, length, run).astype(g.dtype)
    group_sum = lambda x: x.reshape(batch, length, groups, grp, dk).sum(3)  # noqa: E731
    return (group_sum(dq).astype(q.dtype), group_sum(dk_).astype(k.dtype), dv.astype(v.dtype), dg,
            jnp.swapaxes(ds0, 2, 3).astype(s0.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _attend(q, k, v, g, s0, run, chunk, grp, interpret):
    return _forward(q, k, v, g, s0, run, chunk, grp, interpret)


def _attend_fwd(q, k, v, g, s0, run, chunk, grp, interpret):
    return _forward(q, k, v, g, s0, run, chunk, grp, interpret), (q, k, v, g, s0, run)


def _attend_bwd(chunk, grp, interpret, saved, cotangents):
    q, k, v, g, s0, run = saved
    return (*_kernel_grads(q, k, v, g, s0, run, *cotangents, chunk, grp, interpret), None)


_attend.defvjp(_attend_fwd, _attend_bwd)


def attend(q, k, v, g, s0, run, *, chunk=CHUNK, heads_per_group=1, interpret=None):
    """Causal linear attention by the kernels, differentiable; q/k may be shared by groups of heads.

    Args:
      q: ``(b, l, G, dk)``.
      k: ``(b, l, G, dk)``.
      v: ``(b, l, H, dv)``; head ``i`` reads q/k group ``i // heads_per_group``.
      g: ``(b, l, H, 1 or dk)`` log decays ``<= 0``, or None (per-channel
        decays need ``G = H``).
      s0: ``(b, H, dk, dv)`` initial state.
      run: ``(b, l)`` segment run indices, or None.
      chunk: block length, a power of two >= 16.
      heads_per_group: ``H // G``.
      interpret: as :func:`seqjax.kernels.common.on_platform`.

    Returns:
      ``(o, final_state)``: ``(b, l, H, dv)`` and ``(b, H, dk, dv)``, float32.
    """
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two >= 16, got {chunk}")
    q, k, v, g, s0, run = vary_alike(q, k, v, g, s0, run)  # before the custom_vjp: see vary_alike
    return _attend(q, k, v, g, s0, run, chunk, heads_per_group, interpret)


def linear_attention_pallas(q, k, v, g=None, s0=None, run=None, *, chunk=CHUNK, interpret=None):
    """Causal linear attention by the Pallas kernels, in the op's internal layout.

    Args:
      q: ``(b, l, h, dk)``; any float dtype (bf16 runs bf16 matmuls).
      k: ``(b, l, h, dk)``.
      v: ``(b, l, h, dv)``.
      g: ``(b, l, h, 1 or dk)`` log decays ``<= 0``, or None.
      s0: ``(b, h, dk, dv)`` initial state, or None for zeros.
      run: ``(b, l)`` segment run indices (:func:`seqjax.ops.common.segment_runs`), or None.
      chunk: block length, a power of two >= 16 (tests use 16 for short sequences).
      interpret: None (the platform's kernel; interpreted on CPU), or ``"gpu"``
        / ``"tpu"`` to interpret that platform's kernel.

    Returns:
      ``(o, final_state)``: ``(b, l, h, dv)`` in the inputs' dtype and ``(b, h, dk, dv)`` float32.
    """
    if s0 is None:
        s0 = jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), jnp.float32)
    o, final = attend(q, k, v, g, s0, run, chunk=chunk, interpret=interpret)
    return o.astype(jnp.result_type(q.dtype, k.dtype, v.dtype)), final


@dispatch.register("linear_attention", "pallas")
def _pallas(q, k, v, g, s0, run, chunk_size):
    del chunk_size  # the kernel's block is CHUNK
    o, final = attend(q, k, v, g, s0, run)
    # The op hands bf16 q, k, v through (ops.common.operand_dtype); the output
    # and the state leave in the accumulation dtype (s0's), as the other implementations'.
    return o.astype(s0.dtype), final.astype(s0.dtype)


# No GPU row: on an H200 the kernel's backward at dk = dv = 128 float32 asks
# for 278,528 bytes of shared memory (232,448 available) and fails to launch
# (benchmarks/results/h200-kernels.log); the ops' table keeps the XLA path.
dispatch.add_rules(
    dispatch.Rule("linear_attention", "tpu", "pallas",
                  why="the chunked kernel (Mosaic TPU) carries the state in VMEM; not yet timed on a TPU"),
)
