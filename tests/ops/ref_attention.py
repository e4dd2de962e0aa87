"""Float64 reference for softmax attention, written from the definition.

One explicit Python loop over query positions; for each query the visible keys
are decided from the definitions of the masks (causal with aligned ends, window,
segments) with plain Python/NumPy integers, and the output is the softmax-
weighted average of the visible values. Nothing here shares code with
``seqjax.ops``. The ``xp`` argument is ``numpy`` or ``jax.numpy``: with
``jax.numpy`` under ``jax.enable_x64(True)`` the same code is differentiated by
jax autodiff to check the gradients of the fast paths.
"""

import numpy as np


def visible_keys(i, lq, lk, *, causal=False, window=None, seg_q=None, seg_k=None):
    """Boolean (lk,) mask (or (b, lk) with segments) of the keys query i sees.

    Query i sits at key position p = lk - lq + i (ends aligned).
    """
    p = lk - lq + i
    vis = np.ones(lk, dtype=bool)
    for j in range(lk):
        if causal and j > p:
            vis[j] = False
        if window is not None:
            if isinstance(window, int):
                inside = (p - window < j <= p) if causal else (abs(p - j) < window)
            else:
                left, right = window
                inside = p - left <= j <= p + right
            if not inside:
                vis[j] = False
    if seg_q is not None:
        seg_q, seg_k = np.asarray(seg_q), np.asarray(seg_k)
        vis = vis[None, :] & (seg_k == seg_q[:, i : i + 1])
    return vis


def attention_ref(q, k, v, *, causal=False, segment_ids=None, window=None, bias=None,
                  scale=None, xp=np):
    """out[b, i, h] = Σ_j softmax_j(scale q_i·k_j + bias_ij) v_j over visible j.

    Args:
      q: (b, lq, h, dk); k: (b, lk, hk, dk); v: (b, lk, hk, dv).
      causal, segment_ids, window, bias, scale: as in seqjax.ops.attention.
      xp: numpy or jax.numpy.

    Returns:
      (b, lq, h, dv); 0 for a query with no visible key.
    """
    b, lq, h, dk = q.shape
    lk, hk = k.shape[1], k.shape[2]
    g = h // hk
    if scale is None:
        scale = dk ** -0.5
    seg_q = seg_k = None
    if segment_ids is not None:
        if isinstance(segment_ids, tuple):
            seg_q, seg_k = segment_ids
        else:
            seg_q = seg_k = segment_ids
    # Query head hi uses kv head hi // g.
    k_h = xp.stack([k[:, :, hi // g] for hi in range(h)], axis=1)  # (b, h, lk, dk)
    v_h = xp.stack([v[:, :, hi // g] for hi in range(h)], axis=1)  # (b, h, lk, dv)
    if bias is not None:
        bias = xp.broadcast_to(bias, (b, h, lq, lk))
    rows = []
    for i in range(lq):
        vis = visible_keys(i, lq, lk, causal=causal, window=window, seg_q=seg_q, seg_k=seg_k)
        vis = np.broadcast_to(vis, (b, lk))[:, None, :]  # (b, 1, lk)
        scores = xp.sum(q[:, i][:, :, None, :] * k_h, axis=-1) * scale  # (b, h, lk)
        if bias is not None:
            scores = scores + bias[:, :, i, :]
        any_vis = np.any(vis, axis=-1, keepdims=True)  # (b, 1, 1)
        masked = xp.where(vis, scores, -np.inf)
        m = xp.max(masked, axis=-1, keepdims=True)
        m = xp.where(any_vis, m, 0.0)
        # exp of -inf at hidden keys: weight 0 with a zero (not NaN) derivative.
        e = xp.exp(xp.where(vis, scores - m, -np.inf))
        den = xp.sum(e, axis=-1, keepdims=True)
        w = e / xp.where(any_vis, den, 1.0)
        rows.append(xp.sum(w[..., None] * v_h, axis=2))  # (b, h, dv)
    return xp.stack(rows, axis=1)
