"""The delta rule (DeltaNet) and the gated delta rule (Gated DeltaNet): recurrent and chunked forms.

The state is a ``(dk, dv)`` matrix per head (the orientation of
:func:`seqjax.ops.linear_attention`; the papers write its transpose, ``dv x
dk``). With ``a_t = exp(log_decay_t)`` (1 without a decay)::

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
        = a_t S_{t-1} + k_t u_t^T,   u_t = beta_t (v_t - a_t S_{t-1}^T k_t)
    o_t = S_t^T q_t                               (the current token is included)

  * no decay: DeltaNet (Schlag et al. 2021; parallelised by Yang, Wang, Zhang,
    Shen and Kim 2024, "Parallelizing Linear Transformers with the Delta Rule
    over Sequence Length");
  * a data-dependent scalar per head and step, ``log_decay`` ``(b, l, h)``:
    Gated DeltaNet (Yang, Kautz and Hatamizadeh 2024, "Gated Delta Networks:
    Improving Mamba2 with Delta Rule").

Each step writes ``v_t`` at key ``k_t`` after erasing (a fraction ``beta_t``
of) what the state held there: one step of online regression of values on
keys. It is stable (``I - beta k k^T`` a contraction) for ``|k_t| = 1`` and
``0 <= beta_t <= 1``, which the mixers ensure (L2-normalised keys, a sigmoid
beta); the op itself takes any values.

Implementations (``impl``):
  * ``"sequential"``: the recurrence, a ``lax.scan`` over positions carrying S
    in float32.
  * ``"chunked"``: the WY / UT-transform chunkwise form (Yang et al. 2024,
    Section 3; its gated version in Gated DeltaNet, Section 3.3). Inside a
    chunk of C positions entered with state ``S_0``, with ``gamma_r`` the
    decay from the chunk start to ``r`` and ``A[r, i] = beta_r
    (gamma_r / gamma_i) k_r . k_i`` for ``i < r`` (0 otherwise), the pseudo
    values ``u`` solve the unit lower-triangular system::

        (I + A) U = diag(beta) V - diag(beta gamma) K S_0
        i.e. U = T diag(beta) V - T diag(beta gamma) K S_0,  T = (I + A)^-1

    (``T diag(beta) V`` and ``W = T diag(beta gamma) K`` are the UT
    transform's; one triangular solve per chunk gives both, no inverse is
    formed). Then ``o_r = gamma_r S_0^T q_r + sum_{i<=r} (gamma_r/gamma_i)
    (q_r . k_i) u_i`` and the state leaving the chunk is ``gamma_C S_0 +
    sum_i (gamma_C/gamma_i) k_i u_i^T``. Everything but ``U = U_v - W S_0``
    and the state update is computed for all chunks at once; a ``lax.scan``
    over chunks carries S (matrix products only).
  * ``"reference"``: the same UT transform over the whole sequence as one
    chunk: an ``(l, l)`` triangular solve per head and no scan, i.e. the
    materialised form (O(l^2) memory; for checks and short inputs).
  * ``"pallas"``: the forward kernel of :mod:`seqjax.kernels.delta_rule`
    (the chunked form with the state on chip; its backward is, for now, this
    module's chunked form run from the kernel's chunk states). Interpreted,
    slowly, on CPU; ``"auto"`` does not pick it (not yet measured on a device).
  * ``"auto"``: ``"chunked"`` at every length. Measured on a shared 2-core
    CPU with LAPACK's solve, before :mod:`seqjax.ops.triangular` (b=1, h=4,
    dk=dv=64, gated, ms at l = 64 / 512 / 2048; noisy): with
    gradients, sequential 28 / 237 / 784 vs chunked 1.7 / 49 / 405; forward
    alone the scan is faster (0.6 / 10 / 15 vs 0.7 / 88 / 58: on CPU the
    per-chunk triangular solves cost more than the scan), but training needs
    the gradient. Chunked vs sequential at l = 2048, float32: 4e-7 relative.
    Not yet measured on an accelerator.

Numerical safety, as in :mod:`seqjax.ops.linear_attention`: every decay
``gamma_r / gamma_i`` is the exp of the masked *sum* of the log decays in
``(i, r]`` (a segment sum), never of a difference of running sums; pairs with
``i > r`` and pairs split by a segment start are masked before ``exp``. The
triangular system is solved by substitution (:func:`seqjax.ops.triangular.solve_unit_lower`:
forward substitution in JAX on CPU, where jaxlib's batched LAPACK solve can
deadlock, ``lax.linalg.triangular_solve`` on GPU/TPU): the Neumann series ``sum_j (-A)^j`` that a product-of-squares inverse would
evaluate has terms of order ``binom(C, j)`` when keys align, and cancels
catastrophically in float32.

Segments: where ``segment_ids`` changes the state restarts from zero (as if
``a_t = 0``); ``initial_state`` belongs to the first segment.

Gradients come from autodiff of whichever form runs (the triangular solve
differentiates into triangular solves; on CPU a custom VJP back-substitutes). ``"sequential"`` keeps one state per
position for the backward pass, ``(l, b, h, dk, dv)``; ``"chunked"`` one per
chunk.
"""

import jax
import jax.numpy as jnp

from seqjax.ops import dispatch
from seqjax.ops.common import accum_dtype, check_heads_inputs, check_segments_and_chunk, pad_axis, segment_runs
from seqjax.ops.triangular import solve_unit_lower
from seqjax.types import AttnOut, Keys, LinAttnState, Queries, SegmentIds, Values


def delta_rule(
    q: Queries,
    k: Keys,
    v: Values,
    beta: jax.Array,
    *,
    log_decay: jax.Array | None = None,
    initial_state: LinAttnState | None = None,
    segment_ids: SegmentIds | None = None,
    chunk_size: int = 64,
    impl: str = "auto",
    sequence_axis: str | None = None,
) -> tuple[AttnOut, LinAttnState]:
    """The (gated) delta rule ``S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t``.

    q and k are used as given: normalisation (the papers L2-normalise q and
    k) and the ``dk^-1/2`` query scale are the caller's.

    Args:
      q: queries ``(b, l, h, dk)``.
      k: keys ``(b, l, h, dk)`` (unit norm for a stable recurrence).
      v: values ``(b, l, h, dv)``.
      beta: writing strengths ``(b, l, h)`` (in ``[0, 1]`` for stability; not
        checked, the values may be traced).
      log_decay: ``(b, l, h)`` log of the gate ``a_t`` (Gated DeltaNet's
        ``alpha_t``), entries <= 0 (not checked); None: no decay (DeltaNet).
      initial_state: ``(b, h, dk, dv)`` state before the first token (zeros if
        None), in the ``(dk, dv)`` orientation; it applies to the first
        segment only.
      segment_ids: ``(b, l)`` integers; where the id changes the state restarts
        from zero, so packed sequences give what separate calls give.
      chunk_size: chunk length of ``"chunked"``; any sequence length works
        (the end is padded with zero keys, values and beta, which leave the
        state unchanged).
      impl: ``"auto"``, ``"sequential"``, ``"chunked"``, ``"reference"`` or
        ``"pallas"`` (:mod:`seqjax.kernels.delta_rule`; ``chunk_size`` a power
        of two >= 16).
      sequence_axis: sequence parallelism. When set, this call must run inside
        ``jax.shard_map`` with the length split contiguously over this mesh
        axis (:func:`seqjax.ops.delta_rule_sp.delta_rule_sp`: one local run,
        one ``all_gather`` of the shards' transition matrices and final
        states); ``o`` is then the local shard's, the final state global.

    Returns:
      ``(o, final_state)``: ``o`` ``(b, l, h, dv)`` in the inputs' dtype and the
      state after the last token ``(b, h, dk, dv)`` in the accumulation dtype
      (float32, float64 for float64 inputs), ready to pass back as
      ``initial_state``.
    """
    dispatch.check("delta_rule", impl)
    if sequence_axis is not None:
        return dispatch.sequence_parallel("delta_rule")(
            q, k, v, beta, axis_name=sequence_axis, log_decay=log_decay, initial_state=initial_state,
            segment_ids=segment_ids, chunk_size=chunk_size, impl=impl)
    q, k, v, beta = (jnp.asarray(x) for x in (q, k, v, beta))
    log_decay = None if log_decay is None else jnp.asarray(log_decay)
    initial_state = None if initial_state is None else jnp.asarray(initial_state)
    segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
    check_inputs(q, k, v, beta, log_decay, initial_state, segment_ids, chunk_size)

    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    extra = [x.dtype for x in (beta, log_decay, initial_state) if x is not None]
    dtype = accum_dtype(q.dtype, k.dtype, v.dtype, *extra)
    q, k, v, beta = (x.astype(dtype) for x in (q, k, v, beta))
    g = None if log_decay is None else log_decay.astype(dtype)
    s0 = jnp.zeros((batch, heads, dk, dv), dtype) if initial_state is None else initial_state.astype(dtype)
    # Run index: 0 for the first segment, +1 at each start; the initial state is run 0's.
    run = None if segment_ids is None else segment_runs(segment_ids)
    impl = dispatch.resolve("delta_rule", impl, length=length, chunk_size=chunk_size)
    o, state = dispatch.implementation("delta_rule", impl)(q, k, v, beta, g, s0, run, chunk_size)
    return o.astype(out_dtype), state


def check_inputs(q, k, v, beta, log_decay, initial_state, segment_ids, chunk_size) -> None:
    """Raises a one-line ValueError naming the first argument of ``delta_rule`` that is wrong."""
    batch, length, heads, dk = check_heads_inputs("delta_rule", q, k, v, {"beta": beta},
                                                  {"beta": beta, "log_decay": log_decay})
    if initial_state is not None and initial_state.shape != (batch, heads, dk, v.shape[-1]):
        raise ValueError(
            f"delta_rule: initial_state {initial_state.shape} must be (b, h, dk, dv) = {(batch, heads, dk, v.shape[-1])}")
    check_segments_and_chunk("delta_rule", segment_ids, batch, length, chunk_size)


# --- recurrent form ----------------------------------------------------------


@dispatch.register("delta_rule", "sequential")
def _recurrent(q, k, v, beta, g, s0, run, chunk_size):
    del chunk_size
    batch, length = q.shape[:2]
    # Per-step state factor a_t (b, l, h); a segment start multiplies by 0.
    a = jnp.ones(beta.shape, q.dtype) if g is None else jnp.exp(g)
    if run is not None:
        keep = jnp.concatenate([jnp.ones((batch, 1), bool), run[:, 1:] == run[:, :-1]], axis=1)
        a = a * keep.astype(q.dtype)[:, :, None]
    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, beta, a))

    def step(state, x):
        q_t, k_t, v_t, b_t, a_t = x
        state = a_t[..., None, None] * state
        # What the state recalls at k_t, replaced by v_t at rate beta_t.
        u = b_t[..., None] * (v_t - jnp.einsum("bhk,bhkv->bhv", k_t, state))
        state = state + k_t[..., :, None] * u[..., None, :]
        return state, jnp.einsum("bhk,bhkv->bhv", q_t, state)

    final, o = jax.lax.scan(step, s0, xs)
    return jnp.moveaxis(o, 0, 1), final


# --- chunked (WY / UT transform) form ----------------------------------------


def _segsum(a):
    """``out[..., r, i] = sum_{i < j <= r} a[..., j]`` for ``i <= r`` (0 on the diagonal; garbage above).

    Sums of the log decays in between, not differences of cumulative sums
    (which keep only ~ulp(|cumsum|) of absolute precision).
    """
    n = a.shape[-1]
    strict = jnp.arange(n)[:, None] > jnp.arange(n)[None, :]  # (j, i): j > i
    return jnp.cumsum(jnp.where(strict, a[..., :, None], 0), axis=-2)


@dispatch.register("delta_rule", "chunked")
def _chunked(q, k, v, beta, g, s0, run, chunk_size):
    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    chunk = min(chunk_size, length)
    # Zero k, v, beta (and log decay) at the end: u = 0 there, the state passes unchanged.
    q, k, v, beta = (pad_axis(x, chunk, axis=1) for x in (q, k, v, beta))
    padded = q.shape[1]
    n = padded // chunk
    # Heads before positions inside a chunk: (b, n, h, C, ...).
    split = lambda x: jnp.swapaxes(x.reshape((batch, n, chunk, heads) + x.shape[3:]), 2, 3)  # noqa: E731
    qc, kc, vc, bc = split(q), split(k), split(v), split(beta)
    tri = jnp.tril(jnp.ones((chunk, chunk), bool))
    same = jnp.broadcast_to(tri, (batch, n, heads, chunk, chunk))  # (r, i): i <= r, same segment
    reach = end_reach = None  # does the state entering the chunk reach r / the chunk's end
    if run is not None:
        # Padding continues the last run, so it never starts a segment.
        runc = jnp.pad(run, ((0, 0), (0, padded - length)), mode="edge").reshape(batch, n, chunk)
        run_in = jnp.concatenate([jnp.zeros_like(runc[:, :1, 0]), runc[:, :-1, -1]], axis=1)  # (b, n)
        same = same & (runc[:, :, None, :, None] == runc[:, :, None, None, :])
        reach = jnp.broadcast_to((runc == run_in[..., None])[:, :, None], (batch, n, heads, chunk))
        end_reach = reach[..., -1]  # (b, n, h): no start inside the chunk
        to_end = jnp.broadcast_to((runc == runc[..., -1:])[:, :, None], (batch, n, heads, chunk))
    if g is None:
        decay = same.astype(q.dtype)  # gamma_r / gamma_i, masked
        gamma = jnp.ones((batch, n, heads, chunk), q.dtype)  # gamma_r
        gamma_end = jnp.ones((batch, n, heads), q.dtype)
        k_end = jnp.ones((batch, n, heads, chunk), q.dtype)  # gamma_C / gamma_i
    else:
        gc = split(pad_axis(g, chunk, axis=1))  # (b, n, h, C)
        decay = jnp.exp(jnp.where(same, _segsum(gc), -jnp.inf))
        gamma = jnp.exp(jnp.cumsum(gc, axis=-1))
        gamma_end = gamma[..., -1]
        # Decay from i to the chunk end: the sum of the log decays after i.
        after = jnp.concatenate([gc[..., 1:], jnp.zeros_like(gc[..., :1])], axis=-1)
        k_end = jnp.exp(jax.lax.cumsum(after, axis=3, reverse=True))
    if run is not None:
        gamma = jnp.where(reach, gamma, 0)
        gamma_end = jnp.where(end_reach, gamma_end, 0)
        k_end = jnp.where(to_end, k_end, 0)

    # The UT transform: (I + A) [U_v | W] = [diag(beta) V | diag(beta gamma) K].
    kk = jnp.einsum("bnhrk,bnhik->bnhri", kc, kc)
    strict = ~jnp.eye(chunk, dtype=bool)
    A = jnp.where(strict, bc[..., None] * decay * kk, 0)
    rhs = jnp.concatenate([bc[..., None] * vc, (bc * gamma)[..., None] * kc], axis=-1)
    sol = solve_unit_lower(A, rhs)
    u_v, w = sol[..., :dv], sol[..., dv:]

    # Across chunks: U = U_v - W S_in, S_out = gamma_C S_in + (K * gamma_C/gamma_i)^T U.
    k_out = kc * k_end[..., None]

    def step(state, x):
        u_v_j, w_j, k_out_j, gamma_end_j = x
        u = u_v_j - jnp.einsum("bhrk,bhkv->bhrv", w_j, state)
        new = gamma_end_j[..., None, None] * state + jnp.einsum("bhrk,bhrv->bhkv", k_out_j, u)
        return new, (u, state)

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (u_v, w, k_out, gamma_end))
    final, (u, states_in) = jax.lax.scan(step, s0, xs)
    u, states_in = jnp.moveaxis(u, 0, 1), jnp.moveaxis(states_in, 0, 1)

    # o_r = gamma_r S_in^T q_r + sum_{i<=r} (gamma_r/gamma_i) (q_r . k_i) u_i.
    scores = jnp.einsum("bnhrk,bnhik->bnhri", qc, kc) * decay
    o = jnp.einsum("bnhri,bnhiv->bnhrv", scores, u)
    o = o + jnp.einsum("bnhrk,bnhkv->bnhrv", qc * gamma[..., None], states_in)
    o = jnp.swapaxes(o, 2, 3).reshape(batch, padded, heads, dv)
    return o[:, :length], final


@dispatch.register("delta_rule", "reference")
def _reference(q, k, v, beta, g, s0, run, chunk_size):
    # One chunk spanning the sequence: the whole (l, l) UT system at once.
    del chunk_size
    return _chunked(q, k, v, beta, g, s0, run, q.shape[1])
