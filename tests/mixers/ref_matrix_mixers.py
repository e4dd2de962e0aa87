"""Float64 references of Hydra's structured matrix mixers, written from the paper's equations.

Hwang, Lahoti, Dao & Gu 2024, "Hydra: Bidirectional State Space Models Through
Generalized Matrix Mixers": each mixer applies, per head, ``y = (M + I) v``
with a structured ``M`` whose parameters are projections of the input
(sequence-aligned), inside the Hydra block (input projection, centered
depthwise conv, gated RMSNorm, output projection). The matrices are built
entry by entry from their closed forms (Toeplitz pair by pair, by lag;
Vandermonde, Cauchy and low-rank by broadcasting the defining formula); no FFT,
no scan, nothing from seqjax.

Every function takes ``xp`` (``numpy`` or ``jax.numpy``) so that the same
reference can be differentiated under ``jax.enable_x64``. Segment masks and
positions are NumPy constants from the integer ``segment_ids``.
"""

import math

import numpy as np

from tests.mixers.harness import runs_of
from tests.mixers.ref_mamba import conv_reference

RMS_EPS = 1e-5
CAUCHY_TOL = 1e-8


def _silu(v, xp):
    return v / (1.0 + xp.exp(-v))


def _positions(runs):
    """Offset of each position from its segment's start, NumPy ``(b, l)``."""
    b, length = runs.shape
    pos = np.zeros((b, length), np.int64)
    for i in range(b):
        for t in range(1, length):
            pos[i, t] = pos[i, t - 1] + 1 if runs[i, t] == runs[i, t - 1] else 0
    return pos


def scale(name, qk_dim, max_length):
    """The output scale σ of each mixer (the public Hydra code's constants)."""
    return {
        "toeplitz": 0.5 / math.sqrt(max_length),
        "vandermonde": 1.0 / math.sqrt(2 * max_length * qk_dim),
        "cauchy": 1.0 / math.sqrt(max_length * qk_dim),
        "low_rank": 1.0 / math.sqrt(max_length * qk_dim),
    }[name]


def branches(name, p, x, heads, segment_ids=None, xp=np):
    """``(z, v, a, c)`` of the block: gate, values ``(b, l, h, p)`` and the two parameter halves ``(b, l, h, ·)``."""
    b, length, _ = x.shape
    d_in = p["norm"].shape[0]
    runs = runs_of(segment_ids, b, length)
    proj = x @ p["in_proj"]
    z, vp = proj[..., :d_in], proj[..., d_in:]
    vp = conv_reference(vp, p["conv_weight"], p["conv_bias"], runs, False, xp)
    v = _silu(vp[..., :d_in], xp).reshape(b, length, heads, -1)
    prm = vp[..., d_in:]
    if name in ("toeplitz", "low_rank"):
        prm = _silu(prm, xp)
    prm = prm.reshape(b, length, heads, -1)
    half = prm.shape[-1] // 2
    return z, v, prm[..., :half], prm[..., half:]


def matrix(name, p, a, c, *, qk_dim, max_length, freq_scale=1e-3, segment_ids=None, xp=np):
    """``M + I`` per head, ``(b, h, t, s)``, zero across segments.

    Toeplitz: ``σ a_{start+t-s}`` (t ≥ s), ``σ c_{start+s-t}`` (s > t), the
    kernels read by lag from the segment's first position. Vandermonde:
    ``σ Σ_n cos(2πε a_tn s') − cos(2πε c_sn t')`` with ``t', s'`` positions in
    the segment, ``ε = freq_scale``. Cauchy: ``σ Σ_n 1/(q̃_tn − k̃_sn + tol)``, ``q̃ = e^a + β``,
    ``k̃ = −e^c − β``. Low-rank: ``σ a_t · c_s``.
    """
    b, length, h = a.shape[:3]
    runs = runs_of(segment_ids, b, length)
    same = (runs[:, :, None] == runs[:, None, :]).astype(np.float64)[:, None]  # (b, 1, t, s)
    pos = _positions(runs)
    sig = scale(name, qk_dim, max_length)
    if name == "toeplitz":
        rows = []
        for i in range(b):
            per_t = []
            for t in range(length):
                start = t - pos[i, t]
                per_s = []
                for s in range(length):
                    if runs[i, s] != runs[i, t]:
                        per_s.append(xp.zeros(h))
                    elif t >= s:
                        per_s.append(sig * a[i, start + t - s, :, 0])
                    else:
                        per_s.append(sig * c[i, start + s - t, :, 0])
                per_t.append(xp.stack(per_s, axis=-1))  # (h, s)
            rows.append(xp.stack(per_t, axis=1))  # (h, t, s)
        m = xp.stack(rows)
    elif name == "vandermonde":
        w = 2 * math.pi * freq_scale
        pt = pos.astype(np.float64)
        aq = xp.transpose(a, (0, 2, 1, 3))[:, :, :, None, :]  # (b, h, t, 1, n)
        ck = xp.transpose(c, (0, 2, 1, 3))[:, :, None, :, :]  # (b, h, 1, s, n)
        s_pos = pt[:, None, None, :, None]
        t_pos = pt[:, None, :, None, None]
        m = sig * xp.sum(xp.cos(w * aq * s_pos) - xp.cos(w * ck * t_pos), axis=-1) * same
    elif name == "cauchy":
        beta = p["cauchy_bias"]
        q = xp.transpose(xp.exp(a) + beta, (0, 2, 1, 3))[:, :, :, None, :]
        k = xp.transpose(-(xp.exp(c) + beta), (0, 2, 1, 3))[:, :, None, :, :]
        m = sig * xp.sum(1.0 / (q - k + CAUCHY_TOL), axis=-1) * same
    else:  # low_rank
        m = sig * xp.einsum("bthn,bshn->bhts", a, c) * same
    return m + np.eye(length)


def block_reference(name, p, x, *, headdim, qk_dim, max_length, freq_scale=1e-3, segment_ids=None, xp=np):
    """The whole block in float64: ``out_proj(rms((M + I) v) ⊙ w ⊙ silu(z))``.

    Returns:
      ``(y, M)``: ``(b, l, d)`` and the ``(b, h, l, l)`` matrix (identity included).
    """
    b, length, _ = x.shape
    heads = p["norm"].shape[0] // headdim
    z, v, a, c = branches(name, p, x, heads, segment_ids, xp)
    m = matrix(name, p, a, c, qk_dim=qk_dim, max_length=max_length, freq_scale=freq_scale,
               segment_ids=segment_ids, xp=xp)
    y = xp.einsum("bhts,bshp->bthp", m, v).reshape(b, length, -1)
    y = y / xp.sqrt(xp.mean(y * y, axis=-1, keepdims=True) + RMS_EPS) * p["norm"] * _silu(z, xp)
    return y @ p["out_proj"], m
