"""Pallas kernel for the diagonal linear scan ``h_t = a_t h_{t-1} + b_t`` (``linear_scan(impl="pallas")``).

Layout (one scheme on both platforms; backend, chunk and channels a program differ):

* The state is flattened to ``(batch, length, D)`` with ``D`` the product of
  the trailing axes; ``D`` is padded to a multiple of a program's channels
  (``TILE = 128``, or 8 x 128 on TPU from 8 tiles on) and the length to a
  multiple of the chunk (``a = 1, b = 0``: the state passes the padding
  unchanged).
* Grid ``(batch, channel programs, length / chunk)``: the first two axes are
  parallel, the chunk axis is sequential and last. Each program walks its
  chunk one position at a time (``lax.fori_loop``, the state in registers)
  and hands the state to the next chunk through a scratch of one position
  (``(1, 128)`` GPU, ``(1, 8, 128)`` TPU; initialised from
  ``h0`` at chunk 0), so ``a`` and ``b`` are read once and ``h`` written once:
  the kernel moves the op's bytes floor, 3 x 4 bytes per element.
* GPU (Mosaic GPU, Hopper; :func:`seqjax.kernels.common.grid_call`): 128
  channels = one warpgroup, one channel per thread. ``plgpu.kernel`` puts
  (batch, tiles) on the CUDA grid and ``plgpu.emit_pipeline`` walks the
  chunks inside each CTA with two stages in flight, TMA copying the next
  chunk into shared memory while the current one is scanned. Chunk 32
  positions (16 for complex inputs, which carry twice the arrays): 3 arrays
  x 2 stages x 32 x 128 x 4 B = 96 KiB of the 227 KiB of shared memory.
* GPU: the sequence cut into segments that run as extra CTAs
  (:mod:`seqjax.kernels.sequence_split`; 16 at b = 2, l = 4096, d = 2048,
  where the uncut grid has 32 CTAs, and the kernel took 0.47 ms on an H200
  against XLA's 0.35 and a 0.069 ms bytes floor, 2026-12-04): a first pass
  keeps each segment's last state from a zero state (reads ``a, b``, writes
  one state per segment), XLA scans the segments for the state entering each
  (``h_s = P_{s-1} h_{s-1} + e_{s-1}``, ``P`` the product of the segment's
  ``a``), and the second pass is the kernel from it. 5/3 of the bytes floor
  for 16× the CTAs; **not yet timed on a device**.
* TPU (Mosaic TPU): the channels reshaped (free) to ``(D / 128, 128)`` and
  :data:`ROWS` = 8 tiles a program (all of them below 8; wider widths padded
  to a multiple of 8), so a position is one full ``(8, 128)`` vreg rather
  than one of its 8 sublanes; grid ``(batch, D / 1024, length / 256)``
  (``dimension_semantics=(parallel, parallel, arbitrary)``), blocks ``(256,
  8, 128)`` (128 positions for complex inputs), 6 MiB of VMEM
  double-buffered; the ``fori_loop`` unrolled 8 positions a trip. libtpu's
  v5e schedule at b = 2, l = 4096, d = 2048: 565,760 -> 63,360
  bundle-cycles forward against the one-row layout (``docs/kernels.md``,
  ``benchmarks/tpu_bundles.py``), below the bytes' time.

Complex inputs: Pallas kernels take no complex dtypes, so the wrapper splits
``a``, ``b`` and ``h0`` into float32 real and imaginary parts and the kernel
carries both (``h = (a_r h_r - a_i h_i + b_r) + i (a_r h_i + a_i h_r + b_i)``).

Gradients: the op's ``jax.custom_vjp`` (:mod:`seqjax.ops.linear_scan`) runs
the adjoint as a reverse scan with shifted ``a`` through the registered
implementation, i.e. this same kernel; segments reach the kernel as ``a = 0``
at segment starts, set by the op. The op's ``chunk_size`` does not apply: the
blocks above are fixed by the hardware. ``a`` is broadcast to ``b``'s shape
before the kernel (a decay shared over state axes costs full-size reads).

Timed once on a GPU, uncut (above); not yet on a TPU.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from seqjax.kernels.common import grid_call, on_platform, out_struct, round_up
from seqjax.kernels.sequence_split import cut_segments, per_segment, split_for
from seqjax.ops import dispatch
from seqjax.ops.collectives import match_vma
from seqjax.ops.common import pad_axis

TILE = 128  # channels per program: a warpgroup's threads (GPU), a vreg's lanes (TPU)
ROWS = 8  # TPU: 128-channel tiles per program, a vreg's sublanes
CHUNK = {"gpu": 32, "tpu": 256}  # positions per grid step (real inputs; half for complex)
UNROLL = {"gpu": 1, "tpu": 8}  # positions per fori_loop iteration


def _kernel(step, *refs, parts: int, chunk: int, unroll: int, local: bool = False):
    """Chunk ``step`` of one (batch, channel tiles) program; ``parts`` = 1 (real) or 2 (real, imaginary);
    ``local``: the outputs are the row's last state, written every chunk (the last write stays).

    Blocks are ``(chunk, 128)`` (GPU) or ``(chunk, rows, 128)`` (TPU); a
    position is the block's slice ``[t : t + 1]``, the state one such slice."""
    coeffs, h0s = refs[:2 * parts], refs[2 * parts:3 * parts]
    outs, carry = refs[3 * parts:4 * parts], refs[4 * parts:]

    @pl.when(step == 0)
    def _init():
        for c, h0 in zip(carry, h0s):
            c[...] = h0[...]

    def position(t, h):
        row = pl.ds(t, 1)
        if parts == 1:
            a, b = coeffs[0][row], coeffs[1][row]
            h = (a * h[0] + b,)
        else:
            ar, ai, br, bi = (ref[row] for ref in coeffs)
            h = (ar * h[0] - ai * h[1] + br, ar * h[1] + ai * h[0] + bi)
        if not local:
            for out, value in zip(outs, h):
                out[row] = value
        return h

    h = lax.fori_loop(0, chunk, position, tuple(c[...] for c in carry), unroll=unroll)
    for c, value in zip(carry, h):
        c[...] = value
    if local:
        for out, value in zip(outs, h):
            out[...] = value


def _call(kind, interpret, parts, *arrays):
    """The scan on ``(batch, length, D)`` coefficients and ``(batch, 1, D)`` initial states: one pass
    of the kernel, or on GPU the sequence cut into segments (module docstring)."""
    batch, length, width = arrays[0].shape
    chunk = CHUNK[kind] // parts
    if kind == "gpu":
        segments = split_for(batch * round_up(width, TILE) // TILE, round_up(length, chunk), chunk)
        if segments > 1:
            return _cut_call(interpret, parts, chunk, segments, *arrays)
    return _pass(kind, interpret, parts, chunk, *arrays)


def _rows(kind, width):
    """128-channel tiles per program: 1 on GPU (a warpgroup's threads), on TPU up to
    :data:`ROWS` (a vreg's sublanes; the whole width when it has fewer tiles)."""
    return 1 if kind == "gpu" else min(ROWS, -(-width // TILE))


def _pass(kind, interpret, parts, chunk, *arrays, local=False):
    """One kernel over the whole grid; ``local``: only each row's last state ``(batch, 1, D)``."""
    batch, length, width = arrays[0].shape
    rows = _rows(kind, width)
    # a pads with 1 and b with 0, so the carried state is unchanged.
    pad_values = (1,) * parts + (0,) * parts
    coeffs = [pad_axis(pad_axis(x, chunk, 1, v), rows * TILE, 2) for x, v in zip(arrays[:2 * parts], pad_values)]
    h0s = [pad_axis(x, rows * TILE, 2) for x in arrays[2 * parts:]]
    padded, wide = coeffs[0].shape[1:]
    grid = (batch, wide // (rows * TILE), padded // chunk)
    if kind == "gpu":
        block = pl.BlockSpec((None, chunk, TILE), lambda i, j, k: (i, k, j))
        state = pl.BlockSpec((None, 1, TILE), lambda i, j, k: (i, 0, j))
        tile = (TILE,)
    else:
        # Channels as (tiles, 128), a free reshape: a position of a block is
        # a (rows, 128) vreg tile, not one of its sublanes.
        coeffs, h0s = ([x.reshape(x.shape[:2] + (-1, TILE)) for x in xs] for xs in (coeffs, h0s))
        block = pl.BlockSpec((None, chunk, rows, TILE), lambda i, j, k: (i, k, j, 0))
        state = pl.BlockSpec((None, 1, rows, TILE), lambda i, j, k: (i, 0, j, 0))
        tile = (rows, TILE)
    dtype = coeffs[0].dtype
    out_shape = (batch, 1) if local else (batch, padded)
    outs = grid_call(
        kind, interpret, functools.partial(_kernel, parts=parts, chunk=chunk, unroll=UNROLL[kind], local=local),
        grid=grid,
        in_specs=[block] * (2 * parts) + [state] * parts,
        out_specs=[state if local else block] * parts,
        out_shape=[out_struct(out_shape + coeffs[0].shape[2:], dtype, coeffs[0])] * parts,
        scratch_shapes=[((1,) + tile, dtype)] * parts,
        gpu_stages=2,
    )(*coeffs, *h0s)
    outs = [h.reshape(h.shape[:2] + (wide,)) for h in outs]
    return tuple(h[:, :, :width] if local else h[:, :length, :width] for h in outs)


def _cut_call(interpret, parts, chunk, segments, *arrays):
    """The GPU scan in ``segments`` rows per batch row (:mod:`seqjax.kernels.sequence_split`).

    Pass 1: each segment's last state from a zero state; XLA: the state
    entering segment ``s``, ``h_s = P_{s-1} h_{s-1} + e_{s-1}`` from the true
    initial state, ``P`` the product of the segment's ``a``; pass 2: every
    segment from its ``h_s``.
    """
    batch, length, width = arrays[0].shape
    span, cut, _, _, _ = cut_segments(segments, chunk, length, seq=arrays[:2 * parts],
                                      fill=(1,) * parts + (0,) * parts)
    # Inside shard_map the kernel's inputs and the scan's carry must vary over the mesh axes the inputs do.
    zeros = match_vma(tuple(jnp.zeros((batch * segments, 1, width), x.dtype) for x in arrays[2 * parts:]), *cut)
    ends = _pass("gpu", interpret, parts, chunk, *cut, *zeros, local=True)

    def whole(xs):  # real and imaginary parts -> one array (complex arithmetic in XLA)
        return lax.complex(*xs) if parts == 2 else xs[0]

    def enter(h, xs):
        end, p = xs
        return p * h + end, h

    decay = jnp.prod(whole(cut[:parts]), axis=1)  # (b * S, D)
    (h0,) = match_vma((whole(arrays[2 * parts:])[:, 0],), *cut)
    _, h_in = lax.scan(enter, h0, (per_segment(whole(ends)[:, 0], segments), per_segment(decay, segments)))
    h_in = jnp.swapaxes(h_in, 0, 1).reshape(batch * segments, 1, width)
    outs = _pass("gpu", interpret, parts, chunk, *cut, *((jnp.real(h_in), jnp.imag(h_in)) if parts == 2 else (h_in,)))
    return tuple(h.reshape(batch, span * segments, width)[:, :length] for h in outs)


def linear_scan_pallas(a: jax.Array, b: jax.Array, h0: jax.Array, *, interpret: str | None = None) -> jax.Array:
    """The forward scan ``h[:, t] = a[:, t] * h[:, t-1] + b[:, t]`` as a Pallas kernel.

    Args:
      a: decays, broadcastable to ``b.shape`` (same rank), real or complex.
      b: inputs, ``(batch, length, *rest)``, float32 or complex64 (float64 and
        complex128 run in interpret mode only).
      h0: initial state, ``(batch, *rest)``.
      interpret: None (the platform's kernel; interpreted GPU kernel on CPU),
        or ``"gpu"`` / ``"tpu"`` to interpret that kernel (tests).

    Returns:
      ``h`` of ``b``'s shape and dtype.
    """
    batch, length = b.shape[:2]
    a = jnp.broadcast_to(a, b.shape).reshape(batch, length, -1)
    flat_b = b.reshape(batch, length, -1)
    flat_h0 = h0.reshape(batch, 1, -1)
    is_complex = jnp.iscomplexobj(flat_b)

    def split(x):
        return (jnp.real(x), jnp.imag(x)) if is_complex else (x,)

    parts = 2 if is_complex else 1
    arrays = split(a) + split(flat_b) + split(flat_h0)

    def build(kind, interp):
        return functools.partial(_call, kind, interp, parts)

    out = on_platform(build, *arrays, interpret=interpret)
    h = lax.complex(*out) if is_complex else out[0]
    return h.reshape(b.shape)


@dispatch.register("linear_scan", "pallas")
def _pallas(a, b, h0, chunk_size):
    del chunk_size  # the kernel's chunk is fixed by the hardware (module docstring)
    return linear_scan_pallas(a, b, h0)


# TPU: not yet timed on a device; chosen because the kernel moves the bytes
# floor (a, b read once, h written once) where XLA's associative scan makes
# ~log L passes. No GPU row: on an H200 XLA's associative scan is faster
# (0.55 vs 0.76 ms forward+backward, float32; benchmarks/results/h200-kernels.json).
dispatch.add_rules(
    dispatch.Rule("linear_scan", "tpu", "pallas",
                  why="one pass over a, b and h (the bytes floor) vs ~log L passes of the associative scan; "
                      "not yet timed on a TPU"),
)
