"""Float64 NumPy reference of Miras' online memory update, written from the paper's equations.

Behrouz et al. 2025 ("It's All Connected", Miras): per head and token, with
``e = M_{W_{t−1}}(k_t) − v_t``::

    A_t = α_t A_{t−1} − η_t ∇_W ℓ,   W_t = φ(A_t),   o_t = M_{W_t}(q_t)

The gradients are written out by hand (no autodiff): for the linear memory
``M(x) = W x``, ``∇_W = g xᵀ``; for the residual MLP ``M(x) = x + W1 s(W2 x)``
(s = silu), with ``z = W2 x``: ``∇_{W1} = g s(z)ᵀ``, ``∇_{W2} = ((W1ᵀ g) ⊙
s'(z)) xᵀ``, ``s'(z) = σ(z)(1 + z(1 − σ(z)))``. ``g`` is the attentional
bias's derivative: ``e`` (ℓ2), ``p sign(e)|e|^{p−1}`` (ℓp), ``clip(e, ±δ)``
(Huber). ``φ``: identity (ℓ2 retention), ``A / ‖A‖_q^{q−2}`` (ℓq; the
entrywise q-norm with the op's eps), row softmax (KL). ``chunk_size`` C > 1 gives the
chunk-wise approximation (gradients at the chunk's entry weights, or at the
initial weights after a segment start inside the chunk).
"""

import numpy as np

NORM_EPS = 1e-6


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def forward(w, x):
    if len(w) == 1:
        return w[0] @ x
    w1, w2 = w
    z = w2 @ x
    return x + w1 @ (z * _sig(z))


def grad(w, x, g):
    """``∇_W`` of ``ℓ`` with ``∂ℓ/∂M(x) = g``."""
    if len(w) == 1:
        return (np.outer(g, x),)
    w1, w2 = w
    z = w2 @ x
    s = _sig(z)
    ds = s * (1 + z * (1 - s))
    return np.outer(g, z * s), np.outer((w1.T @ g) * ds, x)


def bias_grad(e, loss, p, delta):
    if loss == "l2":
        return e
    if loss == "lp":
        return p * np.sign(e) * np.abs(e) ** (p - 1)
    return np.clip(e, -delta, delta)


def phi(raw, retention, q_norm):
    if retention == "l2":
        return tuple(raw)
    if retention == "kl":
        out = []
        for a in raw:
            ex = np.exp(a - a.max(axis=-1, keepdims=True))
            out.append(ex / ex.sum(axis=-1, keepdims=True))
        return tuple(out)
    return tuple(a * (np.sum(np.abs(a) ** q_norm) + NORM_EPS) ** (-(q_norm - 2) / q_norm) for a in raw)


def _runs(segment_ids, b, l):
    if segment_ids is None:
        return np.zeros((b, l), int)
    s = np.asarray(segment_ids)
    return np.concatenate([np.zeros((b, 1), int), np.cumsum(s[:, 1:] != s[:, :-1], axis=1)], axis=1)


def memory_update_ref(q, k, v, lr, params0, log_decay=None, delta=None, loss="l2", retention="l2", p=3.0,
                      q_norm=4.0, initial_state=None, segment_ids=None, chunk_size=1):
    """The update, float64. With ``chunk_size`` C > 1 the gradients of a chunk are taken at its entry state.

    Returns:
      ``(o (b, l, h, dv), final raw state tuple)``.
    """
    q, k, v, lr = (np.asarray(x, np.float64) for x in (q, k, v, lr))
    b, l, h, _ = q.shape
    alpha = np.ones((b, l, h)) if log_decay is None else np.exp(np.asarray(log_decay, np.float64))
    dl = np.zeros((b, l, h)) if delta is None else np.asarray(delta, np.float64)
    init = [np.asarray(w, np.float64) for w in params0]
    start = init if initial_state is None else [np.asarray(w, np.float64) for w in initial_state]
    runs = _runs(segment_ids, b, l)
    o = np.zeros(v.shape)
    final = [np.zeros(w.shape) for w in init]
    for bi in range(b):
        for hi in range(h):
            raw = [w[bi, hi].copy() for w in start]
            w_grad = None  # the weights the gradients are taken at (the chunk's entry state)
            for t in range(l):
                if t > 0 and runs[bi, t] != runs[bi, t - 1]:
                    raw = [w[bi, hi].copy() for w in init]
                    w_grad = None
                if t % chunk_size == 0 or w_grad is None:
                    w_grad = phi(raw, retention, q_norm)
                if chunk_size == 1:
                    w_grad = phi(raw, retention, q_norm)
                e = forward(w_grad, k[bi, t, hi]) - v[bi, t, hi]
                gw = grad(w_grad, k[bi, t, hi], bias_grad(e, loss, p, dl[bi, t, hi]))
                raw = [alpha[bi, t, hi] * a - lr[bi, t, hi] * gi for a, gi in zip(raw, gw)]
                o[bi, t, hi] = forward(phi(raw, retention, q_norm), q[bi, t, hi])
            for i, a in enumerate(raw):
                final[i][bi, hi] = a
    return o, tuple(final)
