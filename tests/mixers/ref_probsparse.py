"""Float64 reference of Informer's ProbSparse self-attention (Zhou et al. 2021), from the paper's equations.

The only thing taken from seqjax is :func:`seqjax.mixers.probsparse.sample_keys`
(which keys each query's measurement is computed on), so that both sides
measure on the same random samples; it is called with visible ranges computed
here with plain Python integers. Everything else is written out here: the
scores ``q·k/√dh``, the sparsity measurement ``M̄ = max − mean`` over the
valid samples (eq. 4), the top-``u`` ranking (a stable sort, ties to the lower
position), the softmax rows of the active queries, the (cumulative) means of
the lazy ones, the heads and the output projection.

Selections are NumPy booleans ``active[b, t, h]`` computed from float64
measurements (:func:`measurements`, :func:`top_u`, :func:`above`); the output
(:func:`probsparse_reference`) takes them as constants and uses only
operations NumPy and ``jax.numpy`` share, so ``jax.grad`` under
``jax.enable_x64`` differentiates it (the selection is piecewise constant).
"""

import math

import numpy as np

from tests.mixers.ref_attention_mixers import _softmax_average, rope_ref, segment_starts_of


def count(length, factor):
    """``U = u = min(L, max(1, ⌈c ln L⌉))`` (1 for L = 1)."""
    if length == 1:
        return 1
    return min(length, max(1, math.ceil(factor * math.log(length))))


def ranges(segment_ids, batch, length, causal):
    """``lo[b][t], hi[b][t]``: query t sees keys lo <= j < hi (its segment; j <= t when causal)."""
    starts = segment_starts_of(segment_ids, batch, length)
    lo = np.array(starts)
    hi = np.zeros((batch, length), np.int64)
    for bi in range(batch):
        for t in range(length):
            if causal:
                hi[bi, t] = t + 1
            else:
                hi[bi, t] = max(s for s in range(length) if starts[bi][s] == starts[bi][t]) + 1
    return lo, hi


def _heads(p, x, *, num_heads, head_dim=None, positions="rope", rope_base=10000.0, segment_ids=None, xp=np,
           **unused):
    """Per batch row ``(q, k, v)``, each ``(l, h, dh)``; RoPE at the positions inside the segment."""
    del unused
    b, l, d = x.shape
    h = num_heads
    dh = head_dim or d // h
    starts = segment_starts_of(segment_ids, b, l)
    out = []
    for bi in range(b):
        rel = [t - starts[bi][t] for t in range(l)]
        q, k, v = ((x[bi] @ p[n]).reshape(l, h, dh) for n in ("q_proj", "k_proj", "v_proj"))
        if positions == "rope":
            q, k = rope_ref(q, rel, rope_base, xp), rope_ref(k, rel, rope_base, xp)
        out.append((q, k, v))
    return out


def _sampled(seed, t, lo, hi, n, length):
    from seqjax.mixers.probsparse import sample_keys  # the shared random indices, nothing else

    idx, valid = sample_keys(seed, np.asarray(t), np.asarray(lo), np.asarray(hi), n, length)
    return np.asarray(idx), np.asarray(valid)


def measurements(p, x, *, causal, factor=5.0, sample_seed=0, segment_ids=None, slots=None, **config):
    """``M̄[b, t, h]`` in float64 (NumPy).

    ``slots``: decoding's rule, where the sample count comes from the cache
    length and query ``t`` samples among ``0..t`` (causal, no segments).
    """
    b, l, _ = x.shape
    x = np.asarray(x, np.float64)
    qkv = _heads(p, x, segment_ids=segment_ids, **config)
    lo, hi = ranges(segment_ids, b, l, causal)
    total = l if slots is None else slots
    idx, valid = _sampled(sample_seed, np.arange(l)[None], lo, hi, count(total, factor), total)
    h = qkv[0][0].shape[1]
    dh = qkv[0][0].shape[2]
    M = np.zeros((b, l, h))
    for bi, (q, k, _) in enumerate(qkv):
        for t in range(l):
            keys = [int(j) for j, ok in zip(idx[bi, t], valid[bi, t]) if ok]
            assert keys and all(lo[bi, t] <= j < hi[bi, t] for j in keys), "samples outside the visible range"
            s = np.einsum("nhd,hd->hn", k[keys], q[t]) / math.sqrt(dh)
            M[bi, t] = s.max(axis=1) - s.sum(axis=1) / len(keys)
    return M


def top_u(M, u):
    """``active[b, t, h]``: the ``u`` largest measurements per (row, head); and the smallest gap at the cut."""
    b, l, h = M.shape
    active = np.zeros(M.shape, bool)
    gap = np.inf
    for bi in range(b):
        for hi in range(h):
            order = np.argsort(-M[bi, :, hi], kind="stable")
            active[bi, order[:u], hi] = True
            if u < l:
                gap = min(gap, M[bi, order[u - 1], hi] - M[bi, order[u], hi])
    return active, gap


def above(M, threshold):
    """Decoding's rule: ``active = M̄ >= threshold``."""
    return M >= threshold


def probsparse_reference(p, x, active, *, causal, segment_ids=None, xp=np, **config):
    """The mixer's output ``(b, l, d)`` for the given selection ``active[b, t, h]``."""
    b, l, _ = x.shape
    qkv = _heads(p, x, segment_ids=segment_ids, xp=xp, **config)
    lo, hi = ranges(segment_ids, b, l, causal)
    rows = []
    for bi, (q, k, v) in enumerate(qkv):
        dh = q.shape[2]
        outs = []
        for t in range(l):
            vis = np.arange(lo[bi, t], hi[bi, t])
            scores = xp.einsum("nhd,hd->hn", k[vis], q[t]) / math.sqrt(dh)  # (h, n)
            soft = _softmax_average(scores, xp.transpose(v[vis], (1, 0, 2)), xp)  # (h, dh)
            mean = xp.sum(v[vis], axis=0) / len(vis)  # uniform attention over the visible keys
            outs.append(xp.where(active[bi, t][:, None], soft, mean))
        rows.append(xp.stack(outs).reshape(l, -1) @ p["out_proj"])
    return xp.stack(rows)


def probsparse_matrix(p, x, active, *, causal, segment_ids=None, **config):
    """The ``(b, h, l, l)`` mixing matrix: softmax rows (active) and uniform rows (lazy), NumPy."""
    b, l, _ = x.shape
    qkv = _heads(p, np.asarray(x, np.float64), segment_ids=segment_ids, **config)
    lo, hi = ranges(segment_ids, b, l, causal)
    h = qkv[0][0].shape[1]
    M = np.zeros((b, h, l, l))
    for bi, (q, k, _) in enumerate(qkv):
        for t in range(l):
            vis = np.arange(lo[bi, t], hi[bi, t])
            s = np.einsum("nhd,hd->hn", k[vis], q[t]) / math.sqrt(q.shape[2])
            w = np.exp(s - s.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            M[bi, :, t, vis] = np.where(active[bi, t][:, None], w, 1.0 / len(vis)).T
    return M
