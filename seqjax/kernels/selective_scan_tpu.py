"""The selective scan's TPU kernels, forward and backward, with the states on sublanes (``impl="pallas"`` on TPU).

The shared layout of :mod:`seqjax.kernels.selective_scan` keeps each of a
channel tile's ``n`` states as its own ``(1, 128)`` row: on a TPU every such
row fills one of a vreg's 8 sublanes, so each ``exp`` and multiply-add runs
at 1/8 of the vector units' width, and each position reads ``2 n`` scalars of
``B, C`` from SMEM. Here the tile's state is one ``(n, 128)`` array (``n / 8``
full vregs; ``n`` is padded to a multiple of 8), and per position:

    h = keep_t · exp(Δ_t A) ⊙ h + (Δ_t u_t) ⊗ B_t      (n, 128)
    y_t = Σ_s C_t[s] h[s]                               (1, 128), a sublane sum

with ``Δ_t u_t`` a ``(1, 128)`` row broadcast over the sublanes and
``B_t``, ``C_t`` ``(n, 1)`` columns broadcast over the lanes. The columns come
from ``B``, ``C`` transposed to ``(n, L)`` in XLA (small: ``n`` per position)
and read in ``(n, 128)`` blocks, 128 positions a grid step; Mosaic TPU can
slice a lane only at a static offset, so the 128 positions of a step are
unrolled. 128 positions a step also amortise the per-step pipeline work that
8-position steps paid every 8 positions. The forward saves the state entering
every ``chunk`` positions (the shared layout's residual); the backward
recomputes a block's states, a sub-block at a time (all 128 positions at
n = 16, 32 at n = 128: ``STATE_SCRATCH_BYTES``), from the chunk states the
forward saved, into a ``(positions, n, 128)`` VMEM scratch, and walks back
with the state adjoint as one ``(n, 128)`` array; ``dB[t, :]``, ``dC[t, :]`` are lane sums over the tile's channels,
gathered into ``(n, 128)`` column blocks.

Checked on CPU: interpret mode with TPU semantics against the float64
reference (``tests/kernels/test_selective_scan_kernel.py``), and compiled by
libtpu for TPU v5e (``tests/kernels/lowering.py``), which reports the
kernel's VLIW bundles (``benchmarks/tpu_bundles.py``: at the issue's shape
on v5e, 11.4 M -> 2.0 M bundle-cycles forward and 44.6 M -> 6.5 M backward
against the rows layout). Not run on a TPU.
"""

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from seqjax.kernels.common import grid_call, out_struct
from seqjax.ops.common import pad_axis

BLOCK = 128  # positions per grid step: one lane tile of the transposed B and C
# The backward's recomputed states, (positions, n, tile) float32, are held for
# at most this many bytes at a time: a block is walked in sub-blocks of fewer
# positions when n is large (n = 128: 32 positions, 2 MiB; the whole block,
# 8 MiB, ran out of v5e's 16 MiB of scoped VMEM in libtpu's compile).
STATE_SCRATCH_BYTES = 2 * 2**20


# The largest n the TPU kernels compile for (libtpu, v5e, 2026-12-07: n = 32
# and 64 compile; at n = 128 the unrolled backward's (128, 128) temporaries
# need ~20 MiB of VMEM against a 16 MiB limit). TPU ``auto`` takes the XLA
# path above it; ``impl="pallas"`` there fails in libtpu's compile.
MAX_STATES = 64


def sub_block(n: int, tile: int, chunk: int) -> int:
    """Positions the TPU backward recomputes and walks at a time: a power of two, ``chunk`` to ``BLOCK``."""
    sub = BLOCK
    while sub > chunk and sub * n * tile * 4 > STATE_SCRATCH_BYTES:
        sub //= 2
    return sub


def _forward_kernel(step, u_ref, dt_ref, at_ref, b_ref, c_ref, keep_ref, *refs, chunk, save, acc):
    """One block of ``BLOCK`` positions of one (batch row, channel tile), the positions unrolled."""
    y_ref, last_ref = refs[:2]
    starts_ref = refs[2] if save else None
    carry_ref = refs[-1]
    block = u_ref.shape[0]

    @pl.when(step == 0)
    def _init():
        carry_ref[...] = jnp.zeros(carry_ref.shape, acc)

    a = at_ref[...].astype(acc)  # (n, tile)
    h = carry_ref[...]
    bt, ct = b_ref[...].astype(acc), c_ref[...].astype(acc)  # (n, block)
    for t in range(block):
        if save and t % chunk == 0:
            starts_ref[t // chunk] = h
        row = slice(t, t + 1)
        dt = dt_ref[row, :].astype(acc)  # (1, tile)
        dtu = dt * u_ref[row, :].astype(acc)
        h = keep_ref[t, 0].astype(acc) * jnp.exp(dt * a) * h + dtu * bt[:, row]
        y_ref[row, :] = jnp.sum(ct[:, row] * h, axis=0, keepdims=True).astype(y_ref.dtype)
    carry_ref[...] = h
    last_ref[...] = h  # written every block: the last block's write is the final state


def forward(interpret, n, chunk, per_group, save, tile, u, dt, at, bt, ct, keep):
    """The forward on the shared kernel layout (:mod:`seqjax.kernels.selective_scan`).

    Args:
      interpret: False on a TPU; a ``pltpu.InterpretParams`` on CPU (tests).
      n: states (a multiple of 8).
      chunk: positions between saved states.
      per_group: channel tiles per group of ``B, C``.
      save: also return the state entering every ``chunk`` positions.
      tile: channels per program (128; tests use fewer).
      u, dt: ``(b, L, D)``, ``L`` a multiple of ``chunk``, ``D`` of ``tile``.
      at: ``A`` transposed, ``(n, D)``.
      bt, ct: ``(b, g, L, n)``.
      keep: ``(b, L, lanes)`` restart flags.

    Returns:
      ``[y (b, L, D), last (b, n, D)]`` and, if ``save``, ``starts (b, L / chunk, n, D)``.
    """
    batch, length, width = u.shape
    acc = jnp.result_type(jnp.float32, u.dtype)
    # A whole number of blocks: Δ = 0 and keep = 1 pass the state through, B = C = 0 add nothing.
    u, dt = (pad_axis(x, BLOCK, axis=1) for x in (u, dt))
    keep = pad_axis(keep, BLOCK, axis=1, value=1)
    bt, ct = (jnp.swapaxes(pad_axis(x, BLOCK, axis=2), 2, 3) for x in (bt, ct))  # (b, g, n, L)
    padded = u.shape[1]
    seq = pl.BlockSpec((None, BLOCK, tile), lambda i, j, k: (i, k, j))
    # lax.div, not //: floor division lowers through sign(), which Mosaic TPU lowers only on a TPU.
    bc = pl.BlockSpec((None, None, n, BLOCK), lambda i, j, k: (i, lax.div(j, jnp.asarray(per_group, j.dtype)), 0, k))
    state = pl.BlockSpec((None, n, tile), lambda i, j, k: (i, 0, j))
    out_specs = [seq, state]
    out_shape = [out_struct((batch, padded, width), u.dtype, u), out_struct((batch, n, width), acc, u)]
    if save:
        out_specs.append(pl.BlockSpec((None, BLOCK // chunk, n, tile), lambda i, j, k: (i, k, 0, j)))
        out_shape.append(out_struct((batch, padded // chunk, n, width), acc, u))
    outs = grid_call(
        "tpu", interpret, functools.partial(_forward_kernel, chunk=chunk, save=save, acc=acc),
        grid=(batch, width // tile, padded // BLOCK),
        in_specs=[seq, seq, pl.BlockSpec((n, tile), lambda i, j, k: (0, j)), bc, bc,
                  pl.BlockSpec((None, BLOCK, keep.shape[-1]), lambda i, j, k: (i, k, 0), memory_space=pltpu.SMEM)],
        out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=[((n, tile), acc)],
    )(u, dt, at, bt, ct, keep)
    outs[0] = outs[0][:, :length]
    if save:
        outs[2] = outs[2][:, :length // chunk]
    return outs


def _backward_kernel(step, u_ref, dt_ref, at_ref, b_ref, c_ref, keep_ref, gy_ref, start_ref, glast_ref,
                     du_ref, ddt_ref, db_ref, dc_ref, da_ref, mu_ref, dacc_ref, states_ref, *, acc):
    """One block of ``BLOCK`` positions, blocks in reverse, the positions unrolled.

    Sub-block by sub-block from the last (``states_ref`` holds one), recomputes
    the states from the one the forward saved at the sub-block's start (the
    state before each position), then walks back carrying
    the state adjoint ``μ`` as one ``(n, tile)`` array: ``du, dΔ`` per position
    (sublane sums), ``dB[t, :]`` and ``dC[t, :]`` as lane sums over the tile's
    channels, gathered into ``(n, BLOCK)`` columns, and ``dA`` in scratch.
    """
    block, sub = u_ref.shape[0], states_ref.shape[0]

    @pl.when(step == 0)
    def _init():
        mu_ref[...] = glast_ref[...].astype(acc)
        dacc_ref[...] = jnp.zeros(dacc_ref.shape, acc)

    a = at_ref[...].astype(acc)
    bt, ct = b_ref[...].astype(acc), c_ref[...].astype(acc)  # (n, block)

    def inputs(t):
        row = slice(t, t + 1)
        dt = dt_ref[row, :].astype(acc)
        return row, dt, u_ref[row, :].astype(acc), keep_ref[t, 0].astype(acc) * jnp.exp(dt * a)

    mu, da = mu_ref[...], dacc_ref[...]
    lanes = lax.broadcasted_iota(jnp.int32, bt.shape, 1)
    db, dc = jnp.zeros(bt.shape, acc), jnp.zeros(bt.shape, acc)
    for first in reversed(range(0, block, sub)):
        h = start_ref[first // sub].astype(acc)
        for t in range(first, first + sub):
            row, dt, u, decay = inputs(t)
            states_ref[t - first] = h
            h = decay * h + (dt * u) * bt[:, row]
        mu, da, db, dc = _walk_back(first, sub, inputs, a, bt, ct, gy_ref, du_ref, ddt_ref, states_ref, lanes,
                                    mu, da, db, dc, acc)
    mu_ref[...], dacc_ref[...] = mu, da
    da_ref[...] = da  # written every block: the last block's write is the whole sum
    db_ref[...], dc_ref[...] = db, dc


def _walk_back(first, sub, inputs, a, bt, ct, gy_ref, du_ref, ddt_ref, states_ref, lanes, mu, da, db, dc, acc):
    """The reverse walk over positions ``first .. first + sub - 1`` (:func:`_backward_kernel`)."""
    for t in reversed(range(first, first + sub)):
        row, dt, u, decay = inputs(t)
        gy = gy_ref[row, :].astype(acc)
        dtu, b_col = dt * u, bt[:, row]
        lam = mu + ct[:, row] * gy  # dL/dh_t
        h_prev = states_ref[t - first]
        g = lam * h_prev * decay  # dL/d(Δ A) through the decay, per state
        lam_b = jnp.sum(lam * b_col, axis=0, keepdims=True)
        du_ref[row, :] = lam_b * dt
        ddt_ref[row, :] = lam_b * u + jnp.sum(g * a, axis=0, keepdims=True)
        # Sums over the tile's channels (lanes) for B_t and C_t, into column t.
        db = jnp.where(lanes == t, jnp.sum(lam * dtu, axis=1, keepdims=True), db)
        dc = jnp.where(lanes == t, jnp.sum((decay * h_prev + dtu * b_col) * gy, axis=1, keepdims=True), dc)
        mu = decay * lam
        da = da + g * dt
    return mu, da, db, dc


def backward(interpret, n, chunk, per_group, tile, u, dt, at, bt, ct, keep, gy, starts, g_last):
    """The backward on the shared kernel layout, from the forward's chunk states.

    Args:
      interpret, n, chunk, per_group, tile: as :func:`forward`.
      u, dt, gy: ``(b, L, D)`` float32 (``gy``: the cotangent of ``y``).
      at, bt, ct, keep: as :func:`forward`.
      starts: ``(b, L / chunk, n, D)``, the state entering every ``chunk`` positions.
      g_last: ``(b, n, D)``, the final state's cotangent.

    Returns:
      ``[du, dΔ (b, L, D), dB, dC (b, tiles, L, n) per channel tile, dA (b, n, D)]``.
    """
    batch, length, width = u.shape
    acc = jnp.result_type(jnp.float32, u.dtype)
    u, dt, gy = (pad_axis(x, BLOCK, axis=1) for x in (u, dt, gy))
    keep = pad_axis(keep, BLOCK, axis=1, value=1)
    bt, ct = (jnp.swapaxes(pad_axis(x, BLOCK, axis=2), 2, 3) for x in (bt, ct))  # (b, g, n, L)
    padded = u.shape[1]
    # The states entering each sub-block (padded ones start from anything finite: Δ = u = gy = 0 there):
    # every (sub / chunk)-th chunk state, so that a block's VMEM holds only those (n = 128: 4 of 16).
    sub = sub_block(n, tile, chunk)
    starts = pad_axis(starts, padded // chunk, axis=1)[:, ::sub // chunk]
    blocks, tiles, per_block = padded // BLOCK, width // tile, BLOCK // sub

    def rev(k):
        return blocks - 1 - k

    seq = pl.BlockSpec((None, BLOCK, tile), lambda i, j, k: (i, rev(k), j))
    bc = pl.BlockSpec((None, None, n, BLOCK),
                      lambda i, j, k: (i, lax.div(j, jnp.asarray(per_group, j.dtype)), 0, rev(k)))
    state = pl.BlockSpec((None, n, tile), lambda i, j, k: (i, 0, j))
    part = pl.BlockSpec((None, None, n, BLOCK), lambda i, j, k: (i, j, 0, rev(k)))
    du, ddt, db, dc, da = grid_call(
        "tpu", interpret, functools.partial(_backward_kernel, acc=acc),
        grid=(batch, tiles, blocks),
        in_specs=[seq, seq, pl.BlockSpec((n, tile), lambda i, j, k: (0, j)), bc, bc,
                  pl.BlockSpec((None, BLOCK, keep.shape[-1]), lambda i, j, k: (i, rev(k), 0), memory_space=pltpu.SMEM),
                  seq, pl.BlockSpec((None, per_block, n, tile), lambda i, j, k: (i, rev(k), 0, j)), state],
        out_specs=[seq, seq, part, part, state],
        out_shape=[out_struct((batch, padded, width), acc, u)] * 2
        + [out_struct((batch, tiles, n, padded), acc, u)] * 2 + [out_struct((batch, n, width), acc, u)],
        scratch_shapes=[((n, tile), acc), ((n, tile), acc), ((sub, n, tile), acc)],
    )(u, dt, at, bt, ct, keep, gy, starts, g_last)
    db, dc = (jnp.swapaxes(x, 2, 3)[:, :, :length] for x in (db, dc))
    return [du[:, :length], ddt[:, :length], db, dc, da]
