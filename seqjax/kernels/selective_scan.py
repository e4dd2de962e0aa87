"""Pallas kernels for Mamba-1's selective scan, forward and backward (``selective_scan(impl="pallas")``).

What the kernels compute, per batch row, channel ``c`` and state ``s``
(dt after bias and softplus, as the op hands it over)::

    h_t[s, c] = keep_t exp(dt_t[c] A[c, s]) h_{t-1}[s, c] + dt_t[c] u_t[c] B_t[s]
    y_t[c]    = sum_s C_t[s] h_t[s, c]

with ``keep_t = 0`` where a segment starts (the state restarts). ``exp(Δ·A)``
is computed in the kernel; the ``(b, l, d, n)`` decays and states never reach
HBM.

This module holds the GPU kernels (Mosaic GPU) and the wrapper both
platforms share; the TPU kernels (Mosaic TPU, the states on sublanes, 128
positions a grid step) are :mod:`seqjax.kernels.selective_scan_tpu`, on the
same padded arrays and the same saved chunk states. The GPU layout:

* Channels are split into their ``g`` groups and each group padded to a
  multiple of ``TILE = 128`` channels (``u = Δ = A = 0`` there: the padded
  states stay 0), the length to a multiple of the chunk (``Δ = 0, keep = 1``:
  the state passes unchanged, so the last state is the state at ``l - 1``),
  and the states to a multiple of 8 (``A = B = C = 0`` there: a padded state
  stays 0; a ``(chunk, n)`` block of ``B`` must be a whole number of 128-byte
  warpgroup copies on GPU, which n = 5 was not).
* Grid ``(batch, channel tiles, chunks)``, the chunk axis sequential and last
  (:func:`seqjax.kernels.common.grid_call`: ``plgpu.kernel`` over (batch,
  tiles) and ``plgpu.emit_pipeline`` over the chunks inside each CTA, TMA
  prefetching the next blocks). Blocks: ``u, Δ, y`` ``(chunk, 128)``; ``A``
  transposed ``(n, 128)``; ``B, C`` of the tile's group ``(chunk, n)`` and
  the segment flags ``(chunk,)``, read as scalars from shared memory. 128
  channels = one warpgroup with one channel per thread; each channel's ``n``
  states are ``n`` register rows walked one position at a time, handed to
  the next chunk through an ``(n, 128)`` scratch.
* Forward: reads ``u, Δ, B, C`` once and writes ``y`` once; under
  differentiation it also writes the state entering each chunk,
  ``(b, l / chunk, n, d)`` float32 (1/chunk of the full state).
* Backward: chunks in reverse. Per chunk it recomputes the chunk's states
  from the saved boundary state into a scratch (the state before each
  position), then walks back carrying the state adjoint ``λ`` (the reverse
  recurrence ``λ_{t-1} ← keep_t exp(Δ_t A) λ_t + C_{t-1} gy_{t-1}``),
  writing ``du, dΔ`` per position, per-tile partial sums of ``dB, dC``
  (summed over a group's tiles outside) and accumulating ``dA`` in
  registers. ``dB[t, s]`` and ``dC[t, s]`` are sums over the tile's 128
  channels, i.e. across threads: :func:`_backward_kernel` writes the
  per-channel products as rows ``t * n + s`` of two ``(chunk * n, 128 + 8)``
  scratches (the ``dB`` products over the state rows just consumed) and sums
  them once per chunk, 64 rows at a time in the WGMMA register layout, where
  a row's channels lie within one warp: no barrier per sum. Done row by row,
  each of the ``2 n`` sums per position was a cross-warp round trip through
  shared memory with barriers (131,072 per CTA at l = 4096, n = 16), the
  suspected cause of the forward+backward's 18.9 ms against the forward's
  1.5 on the H200 (2026-12-04, before this change; not yet re-timed).
* The sequence cut into segments that run as extra CTAs
  (:mod:`seqjax.kernels.sequence_split`; 16 at the issue's shape, where the
  uncut grid has 32 CTAs and the H200 forward took 1.5 ms against a 0.069 ms
  floor). Forward: a first pass keeps each segment's end state from a zero
  state (no ``C``, no ``y``), XLA scans the segments for the state entering
  each, the second pass is the forward from it. Backward: a first pass walks
  each segment's state adjoint from zero (:func:`_adjoint_kernel`: one
  ``exp`` and two FMAs per element, no states), XLA combines them from the
  right, the backward kernel runs every segment from its adjoint; ``dA`` is
  summed over the segments. ~2× the forward's ``exp``s and 1.5× the
  backward's for 16× the CTAs; **not yet timed on a device**
  (``benchmarks/kernels.py`` times the uncut kernel beside it as
  ``pallas_unsplit``). TPU grids run in order on one core: no cut.
* Chunk = ``max(8, min(16, 128 // n))`` positions (8 for Mamba's ``n = 16``;
  16 below it, where longer chunks' pipelined blocks would outgrow shared
  memory). GPU backward at ``n = 16``: two row scratches of
  ``chunk · n · 136 · 4`` B = 68 KiB each, one pipeline stage of blocks and
  the carries: 216,072 of the 232,448 bytes of a Hopper SM's shared memory
  (measured by the lowering; 211,976 at n = 8, 130,056 at n = 4); so the
  GPU backward is limited to ``n <= 16`` (GPU ``auto`` keeps the XLA path:
  the one device run, before this rewrite, found it slower). The TPU kernels
  save and read the state entering every ``chunk`` positions too.

Inputs may be bfloat16: on GPU blocks are loaded in their dtype and cast to
float32 in the kernel (TPU: widened to float32 before it, as Mosaic TPU
cannot load one bf16 row at a dynamic offset); float64 inputs compute in
float64, interpret mode only. The op (:func:`seqjax.ops.selective_scan`)
applies ``delta_bias`` and the softplus before dispatch and so hands the
kernel float32 arrays today.

Timed once on a GPU (H200, 2026-12-04, chunk 16, the row-by-row sums, no split):
forward 1.5 ms, forward+backward 18.9 ms at b=2, l=4096, d=2048, n=16
(``benchmarks/results/h200-kernels.json``). The forward is one ``exp`` and a
few FMAs per (position, channel, state) with no cross-thread work; only 32
CTAs (b·d/128) ran at that shape (the cut above since). Never run on a TPU.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from seqjax.kernels import selective_scan_tpu
from seqjax.kernels.common import grid_call, on_platform, out_struct, round_up, vary_alike
from seqjax.kernels.sequence_split import cut_segments, per_segment, segment_decay, split_for
from seqjax.ops import dispatch
from seqjax.ops.collectives import match_vma
from seqjax.ops.common import pad_axis, segment_starts

TILE = 128  # channels per program: a warpgroup's threads (GPU), a vreg's lanes (TPU)
STATE_ROWS = 128  # chunk * n: bounds the GPU backward's two (chunk * n, 136) scratches (module docstring)
# The GPU backward sums its per-channel products over the tile's channels in
# groups of this many (position, state) rows: a (64, 128) array in the WGMMA
# register layout, whose rows sit within one warp each (no barrier).
SUM_ROWS = 64
# The row scratches' rows are padded from 128 to 136 floats: read back in the
# WGMMA layout, 8 rows at one column offset then fall in distinct banks (a
# 128-float stride puts them in the same bank: an 8-way conflict, which
# Mosaic GPU refuses to plan; with the pad it finds a conflict-free transfer).
ROW_PAD = 8
MIN_CHUNK = 8  # TPU blocks' second-minor dim must be a multiple of 8
# The pipelined (chunk, 128) blocks grow with the chunk: at n = 4 a chunk of
# 64 (then 256 / n) asked Mosaic GPU for 315,400 bytes of shared memory in
# the backward (232,448 available).
MAX_CHUNK = 16
# The segment flags are stored (b, l, KEEP_LANES): Mosaic GPU copies whole
# multiples of 128 bytes (one per thread of the warpgroup), so a (chunk,)
# float32 row (64 bytes at chunk 16) cannot be a block; (chunk, 8) can.
KEEP_LANES = 8
# States are padded to a multiple of 8 (zero B, C and A: a padded state stays
# 0 and adds nothing): for the same reason a (chunk, n) block of B or C must
# hold a multiple of 128 bytes, which n = 5 (320 bytes at chunk 16) did not.
STATE_MULTIPLE = 8
# JAX 0.10 / 0.11 take plgpu.load(ref, idx, ...); 0.12 takes the ref alone.
_LOAD_TAKES_INDEX = "idx" in inspect.signature(plgpu.load).parameters


def chunk_for(n: int) -> int:
    """Positions per grid step for ``n`` states (module docstring)."""
    return max(MIN_CHUNK, min(MAX_CHUNK, STATE_ROWS // n))


# --- kernel bodies -----------------------------------------------------------


def _rows(ref, n):
    """The ``n`` rows of an ``(n, TILE)`` ref as ``(1, TILE)`` arrays."""
    return [ref[pl.ds(s, 1), :] for s in range(n)]


def _forward_kernel(step, *refs, n, chunk, save, acc, local=False, init=False):
    """One chunk of the forward. ``local``: no ``C`` and no ``y``, only the state at the end (the
    GPU split's first pass); ``init``: the state entering the first chunk is an input, not zero."""
    refs = iter(refs)
    u_ref, dt_ref, at_ref, b_ref = (next(refs) for _ in range(4))
    c_ref = None if local else next(refs)
    keep_ref = next(refs)
    h0_ref = next(refs) if init else None
    y_ref = None if local else next(refs)
    last_ref = next(refs)
    starts_ref = next(refs) if save else None
    carry_ref = next(refs)

    @pl.when(step == 0)
    def _init():
        carry_ref[...] = h0_ref[...].astype(acc) if init else jnp.zeros(carry_ref.shape, acc)

    if save:
        starts_ref[...] = carry_ref[...]
    a_rows = [x.astype(acc) for x in _rows(at_ref, n)]

    def position(t, h):
        row = pl.ds(t, 1)
        dt = dt_ref[row, :].astype(acc)
        dtu = dt * u_ref[row, :].astype(acc)
        keep = keep_ref[t, 0].astype(acc)
        new, y = [], 0.0
        for s in range(n):
            hs = keep * jnp.exp(dt * a_rows[s]) * h[s] + dtu * b_ref[t, s].astype(acc)
            if not local:
                y = y + c_ref[t, s].astype(acc) * hs
            new.append(hs)
        if not local:
            y_ref[row, :] = y.astype(y_ref.dtype)
        return tuple(new)

    h = lax.fori_loop(0, chunk, position, tuple(_rows(carry_ref, n)))
    for s in range(n):
        carry_ref[pl.ds(s, 1), :] = h[s]
        # Written every chunk: the last chunk's write is the final state.
        last_ref[pl.ds(s, 1), :] = h[s]


def _backward_kernel(step, u_ref, dt_ref, at_ref, b_ref, c_ref, keep_ref, gy_ref, start_ref, glast_ref,
                     du_ref, ddt_ref, db_ref, dc_ref, da_ref, mu_ref, dacc_ref, states_ref, prod_ref,
                     n, chunk, acc, device=False):
    """One chunk of the GPU backward (module docstring), in reverse order of chunks.

    ``states_ref`` and ``prod_ref`` are ``(rows, 136)`` scratches with row
    ``t * n + s``; the reverse walk writes the per-channel products,
    ``λ Δu`` (``dB``) over the state rows it has just consumed and ``h_t gy``
    (``dC``) into ``prod_ref``, and :func:`_sum_rows_into` sums them at the
    chunk's end into flat ``(rows,)`` blocks. ``device`` is False in interpret
    mode, where the fences are no-ops.
    """
    cols = pl.ds(0, u_ref.shape[-1])  # the row scratches are wider (ROW_PAD)

    def state_row(t, s):
        return pl.ds(t * n + s, 1), cols

    @pl.when(step == 0)
    def _init():
        mu_ref[...] = glast_ref[...].astype(acc)
        dacc_ref[...] = jnp.zeros(dacc_ref.shape, acc)

    a_rows = [x.astype(acc) for x in _rows(at_ref, n)]

    def load(t):
        row = pl.ds(t, 1)
        dt = dt_ref[row, :].astype(acc)
        return row, dt, u_ref[row, :].astype(acc), keep_ref[t, 0].astype(acc)

    # Recompute this chunk's states from the saved boundary state:
    # states[t] = h_{t-1}, the state before position t (h_t itself is
    # recomputed from it in the reverse walk: one entry less of scratch).
    def forward(t, h):
        _, dt, u, keep = load(t)
        new = []
        for s in range(n):
            states_ref[state_row(t, s)] = h[s]
            new.append(keep * jnp.exp(dt * a_rows[s]) * h[s] + dt * u * b_ref[t, s].astype(acc))
        return tuple(new)

    lax.fori_loop(0, chunk, forward, tuple(x.astype(acc) for x in _rows(start_ref, n)))

    def backward(i, carry):
        # mu: dL/dh_t from the positions after t (and the final-state cotangent).
        mu, da = carry
        t = chunk - 1 - i
        row, dt, u, keep = load(t)
        gy = gy_ref[row, :].astype(acc)
        dtu = dt * u
        lam_b, ddt_a, new_mu, new_da = 0.0, 0.0, [], []
        for s in range(n):
            lam = mu[s] + c_ref[t, s].astype(acc) * gy
            decay = keep * jnp.exp(dt * a_rows[s])
            b_s = b_ref[t, s].astype(acc)
            h_prev = states_ref[state_row(t, s)]
            # dL/d(dt A) through the decay: lam * h_{t-1} * decay.
            g = lam * h_prev * decay
            lam_b = lam_b + lam * b_s
            ddt_a = ddt_a + g * a_rows[s]
            # Each thread overwrites the row it has just read (its own channel).
            states_ref[state_row(t, s)] = lam * dtu
            prod_ref[state_row(t, s)] = (decay * h_prev + dtu * b_s) * gy
            new_mu.append(decay * lam)
            new_da.append(da[s] + g * dt)
        du_ref[row, :] = (lam_b * dt).astype(du_ref.dtype)
        ddt_ref[row, :] = (lam_b * u + ddt_a).astype(ddt_ref.dtype)
        return tuple(new_mu), tuple(new_da)

    mu, da = lax.fori_loop(0, chunk, backward, (tuple(_rows(mu_ref, n)), tuple(_rows(dacc_ref, n))))
    for s in range(n):
        mu_ref[pl.ds(s, 1), :] = mu[s]
        dacc_ref[pl.ds(s, 1), :] = da[s]
        da_ref[pl.ds(s, 1), :] = da[s]
    if device:
        plgpu.commit_smem()  # rows written by each channel's thread are read across threads below
    _sum_rows_into(db_ref, states_ref, u_ref.shape[-1], device)
    _sum_rows_into(dc_ref, prod_ref, u_ref.shape[-1], device)
    if device:
        plgpu.commit_smem()  # every thread done reading before the next chunk overwrites the rows


def _sum_rows_into(out_ref, rows_ref, width, device):
    """``out_ref[r] = Σ_{c < width} rows_ref[r, c]``: one chunk's sums over the tile's channels at once.

    On the device the ``(rows, 128)`` scratch is read back ``SUM_ROWS`` rows at
    a time in the WGMMA register layout, where each row lies within one warp:
    the sum is in-thread adds and shuffles, with no barrier (the row-by-row
    ``jnp.sum`` of a ``(1, 128)`` array costs a cross-warp round trip through
    shared memory and barriers each). The caller fences before and after.
    ``width``: the channels (the rows are padded beyond them).
    """
    rows = rows_ref.shape[0]
    if not device:
        out_ref[...] = jnp.sum(rows_ref[:, pl.ds(0, width)], axis=1).astype(out_ref.dtype)
        return
    for g in range(rows // SUM_ROWS):
        group = rows_ref.at[pl.ds(g * SUM_ROWS, SUM_ROWS), pl.ds(0, width)]
        if _LOAD_TAKES_INDEX:
            tile = plgpu.load(group, (), layout=plgpu.Layout.WGMMA)
        else:
            tile = plgpu.load(group, layout=plgpu.Layout.WGMMA)
        out_ref[pl.ds(g * SUM_ROWS, SUM_ROWS)] = jnp.sum(tile, axis=1).astype(out_ref.dtype)


# --- pallas_calls on the kernel layout ------------------------------------------
# u, dt, gy: (b, L, D); at: (n, D); bt, ct: (b, g, L, n); keep: (b, L, KEEP_LANES);
# states: (b, L / chunk, n, D); last, g_last, dA: (b, n, D). L, D padded.


def _specs(shape, n, chunk, per_group, reverse=False):
    """BlockSpecs of the kernel layout for grid (batch, tile, chunk)."""
    batch, length, width = shape
    chunks = length // chunk

    def c(k):
        return chunks - 1 - k if reverse else k

    return {
        "seq": pl.BlockSpec((None, chunk, TILE), lambda i, j, k: (i, c(k), j)),
        "a": pl.BlockSpec((n, TILE), lambda i, j, k: (0, j)),
        # lax.div (truncating; tile indices are >= 0): when these specs served
        # TPU too, //'s floor division (through sign()) did not lower for Mosaic
        # TPU without a TPU attached; kept rather than re-checked on Mosaic GPU.
        "bc": pl.BlockSpec((None, None, chunk, n), lambda i, j, k: (i, lax.div(j, jnp.asarray(per_group, j.dtype)), c(k), 0)),
        "keep": pl.BlockSpec((None, chunk, KEEP_LANES), lambda i, j, k: (i, c(k), 0)),
        "state": pl.BlockSpec((None, n, TILE), lambda i, j, k: (i, 0, j)),
        "start": pl.BlockSpec((None, None, n, TILE), lambda i, j, k: (i, c(k), 0, j)),
        "grid": (batch, width // TILE, chunks),
    }


def _widened(*arrays):
    """16-bit float arrays as float32 (the TPU kernel's inputs; :func:`_forward_call`)."""
    return [x.astype(jnp.float32) if jnp.dtype(x.dtype).itemsize < 4 else x for x in arrays]


def _forward_call(kind, interpret, n, chunk, per_group, save, u, dt, at, bt, ct, keep):
    batch, length, width = u.shape
    if kind == "tpu":
        # The states on sublanes (selective_scan_tpu), on float32 inputs: bf16
        # rows at dynamic offsets did not compile for TPU (libtpu, rows layout:
        # "cannot statically prove that index in dimension 1 is a multiple of
        # 8"), and the op's front door hands the kernel float32 anyway.
        out = selective_scan_tpu.forward(interpret, n, chunk, per_group, save, TILE, *_widened(u, dt), at,
                                         *_widened(bt, ct), keep)
        return [out[0].astype(u.dtype)] + list(out[1:])
    segments = split_for(batch * (width // TILE), length, chunk)
    if segments > 1:
        return _split_forward(interpret, n, chunk, per_group, save, segments, u, dt, at, bt, ct, keep)
    return _forward_pass(interpret, n, chunk, per_group, save, u, dt, at, bt, ct, keep)


def _forward_pass(interpret, n, chunk, per_group, save, u, dt, at, bt, ct, keep, h0=None, local=False):
    """One GPU forward kernel over the whole grid: ``[y], last[, starts]`` (no ``y`` when ``local``, and
    ``ct`` is then not read); ``h0`` ``(b, n, D)``: the state entering each row (None: zero)."""
    batch, length, width = u.shape
    acc = jnp.result_type(jnp.float32, u.dtype)
    sp = _specs(u.shape, n, chunk, per_group)
    init = h0 is not None
    ins = [sp["seq"], sp["seq"], sp["a"], sp["bc"]] + ([] if local else [sp["bc"]]) + [sp["keep"]]
    ins += [sp["state"]] if init else []
    args = [u, dt, at, bt] + ([] if local else [ct]) + [keep] + ([h0] if init else [])
    out_specs = ([] if local else [sp["seq"]]) + [sp["state"]] + ([sp["start"]] if save else [])
    out_shape = ([] if local else [out_struct(u.shape, u.dtype, u)]) + [out_struct((batch, n, width), acc, u)]
    if save:
        out_shape.append(out_struct((batch, length // chunk, n, width), acc, u))
    return grid_call(
        "gpu", interpret,
        functools.partial(_forward_kernel, n=n, chunk=chunk, save=save, acc=acc, local=local, init=init),
        grid=sp["grid"], in_specs=ins, out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=[((n, TILE), acc)],
        gpu_stages=2,
    )(*args)


def _split_forward(interpret, n, chunk, per_group, save, segments, u, dt, at, bt, ct, keep):
    """The GPU forward with the sequence cut into ``segments`` runs of extra CTAs (module docstring).

    Pass 1 runs each segment from a zero state and keeps only its end state
    ``e_s``; the state entering segment ``s`` is then ``h_s = P_{s-1} h_{s-1}
    + e_{s-1}`` (:func:`seqjax.kernels.sequence_split.segment_decay`), a scan over the segments in XLA;
    pass 2 runs every segment again from its ``h_s`` and writes ``y`` (and the
    chunk states).
    """
    batch, length, width = u.shape
    acc = jnp.result_type(jnp.float32, u.dtype)
    span, (su, sdt), (sbt, sct), skeep, _ = cut_segments(segments, chunk, length, (u, dt), (bt, ct), keep)
    (ends,) = _forward_pass(interpret, n, chunk, per_group, False, su, sdt, at, sbt, None, skeep, local=True)

    def enter(h, xs):  # the state entering the next segment
        end, p = xs
        return p * h + end, h

    decay = segment_decay(at, sdt, skeep, acc)
    # Inside shard_map the carry must vary over the mesh axes the segments do.
    (zero,) = match_vma((jnp.zeros((batch, n, width), acc),), ends, decay)
    _, h0 = lax.scan(enter, zero, (per_segment(ends, segments), per_segment(decay, segments)))
    outs = _forward_pass(interpret, n, chunk, per_group, save, su, sdt, at, sbt, sct, skeep,
                         h0=jnp.swapaxes(h0, 0, 1).reshape(batch * segments, n, width))
    y = outs[0].reshape(batch, span * segments, width)[:, :length]
    last = outs[1].reshape(batch, segments, n, width)[:, -1]
    if not save:
        return [y, last]
    return [y, last, outs[2].reshape(batch, -1, n, width)[:, :length // chunk]]


def _adjoint_kernel(step, dt_ref, at_ref, c_ref, keep_ref, gy_ref, end_ref, mu_ref, *, n, chunk, acc):
    """One chunk (in reverse) of the state adjoint alone, from zero after the row's last position:
    ``μ_{t-1} = keep_t exp(Δ_t A) (μ_t + C_t gy_t)``; ``end_ref``: ``μ`` before the row's first position."""
    @pl.when(step == 0)
    def _init():
        mu_ref[...] = jnp.zeros(mu_ref.shape, acc)

    a_rows = [x.astype(acc) for x in _rows(at_ref, n)]

    def back(i, mu):
        t = chunk - 1 - i
        row = pl.ds(t, 1)
        dt = dt_ref[row, :].astype(acc)
        gy = gy_ref[row, :].astype(acc)
        keep = keep_ref[t, 0].astype(acc)
        return tuple(keep * jnp.exp(dt * a_rows[s]) * (mu[s] + c_ref[t, s].astype(acc) * gy) for s in range(n))

    mu = lax.fori_loop(0, chunk, back, tuple(_rows(mu_ref, n)))
    for s in range(n):
        mu_ref[pl.ds(s, 1), :] = mu[s]
        end_ref[pl.ds(s, 1), :] = mu[s]


def _split_backward(interpret, n, chunk, per_group, segments, u, dt, at, bt, ct, keep, gy, starts, g_last):
    """The GPU backward with the sequence cut into ``segments`` runs of extra CTAs (module docstring).

    The adjoint entering a segment from the right is linear in the one entering
    the segment after it: ``M_s = P_{s+1} M_{s+1} + l_{s+1}``, ``M_{S-1} =
    g_last``, where ``l_s`` is segment ``s``'s adjoint walked from zero (pass 1,
    :func:`_adjoint_kernel`: no states, no products) and ``P_s`` its decay
    product. Pass 2 is the backward kernel on every segment from its ``M_s``
    and the forward's chunk states; ``dA`` is summed over the segments.
    """
    batch, length, width = u.shape
    acc = jnp.result_type(jnp.float32, u.dtype)
    span, (su, sdt, sgy), (sbt, sct), skeep, sstarts = cut_segments(segments, chunk, length, (u, dt, gy), (bt, ct),
                                                                 keep, starts)
    sp = _specs(su.shape, n, chunk, per_group, reverse=True)
    (local,) = grid_call(
        "gpu", interpret, functools.partial(_adjoint_kernel, n=n, chunk=chunk, acc=acc),
        grid=sp["grid"], in_specs=[sp["seq"], sp["a"], sp["bc"], sp["keep"], sp["seq"]],
        out_specs=[sp["state"]], out_shape=[out_struct((batch * segments, n, width), acc, u)],
        scratch_shapes=[((n, TILE), acc)], gpu_stages=2,
    )(sdt, at, sct, skeep, sgy)

    def leave(m, xs):  # the adjoint leaving the segment before
        l, p = xs
        m = p * m + l
        return m, m

    decay = segment_decay(at, sdt, skeep, acc)
    (g_last,) = match_vma((g_last.astype(acc),), local, decay)  # a carry inside shard_map: see _split_forward
    _, before = lax.scan(leave, g_last, (per_segment(local, segments)[1:], per_segment(decay, segments)[1:]),
                         reverse=True)
    mu = jnp.concatenate([before, g_last[None]])  # M_0 .. M_{S-1}
    du, ddt, db, dc, da = _backward_pass(interpret, n, chunk, per_group, su, sdt, at, sbt, sct, skeep, sgy,
                                         sstarts, jnp.swapaxes(mu, 0, 1).reshape(batch * segments, n, width))
    du, ddt = (x.reshape(batch, span * segments, width)[:, :length] for x in (du, ddt))
    tiles = db.shape[1]
    db, dc = (jnp.swapaxes(x.reshape(batch, segments, tiles, span, n), 1, 2).reshape(batch, tiles, -1, n)[:, :, :length]
              for x in (db, dc))
    return [du, ddt, db, dc, da.reshape(batch, segments, n, width).sum(1)]


def _backward_call(kind, interpret, n, chunk, per_group, u, dt, at, bt, ct, keep, gy, starts, g_last):
    batch, length, width = u.shape
    if kind == "tpu":  # float32 inputs, as the forward's (_forward_call); the states on sublanes
        return selective_scan_tpu.backward(interpret, n, chunk, per_group, TILE, *_widened(u, dt), at,
                                           *_widened(bt, ct), keep, *_widened(gy), starts, g_last)
    segments = split_for(batch * (width // TILE), length, chunk)
    if segments > 1:
        return _split_backward(interpret, n, chunk, per_group, segments, u, dt, at, bt, ct, keep, gy, starts, g_last)
    return _backward_pass(interpret, n, chunk, per_group, u, dt, at, bt, ct, keep, gy, starts, g_last)


def _backward_pass(interpret, n, chunk, per_group, u, dt, at, bt, ct, keep, gy, starts, g_last):
    """The GPU backward kernel over the whole grid: ``du, dΔ, dB, dC`` per tile, ``dA`` per row."""
    batch, length, width = u.shape
    acc = jnp.result_type(jnp.float32, u.dtype)
    sp = _specs(u.shape, n, chunk, per_group, reverse=True)
    tiles, chunks = width // TILE, length // chunk
    ins = [sp["seq"], sp["seq"], sp["a"], sp["bc"], sp["bc"], sp["keep"], sp["seq"], sp["start"], sp["state"]]
    seqs = [out_struct(u.shape, acc, u)] * 2
    last = out_struct((batch, n, width), acc, u)
    # dB, dC per chunk as flat (position * n + state) rows, padded to whole sum groups.
    rows = round_up(chunk * n, SUM_ROWS)
    flat = pl.BlockSpec((None, None, None, rows), lambda i, j, k: (i, j, chunks - 1 - k, 0))
    part = out_struct((batch, tiles, chunks, rows), acc, u)
    du, ddt, db, dc, da = grid_call(
        "gpu", interpret,
        functools.partial(_backward_kernel, n=n, chunk=chunk, acc=acc, device=not interpret),
        grid=sp["grid"], in_specs=ins,
        out_specs=[sp["seq"], sp["seq"], flat, flat, sp["state"]],
        out_shape=seqs + [part, part, last],
        scratch_shapes=[((n, TILE), acc), ((n, TILE), acc), ((rows, TILE + ROW_PAD), acc),
                        ((rows, TILE + ROW_PAD), acc)],
        # One stage: the two row scratches leave no room to double-buffer (docstring).
        gpu_stages=1,
    )(u, dt, at, bt, ct, keep, gy, starts, g_last)
    db, dc = (x[..., :chunk * n].reshape(batch, tiles, length, n) for x in (db, dc))
    return [du, ddt, db, dc, da]


# --- custom_vjp on the kernel layout --------------------------------------------

# Which kernel arguments lead with the batch: all but A (``at``), shared by the rows.
_BATCHED = (True, True, False, True, True, True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _core(u, dt, at, bt, ct, keep, static, interpret):
    n, chunk, per_group = static

    def build(kind, interp):
        return functools.partial(_forward_call, kind, interp, n, chunk, per_group, False)

    # A tuple, as _core_fwd's primal: a list here made custom_vjp reject the pair when a model
    # was differentiated through it (structure mismatch, seen training a Mamba model).
    y, last = on_platform(build, u, dt, at, bt, ct, keep, interpret=interpret, batched=_BATCHED)
    return y, last


def _core_fwd(u, dt, at, bt, ct, keep, static, interpret):
    n, chunk, per_group = static

    def build(kind, interp):
        return functools.partial(_forward_call, kind, interp, n, chunk, per_group, True)

    y, last, starts = on_platform(build, u, dt, at, bt, ct, keep, interpret=interpret, batched=_BATCHED)
    return (y, last), (u, dt, at, bt, ct, keep, starts)


def _core_bwd(static, interpret, res, cts):
    n, chunk, per_group = static
    u, dt, at, bt, ct, keep, starts = res
    gy, g_last = cts

    def build(kind, interp):
        return functools.partial(_backward_call, kind, interp, n, chunk, per_group)

    du, ddt, db, dc, da = on_platform(build, u, dt, at, bt, ct, keep, gy, starts, g_last, interpret=interpret,
                                      batched=_BATCHED + (True,) * 3)
    batch, tiles, length, _ = db.shape
    groups = bt.shape[1]
    # Per-tile partial sums of dB, dC -> per group; dA summed over the batch.
    db, dc = (x.reshape(batch, groups, tiles // groups, length, n).sum(2).astype(bt.dtype) for x in (db, dc))
    return (du.astype(u.dtype), ddt.astype(dt.dtype), da.sum(0).astype(at.dtype), db, dc.astype(ct.dtype),
            jnp.zeros_like(keep))


_core.defvjp(_core_fwd, _core_bwd)


# --- public function: the op's layout <-> the kernel layout ------------------------


def selective_scan_pallas(u, dt, A, B, C, segment_ids=None, *, interpret: str | None = None):
    """Mamba-1's selective scan core as Pallas kernels (differentiable in all array arguments).

    Args:
      u: inputs ``(b, l, d)``.
      dt: step sizes ``(b, l, d)``, after bias and softplus.
      A: ``(d, n)``.
      B, C: ``(b, l, g, n)``; channel ``i`` uses group ``i // (d // g)``.
      segment_ids: ``(b, l)`` integers or None; the state restarts where the id changes.
      interpret: None (the platform's kernel; interpreted GPU kernel on CPU),
        or ``"gpu"`` / ``"tpu"`` to interpret that kernel (tests).

    Returns:
      ``(y, last_state)``: ``y`` ``(b, l, d)`` in ``u``'s dtype, ``last_state``
      ``(b, d, n)`` in float32 (float64 for float64 inputs).
    """
    batch, length, d = u.shape
    groups, true_n = B.shape[2], B.shape[3]
    n = round_up(true_n, STATE_MULTIPLE)
    A, B, C = (pad_axis(x, STATE_MULTIPLE, axis=x.ndim - 1) for x in (A, B, C))
    per = d // groups
    padded_per = round_up(per, TILE)
    chunk = chunk_for(n)
    acc = jnp.result_type(jnp.float32, u.dtype)

    def channels(x):  # (b, l, d) -> (b, L, g * per_padded)
        x = pad_axis(x.reshape(batch, length, groups, per), TILE, axis=3)
        return pad_axis(x, chunk, axis=1).reshape(batch, -1, groups * padded_per)

    at = pad_axis(A.reshape(groups, per, n), TILE, axis=1).reshape(groups * padded_per, n).T
    bt, ct = (pad_axis(jnp.transpose(x, (0, 2, 1, 3)), chunk, axis=2) for x in (B, C))
    if segment_ids is None:
        keep = jnp.ones((batch, length), acc)
    else:
        keep = 1 - segment_starts(jnp.asarray(segment_ids)).astype(acc)
    keep = pad_axis(keep, chunk, axis=1, value=1)
    keep = jnp.broadcast_to(keep[..., None], keep.shape + (KEEP_LANES,))
    static = (n, chunk, padded_per // TILE)
    args = vary_alike(channels(u), channels(dt), at, bt, ct, keep)  # before the custom_vjp: see vary_alike
    y, last = _core(*args, static, interpret)
    y = y.reshape(batch, -1, groups, padded_per)[:, :length, :, :per].reshape(batch, length, d)
    last = last.reshape(batch, n, groups, padded_per)[:, :true_n, :, :per]
    return y, jnp.transpose(last, (0, 2, 3, 1)).reshape(batch, d, true_n)


@dispatch.register("selective_scan", "pallas")
def _pallas(u, dt, A, B, C, segment_ids, chunk_size):
    del chunk_size  # the kernel's chunk follows from n (module docstring)
    return selective_scan_pallas(u, dt, A, B, C, segment_ids)


# TPU: not yet timed on a device; chosen because the kernel never writes the
# (b, l, d, n) states the XLA paths materialise. GPU: measured on an H200
# (benchmarks/results/h200-kernels.json), the kernel's forward is 2.0x the
# XLA chunked path's but its forward+backward 0.77x, so auto keeps the XLA
# path there (the ops' table) until the backward is fixed.
dispatch.add_rules(
    dispatch.Rule("selective_scan", "tpu", "pallas", when=lambda s: s["n"] <= selective_scan_tpu.MAX_STATES,
                  why="states stay on chip: ~the bytes floor vs ~10x for the XLA paths' (b, l, d, n) states; "
                      "not yet timed on a TPU; compiled by libtpu for v5e up to n = 64 (n = 128 runs out of VMEM)"),
)
