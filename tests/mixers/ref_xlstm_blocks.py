"""Float64 references for the xLSTM residual blocks (Beck et al. 2024, §2.4): loops over time.

Written from the block equations (the docstrings of ``seqjax.mixers.xlstm_blocks``)
and the cells' plain recurrences (the paper's eqs. for sLSTM and mLSTM): the
causal conv is a loop over taps that skips other segments' positions, both
cells loop over time from zero states that restart at every segment start,
and ``stabilised=True`` runs the paper's stabiliser with ``m_0 = 0`` instead of
the plain exponentials. The mixers run differently on purpose (mLSTM: the
parallel form; sLSTM: ``m_1 = i~_1``; the conv as shifted sums), so agreement
checks the algorithm, not a copy of it.

Every block reference is ``ref(xp, params, x, num_heads, segment_ids=None,
stabilised=False, **fields)``: ``xp`` numpy or jax.numpy under
``jax.enable_x64`` (for autodiff; no in-place assignment), ``params`` the
mixer's unboxed params, ``x`` ``(batch, length, d)`` float64, ``segment_ids``
numpy ints or None; it returns ``(batch, length, d)``.
"""

import math

import numpy as np

from tests.mixers.ref_recurrent import keep_state, reset, sigmoid
from tests.mixers.ref_xlstm import log_sigmoid

GN_EPS = 1e-5


def silu(xp, z):
    """z * sigmoid(z)."""
    return z * sigmoid(xp, z)


def gelu(xp, z):
    """Exact GELU, 0.5 z (1 + erf(z / sqrt 2))."""
    if xp is np:
        erf = np.vectorize(math.erf)(z / math.sqrt(2.0))
    else:
        import jax.scipy.special

        erf = jax.scipy.special.erf(z / math.sqrt(2.0))
    return 0.5 * z * (1.0 + erf)


def _runs(segment_ids, batch, length):
    """``(b, l)`` numpy run index (a change of id starts a new run)."""
    if segment_ids is None:
        return np.zeros((batch, length), int)
    ids = np.asarray(segment_ids)
    change = np.concatenate([np.zeros((batch, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
    return np.cumsum(change, axis=1)


def causal_conv(xp, x, weight, bias, segment_ids=None):
    """``y_t = bias + Σ_k w_k x_{t-(K-1)+k}``, over positions of t's own segment only."""
    batch, length, _ = x.shape
    kernel = weight.shape[0]
    runs = _runs(segment_ids, batch, length)
    out = []
    for t in range(length):
        y = 0.0 * x[:, t] + bias
        for k in range(kernel):
            s = t - (kernel - 1) + k
            if s < 0:
                continue
            same = (runs[:, s] == runs[:, t]).astype(float)[:, None]  # another segment's inputs count as 0
            y = y + weight[k] * x[:, s] * same
        out.append(y)
    return xp.stack(out, axis=1)


def group_norm(xp, h, scale):
    """``h: (b, l, H, P)``: LayerNorm over each head's P units, times ``scale (H·P,)``; returns ``(b, l, H·P)``."""
    mean = xp.mean(h, axis=-1, keepdims=True)
    var = xp.mean((h - mean) ** 2, axis=-1, keepdims=True)
    y = (h - mean) / xp.sqrt(var + GN_EPS)
    return xp.reshape(y, h.shape[:2] + (-1,)) * scale


def mlstm_cell(xp, q, k, v, i_pre, f_pre, segment_ids=None, stabilised=False):
    """mLSTM over time: C = f C + i k v^T, n = f n + i k, h = C^T q / max(|n^T q|, 1).

    ``q, k, v``: ``(b, l, H, P)`` (k already scaled); ``i_pre, f_pre``: ``(b, l, H)``
    (``i = exp(i~)``, ``f = sigmoid(f~)``). Returns ``h~ (b, l, H, P)``.
    """
    batch, length, heads, p = q.shape
    c = 0.0 * q[:, 0, :, :, None] * v[:, 0, :, None, :]
    n = 0.0 * k[:, 0]
    m = 0.0 * i_pre[:, 0]
    out = []
    for t in range(length):
        keep = keep_state(segment_ids, t)
        c, n, m = reset(xp, c, keep), reset(xp, n, keep), reset(xp, m, keep)
        if stabilised:
            log_f = log_sigmoid(xp, f_pre[:, t])
            m_new = xp.maximum(log_f + m, i_pre[:, t])
            i, f, floor = xp.exp(i_pre[:, t] - m_new), xp.exp(log_f + m - m_new), xp.exp(-m_new)
        else:
            m_new = m
            i, f, floor = xp.exp(i_pre[:, t]), sigmoid(xp, f_pre[:, t]), 1.0
        c = f[..., None, None] * c + i[..., None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        n = f[..., None] * n + i[..., None] * k[:, t]
        num = xp.sum(c * q[:, t, :, :, None], axis=-2)
        den = xp.maximum(xp.abs(xp.sum(n * q[:, t], axis=-1)), floor)
        out.append(num / den[..., None])
        m = m_new
    return xp.stack(out, axis=1)


def slstm_cell(xp, pre, recurrent, segment_ids=None, stabilised=False):
    """sLSTM over time: [i~, f~, z~, o~] = pre + h R (per head), c = f c + i tanh(z~), n = f n + i, h = o c / n.

    ``pre``: ``(b, l, H, 4, P)``; ``recurrent``: ``(H, P, 4P)``. Returns ``h (b, l, H, P)``.
    """
    batch, length, heads, _, p = pre.shape
    h = c = n = m = 0.0 * pre[:, 0, :, 0]
    out = []
    for t in range(length):
        keep = keep_state(segment_ids, t)
        h, c, n, m = (reset(xp, s, keep) for s in (h, c, n, m))
        g = pre[:, t] + xp.reshape(xp.einsum("bhp,hpe->bhe", h, recurrent), (batch, heads, 4, p))
        i_pre, f_pre, z, o = g[:, :, 0], g[:, :, 1], xp.tanh(g[:, :, 2]), sigmoid(xp, g[:, :, 3])
        if stabilised:
            log_f = log_sigmoid(xp, f_pre)
            m_new = xp.maximum(log_f + m, i_pre)
            i, f = xp.exp(i_pre - m_new), xp.exp(log_f + m - m_new)
        else:
            m_new = m
            i, f = xp.exp(i_pre), sigmoid(xp, f_pre)
        c = f * c + i * z
        n = f * n + i
        h, m = o * c / n, m_new
        out.append(h)
    return xp.stack(out, axis=1)


def mlstm_block_ref(xp, params, x, num_heads, segment_ids=None, stabilised=False, expand=2, qkv_blocksize=4):
    """mlstm_block: [a, z] = W_up x; u = swish(conv a); q, k from u, v from a (block-diagonal);
    [i~, f~] = W_g [q; k; v] + b; h~ = mLSTM; y = W_down ((GN(h~) + s u) swish(z))."""
    batch, length, d = x.shape
    inner = expand * d
    up = xp.matmul(x, params["in_proj"]["kernel"])
    a, z = up[..., :inner], up[..., inner:]
    u = silu(xp, causal_conv(xp, a, params["conv_weight"], params["conv_bias"], segment_ids))

    def blocks(t, w):
        tb = xp.reshape(t, (batch, length, inner // qkv_blocksize, qkv_blocksize))
        return xp.reshape(xp.einsum("blni,nij->blnj", tb, w), (batch, length, inner))

    q, k, v = blocks(u, params["qkv"][0]), blocks(u, params["qkv"][1]), blocks(a, params["qkv"][2])
    gates = xp.matmul(xp.concatenate([q, k, v], axis=-1), params["gate_proj"]["kernel"])
    gates = xp.reshape(gates, (batch, length, 2, num_heads)) + params["gate_bias"]
    heads = lambda t: xp.reshape(t, (batch, length, num_heads, -1))  # noqa: E731
    p = inner // num_heads
    h = mlstm_cell(xp, heads(q), heads(k) / math.sqrt(p), heads(v), gates[:, :, 0], gates[:, :, 1],
                   segment_ids, stabilised)
    h = (group_norm(xp, h, params["norm_scale"]) + params["skip"] * u) * silu(xp, z)
    return xp.matmul(h, params["out_proj"]["kernel"])


def slstm_block_ref(xp, params, x, num_heads, segment_ids=None, stabilised=False, d_conv=4):
    """slstm_block: u = swish(conv x); i~, f~ from u, z~, o~ from x (head-wise); h = sLSTM;
    g = GN(h); y = W_down (gelu(W_gate g) (W_up g))."""
    batch, length, d = x.shape
    u = x
    if d_conv:
        u = silu(xp, causal_conv(xp, x, params["conv_weight"], params["conv_bias"], segment_ids))

    def headwise(t, w):
        return xp.einsum("blhi,higj->blhgj", xp.reshape(t, (batch, length, num_heads, -1)), w)

    pre = xp.concatenate([headwise(u, params["if_proj"]), headwise(x, params["zo_proj"])], axis=3)
    h = slstm_cell(xp, pre + params["bias"], params["recurrent"], segment_ids, stabilised)
    g = group_norm(xp, h, params["norm_scale"])
    up = xp.matmul(g, params["up_proj"]["kernel"])
    hidden = up.shape[-1] // 2
    return xp.matmul(gelu(xp, up[..., :hidden]) * up[..., hidden:], params["out_proj"]["kernel"])
