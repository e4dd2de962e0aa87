"""Float64 references for the LMU and GAM mixers, written from the papers.

``xp`` is ``numpy`` or ``jax.numpy`` (lists + ``xp.stack``, no in-place
writes), so the tests can differentiate these very functions in float64.

* LMU (Voelker et al. 2019, eqs. (1)-(2); LMUFormer, Liu et al. 2024, the
  LMU block without recurrent connections into ``u``)::

      A[i, j] = (2i+1)/θ · (-1 if i < j else (-1)^(i-j+1)),  B[i] = (2i+1)/θ · (-1)^i
      Ā = e^A,  B̄ = ∫_0^1 e^(sA) ds B                    (ZOH, unit step)
      u_t = relu(W_u x_t + b_u);  m_t = Ā m_{t-1} + B̄ u_t (per channel of u)
      h_t = relu(W_h [m_t; x_t] + b_h);  y_t = W_o h_t + b_o

  The matrix exponential is a float64 Taylor series with scaling and squaring
  (not the module's SciPy ``expm``).

* GAM (Acharya 2025, Section 3, the GAM block's context path)::

      local_t  = b + Σ_{k<K} w_k ⊙ x_{t-(K-1)+k}             causal depthwise conv
      global_t = softmax(x_t Mᵀ) M                          M: (slots, d) memory bank
      [g_l, g_g] = W_g x_t + b_g
      y_t = σ(g_l) ⊙ local_t + σ(g_g) ⊙ global_t

Segments: where the id changes the memory restarts from zero (LMU) and the
convolution sees zeros before the segment (GAM).
"""

import numpy as np

from tests.mixers.harness import runs_of


def params_of(variables, dtype=np.float64):
    """The ``params`` collection as a flat dict ``{"layer/name": array}`` of float64 NumPy arrays."""
    import flax.linen as nn
    import jax

    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(variables)["params"])[0]
    return {"/".join(str(k.key) for k in path): np.asarray(v, dtype) for path, v in flat}


def legt(order, theta):
    """Voelker et al.'s ``(A, B)`` divided by ``θ`` (``θ ṁ = A m + B u``), float64."""
    q = np.arange(order, dtype=np.float64)
    r = (2 * q + 1)[:, None] / theta
    i, j = np.meshgrid(q, q, indexing="ij")
    A = r * np.where(i < j, -1.0, (-1.0) ** (i - j + 1))
    B = r[:, 0] * (-1.0) ** q
    return A, B


def expm_series(M, terms=30):
    """``e^M`` by a Taylor series after scaling by ``2^-s`` (‖M 2^-s‖ < 1/2), then ``s`` squarings."""
    s = max(0, int(np.ceil(np.log2(max(np.linalg.norm(M, 1), 1e-300) * 2))))
    X = M / 2.0**s
    E, term = np.eye(len(M)), np.eye(len(M))
    for k in range(1, terms):
        term = term @ X / k
        E = E + term
    for _ in range(s):
        E = E @ E
    return E


def lmu_discrete(order, theta):
    """``(Ā, B̄)`` by ZOH with a unit step, from the augmented matrix ``[[A, B], [0, 0]]``."""
    A, B = legt(order, theta)
    aug = np.zeros((order + 1, order + 1))
    aug[:order, :order], aug[:order, order] = A, B
    E = expm_series(aug)
    return E[:order, :order], E[:order, order]


def lmu_reference(p, x, order, theta, segment_ids=None, xp=np, memory_only=False):
    """LMU mixer output ``(b, l, d)`` (or the memories ``(b, l, U·N)``) by a loop over time."""
    Abar, Bbar = lmu_discrete(order, theta)
    relu = lambda z: xp.maximum(z, 0.0)  # noqa: E731
    b, length, _ = x.shape
    runs = runs_of(segment_ids, b, length)
    nu = p["u_proj/kernel"].shape[1]
    m = xp.zeros((b, nu, order))
    ys, ms = [], []
    for t in range(length):
        if t > 0:
            restart = (runs[:, t] != runs[:, t - 1])[:, None, None]
            m = xp.where(restart, 0.0, m)
        u = relu(x[:, t] @ p["u_proj/kernel"] + p["u_proj/bias"])  # (b, U)
        m = xp.einsum("bjn,kn->bjk", m, Abar) + u[..., None] * Bbar
        flat = m.reshape(b, nu * order)
        ms.append(flat)
        h = relu(xp.concatenate([flat, x[:, t]], axis=-1) @ p["hidden/kernel"] + p["hidden/bias"])
        ys.append(h @ p["out_proj/kernel"] + p["out_proj/bias"])
    return xp.stack(ms if memory_only else ys, axis=1)


def lmu_matrix(order, theta, batch, length, segment_ids=None, channels=1):
    """Closed form ``M[b, j·N + n, t, s] = (Ā^(t-s) B̄)[n]`` for ``s <= t`` in one segment."""
    Abar, Bbar = lmu_discrete(order, theta)
    H, col = [], Bbar
    for _ in range(length):
        H.append(col)
        col = Abar @ col
    H = np.stack(H, axis=1)  # (N, L)
    runs = runs_of(segment_ids, batch, length)
    t, s = np.arange(length)[:, None], np.arange(length)[None, :]
    lag = np.clip(t - s, 0, length - 1)
    M = np.where((t >= s)[None, None], H[None, :, lag], 0.0)  # (1, N, L, L)
    same = runs[:, :, None] == runs[:, None, :]
    M = np.tile(M, (1, channels, 1, 1)) * same[:, None]
    return M


def _sigmoid(xp, z):
    return 1.0 / (1.0 + xp.exp(-z))


def gam_reference(p, x, segment_ids=None, xp=np):
    """GAM mixer output ``(b, l, d)`` from its parameters, position by position."""
    b, length, d = x.shape
    runs = runs_of(segment_ids, b, length)
    w, bias, bank = p["conv_weight"], p["conv_bias"], p["memory"]
    K = w.shape[0]
    ys = []
    for t in range(length):
        local = bias + 0.0 * x[:, t]
        for k in range(K):
            s = t - (K - 1) + k
            if s < 0:
                continue
            same = (runs[:, s] == runs[:, t])[:, None]
            local = local + w[k] * xp.where(same, x[:, s], 0.0)
        scores = x[:, t] @ bank.T  # (b, slots)
        scores = scores - scores.max(axis=-1, keepdims=True)
        weights = xp.exp(scores) / xp.exp(scores).sum(axis=-1, keepdims=True)
        glob = weights @ bank
        g = x[:, t] @ p["gate/kernel"] + p["gate/bias"]
        ys.append(_sigmoid(xp, g[:, :d]) * local + _sigmoid(xp, g[:, d:]) * glob)
    return xp.stack(ys, axis=1)


def gam_matrix(p, x, segment_ids=None):
    """Closed form ``M[b, c, t, s] = σ(g_l)_t[c] · w[K-1-(t-s), c]`` for ``0 <= t-s < K`` in one segment."""
    b, length, d = x.shape
    w = p["conv_weight"]
    K = w.shape[0]
    gate_l = _sigmoid(np, x @ p["gate/kernel"][:, :d] + p["gate/bias"][:d])  # (b, l, d)
    runs = runs_of(segment_ids, b, length)
    M = np.zeros((b, d, length, length))
    for t in range(length):
        for s in range(max(0, t - K + 1), t + 1):
            same = runs[:, t] == runs[:, s]
            M[:, :, t, s] = np.where(same[:, None], gate_l[:, t] * w[K - 1 - (t - s)], 0.0)
    return M
