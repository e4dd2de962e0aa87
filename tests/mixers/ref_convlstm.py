"""Float64 loop reference for the ConvLSTM mixer, written from the paper's equations.

Shi, Chen, Wang, Yeung, Wong & Woo (NeurIPS 2015), "Convolutional LSTM
Network: A Machine Learning Approach for Precipitation Nowcasting", eq. 3::

    i_t = σ(W_xi ∗ X_t + W_hi ∗ H_{t-1} + W_ci ∘ C_{t-1} + b_i)
    f_t = σ(W_xf ∗ X_t + W_hf ∗ H_{t-1} + W_cf ∘ C_{t-1} + b_f)
    C_t = f_t ∘ C_{t-1} + i_t ∘ tanh(W_xc ∗ X_t + W_hc ∗ H_{t-1} + b_c)
    o_t = σ(W_xo ∗ X_t + W_ho ∗ H_{t-1} + W_co ∘ C_t + b_o)
    H_t = o_t ∘ tanh(C_t)

``∗`` is a 2-D "same" convolution with zero padding, written here as its own
loop over output pixels and kernel offsets (cross-correlation, as
``lax.conv``; pixels outside the frame are zero); ``∘`` is the elementwise
product with an ``H×W×U`` weight. Every gate is evaluated separately from its
own slice of the mixer's parameters (``input_kernel[..., g·U:(g+1)·U]`` is
``W_xg`` for ``g`` in ``i, f, c, o``). Time is an explicit Python loop; the
states start at zero and restart at zero where the segment id changes. ``xp``
is ``numpy`` or ``jax.numpy`` (lists + ``xp.stack``, no in-place writes), so
tests can differentiate this very function in float64.
"""

import numpy as np

from tests.mixers.harness import runs_of

GATE_ORDER = ("i", "f", "c", "o")


def conv_same_loop(x, kernel, xp=np):
    """``y[n, i, j, :] = Σ_{a,b} x[n, i + a - r, j + b - r, :] @ kernel[a, b]`` (zero outside; ``r = k // 2``).

    Args:
      x: ``(n, H, W, c_in)``.
      kernel: ``(k, k, c_in, c_out)``, ``k`` odd.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``(n, H, W, c_out)``.
    """
    k = kernel.shape[0]
    r = k // 2
    H, W = x.shape[1], x.shape[2]
    rows = []
    for i in range(H):
        cols = []
        for j in range(W):
            acc = xp.zeros((x.shape[0], kernel.shape[-1]))
            for a in range(k):
                for b in range(k):
                    ii, jj = i + a - r, j + b - r
                    if 0 <= ii < H and 0 <= jj < W:  # zero padding: outside pixels add nothing
                        acc = acc + x[:, ii, jj, :] @ kernel[a, b]
            cols.append(acc)
        rows.append(xp.stack(cols, axis=1))
    return xp.stack(rows, axis=1)


def _sigmoid(z, xp):
    return 1.0 / (1.0 + xp.exp(-z))


def convlstm_reference(p, x, height, width, segment_ids=None, peephole=True, xp=np):
    """ConvLSTM over ``x: (b, l, H·W·U)`` (frames row-major ``(H, W, U)``); returns ``H_t`` flattened.

    Args:
      p: the mixer's parameters: ``input_kernel``, ``recurrent_kernel`` ``(k, k, U, 4U)``,
        ``bias`` ``(4, U)``, ``peephole`` ``(3, H, W, U)`` (used when ``peephole``).
      x: ``(b, l, d)`` float64.
      height: ``H``.
      width: ``W``.
      segment_ids: optional ``(b, l)`` ids; the states restart at zero where the id changes.
      peephole: include the ``W_c· ∘ C`` terms.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``(b, l, d)``.
    """
    b, length, d = x.shape
    u = d // (height * width)
    runs = runs_of(segment_ids, b, length)
    Wx = {g: p["input_kernel"][..., n * u:(n + 1) * u] for n, g in enumerate(GATE_ORDER)}
    Wh = {g: p["recurrent_kernel"][..., n * u:(n + 1) * u] for n, g in enumerate(GATE_ORDER)}
    bias = {g: p["bias"][n] for n, g in enumerate(GATE_ORDER)}
    if peephole:
        Wc = {g: p["peephole"][n] for n, g in enumerate(("i", "f", "o"))}
    else:
        Wc = {g: 0.0 for g in ("i", "f", "o")}
    ys = []
    for n in range(b):
        Hs = xp.zeros((1, height, width, u))
        Cs = xp.zeros((1, height, width, u))
        row = []
        for t in range(length):
            if t > 0 and runs[n, t] != runs[n, t - 1]:
                Hs, Cs = xp.zeros_like(Hs), xp.zeros_like(Cs)  # a new segment: "total ignorance" again
            X = x[n, t].reshape(1, height, width, u)

            def pre(g, X=X, Hs=Hs):
                return conv_same_loop(X, Wx[g], xp) + conv_same_loop(Hs, Wh[g], xp) + bias[g]

            i_t = _sigmoid(pre("i") + Wc["i"] * Cs, xp)
            f_t = _sigmoid(pre("f") + Wc["f"] * Cs, xp)
            Cs = f_t * Cs + i_t * xp.tanh(pre("c"))
            o_t = _sigmoid(pre("o") + Wc["o"] * Cs, xp)
            Hs = o_t * xp.tanh(Cs)
            row.append(Hs.reshape(d))
        ys.append(xp.stack(row))
    return xp.stack(ys)


__all__ = ["GATE_ORDER", "conv_same_loop", "convlstm_reference"]
