"""Float64 loop references for the S4D, S4 and LSSL mixers, from the papers' equations.

Every function takes the mixer's own parameters (:func:`params_of`) and builds
the *full* discrete system ``(Ā (h, n, n), B̄ (h, n), C (h, n))`` per direction
as dense matrices — for S4D/S4 over all ``N`` complex modes, the stored ``N/2``
and their conjugates — then runs the recurrence as an explicit Python loop
over time::

    x_t = Ā x_{t-1} + B̄ u_t,   y_t = Re(C x_t) + D u_t
    bidirectional: z_t = Ā z_{t+1} + B̄ u_t,  y_t += Re(C_b z_{t+1})
    out = GLU(W GELU(y) + b)  (or W GELU(y) + b)

* S4D (Gu et al. 2022): ``Λ = -exp(log_re) + i im``; ZOH ``Ā = e^{ΛΔ}``,
  ``B̄ = (Ā - 1)/Λ B``; bilinear ``Ā = (1 + ΛΔ/2)/(1 - ΛΔ/2)``,
  ``B̄ = Δ/(1 - ΛΔ/2) B``.
* S4 (Gu, Goel & Ré 2022): ``A = diag([Λ, Λ̄]) - [P, P̄][P, P̄]*``, bilinear
  ``Ā = (I - Δ/2 A)⁻¹(I + Δ/2 A)``, ``B̄ = (I - Δ/2 A)⁻¹ Δ B``, and the plain
  ``C`` from the trained ``C̃ = C (I - Ā^L)`` with ``Ā^L`` by ``L`` products.
* LSSL (Gu et al. 2021): HiPPO-LegS ``A, B`` (closed form, built here),
  bilinear as above, real ``C``.

``xp`` is ``numpy`` or ``jax.numpy`` (lists + ``xp.stack``, no in-place
writes), so tests can autodiff these very functions in float64.

:func:`conv_matrix` is the layers' mixing matrix in closed form: the Toeplitz
matrix of the kernel ``K[l] = Re(C Ā^l B̄)`` (and the anti-causal ``K_b``)
plus ``D`` on the diagonal, zero between segments.
"""

import math

import numpy as np


def params_of(variables, dtype=np.float64):
    """The ``params`` collection as a nested dict of float64 NumPy arrays."""
    import flax.linen as nn
    import jax

    return jax.tree.map(lambda a: np.asarray(a, dtype), nn.meta.unbox(variables)["params"])


def legs_closed_form(n):
    """HiPPO-LegS ``(A, B)`` written out entry by entry (``dc/dt = A c + B f``)."""
    A = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for k in range(n):
            if i > k:
                A[i][k] = -math.sqrt(2 * i + 1) * math.sqrt(2 * k + 1)
            elif i == k:
                A[i][k] = -(i + 1.0)
    return np.array(A), np.array([math.sqrt(2 * i + 1) for i in range(n)])


def _cplx(p):
    return p[..., 0] + 1j * p[..., 1]


def _full(xp, v):
    """The ``N`` modes ``[v, conj(v)]`` from the ``N/2`` stored ones."""
    return xp.concatenate([v, xp.conj(v)], axis=-1)


def _diag(xp, v):
    """``(h, n)`` → ``(h, n, n)`` diagonal matrices."""
    return v[..., :, None] * xp.eye(v.shape[-1])


def _bilinear(xp, A, B, dt):
    """Dense bilinear ``Ā, B̄`` per channel; ``A (h, n, n)``, ``B (h, n)``, ``dt (h,)``."""
    eye = xp.eye(A.shape[-1])
    s = dt[:, None, None]
    left = eye - s / 2.0 * A
    Abar = xp.linalg.solve(left, eye + s / 2.0 * A)
    Bbar = xp.linalg.solve(left, (dt[:, None] * B)[..., None])[..., 0]
    return Abar, Bbar


def s4d_system(p, method="zoh", xp=np):
    """S4D's full discrete system, one ``(Ā, B̄, C)`` per direction."""
    lam = -xp.exp(p["Lambda_log_re"]) + 1j * p["Lambda_im"]
    dt = xp.exp(p["log_step"])[:, None]
    B = _cplx(p["B"])
    if method == "zoh":
        Ad = xp.exp(lam * dt)
        Bd = (Ad - 1.0) / lam * B
    elif method == "bilinear":
        Ad = (1.0 + dt * lam / 2.0) / (1.0 - dt * lam / 2.0)
        Bd = dt / (1.0 - dt * lam / 2.0) * B
    else:
        raise ValueError(method)
    Abar, Bbar = _diag(xp, _full(xp, Ad)), _full(xp, Bd)
    C = _cplx(p["C"])
    return [(Abar, Bbar, _full(xp, C[i])) for i in range(C.shape[0])]


def s4_system(p, length_c, xp=np):
    """S4's full discrete system; ``C`` from ``C̃`` for the length ``length_c``."""
    lam = -xp.exp(p["Lambda_log_re"]) + 1j * p["Lambda_im"]
    P = _full(xp, _cplx(p["P"]))
    A = _diag(xp, _full(xp, lam)) - P[:, :, None] * xp.conj(P)[:, None, :]
    Abar, Bbar = _bilinear(xp, A, _full(xp, _cplx(p["B"])), xp.exp(p["log_step"]))
    power = xp.eye(A.shape[-1]) + 0.0 * Abar
    for _ in range(length_c):
        power = Abar @ power
    M = xp.eye(A.shape[-1]) - power
    Ct = _cplx(p["C_tilde"])
    out = []
    for i in range(Ct.shape[0]):
        # C̃ = C M  ⇔  Mᵀ Cᵀ = C̃ᵀ
        C = xp.linalg.solve(xp.swapaxes(M, -1, -2), _full(xp, Ct[i])[..., None])[..., 0]
        out.append((Abar, Bbar, C))
    return out


def lssl_system(p, xp=np):
    """LSSL's discrete system: fixed LegS ``A, B``, learned ``Δ`` and ``C``."""
    C = p["C"]
    A, B = legs_closed_form(C.shape[-1])
    h = C.shape[1]
    A = xp.stack([xp.asarray(A)] * h)
    B = xp.stack([xp.asarray(B)] * h)
    Abar, Bbar = _bilinear(xp, A, B, xp.exp(p["log_step"]))
    return [(Abar, Bbar, C[i]) for i in range(C.shape[0])]


def kernel_reference(system, length, xp=np):
    """``K[dir, h, l] = Re(C Ā^l B̄)`` by repeated products, ``(dirs, h, L)``."""
    out = []
    for Abar, Bbar, C in system:
        v = Bbar
        ks = []
        for _ in range(length):
            ks.append(xp.real(xp.sum(C * v, axis=-1)))
            v = xp.einsum("hnk,hk->hn", Abar, v)
        out.append(xp.stack(ks, axis=-1))
    return xp.stack(out)


def conv_matrix(system, D, batch, length, segment_ids=None):
    """The convolution's mixing matrix from the kernels, float64, entry by entry.

    ``M[b, h, t, s] = K[h, t-s] + D_h [s = t]`` for ``s <= t`` and
    ``K_b[h, s-t-1]`` for ``s > t`` (bidirectional; else 0), where ``t``,
    ``s`` are in the same segment of row ``b`` (a new segment wherever the id
    changes); 0 otherwise.

    Args:
      system: the discrete system, one ``(Ā, B̄, C)`` per direction.
      D: ``(h,)`` skip.
      batch: ``b``.
      length: ``l``.
      segment_ids: optional ``(b, l)`` ids.

    Returns:
      ``(b, h, l, l)`` real.
    """
    K = kernel_reference(system, length)
    runs = np.zeros((batch, length), np.int64)
    if segment_ids is not None:
        ids = np.asarray(segment_ids)
        runs[:, 1:] = np.cumsum(ids[:, 1:] != ids[:, :-1], axis=1)
    M = np.zeros((batch, K.shape[1], length, length))
    for t in range(length):
        for s_ in range(length):
            if s_ <= t:
                m = K[0, :, t - s_] + (D if s_ == t else 0.0)
            elif len(K) == 2:
                m = K[1, :, s_ - t - 1]
            else:
                continue
            M[:, :, t, s_] = np.where((runs[:, t] == runs[:, s_])[:, None], m, 0.0)
    return M


def _erf(xp):
    if xp is np:
        from scipy.special import erf

        return erf
    import jax.scipy.special

    return jax.scipy.special.erf


def ssm_reference(system, D, u, segment_ids=None, xp=np):
    """``y_t = Re(C x_t) (+ Re(C_b z_{t+1})) + D u_t`` by loops; ``(b, l, h)``.

    Segments: the forward state restarts at a change of id; the backward
    state ``z_{t+1}`` counts only when position ``t+1`` has ``t``'s id.
    """
    b, length, h = u.shape
    Abar, Bbar, C = system[0]
    n = Abar.shape[-1]

    def same(t, s):
        if segment_ids is None:
            return None
        return (segment_ids[:, t] == segment_ids[:, s])[:, None, None]

    x = xp.zeros((b, h, n)) + 0.0 * Bbar[None]
    ys = []
    for t in range(length):
        keep = same(t, t - 1) if t > 0 else None
        if keep is not None:
            x = xp.where(keep, x, 0.0 * x)
        x = xp.einsum("hnk,bhk->bhn", Abar, x) + Bbar[None] * u[:, t, :, None]
        ys.append(xp.real(xp.sum(C[None] * x, axis=-1)) + D * u[:, t])
    if len(system) == 2:
        Cb = system[1][2]
        z = 0.0 * x
        back = [None] * length
        for t in range(length - 1, -1, -1):
            if t == length - 1:
                ahead = 0.0 * z
            else:
                keep = same(t, t + 1)
                ahead = z if keep is None else xp.where(keep, z, 0.0 * z)
            back[t] = xp.real(xp.sum(Cb[None] * ahead, axis=-1))
            z = xp.einsum("hnk,bhk->bhn", Abar, ahead) + Bbar[None] * u[:, t, :, None]
        ys = [ys[t] + back[t] for t in range(length)]
    return xp.stack(ys, axis=1)


def layer_reference(p, system, u, segment_ids=None, *, output="glu", xp=np):
    """The whole layer: SSM, exact GELU, output map (``"glu"`` or ``"linear"``)."""
    y = ssm_reference(system, p["D"], u, segment_ids, xp)
    y = 0.5 * y * (1.0 + _erf(xp)(y / math.sqrt(2.0)))
    z = y @ p["out"]["kernel"] + p["out"]["bias"]
    if output == "linear":
        return z
    d = u.shape[-1]
    return z[..., :d] / (1.0 + xp.exp(-z[..., d:]))
