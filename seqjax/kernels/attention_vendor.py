"""The maintained attention kernels that ``auto`` prefers where they serve a call: cuDNN (GPU), splash (TPU).

* ``impl="cudnn"``: ``jax.nn.dot_product_attention(..., implementation="cudnn")``,
  cuDNN's fused flash attention (forward and backward). :func:`cudnn_serves`
  says when it computes the op's call.
* ``impl="splash"``: ``jax.experimental.pallas.ops.tpu.splash_attention``
  (Mosaic TPU, forward and backward, skips masked blocks from a block mask
  built when traced). :func:`splash_serves` says when.

Both take the op's internal layout (:mod:`seqjax.ops.attention`) and map it to
their own; both refuse in one line a call they do not serve. What neither
serves (segments with lq != lk or with separate query/key ids, cuDNN with
segments or windows to the right, odd lengths on TPU, ...) goes to our kernel,
``impl="pallas"`` (:mod:`seqjax.kernels.attention`, which holds the ``auto``
rows). Neither runs on CPU: cuDNN cannot even be lowered without a GPU
("cuDNN is not detected"), so the tests check :func:`fused_attention`'s
argument mapping with ``implementation="xla"`` and splash in interpret mode.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from seqjax.kernels import partitioning
from seqjax.ops import dispatch
from seqjax.ops.attention import call_sizes

# cuDNN's largest head dim on every architecture (256 from Hopper on).
CUDNN_MAX_HEAD_DIM = 128
# Splash's blocks (its defaults); the lengths must be multiples of them.
SPLASH_BLOCK = 128


def cudnn_serves(sizes) -> bool:
    """Whether cuDNN's fused attention computes the call (``sizes``: :func:`seqjax.ops.attention.call_sizes`).

    16-bit inputs of one dtype; no bias (kept on the XLA paths, which
    differentiate it), no segments (cuDNN has sequence lengths, not ids); equal
    head dims (``jax.nn.dot_product_attention`` asks for it), a multiple of 8
    and at most :data:`CUDNN_MAX_HEAD_DIM`; no right window, a left window
    only when causal (cuDNN's sliding window is causal); and, when causal,
    ``lq == lk``: cuDNN's causal mask aligns the sequences' starts, the op
    aligns their ends.
    """
    return bool(
        sizes["half"] and not sizes["bias"] and not sizes["segments"]
        and sizes["head_dim"] == sizes["v_head_dim"] and sizes["head_dim"] % 8 == 0
        and sizes["head_dim"] <= CUDNN_MAX_HEAD_DIM and not sizes["right_window"]
        and (sizes["causal"] or not sizes["left_window"])
        and (sizes["same_length"] or not sizes["causal"]))


def fused_attention(q5, k4, v4, scale, left, right, implementation):
    """The call as ``jax.nn.dot_product_attention`` (public layout, causal and left window mapped).

    Args:
      q5, k4, v4, scale, left, right: the op's internal arguments (a mask
        :func:`cudnn_serves` accepts).
      implementation: ``"cudnn"``, or ``"xla"`` (the same mapping on any
        platform: how the tests check it on CPU).

    Returns:
      ``(b, hk, g, lq, dv)``.
    """
    b, hk, g, lq, dk = q5.shape
    q = q5.transpose(0, 3, 1, 2, 4).reshape(b, lq, hk * g, dk)
    k, v = k4.transpose(0, 2, 1, 3), v4.transpose(0, 2, 1, 3)
    causal = right == 0
    window = (left, 0) if causal and left is not None else None
    out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, local_window_size=window,
                                       implementation=implementation)
    return out.reshape(b, lq, hk, g, -1).transpose(0, 2, 3, 1, 4)


@dispatch.register("attention", "cudnn")
def cudnn_attention(q5, k4, v4, bias5, seg_q, seg_k, scale, left, right, block_q, block_k):
    """The registered ``impl="cudnn"`` (GPU only): :func:`fused_attention` where cuDNN serves the call."""
    del block_q, block_k
    sizes = call_sizes(q5, k4, v4, bias5, seg_q, seg_k, left, right)
    if not cudnn_serves(sizes):
        raise ValueError(
            "attention: impl='cudnn' needs bf16/fp16 q, k, v without bias or segment_ids, equal head dims "
            f"<= {CUDNN_MAX_HEAD_DIM} (multiples of 8), causal (lq == lk, optional window) or unmasked; "
            f"got {sizes}; use impl='auto'")
    return fused_attention(q5, k4, v4, scale, left, right, "cudnn")


def splash_serves(sizes) -> bool:
    """Whether splash attention computes the call (``sizes``: :func:`seqjax.ops.attention.call_sizes`).

    No bias; float32 or 16-bit inputs; ``lq == lk``, a multiple of
    :data:`SPLASH_BLOCK`; segments only as one id array for queries and keys.
    Then every query sees at least itself, which splash needs (it leaves the
    softmax of an empty row undefined, where the op outputs 0).
    """
    return bool(
        not sizes["bias"] and sizes["bits"] <= 32 and sizes["same_length"]
        and sizes["lq"] % SPLASH_BLOCK == 0
        and (not sizes["segments"] or sizes["shared_segments"]))


def splash_call(q5, k4, v4, seg, scale, left, right, interpret=False):
    """The call through ``splash_attention.make_splash_mha`` (one kernel, vmapped over the batch).

    Under a ``jit`` that shards the batch over several devices, with the mesh
    set in context (``jax.set_mesh``, as ``seqjax.train`` runs its step),
    each device runs splash on its own rows (:func:`_split_rows`), as the
    kernels of this package do; without a mesh in context it runs the whole
    batch wherever XLA places it (the split's backward recomputes the
    forward, a cost not paid where nothing is sharded).

    Args:
      q5, k4, v4, scale, left, right: the op's internal arguments (a call
        :func:`splash_serves` accepts).
      seg: ``(b, l)`` segment ids (queries and keys alike) or None.
      interpret: run splash in Pallas interpret mode (the tests, on CPU).

    Returns:
      ``(b, hk, g, l, dv)``.
    """
    b, hk, g, length, dk = q5.shape
    shape = (length, length)
    if left is None and right is None:
        mask = splash.FullMask(shape)
    elif left is None and right == 0:
        mask = splash.CausalMask(shape)
    else:
        mask = splash.LocalMask(shape, window_size=(left, right), offset=0)
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([mask] * (hk * g)), head_shards=1, q_seq_shards=1,
        block_sizes=splash.BlockSizes.get_default(), interpret=interpret)
    # Splash has no scale; query head i uses key head i // g, as in the op.
    q = (q5 * scale).astype(q5.dtype).reshape(b, hk * g, length, dk)
    seg = None if seg is None else seg.astype(jnp.int32)
    if partitioning.may_split(mesh_in_context=True):
        masks, treedef = jax.tree.flatten(kernel)
        out = _split_rows(treedef, q, k4, v4, seg, tuple(masks))
    else:
        out = _splash_rows(kernel, q, k4, v4, seg)
    return out.reshape(b, hk, g, length, -1)


def _splash_rows(kernel, q, k, v, seg=None):
    """``kernel`` on every batch row (``q (b, H, l, dk)``, ``k, v (b, Hk, l, d)``, ``seg (b, l)`` or None)."""
    if seg is None:
        return jax.vmap(kernel)(q, k, v)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(s, s)))(q, k, v, seg)


def _launch(treedef, rows, masks, fn):
    """``fn(kernel, *rows)`` split over the batch rows; the kernel's mask arrays ride along unsplit.

    ``custom_partitioning`` refuses a launch that closes over arrays, and the
    splash kernel is a pytree of block-mask arrays: they enter as arguments
    and the kernel is rebuilt inside.
    """
    n = len(rows)
    return partitioning.batch_partitioned(
        lambda *xs: fn(jax.tree.unflatten(treedef, xs[n:]), *xs[:n]), rows + masks,
        batched=(True,) * n + (False,) * len(masks))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _split_rows(treedef, q, k, v, seg, masks):
    """Splash on ``(q, k, v, seg)`` with each device on its own batch rows under a batch-sharded ``jit``.

    Splash is a ``pallas_call`` the SPMD partitioner cannot split: without
    this every device would gather the global batch and run all of it
    (:mod:`seqjax.kernels.partitioning`). ``custom_partitioning`` has no
    autodiff rule, so the forward and the backward are split separately; the
    backward recomputes the forward on its rows (``jax.vjp`` of splash: one
    more forward launch), since splash's residuals are not arrays that lead
    with the batch.
    """
    return _launch(treedef, _present(q, k, v, seg), masks, _splash_rows)


def _present(*arrays):
    """The arrays that are not None (the launches take ``seg`` only when there is one)."""
    return tuple(x for x in arrays if x is not None)


def _split_rows_fwd(treedef, q, k, v, seg, masks):
    return _split_rows(treedef, q, k, v, seg, masks), (q, k, v, seg, masks)


def _split_rows_bwd(treedef, res, d_out):
    q, k, v, seg, masks = res

    def grads(kernel, q, k, v, d_out, *s):
        _, vjp = jax.vjp(lambda q, k, v: _splash_rows(kernel, q, k, v, *s), q, k, v)
        return list(vjp(d_out))

    dq, dk, dv = _launch(treedef, _present(q, k, v, d_out, seg), masks, grads)
    return dq, dk, dv, None, None


_split_rows.defvjp(_split_rows_fwd, _split_rows_bwd)


@dispatch.register("attention", "splash")
def splash_attention(q5, k4, v4, bias5, seg_q, seg_k, scale, left, right, block_q, block_k):
    """The registered ``impl="splash"`` (TPU only): :func:`splash_call` where splash serves the call."""
    del block_q, block_k
    sizes = call_sizes(q5, k4, v4, bias5, seg_q, seg_k, left, right)
    if not splash_serves(sizes):
        raise ValueError(
            f"attention: impl='splash' needs lq == lk, a multiple of {SPLASH_BLOCK}, no bias, float32/16-bit "
            f"inputs and segment_ids as one array; got {sizes}; use impl='auto'")
    return splash_call(q5, k4, v4, seg_q, scale, left, right)

