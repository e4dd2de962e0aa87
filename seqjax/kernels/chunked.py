"""The chunked Pallas kernels shared by linear attention (GLA) and SSD: bodies and ``pallas_call``s.

Causal linear attention ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ``,
``o_t = S_tᵀ q_t`` in chunks of ``C``, laid out as flash-linear-attention
lays out GLA (:mod:`seqjax.kernels.linear_attention` and
:mod:`seqjax.kernels.ssd` give the block sizes and platforms):

  * a **states pass**, sequential over chunks: the state entering every chunk
    (float32) and the final one, ``S <- exp(total) S + vᵀ (k ⊙ exp(to_end))``;
    run backwards over ``(q, do)`` it gives the state gradients
    ``dS <- exp(total) dS + doᵀ (q ⊙ exp(from_start))``;
  * a **chunk pass**, all chunks in parallel: outputs
    ``o = (q ⊙ exp(from_start)) Sᵀ + (q kᵀ ⊙ M) v``, or in the backward the
    input gradients of the same expression.

The state is kept transposed, ``(dv, dk)``, so that key-channel decays scale
its lanes and every contraction is ``a @ b``, ``a @ bᵀ`` or ``aᵀ @ b``.

Numerics: every exponent is a masked sum of genuine log decays (all ``<= 0``),
never a difference of running sums: ``from_start[t] = Σ_{r≤t} g_r`` and
``to_end[s] = Σ_{s<r<C} g_r`` are 0/1 matrices times ``g`` with exact
products; the scalar-decay mask ``M[t, s] = exp(Σ_{s<r≤t} g_r)`` is
:func:`seqjax.ops.ssd._segsum`'s form (lower-triangular ones times the
strictly masked ``g``); the per-channel mask is built one query row at a time
from a running sum ``R[s] += g_t [s < t]``. Segment starts arrive as log decay
``RESET`` (finite: no ``inf - inf``).

Matmuls take the inputs' dtype (bf16 inputs use bf16 tensor cores) and
accumulate in float32. Float32 operands run at ``precision=HIGHEST`` on TPU
(six bf16 passes); on GPU they run as sums of TF32 tensor-core products
(:func:`_split_dot`): Triton's IEEE float32 dot is a CUDA-core loop that,
compiled for sm_90a, left these kernels at 32 registers per thread with
8-13 KB of spills per thread and 6-19x the instructions (see
``docs/kernels.md``, "Compiling the Triton kernels offline").
"""

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pl_triton

from seqjax.kernels.common import on_platform, out_struct

# Log decay of a segment start: exp gives exactly 0, and being finite it
# never meets another infinity (sums of up to a chunk of them stay < 1e33).
RESET = -1e30
# Value tile of the GPU states pass: a 64 x dk float32 state in registers.
GPU_VALUE_TILE = 64

_NN = (((1,), (0,)), ((), ()))  # a @ b
_NT = (((1,), (1,)), ((), ()))  # a @ bᵀ
_TN = (((0,), (0,)), ((), ()))  # aᵀ @ b

# True while the bodies of GPU kernels are traced (:func:`dots_for`).
_GPU_DOTS = contextvars.ContextVar("seqjax_gpu_dots", default=False)


@contextlib.contextmanager
def dots_for(kind):
    """Trace kernel bodies with ``kind``'s float32 dots: split TF32 on ``"gpu"``, HIGHEST otherwise.

    The bodies are shared by both platforms, so the choice rides on the
    tracing context rather than on every body's signature; a kernel body is
    traced when its ``pallas_call`` is called, inside this block.
    """
    token = _GPU_DOTS.set(kind == "gpu")
    try:
        yield
    finally:
        _GPU_DOTS.reset(token)


def _tf32_head(x):
    """``x`` (float32) with its 13 low mantissa bits cleared: exact in TF32, and ``x - head`` exact in float32."""
    bits = lax.bitcast_convert_type(x, jnp.int32)
    return lax.bitcast_convert_type(bits & jnp.int32(-8192), jnp.float32)


def _tf32_engine(a, b, dims):
    # DEFAULT precision: TF32 tensor cores in Triton on GPU (full float32 in
    # interpret mode on CPU, where the split is then exact).
    return lax.dot_general(a, b, dims, precision=lax.Precision.DEFAULT, preferred_element_type=jnp.float32)


def _split_dot(a, b, dims, lhs_exact=False, engine=None):
    """``a·b`` for float32 ``a, b`` from products whose operands TF32 holds (nearly) exactly.

    ``lhs_exact`` (``a`` a 0/1 matrix): ``b`` is cut into three pieces of at
    most 11 significant bits each (``head(b)``, ``head(rest)``, the last <= 2
    bits), so every product is exact and the result is a float32-accumulated
    sum of genuine terms, as at ``HIGHEST``. Otherwise the 3xTF32 scheme,
    ``hi·hi + (hi·lo + lo·hi)``: the dropped ``lo·lo`` and the rounding of
    ``lo`` to TF32 leave ~2^-21 relative per product. ``engine`` is the
    TF32 matmul; by default :func:`_tf32_engine`, looked up when the body is
    traced so that a test can put an emulation of the tensor cores in its place.
    """
    engine = engine or _tf32_engine
    if lhs_exact:
        b_hi = _tf32_head(b)
        rest = b - b_hi
        b_mid = _tf32_head(rest)
        return engine(a, b_hi, dims) + (engine(a, b_mid, dims) + engine(a, rest - b_mid, dims))
    a_hi, b_hi = _tf32_head(a), _tf32_head(b)
    return engine(a_hi, b_hi, dims) + (engine(a_hi, b - b_hi, dims) + engine(a - a_hi, b_hi, dims))


def _dot(a, b, dims, lhs_exact=False):
    """``a·b`` accumulated in float32; float32 operands at full precision (split TF32 on GPU).

    ``lhs_exact``: ``a`` is a 0/1 matrix (the masked sums of log decays).
    """
    if a.dtype == jnp.float32 and _GPU_DOTS.get():
        return _split_dot(a, b, dims, lhs_exact)
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else lax.Precision.DEFAULT
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _column(x, j):
    """Column ``j`` of a 2-D ``x`` as ``(rows, 1)`` (a masked sum: no dynamic lane index)."""
    return jnp.sum(jnp.where(_iota(x.shape, 1) == j, x, 0.0), axis=1, keepdims=True)


def _iota(shape, axis):
    return lax.broadcasted_iota(jnp.int32, shape, axis)


def _decay_sums(g, dk):
    """``(from_start, to_end, total)`` of a chunk's log decays ``g (C, e)``.

    ``from_start[t] = Σ_{r≤t} g_r`` and ``to_end[s] = Σ_{s<r<C} g_r``, both
    ``(C, dk)``, and ``total = Σ_r g_r`` ``(1, dk)``; for a scalar decay
    (``e = 1``) they are ``(C, 1)`` and ``(1, 1)``, which broadcast. A scalar
    decay's sums run on 16 identical columns (a Triton ``dot`` is >= 16 wide)
    and one is kept: broadcast to ``dk`` lanes they were 8x the work at
    ``dk = 128`` and held three more ``(C, dk)`` float32 blocks in registers.
    """
    chunk, width = g.shape
    cols = dk if width > 1 else 16
    wide = jnp.broadcast_to(g.astype(jnp.float32), (chunk, cols))
    t, r = _iota((chunk, chunk), 0), _iota((chunk, chunk), 1)
    from_start = _dot((r <= t).astype(jnp.float32), wide, _NN, lhs_exact=True)
    to_end = _dot((r > t).astype(jnp.float32), wide, _NN, lhs_exact=True)
    if width == 1:
        from_start, to_end = _column(from_start, 0), _column(to_end, 0)
    return from_start, to_end, jnp.sum(g.astype(jnp.float32), axis=0, keepdims=True)


def _scaled(x, log_scale):
    return (x.astype(jnp.float32) * jnp.exp(log_scale)).astype(x.dtype)


def _carry_step(state, keys, vals, g, reverse):
    """One chunk of the states pass: forward ``(k, v)``, or backward ``(q, do)``."""
    if g is None:
        return state + _dot(vals.astype(keys.dtype), keys, _TN)
    from_start, to_end, total = _decay_sums(g, keys.shape[1])
    keys = _scaled(keys, from_start if reverse else to_end)
    return state * jnp.exp(total) + _dot(vals.astype(keys.dtype), keys, _TN)


def _scalar_mask(g, causal):
    """``exp(Σ_{s<r≤t} g_r)`` on ``t >= s``, 0 above; ``g (C, 1)``."""
    chunk = g.shape[0]
    t, s = _iota((chunk, chunk), 0), _iota((chunk, chunk), 1)
    after_s = jnp.where(t > s, jnp.broadcast_to(g.astype(jnp.float32), (chunk, chunk)), 0.0)
    segsum = _dot((s <= t).astype(jnp.float32), after_s, _NN, lhs_exact=True)
    return jnp.exp(jnp.where(causal, segsum, -jnp.inf))


def _channel_scores_t(q, k, g):
    """Transposed GLA scores ``A[s, t] = Σ_j q_t[j] k_s[j] exp(Σ_{s<r≤t} g_r[j])``, 0 for s > t.

    One query row per step; ``R[s] = Σ_{s<r≤t} g_r`` is a running sum, so
    each exponent is a sum of genuine terms (``C x dk`` exponentials per row:
    exact, at 4-8x the exponentials of FLA's sub-chunk factorisation, which
    needs differences of cumulative sums). Rows are picked by masked sums
    (static shapes on both backends).
    """
    chunk, dk = q.shape
    rows = _iota((chunk, dk), 0)
    lanes = _iota((chunk, chunk), 1)
    g, qf, kf = g.astype(jnp.float32), q.astype(jnp.float32), k.astype(jnp.float32)

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


def _chunk_output(q, k, v, g, state):
    """Outputs ``(C, dv)`` of one chunk entered by ``state`` ``(dv, dk)``."""
    chunk, dk = q.shape
    causal = _iota((chunk, chunk), 0) >= _iota((chunk, chunk), 1)
    if g is None:
        scores = jnp.where(causal, _dot(q, k, _NT), 0.0)
        return _dot(q, state.astype(q.dtype), _NT) + _dot(scores.astype(v.dtype), v, _NN)
    from_start, _, _ = _decay_sums(g, dk)
    o = _dot(_scaled(q, from_start), state.astype(q.dtype), _NT)
    if g.shape[1] == 1:
        scores = _dot(q, k, _NT) * _scalar_mask(g, causal)
        return o + _dot(scores.astype(v.dtype), v, _NN)
    return o + _dot(_channel_scores_t(q, k, g).astype(v.dtype), v, _TN)


def _chunk_grads(q, k, v, do, g, state, dstate):
    """``(dq, dk, dv)`` of one chunk (no decay or a scalar one), and the decay's gradient parts.

    ``state`` enters the chunk, ``dstate`` is the gradient of the state
    leaving it, both ``(dv, dk)``. With ``M`` the decay mask:
    ``dq = (do vᵀ ⊙ M) k + exp(from_start) do S``,
    ``dk = (do vᵀ ⊙ M)ᵀ q + exp(to_end) v dS``,
    ``dv = (q kᵀ ⊙ M)ᵀ do + exp(to_end) k dSᵀ``.

    With a decay, ``∂L/∂g_r`` (r in this chunk) is a sum of genuine terms,
    returned as three ``(C, 1)`` columns: ``pairs[r] = Σ_{t≥r>s} P[t, s]``
    (``P = (q kᵀ ⊙ M) ⊙ (do vᵀ)``, the pairs whose decay spans r) plus
    ``Σ dS ⊙ exp(total) S`` (the carried state's decay through the chunk);
    ``u_t = q_t·dq_state_t`` (the caller sums it over t >= r); ``z_s =
    k_s·dk_state_s`` (summed over s < r). No difference of large sums: the
    ``q·dq - k·dk`` identity cancels to ~1e-3 of dA under strong decay.
    """
    if g is not None and g.shape[1] != 1:
        return _channel_grads(q, k, v, do, g, state, dstate)
    chunk, dk = q.shape
    causal = _iota((chunk, chunk), 0) >= _iota((chunk, chunk), 1)
    mask = causal.astype(jnp.float32) if g is None else _scalar_mask(g, causal)
    do = do.astype(v.dtype)
    do_v = _dot(do, v, _NT)
    q_k = _dot(q, k, _NT) * mask
    d_scores = (do_v * mask).astype(q.dtype)
    dq_state = _dot(do, state.astype(v.dtype), _NN)
    dk_state = _dot(v, dstate.astype(v.dtype), _NN)
    dv_state = _dot(k, dstate.astype(k.dtype), _NT)
    if g is not None:
        from_start, to_end, total = _decay_sums(g, dk)
        dq_state = dq_state * jnp.exp(from_start)
        dk_state = dk_state * jnp.exp(to_end)
        dv_state = dv_state * jnp.exp(to_end)  # a scalar decay: to_end is (C, 1)
    grads = (_dot(d_scores, k, _NN) + dq_state, _dot(d_scores, q, _TN) + dk_state,
             _dot(q_k.astype(v.dtype), do, _TN) + dv_state)
    if g is None:
        return grads
    rows, cols = _iota((chunk, chunk), 0), _iota((chunk, chunk), 1)
    # below[r, s] = Σ_{t≥r} P[t, s]; the pairs spanning r are its entries with s < r.
    below = _dot((cols >= rows).astype(jnp.float32), q_k * do_v, _NN, lhs_exact=True)
    pairs = jnp.sum(jnp.where(cols < rows, below, 0.0), axis=1, keepdims=True)
    carried = jnp.sum(dstate * state * jnp.exp(total), axis=1, keepdims=True)
    pairs = pairs + jnp.sum(carried, axis=0, keepdims=True)
    u = jnp.sum(q.astype(jnp.float32) * dq_state, axis=1, keepdims=True)
    z = jnp.sum(k.astype(jnp.float32) * dk_state, axis=1, keepdims=True)
    return grads + (pairs, u, z)


def _channel_grads(q, k, v, do, g, state, dstate):
    """:func:`_chunk_grads` for a per-channel (GLA) decay ``g (C, dk)``; the decay parts are ``(C, dk)``.

    One query row ``t`` per step, as :func:`_channel_scores_t`: with
    ``W[s] = exp(Σ_{s<r≤t} g_r)`` (0 for s > t) and ``dA[t, s] = do_t·v_s``,
    row t gives ``dq_t = Σ_s dA[t, s] k_s ⊙ W[s]``, adds
    ``dA[t, s] q_t ⊙ W[s]`` to every ``dk_s``, and adds the pair terms
    ``T[s] = dA[t, s] q_t ⊙ k_s ⊙ W[s]`` to the decay gradient of every
    ``r`` with ``s < r ≤ t`` (a strictly-lower 0/1 matrix times ``T``).
    """
    chunk, dk = q.shape
    rows = _iota((chunk, dk), 0)
    lanes = _iota((chunk, chunk), 1)
    strictly_lower = (_iota((chunk, chunk), 1) < _iota((chunk, chunk), 0)).astype(jnp.float32)
    g, qf, kf = g.astype(jnp.float32), q.astype(jnp.float32), k.astype(jnp.float32)
    do = do.astype(v.dtype)
    d_scores_t = _dot(v, do, _NT)  # dA[t, s] at [s, t]

    def row(t, carry):
        running, scores_t, dq, dk_, pairs = carry
        pick = rows == t
        g_t = jnp.sum(jnp.where(pick, g, 0.0), axis=0, keepdims=True)
        q_t = jnp.sum(jnp.where(pick, qf, 0.0), axis=0, keepdims=True)
        running = running + jnp.where(rows < t, g_t, 0.0)
        w = jnp.exp(jnp.where(rows <= t, running, -jnp.inf))
        k_w, w_q = kf * w, w * q_t
        scores_t = jnp.where(lanes == t, jnp.sum(k_w * q_t, axis=1, keepdims=True), scores_t)
        da = jnp.sum(jnp.where(lanes == t, d_scores_t, 0.0), axis=1, keepdims=True)  # (C, 1) over s
        dq = jnp.where(pick, jnp.sum(da * k_w, axis=0, keepdims=True), dq)
        dk_ = dk_ + da * w_q
        spans = _dot(strictly_lower, da * w_q * kf, _NN, lhs_exact=True)
        pairs = pairs + jnp.where(rows <= t, spans, 0.0)
        return running, scores_t, dq, dk_, pairs

    zeros = jnp.zeros((chunk, dk), jnp.float32)
    init = (zeros, jnp.zeros((chunk, chunk), jnp.float32), zeros, zeros, zeros)
    _, scores_t, dq, dk_, pairs = lax.fori_loop(0, chunk, row, init)
    from_start, to_end, total = _decay_sums(g, dk)
    dq_state = _dot(do, state.astype(v.dtype), _NN) * jnp.exp(from_start)
    dk_state = _dot(v, dstate.astype(v.dtype), _NN) * jnp.exp(to_end)
    dv = _dot(scores_t.astype(v.dtype), do, _NN) + _dot(_scaled(k, to_end), dstate.astype(k.dtype), _NT)
    carried = jnp.sum(dstate * state * jnp.exp(total), axis=0, keepdims=True)
    return dq + dq_state, dk_ + dk_state, dv, pairs + carried, qf * dq_state, kf * dk_state


# --- pallas_calls ---------------------------------------------------------------


def _pow2(n):
    return max(16, 1 << (n - 1).bit_length())


def _pad_last(x, size):
    if x is None or x.shape[-1] in (1, size):
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


def _states_pass(kind, keys, vals, g, s0, *, chunk, grp, reverse, interpret):
    """``(states, final)``: the carry entering each chunk ``(b, H, n, dv, dk)`` and the last one.

    ``keys (b, G, L, dk)`` (head ``i`` reads group ``i // grp``), ``vals (b, H, L, dv)``,
    ``g (b, H, L, e)`` or None, ``s0 (b, H, dv, dk)``. With ``reverse`` the
    chunks run last to first and ``states[j]`` is the carry entering chunk
    ``j`` from the right.
    """
    batch, heads, length, dv = vals.shape
    dk = keys.shape[-1]
    n = length // chunk
    has_g = g is not None
    at = (lambda i: n - 1 - i) if reverse else (lambda i: i)  # noqa: E731
    out_shape = [out_struct((batch, heads, n, dv, dk), jnp.float32, vals),
                 out_struct((batch, heads, dv, dk), jnp.float32, vals)]
    args = (keys, vals) + ((g,) if has_g else ()) + (s0,)

    if kind == "gpu":
        tile = min(dv, GPU_VALUE_TILE)

        def kernel(*refs):
            k_ref, v_ref = refs[:2]
            g_ref = refs[2] if has_g else None
            s0_ref, states_ref, final_ref = refs[2 + has_g:]

            def step(i, state):
                j = at(i)
                rows = pl.ds(pl.multiple_of(j * chunk, chunk), chunk)
                states_ref[j] = state
                return _carry_step(state, k_ref[rows, :], v_ref[rows, :],
                                   g_ref[rows, :] if has_g else None, reverse)

            final_ref[...] = lax.fori_loop(0, n, step, s0_ref[...].astype(jnp.float32))

        whole = lambda d: pl.BlockSpec((None, None, length, d), lambda b, h, j: (b, h, 0, 0))  # noqa: E731
        state_tile = pl.BlockSpec((None, None, tile, dk), lambda b, h, j: (b, h, j, 0))
        in_specs = [pl.BlockSpec((None, None, length, dk), lambda b, h, j: (b, h // grp, 0, 0)),
                    pl.BlockSpec((None, None, length, tile), lambda b, h, j: (b, h, 0, j))]
        in_specs += ([whole(g.shape[-1])] if has_g else []) + [state_tile]
        return pl.pallas_call(
            kernel,
            grid=(batch, heads, dv // tile),
            in_specs=in_specs,
            out_specs=[pl.BlockSpec((None, None, n, tile, dk), lambda b, h, j: (b, h, 0, j, 0)), state_tile],
            out_shape=out_shape,
            compiler_params=pl_triton.CompilerParams(num_warps=8, num_stages=2),
            interpret=interpret,
        )(*args)

    def kernel(*refs):
        k_ref, v_ref = refs[:2]
        g_ref = refs[2] if has_g else None
        s0_ref, states_ref, final_ref, carry = refs[2 + has_g:]
        i = pl.program_id(2)

        @pl.when(i == 0)
        def _():
            carry[...] = s0_ref[...].astype(jnp.float32)

        states_ref[...] = carry[...]
        carry[...] = _carry_step(carry[...], k_ref[...], v_ref[...], g_ref[...] if has_g else None, reverse)

        @pl.when(i == n - 1)
        def _():
            final_ref[...] = carry[...]

    chunk_of = lambda d: pl.BlockSpec((None, None, chunk, d), lambda b, h, i: (b, h, at(i), 0))  # noqa: E731
    whole_state = pl.BlockSpec((None, None, dv, dk), lambda b, h, i: (b, h, 0, 0))
    in_specs = [pl.BlockSpec((None, None, chunk, dk), lambda b, h, i: (b, h // grp, at(i), 0)), chunk_of(dv)]
    in_specs += ([chunk_of(g.shape[-1])] if has_g else []) + [whole_state]
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, n),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, None, None, dv, dk), lambda b, h, i: (b, h, at(i), 0, 0)), whole_state],
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((dv, dk), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
    )(*args)


def _chunk_pass(kind, body, grouped, per_head, states, out_dims, *, chunk, grp, interpret,
                value_tile=None, tiled_in=(), tiled_out=()):
    """Every chunk in parallel on the grid ``(b, H, n)``, or ``(b, H, n, dv / value_tile)``.

    ``body(*grouped_blocks, *per_head_blocks, *state_blocks)`` returns one
    ``(C, d)`` block per ``out_dims`` entry; ``grouped`` are ``(b, G, L, dk)``
    arrays, ``per_head`` ``(b, H, L, d)`` arrays or None (passed through as
    None), ``states`` ``(b, H, n, dv, dk)``.

    With ``value_tile`` below ``dv``, each program sees one tile of the value
    channels: the states' rows and the last axis of the ``per_head`` entries
    listed in ``tiled_in``. Outputs listed in ``tiled_out`` are written per
    tile (exact); every other output is a sum over the value channels, so each
    tile writes its part and the parts are added here. ``body`` must be
    linear in the value channels for those outputs (the backward's are).
    """
    ref = next(x for x in per_head if x is not None)
    batch, heads, length, _ = ref.shape
    present = [x for x in per_head if x is not None]
    n_g, n_h, n_s = len(grouped), len(present), len(states)
    dv = states[0].shape[3]
    tile = dv if value_tile is None else min(value_tile, dv)
    tiles = dv // tile
    tiled_present = [i in tiled_in for i, x in enumerate(per_head) if x is not None]

    def kernel(*refs):
        g_vals = [r[...] for r in refs[:n_g]]
        it = iter(r[...] for r in refs[n_g:n_g + n_h])
        h_vals = [None if x is None else next(it) for x in per_head]
        s_vals = [r[...] for r in refs[n_g + n_h:n_g + n_h + n_s]]
        for out_ref, value in zip(refs[n_g + n_h + n_s:], body(*g_vals, *h_vals, *s_vals)):
            out_ref[...] = value.astype(out_ref.dtype)

    # ``j`` (the value tile) defaults to 0 on the three-axis grid.
    def chunk_of(d, tiled=False):
        if tiled and tiles > 1:
            return pl.BlockSpec((None, None, chunk, tile), lambda b, h, i, j=0: (b, h, i, j))
        return pl.BlockSpec((None, None, chunk, d), lambda b, h, i, j=0: (b, h, i, 0))

    in_specs = [pl.BlockSpec((None, None, chunk, x.shape[-1]), lambda b, h, i, j=0: (b, h // grp, i, 0))
                for x in grouped]
    in_specs += [chunk_of(x.shape[-1], t) for x, t in zip(present, tiled_present)]
    in_specs += [pl.BlockSpec((None, None, None, tile) + x.shape[4:], lambda b, h, i, j=0: (b, h, i, j, 0))
                 for x in states]
    out_specs, out_shape = [], []
    for o, d in enumerate(out_dims):
        if tiles > 1 and o not in tiled_out:
            out_specs.append(pl.BlockSpec((None, None, None, chunk, d), lambda b, h, i, j=0: (b, j, h, i, 0)))
            out_shape.append(out_struct((batch, tiles, heads, length, d), jnp.float32, ref))
        else:
            out_specs.append(chunk_of(d, o in tiled_out))
            out_shape.append(out_struct((batch, heads, length, d), jnp.float32, ref))
    grid = (batch, heads, length // chunk) + ((tiles,) if tiles > 1 else ())
    if kind == "gpu":
        params = pl_triton.CompilerParams(num_warps=8, num_stages=2)
    else:
        params = pltpu.CompilerParams(dimension_semantics=("parallel",) * len(grid))
    outs = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=params,
        interpret=interpret,
    )(*grouped, *present, *states)
    return [x.sum(axis=1) if x.ndim == 5 else x for x in outs]


def _forward(kind, q, k, v, g, s0, *, chunk, grp, interpret):
    dk, dv = q.shape[-1], v.shape[-1]
    if kind == "gpu":
        # Triton tensors have power-of-two shapes (>= 16 for tl.dot): zero
        # channels change nothing and are cut off below.
        pk, pv = _pow2(dk), _pow2(dv)
        q, k, g = (_pad_last(x, pk) for x in (q, k, g))
        v = _pad_last(v, pv)
        s0 = jnp.pad(s0, ((0, 0), (0, 0), (0, pv - dv), (0, pk - dk)))
    kw = dict(chunk=chunk, grp=grp, interpret=interpret)
    states, final = _states_pass(kind, k, v, g, s0, reverse=False, **kw)
    (o,) = _chunk_pass(kind, lambda *a: (_chunk_output(*a),), [q, k], [v, g], [states], [v.shape[-1]], **kw)
    return o[..., :dv], final[:, :, :dv, :dk]


def _backward(kind, q, k, v, g, s0, do, dfinal, *, chunk, grp, interpret):
    dk, dv = q.shape[-1], v.shape[-1]
    if kind == "gpu":
        pk, pv = _pow2(dk), _pow2(dv)
        q, k = (_pad_last(x, pk) for x in (q, k))
        v, do = (_pad_last(x, pv) for x in (v, do))
        s0, dfinal = (jnp.pad(x, ((0, 0), (0, 0), (0, pv - dv), (0, pk - dk))) for x in (s0, dfinal))
        g = _pad_last(g, pk)
    kw = dict(chunk=chunk, grp=grp, interpret=interpret)
    # The backward recomputes the forward's chunk states rather than storing them.
    states, final = _states_pass(kind, k, v, g, s0, reverse=False, **kw)
    dstates, ds0 = _states_pass(kind, q, do, g, dfinal, reverse=True, **kw)
    dims = [q.shape[-1], q.shape[-1], v.shape[-1]] + ([g.shape[-1]] * 3 if g is not None else [])
    # On GPU the backward sees one value tile per program, as the states pass
    # does: whole (dv, dk) float32 state and state gradient blocks at
    # dk = dv = 128 asked Triton for 278,528 bytes of shared memory (232,448 on
    # an H200) and did not launch. dv is the only exact output; dq, dk and the
    # decay parts are sums over the value channels, added by _chunk_pass.
    tiling = dict(value_tile=GPU_VALUE_TILE, tiled_in=(0, 1), tiled_out=(2,)) if kind == "gpu" else {}
    dq, dk_, dv_, *dg_parts = _chunk_pass(kind, _chunk_grads, [q, k], [v, do, g], [states, dstates], dims,
                                          **kw, **tiling)
    return (dq[..., :dk], dk_[..., :dk], dv_[..., :dv], ds0[:, :, :dv, :dk], *(x[..., :dk] for x in dg_parts))


def _run(fn, args, interpret, **static):
    """``fn(kind, *args)`` on the platform's kernels; None entries of ``args`` stay None."""
    where = [a is not None for a in args]

    def build(kind, interp):
        def call(*present):
            it = iter(present)
            with dots_for(kind):
                return fn(kind, *(next(it) if w else None for w in where), interpret=interp, **static)
        return call

    return on_platform(build, *(a for a in args if a is not None), interpret=interpret)


def forward(q, k, v, g, s0, *, chunk, heads_per_group=1, interpret=None):
    """Outputs and final state, in the kernels' layout.

    Args:
      q: ``(b, G, L, dk)`` queries, ``L`` a multiple of ``chunk``.
      k: ``(b, G, L, dk)`` keys.
      v: ``(b, H, L, dv)`` values; head ``i`` reads q/k group ``i // heads_per_group``.
      g: ``(b, H, L, 1 or dk)`` float32 log decays (segment starts at ``RESET``), or None.
      s0: ``(b, H, dv, dk)`` transposed initial state.
      chunk: the block length ``C``.
      heads_per_group: ``H // G``.
      interpret: as :func:`seqjax.kernels.common.on_platform`.

    Returns:
      ``(o, final)``: ``(b, H, L, dv)`` and ``(b, H, dv, dk)``, float32.
    """
    return _run(_forward, (q, k, v, g, s0), interpret, chunk=chunk, grp=heads_per_group)


def backward(q, k, v, g, s0, do, dfinal, *, chunk, heads_per_group=1, interpret=None):
    """Gradients by the kernels for no decay or a scalar decay ``g (b, H, L, 1)``.

    Args are :func:`forward`'s plus ``do`` ``(b, H, L, dv)`` and ``dfinal``
    ``(b, H, dv, dk)``, the cotangents of its outputs.

    Returns:
      ``(dq, dk, dv, ds0)`` and, with a decay, ``(pairs, u, z)``: ``dq``,
      ``dk`` per head ``(b, H, L, dk)`` (the caller sums a group's heads),
      ``dv`` ``(b, H, L, dv)``, ``ds0`` ``(b, H, dv, dk)``, and the parts of
      ``g``'s gradient ``(b, H, L, 1)`` (:func:`_chunk_grads`), all float32.
    """
    return _run(_backward, (q, k, v, g, s0, do, dfinal), interpret, chunk=chunk, grp=heads_per_group)
