"""Float64 NumPy references for the model layer, written from the equations.

* norms: LayerNorm ``(x - mean) / sqrt(var + eps) * scale + bias`` and RMSNorm
  ``x / sqrt(mean(x²) + eps) * scale`` over the last axis;
* channel branches: MLP ``W_2 gelu(W_1 x + b_1) + b_2`` (exact erf GELU) and
  SwiGLU ``W_o (silu(W_g x) * W_u x)``;
* pre-norm block ``h = x + mixer(norm(x))``, ``y = h + channel(norm(h))``;
* multi-head softmax attention without positions (the ``mha`` mixer with
  ``positions="none"``): ``softmax(q kᵀ / sqrt(dh))`` per head, causal mask;
* sinusoidal positions (Vaswani et al. 2017) and masked pooling.

Parameters come from the Flax variables as nested dicts of arrays.
"""

import math

import numpy as np

EPS = 1e-5
_erf = np.vectorize(math.erf)


def f64(tree):
    """Nested dict of arrays -> same structure of float64 NumPy arrays."""
    if isinstance(tree, dict):
        return {k: f64(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


def layernorm(x, p, eps=EPS):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def rmsnorm(x, p, eps=EPS):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * p["scale"]


def norm(kind, x, p):
    return {"layernorm": layernorm, "rmsnorm": rmsnorm}[kind](x, p)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def mlp(x, p):
    h = gelu(x @ p["wi"]["kernel"] + p["wi"]["bias"])
    return h @ p["wo"]["kernel"] + p["wo"]["bias"]


def glu(x, p):
    return (silu(x @ p["wg"]["kernel"]) * (x @ p["wu"]["kernel"])) @ p["wo"]["kernel"]


def mha(x, p, num_heads, causal=True):
    """Softmax attention without positions: x (b, l, d) -> (b, l, d)."""
    b, l, d = x.shape
    q = (x @ p["q_proj"]["kernel"]).reshape(b, l, num_heads, -1)
    k = (x @ p["k_proj"]["kernel"]).reshape(b, l, num_heads, -1)
    v = (x @ p["v_proj"]["kernel"]).reshape(b, l, num_heads, -1)
    dh = q.shape[-1]
    out = np.zeros_like(q)
    for bi in range(b):
        for h in range(num_heads):
            for t in range(l):
                visible = t + 1 if causal else l
                s = np.array([q[bi, t, h] @ k[bi, u, h] for u in range(visible)]) / math.sqrt(dh)
                w = np.exp(s - s.max())
                w /= w.sum()
                out[bi, t, h] = sum(w[u] * v[bi, u, h] for u in range(visible))
    return out.reshape(b, l, -1) @ p["out_proj"]["kernel"]


def block(x, p, mixer_fn, norm_kind="layernorm", channel="mlp"):
    """One pre-norm residual block; ``mixer_fn(h, p_mixer)`` gives the mixer output."""
    h = x + mixer_fn(norm(norm_kind, x, p["mixer_norm"]), p["mixer"])
    if channel == "none":
        return h
    branch = {"mlp": mlp, "glu": glu}[channel]
    return h + branch(norm(norm_kind, h, p["channel_norm"]), p["channel"])


def sinusoidal(positions, d, base=10000.0):
    """PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d))."""
    positions = np.asarray(positions, np.float64)
    out = np.zeros(positions.shape + (d,))
    for c in range(d):
        i = c // 2
        angle = positions / base ** (2 * i / d)
        out[..., c] = np.sin(angle) if c % 2 == 0 else np.cos(angle)
    return out


def pool(x, pooling, mask=None):
    """Mean over True positions / last True position / position 0, with loops."""
    b, l, _ = x.shape
    mask = np.ones((b, l), bool) if mask is None else np.asarray(mask, bool)
    out = []
    for bi in range(b):
        idx = [t for t in range(l) if mask[bi, t]]
        if pooling == "mean":
            out.append(np.mean(x[bi, idx], axis=0))
        elif pooling == "last":
            out.append(x[bi, idx[-1]])
        else:
            out.append(x[bi, 0])
    return np.stack(out)
