"""Float64 references of the relative-position attention mixers (relative_mha, urpe), from the papers' equations.

Nothing here calls seqjax, and nothing skews: every relative term is the
direct lookup of the table at the clipped distance ``t - s``, query by query
(a Python loop decides which keys a query sees), with the softmax written out.

* Music Transformer (Huang et al. 2018, Eq. 3 with Shaw et al.'s clipping)::

      o_t = Σ_s softmax_s((q_t·k_s + q_t·E_{min(t - s, k)}) / √dh) v_s    over s <= t in t's segment

* URPE (Luo et al. 2022, Eq. 5 and the authors' code: ``attn = softmax(·) * C``)::

      o_t = Σ_s softmax_s(q_t·k_s / √dh + b_{r(t - s)}) c_{r(t - s)} v_s

  ``r(δ) = min(δ, k)`` causal, ``clip(δ, -k, k) + k`` bidirectional (the row of a
  ``2k + 1`` table).

Every ``*_reference`` takes ``xp`` (``numpy`` or ``jax.numpy``) and uses only
operations both support, so ``jax.grad`` differentiates the same code under
``jax.enable_x64``. ``p`` is ``params_of(variables)`` of
``tests/mixers/ref_attention_mixers.py`` (kernels by module name, tables as they are).
"""

import math

import numpy as np

from tests.mixers.ref_attention_mixers import segment_starts_of


def _row(delta, k, causal):
    """Table row of distance ``delta = t - s`` (Python ints)."""
    return min(delta, k) if causal else max(-k, min(delta, k)) + k


def _visible(starts, t, length, causal):
    return np.array([s for s in range(length) if starts[s] == starts[t] and not (causal and s > t)])


def _heads(p, xb, h, dh, xp):
    l = xb.shape[0]
    return [(xb @ p[n]).reshape(l, h, dh) for n in ("q_proj", "k_proj", "v_proj")]


def _softmax(scores, xp):
    w = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
    return w / xp.sum(w, axis=-1, keepdims=True)


def _rows(p, x, kind, *, num_heads, max_relative, causal=True, segment_ids=None, xp=np):
    """Per batch row: values ``(l, h, dh)`` and per query ``(visible s, weights (h, n))``: the row of M."""
    b, l, d = x.shape
    h = num_heads
    dh = d // h
    starts = segment_starts_of(segment_ids, b, l)
    out = []
    for bi in range(b):
        q, k, v = _heads(p, x[bi], h, dh, xp)
        rows = []
        for t in range(l):
            vis = _visible(starts[bi], t, l, causal)
            idx = np.array([_row(t - s, max_relative, causal) for s in vis])
            qk = xp.einsum("nhd,hd->hn", k[vis], q[t])  # (h, n)
            if kind == "relative_mha":
                table = p["rel_embedding"]
                table = table if table.shape[0] == h else xp.concatenate([table] * h, axis=0)
                rel = xp.einsum("hnd,hd->hn", table[:, idx], q[t])  # q_t · E_{min(t-s, k)}, gathered directly
                weights = _softmax((qk + rel) / math.sqrt(dh), xp)
            else:
                weights = _softmax(qk / math.sqrt(dh) + p["rel_bias"][:, idx], xp) * p["rel_weight"][:, idx]
            rows.append((vis, weights))
        out.append((v, rows))
    return out


def reference(p, x, kind, *, segment_ids=None, xp=np, **config):
    """The whole mixer ``kind`` ("relative_mha" or "urpe"): ``y = W_o concat_h(Σ_s M_ts v_s)``.

    Args:
      p: ``params_of(variables)``.
      x: ``(b, l, d)`` float64.
      kind: "relative_mha" or "urpe".
      segment_ids: optional ``(b, l)`` ids (a change of id starts a sequence).
      xp: numpy or jax.numpy.
      **config: num_heads, max_relative, causal (urpe).

    Returns:
      ``(b, l, d)``.
    """
    outs = []
    for v, rows in _rows(p, x, kind, segment_ids=segment_ids, xp=xp, **config):
        heads = [xp.einsum("hn,nhd->hd", w, v[vis]) for vis, w in rows]
        outs.append(xp.stack([o.reshape(-1) for o in heads]) @ p["out_proj"])
    return xp.stack(outs)


def matrix(p, x, kind, *, segment_ids=None, **config):
    """The closed-form mixing matrix ``(b, h, l, l)``: softmax weights (relative_mha), ``A ∘ C`` (urpe). NumPy."""
    b, l, _ = x.shape
    M = np.zeros((b, config["num_heads"], l, l))
    for bi, (_, rows) in enumerate(_rows(p, x, kind, segment_ids=segment_ids, **config)):
        for t, (vis, w) in enumerate(rows):
            M[bi, :, t, vis] = np.asarray(w).T
    return M


def relative_logits_direct(q, table, max_relative):
    """``S[b, h, i, j] = q_i · E_{min(i - j, k)}`` for ``j <= i`` and 0 above, by direct lookup (NumPy float64).

    Args:
      q: ``(b, L, h, dh)``.
      table: ``(h or 1, k + 1, dh)``.
      max_relative: ``k``.
    """
    q = np.asarray(q, np.float64)
    table = np.asarray(table, np.float64)
    b, L, h, _ = q.shape
    table = np.broadcast_to(table, (h,) + table.shape[1:])
    S = np.zeros((b, h, L, L))
    for i in range(L):
        for j in range(i + 1):
            S[:, :, i, j] = np.einsum("bhd,hd->bh", q[:, i], table[:, min(i - j, max_relative)])
    return S
