"""Float64 reference of JRT-RNN's prefix linear attention (Arora et al. 2024), from the paper's equations.

Per head, with the Based kernel written in closed form (not through the
feature vectors the mixer builds), ``κ(q, k) = 1 + q·k/√d' + (q·k)²/(2d')``
(``= φ(q)·φ(k)``, the 2nd-order Taylor expansion of ``exp(q·k/√d')``)::

    num_t = Σ_{s<M} κ(q_t, k^e_s) v^e_s + Σ_{s<=t} κ(q_t, k^d_s) v^d_s
    den_t = Σ_{s<M} κ(q_t, k^e_s)       + Σ_{s<=t} κ(q_t, k^d_s)
    y_t = num_t / (den_t + eps),   out = concat_h(y) W_O

with both sums inside ``t``'s segment and ``s < M`` meaning "among the first
``M`` positions of the segment" (``M`` per row). :func:`jrt_matrices` gives
the two mixing matrices ``M^d[t, s] = κ(q_t, k^d_s)/(den_t + eps)`` (causal)
and ``M^e[t, s] = κ(q_t, k^e_s)/(den_t + eps)`` (prefix columns, all rows),
pair by pair from the same closed form. The functions take an ``xp`` module
(``numpy`` or ``jax.numpy``; no in-place assignment) so that the gradient
test can differentiate them under ``jax.enable_x64``. Nothing here calls seqjax.
"""

import numpy as np

from tests.mixers.harness import runs_of


def positions_of(segment_ids, batch, length):
    """Offset of each position from its segment's start, NumPy (``t`` without segments)."""
    runs = runs_of(segment_ids, batch, length)
    pos = np.zeros((batch, length), np.int64)
    for b in range(batch):
        for t in range(1, length):
            pos[b, t] = pos[b, t - 1] + 1 if runs[b, t] == runs[b, t - 1] else 0
    return pos


def masks(batch, length, prefix, segment_ids=None):
    """``(decoder, encoder)`` ``(b, t, s)`` 0/1 float64 masks of the two sums.

    Args:
      batch, length: the input's shape.
      prefix: ``M``, an int or ``(b,)`` ints.
      segment_ids: ``(b, l)`` ids or None.
    """
    runs = runs_of(segment_ids, batch, length)
    same = runs[:, :, None] == runs[:, None, :]
    causal = np.tril(np.ones((length, length), bool))[None]
    m = np.broadcast_to(np.asarray(prefix), (batch,))
    in_prefix = positions_of(segment_ids, batch, length) < m[:, None]  # (b, s)
    return (same & causal).astype(np.float64), (same & in_prefix[:, None, :]).astype(np.float64)


def _kernel(q, k, feature_dim, xp):
    """``κ(q_t, k_s)`` ``(b, h, t, s)`` of ``(b, l, h, d')`` queries and keys."""
    a = xp.einsum("bthf,bshf->bhts", q, k)
    return 1.0 + a / np.sqrt(feature_dim) + a * a / (2.0 * feature_dim)


def _project(p, x, num_heads, feature_dim):
    def heads(name, width):
        y = x @ p[f"{name}.kernel"]
        return y.reshape(y.shape[:-1] + (num_heads, width))

    dv = p["v_proj.kernel"].shape[1] // num_heads
    return (heads("q_proj", feature_dim), heads("k_proj", feature_dim), heads("k_enc_proj", feature_dim),
            heads("v_proj", dv), heads("v_enc_proj", dv))


def jrt_matrices(p, x, num_heads, feature_dim, prefix, eps, segment_ids=None, xp=np):
    """The decoder and encoder mixing matrices ``(M^d, M^e)``, each ``(b, h, l, l)``, float64.

    Args:
      p: flat float64 parameters (``tests.mixers.ref_linear_mixers.params_of``).
      x: ``(b, l, d)`` input.
      num_heads, feature_dim, prefix, eps: the mixer's fields (``prefix`` an int or ``(b,)``).
      segment_ids: ``(b, l)`` ids or None.
      xp: ``numpy`` or ``jax.numpy``.
    """
    batch, length = x.shape[:2]
    q, kd, ke, _, _ = _project(p, x, num_heads, feature_dim)
    dec_mask, enc_mask = masks(batch, length, prefix, segment_ids)
    kd_ts = _kernel(q, kd, feature_dim, xp) * dec_mask[:, None]
    ke_ts = _kernel(q, ke, feature_dim, xp) * enc_mask[:, None]
    den = kd_ts.sum(-1, keepdims=True) + ke_ts.sum(-1, keepdims=True) + eps
    return kd_ts / den, ke_ts / den


def jrt_reference(p, x, num_heads, feature_dim, prefix, eps, segment_ids=None, xp=np):
    """The whole mixer: the two sums, the normalisation and the output projection, ``(b, l, d)``.

    Args: as :func:`jrt_matrices`.
    """
    _, _, _, vd, ve = _project(p, x, num_heads, feature_dim)
    md, me = jrt_matrices(p, x, num_heads, feature_dim, prefix, eps, segment_ids, xp)
    y = xp.einsum("bhts,bshv->bthv", md, vd) + xp.einsum("bhts,bshv->bthv", me, ve)
    return y.reshape(y.shape[:2] + (-1,)) @ p["out_proj.kernel"]


def taylor_features(x):
    """Based's ``φ(x) = [1, x/d'^(1/4), vec(x⊗x)/(√2·√d')]`` by explicit loops, NumPy float64."""
    d = x.shape[-1]
    flat = np.asarray(x, np.float64).reshape(-1, d)
    out = []
    for row in flat:
        second = [row[i] * row[j] / (np.sqrt(2.0) * np.sqrt(d)) for i in range(d) for j in range(d)]
        out.append([1.0] + list(row / d**0.25) + second)
    return np.asarray(out).reshape(x.shape[:-1] + (1 + d + d * d,))
