"""Float64 loop reference for the ConvS5 mixer, written from the paper's equations.

Smith, De Mello, Kautz, Linderman & Byeon (NeurIPS 2023), "Convolutional State
Space Models for Long-Range Spatiotemporal Modeling", Section 3 (ConvS5)::

    Λ̄ = exp(ΛΔ),  B̄ = Λ⁻¹(Λ̄ - I) B̃                  (ZOH, per state channel)
    X_t = Λ̄ ⊙ X_{t-1} + B̄ ∗ U_t                       X_t ∈ C^{H×W×P/2}
    Y_t = 2 Re(C̃ ∗ X_t) + D ⊙ U_t

``∗`` is a 2-D convolution with "same" zero padding, written here as an
explicit sum over kernel offsets of shifted, zero-padded frames
(cross-correlation, as ``lax.conv`` and the authors' code compute it). Time is
an explicit Python loop; where the segment id changes the state restarts from
zero. ``xp`` is ``numpy`` or ``jax.numpy`` (lists + ``xp.stack``, no in-place
writes), so tests can differentiate this very function in float64.

:func:`convs5_matrix` is the closed form of the recurrence: channel ``pixel ·
M + n`` holds ``Λ̄_n^(t-s)`` for ``s <= t`` in the same segment, acting on
``B̄ ∗ U``.
"""

import numpy as np

from tests.mixers.harness import runs_of


def conv2d_same(x, kernel, xp=np):
    """``y[n, i, j, o] = Σ_{a,b,c} xpad[n, i + a, j + b, c] kernel[a, b, c, o]`` (odd ``k``, zero padding).

    Args:
      x: ``(n, H, W, c_in)``.
      kernel: ``(k, k, c_in, c_out)``.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``(n, H, W, c_out)``.
    """
    k = kernel.shape[0]
    r = k // 2
    H, W = x.shape[1], x.shape[2]
    xpad = xp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    # The k² shifted frames, stacked: one contraction over (offset, channel).
    patches = xp.stack([xp.stack([xpad[:, a:a + H, b:b + W, :] for b in range(k)], axis=3) for a in range(k)],
                       axis=3)  # (n, H, W, k, k, c_in)
    return xp.einsum("nijabc,abco->nijo", patches, kernel)


def discrete_system(p, clip_eigs=False, xp=np):
    """``(Λ̄ (M,), B̄ (k, k, U, M), C̃ (k, k, M, U), D (U,))`` from the mixer's parameters (ZOH)."""
    re = p["Lambda_re"]
    if clip_eigs:
        re = xp.minimum(re, -1e-4)
    lam = re + 1j * p["Lambda_im"]
    step = xp.exp(p["log_step"])
    abar = xp.exp(lam * step)
    Bt = p["B"][..., 0] + 1j * p["B"][..., 1]
    Bbar = ((abar - 1.0) / lam) * Bt
    C = p["C"][..., 0] + 1j * p["C"][..., 1]
    return abar, Bbar, C, p["D"]


def convs5_reference(p, x, height, width, segment_ids=None, clip_eigs=False, xp=np):
    """The ConvS5 recurrence, one frame at a time.

    Args:
      p: the mixer's parameters (``Lambda_re``, ``Lambda_im``, ``log_step``,
        ``B``, ``C``, ``D``), float64.
      x: ``(b, l, height · width · U)`` input, row-major ``(height, width, U)`` frames.
      height: frame height.
      width: frame width.
      segment_ids: optional ``(b, l)`` ids; the state restarts where the id changes.
      clip_eigs: clip ``Re Λ`` to ``<= -1e-4``.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``(b, l, d)`` outputs.
    """
    abar, Bbar, C, D = discrete_system(p, clip_eigs, xp)
    b, length, d = x.shape
    u = d // (height * width)
    m = abar.shape[0]
    runs = runs_of(segment_ids, b, length)
    frames = x.reshape(b, length, height, width, u)
    state = xp.zeros((b, height, width, m), np.complex128)
    ys = []
    for t in range(length):
        if t > 0:
            keep = (runs[:, t] == runs[:, t - 1]).astype(np.float64)[:, None, None, None]
            state = state * keep
        bu = conv2d_same(frames[:, t] + 0j, Bbar, xp)
        state = abar * state + bu
        y = 2.0 * xp.real(conv2d_same(state, C, xp)) + D * frames[:, t]
        ys.append(y.reshape(b, d))
    return xp.stack(ys, axis=1)


def convs5_matrix(p, batch, length, height, width, segment_ids=None, clip_eigs=False):
    """``M[b, pixel · M + n, t, s] = Λ̄_n^(t-s)`` (``s <= t``, same segment), complex128.

    Returns:
      ``(batch, height · width · M, length, length)``.
    """
    abar = discrete_system(p, clip_eigs)[0]
    runs = runs_of(segment_ids, batch, length)
    t = np.arange(length)
    power = (t[:, None] - t[None, :]).astype(np.float64)
    causal = power >= 0
    per_mode = np.where(causal, abar[:, None, None] ** np.maximum(power, 0), 0.0)  # (M, l, l)
    same = runs[:, :, None] == runs[:, None, :]  # (b, l, l)
    M = per_mode[None] * same[:, None]
    return np.tile(M, (1, height * width, 1, 1))
