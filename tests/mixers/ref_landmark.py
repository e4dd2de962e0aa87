"""Float64 reference of landmark attention (Mohtashami & Jaggi 2023), written from the paper's equations.

Query by query, block by block (no masks, no segment ops): the grouped
softmax over the current block's tokens ``s <= t`` and the landmarks of the
earlier blocks, each earlier block's tokens weighted by a softmax inside the
block times its landmark's probability; the landmark keys are
``W_k (e + W_o concat_h(r_j))`` with ``r_j`` the landmark query ``W_q e``
attending over block ``j`` (see ``seqjax/mixers/landmark.py``). The decode
reference applies the paper's retrieval rule: per head, only the ``top_k``
earlier blocks with the highest landmark scores enter the grouped softmax.

``p`` is the flat parameter dict of ``params_of`` (kernels ``(in, out)``,
``landmark (d,)``); ``xp`` is ``np`` or ``jax.numpy`` (for gradients).
"""

import numpy as np

from tests.mixers.harness import runs_of


def _softmax(z, xp, axis=0):
    z = z - xp.max(z, axis=axis, keepdims=True)
    e = xp.exp(z)
    return e / xp.sum(e, axis=axis, keepdims=True)


def blocks_of(segment_ids, batch, length, block_size):
    """Per row, the blocks as lists of positions: a block restarts at each segment start, ℓ tokens each."""
    runs = runs_of(segment_ids, batch, length)
    out = []
    for b in range(batch):
        row, start = [], 0
        for t in range(1, length + 1):
            if t == length or runs[b, t] != runs[b, start] or t - start == block_size:
                row.append(list(range(start, t)))
                start = t
        out.append(row)
    return out, runs


def _project(p, x_row, num_heads, xp):
    length, d = x_row.shape
    dh = d // num_heads
    q, k, v = (xp.reshape(x_row @ p[n], (length, num_heads, dh)) for n in ("q_proj", "k_proj", "v_proj"))
    return q, k, v, dh


def landmark_key(p, k, v, block, num_heads, xp=np):
    """``W_k (e + W_o concat_h(r))``, ``r = Σ_s softmax_s(q_e·k_s/√dh) v_s`` over the block: ``(h, dh)``."""
    dh = k.shape[-1]
    qe = xp.reshape(p["landmark"] @ p["q_proj"], (num_heads, dh))
    kb, vb = k[np.array(block)], v[np.array(block)]  # (n, h, dh)
    w = _softmax(xp.sum(qe[None] * kb, -1) / np.sqrt(dh), xp)  # (n, h)
    r = xp.sum(w[..., None] * vb, 0)  # (h, dh)
    rep = p["landmark"] + xp.reshape(r, (-1,)) @ p["out_proj"]
    return xp.reshape(rep @ p["k_proj"], (num_heads, dh))


def _row_terms(p, x_row, blocks, runs_row, num_heads, xp, top_k=None):
    """For each query t: a list of (positions, weights (n, h)) and the smallest top-k margin seen."""
    q, k, v, dh = _project(p, x_row, num_heads, xp)
    keys = [landmark_key(p, k, v, blk, num_heads, xp) for blk in blocks]
    where = {s: j for j, blk in enumerate(blocks) for s in blk}
    out, gap = [], np.inf
    for t in range(x_row.shape[0]):
        c = where[t]
        cur = [s for s in blocks[c] if s <= t]
        earlier = [j for j in range(c) if runs_row[blocks[j][0]] == runs_row[t]]
        a_cur = xp.sum(q[t][None] * k[np.array(cur)], -1) / np.sqrt(dh)  # (n, h)
        terms = []
        if not earlier:
            terms.append((cur, _softmax(a_cur, xp)))
            out.append(terms)
            continue
        lm = xp.stack([xp.sum(q[t] * keys[j], -1) / np.sqrt(dh) for j in earlier])  # (J, h)
        chosen = np.ones((len(earlier), num_heads), bool)
        if top_k is not None and top_k < len(earlier):
            lm_np = np.asarray(lm)
            order = np.argsort(-lm_np, axis=0)
            chosen[:] = False
            for hd in range(num_heads):
                chosen[order[:top_k, hd], hd] = True
                srt = np.sort(lm_np[:, hd])[::-1]
                gap = min(gap, srt[top_k - 1] - srt[top_k])
        # Main group per head: the current tokens and the chosen landmarks.
        lm_masked = xp.where(chosen, lm, -np.inf)
        main = _softmax(xp.concatenate([a_cur, lm_masked], 0), xp)
        terms.append((cur, main[: len(cur)]))
        for i, j in enumerate(earlier):
            blk = blocks[j]
            a_blk = xp.sum(q[t][None] * k[np.array(blk)], -1) / np.sqrt(dh)
            terms.append((blk, main[len(cur) + i][None] * _softmax(a_blk, xp)))
        out.append(terms)
    return out, v, gap


def reference(p, x, *, num_heads, block_size, segment_ids=None, top_k=None, xp=np):
    """``y (b, l, d)`` of landmark attention; with ``top_k``, the paper's retrieval rule at every query.

    Returns:
      ``y``; with ``top_k`` set, ``(y, gap)``: the smallest score margin at a
      top-k cut (a tie there would make the selection ill-defined).
    """
    batch, length, _ = x.shape
    blocks, runs = blocks_of(segment_ids, batch, length, block_size)
    ys, gap = [], np.inf
    for b in range(batch):
        rows, v, g = _row_terms(p, x[b], blocks[b], runs[b], num_heads, xp, top_k)
        gap = min(gap, g)
        o = xp.stack([sum(xp.sum(w[..., None] * v[np.array(pos)], 0) for pos, w in terms) for terms in rows])
        ys.append(xp.reshape(o, (length, -1)) @ p["out_proj"])
    y = xp.stack(ys)
    return y if top_k is None else (y, gap)


def weights(p, x, *, num_heads, block_size, segment_ids=None):
    """The grouped-softmax weights ``w (b, h, l, l)`` (NumPy)."""
    batch, length, _ = x.shape
    blocks, runs = blocks_of(segment_ids, batch, length, block_size)
    W = np.zeros((batch, num_heads, length, length))
    for b in range(batch):
        rows, _, _ = _row_terms(p, np.asarray(x[b], np.float64), blocks[b], runs[b], num_heads, np)
        for t, terms in enumerate(rows):
            for pos, w in terms:
                W[b, :, t, pos] += w  # (n, h): the advanced indices come first
    return W
