"""Float64 reference of Mixture-of-Memories (Du et al. 2025, "MoM"), from the paper's equations.

:func:`mom_reference` rebuilds the whole mixer from its parameters (the flat
dict of :func:`tests.mixers.ref_linear_mixers.params_of`) with a plain loop
over tokens and, inside it, over the memories (state ``dk x dv`` per head)::

    p_t   = softmax(x_t W_r);   T_t = the top_k memories of p_t;   g_{t,m} = p_{t,m} / Σ_{T_t} p   (m ∈ T_t)
    q_t   = x_t W_q (GLA: · dk^-1/2; gated delta: l2norm(silu(·)) · dk^-1/2)
    memory m ∈ T_t (and the shared memory, every token):
        GLA          S^m = diag(α^m_t) S^m + k^m_t v^m_tᵀ,     log α^m = log_sigmoid(x W_α1^m W_α2^m + b^m) / τ
        gated delta  S^m = a^m_t (I - β^m_t k k ᵀ) S^m + β^m_t k v ᵀ,
                     k = l2norm(silu(x W_k^m)), v = silu(x W_v^m), β = sigmoid(x W_β^m),
                     log a = -exp(A_log) softplus(x W_a^m + dt_bias)
    memory m ∉ T_t: S^m unchanged (no decay, no write)
    o_t   = Σ_{m ∈ T_t} g_{t,m} S^mᵀ q_t + S^sharedᵀ q_t
    out   = concat_h(RMSNorm(o_t) ⊙ w ⊙ silu(x W_g)) W_O

with every state restarting at a segment start. The top-k set is found by
counting, for each memory, the memories with a larger probability (no sort,
no gradient). :func:`mom_matrix` is the dense mixing matrix of the same loop,
``M[b, (m, h), t, s]`` = the weighted read of channel ``(m, h)`` at ``t`` when
the values are one-hot at ``s`` (the loop is linear in ``v``). Nothing here
calls seqjax.

Takes an ``xp`` module (``numpy``, or ``jax.numpy`` under ``jax.enable_x64``
for gradients): lists and ``xp.stack``, no in-place assignment.
"""

import numpy as np

from tests.mixers.harness import runs_of

L2_EPS = 1e-6


def _silu(xp, x):
    return x / (1 + xp.exp(-x))


def _l2(xp, x):
    return x / xp.sqrt(xp.sum(x * x, axis=-1, keepdims=True) + L2_EPS)


def mom_branches(p, x, cfg, xp=np):
    """Everything before the memories.

    Args:
      p: flat parameter dict.
      x: ``(b, l, d)`` float64.
      cfg: dict with ``heads, dk, dv, num_memories, top_k, shared, kind, temperature``.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``(q, k, v, beta, log_decay, routed, g, gate)``: ``q (b, l, h, dk)``, per
      memory ``k (b, l, n, h, dk)``, ``v (b, l, n, h, dv)``, ``beta (b, l, n, h)``
      (None for GLA), ``log_decay`` ``(b, l, n, h, dk)`` (GLA) or ``(b, l, n,
      h)``, ``routed`` and ``g`` ``(b, l, n)`` (the shared memory last, 1 and
      1), ``gate (b, l, h, dv)``.
    """
    b, l, _ = x.shape
    h, dk, dv, M, kind = cfg["heads"], cfg["dk"], cfg["dv"], cfg["num_memories"], cfg["kind"]
    logits = x @ p["router.kernel"]
    e = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))
    probs = e / xp.sum(e, axis=-1, keepdims=True)
    # Memory m is in the top k when fewer than k memories have a larger probability.
    larger = sum((probs[..., j : j + 1] > probs) * 1.0 for j in range(M))
    routed = (larger < cfg["top_k"]) * 1.0
    g = routed * probs / xp.sum(routed * probs, axis=-1, keepdims=True)
    n = M + int(cfg["shared"])
    if cfg["shared"]:
        ones = xp.ones((b, l, 1))
        routed, g = xp.concatenate([routed, ones], -1), xp.concatenate([g, ones], -1)

    def per_memory(name):
        return xp.stack([x @ p[name][m] for m in range(n)], axis=2)  # (b, l, n, f)

    q = (x @ p["q_proj.kernel"]).reshape(b, l, h, dk)
    k = per_memory("k_proj").reshape(b, l, n, h, dk)
    v = per_memory("v_proj").reshape(b, l, n, h, dv)
    if kind == "gla":
        q = q / np.sqrt(dk)
        z = xp.stack([(x @ p["alpha_down"][m]) @ p["alpha_up"][m] + p["alpha_bias"][m] for m in range(n)], axis=2)
        log_decay = (-xp.log1p(xp.exp(-z)) / cfg["temperature"]).reshape(b, l, n, h, dk)
        beta = None
    else:
        q = _l2(xp, _silu(xp, q)) / np.sqrt(dk)
        k, v = _l2(xp, _silu(xp, k)), _silu(xp, v)
        beta = 1 / (1 + xp.exp(-per_memory("b_proj")))
        a = per_memory("a_proj") + p["dt_bias"]
        log_decay = -xp.exp(p["A_log"]) * xp.log1p(xp.exp(a))
    gate = (x @ p["g_proj.kernel"]).reshape(b, l, h, dv)
    return q, k, v, beta, log_decay, routed, g, gate


def mom_memories(q, k, v, beta, log_decay, routed, g, runs, kind, xp=np):
    """Each memory's read weighted by its routing weight, ``(b, l, n, h, dv)``: the per-token loop."""
    b, l, n, h, dk = k.shape
    dv = v.shape[-1]
    states = [xp.zeros((b, h, dk, dv)) for _ in range(n)]
    out = []
    for t in range(l):
        keep = xp.asarray(runs[:, t] == runs[:, t - 1]) * 1.0 if t > 0 else xp.zeros((b,))
        reads = []
        for m in range(n):
            S = keep[:, None, None, None] * states[m]  # a segment start empties every memory
            k_t, v_t = k[:, t, m][..., :, None], v[:, t, m][..., None, :]  # (b, h, dk, 1), (b, h, 1, dv)
            if kind == "gla":
                new = xp.exp(log_decay[:, t, m])[..., None] * S + k_t * v_t
            else:
                # a (I - β k kᵀ) S + β k vᵀ, with (I - β k kᵀ) S = S - β k (kᵀ S)
                b_t = beta[:, t, m][..., None, None]
                kS = xp.sum(k_t * S, axis=-2, keepdims=True)  # (b, h, 1, dv)
                new = xp.exp(log_decay[:, t, m])[..., None, None] * (S - b_t * k_t * kS) + b_t * k_t * v_t
            # Routed: the update; not routed: the state as it was (no decay, no write).
            r = routed[:, t, m][:, None, None, None]
            states[m] = r * new + (1 - r) * S
            reads.append(g[:, t, m][:, None, None] * xp.sum(states[m] * q[:, t][..., :, None], axis=-2))
        out.append(xp.stack(reads, axis=1))
    return xp.stack(out, axis=1)


def mom_reference(p, x, cfg, norm_eps, segment_ids=None, xp=np):
    """The mixer's output ``(b, l, d)`` by the literal loop."""
    b, l, _ = x.shape
    q, k, v, beta, log_decay, routed, g, gate = mom_branches(p, x, cfg, xp)
    reads = mom_memories(q, k, v, beta, log_decay, routed, g, runs_of(segment_ids, b, l), cfg["kind"], xp)
    o = xp.sum(reads, axis=2)  # (b, l, h, dv)
    o = o / xp.sqrt(xp.mean(o * o, axis=-1, keepdims=True) + norm_eps) * p["norm"] * _silu(xp, gate)
    return o.reshape(b, l, -1) @ p["out_proj.kernel"]


def mom_matrix(p, x, cfg, segment_ids=None):
    """The dense ``M[b, (m, h), t, s]`` of the loop (float64 NumPy), one value position ``s`` at a time."""
    b, l, _ = x.shape
    q, k, v, beta, log_decay, routed, g, _ = mom_branches(p, x, cfg)
    runs = runs_of(segment_ids, b, l)
    n, h = v.shape[2], v.shape[3]
    M = np.zeros((b, n * h, l, l))
    for s in range(l):
        one_hot = np.zeros_like(v)
        one_hot[:, s] = 1.0
        reads = mom_memories(q, k, one_hot, beta, log_decay, routed, g, runs, cfg["kind"])  # (b, l, n, h, dv)
        M[:, :, :, s] = reads[..., 0].reshape(b, l, n * h).transpose(0, 2, 1)
    return M
