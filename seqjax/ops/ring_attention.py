"""Ring attention: softmax attention with the sequence split across devices.

Called *inside* ``jax.shard_map`` on the local shards, with the length axis of
``q``, ``k`` and ``v`` split over the mesh axis ``axis_name`` (``P`` devices).
Each device keeps its queries and passes its key/value block around the ring
with ``lax.ppermute`` (device ``i`` sends to ``i + 1``): at step ``s`` device
``i`` holds the K/V block of device ``i - s (mod P)``, computes that block's
partial softmax result and folds it into its running
:class:`~seqjax.ops.online_softmax.SoftmaxState` with the one
:func:`~seqjax.ops.online_softmax.merge`. After ``P`` steps (``P - 1`` sends)
every query has seen every key. Liu, Zaharia & Abbeel (2023), "Ring Attention
with Blockwise Transformers for Near-Infinite Context".

Each block is computed by a flash kernel (O(block) memory, no L×L scores),
chosen by ``impl`` through the dispatch registry's ``"ring_attention_block"``
entry (:class:`BlockKernels`): ``"blockwise"``, the XLA kernel of
:mod:`seqjax.ops.flash` (:func:`~seqjax.ops.flash.flash_forward` /
:func:`~seqjax.ops.flash.flash_backward`), or ``"pallas"``, the Pallas
attention kernels of :mod:`seqjax.kernels.attention` (registered there);
``"auto"`` takes the Pallas kernels on GPU and TPU and ``"blockwise"`` on CPU
and for float64. A block's ``(out, lse)`` is the same partial state as
``(m, l, acc) = (lse, 1, out)``.
The next K/V block is sent *before* the current one is computed, so the
transfer can overlap the compute.

Layouts (which positions a shard holds; ``l`` global length, ``n = l / P``):
  * ``"contiguous"``: device ``i`` holds positions ``[i n, (i + 1) n)``. With a
    causal mask device ``i`` computes ``i + 1`` blocks and skips the rest
    (``lax.switch``, no wasted matmul), so the last device does ``P`` times the
    work of the first.
  * ``"zigzag"``: the sequence is cut into ``2P`` chunks of ``n / 2`` and device
    ``i`` holds chunks ``i`` and ``2P - 1 - i`` (reorder a host-side sequence
    with :func:`zigzag_permute`, undo with :func:`zigzag_unpermute`). With a
    causal mask every step after the first is exactly half a block (all
    queries against the first K/V chunk when the K/V come from an earlier
    device, the second query chunk against all K/V otherwise), so all devices
    do the same work: ``2P + 1`` chunk-pair tiles each (see
    :func:`block_schedule`, :func:`block_tiles`). Position-dependent layers
    (positional embeddings, scans, convolutions) must then use the permuted
    positions; attention itself only needs this module to know the layout.

Backward: a ``jax.custom_vjp`` that saves only the output and the logsumexp
(plus the inputs) and runs a second ring pass: each block's scores are
recomputed against the *final* logsumexp, so its ``dQ`` adds up locally while
its ``dK, dV`` (float32 accumulators) travel around the ring with the K/V block
and, after one last send, arrive back at their owner.

Communication per device: forward ``P - 1`` sends of a K/V block,
``b · n · hk · (dk + dv)`` elements; backward ``P - 1`` K/V sends plus ``P``
sends of the dK/dV accumulators of the same size, about twice the forward.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seqjax.ops import dispatch
from seqjax.ops import online_softmax as osm
from seqjax.ops.collectives import match_vma
from seqjax.ops.common import accum_dtype, pad_axis
from seqjax.ops.flash import (
    DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, FlashConfig, check_qkv, check_segments, flash_backward, flash_forward,
    resolve_window)

LAYOUTS = ("contiguous", "zigzag")

# Kinds of block (local queries against one arriving K/V block).
SKIP = 0  # fully masked: nothing computed
FULL = 1  # every pair visible
DIAG = 2  # the device's own block: causal within it
LOWER = 3  # zigzag, K/V from an earlier device: all queries vs the first K/V chunk
UPPER = 4  # zigzag, K/V from a later device: the second query chunk vs all K/V
KINDS = {SKIP: "skip", FULL: "full", DIAG: "diag", LOWER: "lower", UPPER: "upper"}
# Chunk-pair tiles (chunks of n / 2 positions) with some visible pair, per kind.
_TILES = {SKIP: 0, FULL: 4, DIAG: 3, LOWER: 2, UPPER: 2}


@dispatch.register_sequence_parallel("attention")
def ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    axis_name: str,
    causal: bool = False,
    segment_ids=None,
    scale: float | jax.Array | None = None,
    layout: str = "contiguous",
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
    impl: str = "auto",
) -> jax.Array:
    """Softmax attention over a sequence split across the devices of ``axis_name``.

    Must be called inside ``jax.shard_map`` (or another context that binds
    ``axis_name``) with the length axis of ``q``, ``k``, ``v`` split over
    ``axis_name`` in ``layout`` order; every other axis is local.

    Args:
      q: local queries ``(b, n, h, dk)``.
      k: local keys ``(b, n_k, hk, dk)``; ``hk`` divides ``h`` (grouped queries).
      v: local values ``(b, n_k, hk, dv)``.
      axis_name: the mesh axis that splits the length.
      causal: query position ``p`` sees keys at positions ``<= p`` (global
        positions; requires ``n_k == n``).
      segment_ids: local ``(b, n)`` ids (with ``n_k == n``) or a tuple
        ``(q_ids (b, n), kv_ids (b, n_k))``; a query sees only keys with its
        own id. The K/V ids travel around the ring with the K/V block.
      scale: score scale, ``dk ** -0.5`` by default; a traced scale is folded
        into ``q`` (and is then differentiable).
      layout: ``"contiguous"`` or ``"zigzag"`` (see the module docstring);
        ``"zigzag"`` with ``causal`` needs an even local length.
      block_q: query block of the per-block flash kernel.
      block_k: key block of the per-block flash kernel.
      impl: the per-block kernel: ``"auto"``, ``"blockwise"`` (XLA) or
        ``"pallas"`` (the Pallas attention kernels; float32 at most).

    Returns:
      The local output ``(b, n, h, dv)`` in ``q``'s dtype (same layout as ``q``);
      0 for a query with no visible key.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"ring_attention: layout must be one of {LAYOUTS}, got {layout!r}")
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    b, n, h, hk, dk, n_k, dv = check_qkv(q, k, v)
    if causal and n_k != n:
        raise ValueError(
            f"ring_attention: causal needs equal local q and k lengths, got q {q.shape}, k {k.shape}")
    if causal and layout == "zigzag" and n % 2:
        raise ValueError(
            f"ring_attention: the zigzag layout needs an even local length, got {n} (q {q.shape})")
    seg_q, seg_k = check_segments(segment_ids, b, n, n_k)
    for name, val in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"ring_attention: {name} must be a positive int, got {val!r}")
    allowed = dispatch.implementations(BLOCK_OP)
    if impl not in allowed:
        raise ValueError(f"ring_attention: impl={impl!r} is not one of {', '.join(map(repr, allowed))}")
    bits = 8 * jnp.dtype(accum_dtype(q.dtype, k.dtype, v.dtype)).itemsize
    impl = dispatch.resolve(BLOCK_OP, impl, bits=bits)
    if impl == "pallas" and bits > 32:
        raise ValueError(f"ring_attention: impl='pallas' computes in float32 at most; got {bits}-bit inputs")
    if scale is None:
        scale = dk**-0.5
    if not isinstance(scale, (int, float)):
        q = q * jnp.asarray(scale).astype(q.dtype)
        scale = 1.0
    g = h // hk
    q5 = q.reshape(b, n, hk, g, dk).transpose(0, 2, 3, 1, 4)
    k4, v4 = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    cfg = (axis_name, bool(causal), layout, float(scale), block_q, block_k, impl)
    out = _ring(cfg, q5, k4, v4, seg_q, seg_k)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, n, h, dv).astype(q.dtype)


# ----------------------------------------------------------------------------
# Layout helpers (host side and schedule).


def _zigzag_order(length: int, num_devices: int) -> np.ndarray:
    """Global positions in zigzag order: chunks 0, 2P-1, 1, 2P-2, ..., P-1, P."""
    if length % (2 * num_devices):
        raise ValueError(
            f"zigzag layout: the length {length} must be a multiple of 2 * P = {2 * num_devices}")
    c = length // (2 * num_devices)
    chunks = []
    for i in range(num_devices):
        chunks += [i, 2 * num_devices - 1 - i]
    return np.concatenate([np.arange(j * c, (j + 1) * c) for j in chunks])


def zigzag_permute(x, num_devices: int, axis: int = 1):
    """Reorders a full sequence so that contiguous shards hold zigzag chunks.

    After this, splitting ``axis`` into ``num_devices`` equal shards gives
    device ``i`` the chunks ``i`` and ``2P - 1 - i`` of the ``2P`` chunks of the
    original sequence.

    Args:
      x: an array with the sequence on ``axis`` (length a multiple of ``2P``).
      num_devices: ``P``, the size of the mesh axis that splits the length.
      axis: the length axis.

    Returns:
      ``x`` reordered along ``axis`` (a jax array).
    """
    return jnp.take(x, _zigzag_order(x.shape[axis], num_devices), axis=axis)


def zigzag_unpermute(x, num_devices: int, axis: int = 1):
    """Inverse of :func:`zigzag_permute`: back to natural sequence order.

    Args:
      x: an array in zigzag order on ``axis``.
      num_devices: ``P``.
      axis: the length axis.

    Returns:
      ``x`` in natural order along ``axis`` (a jax array).
    """
    return jnp.take(x, np.argsort(_zigzag_order(x.shape[axis], num_devices)), axis=axis)


def block_schedule(num_devices: int, layout: str = "contiguous", causal: bool = True) -> np.ndarray:
    """The kind of block each device computes at each ring step.

    At step ``s`` device ``i`` holds the K/V block of device ``j = i - s mod P``.
    Without a causal mask every block is ``FULL``. With one, step 0 is the
    device's own block (``DIAG``: causal inside, which in zigzag order is the
    plain causal mask on the local indices, since chunk ``i`` precedes chunk
    ``2P-1-i``); afterwards, contiguous: ``FULL`` if ``j < i`` else ``SKIP``;
    zigzag: ``LOWER`` if ``j < i`` (all queries see the K/V chunk ``j`` and none
    sees chunk ``2P-1-j``) else ``UPPER`` (only the query chunk ``2P-1-i`` sees
    anything, and it sees both K/V chunks).

    Args:
      num_devices: ``P``.
      layout: ``"contiguous"`` or ``"zigzag"``.
      causal: whether the attention is causal.

    Returns:
      ``(P, P)`` int array ``[step, device]`` of kinds (module constants
      ``SKIP, FULL, DIAG, LOWER, UPPER``); used as is by the ring.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"block_schedule: layout must be one of {LAYOUTS}, got {layout!r}")
    table = np.full((num_devices, num_devices), FULL, np.int32)
    if not causal:
        return table
    for s in range(num_devices):
        for i in range(num_devices):
            j = (i - s) % num_devices
            if j == i:
                table[s, i] = DIAG
            elif layout == "contiguous":
                table[s, i] = FULL if j < i else SKIP
            else:
                table[s, i] = LOWER if j < i else UPPER
    return table


def block_tiles(num_devices: int, layout: str = "contiguous", causal: bool = True) -> np.ndarray:
    """Work per device: chunk-pair tiles (``n/2 × n/2``) with a visible pair.

    Args:
      num_devices: ``P``.
      layout: ``"contiguous"`` or ``"zigzag"``.
      causal: whether the attention is causal.

    Returns:
      ``(P,)`` counts; for causal zigzag every entry is ``2P + 1``, for causal
      contiguous device ``i`` does ``4i + 3``.
    """
    table = block_schedule(num_devices, layout, causal)
    return np.vectorize(_TILES.get)(table).sum(axis=0)


# ----------------------------------------------------------------------------
# One block: a flash kernel, through the registry.

# The registry entry of the per-block kernels (not a public op: ring attention
# resolves it, the attention op's sequence_axis= passes its impl through).
BLOCK_OP = "ring_attention_block"


class BlockKernels(NamedTuple):
    """One implementation of ring attention's per-block work (registered as ``BLOCK_OP``).

    Both take the op's internal layout, ``q5 (b, hk, g, lq, dk)``,
    ``k4, v4 (b, hk, lk, d)``, segment ids ``seg_q (b, lq)``, ``seg_k (b, lk)``
    or None, and keywords ``causal`` (causal inside the block, ``lq == lk``),
    ``scale``, ``block_q``, ``block_k``.

    Attributes:
      forward: ``forward(q5, k4, v4, seg_q, seg_k, **kw) -> (out, lse)``: the
        block's normalised output ``(b, hk, g, lq, dv)`` and logsumexp
        ``(b, hk, g, lq)`` (``-inf`` for a row that sees no key of the block).
      backward: ``backward(q5, k4, v4, seg_q, seg_k, out, lse, d_out, **kw)
        -> (dq, dk, dv)``: the block's gradients given the *final* output and
        logsumexp of the rows and the output cotangent.
    """

    forward: Callable
    backward: Callable


def _block_cfg(scale, causal, lq, lk, block_q, block_k):
    left, right = resolve_window(None, causal)
    return FlashConfig(scale, left, right, lq, lk, min(block_q, lq), min(block_k, lk))


def _pad_segs(seg_q, seg_k, bq, bk):
    if seg_q is None:
        return None
    return pad_axis(seg_q, bq, axis=1), pad_axis(seg_k, bk, axis=1)


def _xla_forward(q5, k4, v4, seg_q, seg_k, *, causal, scale, block_q, block_k):
    lq, lk = q5.shape[3], k4.shape[2]
    cfg = _block_cfg(scale, causal, lq, lk, block_q, block_k)
    bq, bk = cfg[5], cfg[6]
    out, lse = flash_forward(
        cfg, pad_axis(q5, bq, 3), pad_axis(k4, bk, 2), pad_axis(v4, bk, 2), None,
        _pad_segs(seg_q, seg_k, bq, bk))
    return out[:, :, :, :lq], lse[:, :, :, :lq]


def _xla_backward(q5, k4, v4, seg_q, seg_k, out, lse, d_out, *, causal, scale, block_q, block_k):
    lq, lk = q5.shape[3], k4.shape[2]
    cfg = _block_cfg(scale, causal, lq, lk, block_q, block_k)
    bq, bk = cfg[5], cfg[6]
    res = (pad_axis(q5, bq, 3), pad_axis(k4, bk, 2), pad_axis(v4, bk, 2), None,
           _pad_segs(seg_q, seg_k, bq, bk), pad_axis(out, bq, 3), pad_axis(lse, bq, 3))
    dq, dk, dv, _, _ = flash_backward(cfg, res, pad_axis(d_out, bq, 3))
    return dq[:, :, :, :lq], dk[:, :, :lk], dv[:, :, :lk]


dispatch.register(BLOCK_OP, "blockwise")(BlockKernels(_xla_forward, _xla_backward))


def _block_state(q5, k4, v4, seg_q, seg_k, causal, scale, block_q, block_k, impl):
    """The partial softmax state of queries q5 against one K/V block."""
    out, lse = dispatch.implementation(BLOCK_OP, impl).forward(
        q5, k4, v4, seg_q, seg_k, causal=causal, scale=scale, block_q=block_q, block_k=block_k)
    # A normalised output with its logsumexp is the state (lse, 1, out); rows
    # that saw no key have lse = -inf and must get l = 0 (the empty state).
    l = jnp.where(jnp.isfinite(lse), jnp.ones_like(lse), jnp.zeros_like(lse))
    return osm.SoftmaxState(lse, l, out.astype(lse.dtype))


def _block_grads(q5, k4, v4, seg_q, seg_k, out, lse, d_out, causal, scale, block_q, block_k, impl):
    """(dq, dk, dv) of one block, given the final out and logsumexp of the rows."""
    return dispatch.implementation(BLOCK_OP, impl).backward(
        q5, k4, v4, seg_q, seg_k, out, lse, d_out, causal=causal, scale=scale, block_q=block_q,
        block_k=block_k)


def _half(x, axis, which):
    c = x.shape[axis] // 2
    return lax.slice_in_dim(x, 0, c, axis=axis) if which == 0 else lax.slice_in_dim(
        x, c, x.shape[axis], axis=axis)


def _seg_half(seg, which):
    return None if seg is None else _half(seg, 1, which)


def _fwd_block(kind, cfg, q5, k4, v4, seg_q, seg_k):
    """The block's state for all local queries (empty where nothing is seen)."""
    _, _, _, scale, block_q, block_k, impl = cfg
    b, hk, g, n, _ = q5.shape
    state = functools.partial(_block_state, scale=scale, block_q=block_q, block_k=block_k, impl=impl)
    dtype = accum_dtype(q5.dtype, k4.dtype, v4.dtype)
    if kind == SKIP:
        # Branches of lax.switch must agree in type, device-variance included.
        return match_vma(osm.empty((b, hk, g, n), v4.shape[-1], dtype), q5, k4, v4)
    if kind in (FULL, DIAG):
        return state(q5, k4, v4, seg_q, seg_k, causal=kind == DIAG)
    if kind == LOWER:
        return state(q5, _half(k4, 2, 0), _half(v4, 2, 0), seg_q, _seg_half(seg_k, 0), causal=False)
    # UPPER: the first query chunk sees nothing.
    upper = state(_half(q5, 3, 1), k4, v4, _seg_half(seg_q, 1), seg_k, causal=False)
    lower = match_vma(osm.empty((b, hk, g, n - upper.m.shape[3]), v4.shape[-1], dtype), q5, k4, v4)
    return osm.SoftmaxState(*(jnp.concatenate([x, y], axis=3) for x, y in zip(lower, upper)))


def _bwd_block(kind, cfg, q5, k4, v4, seg_q, seg_k, out, lse, d_out):
    """(dq, dk, dv) of one block at full local sizes (zeros where nothing is seen)."""
    _, _, _, scale, block_q, block_k, impl = cfg
    grads = functools.partial(_block_grads, scale=scale, block_q=block_q, block_k=block_k, impl=impl)
    if kind == SKIP:
        return jnp.zeros_like(q5), jnp.zeros_like(k4), jnp.zeros_like(v4)
    if kind in (FULL, DIAG):
        return grads(q5, k4, v4, seg_q, seg_k, out, lse, d_out, causal=kind == DIAG)
    if kind == LOWER:
        dq, dk, dv = grads(q5, _half(k4, 2, 0), _half(v4, 2, 0), seg_q, _seg_half(seg_k, 0),
                           out, lse, d_out, causal=False)
        return dq, _pad_to(dk, k4.shape[2], 2, front=False), _pad_to(dv, v4.shape[2], 2, front=False)
    dq, dk, dv = grads(_half(q5, 3, 1), k4, v4, _seg_half(seg_q, 1), seg_k, _half(out, 3, 1),
                       _half(lse, 3, 1), _half(d_out, 3, 1), causal=False)
    return _pad_to(dq, q5.shape[3], 3, front=True), dk, dv


def _pad_to(x, size, axis, front):
    widths = [(0, 0)] * x.ndim
    extra = size - x.shape[axis]
    widths[axis] = (extra, 0) if front else (0, extra)
    return jnp.pad(x, widths)


# ----------------------------------------------------------------------------
# The ring.


def _ring_loop(step, carry, kv, axis_name, num_devices):
    """Runs ``carry = step(s, carry, kv_s)`` for s = 0..P-1 with P - 1 K/V sends.

    ``kv_s`` is the K/V pytree of device ``i - s``. The send for step ``s + 1``
    is issued before step ``s`` computes (nothing orders them), so the transfer
    can overlap the compute; the last step runs outside the scan so that no
    block is sent that nobody uses.
    """
    perm = [(j, (j + 1) % num_devices) for j in range(num_devices)]

    def body(c, s):
        carry, kv = c
        kv_next = jax.tree.map(lambda x: lax.ppermute(x, axis_name, perm), kv)
        return (step(s, carry, kv), kv_next), None

    (carry, kv), _ = lax.scan(body, (carry, kv), jnp.arange(num_devices - 1))
    return step(num_devices - 1, carry, kv)


def _switch_table(cfg, num_devices):
    """(branch kinds, (P, P) table of branch indices) for this layout and mask."""
    table = block_schedule(num_devices, cfg[2], cfg[1])
    kinds = sorted(int(x) for x in np.unique(table))
    return kinds, jnp.asarray(np.searchsorted(kinds, table).astype(np.int32))


def _ring_forward(cfg, q5, k4, v4, seg_q, seg_k):
    axis_name = cfg[0]
    num_devices = lax.axis_size(axis_name)
    idx = lax.axis_index(axis_name)
    dtype = accum_dtype(q5.dtype, k4.dtype, v4.dtype)
    b, hk, g, n, _ = q5.shape
    kinds, table = _switch_table(cfg, num_devices)
    branches = [functools.partial(_fwd_block, kind, cfg) for kind in kinds]
    # Per-block outputs in the accumulation dtype, so merging P normalised
    # partial outputs does not round to a low-precision input dtype.
    qf = q5.astype(dtype)

    def step(s, state, kv):
        kj, vj, seg_kj = kv
        block = lax.switch(table[s, idx], branches, qf, kj, vj, seg_q, seg_kj)
        return osm.merge(state, block)

    init = match_vma(osm.empty((b, hk, g, n), v4.shape[-1], dtype), q5, k4, v4)
    state = _ring_loop(step, init, (k4, v4, seg_k), axis_name, num_devices)
    return osm.finalize(state).astype(q5.dtype), osm.logsumexp(state)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg, q5, k4, v4, seg_q, seg_k):
    return _ring_forward(cfg, q5, k4, v4, seg_q, seg_k)[0]


def _ring_fwd(cfg, q5, k4, v4, seg_q, seg_k):
    out, lse = _ring_forward(cfg, q5, k4, v4, seg_q, seg_k)
    return out, (q5, k4, v4, seg_q, seg_k, out, lse)


def _ring_bwd(cfg, res, d_out):
    q5, k4, v4, seg_q, seg_k, out, lse = res
    axis_name = cfg[0]
    num_devices = lax.axis_size(axis_name)
    idx = lax.axis_index(axis_name)
    dtype = accum_dtype(q5.dtype, k4.dtype, v4.dtype)
    kinds, table = _switch_table(cfg, num_devices)
    branches = [functools.partial(_bwd_block, kind, cfg) for kind in kinds]
    perm = [(j, (j + 1) % num_devices) for j in range(num_devices)]
    # The flash backward returns gradients in its inputs' dtype: feeding it
    # accumulation-dtype q/K/V keeps the sums over P blocks at full precision.
    qf, outf, dof = q5.astype(dtype), out.astype(dtype), d_out.astype(dtype)

    def step(s, carry, kv):
        dq, dk, dv = carry
        kj, vj, seg_kj = kv
        gq, gk, gv = lax.switch(table[s, idx], branches, qf, kj.astype(dtype), vj.astype(dtype),
                                seg_q, seg_kj, outf, lse, dof)
        # dK/dV follow their block around the ring; after the last step one
        # more send brings them home to the block's owner.
        dk, dv = (lax.ppermute(x, axis_name, perm) for x in (dk + gk, dv + gv))
        return dq + gq, dk, dv

    zeros = match_vma((jnp.zeros(q5.shape, dtype), jnp.zeros(k4.shape, dtype),
                       jnp.zeros(v4.shape, dtype)), q5, k4, v4, d_out)
    dq, dk, dv = _ring_loop(step, zeros, (k4, v4, seg_k), axis_name, num_devices)
    return dq.astype(q5.dtype), dk.astype(k4.dtype), dv.astype(v4.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)
