"""Float64 references of the Mamba, Mamba-2 and Hydra blocks, written from the papers.

Each function rebuilds a whole block from the module's parameters (pulled out
of the Flax variables with :func:`params_of`) as explicit Python loops over
time: projections, the short convolution position by position, softplus,
the discretisation ``Ā = exp(ΔA)``, ``B̄ = ΔB``, the state recurrence, the gate
and norm, and the output projection. Nothing here calls seqjax.

Every function takes an ``xp`` module (``numpy`` or ``jax.numpy``) and uses
only operations that both support (lists + ``xp.stack``, no in-place
assignment), so that tests can also differentiate the very same reference with
``jax.grad`` under ``jax.enable_x64``. Segment masks and group indices are
NumPy constants computed from the (integer) ``segment_ids``.
"""

import numpy as np

from tests.mixers.harness import runs_of, segments  # noqa: F401  (segments: re-exported for the family tests)

RMS_EPS = 1e-5


def params_of(variables, xp=np):
    """Flat float64 dict of a mixer's parameters: ``{"in_proj": kernel, "A_log": ..., ...}``."""
    import flax.linen as nn  # only to unbox logical-partitioning metadata

    out = {}
    for name, value in nn.meta.unbox(variables["params"]).items():
        leaf = value["kernel"] if isinstance(value, dict) else value
        out[name] = xp.asarray(np.asarray(leaf, np.float64))
    return out


def _softplus(v, xp):
    return xp.log1p(xp.exp(v))


def _silu(v, xp):
    return v / (1.0 + xp.exp(-v))


def conv_reference(x, weight, bias, runs, causal, xp=np):
    """Depthwise conv, position by position: ``y_t = b + Σ_k w_k x_{t+o_k}`` within the segment.

    ``o_k = k - (K-1)`` (causal) or ``k - K//2`` (centered); positions outside
    the sequence or in another segment contribute nothing.
    """
    batch, length, channels = x.shape
    kernel = weight.shape[0]
    first = -(kernel - 1) if causal else -(kernel // 2)
    outs = []
    for t in range(length):
        acc = xp.zeros((batch, channels)) + bias
        for k in range(kernel):
            s = t + first + k
            if 0 <= s < length:
                same = (runs[:, s] == runs[:, t]).astype(np.float64)[:, None]
                acc = acc + weight[k] * x[:, s] * same
        outs.append(acc)
    return xp.stack(outs, axis=1)


def mamba_branches(p, x, runs, xp=np):
    """``(u, z, Δ, B, C, A)`` of the Mamba block: everything before the scan, float64."""
    d_in, n = p["A_log"].shape
    rank = p["dt_proj"].shape[0]
    xz = x @ p["in_proj"]
    xs, z = xz[..., :d_in], xz[..., d_in:]
    u = _silu(conv_reference(xs, p["conv_weight"], p["conv_bias"], runs, True, xp), xp)
    dbc = u @ p["x_proj"]
    dt_low, B, C = dbc[..., :rank], dbc[..., rank : rank + n], dbc[..., rank + n :]
    delta = _softplus(dt_low @ p["dt_proj"] + p["dt_bias"], xp)  # (b, l, d_in)
    return u, z, delta, B, C, -xp.exp(p["A_log"])


def mamba_matrix(p, x, segment_ids=None):
    """The Mamba block's mixing matrix from the paper's closed form, float64, pair by pair.

    ``M[b, c, t, s] = silu(z_t[c]) (Σ_k C_t[k] exp(A[c, k] Σ_{s<r≤t} Δ_r[c]) B_s[k] Δ_s[c] + D[c] [s = t])``
    for ``s ≤ t`` in the same segment, 0 elsewhere: what multiplies the
    post-conv ``u`` (the skip and the gate are part of the op).
    """
    batch, length, _ = x.shape
    runs = runs_of(segment_ids, batch, length)
    u, z, delta, B, C, A = mamba_branches(p, x, runs)
    M = np.zeros((batch, A.shape[0], length, length))
    for t in range(length):
        for s_ in range(t + 1):
            same = (runs[:, t] == runs[:, s_])[:, None]
            decay = np.exp(A[None] * delta[:, s_ + 1 : t + 1].sum(axis=1)[:, :, None])  # (b, c, n)
            m = np.einsum("bn,bcn,bn->bc", C[:, t], decay, B[:, s_]) * delta[:, s_]
            if s_ == t:
                m = m + p["D"]
            M[:, :, t, s_] = np.where(same, m * _silu(z[:, t], np), 0.0)
    return M


def mamba_reference(p, x, segment_ids=None, xp=np):
    """The Mamba block (Gu & Dao 2023, Section 3.4) in float64.

    ``[x, z] = in_proj(u)``; ``x = silu(conv(x))``; ``[δ, B, C] = x_proj(x)``;
    ``Δ = softplus(dt_proj δ + dt_bias)``; per channel ``c`` and state ``k``:
    ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t``; ``y_t = C_t·h_t + D x_t``;
    ``out = out_proj(y ⊙ silu(z))``.

    Args:
      p: :func:`params_of` of a ``mamba`` module.
      x: ``(b, l, d_model)`` float64 input.
      segment_ids: optional ``(b, l)`` ids; the state and the conv restart.
      xp: numpy or jax.numpy.

    Returns:
      ``(b, l, d_model)``.
    """
    batch, length, _ = x.shape
    d_in, n = p["A_log"].shape
    runs = runs_of(segment_ids, batch, length)
    u, z, delta, B, C, A = mamba_branches(p, x, runs, xp)
    h = xp.zeros((batch, d_in, n))
    ys = []
    for t in range(length):
        if t > 0:
            h = h * (runs[:, t] == runs[:, t - 1]).astype(np.float64)[:, None, None]
        A_bar = xp.exp(delta[:, t, :, None] * A)
        B_bar = delta[:, t, :, None] * B[:, t, None, :]
        h = A_bar * h + B_bar * u[:, t, :, None]
        ys.append(xp.sum(h * C[:, t, None, :], axis=-1) + p["D"] * u[:, t])
    y = xp.stack(ys, axis=1) * _silu(z, xp)
    return y @ p["out_proj"]


def _rms(v, groups, xp):
    b, l, width = v.shape
    g = xp.reshape(v, (b, l, groups, width // groups))
    g = g / xp.sqrt(xp.mean(g * g, axis=-1, keepdims=True) + RMS_EPS)
    return xp.reshape(g, (b, l, width))


def _dims2(p, ngroups, extra_groups):
    d_in = p["norm"].shape[0]
    h = p["A_log"].shape[0]
    n = (p["conv_weight"].shape[1] - d_in) // (extra_groups * ngroups)
    return d_in, h, d_in // h, n, np.arange(h) // (h // ngroups)


def mamba2_branches(p, x, ngroups, runs, xp=np):
    """``(z, x (b, l, h, p), dt (b, l, h), B, C (b, l, h, n), A (h,))`` of the Mamba-2 block, float64."""
    batch, length, _ = x.shape
    d_in, h, hp, n, head_group = _dims2(p, ngroups, 2)
    gn = ngroups * n
    proj = x @ p["in_proj"]
    z, xbc, dt = proj[..., :d_in], proj[..., d_in : 2 * d_in + 2 * gn], proj[..., 2 * d_in + 2 * gn :]
    xbc = _silu(conv_reference(xbc, p["conv_weight"], p["conv_bias"], runs, True, xp), xp)
    xs = xp.reshape(xbc[..., :d_in], (batch, length, h, hp))
    B = xp.reshape(xbc[..., d_in : d_in + gn], (batch, length, ngroups, n))[:, :, head_group]
    C = xp.reshape(xbc[..., d_in + gn :], (batch, length, ngroups, n))[:, :, head_group]
    dt = _softplus(dt + p["dt_bias"], xp)  # (b, l, h)
    return z, xs, dt, B, C, -xp.exp(p["A_log"])


def ssd_matrix(dt, A, B, C, runs):
    """The SSD matrix ``(C_t·B_s) exp(A Σ_{s<r≤t} dt_r) dt_s`` per head (``s ≤ t``, same segment), float64."""
    batch, length, h = dt.shape
    M = np.zeros((batch, h, length, length))
    for t in range(length):
        for s_ in range(t + 1):
            same = (runs[:, t] == runs[:, s_])[:, None]
            decay = np.exp(A * dt[:, s_ + 1 : t + 1].sum(axis=1))  # (b, h)
            m = np.einsum("bhn,bhn->bh", C[:, t], B[:, s_]) * decay * dt[:, s_]
            M[:, :, t, s_] = np.where(same, m, 0.0)
    return M


def mamba2_matrix(p, x, ngroups=1, segment_ids=None):
    """Mamba-2's mixing matrix per head from the closed form: the SSD matrix plus ``D`` on the diagonal."""
    batch, length, _ = x.shape
    runs = runs_of(segment_ids, batch, length)
    _, _, dt, B, C, A = mamba2_branches(p, x, ngroups, runs)
    return ssd_matrix(dt, A, B, C, runs) + p["D"][None, :, None, None] * np.eye(length)


def mamba2_reference(p, x, ngroups=1, segment_ids=None, xp=np):
    """The Mamba-2 block (Dao & Gu 2024, Section 7) in float64.

    ``[z, xBC, dt] = in_proj(u)``; ``[x, B, C] = silu(conv(xBC))``;
    ``dt = softplus(dt + dt_bias)``; per head ``H_t = exp(dt_t A) H_{t-1} +
    dt_t x_t ⊗ B_t``, ``y_t = H_t C_t + D x_t``; ``out = out_proj(rms(y ⊙
    silu(z)) ⊙ w)`` with the RMS over groups of ``d_in / ngroups``.

    Args:
      p: :func:`params_of` of a ``mamba2`` module.
      x: ``(b, l, d_model)`` float64 input.
      ngroups: the module's ``ngroups``.
      segment_ids: optional ``(b, l)`` ids.
      xp: numpy or jax.numpy.

    Returns:
      ``(b, l, d_model)``.
    """
    batch, length, _ = x.shape
    d_in, h, hp, n, _ = _dims2(p, ngroups, 2)
    runs = runs_of(segment_ids, batch, length)
    z, xs, dt, B, C, A = mamba2_branches(p, x, ngroups, runs, xp)
    H = xp.zeros((batch, h, hp, n))
    ys = []
    for t in range(length):
        if t > 0:
            H = H * (runs[:, t] == runs[:, t - 1]).astype(np.float64)[:, None, None, None]
        H = xp.exp(dt[:, t] * A)[:, :, None, None] * H + (
            (dt[:, t, :, None] * xs[:, t])[..., None] * B[:, t, :, None, :]
        )
        ys.append(xp.sum(H * C[:, t, :, None, :], axis=-1) + p["D"][:, None] * xs[:, t])
    y = xp.reshape(xp.stack(ys, axis=1), (batch, length, d_in))
    y = _rms(y * _silu(z, xp), ngroups, xp) * p["norm"]
    return y @ p["out_proj"]


def hydra_branches(p, x, ngroups, diag_proj, runs, xp=np):
    """``(z, x, diag, (dt_f, B_f, C_f), (dt_b, B_b, C_b), A)`` of the Hydra layer, float64."""
    batch, length, _ = x.shape
    d_in, h, hp, n, head_group = _dims2(p, ngroups, 4)
    gn = ngroups * n
    proj = x @ p["in_proj"]
    z, xbc, dt = proj[..., :d_in], proj[..., d_in : 2 * d_in + 4 * gn], proj[..., 2 * d_in + 4 * gn :]
    xbc = _silu(conv_reference(xbc, p["conv_weight"], p["conv_bias"], runs, False, xp), xp)
    x_flat = xbc[..., :d_in]

    def bc(k):
        part = xbc[..., d_in + k * gn : d_in + (k + 1) * gn]
        return xp.reshape(part, (batch, length, ngroups, n))[:, :, head_group]  # (b, l, h, n)

    dtf = _softplus(dt[..., :h] + p["dt_bias"], xp)
    dtb = _softplus(dt[..., h:] + p["dt_bias"], xp)
    diag = p["D"] + (x_flat @ p["fc_D"] if diag_proj else 0.0)  # (b, l, h)
    xs = xp.reshape(x_flat, (batch, length, h, hp))
    return z, xs, diag, (dtf, bc(0), bc(1)), (dtb, bc(2), bc(3)), -xp.exp(p["A_log"])


def hydra_matrix(p, x, ngroups=1, diag_proj=True, segment_ids=None):
    """Hydra's quasiseparable matrix per head from the paper's closed form, float64.

    ``(C^f_{t-1}·B^f_s) exp(A Σ_{s<r<t} dt^f_r) dt^f_s`` below the diagonal (row
    ``t-1`` of the forward SSD matrix), ``D + (W_D x_t)`` on it, and above it the
    same for the backward SSD on the reversed sequence; zero between segments.
    """
    batch, length, _ = x.shape
    runs = runs_of(segment_ids, batch, length)
    _, _, diag, (dtf, Bf, Cf), (dtb, Bb, Cb), A = hydra_branches(p, x, ngroups, diag_proj, runs)
    lower = ssd_matrix(dtf, A, Bf, Cf, runs)
    upper = ssd_matrix(dtb[:, ::-1], A, Bb[:, ::-1], Cb[:, ::-1], runs[:, ::-1])[..., ::-1, ::-1]
    M = np.zeros((batch, A.shape[0], length, length))
    M[:, :, 1:, :] += lower[:, :, :-1, :]  # row t reads row t - 1
    M[:, :, :-1, :] += upper[:, :, 1:, :]  # row t reads row t + 1
    same = runs[:, :, None] == runs[:, None, :]
    M = np.where(same[:, None], M, 0.0)
    idx = np.arange(length)
    M[:, :, idx, idx] = np.moveaxis(diag, 1, -1)
    return M


def hydra_reference(p, x, ngroups=1, diag_proj=True, segment_ids=None, xp=np):
    """The Hydra layer (Hwang et al. 2024) in float64, from its two recurrences.

    ``[z, xBC, dt] = in_proj(u)``; ``[x, B_f, C_f, B_b, C_b] = silu(conv(xBC))``
    with a centered conv; ``dt_f, dt_b = softplus(dt + dt_bias)``. Forward
    states ``H^f_t = exp(dt^f_t A) H^f_{t-1} + dt^f_t x_t ⊗ B^f_t``; backward
    ``H^b_t = exp(dt^b_t A) H^b_{t+1} + dt^b_t x_t ⊗ B^b_t``; the output reads
    them one step away from ``t`` (the shift):
    ``y_t = C^f_{t-1}·H^f_{t-1} + C^b_{t+1}·H^b_{t+1} + (D + W_D x_t) x_t``;
    ``out = out_proj(rms(y) ⊙ w ⊙ silu(z))`` (RMS over all of ``d_in``).

    Args:
      p: :func:`params_of` of a ``hydra`` module.
      x: ``(b, l, d_model)`` float64 input.
      ngroups: the module's ``ngroups``.
      diag_proj: the module's ``diag_proj`` (``W_D`` present).
      segment_ids: optional ``(b, l)`` ids.
      xp: numpy or jax.numpy.

    Returns:
      ``(b, l, d_model)``.
    """
    batch, length, _ = x.shape
    d_in, h, hp, n, _ = _dims2(p, ngroups, 4)
    runs = runs_of(segment_ids, batch, length)
    z, xs, diag, (dtf, Bf, Cf), (dtb, Bb, Cb), A = hydra_branches(p, x, ngroups, diag_proj, runs, xp)
    zero = xp.zeros((batch, h, hp))

    def advance(H, dt_t, t, B):
        return xp.exp(dt_t * A)[:, :, None, None] * H + (
            (dt_t[:, :, None] * xs[:, t])[..., None] * B[:, t, :, None, :]
        )

    H = xp.zeros((batch, h, hp, n))
    fwd = []
    for t in range(length):
        if t > 0:
            H = H * (runs[:, t] == runs[:, t - 1]).astype(np.float64)[:, None, None, None]
            fwd.append(xp.sum(H * Cf[:, t - 1, :, None, :], axis=-1))  # H = H^f_{t-1}
        else:
            fwd.append(zero)
        H = advance(H, dtf[:, t], t, Bf)
    H = xp.zeros((batch, h, hp, n))
    bwd = []
    for t in reversed(range(length)):
        if t < length - 1:
            H = H * (runs[:, t] == runs[:, t + 1]).astype(np.float64)[:, None, None, None]
            bwd.append(xp.sum(H * Cb[:, t + 1, :, None, :], axis=-1))  # H = H^b_{t+1}
        else:
            bwd.append(zero)
        H = advance(H, dtb[:, t], t, Bb)
    y = xp.stack(fwd, axis=1) + xp.stack(bwd[::-1], axis=1) + diag[..., None] * xs
    y = xp.reshape(y, (batch, length, d_in))
    y = _rms(y, 1, xp) * p["norm"] * _silu(z, xp)
    return y @ p["out_proj"]


def perturb(variables, rng, scale=0.2, dt_shift=3.0):
    """Moves every parameter off its init (and ``dt`` up to O(1)) so tests see all of them.

    At init ``D = 1``, the norm weight is 1 and ``Δ`` is 1e-3..1e-1, values that
    would hide a missing ``D``, norm weight or decay; here each parameter gets
    ``scale · N(0, 1)`` added and ``dt_bias`` is shifted by ``dt_shift``
    (``softplus`` of it then spans roughly 0.02..1).
    """
    import jax

    def move(path, leaf):
        name = jax.tree_util.keystr(path)
        leaf = np.asarray(leaf)
        out = leaf + scale * rng.standard_normal(leaf.shape)
        if "dt_bias" in name:
            out = out + dt_shift
        return jax.numpy.asarray(out.astype(leaf.dtype))

    return jax.tree_util.tree_map_with_path(move, variables)


def setup(rng, module, batch=2, length=13, width=16):
    """A fresh input and the module's perturbed variables (Δ moved up to O(1))."""
    from tests.mixers import harness

    x = harness.random_input(rng, batch, length, width)
    return x, perturb(harness.jit_init(module, x), rng)
