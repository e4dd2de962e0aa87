"""Float64 reference of the SeqBoat layer (Ren et al. 2023), from the paper's equations.

Shares no code path with ``seqjax/mixers/seqboat.py``: the EMA is the
recurrence run position by position (restarting at segment starts), the
latent configurator's choice is taken in NumPy float64 (:func:`routing`), and
the GAU's attention over the activated tokens is a dense ``l × l`` masked
matrix whose mask is built from each token's rank among the activated tokens
of its segment (no compress / extract, no blocks). The differentiable part
takes ``xp=jax.numpy`` (float64) for the gradient checks; the hard choice is
piecewise constant, so the gradient is the one at a fixed choice, which
reaches the configurator through ``g_t = π_t[activate]`` (the paper's
estimator).
"""

import math

import numpy as np


def params_of(variables, xp=np):
    """Flat float64 dict: ``name`` for arrays, ``name/kernel`` and ``name/bias`` for the dense layers."""
    import flax.linen as nn

    out = {}
    for name, value in nn.meta.unbox(variables["params"]).items():
        if isinstance(value, dict):
            for leaf, arr in value.items():
                out[f"{name}/{leaf}"] = xp.asarray(np.asarray(arr, np.float64))
        else:
            out[name] = xp.asarray(np.asarray(value, np.float64))
    return out


def _runs(segment_ids, batch, length):
    if segment_ids is None:
        return np.zeros((batch, length), np.int64)
    ids = np.asarray(segment_ids)
    return np.concatenate([np.zeros((batch, 1), np.int64), np.cumsum(ids[:, 1:] != ids[:, :-1], axis=1)], axis=1)


def _sigmoid(a, xp):
    return 1.0 / (1.0 + xp.exp(-a))


def _silu(a, xp):
    return a * _sigmoid(a, xp)


def ema(p, x, runs, causal, xp=np):
    """``H^S`` before the SiLU: ``Σ_n η h / √n + ω x`` with ``h_t = (1 − αδ) h_{t−1} + αβ x_t``."""
    b, length, d = x.shape
    n = p["ema_alpha"].shape[-1]
    out = p["ema_omega"] * x
    for i in range(1 if causal else 2):
        alpha, delta = _sigmoid(p["ema_alpha"][i], xp), _sigmoid(p["ema_delta"][i], xp)
        decay, gain, eta = 1.0 - alpha * delta, alpha * p["ema_beta"][i], p["ema_eta"][i] / math.sqrt(n)
        order = range(length) if i == 0 else range(length - 1, -1, -1)
        h = xp.zeros((b, d, n))
        ys = [None] * length
        prev = None
        for t in order:
            if prev is not None:  # a new segment (in scan order) starts from the empty state
                h = xp.where(xp.asarray(runs[:, t] != runs[:, prev])[:, None, None], 0.0, h)
            h = decay * h + gain * x[:, t][..., None]
            ys[t] = xp.sum(eta * h, axis=-1)
            prev = t
        out = out + xp.stack(ys, axis=1)
    return out


def configurator(p, mx, xp=np):
    """``π = softmax((W_c mx + b_c) / τ)``: ``(b, l, 2)`` over {skip, activate}."""
    logits = (mx @ p["router/kernel"] + p["router/bias"]) / xp.exp(p["log_temp"])
    logits = logits - xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(logits)
    return e / xp.sum(e, axis=-1, keepdims=True)


def routing(p, x, segment_ids=None, causal=True):
    """The hard choice ``a_t = [argmax π_t = activate]`` in NumPy float64: ``(b, l)`` booleans."""
    x = np.asarray(x, np.float64)
    runs = _runs(segment_ids, *x.shape[:2])
    probs = configurator(p, _silu(ema(p, x, runs, causal), np), np)
    return probs[..., 1] > probs[..., 0]


def attention_mask(active, runs, window, causal):
    """``(b, l, l)``: token t sees token s iff both activated, same segment, and their ranks among
    the segment's activated tokens differ by ``0..w`` (causal) or at most ``w`` (bidirectional)."""
    b, length = active.shape
    mask = np.zeros((b, length, length), bool)
    for bi in range(b):
        rank = np.full(length, -1)
        for seg in np.unique(runs[bi]):
            where = [t for t in range(length) if runs[bi, t] == seg and active[bi, t]]
            for r, t in enumerate(where):
                rank[t] = r
        for t in range(length):
            for s in range(length):
                if active[bi, t] and active[bi, s] and runs[bi, t] == runs[bi, s]:
                    gap = rank[t] - rank[s]
                    mask[bi, t, s] = (0 <= gap <= window) if causal else abs(gap) <= window
    return mask


def _pieces(p, x, active, segment_ids, causal, z_dim, xp):
    b, length, d = x.shape
    runs = _runs(segment_ids, b, length)
    mx = _silu(ema(p, x, runs, causal, xp), xp)
    probs = configurator(p, mx, xp)
    base = _silu(mx @ p["mx_proj/kernel"] + p["mx_proj/bias"], xp)
    e = (base.shape[-1] - z_dim) // 2
    z, r, v = base[..., :z_dim], base[..., z_dim : z_dim + e], base[..., z_dim + e :]
    q = z * p["qk_gamma"][0] + p["qk_beta"][0]
    k = z * p["qk_gamma"][1] + p["qk_beta"][1]
    return runs, mx, probs, q, k, v, r


def weights(p, x, active, *, window, causal=True, attention="softmax", z_dim, segment_ids=None, xp=np):
    """The attention matrix ``A[b, t, s]`` among activated tokens (zero rows and columns elsewhere)."""
    b, length, _ = x.shape
    runs, _, _, q, k, _, _ = _pieces(p, x, active, segment_ids, causal, z_dim, xp)
    mask = attention_mask(np.asarray(active), runs, window, causal)
    positions = np.zeros((b, length), np.int64)
    for bi in range(b):
        for t in range(1, length):
            positions[bi, t] = positions[bi, t - 1] + 1 if runs[bi, t] == runs[bi, t - 1] else 0
    table = p["rel_bias"]
    big = (table.shape[0] + 1) // 2 - 1
    offsets = np.clip(positions[:, None, :] - positions[:, :, None], -big, big) + big  # [t, s]: pos_s − pos_t
    bias = table[offsets]
    if attention == "softmax":
        s = xp.einsum("btz,bsz->bts", q, k) / math.sqrt(z_dim) + bias
        s = xp.where(mask, s, -1e30)
        s = s - xp.max(s, axis=-1, keepdims=True)
        e = xp.where(mask, xp.exp(s), 0.0)
        denom = xp.sum(e, axis=-1, keepdims=True)
        return e / xp.where(denom > 0, denom, 1.0)
    scale = 1.0 / (window if causal else 2 * window)
    s = xp.einsum("btz,bsz->bts", q, k) * scale + bias
    return xp.where(mask, xp.maximum(s, 0.0) ** 2, 0.0)


def reference(p, x, active, *, window, causal=True, attention="softmax", z_dim, segment_ids=None, xp=np):
    """The layer: ``y_t = W_x H^S_t + b_x + a_t π_t[1] (W_h (Σ_s A_ts v_s ⊙ r_t) + b_h)``, ``(b, l, d)``."""
    _, mx, probs, _, _, v, r = _pieces(p, x, active, segment_ids, causal, z_dim, xp)
    A = weights(p, x, active, window=window, causal=causal, attention=attention, z_dim=z_dim,
                segment_ids=segment_ids, xp=xp)
    o = xp.einsum("bts,bse->bte", A, v)
    h = (o * r) @ p["h_proj/kernel"] + p["h_proj/bias"]
    gate = xp.where(xp.asarray(active), probs[..., 1], 0.0)
    return mx @ p["hx_proj/kernel"] + p["hx_proj/bias"] + gate[..., None] * h
