"""Pallas kernels for the chunked (gated) delta rule: DeltaNet and Gated DeltaNet.

The forward pass of :func:`seqjax.ops.delta_rule`'s ``"chunked"`` form (the
WY / UT transform of Yang et al. 2024, Section 3; gated: Gated DeltaNet,
Section 3.3) as two kernels: a chunk-parallel one solves every chunk's UT
system (it needs no state), then a sequential one walks the chunks in order,
carrying the ``(dk, dv)`` float32 state on chip, with matmuls only. Per chunk of ``C`` positions entered with
state ``S``, with ``gamma_r`` the decay from the chunk start to ``r`` and
``A[r, i] = beta_r (gamma_r / gamma_i) k_r . k_i`` for ``i < r`` (0 otherwise)::

    (I + A) [U_v | W] = [diag(beta) V | diag(beta gamma) K]   forward substitution, C rows
    U     = U_v - W S
    o_r   = gamma_r S^T q_r + sum_{i <= r} (gamma_r / gamma_i) (q_r . k_i) u_i
    S_out = gamma_C S + sum_i (gamma_C / gamma_i) k_i u_i^T

The triangular system is solved by forward substitution in the first kernel,
one column of ``A`` per step (``C`` steps, each ``x -= A[:, i] x_i``): no
inverse and no Neumann series is formed (the op's module docstring says why a
product-of-squares inverse cancels in float32).

Numerics as :mod:`seqjax.kernels.chunked`: every decay is the ``exp`` of a
masked *sum* of log decays (lower-triangular 0/1 matrices times ``g``, exact
on both platforms), never of a difference of running sums; a segment
start is a log decay of ``RESET`` (-1e30, finite), whose ``exp`` clears the
state and every pair across the boundary, as the op's ``a_t = 0`` does.

Layouts:
  * **solve** (both platforms): grid ``(b, h, chunks)``, all parallel; blocks
    ``(C, dk)``, ``(C, dv)``, ``(C, 1)``; writes ``U_v (b, h, L, dv)`` and
    ``W (b, h, L, dk)`` in float32. Until 2026-12-07 the substitution ran in
    the sequential kernel: ``C`` dependent column steps per chunk in each of
    only ``b * h * dv / 64`` programs (64 at Gated DeltaNet's benchmark shape).
  * **sequential pass, GPU** (Triton backend, as
    :mod:`seqjax.kernels.linear_attention`: the Mosaic GPU backend of JAX
    0.10/0.11 does not lower ``dot_general`` in a plain ``pallas_call``): grid
    ``(b, h, dv / 64)``, each program walking all chunks with ``fori_loop``
    and its ``(dk, 64)`` float32 state slice in registers. The value columns
    of the delta rule are independent given ``W`` (``W``, ``A`` and the
    decays depend on keys, ``beta`` and ``g`` only), so a value tile reads
    its columns of ``U_v`` and carries its own state columns. ``dk``, ``dv``
    and ``C`` are powers of two >= 16 (Triton's tensor shapes; ``dk`` and
    ``dv`` are zero-padded, which changes nothing).
  * **sequential pass, TPU** (Mosaic TPU): grid ``(b, h, chunks)``, the
    chunk axis last and ``"arbitrary"``, the state in a ``(dk, dv)`` VMEM
    scratch initialised at chunk 0. Blocks ``(C, dk)``, ``(C, dv)``: ``C`` a
    multiple of 8 and the last dims whole.

Only the chunk-boundary states (the state *entering* each chunk, float32)
leave the kernel beside ``o`` and the final state, for the backward.

**Backward (interim, XLA).** ``custom_vjp``: the backward recomputes through
the op's XLA chunked form (``seqjax.ops.delta_rule._chunked``) run on every
chunk at once (the chunks as a batch), each from its saved entering state.
A chunk is affine in its entering state, ``S_out = F S_in + ...`` with
``F = gamma_C I - K_outᵀ W`` (``dk x dk``, the chunk run from ``S_in = I``
with zero values, as :mod:`seqjax.ops.delta_rule_sp` does), so the state
gradients need only a reverse ``lax.scan`` of matrix products,
``dS_in = Fᵀ dS_out + (o's part)``; then one batched VJP over all chunks
gives ``dq, dk, dv, dbeta, dlog_decay``. The chunk-local work (the UT solve)
runs three times (``F``, o's part, the input VJP) and the XLA einsums take
the default precision (TF32 on a GPU), so this backward is a stand-in until
a backward kernel is written.

Matmuls ``q kᵀ`` and ``k kᵀ`` take the inputs' dtype (bf16 tensor cores for
bf16 inputs) and accumulate in float32; everything touching the state, the
solve and ``u`` is float32 (``precision=HIGHEST`` on TPU, split TF32 products
on GPU: :func:`seqjax.kernels.chunked._split_dot`). The kernel computes in
float32 whatever the inputs (no float64 on the accelerators); the op's front
door casts inputs to the accumulation dtype first, so through
``delta_rule(impl="pallas")`` it sees float32; :func:`delta_rule_pallas` keeps
bf16.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pl_triton

# The chunk kernels' shared pieces: dot_general layouts, float32-accumulating dot, iota, the GPU value tile.
from seqjax.kernels.chunked import GPU_VALUE_TILE, RESET, _NN, _NT, _TN, _column, _dot, _iota, dots_for
from seqjax.kernels.common import on_platform, out_struct, vary_alike
from seqjax.ops import dispatch
from seqjax.ops.collectives import match_vma
from seqjax.ops.common import pad_axis, segment_runs
from seqjax.ops.delta_rule import _chunked, check_inputs

# Flash-linear-attention's DeltaNet chunk; the op's default chunk_size.
CHUNK = 64


def _decays(g, chunk):
    """``(decay, gamma, k_end, gamma_end)`` of a chunk's log decays ``g (C, 1)`` float32, or None.

    ``decay[r, i] = exp(sum_{i<j<=r} g_j)`` on ``i <= r`` (0 above),
    ``gamma[r] = exp(sum_{j<=r} g_j)``, ``k_end[i] = exp(sum_{j>i} g_j)`` (all
    ``(C, 1)``) and ``gamma_end = exp(sum_j g_j)`` ``(1, 1)``. Each exponent
    is a 0/1 matrix times ``g`` broadcast to ``(C, C)`` (Triton's ``dot``
    needs both sides >= 16 wide), so a sum of genuine terms.
    """
    rows, cols = _iota((chunk, chunk), 0), _iota((chunk, chunk), 1)
    causal = rows >= cols
    if g is None:
        ones = jnp.ones((chunk, 1), jnp.float32)
        return causal.astype(jnp.float32), ones, ones, jnp.ones((1, 1), jnp.float32)
    wide = jnp.broadcast_to(g, (chunk, chunk))  # wide[j, s] = g_j
    lower = causal.astype(jnp.float32)  # [t, j]: j <= t
    # Every column of these products is the same sum; take column 0.
    from_start = _column(_dot(lower, wide, _NN, lhs_exact=True), 0)
    to_end = _column(_dot((cols > rows).astype(jnp.float32), wide, _NN, lhs_exact=True), 0)
    segsum = _dot(lower, jnp.where(rows > cols, wide, 0.0), _NN, lhs_exact=True)  # [t, s] = sum_{s<j<=t} g_j
    decay = jnp.exp(jnp.where(causal, segsum, -jnp.inf))
    return decay, jnp.exp(from_start), jnp.exp(to_end), jnp.exp(jnp.sum(g, axis=0, keepdims=True))


def _solve(k, v, beta, g):
    """``(U_v (C, dv), W (C, dk))`` of one chunk, float32: the UT transform, no state involved.

    ``k (C, dk)`` and ``v (C, dv)`` in the inputs' dtype, ``beta (C, 1)`` and
    ``g (C, 1)`` (or None) float32. Chunks are independent here, so this runs
    on a chunk-parallel grid, and the sequential pass is left with matmuls.
    """
    chunk = k.shape[0]
    decay, gamma, _, _ = _decays(g, chunk)
    rows, cols = _iota((chunk, chunk), 0), _iota((chunk, chunk), 1)
    a = jnp.where(rows > cols, beta * decay * _dot(k, k, _NT), 0.0)
    # (I + A) X = R by forward substitution, column by column: once the
    # earlier columns are subtracted, row i is final; take A[:, i] x_i off
    # the rows below it (A[r, i] = 0 for r <= i, so only those change).
    row_of = _iota((chunk, 1), 0)

    def substitute(i, carry):
        u_v, w = carry
        a_i = _column(a, i)
        u_v_i = jnp.sum(jnp.where(row_of == i, u_v, 0.0), axis=0, keepdims=True)
        w_i = jnp.sum(jnp.where(row_of == i, w, 0.0), axis=0, keepdims=True)
        return u_v - a_i * u_v_i, w - a_i * w_i

    init = (beta * v.astype(jnp.float32), (beta * gamma) * k.astype(jnp.float32))
    return lax.fori_loop(0, chunk, substitute, init)


def _chunk_step(q, k, u_v, w, g, state):
    """One chunk from its UT transform: ``(o (C, dv), state leaving it (dk, dv))``, float32.

    ``q, k (C, dk)`` in the inputs' dtype, ``u_v (C, dv)`` and ``w (C, dk)``
    from :func:`_solve`, ``g (C, 1)`` float32 or None, ``state (dk, dv)``
    float32 entering the chunk.
    """
    chunk = q.shape[0]
    decay, gamma, k_end, gamma_end = _decays(g, chunk)
    kf, qf = k.astype(jnp.float32), q.astype(jnp.float32)
    u = u_v - _dot(w, state, _NN)
    scores = _dot(q, k, _NT) * decay
    o = _dot(scores, u, _NN) + _dot(qf * gamma, state, _NN)
    new_state = gamma_end * state + _dot(kf * k_end, u, _TN)
    return o, new_state


# --- pallas_calls ---------------------------------------------------------------


def _pow2(n):
    return max(16, 1 << (n - 1).bit_length())


def _pad_last(x, size):
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


def _solve_call(kind, k, v, beta, g, *, chunk, interpret):
    """``(U_v (b, h, L, dv), W (b, h, L, dk))`` float32 of every chunk, all chunks in parallel.

    Grid ``(b, h, chunks)`` on both platforms (every axis parallel), blocks
    ``(C, dk)``, ``(C, dv)``, ``(C, 1)``; the substitution runs ``C`` column
    steps per program. In the sequential pass it cost ``C`` dependent steps
    per chunk in each of only ``b * h * dv / 64`` programs.
    """
    batch, heads, length, dv = v.shape
    dk = k.shape[-1]
    has_g = g is not None

    def kernel(*refs):
        k_ref, v_ref, b_ref = refs[:3]
        g_ref = refs[3] if has_g else None
        u_ref, w_ref = refs[3 + has_g:]
        u_ref[...], w_ref[...] = _solve(k_ref[...], v_ref[...], b_ref[...], g_ref[...] if has_g else None)

    chunk_of = lambda d: pl.BlockSpec((None, None, chunk, d), lambda b, h, i: (b, h, i, 0))  # noqa: E731
    if kind == "gpu":
        params = pl_triton.CompilerParams(num_warps=4, num_stages=2)
    else:
        params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, length // chunk),
        in_specs=[chunk_of(dk), chunk_of(dv), chunk_of(1)] + ([chunk_of(1)] if has_g else []),
        out_specs=[chunk_of(dv), chunk_of(dk)],
        out_shape=[out_struct((batch, heads, length, dv), jnp.float32, v),
                   out_struct((batch, heads, length, dk), jnp.float32, v)],
        compiler_params=params,
        interpret=interpret,
    )(k, v, beta, *((g,) if has_g else ()))


def _forward_kernel(kind, q, k, v, beta, g, s0, *, chunk, interpret):
    """``(o, states, final)`` in the kernel layout.

    ``q, k (b, h, L, dk)``, ``v (b, h, L, dv)``, ``beta (b, h, L, 1)`` float32,
    ``g (b, h, L, 1)`` float32 or None, ``s0 (b, h, dk, dv)`` float32, ``L`` a
    multiple of ``chunk``. Returns ``o (b, h, L, dv)``, the states entering
    each chunk ``(b, h, n, dk, dv)`` and the final state ``(b, h, dk, dv)``,
    all float32. Two kernels: :func:`_solve_call` (chunk-parallel), then the
    sequential pass over chunks, matmuls only.
    """
    dk, dv = q.shape[-1], v.shape[-1]
    if kind == "gpu":
        # Zero key / value channels change nothing and are cut off below.
        pk, pv = _pow2(dk), _pow2(dv)
        q, k = _pad_last(q, pk), _pad_last(k, pk)
        v = _pad_last(v, pv)
        s0 = jnp.pad(s0, ((0, 0), (0, 0), (0, pk - dk), (0, pv - dv)))
    batch, heads, length, dvp = v.shape
    dkp = q.shape[-1]
    n = length // chunk
    has_g = g is not None
    u_v, w = _solve_call(kind, k, v, beta, g, chunk=chunk, interpret=interpret)
    args = (q, k, u_v, w) + ((g,) if has_g else ()) + (s0,)
    out_shape = [out_struct((batch, heads, length, dvp), jnp.float32, q),
                 out_struct((batch, heads, n, dkp, dvp), jnp.float32, q),
                 out_struct((batch, heads, dkp, dvp), jnp.float32, q)]

    if kind == "gpu":
        tile = min(dvp, GPU_VALUE_TILE)

        def kernel(*refs):
            q_ref, k_ref, u_ref, w_ref = refs[:4]
            g_ref = refs[4] if has_g else None
            s0_ref, o_ref, states_ref, final_ref = refs[4 + has_g:]

            def step(j, state):
                rows = pl.ds(pl.multiple_of(j * chunk, chunk), chunk)
                states_ref[j] = state
                o, state = _chunk_step(q_ref[rows, :], k_ref[rows, :], u_ref[rows, :], w_ref[rows, :],
                                       g_ref[rows, :] if has_g else None, state)
                o_ref[rows, :] = o
                return state

            final_ref[...] = lax.fori_loop(0, n, step, s0_ref[...].astype(jnp.float32))

        whole = lambda d: pl.BlockSpec((None, None, length, d), lambda b, h, j: (b, h, 0, 0))  # noqa: E731
        value_tile = pl.BlockSpec((None, None, length, tile), lambda b, h, j: (b, h, 0, j))
        state_tile = pl.BlockSpec((None, None, dkp, tile), lambda b, h, j: (b, h, 0, j))
        in_specs = [whole(dkp), whole(dkp), value_tile, whole(dkp)] + ([whole(1)] if has_g else []) + [state_tile]
        out_specs = [value_tile, pl.BlockSpec((None, None, n, dkp, tile), lambda b, h, j: (b, h, 0, 0, j)),
                     state_tile]
        o, states, final = pl.pallas_call(
            kernel,
            grid=(batch, heads, dvp // tile),
            in_specs=in_specs,
            out_specs=out_specs,
            out_shape=out_shape,
            # One stage: Triton's software pipelining of the loop's loads
            # asked for 246,016 bytes of shared memory at dk = dv = 128
            # float32 (232,448 on H100/H200; benchmarks/triton_sass.py), one
            # stage for 131,072.
            compiler_params=pl_triton.CompilerParams(num_warps=8, num_stages=1),
            interpret=interpret,
        )(*args)
        return o[..., :dv], states[..., :dk, :dv], final[..., :dk, :dv]

    def kernel(*refs):
        q_ref, k_ref, u_ref, w_ref = refs[:4]
        g_ref = refs[4] if has_g else None
        s0_ref, o_ref, states_ref, final_ref, carry = refs[4 + has_g:]
        i = pl.program_id(2)

        @pl.when(i == 0)
        def _():
            carry[...] = s0_ref[...].astype(jnp.float32)

        states_ref[...] = carry[...]
        o, state = _chunk_step(q_ref[...], k_ref[...], u_ref[...], w_ref[...],
                               g_ref[...] if has_g else None, carry[...])
        o_ref[...] = o
        carry[...] = state

        @pl.when(i == n - 1)
        def _():
            final_ref[...] = carry[...]

    chunk_of = lambda d: pl.BlockSpec((None, None, chunk, d), lambda b, h, i: (b, h, i, 0))  # noqa: E731
    whole_state = pl.BlockSpec((None, None, dkp, dvp), lambda b, h, i: (b, h, 0, 0))
    in_specs = [chunk_of(dkp), chunk_of(dkp), chunk_of(dvp), chunk_of(dkp)]
    in_specs += ([chunk_of(1)] if has_g else []) + [whole_state]
    out_specs = [chunk_of(dvp), pl.BlockSpec((None, None, None, dkp, dvp), lambda b, h, i: (b, h, i, 0, 0)),
                 whole_state]
    return tuple(pl.pallas_call(
        kernel,
        grid=(batch, heads, n),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((dkp, dvp), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
    )(*args))


def _to_kernel(x, chunk):
    """``(b, l, h, d)`` -> ``(b, h, L, d)``, ``L`` padded to a multiple of ``chunk`` with zeros; float64 -> float32."""
    if x is None:
        return None
    if x.dtype == jnp.float64:
        x = x.astype(jnp.float32)
    return jnp.swapaxes(pad_axis(x, chunk, axis=1), 1, 2)


def _starts(run):
    return jnp.concatenate([jnp.zeros_like(run[:, :1], bool), run[:, 1:] != run[:, :-1]], axis=1)


def _forward(q, k, v, beta, g, s0, run, chunk, interpret):
    """``(o (b, l, h, dv), final (b, h, dk, dv), states (b, h, n, dk, dv))``, float32."""
    length = q.shape[1]
    # Padding has zero beta (and keys, values, log decay): u = 0 there, the state passes unchanged.
    gk = None if g is None else g.astype(jnp.float32)
    if run is not None:
        # A segment start clears the state: log decay RESET there (exp gives exactly 0).
        gk = jnp.where(_starts(run)[:, :, None], RESET, jnp.zeros(beta.shape, jnp.float32) if gk is None else gk)
    cols = [_to_kernel(x, chunk) for x in (q, k, v)]
    cols += [_to_kernel(x[..., None].astype(jnp.float32), chunk) if x is not None else None for x in (beta, gk)]

    def build(kind, interp):
        def call(*present):
            it = iter(present)
            q_, k_, v_, b_ = (next(it) for _ in range(4))
            g_ = next(it) if gk is not None else None
            with dots_for(kind):
                return _forward_kernel(kind, q_, k_, v_, b_, g_, next(it), chunk=chunk, interpret=interp)
        return call

    args = [x for x in cols if x is not None] + [s0.astype(jnp.float32)]
    o, states, final = on_platform(build, *args, interpret=interpret)
    return jnp.swapaxes(o, 1, 2)[:, :length], final, states


# --- custom_vjp: the interim XLA backward ---------------------------------------


def _backward(q, k, v, beta, g, s0, run, states, do, dfinal, chunk):
    """Gradients through the op's XLA chunked form, all chunks at once, from the saved chunk states."""
    batch, length = q.shape[:2]
    f32 = lambda x: None if x is None else pad_axis(x.astype(jnp.float32), chunk, axis=1)
    qp, kp, vp, bp, gp, dop = (f32(x) for x in (q, k, v, beta, g, do))
    n = qp.shape[1] // chunk
    # (b, n*C, h, ...) -> (n, b, C, h, ...): chunks first for the reverse scan.
    split = lambda x: None if x is None else jnp.moveaxis(x.reshape((batch, n, chunk) + x.shape[2:]), 1, 0)
    qc, kc, vc, bc, gc, doc = (split(x) for x in (qp, kp, vp, bp, gp, dop))
    rc = None
    if run is not None:
        # Runs relative to the run entering each chunk: 0 is the entering state's segment.
        runp = jnp.pad(run, ((0, 0), (0, qp.shape[1] - length)), mode="edge").reshape(batch, n, chunk)
        run_in = jnp.concatenate([jnp.zeros_like(runp[:, :1, 0]), runp[:, :-1, -1]], axis=1)
        rc = jnp.moveaxis(runp - run_in[..., None], 1, 0)
    s_in = jnp.moveaxis(states, 2, 0)  # (n, b, h, dk, dv)

    # Every chunk at once: (n, b, ...) -> (n*b, ...).
    merge = lambda x: None if x is None else x.reshape((n * batch,) + x.shape[2:])
    qm, km, vm, bm, gm, rm, sm, dom = (merge(x) for x in (qc, kc, vc, bc, gc, rc, s_in, doc))

    def one_chunk(q_, k_, v_, b_, g_, s_):
        return _chunked(q_, k_, v_, b_, g_, s_, rm, chunk)

    # The chunk is affine in its entering state: S_out = F S_in + (terms without S_in),
    # F = gamma_C I - K_outᵀ W (dk x dk). F is the chunk run from S_in = I with zero values.
    heads, dk = qm.shape[2], qm.shape[3]
    # Inside shard_map the scan carry must vary like the chunks it meets.
    eye = match_vma(jnp.broadcast_to(jnp.eye(dk, dtype=jnp.float32), (n * batch, heads, dk, dk)), qm, km, bm)
    _, f = one_chunk(qm, km, jnp.zeros(km.shape, jnp.float32), bm, gm, eye)
    # What o sends back to the entering state (linear in do, independent of S_in's value).
    _, pull_s = jax.vjp(lambda s_: one_chunk(qm, km, vm, bm, gm, s_)[0], sm)
    (from_o,) = pull_s(dom)
    split_n = lambda x: x.reshape((n, batch) + x.shape[1:])

    def reverse(ds_out, x):
        f_j, from_o_j = x
        return jnp.einsum("bhkj,bhkv->bhjv", f_j, ds_out) + from_o_j, ds_out

    # Across chunks, matrix products only: dS_in = Fᵀ dS_out + (o's part).
    ds0, ds_out = lax.scan(reverse, dfinal.astype(jnp.float32), (split_n(f), split_n(from_o)), reverse=True)
    _, pull = jax.vjp(lambda q_, k_, v_, b_, g_: one_chunk(q_, k_, v_, b_, g_, sm), qm, km, vm, bm, gm)
    grads = pull((dom, merge(ds_out)))
    back = lambda x: jnp.moveaxis(x.reshape((n, batch) + x.shape[1:]), 0, 1).reshape(
        (batch, n * chunk) + x.shape[2:])[:, :length]
    dq, dk_, dv_, dbeta, dg = (None if x is None else back(x) for x in grads)
    return (dq.astype(q.dtype), dk_.astype(k.dtype), dv_.astype(v.dtype), dbeta.astype(beta.dtype),
            None if g is None else dg.astype(g.dtype), ds0.astype(s0.dtype), None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _delta(q, k, v, beta, g, s0, run, chunk, interpret):
    o, final, _ = _forward(q, k, v, beta, g, s0, run, chunk, interpret)
    return o, final


def _delta_fwd(q, k, v, beta, g, s0, run, chunk, interpret):
    o, final, states = _forward(q, k, v, beta, g, s0, run, chunk, interpret)
    return (o, final), (q, k, v, beta, g, s0, run, states)


def _delta_bwd(chunk, interpret, saved, cotangents):
    del interpret
    return _backward(*saved, *cotangents, chunk)


_delta.defvjp(_delta_fwd, _delta_bwd)


def _check_chunk(chunk):
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"delta_rule (impl='pallas'): chunk_size must be a power of two >= 16, got {chunk}")


def delta_rule_pallas(q, k, v, beta, *, log_decay=None, initial_state=None, segment_ids=None,
                      chunk_size=CHUNK, interpret=None):
    """The (gated) delta rule by the Pallas kernel, with :func:`seqjax.ops.delta_rule`'s signature.

    Differentiable (the backward is the interim XLA one, see the module
    docstring). Unlike the op's front door it keeps bf16 inputs bf16 into the
    kernel (bf16 ``q kᵀ`` and ``k kᵀ``, float32 accumulation and state).

    Args:
      q: queries ``(b, l, h, dk)``.
      k: keys ``(b, l, h, dk)``.
      v: values ``(b, l, h, dv)``.
      beta: writing strengths ``(b, l, h)``.
      log_decay: ``(b, l, h)`` log gates ``<= 0`` (Gated DeltaNet), or None (DeltaNet).
      initial_state: ``(b, h, dk, dv)`` state before the first token, or None for zeros.
      segment_ids: ``(b, l)`` integers; the state restarts where the id changes.
      chunk_size: the kernel's chunk ``C``, a power of two >= 16; any length works.
      interpret: None (the platform's kernel; interpreted on CPU), or ``"gpu"``
        / ``"tpu"`` to interpret that platform's kernel.

    Returns:
      ``(o, final_state)``: ``(b, l, h, dv)`` in the inputs' dtype and ``(b, h, dk, dv)`` float32.
    """
    q, k, v, beta = (jnp.asarray(x) for x in (q, k, v, beta))
    log_decay = None if log_decay is None else jnp.asarray(log_decay)
    segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
    initial_state = None if initial_state is None else jnp.asarray(initial_state)
    check_inputs(q, k, v, beta, log_decay, initial_state, segment_ids, chunk_size)
    _check_chunk(chunk_size)
    s0 = initial_state
    if s0 is None:
        s0 = jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), jnp.float32)
    run = None if segment_ids is None else segment_runs(segment_ids)
    o, final = _delta(*vary_alike(q, k, v, beta, log_decay, s0, run), chunk_size, interpret)
    return o.astype(jnp.result_type(q.dtype, k.dtype, v.dtype)), final.astype(jnp.float32)


@dispatch.register("delta_rule", "pallas")
def _pallas(q, k, v, beta, g, s0, run, chunk_size):
    _check_chunk(chunk_size)
    o, final = _delta(*vary_alike(q, k, v, beta, g, s0, run), chunk_size, None)
    return o.astype(q.dtype), final.astype(s0.dtype)


# No ``auto`` rows: auto keeps the XLA chunked form on every platform until the
# kernel is measured on a device (training needs the gradient, and the interim
# backward runs each chunk's solve three times in XLA).
