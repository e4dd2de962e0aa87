"""Float64 references for the HiSS mixer, written from the paper's description.

Bhirangi et al. 2024, "Hierarchical State Space Models for Continuous
Sequence-to-Sequence Modeling": the sequence is cut into non-overlapping
chunks of ``k`` positions; a low-level SSM runs over each chunk from a zero
state; its output at the chunk's last position is the chunk feature; a
high-level SSM runs over the sequence of chunk features. Per channel, each
level here is a diagonal SSM with conjugate-symmetric modes, ``B = 1``, ZOH::

    Λ = -exp(Λ_log_re) + i Λ_im,   Ā = exp(ΛΔ),   B̄ = (Ā - 1)/Λ,   Δ = exp(log_step)
    low:   x = 0 at a chunk start;  x_t = Ā_lo x_{t-1} + B̄_lo u_t;  z_t = 2 Re(C_lo · x_t) + D u_t
    high:  g_c = Ā_hi g_{c-1} + B̄_hi f_c (f_c = z at chunk c's end);  w_c = 2 Re(C_hi · g_c)
    upsample: y_t = z_t + w_{c(t)-1} (0 in a segment's first chunk);  chunk: y_t = w_c at chunk ends, else 0
    out_t = y_t W + b

:func:`hiss_reference` does exactly that with explicit Python lists: split
each row into segments, each segment into chunks, run the low level per
chunk, collect the finished chunks' features, run the high level over them,
then place the outputs. ``xp`` is ``numpy`` or ``jax.numpy`` (lists and
``xp.stack`` only, no in-place writes), so tests can differentiate it with
JAX in float64. :func:`hiss_matrix` is the closed form of the same map,
entry by entry, from the kernels ``K[τ] = 2 Re(Σ_n C_n B̄_n Ā_n^τ)``.
"""

import numpy as np

from tests.mixers.harness import runs_of


def params_of(variables, dtype=np.float64):
    """The ``params`` collection as float64 NumPy arrays (nested: ``p["low"]["C"]``)."""
    import flax.linen as nn
    import jax

    return jax.tree.map(lambda v: np.asarray(v, dtype), nn.meta.unbox(variables)["params"])


def system(p, level, xp=np):
    """``(Ā, B̄, C)`` of one level (``p[level]``), each ``(d, N/2)`` complex."""
    q = p[level]
    Lambda = -xp.exp(q["Lambda_log_re"]) + 1j * q["Lambda_im"]
    Abar = xp.exp(Lambda * xp.exp(q["log_step"])[:, None])
    C = q["C"][..., 0] + 1j * q["C"][..., 1]
    return Abar, (Abar - 1.0) / Lambda, C


def _segments_of(segment_ids, batch, length):
    """Per row, the list of (start, stop) of its segments (NumPy, static)."""
    runs = runs_of(segment_ids, batch, length)
    out = []
    for r in range(batch):
        starts = [0] + [t for t in range(1, length) if runs[r, t] != runs[r, t - 1]]
        out.append(list(zip(starts, starts[1:] + [length])))
    return out


def hiss_reference(p, x, segment_ids, chunk_size, readout="upsample", xp=np):
    """The HiSS layer, chunk by chunk: ``(b, l, d)`` float64.

    Args:
      p: the mixer's parameters (float64 arrays of ``xp``).
      x: ``(b, l, d)`` input.
      segment_ids: ``(b, l)`` ids or None.
      chunk_size: ``k``.
      readout: ``"upsample"`` or ``"chunk"``.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      The layer's output, ``out = y W + b``.
    """
    a_lo, b_lo, C_lo = system(p, "low", xp)
    a_hi, b_hi, C_hi = system(p, "high", xp)
    D = p["D"]
    batch, length, d = x.shape
    zero = xp.zeros(d)
    rows = []
    for r, segs in enumerate(_segments_of(segment_ids, batch, length)):
        row = []
        for start, stop in segs:
            chunks = [(c0, min(c0 + chunk_size, stop)) for c0 in range(start, stop, chunk_size)]
            # Low level, one chunk at a time from a zero state.
            z_of = []  # per chunk: the list of z_t
            for c0, c1 in chunks:
                state, zs = xp.zeros((d, a_lo.shape[1]), complex), []
                for t in range(c0, c1):
                    state = a_lo * state + b_lo * x[r, t][:, None]
                    zs.append(2.0 * xp.real(xp.sum(C_lo * state, axis=1)) + D * x[r, t])
                z_of.append(zs)
            # High level over the finished chunks' features (an unfinished last chunk has none).
            g, w = xp.zeros((d, a_hi.shape[1]), complex), []
            for (c0, c1), zs in zip(chunks, z_of):
                if c1 - c0 == chunk_size:
                    g = a_hi * g + b_hi * zs[-1][:, None]
                    w.append(2.0 * xp.real(xp.sum(C_hi * g, axis=1)))
            for c, ((c0, c1), zs) in enumerate(zip(chunks, z_of)):
                for i, z in enumerate(zs):
                    if readout == "upsample":
                        row.append(z + (w[c - 1] if c > 0 else zero))
                    else:
                        row.append(w[c] if i == chunk_size - 1 else zero)
        rows.append(xp.stack(row))
    y = xp.stack(rows)
    return y @ p["out_kernel"] + p["out_bias"]


def _kernel(a, b, C, length):
    """``K[h, τ] = 2 Re(Σ_n C B̄ Ā^τ)`` for ``τ < length``: ``(d, length)``."""
    tau = np.arange(length)
    return 2.0 * np.real(np.einsum("hn,hnt->ht", C * b, a[:, :, None] ** tau))


def hiss_matrix(p, batch, length, segment_ids, chunk_size, readout="upsample"):
    """The closed-form mixing matrix ``M[b, h, t, s]`` (float64), ``D`` included.

    With ``c(t)`` the chunk of ``t`` counted from its segment start, ``e(s)``
    the last position of ``s``'s chunk and ``F[s] = K_lo[e(s) - s] + D [s = e(s)]``::

        upsample: M[t, s] = K_lo[t - s] + D [s = t]          c(s) = c(t)
                  M[t, s] = K_hi[c(t) - 1 - c(s)] F[s]        c(s) < c(t)
        chunk:    M[t, s] = K_hi[c(t) - c(s)] F[s]            t a chunk end, c(s) <= c(t)

    for ``s <= t`` in one segment, else 0.
    """
    K_lo = _kernel(*system(p, "low"), length)
    K_hi = _kernel(*system(p, "high"), length)
    D = p["D"]
    k = chunk_size
    M = np.zeros((batch, D.shape[0], length, length))
    for r, segs in enumerate(_segments_of(segment_ids, batch, length)):
        for start, stop in segs:
            for t in range(start, stop):
                ct, jt = divmod(t - start, k)
                for s in range(start, t + 1):
                    cs = (s - start) // k
                    es = start + cs * k + k - 1  # the end of s's chunk (maybe beyond the segment)
                    F = (K_lo[:, es - s] + D * (s == es)) if es < stop else None
                    if readout == "upsample":
                        if cs == ct:
                            M[r, :, t, s] = K_lo[:, t - s] + D * (s == t)
                        else:
                            M[r, :, t, s] = K_hi[:, ct - 1 - cs] * F
                    elif jt == k - 1:
                        M[r, :, t, s] = K_hi[:, ct - cs] * F
    return M
