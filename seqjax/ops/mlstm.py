"""The mLSTM cell of xLSTM (Beck et al. 2024, arXiv 2405.04517): quadratic, recurrent and chunkwise forms.

Per head, with an exponential input gate ``i_t = exp(i~_t)`` and a forget gate
``f_t`` given as ``log f_t`` (the mixers pass ``log sigmoid(f~)``, so ``<= 0``;
not checked), the paper's matrix memory is::

    C_t = f_t C_{t-1} + i_t k_t v_t^T      (stored as (dk, dv); the paper's v k^T)
    n_t = f_t n_{t-1} + i_t k_t
    h~_t = C_t^T q_t / max(|n_t^T q_t|, 1)

``exp(i~)`` overflows float32 for ``i~ > 88``, so the state is kept in the
paper's stabilised form (xLSTM eqs. 15-17 for the sLSTM, App. B for the
mLSTM): a stabiliser ``m_t = max(log f_t + m_{t-1}, i~_t)`` and ``C, n``
stored times ``exp(-m_t)``::

    C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(i~_t - m_t) k_t v_t^T   (n alike)
    h~_t = C_t^T q_t / max(|n_t^T q_t|, exp(-m_t))

Every ``exp`` of a gate sees an argument <= 0, and ``h~`` is the same for *any* ``m``
(numerator and denominator both carry ``exp(-m_t)``), so ``m`` carries no
gradient: ``stop_gradient`` on it is exact for the outputs (the stored ``C, n``
of a returned final state are differentiated with ``m`` held fixed, in every
implementation alike). The state is ``(C, n, m)``: ``(b, h, dk, dv)``,
``(b, h, dk)``, ``(b, h)``; the empty state is ``(0, 0, 0)``.

Unrolled over a run of positions entered with state ``(C_0, n_0, m_0)``, with
``F(s, t] = sum_{s<j<=t} log f_j`` and ``G_t = F(0, t]``::

    m_t = max(m_0 + G_t, max_{s<=t} i~_s + F(s, t])
    h~_t = (sum_s (q_t . k_s) exp(i~_s + F(s,t] - m_t) v_s + exp(m_0 + G_t - m_t) C_0^T q_t) / max(|.|, exp(-m_t))

(the denominator the same sum with ``v_s -> 1``, ``C_0 -> n_0``).

Implementations (``impl``):
  * ``"reference"``: the paper's parallel form (App. B) over the whole
    sequence, ``h~ = M v`` with ``M = S / max(|S 1|, exp(-m))``, plus the
    initial state's terms; O(l^2) time and memory (it is ``"chunked"`` with one
    chunk of the whole length).
  * ``"sequential"``: the stabilised recurrence, a ``lax.scan`` over positions
    (:func:`mlstm_step` per position).
  * ``"chunked"``: the chunkwise-parallel form (as in the xLSTM authors'
    chunkwise kernels): inside chunks of ``chunk_size`` positions the parallel
    form; across chunks a ``lax.scan`` carrying ``(C, n, m)``. Each chunk
    first sums its own keys and values into a state relative to its own
    maximum ``m_loc`` (exponents <= 0), then the scan merges it with the
    incoming state at ``m_out = max(m_in + G_C, m_loc)`` (both factors
    ``exp(. - m_out)`` <= 1). Outputs then use ``m_t`` above per position, so
    nothing overflows for any gate pre-activation (tested at ``|i~| = 100``).
  * ``"auto"``: ``"reference"`` when ``l <= chunk_size`` (one chunk: the same
    computation without the scan), else ``"chunked"``. Measured on a shared
    2-core CPU (b=2, h=4, dk=dv=32, chunk 64, jit, median of 3; noisy), ms at
    l = 64 / 256 / 1024 / 4096 for reference / chunked / sequential: with
    gradients 1.3 / 1.7 / 4.6, 57 / 4.4 / 20, 1969 / 20 / 226, - / 556 / 1216;
    forward alone 0.5 / 0.7 / 0.5, 11 / 2.3 / 4.0, 634 / 27 / 20, - / 158 / 71
    (on CPU the scan is faster forward from l ~ 1024, but training needs the
    gradient). The ``mlstm`` mixer (b=2, d=128, 4 heads, gradient of the
    parameters, ms at l = 256 / 1024): reference 36 / 3040, chunked 8 / 178,
    sequential 71 / 356. Chunked vs sequential at l = 4096, float32: 5.5e-7
    to 8.6e-7 relative (max abs error in h 1.6e-5 to 2.3e-5, |h| up to ~27;
    ``tests/ops/test_mlstm.py``, slow). Not measured on an accelerator.

Segments: where ``segment_ids`` changes, the state restarts from the empty
state ``(0, 0, 0)`` (as the mixers' ``step`` with ``reset``);
``initial_state`` belongs to the first segment. In the unrolled form a run
starting at ``r`` contributes the empty state's term ``0 + F(r-1, t]`` to
``m_t`` (``m`` is part of the returned state, so all impls agree on it).

Numerical safety: ``F(s, t]`` is a masked segment sum (a cumulative sum down a
``(t, s)`` grid), never a difference of running sums; masked pairs become
``-inf`` before ``exp``, and every ``where`` selects inside the exponent, so
no gradient sees ``inf * 0``. The denominator is also floored at the
dtype's smallest normal number: ``exp(-m)`` underflows for ``m > ~87``
(float32), where a zero query would otherwise give ``0 / 0``. Padding
(lengths not a multiple of the chunk) uses ``k = v = q = 0``, ``log f = 0``
and ``i~ = -inf``: it changes neither the state nor ``m``; its rows divide by
1 (their ``0 / 0`` would turn the zero cotangents into NaN gradients).
"""

import jax
import jax.numpy as jnp

from seqjax.ops import dispatch
from seqjax.ops.common import accum_dtype, check_heads_inputs, check_segments_and_chunk, pad_axis, segment_runs
from seqjax.types import AttnOut, Keys, Queries, SegmentIds, Values

MLSTMState = tuple[jax.Array, jax.Array, jax.Array]


def mlstm(
    q: Queries,
    k: Keys,
    v: Values,
    log_i: jax.Array,
    log_f: jax.Array,
    *,
    initial_state: MLSTMState | None = None,
    segment_ids: SegmentIds | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    impl: str = "auto",
    sequence_axis: str | None = None,
) -> AttnOut | tuple[AttnOut, MLSTMState]:
    """The mLSTM cell ``h~_t = C_t^T q_t / max(|n_t^T q_t|, 1)`` in its stabilised form.

    q and k are used as given: the paper's ``1/sqrt(dk)`` key scale is the caller's.

    Args:
      q: queries ``(b, l, h, dk)``.
      k: keys ``(b, l, h, dk)``.
      v: values ``(b, l, h, dv)``.
      log_i: input-gate pre-activations ``i~`` ``(b, l, h)`` (``i = exp(i~)``).
      log_f: log forget gates ``(b, l, h)`` (``log sigmoid(f~)``; <= 0 keeps
        every exponent <= 0, not checked).
      initial_state: ``(C, n, m)`` with shapes ``(b, h, dk, dv)``, ``(b, h,
        dk)``, ``(b, h)``, stored as above (the true state times ``exp(-m)``);
        None: the empty state ``(0, 0, 0)``. It applies to the first segment.
      segment_ids: ``(b, l)`` integers; where the id changes the state restarts
        from the empty state, so packed sequences give what separate calls give.
      return_final_state: also return the state after the last position.
      chunk_size: chunk length of ``"chunked"`` (and the ``auto`` threshold);
        any sequence length works.
      impl: ``"auto"``, ``"reference"``, ``"sequential"`` or ``"chunked"``.
      sequence_axis: must be None (no sequence-parallel variant yet; the front
        door raises NotImplementedError naming the ops that have one).

    Returns:
      ``h~`` ``(b, l, h, dv)`` in the dtype of q, k, v; with
      ``return_final_state``, ``(h~, (C, n, m))`` with the state in the
      accumulation dtype (float32, float64 for float64 inputs), ready to pass
      back as ``initial_state``.
    """
    dispatch.check("mlstm", impl)
    if sequence_axis is not None:
        return dispatch.sequence_parallel("mlstm")(
            q, k, v, log_i, log_f, axis_name=sequence_axis, initial_state=initial_state, segment_ids=segment_ids,
            return_final_state=return_final_state, chunk_size=chunk_size, impl=impl)
    q, k, v, log_i, log_f = (jnp.asarray(x) for x in (q, k, v, log_i, log_f))
    if initial_state is not None:
        initial_state = tuple(jnp.asarray(x) for x in initial_state)
    segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
    check_inputs(q, k, v, log_i, log_f, initial_state, segment_ids, chunk_size)

    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    extra = [x.dtype for x in initial_state] if initial_state is not None else []
    dtype = accum_dtype(q.dtype, k.dtype, v.dtype, log_i.dtype, log_f.dtype, *extra)
    q, k, v, log_i, log_f = (x.astype(dtype) for x in (q, k, v, log_i, log_f))
    if initial_state is None:
        state = (jnp.zeros((batch, heads, dk, dv), dtype), jnp.zeros((batch, heads, dk), dtype),
                 jnp.zeros((batch, heads), dtype))
    else:
        state = tuple(x.astype(dtype) for x in initial_state)
    # Run index: 0 for the first segment, +1 at each start; the initial state is run 0's.
    run = None if segment_ids is None else segment_runs(segment_ids)
    impl = dispatch.resolve("mlstm", impl, length=length, chunk_size=chunk_size)
    h, final = dispatch.implementation("mlstm", impl)(q, k, v, log_i, log_f, state, run, chunk_size)
    h = h.astype(out_dtype)
    return (h, final) if return_final_state else h


def check_inputs(q, k, v, log_i, log_f, initial_state, segment_ids, chunk_size) -> None:
    """Raises a one-line ValueError naming the first argument of ``mlstm`` that is wrong."""
    gates = {"log_i": log_i, "log_f": log_f}
    batch, length, heads, dk = check_heads_inputs("mlstm", q, k, v, gates, gates)
    if initial_state is not None:
        want = ((batch, heads, dk, v.shape[-1]), (batch, heads, dk), (batch, heads))
        got = tuple(x.shape for x in initial_state)
        if got != want:
            raise ValueError(f"mlstm: initial_state shapes {got} must be (C, n, m) = {want}")
    check_segments_and_chunk("mlstm", segment_ids, batch, length, chunk_size)


def mlstm_step(q: jax.Array, k: jax.Array, v: jax.Array, log_i: jax.Array, log_f: jax.Array,
               c: jax.Array, n: jax.Array, m: jax.Array) -> tuple[jax.Array, ...]:
    """One position of the stabilised recurrence (the mixers' ``step`` and ``"sequential"``).

    ``m_t = max(log f_t + m_{t-1}, i~_t)``; ``C_t = f' C_{t-1} + i' k v^T``,
    ``n_t = f' n_{t-1} + i' k`` with ``f' = exp(log f_t + m_{t-1} - m_t)``,
    ``i' = exp(i~_t - m_t)``; ``h~_t = C_t^T q_t / max(|n_t^T q_t|, exp(-m_t))``.

    Args:
      q: ``(b, heads, dk)``.
      k: ``(b, heads, dk)`` (already scaled).
      v: ``(b, heads, dv)``.
      log_i: ``(b, heads)`` ``i~``.
      log_f: ``(b, heads)`` ``log f``.
      c: ``(b, heads, dk, dv)`` memory (zeros before the first position).
      n: ``(b, heads, dk)`` normaliser state.
      m: ``(b, heads)`` stabiliser.

    Returns:
      ``(h~, C, n, m)``: ``h~`` ``(b, heads, dv)`` and the new states.
    """
    m_new = jax.lax.stop_gradient(jnp.maximum(log_f + m, log_i))
    f_s = jnp.exp(log_f + m - m_new)[..., None]
    i_s = jnp.exp(log_i - m_new)[..., None]
    c = f_s[..., None] * c + (i_s * k)[..., :, None] * v[..., None, :]
    n = f_s * n + i_s * k
    num = jnp.einsum("bhk,bhkv->bhv", q, c)
    return num / _floor(jnp.sum(n * q, axis=-1), m_new)[..., None], c, n, m_new


def _floor(den, m):
    """``max(|den|, exp(-m))``, and at least the dtype's smallest normal number.

    ``exp(-m)`` underflows to 0 for ``m > ~87`` in float32 (denormals may be
    flushed), where a zero query (a padded position) would give ``0 / 0``;
    the last floor only acts there.
    """
    return jnp.maximum(jnp.maximum(jnp.abs(den), jnp.exp(-m)), jnp.finfo(den.dtype).tiny)


# --- recurrent form ----------------------------------------------------------


@dispatch.register("mlstm", "sequential")
def _sequential(q, k, v, log_i, log_f, state, run, chunk_size):
    del chunk_size
    batch, length = q.shape[:2]
    if run is None:
        keep = jnp.ones((batch, length), bool)
    else:  # False where a segment starts: the empty state (0, 0, 0) before that step
        keep = jnp.concatenate([jnp.ones((batch, 1), bool), run[:, 1:] == run[:, :-1]], axis=1)
    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, log_i, log_f, keep))

    def step(carry, x):
        q_t, k_t, v_t, i_t, f_t, keep_t = x
        c, n, m = (jnp.where(keep_t.reshape((batch,) + (1,) * (s.ndim - 1)), s, 0) for s in carry)
        h, c, n, m = mlstm_step(q_t, k_t, v_t, i_t, f_t, c, n, m)
        return (c, n, m), h

    final, h = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(h, 0, 1), final


# --- chunkwise-parallel form -------------------------------------------------


def _segsum(a):
    """``out[..., t, s] = sum_{s < j <= t} a[..., j]`` for ``s <= t`` (0 on the diagonal; garbage above)."""
    n = a.shape[-1]
    strict = jnp.arange(n)[:, None] > jnp.arange(n)[None, :]  # (j, s): j > s
    return jnp.cumsum(jnp.where(strict, a[..., :, None], 0), axis=-2)


@dispatch.register("mlstm", "chunked")
def _chunked(q, k, v, log_i, log_f, state, run, chunk_size):
    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    chunk = min(chunk_size, length)
    q, k, v, log_f = (pad_axis(x, chunk, axis=1) for x in (q, k, v, log_f))
    log_i = pad_axis(log_i, chunk, axis=1, value=-jnp.inf)  # padding writes nothing and leaves m alone
    padded = q.shape[1]
    nc = padded // chunk
    # Heads before positions inside a chunk: (b, n, h, C, ...).
    split = lambda x: jnp.swapaxes(x.reshape((batch, nc, chunk, heads) + x.shape[3:]), 2, 3)  # noqa: E731
    qc, kc, vc, ic, fc = (split(x) for x in (q, k, v, log_i, log_f))
    same = jnp.tril(jnp.ones((chunk, chunk), bool))[None, None, None]  # (t, s): s <= t, same run
    reach = jnp.ones((1, 1, 1, chunk), bool)  # does the state entering the chunk reach t
    if run is not None:
        # Padding continues the last run, so it never starts a segment.
        runc = jnp.pad(run, ((0, 0), (0, padded - length)), mode="edge").reshape(batch, nc, chunk)
        run_in = jnp.concatenate([jnp.zeros_like(runc[:, :1, 0]), runc[:, :-1, -1]], axis=1)  # (b, n)
        same = same & (runc[:, :, None, :, None] == runc[:, :, None, None, :])
        reach = (runc == run_in[..., None])[:, :, None]
    # base_t: the sum of log f over t's run inside the chunk, up to t included. For
    # the incoming run the decay of the entering state (G_t); for a run starting
    # in the chunk the empty state's m = 0 term of the recurrence.
    base = jnp.sum(jnp.where(same, fc[..., None, :], 0), axis=-1)  # (b, n, h, C)
    log_d = jnp.where(same, ic[..., None, :] + _segsum(fc), -jnp.inf)  # i~_s + F(s, t]
    m_own = jax.lax.stop_gradient(jnp.maximum(jnp.max(log_d, axis=-1), jnp.where(reach, -jnp.inf, base)))

    # What each chunk writes into the state at its end, relative to its own maximum m_own_end.
    base_end, m_own_end = base[..., -1], m_own[..., -1]
    reach_end = jnp.broadcast_to(reach[..., -1], m_own_end.shape)  # (b, n, h)
    w_end = jnp.exp(log_d[..., -1, :] - m_own_end[..., None])  # (b, n, h, C), <= 1
    c_loc = jnp.einsum("bnhs,bnhsk,bnhsv->bnhkv", w_end, kc, vc)
    n_loc = jnp.einsum("bnhs,bnhsk->bnhk", w_end, kc)

    def step(carry, x):
        c, n, m = carry
        c_loc_j, n_loc_j, m_own_j, base_j, reach_j = x
        inc = jnp.where(reach_j, m + base_j, -jnp.inf)  # the entering state's log weight at the end
        m_out = jax.lax.stop_gradient(jnp.maximum(inc, m_own_j))
        a, b = jnp.exp(inc - m_out), jnp.exp(m_own_j - m_out)  # both <= 1
        new = (a[..., None, None] * c + b[..., None, None] * c_loc_j, a[..., None] * n + b[..., None] * n_loc_j, m_out)
        return new, (c, n, m)

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (c_loc, n_loc, m_own_end, base_end, reach_end))
    final, states_in = jax.lax.scan(step, state, xs)
    c_in, n_in, m_in = (jnp.moveaxis(x, 0, 1) for x in states_in)

    # Per position: m_t = max(m_in + G_t, m_own_t), then the parallel form plus the entering state.
    inc = jnp.where(reach, m_in[..., None] + base, -jnp.inf)  # (b, n, h, C)
    m_t = jax.lax.stop_gradient(jnp.maximum(inc, m_own))
    scores = jnp.einsum("bnhtk,bnhsk->bnhts", qc, kc) * jnp.exp(log_d - m_t[..., None])
    a = jnp.exp(inc - m_t)
    num = jnp.einsum("bnhts,bnhsv->bnhtv", scores, vc) + a[..., None] * jnp.einsum("bnhtk,bnhkv->bnhtv", qc, c_in)
    den = jnp.sum(scores, axis=-1) + a * jnp.einsum("bnhtk,bnhk->bnht", qc, n_in)
    # Padded rows (q = 0, so 0 / 0 once exp(-m) underflows) divide by 1 instead:
    # a where before the division, so their zero cotangents stay zero.
    real = (jnp.arange(padded) < length).reshape(1, nc, 1, chunk)
    h = num / jnp.where(real, _floor(den, m_t), 1)[..., None]
    h = jnp.swapaxes(h, 2, 3).reshape(batch, padded, heads, dv)
    return h[:, :length], final


@dispatch.register("mlstm", "reference")
def _reference(q, k, v, log_i, log_f, state, run, chunk_size):
    # The parallel form over the whole sequence: one chunk of length l.
    del chunk_size
    return _chunked(q, k, v, log_i, log_f, state, run, q.shape[1])


__all__ = ["MLSTMState", "mlstm", "mlstm_step", "check_inputs"]
