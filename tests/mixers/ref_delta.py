"""Float64 references and the closed-form mixing matrix of DeltaNet and Gated DeltaNet, from the papers.

:func:`delta_reference` rebuilds a whole mixer from its parameters (the flat
dict of :func:`tests.mixers.ref_linear_mixers.params_of`) with explicit loops
over time, in the papers' orientation (state ``dv x dk``)::

    q, k, v = silu(conv(x W_Q)), silu(conv(x W_K)), silu(conv(x W_V))   causal, 4 taps, no bias
    q, k    = q / |q| · dk^-1/2, k / |k|;   β = sigmoid(x W_β)
    log α   = -exp(A_log) softplus(x W_a + dt_bias)                       (gated; else α = 1)
    S_t     = α_t S_{t-1} (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ,   o_t = S_t q_t
    y       = concat_h(RMSNorm(o_t) ⊙ w [⊙ silu(x W_g)]) W_O

with the convolution and the state restarting at each segment start.
:func:`delta_matrix` is ``M[b, h, t, s] = Π_{s<r≤t} α_r · β_s k_sᵀ H_{s+1} ⋯ H_t q_t``
(``H_r = I - β_r k_r k_rᵀ``, ``s <= t``, same segment), pair by pair. Nothing
here calls seqjax.

Both take an ``xp`` module (``numpy`` or ``jax.numpy`` under ``jax.enable_x64``,
for gradients): lists and ``xp.stack``, no in-place assignment.
"""

import numpy as np

from tests.mixers.harness import runs_of

L2_EPS = 1e-6


def _silu(xp, x):
    return x / (1 + xp.exp(-x))


def _l2(xp, x):
    return x / xp.sqrt(xp.sum(x * x, axis=-1, keepdims=True) + L2_EPS)


def _conv(xp, x, w, runs):
    """Causal depthwise cross-correlation ``y_t = Σ_j w_j x_{t-(K-1)+j}``, zero outside t's segment."""
    K = w.shape[0]
    b, l, _ = x.shape
    rows = []
    for t in range(l):
        acc = 0.0 * x[:, 0]
        for j in range(K):
            s = t - (K - 1) + j
            if s < 0:
                continue
            same = xp.asarray((runs[:, s] == runs[:, t]) * 1.0)[:, None]
            acc = acc + w[j] * x[:, s] * same
        rows.append(acc)
    return xp.stack(rows, axis=1)


def delta_branches(p, x, heads, dk, dv, gated, segment_ids=None, xp=np):
    """``(q, k, v, β, log α, gate)``: ``(b, l, h, ·)`` arrays, ``log α`` and ``gate`` None unless gated."""
    b, l, _ = x.shape
    runs = runs_of(segment_ids, b, l)
    pre = xp.concatenate([x @ p["q_proj.kernel"], x @ p["k_proj.kernel"], x @ p["v_proj.kernel"]], axis=-1)
    qkv = _silu(xp, _conv(xp, pre, p["conv_weight"], runs))
    q = qkv[..., : heads * dk].reshape(b, l, heads, dk)
    k = qkv[..., heads * dk : 2 * heads * dk].reshape(b, l, heads, dk)
    v = qkv[..., 2 * heads * dk :].reshape(b, l, heads, dv)
    q = _l2(xp, q) / np.sqrt(dk)
    k = _l2(xp, k)
    beta = 1 / (1 + xp.exp(-(x @ p["b_proj.kernel"])))
    log_alpha = gate = None
    if gated:
        a = x @ p["a_proj.kernel"] + p["dt_bias"]
        log_alpha = -xp.exp(p["A_log"]) * xp.log1p(xp.exp(a))
        gate = (x @ p["g_proj.kernel"]).reshape(b, l, heads, dv)
    return q, k, v, beta, log_alpha, gate


def delta_reference(p, x, heads, dk, dv, gated, norm_eps, segment_ids=None, xp=np):
    """The mixer's output ``(b, l, d)`` by the literal recurrence."""
    b, l, _ = x.shape
    q, k, v, beta, log_alpha, gate = delta_branches(p, x, heads, dk, dv, gated, segment_ids, xp)
    runs = runs_of(segment_ids, b, l)
    eye = xp.asarray(np.eye(dk))
    S = xp.zeros((b, heads, dv, dk))
    outs = []
    for t in range(l):
        if t > 0:
            S = xp.asarray((runs[:, t] == runs[:, t - 1]) * 1.0)[:, None, None, None] * S
        k_t, b_t = k[:, t], beta[:, t][..., None, None]
        S = xp.einsum("bhvk,bhkj->bhvj", S, eye - b_t * (k_t[..., :, None] * k_t[..., None, :]))
        if gated:
            S = xp.exp(log_alpha[:, t])[..., None, None] * S
        S = S + b_t * (v[:, t][..., :, None] * k_t[..., None, :])
        outs.append(xp.einsum("bhvk,bhk->bhv", S, q[:, t]))
    o = xp.stack(outs, axis=1)  # (b, l, h, dv)
    o = o / xp.sqrt(xp.mean(o * o, axis=-1, keepdims=True) + norm_eps) * p["norm"]
    if gated:
        o = o * _silu(xp, gate)
    return o.reshape(b, l, heads * dv) @ p["out_proj.kernel"]


def delta_matrix(p, x, heads, dk, dv, gated, segment_ids=None):
    """The closed-form ``M[b, h, t, s]`` (float64 NumPy), one pair at a time."""
    b, l, _ = x.shape
    q, k, _, beta, log_alpha, _ = delta_branches(p, x, heads, dk, dv, gated, segment_ids)
    runs = runs_of(segment_ids, b, l)
    M = np.zeros((b, heads, l, l))
    for i in range(b):
        for h in range(heads):
            for t in range(l):
                for s in range(t + 1):
                    if runs[i, s] != runs[i, t]:
                        continue
                    row = beta[i, s, h] * k[i, s, h]  # β_s k_sᵀ, then H_{s+1} ⋯ H_t on the right
                    for r in range(s + 1, t + 1):
                        row = row - beta[i, r, h] * (row @ k[i, r, h]) * k[i, r, h]
                    decay = np.exp(np.sum(log_alpha[i, s + 1 : t + 1, h])) if gated else 1.0
                    M[i, h, t, s] = decay * (row @ q[i, t, h])
    return M
