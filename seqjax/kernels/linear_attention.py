"""Pallas kernel for causal chunked linear attention (no decay, per-head decay, GLA).

The chunkwise form of :mod:`seqjax.ops.linear_attention` in two passes, as
flash-linear-attention lays out GLA:

  1. **states**: the chunk-boundary states ``h`` (one ``(dv, dk)`` float32
     matrix per chunk: the state *entering* the chunk) and the final state,
     ``S <- exp(total) * S + vᵀ (k * exp(to_end))`` chunk after chunk;
  2. **outputs**: every chunk in parallel,
     ``o = (q * exp(from_start)) hᵀ + (q kᵀ ⊙ decay mask) v``.

The state is kept transposed, ``(dv, dk)``, so that the decay of the key
channels scales its lanes and every contraction is ``a @ b``, ``a @ bᵀ`` or
``aᵀ @ b`` (all three lower on Triton and Mosaic TPU).

Numerics (issue 13, item 4): no decay is ever a difference of running sums.
Each exponent is a masked sum of genuine log decays, all ``<= 0``:
``from_start[t] = Σ_{r≤t} g_r`` and ``to_end[s] = Σ_{s<r<C} g_r`` are products
of a 0/1 matrix with ``g`` at ``precision=HIGHEST`` (IEEE float32 on GPU, six
bf16 passes on TPU), the scalar-decay mask ``Σ_{s<r≤t} g_r`` is the segment sum
of :func:`seqjax.ops.ssd._segsum` (a 0/1 lower-triangular matrix times the
strictly-masked ``g``), and the per-channel (GLA) mask is built one query row
``t`` at a time by a running sum ``R[s] += g_t (s < t)`` so that
``R[s] = Σ_{s<r≤t} g_r`` exactly term by term (``C`` steps of ``C x dk``
exponentials per chunk: exact, and 4-8x more exponentials than FLA's
sub-chunk factorisation, which needs a difference of cumulative sums).
Segments are folded into the decay: a segment start gets log decay ``-1e30``
(finite, so no ``inf - inf``), whose ``exp`` clears the state and every mask
entry across the boundary; the initial state belongs to the first segment.

Blocks: chunk ``C = 64`` (flash-linear-attention's GLA chunk; ``C x C`` scores
and ``C x dk`` decays stay small next to the ``(dv, dk)`` state).
  * **GPU** (Triton backend: the Mosaic GPU backend of JAX 0.10/0.11 does not
    lower ``dot_general`` in a plain ``pallas_call`` body — it needs warpgroup
    ``wgmma`` with explicit shared-memory layouts — so this kernel uses
    ``compiler_params=pallas.triton.CompilerParams``): the states pass runs a
    grid ``(b, h, dv / 64)``, each program walking its chunks with
    ``fori_loop`` and the state in registers (a ``64 x dk`` float32 tile);
    the outputs pass a grid ``(b, h, chunks)``. ``dk`` and ``dv`` are padded
    with zeros to powers of two >= 16 (Triton's tensor shapes; ``tl.dot``'s
    minimum).
  * **TPU** (Mosaic TPU): the states pass has the grid ``(b, h, chunks)`` with
    the chunk axis last and ``"arbitrary"``, the state in a VMEM scratch that
    persists across it; the outputs pass the same grid, all ``"parallel"``.
    Blocks are ``(C, dk)``, ``(C, dv)``, ``(C, 1 or dk)`` and ``(dv, dk)``:
    ``C = 64`` is a multiple of 8 and the last dims are whole.

Matmuls take the inputs' dtype (bf16 inputs use bf16 tensor cores) and
accumulate in float32; float32 inputs run at ``precision=HIGHEST`` (IEEE on
GPU, not TF32), as the XLA path does, so the kernel is held to float32
tolerances. The kernel computes in float32 whatever the inputs (no float64 on
the accelerators).

Gradients: ``custom_vjp`` whose backward recomputes from the saved inputs with
the XLA ``"chunked"`` implementation (its autodiff): the forward runs the
kernel, the backward runs XLA. A backward kernel is not written yet.

Reached as ``linear_attention(..., impl="pallas")`` for causal calls; the
bidirectional form (``causal=False``) is the op's own: einsums without
segments, two causal kernel runs with segments. ``chunk_size`` is ignored by
the kernel (its block is ``C``).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pl_triton

from seqjax.kernels.common import on_platform
from seqjax.ops import dispatch
from seqjax.ops.common import pad_axis

CHUNK = 64
# Log decay of a segment start: exp gives exactly 0, and being finite it
# never meets another infinity (sums of up to a chunk of them stay < 1e33).
RESET = -1e30
# Value tile of the GPU states pass: a 64 x dk float32 state in registers.
GPU_VALUE_TILE = 64

_NN = (((1,), (0,)), ((), ()))  # a @ b
_NT = (((1,), (1,)), ((), ()))  # a @ bᵀ
_TN = (((0,), (0,)), ((), ()))  # aᵀ @ b


def _dot(a, b, dims):
    """``a·b`` accumulated in float32; float32 operands at full precision."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else lax.Precision.DEFAULT
    return lax.dot_general(a, b, dims, precision=precision,
                           preferred_element_type=jnp.float32)


def _iota(shape, axis):
    return lax.broadcasted_iota(jnp.int32, shape, axis)


def _decay_sums(g, dk):
    """``(from_start, to_end, total)`` of a chunk's log decays ``g (C, e)``.

    ``from_start[t] = Σ_{r≤t} g_r`` and ``to_end[s] = Σ_{s<r<C} g_r``, both
    ``(C, dk)``; ``total = Σ_r g_r`` ``(1, dk)``. 0/1 matrices times ``g`` at
    full precision: sums of genuine terms, no differences.
    """
    chunk = g.shape[0]
    g = jnp.broadcast_to(g, (chunk, dk))
    t, r = _iota((chunk, chunk), 0), _iota((chunk, chunk), 1)
    from_start = _dot((r <= t).astype(jnp.float32), g, _NN)
    to_end = _dot((r > t).astype(jnp.float32), g, _NN)
    return from_start, to_end, jnp.sum(g, axis=0, keepdims=True)


def _next_state(state, k, v, g):
    """The state ``(dv, dk)`` leaving a chunk that ``state`` enters."""
    if g is None:
        return state + _dot(v, k, _TN)
    _, to_end, total = _decay_sums(g.astype(jnp.float32), k.shape[1])
    k_end = (k.astype(jnp.float32) * jnp.exp(to_end)).astype(k.dtype)
    return state * jnp.exp(total) + _dot(v, k_end, _TN)


def _chunk_output(q, k, v, g, state):
    """Outputs ``(C, dv)`` of one chunk entered by ``state`` ``(dv, dk)``."""
    chunk, dk = q.shape
    causal = _iota((chunk, chunk), 0) >= _iota((chunk, chunk), 1)
    if g is None:
        scores = jnp.where(causal, _dot(q, k, _NT), 0.0)
        return _dot(q, state.astype(q.dtype), _NT) + _dot(scores.astype(v.dtype), v, _NN)
    g = g.astype(jnp.float32)
    from_start, _, _ = _decay_sums(g, dk)
    q_in = (q.astype(jnp.float32) * jnp.exp(from_start)).astype(q.dtype)
    o = _dot(q_in, state.astype(q.dtype), _NT)
    if g.shape[1] == 1:
        # Segment sum Σ_{s<r≤t} g_r: lower-triangular ones times g masked to r > s.
        t, s = _iota((chunk, chunk), 0), _iota((chunk, chunk), 1)
        after_s = jnp.where(t > s, jnp.broadcast_to(g, (chunk, chunk)), 0.0)
        segsum = _dot((s <= t).astype(jnp.float32), after_s, _NN)
        scores = _dot(q, k, _NT) * jnp.exp(jnp.where(causal, segsum, -jnp.inf))
        return o + _dot(scores.astype(v.dtype), v, _NN)
    return o + _dot(_channel_scores_t(q, k, g).astype(v.dtype), v, _TN)


def _channel_scores_t(q, k, g):
    """Transposed GLA scores ``A[s, t] = Σ_j q_t[j] k_s[j] exp(Σ_{s<r≤t} g_r[j])``, 0 for s > t.

    One query row per step; ``R[s] = Σ_{s<r≤t} g_r`` is carried as a running
    sum, so each exponent is a sum of genuine terms. Rows of q and g are
    picked with masked sums (static shapes on both backends).
    """
    chunk, dk = q.shape
    rows = _iota((chunk, dk), 0)
    lanes = _iota((chunk, chunk), 1)
    qf, kf = q.astype(jnp.float32), k.astype(jnp.float32)

    def row(t, carry):
        running, scores_t = carry
        pick = rows == t
        g_t = jnp.sum(jnp.where(pick, g, 0.0), axis=0, keepdims=True)
        q_t = jnp.sum(jnp.where(pick, qf, 0.0), axis=0, keepdims=True)
        running = running + jnp.where(rows < t, g_t, 0.0)
        decayed = kf * jnp.exp(jnp.where(rows <= t, running, -jnp.inf))
        column = jnp.sum(decayed * q_t, axis=1, keepdims=True)
        return running, jnp.where(lanes == t, column, scores_t)

    init = (jnp.zeros((chunk, dk), jnp.float32), jnp.zeros((chunk, chunk), jnp.float32))
    return lax.fori_loop(0, chunk, row, init)[1]


# --- pallas_call per platform -------------------------------------------------


def _pow2(n):
    return max(16, 1 << (n - 1).bit_length())


def _gpu(q, k, v, g, s0, *, chunk, heads_per_group, interpret):
    """Triton kernels; q, k ``(b, G, L, dk)``, v ``(b, H, L, dv)``, g ``(b, H, L, e)`` or None, s0 ``(b, H, dv, dk)``."""
    batch, heads, length, dv = v.shape
    dk = q.shape[-1]
    # Triton tensors have power-of-two shapes; zero channels change nothing.
    pk, pv = _pow2(dk), _pow2(dv)
    q, k = (jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pk - dk))) for x in (q, k))
    v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, pv - dv)))
    s0 = jnp.pad(s0, ((0, 0), (0, 0), (0, pv - dv), (0, pk - dk)))
    if g is not None and g.shape[-1] != 1:
        g = jnp.pad(g, ((0, 0), (0, 0), (0, 0), (0, pk - dk)))
    n = length // chunk
    tile = min(pv, GPU_VALUE_TILE)
    grp = heads_per_group
    has_g = g is not None
    e = g.shape[-1] if has_g else 0

    def states_kernel(*refs):
        k_ref, v_ref = refs[:2]
        g_ref = refs[2] if has_g else None
        s0_ref, states_ref, final_ref = refs[2 + has_g:]

        def step(i, state):
            rows = pl.ds(pl.multiple_of(i * chunk, chunk), chunk)
            states_ref[i] = state
            gi = g_ref[rows, :] if has_g else None
            return _next_state(state, k_ref[rows, :], v_ref[rows, :], gi)

        final_ref[...] = lax.fori_loop(0, n, step, s0_ref[...].astype(jnp.float32))

    seq = lambda d: pl.BlockSpec((None, None, length, d), lambda b, h, j: (b, h, 0, 0))  # noqa: E731
    grouped = pl.BlockSpec((None, None, length, pk), lambda b, h, j: (b, h // grp, 0, 0))
    value_tile = pl.BlockSpec((None, None, length, tile), lambda b, h, j: (b, h, 0, j))
    state_tile = pl.BlockSpec((None, None, tile, pk), lambda b, h, j: (b, h, j, 0))
    params = pl_triton.CompilerParams(num_warps=4, num_stages=2)
    states, final = pl.pallas_call(
        states_kernel,
        grid=(batch, heads, pv // tile),
        in_specs=[grouped, value_tile] + ([seq(e)] if has_g else []) + [state_tile],
        out_specs=[pl.BlockSpec((None, None, n, tile, pk), lambda b, h, j: (b, h, 0, j, 0)), state_tile],
        out_shape=[jax.ShapeDtypeStruct((batch, heads, n, pv, pk), jnp.float32),
                   jax.ShapeDtypeStruct((batch, heads, pv, pk), jnp.float32)],
        compiler_params=params,
        interpret=interpret,
    )(k, v, *([g] if has_g else []), s0)
    o = _outputs(q, k, v, g, states, chunk=chunk, heads_per_group=grp, interpret=interpret,
                 compiler_params=pl_triton.CompilerParams(num_warps=8, num_stages=2))
    return o[..., :dv], final[:, :, :dv, :dk]


def _tpu(q, k, v, g, s0, *, chunk, heads_per_group, interpret):
    """Mosaic TPU kernels; shapes as :func:`_gpu`."""
    batch, heads, length, dv = v.shape
    dk = q.shape[-1]
    n = length // chunk
    grp = heads_per_group
    has_g = g is not None

    def states_kernel(*refs):
        k_ref, v_ref = refs[:2]
        g_ref = refs[2] if has_g else None
        s0_ref, states_ref, final_ref, carry = refs[2 + has_g:]
        i = pl.program_id(2)

        @pl.when(i == 0)
        def _():
            carry[...] = s0_ref[...].astype(jnp.float32)

        states_ref[...] = carry[...]
        carry[...] = _next_state(carry[...], k_ref[...], v_ref[...], g_ref[...] if has_g else None)

        @pl.when(i == n - 1)
        def _():
            final_ref[...] = carry[...]

    chunk_of = lambda d: pl.BlockSpec((None, None, chunk, d), lambda b, h, i: (b, h, i, 0))  # noqa: E731
    grouped = pl.BlockSpec((None, None, chunk, dk), lambda b, h, i: (b, h // grp, i, 0))
    whole_state = pl.BlockSpec((None, None, dv, dk), lambda b, h, i: (b, h, 0, 0))
    in_specs = [grouped, chunk_of(dv)] + ([chunk_of(g.shape[-1])] if has_g else []) + [whole_state]
    states, final = pl.pallas_call(
        states_kernel,
        grid=(batch, heads, n),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, None, None, dv, dk), lambda b, h, i: (b, h, i, 0, 0)), whole_state],
        out_shape=[jax.ShapeDtypeStruct((batch, heads, n, dv, dk), jnp.float32),
                   jax.ShapeDtypeStruct((batch, heads, dv, dk), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((dv, dk), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
    )(k, v, *([g] if has_g else []), s0)
    params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))
    o = _outputs(q, k, v, g, states, chunk=chunk, heads_per_group=grp, interpret=interpret,
                 compiler_params=params)
    return o, final


def _outputs(q, k, v, g, states, *, chunk, heads_per_group, interpret, compiler_params):
    """The outputs pass (both platforms): grid ``(b, h, chunks)``, every chunk independent."""
    batch, heads, length, dv = v.shape
    dk = q.shape[-1]
    has_g = g is not None

    def kernel(*refs):
        q_ref, k_ref, v_ref = refs[:3]
        g_val = refs[3][...] if has_g else None
        states_ref, o_ref = refs[3 + has_g:]
        o_ref[...] = _chunk_output(q_ref[...], k_ref[...], v_ref[...], g_val, states_ref[...]).astype(o_ref.dtype)

    chunk_of = lambda d: pl.BlockSpec((None, None, chunk, d), lambda b, h, i: (b, h, i, 0))  # noqa: E731
    grouped = pl.BlockSpec((None, None, chunk, dk), lambda b, h, i: (b, h // heads_per_group, i, 0))
    in_specs = [grouped, grouped, chunk_of(dv)] + ([chunk_of(g.shape[-1])] if has_g else [])
    in_specs.append(pl.BlockSpec((None, None, None, dv, dk), lambda b, h, i: (b, h, i, 0, 0)))
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, length // chunk),
        in_specs=in_specs,
        out_specs=chunk_of(dv),
        out_shape=jax.ShapeDtypeStruct((batch, heads, length, dv), jnp.float32),
        compiler_params=compiler_params,
        interpret=interpret,
    )(q, k, v, *([g] if has_g else []), states)


def chunk_kernel(q, k, v, g, s0, *, chunk, heads_per_group=1, interpret=None):
    """Both passes on the platform's kernels, in the kernels' layout.

    Shared with :mod:`seqjax.kernels.ssd` (SSD is this with a per-head decay,
    ``q = C``, ``k = B`` shared by a group of heads, ``v = dt·x``).

    Args:
      q: ``(b, G, L, dk)`` queries, ``L`` a multiple of ``chunk``.
      k: ``(b, G, L, dk)`` keys.
      v: ``(b, H, L, dv)`` values; head ``i`` reads q/k group ``i // heads_per_group``.
      g: ``(b, H, L, 1 or dk)`` log decays (segment starts at ``RESET``), or None.
      s0: ``(b, H, dv, dk)`` transposed initial state.
      chunk: the block length ``C``.
      heads_per_group: ``H // G``.
      interpret: as :func:`seqjax.kernels.common.on_platform`.

    Returns:
      ``(o, final)``: ``(b, H, L, dv)`` and ``(b, H, dv, dk)``, float32.
    """
    def build(kind, interp):
        body = _gpu if kind == "gpu" else _tpu
        return functools.partial(body, chunk=chunk, heads_per_group=heads_per_group, interpret=interp)

    if g is None:
        return on_platform(lambda kind, interp: lambda *a: build(kind, interp)(*a[:3], None, a[3]),
                           q, k, v, s0, interpret=interpret)
    return on_platform(build, q, k, v, g, s0, interpret=interpret)


def fold_segments(g, run, shape):
    """Log decays ``(b, l, h, e)`` with ``RESET`` where a segment starts; None if neither is given.

    Args:
      g: ``(b, l, h, e)`` log decays or None.
      run: ``(b, l)`` segment run indices or None.
      shape: ``(b, l, h)``.
    """
    if run is None:
        return g
    starts = jnp.concatenate([jnp.zeros_like(run[:, :1], bool), run[:, 1:] != run[:, :-1]], axis=1)
    base = jnp.zeros(shape + (1,), jnp.float32) if g is None else g.astype(jnp.float32)
    return jnp.where(starts[:, :, None, None], RESET, base)


# --- custom_vjp and the op's implementation -----------------------------------


def _forward(q, k, v, g, s0, run, chunk, interpret):
    batch, length, heads, _ = q.shape
    g = fold_segments(g, run, (batch, length, heads))
    to_kernel = lambda x: jnp.swapaxes(pad_axis(x, chunk, axis=1), 1, 2)  # noqa: E731
    o, final = chunk_kernel(
        to_kernel(q), to_kernel(k), to_kernel(v), None if g is None else to_kernel(g.astype(jnp.float32)),
        jnp.swapaxes(s0, 2, 3).astype(jnp.float32), chunk=chunk, interpret=interpret)
    return jnp.swapaxes(o, 1, 2)[:, :length], jnp.swapaxes(final, 2, 3)


def _xla(q, k, v, g, s0, run):
    o, final = dispatch.implementation("linear_attention", "chunked")(q, k, v, g, s0, run, CHUNK)
    # The kernel's outputs are float32 whatever the inputs; so are the cotangents.
    return o.astype(jnp.float32), final.astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _attend(q, k, v, g, s0, run, chunk, interpret):
    return _forward(q, k, v, g, s0, run, chunk, interpret)


def _attend_fwd(q, k, v, g, s0, run, chunk, interpret):
    return _forward(q, k, v, g, s0, run, chunk, interpret), (q, k, v, g, s0, run)


def _attend_bwd(chunk, interpret, saved, cotangents):
    del chunk, interpret
    q, k, v, g, s0, run = saved
    _, pullback = jax.vjp(lambda *a: _xla(*a, run), q, k, v, g, s0)
    return (*pullback(cotangents), None)


_attend.defvjp(_attend_fwd, _attend_bwd)


def linear_attention_pallas(q, k, v, g=None, s0=None, run=None, *, chunk=CHUNK, interpret=None):
    """Causal linear attention by the Pallas kernel, in the op's internal layout.

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
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"linear_attention_pallas: chunk must be a power of two >= 16, got {chunk}")
    if s0 is None:
        s0 = jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), jnp.float32)
    o, final = _attend(q, k, v, g, s0, run, chunk, interpret)
    return o.astype(jnp.result_type(q.dtype, k.dtype, v.dtype)), final


@dispatch.register("linear_attention", "pallas")
def _pallas(q, k, v, g, s0, run, chunk_size):
    del chunk_size  # the kernel's block is CHUNK
    o, final = linear_attention_pallas(q, k, v, g, s0, run)
    return o.astype(q.dtype), final.astype(s0.dtype)


dispatch.add_rules(
    dispatch.Rule("linear_attention", "gpu", "pallas",
                  why="the chunked kernel (Triton) keeps chunk work on-chip; XLA round-trips it"),
    dispatch.Rule("linear_attention", "tpu", "pallas",
                  why="the chunked kernel (Mosaic TPU) carries the state in VMEM"),
)
