"""Online-gradient memory update: Miras' deep memories trained by one gradient step per token.

Behrouz, Razaviyayn, Zhong and Mirrokni 2025, "It's All Connected: A Journey
Through Test-Time Memorization, Attentional Bias, Retention, and Online
Optimization" (Miras). A memory ``M_W`` (per head) is trained at test time:
at each token it takes one gradient step on an *attentional bias*
``ℓ(M_W(k_t), v_t)`` with a *retention* term, and the output reads the
updated memory at the query::

    A_t = α_t A_{t−1} − η_t ∇_W ℓ(M_{W_{t−1}}(k_t), v_t),   W_t = φ(A_t),   o_t = M_{W_t}(q_t)

``A`` is the raw state the retention acts on and ``φ`` maps it to the
memory's weights (per weight matrix):

  * ``retention="l2"``: ``φ(A) = A`` (weight decay ``α_t``; Yaad's, Titans').
  * ``retention="lq"``: ``φ(A) = A / ‖A‖_q^{q−2}`` with ``‖A‖_q`` the entrywise
    q-norm of the matrix (Moneta's ℓq retention, q = 4 in the paper);
    computed as ``A · (Σ|A|^q + eps)^{−(q−2)/q}`` so it stays finite at ``A = 0``.
  * ``retention="kl"``: ``φ(A) = softmax(A)`` over each row (the input axis)
    of each matrix: ``W_t = Softmax(α_t log W_{t−1} − η_t ∇ℓ)`` (Memora's KL
    retention, the weights kept on the simplex), because a row-constant
    shift of the logits cancels in the softmax, so ``A`` is the logits and
    ``log W_t = log_softmax(A_t)``.

The attentional bias enters only through ``g = ∂ℓ/∂M(k)`` at the prediction
error ``e = M_W(k_t) − v_t``:

  * ``loss="l2"``: ``ℓ = ½‖e‖²``, ``g = e`` (with the linear memory, no decay
    and ``retention="l2"`` this is exactly DeltaNet with ``β_t = η_t``);
  * ``loss="lp"``: ``ℓ = ‖e‖_p^p``, ``g = p · sign(e) |e|^{p−1}`` (Moneta's;
    p = 3 in the paper);
  * ``loss="huber"``: the coordinate-wise Huber loss with threshold
    ``δ_t`` (ℓ2 below, ℓ1 above): ``g = clip(e, −δ_t, δ_t)`` (Yaad's; ``δ_t``
    data-dependent, an input).

Memories (``memory``): ``"linear"``, ``M(x) = W x`` with state ``(W,)``, ``W``
``(b, h, dv, dk)``; ``"mlp"``, the paper's 2-layer residual MLP ``M(x) = x +
W1 silu(W2 x)`` with state ``(W1, W2)``, ``W1 (b, h, dv, dh)``, ``W2 (b, h,
dh, dk)``, ``dk = dv``. ``∇_W ℓ = (∂M/∂W)ᵀ g`` comes from ``jax.vjp`` of the
memory's forward.

Implementations (``impl``):
  * ``"sequential"``: the recurrence above, a ``lax.scan`` over tokens.
  * ``"chunked"``: the paper's chunk-wise training. Inside a chunk of C tokens
    entered with raw state ``A_0``, every gradient is taken at ``W_0 = φ(A_0)``
    (all C at once, vmapped), so the raw state is a linear recurrence with
    known inputs: ``A_r = γ_r A_0 − Σ_{i≤r} (γ_r/γ_i) η_i G_i`` (``γ`` the
    products of ``α`` from the chunk start), evaluated for every r with one
    C×C decay matrix; then ``o_r = M_{φ(A_r)}(q_r)`` for all r. With C = 1 it
    is the sequential form; for C > 1 it is the paper's approximation (the
    gradients lag by up to C − 1 tokens), not the same numbers.
  * ``"auto"``: ``"chunked"`` (the paper's training form). Measured on a
    shared 2-core CPU (noisy; b=1, h=4, dk=16, dh=32, Huber + ℓ2, forward +
    backward, ms at l = 64 / 512): sequential 1.9 / 19.4, chunked C=16 2.2 /
    16.1, C=64 3.7 / 30.3: on CPU the chunks buy little, their point is
    accelerator parallelism (not measured here). Chunked vs sequential at l =
    256 (max relative difference of o, mixer-like inputs, η up to 1): Yaad
    0.07 / 0.16 / 0.33 at C = 2 / 4 / 16, Memora 5e-6 / 1e-5 / 3e-5, Moneta
    0.6 at C = 2 (its raw state was far from its init there).

Decays: ``log_decay`` is ``log α_t`` (≤ 0); every decay between two tokens is
the exp of a masked sum of log decays, never a difference of cumulative sums.

Segments: where ``segment_ids`` changes, the raw state restarts from
``params0`` (the memory's learned initial weights) before that token's
update; ``initial_state`` (default ``params0``) belongs to the first segment.
The chunked form takes the gradients of a new segment's tokens at
``φ(params0)``.

Gradients of the outer parameters come from autodiff of whichever form runs
(second order through the inner ``vjp``). The chunked form holds a raw state
per token of the chunk, ``(b, h, l, state)`` in all.

Both scans' bodies are ``jax.checkpoint``-ed: the backward recomputes a
token's (a chunk's) forward from the carried state instead of reading back
every intermediate the forward would otherwise save per step, and whole
exponents (the paper's p = 3, q = 4) are multiplied out instead of going
through ``pow``. Forward+backward at the MQAR CPU table's layer shape (b 64,
l 64, h 4, dk 16, dh 32) on an idle 2-core VM, ``benchmarks.ops --only
memory_update``, before (0db0768) → after, ms (peak MiB): Yaad sequential
170 → 110 (188 → 80), chunked 215 → 180 (191 → 88); Moneta sequential
575 → 321 (479 → 82), chunked 456 → 317 (369 → 98); Memora sequential
322 → 214 (328 → 86), chunked 291 → 283 (264 → 83)
(``benchmarks/results/vm-cpu-ops-memory-update*.json``).
``python -m benchmarks.ops --only memory_update`` times both forms.
"""

import jax
import jax.numpy as jnp

from seqjax.ops import dispatch
from seqjax.ops.common import accum_dtype, pad_axis, segment_runs
from seqjax.types import Keys, Queries, SegmentIds, Values

MEMORIES = ("linear", "mlp")
LOSSES = ("l2", "lp", "huber")
RETENTIONS = ("l2", "lq", "kl")
# The eps inside the q-norm of the "lq" retention: keeps φ and its gradient finite at A = 0.
NORM_EPS = 1e-6
HIGHEST = jax.lax.Precision.HIGHEST


# --- the memory model (one head, one token) -------------------------------------


def memory_forward(weights: tuple, x: jax.Array) -> jax.Array:
    """``M_W(x)`` for one head: ``W x`` (linear, one matrix) or ``x + W1 silu(W2 x)`` (mlp, two).

    Args:
      weights: ``(W,)`` ``(dv, dk)`` or ``(W1, W2)`` ``(dv, dh), (dh, dk)``.
      x: ``(dk,)``.

    Returns:
      ``(dv,)``.
    """
    if len(weights) == 1:
        return jnp.dot(weights[0], x, precision=HIGHEST)
    w1, w2 = weights
    return x + jnp.dot(w1, jax.nn.silu(jnp.dot(w2, x, precision=HIGHEST)), precision=HIGHEST)


def loss_grad(e: jax.Array, loss: str, p: float, delta: jax.Array) -> jax.Array:
    """``∂ℓ/∂M(k)`` at the prediction error ``e = M(k) − v`` (see the module docstring)."""
    if loss == "l2":
        return e
    if loss == "lp":
        return p * jnp.sign(e) * _power(jnp.abs(e), p - 1)
    return jnp.clip(e, -delta, delta)


def _power(x: jax.Array, exponent: float) -> jax.Array:
    """``x ** exponent``, by repeated multiplication when the exponent is a whole number.

    Why: a float exponent lowers to ``pow`` (an ``exp`` and a ``log`` per
    element, and more in its second-order gradient), the bulk of the ℓp bias's
    and ℓq retention's cost on CPU; the paper's p = 3 and q = 4 are whole.
    """
    if float(exponent).is_integer():
        return jax.lax.integer_pow(x, int(exponent))
    return x ** exponent


def retained(raw: tuple, retention: str, q_norm: float) -> tuple:
    """``W = φ(A)`` per weight matrix (identity, q-norm scaling, row softmax)."""
    if retention == "l2":
        return raw
    if retention == "kl":
        return tuple(jax.nn.softmax(a, axis=-1) for a in raw)
    power = -(q_norm - 2) / q_norm
    return tuple(a * (jnp.sum(_power(jnp.abs(a), q_norm)) + NORM_EPS) ** power for a in raw)


def _inner_grad(weights, k, v, delta, loss, p):
    """``∇_W ℓ(M_W(k), v)``: the loss's closed-form ``g`` pulled back through the memory."""
    y, pullback = jax.vjp(lambda w: memory_forward(w, k), weights)
    return pullback(loss_grad(y - v, loss, p, delta))[0]


# --- the public op ----------------------------------------------------------------


def memory_update(
    q: Queries,
    k: Keys,
    v: Values,
    lr: jax.Array,
    *,
    params0: tuple,
    log_decay: jax.Array | None = None,
    delta: jax.Array | None = None,
    loss: str = "l2",
    retention: str = "l2",
    p: float = 3.0,
    q_norm: float = 4.0,
    initial_state: tuple | None = None,
    segment_ids: SegmentIds | None = None,
    chunk_size: int = 16,
    impl: str = "auto",
    sequence_axis: str | None = None,
) -> tuple[jax.Array, tuple]:
    """Runs a memory trained online, one gradient step per token, and reads it at the queries.

    Args:
      q: queries ``(b, l, h, dk)``.
      k: keys ``(b, l, h, dk)``.
      v: values ``(b, l, h, dv)``.
      lr: inner learning rates ``η_t`` ``(b, l, h)``.
      params0: the raw initial state, ``(W,)`` (linear memory) or ``(W1, W2)``
        (mlp), each ``(b, h, ...)``: the state before the first token (unless
        ``initial_state``) and after every segment start.
      log_decay: ``log α_t`` ``(b, l, h)``, ≤ 0 (not checked); None: ``α = 1``.
      delta: Huber thresholds ``δ_t`` ``(b, l, h)`` (``loss="huber"`` only).
      loss: attentional bias, one of :data:`LOSSES`.
      retention: retention, one of :data:`RETENTIONS`.
      p: the exponent of ``loss="lp"`` (≥ 1; the outer gradient at ``e = 0``
        is finite for p ≥ 2).
      q_norm: the q of ``retention="lq"`` (≥ 2).
      initial_state: raw state of the first segment (a previous call's final
        state), shaped as ``params0``; None: ``params0``.
      segment_ids: ``(b, l)`` integers; a change of id restarts from ``params0``.
      chunk_size: tokens per chunk of ``"chunked"`` (the gradients inside a
        chunk are taken at the chunk's entry state).
      impl: ``"auto"``, ``"sequential"`` or ``"chunked"``.
      sequence_axis: must be None (no sequence-parallel form: the chunk
        transition is nonlinear).

    Returns:
      ``(o, final_state)``: ``o`` ``(b, l, h, dv)`` in the inputs' dtype and
      the raw state after the last token (shaped as ``params0``, float32 or
      float64).
    """
    dispatch.check("memory_update", impl)
    if sequence_axis is not None:
        raise NotImplementedError("memory_update: no sequence-parallel form (sequence_axis must be None)")
    q, k, v, lr = (jnp.asarray(x) for x in (q, k, v, lr))
    params0 = tuple(jnp.asarray(w) for w in params0)
    _check(q, k, v, lr, params0, log_decay, delta, loss, retention, p, q_norm, initial_state, segment_ids,
           chunk_size)
    batch, length, heads, _ = q.shape
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    dtype = accum_dtype(q.dtype, k.dtype, v.dtype, lr.dtype, *(w.dtype for w in params0))
    q, k, v, lr = (x.astype(dtype) for x in (q, k, v, lr))
    g = jnp.zeros(lr.shape, dtype) if log_decay is None else jnp.asarray(log_decay).astype(dtype)
    dl = jnp.zeros(lr.shape, dtype) if delta is None else jnp.asarray(delta).astype(dtype)
    init = tuple(w.astype(dtype) for w in params0)
    start = init if initial_state is None else tuple(jnp.asarray(w).astype(dtype) for w in initial_state)
    run = jnp.zeros((batch, length), jnp.int32) if segment_ids is None else segment_runs(jnp.asarray(segment_ids))
    run = jnp.broadcast_to(run[:, :, None], (batch, length, heads))
    impl = dispatch.resolve("memory_update", impl, length=length, chunk_size=chunk_size)
    fn = dispatch.implementation("memory_update", impl)
    opts = dict(loss=loss, retention=retention, p=float(p), q_norm=float(q_norm), chunk_size=chunk_size,
                segments=segment_ids is not None)
    # One head's sequence at a time, vmapped over batch and heads: tokens (l, ...), states (...).
    seq = lambda x: jnp.moveaxis(x, 1, 2)  # noqa: E731  (b, l, h, ...) -> (b, h, l, ...)
    per_head = lambda *a: fn(*a, **opts)  # noqa: E731
    o, final = jax.vmap(jax.vmap(per_head))(init, start, seq(q), seq(k), seq(v), seq(lr), seq(g), seq(dl),
                                            seq(run))
    return jnp.moveaxis(o, 2, 1).astype(out_dtype), final


def _check(q, k, v, lr, params0, log_decay, delta, loss, retention, p, q_norm, initial_state, segment_ids,
           chunk_size) -> None:
    """Raises a one-line ValueError naming the first argument of ``memory_update`` that is wrong."""
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(f"memory_update: q and k must be (b, l, h, dk) alike, got {q.shape} and {k.shape}")
    batch, length, heads, dk = q.shape
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"memory_update: v must be (b, l, h, dv) with (b, l, h) = {q.shape[:3]}, got {v.shape}")
    if length < 1:
        raise ValueError(f"memory_update: the sequence length must be >= 1, got q {q.shape}")
    dv = v.shape[-1]
    for name, x in (("lr", lr), ("log_decay", log_decay), ("delta", delta)):
        if x is not None and jnp.shape(x) != (batch, length, heads):
            raise ValueError(f"memory_update: {name} {jnp.shape(x)} must be (b, l, h) = {(batch, length, heads)}")
    if loss not in LOSSES:
        raise ValueError(f"memory_update: loss={loss!r} is not one of {', '.join(LOSSES)}")
    if retention not in RETENTIONS:
        raise ValueError(f"memory_update: retention={retention!r} is not one of {', '.join(RETENTIONS)}")
    if loss == "huber" and delta is None:
        raise ValueError("memory_update: loss='huber' needs delta (b, l, h)")
    if not p >= 1:
        raise ValueError(f"memory_update: p={p!r} must be >= 1")
    if not q_norm >= 2:
        raise ValueError(f"memory_update: q_norm={q_norm!r} must be >= 2")
    if len(params0) == 1:
        want = [(batch, heads, dv, dk)]
    elif len(params0) == 2:
        if dk != dv:
            raise ValueError(f"memory_update: the residual mlp memory needs dk == dv, got {dk} and {dv}")
        want = [(batch, heads, dv, params0[0].shape[-1]), (batch, heads, params0[0].shape[-1], dk)]
    else:
        raise ValueError(f"memory_update: params0 must be (W,) or (W1, W2), got {len(params0)} arrays")
    for name, state in (("params0", params0), ("initial_state", initial_state)):
        if state is not None and [tuple(jnp.shape(w)) for w in state] != want:
            raise ValueError(f"memory_update: {name} shapes {[jnp.shape(w) for w in state]} must be {want}")
    if segment_ids is not None and jnp.shape(segment_ids) != (batch, length):
        raise ValueError(f"memory_update: segment_ids {jnp.shape(segment_ids)} must be (b, l) = {(batch, length)}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"memory_update: chunk_size must be a positive int, got {chunk_size!r}")


# --- implementations (one head: tokens (l, ...), states (...)) --------------------


@dispatch.register("memory_update", "sequential")
def _sequential(init, start, q, k, v, lr, g, delta, run, *, loss, retention, p, q_norm, chunk_size, segments):
    del chunk_size, segments
    first = jnp.concatenate([jnp.zeros((1,), bool), run[1:] != run[:-1]])  # a segment starts here

    def step(raw, x):
        q_t, k_t, v_t, lr_t, g_t, d_t, first_t = x
        raw = tuple(jnp.where(first_t, a0, a) for a0, a in zip(init, raw))
        grad = _inner_grad(retained(raw, retention, q_norm), k_t, v_t, d_t, loss, p)
        raw = tuple(jnp.exp(g_t) * a - lr_t * gw for a, gw in zip(raw, grad))
        return raw, memory_forward(retained(raw, retention, q_norm), q_t)

    final, o = jax.lax.scan(jax.checkpoint(step), start, (q, k, v, lr, g, delta, first))
    return o, final


@dispatch.register("memory_update", "chunked")
def _chunked(init, start, q, k, v, lr, g, delta, run, *, loss, retention, p, q_norm, chunk_size, segments):
    length = q.shape[0]
    chunk = min(chunk_size, length)
    # The end is padded with lr = 0 and log decay 0 (the state passes unchanged) in the last run.
    q, k, v, lr, g, delta = (pad_axis(x, chunk, axis=0) for x in (q, k, v, lr, g, delta))
    run = jnp.pad(run, (0, q.shape[0] - length), mode="edge")
    n = q.shape[0] // chunk
    split = lambda x: x.reshape((n, chunk) + x.shape[1:])  # noqa: E731
    run_c = split(run)
    run_in = jnp.concatenate([run[:1], run_c[:-1, -1]])  # the run each chunk is entered in
    tri = jnp.arange(chunk)[:, None] >= jnp.arange(chunk)[None, :]  # (r, i): i <= r
    grads = jax.vmap(lambda w, k_i, v_i, d_i: _inner_grad(w, k_i, v_i, d_i, loss, p), in_axes=(None, 0, 0, 0))
    # φ per token's state (the q-norm of lq is per matrix, never across the chunk).
    read = jax.vmap(lambda raw, x: memory_forward(retained(raw, retention, q_norm), x))

    def body(raw0, x):
        q_c, k_c, v_c, lr_c, g_c, d_c, r_c, r_in = x
        same = tri & (r_c[:, None] == r_c[None, :])  # i <= r in the same segment
        entered = r_c == r_in  # r is still in the segment the chunk was entered in
        grad = grads(retained(raw0, retention, q_norm), k_c, v_c, d_c)
        if segments:  # a new segment's gradients are taken at the initial weights
            fresh = grads(retained(init, retention, q_norm), k_c, v_c, d_c)
            grad = tuple(_pick(entered, a, b) for a, b in zip(grad, fresh))
        # (r, i): exp of the log decays in (i, r] of one segment; gamma_r: in [segment or chunk start, r].
        decay = jnp.where(same, jnp.exp(jnp.sum(_between(g_c, same), axis=-1)), 0)
        gamma = jnp.exp(jnp.sum(jnp.where(same, g_c[None, :], 0), axis=-1))
        raws = tuple(
            _pick(entered, a0[None], a_init[None]) * gamma.reshape((-1,) + (1,) * a0.ndim)
            - jnp.einsum("ri,i...->r...", decay * lr_c[None, :], gw, precision=HIGHEST)
            for a0, a_init, gw in zip(raw0, init, grad))
        o = read(raws, q_c)
        return tuple(a[-1] for a in raws), o

    xs = (split(q), split(k), split(v), split(lr), split(g), split(delta), run_c, run_in)
    final, o = jax.lax.scan(jax.checkpoint(body), start, xs)
    return o.reshape((n * chunk,) + o.shape[2:])[:length], final


def _pick(mask, a, b):
    """``a`` where the ``(C,)`` mask holds, else ``b`` (broadcast over the trailing axes)."""
    m = mask.reshape(mask.shape + (1,) * (max(a.ndim, b.ndim) - 1))
    return jnp.where(m, a, b)


def _between(g, same):
    """``(r, i, j)`` terms whose sum over j is the log decay in ``(i, r]``: ``g_j`` for ``i < j <= r``."""
    c = g.shape[0]
    j = jnp.arange(c)
    inside = (j[None, None, :] > j[None, :, None]) & (j[None, None, :] <= j[:, None, None])
    return jnp.where(inside & same[:, :, None], g[None, None, :], 0)


__all__ = ["memory_update", "memory_forward", "loss_grad", "retained", "MEMORIES", "LOSSES", "RETENTIONS"]
