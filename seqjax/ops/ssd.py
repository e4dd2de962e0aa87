"""Mamba-2 state-space duality (SSD): ``ssd``.

Dao & Gu (2024), "Transformers are SSMs". Per head the state ``H_t`` (``p x n``)
follows a scalar-decay recurrence

    H_t = exp(dt_t A) H_{t-1} + dt_t x_t ⊗ B_t,        y_t = H_t C_t + D x_t,

which is also a masked, attention-like product: ``y = (L ∘ C Bᵀ)(dt x)`` with
``L[t, s] = exp(Σ_{s<r≤t} dt_r A)`` for ``s ≤ t``. The implementations differ
only in how they evaluate it:

  * ``"reference"``: the quadratic (dual) form over the whole sequence; it
    materialises ``(b, h, l, l)`` and is meant for checks and short sequences.
  * ``"sequential"``: the recurrence with :func:`seqjax.ops.linear_scan` over the
    ``(b, h, p, n)`` state; materialises ``(b, l, h, p, n)``.
  * ``"chunked"``: the SSD algorithm: the quadratic form inside chunks of
    ``chunk_size``, each chunk's end state, a ``linear_scan`` over chunk states
    (the only sequential part) and the state-to-output term.
  * ``"pallas"``: the chunked kernels of :mod:`seqjax.kernels.ssd` (GPU/TPU;
    interpreted, slowly, on CPU).
  * ``"auto"``: on TPU ``"pallas"`` (``docs/kernels.md``; on an H200 the
    kernel was ~50x slower than ``"chunked"``); otherwise
    ``"reference"`` when the sequence fits in one chunk
    (``l <= chunk_size``), where the chunked form computes the same quadratic
    form plus a chunk state and a scan that nothing needs (CPU, h=8, p=n=64:
    l=64 forward 0.44 vs 0.76 ms, forward+backward 4.0 vs 7.8 ms); otherwise
    ``"chunked"``, which wins from two chunks on and by far at length (CPU,
    forward, b=1, h=8, p=n=64, g=1, ``benchmarks/bench_ssd.py``: l=512 chunked
    7.1 ms vs quadratic 108 ms vs sequential 637 ms; l=2048: 70 vs 2524 vs
    2784 ms; l=8192: 432 ms, the others would need > 4 GiB). Timed on a shared,
    loaded 2-core machine: ratios are meaningful, absolute times are not.

Numerics: a decay between positions ``s ≤ t`` is ``exp`` of ``Σ_{s<r≤t} dt_r A``
computed as a masked cumulative sum (``_segsum``), not as a difference of two
prefix sums, whose gradient w.r.t. ``A`` cancels large terms (measured: 7e-4
relative error in ``dA`` at Σ dt·A ≈ -1e3, vs 2e-7 this way). Where ``s > t``
or the segments differ, the *exponent* is set to ``-inf`` before ``exp``
(``jnp.where`` on the exponent, not on the result), so no ``exp`` of a positive
number and no ``inf * 0`` appears in the forward pass or its gradient. Lengths
that are not a multiple of ``chunk_size`` are padded at the end with ``dt = 0``
and ``x = 0``, which leaves the state unchanged (``exp(0) = 1``); the chunk
size shrinks to the length for sequences shorter than one chunk.

Segments (packed sequences): with ``r_t`` the number of segment starts up to
``t``, positions ``s ≤ t`` interact iff ``r_s == r_t``, and a carried state
(the initial state, or a previous chunk's) reaches ``t`` only if ``r_t`` equals
``r`` at the carry's position (``0`` for the initial state).

Gradients are plain autodiff of these forms (``linear_scan`` brings its own
adjoint scan).

Sequence parallelism: ``sequence_axis=`` runs
:func:`seqjax.ops.ssd_sp.ssd_sp` (registered with the front door,
:mod:`seqjax.ops.dispatch`). Registered implementations take
``fn(x, dt, A, B, C, h0, r, segment_ids, chunk_size) -> (y, final)`` with
heads split as ``(g, e)`` (``x (b, l, g, e, p)``, ``dt (b, l, g, e)``, ``A (g,
e)``), ``r`` the ``(b, l)`` segment run indices, all in the accumulation dtype
(but ``x, B, C`` in bf16 where :func:`seqjax.ops.common.operand_dtype` says
so: ``"pallas"`` with bf16 inputs), returning ``y`` and ``final`` in the
accumulation dtype, and ``D`` left to the caller.
"""

import functools
import numbers

import jax
import jax.numpy as jnp

from seqjax.ops import dispatch
from seqjax.ops.common import accum_dtype, operand_dtype, pad_axis, segment_runs
from seqjax.ops.linear_scan import linear_scan
from seqjax.types import SegmentIds, SSDBC, SSDInput, SSDState, SSDStep

# Float32 contractions at full precision: on GPU/TPU the default would round
# operands to tf32/bf16, far outside the float32 tolerances SSD is held to.
_HIGHEST = jax.lax.Precision.HIGHEST


def ssd(
    x: SSDInput,
    dt: SSDStep,
    A: jax.Array,
    B: SSDBC,
    C: SSDBC,
    *,
    chunk_size: int = 64,
    D: jax.Array | None = None,
    initial_state: SSDState | None = None,
    segment_ids: SegmentIds | None = None,
    impl: str = "auto",
    sequence_axis: str | None = None,
) -> tuple[SSDInput, SSDState]:
    """Mamba-2 SSD: ``H_t = exp(dt_t A) H_{t-1} + dt_t x_t ⊗ B_t``, ``y_t = H_t C_t + D x_t``.

    Args:
      x: ``(b, l, h, p)`` inputs.
      dt: ``(b, l, h)`` positive step sizes (softplus and bias already applied).
      A: ``(h,)`` real decay rate per head (negative in practice).
      B: ``(b, l, g, n)`` input projections; the ``h`` heads are split into ``g``
        contiguous groups and head ``i`` uses group ``i // (h // g)``.
      C: ``(b, l, g, n)`` output projections, grouped like ``B``.
      chunk_size: chunk length for ``"chunked"`` (any sequence length works;
        the last chunk is padded). Must be ``>= 1``.
      D: ``(h,)`` skip connection, or None.
      initial_state: ``(b, h, p, n)`` state before the first position, or None
        for zeros; it applies to the first segment only.
      segment_ids: ``(b, l)`` integers; where the id changes the state restarts
        from zero, so packed sequences behave as separate ones.
      impl: one of ``"auto"``, ``"reference"``, ``"sequential"``, ``"chunked"``, ``"pallas"``.
      sequence_axis: sequence parallelism. When set, this call must run inside
        ``jax.shard_map`` with the length axis of ``x, dt, B, C`` (and
        ``segment_ids``) split contiguously over the mesh axis of this name
        (``A, D, initial_state`` replicated over it); ``y`` is then the local
        shard and ``final_state`` the global one. See
        :func:`seqjax.ops.ssd_sp.ssd_sp`.

    Returns:
      ``(y, final_state)``: ``y`` of shape ``(b, l, h, p)`` in ``x``'s dtype and
      the state after the last position, ``(b, h, p, n)``, in the accumulation
      dtype (float32, or float64 for float64 inputs).
    """
    dispatch.check("ssd", impl)
    if sequence_axis is not None:
        return dispatch.sequence_parallel("ssd")(
            x, dt, A, B, C, axis_name=sequence_axis, chunk_size=chunk_size, D=D,
            initial_state=initial_state, segment_ids=segment_ids, impl=impl)
    x, dt, A, B, C = map(jnp.asarray, (x, dt, A, B, C))
    D = None if D is None else jnp.asarray(D)
    initial_state = None if initial_state is None else jnp.asarray(initial_state)
    segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
    _check_args(x, dt, A, B, C, chunk_size, D, initial_state, segment_ids)
    impl = dispatch.resolve("ssd", impl, length=x.shape[1], chunk_size=int(chunk_size))
    return _ssd(x, dt, A, B, C, D, initial_state, segment_ids, chunk_size=int(chunk_size), impl=impl)


def _check_args(x, dt, A, B, C, chunk_size, D, h0, segment_ids):
    if x.ndim != 4:
        raise ValueError(f"ssd: x must be (batch, length, heads, head_dim), got shape {x.shape}")
    batch, length, heads, p = x.shape
    if length < 1:
        raise ValueError(f"ssd: x must have length >= 1, got shape {x.shape}")
    if dt.shape != (batch, length, heads):
        raise ValueError(f"ssd: dt must be (b, l, h) = {(batch, length, heads)}, got {dt.shape}")
    if A.shape != (heads,):
        raise ValueError(f"ssd: A must be (h,) = {(heads,)}, got {A.shape}")
    if B.ndim != 4 or B.shape[:2] != (batch, length):
        raise ValueError(f"ssd: B must be (b, l, g, n) with (b, l) = {(batch, length)}, got {B.shape}")
    if C.shape != B.shape:
        raise ValueError(f"ssd: C must have B's shape {B.shape}, got {C.shape}")
    groups, n = B.shape[2:]
    if groups < 1 or heads % groups:
        raise ValueError(
            f"ssd: the {heads} heads of x {x.shape} must split evenly into the "
            f"g={groups} groups of B {B.shape}"
        )
    if D is not None and D.shape != (heads,):
        raise ValueError(f"ssd: D must be (h,) = {(heads,)}, got {D.shape}")
    if h0 is not None and h0.shape != (batch, heads, p, n):
        raise ValueError(
            f"ssd: initial_state must be (b, h, p, n) = {(batch, heads, p, n)}, got {h0.shape}"
        )
    if segment_ids is not None and segment_ids.shape != (batch, length):
        raise ValueError(
            f"ssd: segment_ids must be (b, l) = {(batch, length)}, got {segment_ids.shape}"
        )
    if not isinstance(chunk_size, numbers.Integral) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be an integer >= 1, got {chunk_size!r}")


@functools.partial(jax.jit, static_argnames=("chunk_size", "impl"))
def _ssd(x, dt, A, B, C, D, h0, segment_ids, *, chunk_size, impl):
    out_dtype = x.dtype
    dtype = accum_dtype(*(t.dtype for t in (x, dt, A, B, C, D, h0) if t is not None))
    batch, length, heads, p = x.shape
    groups, n = B.shape[2:]
    e = heads // groups  # heads per group
    # bf16 x, B, C stay bf16 for the kernels (their matmuls accumulate in float32).
    operand = operand_dtype(impl, dtype, x.dtype, B.dtype, C.dtype)
    # Heads as (group, head-in-group) so B and C are shared without copies.
    x = x.reshape(batch, length, groups, e, p)
    dt = dt.astype(dtype).reshape(batch, length, groups, e)
    A = A.astype(dtype).reshape(groups, e)
    B, C = B.astype(operand), C.astype(operand)
    if h0 is not None:
        h0 = h0.astype(dtype)
    r = jnp.zeros((batch, length), jnp.int32) if segment_ids is None else segment_runs(segment_ids)
    y, final = dispatch.implementation("ssd", impl)(x.astype(operand), dt, A, B, C, h0, r, segment_ids, chunk_size)
    if D is not None:
        y = y + D.astype(dtype).reshape(groups, e)[:, :, None] * x.astype(dtype)
    return y.reshape(batch, length, heads, p).astype(out_dtype), final.astype(dtype)


def _decay(exponent, keep):
    # exp(exponent) where `keep`, exactly 0 elsewhere. The -inf goes into the
    # exponent so that masked entries never see exp of a positive number, and
    # the where's gradient (not a product with 0) drops them in the backward.
    return jnp.exp(jnp.where(keep, exponent, -jnp.inf))


def _segsum(a):
    """``out[..., t, s] = Σ_{s<r≤t} a[..., r]`` for ``t ≥ s`` (0 above the diagonal).

    A cumulative sum, along ``t``, of ``a_t`` masked to ``t > s``, rather than
    ``cs_t - cs_s``: the difference of two large prefix sums loses their
    rounding (~ulp(|cs|)) and, worse, its gradient w.r.t. ``a`` is a sum of
    large terms that cancel (``dA`` was off by 2.7e-4 with 64-step chunks and
    7e-4 over 130 steps at Σ dt·A ≈ -1e3); here every term is a genuine one.
    """
    q = a.shape[-1]
    idx = jnp.arange(q)
    strict = idx[:, None] > idx[None, :]
    return jnp.cumsum(jnp.where(strict, a[..., :, None], 0), axis=-2)


@dispatch.register("ssd", "reference")
def _quadratic(x, dt, A, B, C, h0, r, segment_ids, chunk_size):
    """The dual form over the whole sequence; x (b, l, g, e, p), dt (b, l, g, e)."""
    del segment_ids, chunk_size
    batch, length, groups, e, p = x.shape
    cs = jnp.cumsum(dt * A, axis=1)  # (b, l, g, e): Σ_{r≤t} dt_r A
    xdt = x * dt[..., None]
    t_idx = jnp.arange(length)
    causal = t_idx[:, None] >= t_idx[None, :]
    same = causal & (r[:, :, None] == r[:, None, :])  # (b, t, s)
    seg = _segsum(jnp.moveaxis(dt * A, 1, -1))  # (b, g, e, t, s)
    L = _decay(seg, same[:, None, None])
    CB = jnp.einsum("btgn,bsgn->bgts", C, B, precision=_HIGHEST)
    y = jnp.einsum("bgets,bgts,bsgep->btgep", L, CB, xdt, precision=_HIGHEST)

    # State after the last position: inputs of the last segment, decayed to the end.
    same_end = (r == r[:, -1:])[..., None, None]
    w_end = _decay(jnp.moveaxis(seg[..., -1, :], -1, 1), same_end)  # (b, l, g, e)
    final = jnp.einsum("bsgn,bsge,bsgep->bgepn", B, w_end, xdt, precision=_HIGHEST)
    if h0 is not None:
        h0 = h0.reshape(batch, groups, e, p, B.shape[-1])
        first = (r == 0)[..., None, None]
        w0 = _decay(cs, first)  # (b, l, g, e)
        y = y + jnp.einsum("btgn,bgepn,btge->btgep", C, h0, w0, precision=_HIGHEST)
        final = final + _decay(cs[:, -1], first[:, -1])[..., None, None] * h0
    return y, final.reshape(batch, groups * e, p, B.shape[-1])


@dispatch.register("ssd", "sequential")
def _sequential(x, dt, A, B, C, h0, r, segment_ids, chunk_size):
    """The recurrence over time with linear_scan over the (b, h, p, n) state."""
    del r, chunk_size
    batch, length, groups, e, p = x.shape
    n = B.shape[-1]
    a = jnp.exp(dt * A).reshape(batch, length, groups * e, 1, 1)
    inp = jnp.einsum("blgep,blgn->blgepn", x * dt[..., None], B, precision=_HIGHEST)
    states, final = linear_scan(
        a, inp.reshape(batch, length, groups * e, p, n), h0, segment_ids=segment_ids
    )
    states = states.reshape(batch, length, groups, e, p, n)
    y = jnp.einsum("blgepn,blgn->blgep", states, C, precision=_HIGHEST)
    return y, final


@dispatch.register("ssd", "chunked")
def _chunked(x, dt, A, B, C, h0, r, segment_ids, chunk_size):
    """The SSD algorithm; x (b, l, g, e, p), dt (b, l, g, e), r (b, l)."""
    del segment_ids
    batch, length, groups, e, p = x.shape
    n = B.shape[-1]
    q = min(chunk_size, length)
    # dt = 0 and x = 0 at the padding: decay exp(0) = 1 and no input, so the
    # state passes through unchanged; r continues the last segment.
    x, dt, B, C = (pad_axis(t, q, axis=1) for t in (x, dt, B, C))
    r = jnp.pad(r, ((0, 0), (0, x.shape[1] - length)), mode="edge")
    nc = x.shape[1] // q

    def chunks(t):
        return t.reshape((batch, nc, q) + t.shape[2:])

    x, dt, B, C, r = map(chunks, (x, dt, B, C, r))
    xdt = x * dt[..., None]  # (b, c, q, g, e, p)
    # Restarting the cumulative sum in every chunk bounds its magnitude.
    cs = jnp.cumsum(dt * A, axis=2)  # (b, c, q, g, e)

    # (1) Intra-chunk outputs: the quadratic form on each chunk.
    t_idx = jnp.arange(q)
    causal = t_idx[:, None] >= t_idx[None, :]
    same = causal & (r[..., :, None] == r[..., None, :])  # (b, c, t, s)
    seg = _segsum(jnp.moveaxis(dt * A, 2, -1))  # (b, c, g, e, t, s)
    L = _decay(seg, same[:, :, None, None])
    CB = jnp.einsum("bctgn,bcsgn->bcgts", C, B, precision=_HIGHEST)
    y = jnp.einsum("bcgets,bcgts,bcsgep->bctgep", L, CB, xdt, precision=_HIGHEST)

    # (2) Each chunk's own end state (its inputs only, last segment only).
    r_end = r[:, :, -1]  # (b, c)
    seg_end = jnp.moveaxis(seg[..., -1, :], -1, 2)  # (b, c, s, g, e): Σ_{s<r≤end}
    w_end = _decay(seg_end, (r == r_end[..., None])[..., None, None])
    states = jnp.einsum("bcsgn,bcsge,bcsgep->bcgepn", B, w_end, xdt, precision=_HIGHEST)

    # (3) Inter-chunk recurrence: the state entering chunk c is the one at the
    # end of chunk c-1 (the initial state for c = 0, which belongs to r = 0).
    # It survives chunk c only if no segment starts in it.
    r_in = jnp.concatenate([jnp.zeros_like(r_end[:, :1]), r_end[:, :-1]], axis=1)
    chunk_decay = _decay(cs[:, :, -1], (r_end == r_in)[..., None, None])  # (b, c, g, e)
    if h0 is None:
        h0 = jnp.zeros((batch, groups * e, p, n), x.dtype)
    ends, final = linear_scan(
        chunk_decay.reshape(batch, nc, groups * e, 1, 1),
        states.reshape(batch, nc, groups * e, p, n),
        h0,
    )
    h_in = jnp.concatenate([h0[:, None], ends[:, :-1]], axis=1)
    h_in = h_in.reshape(batch, nc, groups, e, p, n)

    # (4) State-to-output: the entering state, decayed to t, if t is still in
    # the carry's segment.
    w_in = _decay(cs, (r == r_in[..., None])[..., None, None])  # (b, c, q, g, e)
    y = y + jnp.einsum("bctgn,bcgepn,bctge->bctgep", C, h_in, w_in, precision=_HIGHEST)
    y = y.reshape((batch, nc * q, groups, e, p))[:, :length]
    return y, final
