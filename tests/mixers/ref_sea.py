"""Float64 reference of SEA (Lee et al., ICLR 2024), written from the equations of ``seqjax/mixers/sea.py``.

Nothing here comes from seqjax: the FAVOR+ features, the causal kernel
linear-attention estimate ``C_t`` (a double loop over visible keys, no
recurrence), the sinusoidal position code, the decoder MLP (tanh GELU), the
causal 3×3 CNN over (row, column), the decompression of each row's ``K``
columns to key positions (``⌈j n/K⌉ .. ⌈(j+1) n/K⌉``), the top ``c(n) =
round(k K / n)`` non-empty columns (a stable sort, ties to the lower column,
``round`` half up with exact fractions), and the softmax over the selected
keys only.

The selection (:func:`selections`) is NumPy float64 and returns Python sets
of key positions plus the smallest gap between a kept and a dropped column's
score (tests require it to be clear of float32 rounding). The output
(:func:`sea_output`) takes the selections as constants and uses only
operations NumPy and ``jax.numpy`` share, so ``jax.grad`` under
``jax.enable_x64`` differentiates it (the selection is piecewise constant).
"""

import math
from fractions import Fraction

import numpy as np

from tests.mixers.ref_attention_mixers import segment_starts_of


def params(variables):
    """Float64 NumPy copies: ``{name: kernel}`` for q/k/v/out, the decoder's kernels and biases, ``cnn``, ``omega``."""
    import flax.linen as nn

    p = nn.meta.unbox(variables["params"])
    out = {n: np.asarray(p[n]["kernel"], np.float64) for n in ("q_proj", "k_proj", "v_proj", "out_proj")}
    for n in ("enc", "dec"):
        out[n + "_w"] = np.asarray(p[n]["kernel"], np.float64)
        out[n + "_b"] = np.asarray(p[n]["bias"], np.float64)
    out["cnn"] = np.asarray(p["cnn"], np.float64)
    out["omega"] = np.asarray(nn.meta.unbox(variables["constants"])["omega"], np.float64)
    return out


def heads(p, x, num_heads, xp=np):
    """``q, k, v`` as ``(b, l, h, dh)`` arrays."""
    b, length, _ = x.shape
    dh = p["q_proj"].shape[1] // num_heads
    return tuple((x @ p[n]).reshape(b, length, num_heads, dh) for n in ("q_proj", "k_proj", "v_proj"))


def favor(x, omega, stabilise):
    """``exp(ωx − |x|²/2 [− max]) / √m`` of ``x (..., dh)``."""
    logits = x @ omega.T - 0.5 * np.sum(x * x, axis=-1, keepdims=True)
    if stabilise:
        logits = logits - logits.max(axis=-1, keepdims=True)
    return np.exp(logits) / math.sqrt(omega.shape[0])


def position_code(p, width):
    """``e(p)_j = sin(p ω)`` (j even), ``cos(p ω)`` (j odd), ``ω = 10000^{−2⌊j/2⌋/K}``."""
    out = np.zeros(width)
    for j in range(width):
        omega = 10000.0 ** (-(2 * (j // 2)) / width)
        out[j] = math.sin(p * omega) if j % 2 == 0 else math.cos(p * omega)
    return out


def gelu(u):
    """GELU, tanh form (``jax.nn.gelu``'s default)."""
    return 0.5 * u * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u**3)))


def estimate(p, x, *, num_heads, compressed_width, eps=1e-6, segment_ids=None):
    """The compressed estimate ``Ĉ`` ``(b, l, h, K)`` and the positions in segment, float64."""
    x = np.asarray(x, np.float64)
    b, length, _ = x.shape
    K = compressed_width
    q, k, v = heads(p, x, num_heads)
    dh = q.shape[-1]
    starts = segment_starts_of(segment_ids, b, length)
    fq = favor(q * dh**-0.25, p["omega"], True)
    fk = favor(k * dh**-0.25, p["omega"], False)
    S = np.zeros((b, length, num_heads, K))
    for bi in range(b):
        for t in range(length):
            lo = starts[bi][t]
            for hh in range(num_heads):
                num, den = np.zeros(K + dh), 0.0
                for s in range(lo, t + 1):
                    w = fq[bi, t, hh] @ fk[bi, s, hh]
                    num += w * np.concatenate([position_code(s - lo, K), v[bi, s, hh]])
                    den += w
                c = num / (den + eps)
                hidden = gelu(np.concatenate([c, v[bi, t, hh]]) @ p["enc_w"] + p["enc_b"])
                S[bi, t, hh] = hidden @ p["dec_w"] + p["dec_b"]
    C = S.copy()
    W = p["cnn"]  # (rows back a, column offset c + 1, h_in, h_out)
    for bi in range(b):
        for t in range(length):
            for a in range(W.shape[0]):
                if t - a < starts[bi][t]:
                    continue
                for ho in range(num_heads):
                    for j in range(K):
                        for c in (-1, 0, 1):
                            if 0 <= j + c < K:
                                C[bi, t, ho, j] += W[a, c + 1, :, ho] @ S[bi, t - a, :, j + c]
    pos = [[t - starts[bi][t] for t in range(length)] for bi in range(b)]
    return C, pos, starts


def column_count(n, top_k, width):
    """``clip(round(k K / n), 1, K)``, round half up (exact)."""
    return min(max(math.floor(Fraction(top_k * width, n) + Fraction(1, 2)), 1), width)


def selections(C, pos, starts, top_k):
    """``sel[b][t][h]``: the sorted key positions of the kept columns; and the smallest score gap.

    The gap is ``min`` over rows of (lowest kept score − highest dropped
    non-empty score); ``inf`` when a row keeps every non-empty column.
    """
    b, length, h, K = C.shape
    sel, gap = [], math.inf
    for bi in range(b):
        rows = []
        for t in range(length):
            n, lo = pos[bi][t] + 1, starts[bi][t]
            bounds = [(-(-j * n // K), -(-(j + 1) * n // K)) for j in range(K)]
            nonempty = [j for j in range(K) if bounds[j][1] > bounds[j][0]]
            c = column_count(n, top_k, K)
            per_head = []
            for hh in range(h):
                order = sorted(nonempty, key=lambda j: (-C[bi, t, hh, j], j))
                kept, dropped = order[:c], order[c:]
                if dropped:
                    gap = min(gap, C[bi, t, hh, kept[-1]] - C[bi, t, hh, dropped[0]])
                per_head.append(sorted(lo + s for j in kept for s in range(*bounds[j])))
            rows.append(per_head)
        sel.append(rows)
    return sel, gap


def probabilities(p, x, sel, num_heads):
    """The dense ``(b, h, l, l)`` matrix of the sparse softmax rows (zero off the selection), NumPy."""
    q, k, _ = heads(p, np.asarray(x, np.float64), num_heads)
    b, length, h, dh = q.shape
    M = np.zeros((b, h, length, length))
    for bi in range(b):
        for t in range(length):
            for hh in range(h):
                keys = sel[bi][t][hh]
                s = k[bi, keys, hh] @ q[bi, t, hh] / math.sqrt(dh)
                w = np.exp(s - s.max())
                M[bi, hh, t, keys] = w / w.sum()
    return M


def sea_output(p, x, sel, num_heads, xp=np):
    """``y = W_o concat_h(Σ_{s ∈ sel} softmax(q·k_s/√dh) v_s)``; ``xp = jax.numpy`` for gradients."""
    q, k, v = heads(p, x, num_heads, xp)
    b, length, h, dh = q.shape
    rows = []
    for bi in range(b):
        per_t = []
        for t in range(length):
            per_h = []
            for hh in range(h):
                keys = np.asarray(sel[bi][t][hh])
                s = k[bi, keys, hh] @ q[bi, t, hh] / math.sqrt(dh)
                w = xp.exp(s - xp.max(s))
                per_h.append((w / xp.sum(w)) @ v[bi, keys, hh])
            per_t.append(xp.concatenate(per_h))
        rows.append(xp.stack(per_t))
    return xp.stack(rows) @ p["out_proj"]


def distillation_loss(p, x, C, starts, num_heads):
    """Mean over rows and heads of ``KL(T ‖ softmax(C))``, float64 loops.

    ``T``: the exact causal softmax row over the visible keys ``lo..t``, summed
    per compressed column (``⌈j n/K⌉ .. ⌈(j+1) n/K⌉`` of the row's keys); the
    estimate's distribution: the softmax of ``C`` over the non-empty columns.
    """
    q, k, _ = heads(p, np.asarray(x, np.float64), num_heads)
    b, length, h, dh = q.shape
    K = C.shape[-1]
    total, rows = 0.0, 0
    for bi in range(b):
        for t in range(length):
            lo = starts[bi][t]
            n = t - lo + 1
            bounds = [(-(-j * n // K), -(-(j + 1) * n // K)) for j in range(K)]
            nonempty = [j for j in range(K) if bounds[j][1] > bounds[j][0]]
            for hh in range(h):
                s = np.array([q[bi, t, hh] @ k[bi, lo + o, hh] for o in range(n)]) / math.sqrt(dh)
                a = np.exp(s - s.max())
                a /= a.sum()
                target = {j: a[bounds[j][0]:bounds[j][1]].sum() for j in nonempty}
                logits = np.array([C[bi, t, hh, j] for j in nonempty])
                log_p = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
                total += sum(target[j] * (math.log(target[j]) - lp) for j, lp in zip(nonempty, log_p) if target[j] > 0)
                rows += 1
    return total / rows
