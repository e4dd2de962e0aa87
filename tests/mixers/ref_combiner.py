"""Float64 NumPy reference of Combiner (Ren et al. 2021, eqs. 6-7), built from the region sets.

For each query ``i`` the reference lists the parts of its visible set
explicitly (Python sets, no shared code with ``seqjax.mixers.combiner``):
``Ω⁰_i`` and the regions ``Ω^r_i`` of the layout, then builds the full
``L × L`` probabilities::

    p(j|i) = exp(q_i·k_j/√d) / Z_i                                  j ∈ Ω⁰_i
    p(j|i) = exp(q_i·k_R/√d) / Z_i · softmax_{j∈R}(q_R·k_j/√d)      j ∈ R = Ω^r_i
    k_R, q_R = elementwise max of k_j, q_j over R

Layouts (positions ``p`` inside the segment, ``s`` the region size):
fixed: spans ``p // s``; axial: rows ``p // s``, columns ``p % s``, ``Ω⁰`` =
own row ∪ own column, each other column split into the part above and the
part below the query's row; logsparse: leaves ``p // s``, ``Ω⁰`` = own
leaf, for each level ``k`` the sibling subtree ``{leaf : leaf >> k ==
(own >> k) ^ 1}``.
"""

import numpy as np


def _visible(i, j, seg, causal):
    return seg[i] == seg[j] and (j <= i or not causal)


def parts(i, seg, pos, variant, s, causal):
    """``(direct, regions)``: the key positions of ``Ω⁰_i`` and a list of region position lists."""
    n = len(seg)
    vis = [j for j in range(n) if _visible(i, j, seg, causal)]
    pi = pos[i]
    if variant == "fixed":
        direct = [j for j in vis if pos[j] // s == pi // s]
        spans = sorted({pos[j] // s for j in vis} - {pi // s})
        regions = [[j for j in vis if pos[j] // s == r] for r in spans]
    elif variant == "axial":
        row, col = pi // s, pi % s
        direct = [j for j in vis if pos[j] // s == row or pos[j] % s == col]
        regions = []
        for c in range(s):
            if c == col:
                continue
            for above in (True, False):
                members = [j for j in vis if pos[j] % s == c and ((pos[j] // s < row) if above else (pos[j] // s > row))]
                if members:
                    regions.append(members)
    elif variant == "logsparse":
        leaf = pi // s
        direct = [j for j in vis if pos[j] // s == leaf]
        regions = []
        for k in range(n.bit_length() + 1):  # leaves are < n: higher levels have no sibling
            sib = (leaf >> k) ^ 1
            members = [j for j in vis if (pos[j] // s) >> k == sib]
            if members:
                regions.append(members)
    else:
        raise ValueError(variant)
    return direct, regions


def positions(seg):
    """Position of each entry inside its run of equal ids."""
    pos = np.zeros(len(seg), np.int64)
    for t in range(1, len(seg)):
        pos[t] = pos[t - 1] + 1 if seg[t] == seg[t - 1] else 0
    return pos


def combiner_probs(q, k, variant, s, causal, seg=None):
    """``(L, L)`` float64 probabilities ``p(j|i)`` for one head: ``q, k (L, d)``.

    ``seg``: run ids per position (a change starts a segment) or None.
    """
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    n, d = q.shape
    seg = np.zeros(n, np.int64) if seg is None else np.cumsum(np.r_[0, np.asarray(seg)[1:] != np.asarray(seg)[:-1]])
    pos = positions(seg)
    scale = 1.0 / np.sqrt(d)
    P = np.zeros((n, n))
    for i in range(n):
        direct, regions = parts(i, seg, pos, variant, s, causal)
        covered = sorted(direct + [j for r in regions for j in r])
        assert covered == [j for j in range(n) if _visible(i, j, seg, causal)], "parts must cover Ω_i once"
        logits = [q[i] @ k[j] * scale for j in direct]
        abstr = []
        for R in regions:
            qR, kR = q[R].max(axis=0), k[R].max(axis=0)
            a = k[R] @ qR * scale
            w = np.exp(a - a.max())
            abstr.append((R, w / w.sum()))
            logits.append(q[i] @ kR * scale)
        logits = np.array(logits)
        e = np.exp(logits - logits.max())
        e /= e.sum()
        for t, j in enumerate(direct):
            P[i, j] += e[t]
        for r, (R, w) in enumerate(abstr):
            P[i, R] += e[len(direct) + r] * w
    return P


def combiner_ref(q, k, v, variant, s, causal, seg=None):
    """``(b, l, h, d)`` outputs ``Σ_j p(j|i) v_j`` per batch row and head (float64).

    ``seg``: ``(b, l)`` ids or None.
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, n, h, _ = q.shape
    out = np.zeros_like(v)
    for bi in range(b):
        for hi in range(h):
            P = combiner_probs(q[bi, :, hi], k[bi, :, hi], variant, s, causal, None if seg is None else seg[bi])
            out[bi, :, hi] = P @ v[bi, :, hi]
    return out
