"""Linear attention with optional decay: parallel, recurrent and chunked forms.

One op covers the linear-attention family (the state is a (dk x dv) matrix per
head):

    S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_t^T
    o_t = S_t^T q_t                     (the current token is included)

  * no decay: Katharopoulos et al. 2020 ("Transformers are RNNs");
  * a fixed decay per head, ``log_decay`` of shape ``(h,)``: RetNet (log gamma_h);
  * a data-dependent scalar per head and step, ``(b, l, h)``;
  * a data-dependent decay per key channel, ``(b, l, h, dk)``: GLA's alpha_t.

The decay scales the rows of S (the key channels). Unrolled, with c_t the
cumulative sum of ``log_decay`` up to and including t:

    o_t = sum_{s <= t} sum_j q_t[j] k_s[j] exp(c_t[j] - c_s[j]) v_s
          + (q_t * exp(c_t))^T S_{-1}.

Implementations (``impl``):
  * ``"reference"``: that masked quadratic form over the whole sequence; it
    materialises ``(b, h, l, l)`` scores (``(b, h, l, l, dk)`` decays for a
    per-channel decay).
  * ``"sequential"``: the recurrence, a ``lax.scan`` over time carrying S.
  * ``"chunked"``: the chunkwise-parallel form of RetNet/GLA: the quadratic form
    inside chunks of ``chunk_size``, one state summary per chunk, and a
    ``lax.scan`` over chunks that carries S between them. For a per-channel decay
    the intra-chunk scores use GLA's secondary chunking: exact pairwise decays
    on diagonal sub-blocks of up to ``SUB_CHUNK`` = 8 positions, and for
    earlier sub-blocks the factorisation exp(c_t - c_s) = exp(c_t - r) exp(r - c_s) through the
    cumulative decay r at the end of the preceding sub-block, where both factors
    are <= 1 (each exponent again a sum of the log decays it spans).
  * ``"pallas"``: the chunked kernels of :mod:`seqjax.kernels.linear_attention`
    (causal calls; GPU/TPU, interpreted, slowly, on CPU).
  * ``"auto"``: ``"pallas"`` on TPU (``docs/kernels.md``); ``"chunked"``
    on GPU (the kernel's backward did not launch on an H200 at d = 128
    float32) and on CPU at every length, except a per-channel decay with
    ``dv <= 32`` on CPU, which runs ``"sequential"``: with narrow heads the
    intra-chunk decays are elementwise work that no matmul amortises
    (gradients, b=128, h=4, idle 2-core VM, ``benchmarks/results/vm-cpu-paths.json``:
    dk=8, dv=16: 8.0 vs 28.0 ms at l = 22, 175 vs 265 ms at l = 256; dk=dv=16:
    17.9 vs 76.1 and 373 vs 524 ms; dk=dv=32, on par: 94 vs 169 and 1129 vs
    1030 ms; dk=32, dv=64, chunked wins: 180 vs 136 and 2097 vs 1131 ms). The wide-head
    comparison, with ``benchmarks/bench_linear_attention.py`` (b=1, h=4, dk=dv=64, 2 dedicated
    CPU cores; ms at l = 512 / 2048 / 8192): gradients, sequential 33 / 112 / 532 vs
    chunked 3 / 17 / 129 without decay, and 33 / 161 / 619 vs 10 / 91 / 342 with
    a GLA decay; forward alone, sequential is on par without decay (2 / 8 / 29
    vs 2 / 7 / 49) and 2-3x faster with a GLA decay (2 / 8 / 53 vs 5 / 21 / 121),
    but training needs the gradient. On an H100 the scan is 20-40x slower than
    chunked (10-12 ms vs 0.3-0.6 ms at l = 512). For l <= chunk_size, chunked
    is the quadratic form over one chunk, i.e. ``"reference"`` with cheaper
    per-channel decays, so short sequences need no separate rule.

Numerical safety: every exponent c_t - c_s (s <= t) is computed as the sum
of the log decays between s and t (a masked segment sum, as ``ssd`` does, or a
prefix or suffix sum inside a chunk), never as the difference of two
cumulative sums, which keeps only ~ulp(|c|) of absolute precision once |c| is
large: under strong decay (log decays of -5 to -20 on half the steps, float32,
chunk 64) the difference form was off by 1.4e-5 (per head) and 7.7e-6 (per
channel) relative to the float64 recurrence, the sums by 1.0e-7 and 1.5e-7
(``tests/ops/test_linear_attention.py``, ``benchmarks/cpu_paths.py``). All
exponents are <= 0 when ``log_decay <= 0``; pairs with s > t are masked with
``jnp.where`` *before* ``exp`` so neither the values nor the gradients ever
see ``exp`` of a positive number (no inf * 0 = nan).

Sequence parallelism: ``sequence_axis=`` (inside ``jax.shard_map``, the length
split over that mesh axis) runs :func:`seqjax.ops.linear_attention_sp.linear_attention_sp`
(registered with the front door, :mod:`seqjax.ops.dispatch`): local runs plus
one all-gather of per-shard (decay product, final state) pairs.

Registered implementations are the *causal* forms ``fn(q, k, v, g, s0, run,
chunk_size) -> (o, final_state)`` in the accumulation dtype (``q, k, v`` in
bf16 where :func:`seqjax.ops.common.operand_dtype` says so: ``"pallas"``
with bf16 inputs), with ``g`` the
per-step log decay as ``(b, l, h, 1 or dk)`` (or None) and ``run`` the segment
run indices (or None); the bidirectional form is built from two causal runs.

Gradients come from autodiff of whichever form runs. ``lax.scan`` keeps its
carries for the backward pass: ``(l, b, h, dk, dv)`` for ``"sequential"``, one
state per chunk for ``"chunked"``.
"""

import jax
import jax.numpy as jnp

from seqjax.ops import dispatch
from seqjax.ops.collectives import match_vma
from seqjax.ops.common import accum_dtype, broadcast_axis, operand_dtype, pad_axis, segment_runs
from seqjax.types import AttnOut, Keys, LinAttnState, LogDecay, Queries, SegmentIds, Values
# Largest diagonal sub-block of the per-channel-decay intra-chunk scores: 8
# beat 4 and 16 on CPU (exps cost ~ l * dk * (chunk / SUB_CHUNK + SUB_CHUNK)).
SUB_CHUNK = 8


def linear_attention(
    q: Queries,
    k: Keys,
    v: Values,
    *,
    log_decay: LogDecay | None = None,
    causal: bool = True,
    initial_state: LinAttnState | None = None,
    segment_ids: SegmentIds | None = None,
    chunk_size: int = 64,
    impl: str = "auto",
    sequence_axis: str | None = None,
) -> tuple[AttnOut, LinAttnState]:
    """Linear attention ``o_t = S_t^T q_t`` with ``S_t = diag(a_t) S_{t-1} + k_t v_t^T``.

    Feature maps (elu + 1, FAVOR+ features, scaling, ...) are the caller's: q
    and k are used as given. The op does no normalisation. Katharopoulos et
    al.'s denominator ``q_t . sum_{s<=t} k_s`` comes out of the same op by
    appending a ones column to ``v``::

        ones = jnp.ones(v.shape[:-1] + (1,), v.dtype)
        o, _ = linear_attention(q, k, jnp.concatenate([v, ones], -1))
        out = o[..., :-1] / (o[..., -1:] + eps)

    Args:
      q: queries ``(b, l, h, dk)``, feature map applied.
      k: keys ``(b, l, h, dk)``, feature map applied.
      v: values ``(b, l, h, dv)``.
      log_decay: log of the per-step decay a_t, all entries <= 0 (not checked:
        the values may be traced). None (no decay); ``(h,)`` fixed per head
        (RetNet: log gamma_h); ``(b, l, h)`` data-dependent per head; or
        ``(b, l, h, dk)`` data-dependent per key channel (GLA's alpha_t).
      causal: True for the recurrence above. False for the bidirectional
        ``o_t = sum_s (q_t . k_s) v_s`` over t's whole segment; allowed only
        without ``log_decay`` and ``initial_state``.
      initial_state: ``(b, h, dk, dv)`` state before the first token (zeros if
        None); it applies to the first segment only.
      segment_ids: ``(b, l)`` integers; where the id changes the state restarts
        from zero, so packed sequences give the same result as separate calls.
      chunk_size: chunk length of ``"chunked"``; any length works (the sequence
        is padded at the end with zero keys/values and zero log decay, which
        leaves the final state unchanged).
      impl: ``"auto"``, ``"reference"``, ``"sequential"``, ``"chunked"`` or ``"pallas"`` (causal only).
      sequence_axis: sequence parallelism. When set, this call must run inside
        ``jax.shard_map`` with the length axis of ``q, k, v`` (and of a
        ``(b, l, h)`` or ``(b, l, h, dk)`` ``log_decay`` and of ``segment_ids``)
        split contiguously over the mesh axis of this name (an ``(h,)``
        ``log_decay`` and ``initial_state`` replicated over it); ``o`` is then
        the local shard and ``final_state`` the global one. ``causal=False``
        is supported there without ``segment_ids``. See
        :func:`seqjax.ops.linear_attention_sp.linear_attention_sp`.

    Returns:
      ``(o, final_state)``: ``o`` ``(b, l, h, dv)`` in the inputs' dtype and the
      state after the last token ``(b, h, dk, dv)`` in the accumulation dtype
      (float32, or float64 for float64 inputs), ready to pass back as
      ``initial_state``. With ``causal=False`` the final state is the last
      segment's ``sum_s k_s v_s^T``.
    """
    dispatch.check("linear_attention", impl)
    if sequence_axis is not None:
        return dispatch.sequence_parallel("linear_attention")(
            q, k, v, axis_name=sequence_axis, log_decay=log_decay, causal=causal,
            initial_state=initial_state, segment_ids=segment_ids, chunk_size=chunk_size, impl=impl)
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    log_decay = None if log_decay is None else jnp.asarray(log_decay)
    initial_state = None if initial_state is None else jnp.asarray(initial_state)
    segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
    check_inputs(q, k, v, log_decay, initial_state, segment_ids, chunk_size)
    if not causal and (log_decay is not None or initial_state is not None):
        raise ValueError(
            "linear_attention: causal=False sums over the whole segment in both "
            "directions and takes neither log_decay nor initial_state "
            f"(got log_decay={None if log_decay is None else log_decay.shape}, "
            f"initial_state={None if initial_state is None else initial_state.shape})"
        )

    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    extra = [x.dtype for x in (log_decay, initial_state) if x is not None]
    dtype = accum_dtype(q.dtype, k.dtype, v.dtype, *extra)
    per_channel = log_decay is not None and log_decay.ndim == 4 and dk > 1
    impl = dispatch.resolve("linear_attention", impl, per_channel=int(per_channel), dv=dv)
    # bf16 q, k, v stay bf16 for the kernels of a causal call (their matmuls
    # accumulate in float32); every other path computes in the accumulation dtype.
    operand = operand_dtype(impl, dtype, q.dtype, k.dtype, v.dtype) if causal else dtype
    q, k, v = q.astype(operand), k.astype(operand), v.astype(operand)
    g = per_step_log_decay(log_decay, batch, length, heads, dtype)
    s0 = (
        jnp.zeros((batch, heads, dk, dv), dtype)
        if initial_state is None
        else initial_state.astype(dtype)
    )
    # Run index: 0 for the first segment, +1 at each segment start. Two positions
    # interact iff their run indices agree; the state carried in from "position
    # -1" (the initial state) belongs to run 0.
    run = None if segment_ids is None else segment_runs(segment_ids)

    if causal:
        o, state = _causal(q, k, v, g, s0, run, impl, chunk_size)
    else:
        o, state = _bidirectional(q, k, v, run, impl, chunk_size)
    return o.astype(out_dtype), state


def check_inputs(q, k, v, log_decay, initial_state, segment_ids, chunk_size) -> None:
    """Raises a ValueError naming the first argument of ``linear_attention`` with a bad shape or dtype."""
    if q.ndim != 4:
        raise ValueError(f"linear_attention: q must be (b, l, h, dk), got shape {q.shape}")
    batch, length, heads, dk = q.shape
    if k.shape != q.shape:
        raise ValueError(f"linear_attention: k {k.shape} must have q's shape (b, l, h, dk) = {q.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"linear_attention: v must be (b, l, h, dv) with (b, l, h) = {q.shape[:3]}, got {v.shape}"
        )
    if length < 1:
        raise ValueError(f"linear_attention: the sequence length must be >= 1, got q {q.shape}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"linear_attention: {name} must be floating point, got {x.dtype}")
    if log_decay is not None:
        allowed = [(heads,), (batch, length, heads), (batch, length, heads, dk)]
        if tuple(log_decay.shape) not in allowed:
            raise ValueError(
                f"linear_attention: log_decay {log_decay.shape} must be (h,) = {allowed[0]}, "
                f"(b, l, h) = {allowed[1]} or (b, l, h, dk) = {allowed[2]}"
            )
    if initial_state is not None and initial_state.shape != (batch, heads, dk, v.shape[-1]):
        raise ValueError(
            f"linear_attention: initial_state {initial_state.shape} must be (b, h, dk, dv) = "
            f"{(batch, heads, dk, v.shape[-1])}"
        )
    if segment_ids is not None:
        if segment_ids.shape != (batch, length):
            raise ValueError(
                f"linear_attention: segment_ids {segment_ids.shape} must be (b, l) = {(batch, length)}"
            )
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f"linear_attention: segment_ids must be integers, got {segment_ids.dtype}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"linear_attention: chunk_size must be a positive int, got {chunk_size!r}")


def per_step_log_decay(log_decay, batch, length, heads, dtype):
    """``log_decay`` as ``(b, l, h, e)`` with e = 1 (scalar per head) or dk; or None.

    Args:
      log_decay: None, ``(h,)``, ``(b, l, h)`` or ``(b, l, h, dk)``.
      batch: ``b``.
      length: ``l``.
      heads: ``h``.
      dtype: the accumulation dtype.

    Returns:
      ``(b, l, h, e)`` in ``dtype``, or None.
    """
    if log_decay is None:
        return None
    g = log_decay.astype(dtype)
    if g.ndim == 1:
        return jnp.broadcast_to(g[None, None, :, None], (batch, length, heads, 1))
    if g.ndim == 3:
        return g[..., None]
    return g


def _causal(q, k, v, g, s0, run, impl, chunk_size):
    return dispatch.implementation("linear_attention", impl)(q, k, v, g, s0, run, chunk_size)


@dispatch.register("linear_attention", "reference")
def _whole(q, k, v, g, s0, run, chunk_size):
    # The whole sequence as one chunk with exact pairwise decays.
    del chunk_size
    length = q.shape[1]
    return _chunked(q, k, v, g, s0, run, chunk=length, sub=length)


@dispatch.register("linear_attention", "chunked")
def _chunkwise(q, k, v, g, s0, run, chunk_size):
    length = q.shape[1]
    if length <= chunk_size:
        # One chunk; rounding up to a multiple of 8 keeps sub-blocks 8 wide.
        chunk = min(-(-length // 8) * 8, chunk_size)
    else:
        chunk = chunk_size
    sub = max(d for d in range(1, min(SUB_CHUNK, chunk) + 1) if chunk % d == 0)
    return _chunked(q, k, v, g, s0, run, chunk=chunk, sub=sub)


def _bidirectional(q, k, v, run, impl, chunk_size):
    if run is None and impl != "reference":
        kv = jnp.einsum("blhk,blhv->bhkv", k, v)
        return jnp.einsum("blhk,bhkv->blhv", q, kv), kv
    if impl == "reference":
        scores = jnp.einsum("bthk,bshk->bhts", q, k)
        if run is not None:
            scores = jnp.where(run[:, None, :, None] == run[:, None, None, :], scores, 0)
        state = _causal(q, k, v, None, _zero_state(q, v), run, "sequential", chunk_size)[1]
        return jnp.einsum("bhts,bshv->bthv", scores, v), state
    # Forward (s <= t) plus backward (s >= t) minus the double-counted s = t.
    zero = _zero_state(q, v)
    fwd, state = _causal(q, k, v, None, zero, run, impl, chunk_size)
    flip = lambda x: jnp.flip(x, 1)  # noqa: E731
    # Renumber runs so that the flipped sequence again starts in run 0.
    run_rev = run[:, -1:] - flip(run)
    bwd, _ = _causal(flip(q), flip(k), flip(v), None, zero, run_rev, impl, chunk_size)
    diag = jnp.einsum("blhk,blhk->blh", q, k)[..., None] * v
    return fwd + flip(bwd) - diag, state


def _zero_state(q, v):
    return jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), q.dtype)


# --- recurrent form ----------------------------------------------------------


@dispatch.register("linear_attention", "sequential")
def _recurrent(q, k, v, g, s0, run, chunk_size):
    del chunk_size
    batch = q.shape[0]
    # Per-step row decay of S as (b, l, h or 1, dk or 1, 1); None for "keep all".
    a = None if g is None else jnp.exp(g)[..., None]
    if run is not None:
        keep = jnp.concatenate([jnp.ones((batch, 1), bool), run[:, 1:] == run[:, :-1]], axis=1)
        keep = keep.astype(q.dtype)[:, :, None, None, None]
        a = keep if a is None else a * keep
    xs = [jnp.moveaxis(x, 1, 0) for x in (q, k, v)]
    if a is not None:
        xs.append(jnp.moveaxis(a, 1, 0))

    def step(state, x):
        if a is not None:
            state = x[3] * state
        state = state + x[1][..., :, None] * x[2][..., None, :]
        return state, jnp.einsum("bhk,bhkv->bhv", x[0], state)

    final, o = jax.lax.scan(step, s0, xs)
    return jnp.moveaxis(o, 0, 1), final


# --- chunked (and, with one chunk, the quadratic reference) form --------------


def _chunked(q, k, v, g, s0, run, chunk, sub):
    """Chunkwise form; ``sub`` (dividing ``chunk``) is the diagonal block width."""
    batch, length, heads, _ = q.shape
    dv = v.shape[-1]
    # Zero keys/values and zero log decay at the end leave the state unchanged.
    q, k, v = (pad_axis(x, chunk, axis=1) for x in (q, k, v))
    padded = q.shape[1]
    n = padded // chunk
    split = lambda x: x.reshape((batch, n, chunk) + x.shape[2:])  # noqa: E731
    qc, kc, vc = split(q), split(k), split(v)
    # Chunk-local log decays; c is their inclusive cumulative sum (<= 0,
    # non-increasing). Every exponent below is a sum of the log decays it spans,
    # never a difference of two cumulative sums (see _segsum).
    gc = None if g is None else split(pad_axis(g, chunk, axis=1))
    c = None if g is None else jnp.cumsum(gc, axis=2)

    runc = run_in = None
    if run is not None:
        # Padding continues the last run, so it never starts a segment.
        runc = split(jnp.pad(run, ((0, 0), (0, padded - length)), mode="edge"))
        # Run of the position just before each chunk (run 0 before the first).
        run_in = jnp.concatenate([jnp.zeros_like(runc[:, :1, 0]), runc[:, :-1, -1]], axis=1)

    # Intra-chunk: the masked quadratic form.
    o = _intra_chunk(qc, kc, vc, gc, runc, sub)

    # Each chunk's summary: S_end = decay * S_start + u.
    k_end = kc if c is None else kc * jnp.exp(_suffix_sum(gc, axis=2))
    decay = None if c is None else jnp.exp(c[:, :, -1])[..., None]  # (b, n, h, e, 1)
    q_in = qc if c is None else qc * jnp.exp(c)
    if runc is not None:
        same_as_end = runc == runc[:, :, -1:]
        k_end = jnp.where(same_as_end[..., None, None], k_end, 0)
        # The carried state survives the chunk only if no segment starts in it.
        keep = (runc[:, :, -1] == run_in).astype(q.dtype)[:, :, None, None, None]
        decay = keep if decay is None else decay * keep
        q_in = jnp.where((runc == run_in[:, :, None])[..., None, None], q_in, 0)
    u = jnp.einsum("bnshk,bnshv->bnhkv", k_end, vc)
    states_in, final = _across_chunks(decay, u, s0)

    # Inter-chunk: read the state carried into the chunk.
    o = o + jnp.einsum("bnthk,bnhkv->bnthv", q_in, states_in)
    return o.reshape(batch, padded, heads, dv)[:, :length], final


def _across_chunks(decay, u, s0):
    """States entering each chunk ``(b, n, h, dk, dv)`` and the final state."""
    if decay is None:
        # No decay, no resets: the carried state is a running sum.
        total = jnp.cumsum(u, axis=1)
        return s0[:, None] + total - u, s0 + total[:, -1]

    def step(state, x):
        a, uj = x
        return a * state + uj, state

    # Inside shard_map a zero s0 is device-invariant while u varies: match them.
    s0 = match_vma(s0, decay, u)
    final, states_in = jax.lax.scan(step, s0, (jnp.moveaxis(decay, 1, 0), jnp.moveaxis(u, 1, 0)))
    return jnp.moveaxis(states_in, 0, 1), final


def _segsum(a, axis):
    """``out[..., t, s, ...] = Σ_{s<r≤t} a[..., r, ...]`` (0 for t ≤ s), the pair at ``axis, axis+1``.

    The decay from s to t as the sum of the log decays in between, not as the
    difference ``c_t - c_s`` of two cumulative sums: once the sums are large
    (strong decay earlier in the chunk), their difference keeps only
    ~ulp(|c|) of absolute precision, i.e. a relative error of ~1e-5 in a
    float32 weight exp(c_t - c_s) that may be of order one (measured: 1e-5
    relative in the output with log decays of -5 to -20 on half the steps;
    ~1e-7 this way). ``axis`` must be non-negative.
    """
    idx = jnp.arange(a.shape[axis])
    strict = (idx[:, None] > idx[None, :]).reshape((a.shape[axis],) * 2 + (1,) * (a.ndim - axis - 1))
    return jnp.cumsum(jnp.where(strict, jnp.expand_dims(a, axis + 1), 0), axis=axis)


def _suffix_sum(a, axis):
    """``out[..., t, ...] = Σ_{r>t} a[..., r, ...]`` along ``axis`` (non-negative): the decay from t to the end."""
    after = jax.lax.slice_in_dim(a, 1, a.shape[axis], axis=axis)
    after = jnp.concatenate([after, jnp.zeros_like(jax.lax.slice_in_dim(a, 0, 1, axis=axis))], axis=axis)
    return jax.lax.cumsum(after, axis=axis, reverse=True)


def _intra_chunk(qc, kc, vc, gc, runc, sub):
    """Outputs ``(b, n, C, h, dv)`` of the masked, decayed quadratic form within chunks."""
    chunk = qc.shape[2]
    mask = jnp.tril(jnp.ones((chunk, chunk), bool))[None, None, None]
    if runc is not None:
        mask = mask & (runc[:, :, None, :, None] == runc[:, :, None, None, :])
    if gc is None:
        scores = jnp.where(mask, jnp.einsum("bnthk,bnshk->bnhts", qc, kc), 0)
    elif gc.shape[-1] == 1:
        gh = jnp.moveaxis(gc[..., 0], 3, 2)  # (b, n, h, C)
        diff = jnp.where(mask, _segsum(gh, axis=3), -jnp.inf)
        scores = jnp.einsum("bnthk,bnshk->bnhts", qc, kc) * jnp.exp(diff)
    else:
        return _channel_intra_chunk(qc, kc, vc, gc, runc, sub)
    return jnp.einsum("bnhts,bnshv->bnthv", scores, vc)


def _channel_intra_chunk(qc, kc, vc, gc, runc, sub):
    """Intra-chunk outputs with per-channel decay, sum_j q_t[j] k_s[j] exp(c_t[j] - c_s[j]).

    Diagonal ``sub x sub`` blocks use exact pairwise decays (:func:`_segsum`);
    a query block i reads all earlier keys of the chunk through the
    factorisation at ``r_i``, the end of block i - 1: exp(c_t - r_i) *
    exp(r_i - c_s), both exponents <= 0 and each a sum of the log decays it
    spans (the first a prefix sum inside block i, the second a suffix sum
    inside the key's block plus the totals of the blocks in between). The diagonal blocks
    multiply V block by block rather than being placed into a (C, C) matrix:
    fewer flops, and the placed form's gradient hit an XLA:CPU miscompilation
    (segfault) at some shapes, e.g. b=4, C=16, h=4, dk=64, sub=8.
    """
    batch, n, chunk, heads, dk = qc.shape
    m = chunk // sub
    blocks = lambda x: x.reshape((batch, n, m, sub) + x.shape[3:])  # noqa: E731
    qb, kb, gb = blocks(qc), blocks(kc), blocks(gc)
    tri = jnp.tril(jnp.ones((sub, sub), bool))[:, :, None, None]
    diff = jnp.where(tri, _segsum(gb, axis=3), -jnp.inf)
    # Decay the keys first, then contract dk against q: a 3-operand einsum here
    # lowers to an outer product plus a badly batched dot, ~10x slower on CPU.
    # The keys broadcast over the query positions through broadcast_axis: the
    # plain broadcast's gradient (a reduce over t) crashed XLA:CPU (jaxlib 0.10,
    # a YNNPACK reduce; see broadcast_axis).
    diag = jnp.einsum("bnmthk,bnmtshk->bnhmts", qb, broadcast_axis(kb, 3, sub) * jnp.exp(diff))
    if runc is not None:
        rb = runc.reshape(batch, n, m, sub)
        diag = jnp.where((rb[..., :, None] == rb[..., None, :])[:, :, None], diag, 0)
    o = jnp.einsum("bnhmts,bnmshv->bnmthv", diag, blocks(vc)).reshape(vc.shape)
    if m == 1:
        return o
    q_off = qb * jnp.exp(jnp.cumsum(gb, axis=3))  # (b, n, m, sub, h, dk)
    # Decay from key s (in block j) to r_i: the rest of block j, then the
    # blocks strictly between j and i (segsum of the block totals at i - 1).
    between = _segsum(jnp.sum(gb, axis=3), axis=2)  # (b, n, m, m, h, dk)
    between = jnp.concatenate([jnp.zeros_like(between[:, :, :1]), between[:, :, :-1]], axis=2)
    k_exp = between[:, :, :, :, None] + _suffix_sum(gb, axis=3)[:, :, None]  # (b, n, m_i, m_j, sub, h, dk)
    earlier = (jnp.arange(m)[None, :] < jnp.arange(m)[:, None])[:, :, None, None, None]  # j < i
    k_exp = jnp.where(earlier, k_exp, -jnp.inf).reshape(batch, n, m, chunk, heads, dk)
    k_off = broadcast_axis(kc, 2, m) * jnp.exp(k_exp)  # (b, n, m, C, h, dk)
    off = jnp.einsum("bnithk,bnishk->bnhits", q_off, k_off).reshape(batch, n, heads, chunk, chunk)
    if runc is not None:
        off = jnp.where((runc[:, :, :, None] == runc[:, :, None, :])[:, :, None], off, 0)
    return o + jnp.einsum("bnhts,bnshv->bnthv", off, vc)
