"""Cutting a scan kernel's sequence into segments that run as extra grid rows (GPU).

A scan kernel's grid is ``(batch, channel tiles, chunks)`` with the chunks in
order inside each program, so at a small batch a GPU runs few programs: the
selective scan at b = 2, d = 2048 has 32 CTAs, one warpgroup on each of a
quarter of an H100's 132 SMs, where every latency of the sequential loop is
exposed. A diagonal recurrence ``h_t = a_t h_{t-1} + x_t`` is linear in the
state it starts from, so the sequence can be cut into ``S`` segments run side
by side as extra rows: a first pass runs each segment from a zero state and
keeps its end state ``e_s``; the state entering segment ``s`` is ``h_s =
P_{s-1} h_{s-1} + e_{s-1}``, where ``P`` is the product of the segment's
decays (for Mamba's ``exp(Δ A)``: ``exp(A Σ Δ)``, and 0 where a document
starts inside the segment), a scan over ``S`` in XLA; a second pass runs every
segment from its ``h_s``. The adjoint of the backward runs the same way from
the right. The price is a second pass over the inputs; the gain, ``S`` times
the programs.

What this module holds is the layout (which ``S``, and the arrays cut into
segment rows); the passes live with their kernels
(:mod:`seqjax.kernels.selective_scan`, :mod:`seqjax.kernels.linear_scan`).
"""

import jax.numpy as jnp

from seqjax.kernels.common import round_up
from seqjax.ops.common import pad_axis

# Cut until the grid has about this many programs: ~4 warpgroups per SM of a
# 132-SM H100/H200 (shared memory allows 2 of the selective-scan forward's
# CTAs and 1 of its backward's per SM, so this is 2-4 waves).
SPLIT_PROGRAMS = 512
# Positions per segment at least: each segment costs a row of the XLA scan
# over segments and a second read of its inputs.
MIN_SEGMENT = 256


def split_for(programs: int, length: int, chunk: int) -> int:
    """How many segments to cut the sequence into (1: no cut).

    The largest power of two ``S`` with ``programs * S <= SPLIT_PROGRAMS`` and
    segments of at least ``MIN_SEGMENT`` positions (and one chunk).

    Args:
      programs: the uncut grid's parallel programs, ``batch * channel tiles``.
      length: the length (a multiple of ``chunk``).
      chunk: positions per grid step.

    Returns:
      ``S >= 1``.
    """
    segments = 1
    while programs * segments * 2 <= SPLIT_PROGRAMS and length >= segments * 2 * max(MIN_SEGMENT, chunk):
        segments *= 2
    return segments


def cut_segments(segments, chunk, length, seq=(), bc=(), keep=None, starts=None, fill=None):
    """Arrays of the scan-kernel layout with the sequence cut into ``segments`` rows per batch row.

    Each segment spans ``span = round_up(ceil(length / segments), chunk)``
    positions; the length is padded to ``segments * span`` first with zeros
    (``keep`` with ones): with ``Δ = u = gy = 0``, ``keep = 1`` and ``B = C =
    0`` the state and its adjoint pass through unchanged and no kept
    gradient changes.

    Args:
      segments: ``S``.
      chunk: positions per grid step (``span`` is a multiple of it).
      length: the length of the arrays.
      seq: ``(b, L, ...)`` arrays, each to ``(b * S, span, ...)`` (a free reshape).
      fill: the padding value of each ``seq`` array (default 0; a decay pads with 1).
      bc: ``(b, g, L, n)`` arrays (``B``, ``C``), each to ``(b * S, g, span, n)``.
      keep: ``(b, L, lanes)`` restart flags or None.
      starts: ``(b, L / chunk, n, D)`` chunk states or None, to ``(b * S, span / chunk, n, D)``.

    Returns:
      ``(span, seq, bc, keep, starts)``, ``seq`` and ``bc`` as lists.
    """
    span = round_up(-(-length // segments), chunk)
    total = span * segments

    def cut(x, value=0):
        x = pad_axis(x, total, axis=1, value=value)
        return x.reshape((x.shape[0] * segments, span) + x.shape[2:])

    def cut_bc(x):
        batch, groups, _, n = x.shape
        x = pad_axis(x, total, axis=2).reshape(batch, groups, segments, span, n)
        return jnp.swapaxes(x, 1, 2).reshape(batch * segments, groups, span, n)

    if starts is not None:
        starts = pad_axis(starts, total // chunk, axis=1)
        starts = starts.reshape((starts.shape[0] * segments, span // chunk) + starts.shape[2:])
    fill = fill or (0,) * len(seq)
    return (span, [cut(x, v) for x, v in zip(seq, fill)], [cut_bc(x) for x in bc],
            None if keep is None else cut(keep, 1), starts)


def segment_decay(at, dt, keep, acc):
    """The product of each segment's decays ``keep_t exp(Δ_t A)``: ``exp(A Σ Δ)``, 0 where a document starts inside.

    Args:
      at: ``A`` transposed, ``(n, D)``.
      dt: ``(b * S, span, D)`` step sizes of the segment rows.
      keep: ``(b * S, span, lanes)`` restart flags (0 where the state restarts).
      acc: the accumulation dtype.

    Returns:
      ``P`` ``(b * S, n, D)``.
    """
    through = jnp.all(keep[:, :, 0] != 0, axis=1).astype(acc)
    return jnp.exp(at.astype(acc)[None] * jnp.sum(dt.astype(acc), axis=1)[:, None, :]) * through[:, None, None]


def per_segment(x, segments):
    """``(b * S, ...)`` -> ``(S, b, ...)``: segments leading, for a scan over them."""
    return jnp.swapaxes(x.reshape((-1, segments) + x.shape[1:]), 0, 1)
