"""Float64 reference of PoNet (Tan et al. 2022), written from the paper's equations.

Per packed sequence ``X`` (rows ``x_t``), with the projections
``q, k, v, o, s, l = x W + b`` (``v = k`` when ``share_kv``):

* GA: ``g = (1/N) Σ_t q_t`` per head, ``g' = Σ_t softmax_t(g·k_t/√p) v_t``;
* SMP: segment ``j`` holds positions ``jK .. jK+K-1`` of the sequence,
  ``s'_t = max_{u in seg(t)} s_u`` per channel;
* LMP: ``l'_t = max_{|u-t| <= w//2, u in the sequence} l_u``;
* fusion: ``y_t = (g' + s'_t) ⊙ o_t + l'_t``, then ``y W_out + b_out``.

Sequence by sequence and window by window with slices: no segment ops, no
padding, nothing from seqjax. Every function takes ``xp`` (``numpy`` or
``jax.numpy``) so the same reference can be differentiated under
``jax.enable_x64``.
"""

import math

import numpy as np

from tests.mixers.harness import runs_of


def params_of(variables, xp=np):
    """Flat float64 dict ``{"in_proj/kernel": ..., "in_proj/bias": ..., "out_proj/...": ...}``."""
    import flax.linen as nn  # only to unbox logical-partitioning metadata

    out = {}
    for layer, leaves in nn.meta.unbox(variables["params"]).items():
        for leaf, value in leaves.items():
            out[f"{layer}/{leaf}"] = xp.asarray(np.asarray(value, np.float64))
    return out


def _sequences(runs_row):
    """``(start, end)`` of each packed sequence of one row."""
    bounds = [0] + [t for t in range(1, len(runs_row)) if runs_row[t] != runs_row[t - 1]] + [len(runs_row)]
    return list(zip(bounds[:-1], bounds[1:]))


def _softmax(a, xp):
    e = xp.exp(a - xp.max(a, axis=0, keepdims=True))
    return e / xp.sum(e, axis=0, keepdims=True)


def sequence_mix(q, k, v, o, s, loc, *, num_heads, segment_length, local_window, xp=np):
    """PoNet's token mixing of one packed sequence (before the output projection).

    Args:
      q, k, v, o, s, loc: ``(n, d)`` projections of the sequence's tokens.
      num_heads: GA heads.
      segment_length: SMP segment length ``K``.
      local_window: LMP window ``w`` (odd).
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``(n, d)``: ``(g' + s') ⊙ o + l'``.
    """
    n, d = q.shape
    hp = d // num_heads
    heads = []
    for h in range(num_heads):
        cols = slice(h * hp, (h + 1) * hp)
        g = xp.mean(q[:, cols], axis=0)  # first stage
        w = _softmax(k[:, cols] @ g / math.sqrt(hp), xp)  # second stage: g attends to the sequence
        heads.append(w @ v[:, cols])
    g2 = xp.concatenate(heads)  # (d,)
    smp = xp.concatenate([xp.broadcast_to(xp.max(s[j:j + segment_length], axis=0), s[j:j + segment_length].shape)
                          for j in range(0, n, segment_length)])
    half = local_window // 2
    lmp = xp.stack([xp.max(loc[max(0, t - half):t + half + 1], axis=0) for t in range(n)])
    return (g2[None] + smp) * o + lmp


def reference(p, x, *, num_heads, segment_length, local_window, share_kv=False, segment_ids=None, xp=np):
    """The whole mixer in float64, ``(b, l, d)``; each packed sequence of ``segment_ids`` on its own."""
    b, length, d = x.shape
    proj = x @ p["in_proj/kernel"] + p["in_proj/bias"]
    if share_kv:
        q, k, o, s, loc = (proj[..., i * d:(i + 1) * d] for i in range(5))
        v = k
    else:
        q, k, v, o, s, loc = (proj[..., i * d:(i + 1) * d] for i in range(6))
    runs = runs_of(segment_ids, b, length)
    rows = []
    for i in range(b):
        rows.append(xp.concatenate([
            sequence_mix(q[i, a:e], k[i, a:e], v[i, a:e], o[i, a:e], s[i, a:e], loc[i, a:e], num_heads=num_heads,
                         segment_length=segment_length, local_window=local_window, xp=xp)
            for a, e in _sequences(runs[i])]))
    return xp.stack(rows) @ p["out_proj/kernel"] + p["out_proj/bias"]
