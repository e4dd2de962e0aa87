"""Float64 NumPy reference of the Miras mixers (Moneta, Yaad, Memora), from the paper's equations.

:func:`miras_reference` rebuilds a whole mixer from its parameters (the flat
dict of :func:`tests.mixers.ref_linear_mixers.params_of`) with loops over time::

    q, k, v = silu(conv(x W_Q)), silu(conv(x W_K)), silu(conv(x W_V))     causal, 4 taps, no bias
    q, k    = q / |q|, k / |k|;   η = max_lr · sigmoid(x W_η);   log α = −exp(A_log) softplus(x W_a + dt_bias)
    δ       = softplus(x W_δ + b_δ + softplus⁻¹(1))                         (yaad)
    A_t     = α_t A_{t−1} − η_t ∇_W ℓ(M_{φ(A_{t−1})}(k_t), v_t),   o_t = M_{φ(A_t)}(q_t)
    y       = concat_h(RMSNorm(o_t) ⊙ w) W_O

the memory update being :func:`tests.ops.ref_memory_update.memory_update_ref`
(hand-written gradients); the convolution and the memory restart at each
segment start (the memory from the learned ``memory_w1``, ``memory_w2``).
Nothing here calls seqjax.
"""

import numpy as np

from tests.mixers.harness import runs_of
from tests.ops.ref_memory_update import memory_update_ref

L2_EPS = 1e-6
# loss, retention of each mixer.
KINDS = {"moneta": ("lp", "lq"), "yaad": ("huber", "l2"), "memora": ("l2", "kl")}


def _silu(x):
    return x / (1 + np.exp(-x))


def _softplus(x):
    return np.log1p(np.exp(x))


def _l2(x):
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + L2_EPS)


def _conv(x, w, runs):
    """Causal depthwise cross-correlation ``y_t = Σ_j w_j x_{t−(K−1)+j}``, zero outside t's segment."""
    K = w.shape[0]
    y = np.zeros_like(x)
    for t in range(x.shape[1]):
        for j in range(K):
            s = t - (K - 1) + j
            if s >= 0:
                y[:, t] += w[j] * x[:, s] * (runs[:, s] == runs[:, t])[:, None]
    return y


def miras_reference(p, x, name, heads, norm_eps, segment_ids=None, chunk_size=1, max_lr=0.1, p_exp=3.0,
                    q_norm=4.0):
    """The mixer's output ``(b, l, d)``; ``chunk_size`` > 1 gives the chunk-wise approximation."""
    x = np.asarray(x, np.float64)
    b, l, _ = x.shape
    dk = p["q_proj.kernel"].shape[1] // heads
    runs = runs_of(segment_ids, b, l)
    pre = np.concatenate([x @ p["q_proj.kernel"], x @ p["k_proj.kernel"], x @ p["v_proj.kernel"]], axis=-1)
    qkv = _silu(_conv(pre, p["conv_weight"], runs))
    q, k, v = (qkv[..., i * heads * dk:(i + 1) * heads * dk].reshape(b, l, heads, dk) for i in range(3))
    q, k = _l2(q), _l2(k)
    lr = max_lr / (1 + np.exp(-(x @ p["b_proj.kernel"])))
    log_alpha = -np.exp(p["A_log"]) * _softplus(x @ p["a_proj.kernel"] + p["dt_bias"])
    delta = None
    if name == "yaad":
        delta = _softplus(x @ p["delta_proj.kernel"] + p["delta_proj.bias"] + np.log(np.expm1(1.0)))
    loss, retention = KINDS[name]
    params0 = tuple(np.broadcast_to(p[n], (b,) + p[n].shape) for n in ("memory_w1", "memory_w2"))
    o, _ = memory_update_ref(q, k, v, lr, params0, log_alpha, delta, loss, retention, p_exp, q_norm,
                             segment_ids=segment_ids, chunk_size=chunk_size)
    o = o / np.sqrt(np.mean(o * o, axis=-1, keepdims=True) + norm_eps) * p["norm"]
    return o.reshape(b, l, heads * dk) @ p["out_proj.kernel"]
