"""Pallas kernel for Mamba-2's SSD (chunked), built on the chunked linear-attention kernel.

SSD is causal linear attention with a scalar decay per head and step
(:mod:`seqjax.ops.ssd`): with ``q = C_t``, ``k = B_t``, ``v = dt_t x_t`` and
log decay ``dt_t A`` the state ``Sᵀ = H`` (``p x n``) follows
``H_t = exp(dt_t A) H_{t-1} + (dt_t x_t) B_tᵀ`` and ``y_t = H_t C_t``. So this
module runs :func:`seqjax.kernels.linear_attention.attend`, whose
transposed ``(dv, dk) = (p, n)`` state is exactly SSD's ``H``, in its two
passes:

  1. chunk states (float32) and state passing across chunks: per (batch, head)
     the state entering every chunk and the final state;
  2. per chunk in parallel: ``y = (C ⊙ exp(from_start)) Hᵀ + (C Bᵀ ⊙ L) (dt x)``
     with ``L[t, s] = exp(Σ_{s<r≤t} dt_r A)`` the masked segment sum
     (:func:`seqjax.ops.ssd._segsum`, as a 0/1 lower-triangular matrix times
     the strictly-masked decays, exact on both platforms; never a difference
     of cumulative sums).

Groups cost no copies: ``B`` and ``C`` stay ``(b, g, L, n)`` and the
BlockSpec index maps send head ``i`` to group ``i // (h / g)``. Segment starts
get log decay ``-1e30`` (the state and every mask entry across them vanish);
the initial state belongs to the first segment. ``D`` is the caller's (the
op adds ``D x``), as for every registered SSD implementation.

Blocks (see :mod:`seqjax.kernels.linear_attention`): chunk ``C = 64``
(mamba's Triton SSD uses 256; 64 keeps the ``C x C`` scores and the
``64^3`` segment-sum product small; the price is 4x more chunk states,
``(p, n)`` float32 each, written once and read once by the chunk pass).
GPU (Triton): states pass grid ``(b, h, p / 64)`` with a ``fori_loop`` over
chunks and a ``64 x n`` float32 state in registers; the chunk pass grid
``(b, h, chunks)``, blocks ``(C, n)``, ``(C, p)``, ``(p, n)``. TPU (Mosaic
TPU): both passes on the grid ``(b, h, chunks)``, the states pass
``"arbitrary"`` along the chunks with the ``(p, n)`` state in VMEM; at
``p = 64, n = 128`` every block is whole in its last two dims or (8, 128)-tiled.

Gradients: the backward kernels of :mod:`seqjax.kernels.chunked` (the
states pass recomputed, a reverse pass for the state gradients, a chunk pass
for ``dC``, ``dB`` (per head, summed over the group), ``d(dt x)`` and the
decay's gradient as sums of genuine terms: ``dA`` stays at 2e-7 relative at
``Σ dt·A ≈ -1e3``), chained to ``x``, ``dt``, ``A`` by autodiff of the few
elementwise lines around the kernels. Float32 inputs run the matmuls at
``precision=HIGHEST`` on TPU, as the XLA path does, and as split TF32
products on GPU (:mod:`seqjax.kernels.chunked`). bf16 ``x, B, C`` (the op's
front door hands them through: :func:`seqjax.ops.common.operand_dtype`) run
bf16 products with float32 accumulation; ``dt x`` and the states are rounded
to bf16 as matmul operands, the state carried across chunks stays float32.
"""

import jax.numpy as jnp

from seqjax.kernels.linear_attention import CHUNK, attend
from seqjax.ops import dispatch
from seqjax.ops.common import segment_runs


def _scan(x, dt, A, B, C, h0, r, chunk, interpret):
    """Grouped layout: x ``(b, l, g, e, p)``, dt ``(b, l, g, e)``, A ``(g, e)``, B/C ``(b, l, g, n)``."""
    batch, length, groups, e, p = x.shape
    heads, n = groups * e, B.shape[-1]
    v = (x * dt[..., None]).astype(x.dtype).reshape(batch, length, heads, p)
    g = (dt * A).astype(jnp.float32).reshape(batch, length, heads, 1)
    # SSD's H (p x n) is the kernel's transposed state; attend takes (n, p).
    s0 = jnp.zeros((batch, heads, n, p), jnp.float32) if h0 is None else jnp.swapaxes(h0, 2, 3)
    o, final = attend(C, B, v, g, s0, r, chunk=chunk, heads_per_group=e, interpret=interpret)
    return o.reshape(batch, length, groups, e, p), jnp.swapaxes(final, 2, 3)


def ssd_pallas(x, dt, A, B, C, initial_state=None, segment_ids=None, *, chunk=CHUNK, interpret=None):
    """SSD without the ``D`` skip by the Pallas kernels (:func:`seqjax.ops.ssd.ssd`'s layout).

    Args:
      x: ``(b, l, h, p)``; any float dtype (bf16 runs bf16 matmuls).
      dt: ``(b, l, h)`` positive steps.
      A: ``(h,)`` decay rates.
      B: ``(b, l, g, n)``; head ``i`` uses group ``i // (h // g)``.
      C: ``(b, l, g, n)``.
      initial_state: ``(b, h, p, n)`` or None.
      segment_ids: ``(b, l)`` integers or None.
      chunk: block length, a power of two >= 16.
      interpret: None (the platform's kernel; interpreted on CPU), or ``"gpu"``
        / ``"tpu"`` to interpret that platform's kernel.

    Returns:
      ``(y, final_state)``: ``(b, l, h, p)`` in ``x``'s dtype and ``(b, h, p, n)`` float32.
    """
    batch, length, heads, p = x.shape
    groups = B.shape[2]
    e = heads // groups
    r = None if segment_ids is None else segment_runs(jnp.asarray(segment_ids))
    y, final = _scan(x.reshape(batch, length, groups, e, p), dt.reshape(batch, length, groups, e),
                     A.reshape(groups, e), B, C, initial_state, r, chunk, interpret)
    return y.reshape(batch, length, heads, p).astype(x.dtype), final


@dispatch.register("ssd", "pallas")
def _pallas(x, dt, A, B, C, h0, r, segment_ids, chunk_size):
    del chunk_size  # the kernel's block is CHUNK
    y, final = _scan(x, dt, A, B, C, h0, None if segment_ids is None else r, CHUNK, None)
    # The op hands bf16 x, B, C through (ops.common.operand_dtype); y and the
    # state leave in the accumulation dtype, as the other implementations'.
    return y.astype(dt.dtype), final.astype(dt.dtype)


# No GPU row: on an H200 the Triton kernels are ~50x slower than the XLA
# chunked path (benchmarks/results/h200-kernels.json; the ops' table says so).
dispatch.add_rules(
    dispatch.Rule("ssd", "tpu", "pallas",
                  why="the chunked kernels (Mosaic TPU) pass the chunk states in VMEM; not yet timed on a TPU"),
)
