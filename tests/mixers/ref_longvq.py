"""Float64 reference of LongVQ (Liu et al. 2024), from the paper's equations, quadratic and plain.

:func:`longvq_reference` rebuilds the mixer from its parameters (the flat dict
of :func:`tests.mixers.ref_linear_mixers.params_of`) and its codebook, with a
loop over tokens for the EMA and the *dense* attention over quantised keys
(no per-code memory: every earlier key of the segment is scored on its own)::

    h_t   = (1 − σ(α)σ(δ)) ⊙ h_{t−1} + σ(α) ⊙ β · x_t        (zero before a segment start)
    x'_t  = silu(Σ_n η ⊙ h_t + ω ⊙ x_t)
    [u, z, r, g] = x'_t W + b;  φ = σ(u), Z = silu(z), γ = silu(r);  v = silu(x W_v + b_v)
    q = κ_q Z + μ_q,  k = κ_k Z + μ_k,  c_t = argmin_s ‖k_t − C_s‖²,  k̂_t = k_t + sg(C_{c_t} − k_t)
    A[t, j] ∝ exp(q_t·k̂_j/√z + b_{t−j}·[t − j < w])   over j ≤ t in t's segment (rows sum to 1)
    o = A v;   y = φ ⊙ silu(g + (γ ⊙ o) U + b_U) + (1 − φ) ⊙ x

``sg`` is the identity in NumPy; pass ``jax.lax.stop_gradient`` with
``xp = jax.numpy`` (float64) for the straight-through gradients, which treat
the quantisation as the identity. :func:`longvq_matrix` is ``A``;
:func:`commitment_reference` and :func:`ema_reference` the codebook's loss and
update. Nothing here calls seqjax.
"""

import numpy as np

from tests.mixers.harness import runs_of


def _silu(xp, a):
    return a / (1.0 + xp.exp(-a))


def _sigmoid(xp, a):
    return 1.0 / (1.0 + xp.exp(-a))


def _identity(a):
    return a


def codebook_of(variables):
    """``C = codebook_sum / codebook_count`` in float64."""
    col = variables["longvq"]
    return np.asarray(col["codebook_sum"], np.float64) / np.asarray(col["codebook_count"], np.float64)[:, None]


def branches(p, x, codebook, z, segment_ids=None, xp=np, sg=_identity):
    """``(q, k, k_hat, codes, v, (φ, γ, g), runs)`` of the layer for ``x (b, l, d)``."""
    b, length, d = x.shape
    e = p["v_proj.kernel"].shape[1]
    runs = runs_of(segment_ids, b, length)
    codebook = xp.asarray(codebook)
    alpha, delta = _sigmoid(xp, p["ema_alpha"]), _sigmoid(xp, p["ema_delta"])
    decay, gain = 1.0 - alpha * delta, alpha * p["ema_beta"]  # (d, n)
    h = xp.zeros((b, d, p["ema_alpha"].shape[1]))
    xs = []
    for t in range(length):
        if t:
            keep = xp.asarray((runs[:, t] == runs[:, t - 1]).astype(np.float64))[:, None, None]
            h = h * keep
        h = decay * h + gain * x[:, t, :, None]
        xs.append(_silu(xp, xp.sum(p["ema_eta"] * h, axis=-1) + p["ema_omega"] * x[:, t]))
    xprime = xp.stack(xs, axis=1)
    proj = xprime @ p["mx_proj.kernel"] + p["mx_proj.bias"]
    u, zz, r, g = proj[..., :d], proj[..., d:d + z], proj[..., d + z:d + z + e], proj[..., d + z + e:]
    zz = _silu(xp, zz)
    q = zz * p["qk_gamma"][0] + p["qk_beta"][0]
    k = zz * p["qk_gamma"][1] + p["qk_beta"][1]
    dist = xp.sum((k[..., None, :] - codebook) ** 2, axis=-1)  # (b, l, S)
    codes = xp.argmin(dist, axis=-1)
    chosen = codebook[codes]
    k_hat = k + sg(chosen - k)
    v = _silu(xp, x @ p["v_proj.kernel"] + p["v_proj.bias"])
    return q, k, k_hat, codes, v, (_sigmoid(xp, u), _silu(xp, r), g), runs


def attention_matrix(q, k_hat, rel_bias, runs, window, xp=np, sg=_identity):
    """``A (b, l, l)``: causal softmax of ``q·k̂/√z`` plus the bias inside the window, per segment."""
    b, length, z = q.shape
    t, j = np.arange(length)[:, None], np.arange(length)[None, :]
    delta = t - j
    bias_idx = np.where((delta >= 0) & (delta < window))
    scores = xp.einsum("btz,bjz->btj", q, k_hat) / np.sqrt(z)
    onehot = np.zeros((length, length, window))
    onehot[bias_idx[0], bias_idx[1], delta[bias_idx]] = 1.0
    scores = scores + xp.asarray(onehot) @ rel_bias
    mask = (delta >= 0)[None] & (runs[:, :, None] == runs[:, None, :])
    scores = xp.where(xp.asarray(mask), scores, -np.inf)
    # The shift cancels; its gradient is not taken (sg under JAX): autodiff of
    # max divides by the count of entries equal to it, which was 0 (NaN) when
    # XLA:CPU at LLVM -O0 recomputed the scores with different rounding.
    scores = scores - sg(xp.max(scores, axis=-1, keepdims=True))
    w = xp.exp(scores)
    return w / xp.sum(w, axis=-1, keepdims=True)


def longvq_reference(p, x, codebook, z, window, segment_ids=None, xp=np, sg=_identity):
    """The layer's output ``(b, l, d)`` (see the module docstring)."""
    q, _, k_hat, _, v, (phi, gamma, g), runs = branches(p, x, codebook, z, segment_ids, xp, sg)
    A = attention_matrix(q, k_hat, p["rel_bias"], runs, window, xp, sg)
    o = xp.einsum("btj,bje->bte", A, v)
    hidden = _silu(xp, g + (gamma * o) @ p["out_proj.kernel"] + p["out_proj.bias"])
    return phi * hidden + (1.0 - phi) * x


def longvq_matrix(p, x, codebook, z, window, segment_ids=None):
    """``A (b, l, l)``, the mixing matrix acting on ``v`` (the same for every value channel)."""
    q, _, k_hat, _, _, _, runs = branches(p, x, codebook, z, segment_ids)
    return attention_matrix(q, k_hat, p["rel_bias"], runs, window)


def commitment_reference(p, x, codebook, z, segment_ids=None):
    """``mean_t ‖k_t − C_{c_t}‖²``."""
    _, k, _, codes, _, _, _ = branches(p, x, codebook, z, segment_ids)
    return float(np.mean(np.sum((k - codebook[codes]) ** 2, axis=-1)))


def ema_reference(count, total, p, x, codebook, z, decay, segment_ids=None):
    """One EMA step: ``count ← λ count + (1−λ) n_s``, ``total ← λ total + (1−λ) Σ_{c_t = s} k_t``."""
    _, k, _, codes, _, _, _ = branches(p, x, codebook, z, segment_ids)
    n = np.zeros_like(count)
    s = np.zeros_like(total)
    for c, kk in zip(codes.reshape(-1), k.reshape(-1, k.shape[-1])):
        n[c] += 1.0
        s[c] += kk
    return decay * count + (1 - decay) * n, decay * total + (1 - decay) * s
