"""Float64 references for the SSM kernel ops, written from the papers' equations.

Every kernel here is the impulse response of the *unrolled recurrence*
``x_l = Ā x_{l-1} + B̄ u_l, y_l = C x_l`` (``x_{-1} = 0``, ``u = δ``), run as an
explicit Python loop over time; convolutions are the direct double sum. None
of it shares code with ``seqjax.ops``: no Vandermonde exponentials, no
generating functions, no FFTs, no Woodbury identity.

Each function takes the array module ``xp`` (``numpy`` or ``jax.numpy``) first
and uses only operations both provide (lists + ``xp.stack``, no in-place
writes), so the tests can also differentiate the very same code with JAX under
``jax.enable_x64(True)``.

Conjugate symmetry is spelled out: ``m = N/2`` stored modes stand for the
``N``-mode system ``[Λ, conj Λ]`` (and likewise ``P, Q, B, C``); the references
build that full system and check nothing else.
"""


def discretize_diag(xp, Lambda, B, step, method):
    """``(Ā, B̄)`` of ``x' = Λ x + B u`` elementwise (ZOH or bilinear)."""
    z = Lambda * step
    if method == "zoh":
        Abar = xp.exp(z)
        return Abar, (Abar - 1.0) / Lambda * B
    if method == "bilinear":
        return (1.0 + z / 2) / (1.0 - z / 2), step / (1.0 - z / 2) * B
    raise ValueError(method)


def expm(xp, M, squarings=12, terms=24):
    """Matrix exponential: Taylor series of ``M / 2^s``, then ``s`` squarings."""
    n = M.shape[-1]
    X = M / (2.0**squarings)
    term = xp.eye(n, dtype=M.dtype)
    E = term
    for j in range(1, terms):
        term = term @ X / j
        E = E + term
    for _ in range(squarings):
        E = E @ E
    return E


def discretize_dense(xp, A, B, step, method):
    """``(Ā, B̄)`` of one dense system ``x' = A x + B u`` (``A (n, n)``, ``B (n,)``).

    Bilinear: ``Ā = (I - ΔA/2)^{-1}(I + ΔA/2)``, ``B̄ = (I - ΔA/2)^{-1} Δ B``.
    ZOH: ``Ā = e^{ΔA}``, ``B̄ = A^{-1}(e^{ΔA} - I) B`` (needs ``A`` invertible).
    """
    n = A.shape[-1]
    eye = xp.eye(n, dtype=A.dtype)
    if method == "bilinear":
        inv = xp.linalg.inv(eye - step / 2 * A)
        return inv @ (eye + step / 2 * A), inv @ (step * B)
    if method == "zoh":
        E = expm(xp, step * A)
        return E, xp.linalg.inv(A) @ ((E - eye) @ B)
    raise ValueError(method)


def unroll_kernel(xp, Abar, Bbar, C, length):
    """``K[l] = C Ā^l B̄`` by running the recurrence on an impulse, one step at a time.

    ``Abar (n, n)`` dense or ``(n,)`` diagonal; ``Bbar``, ``C`` of shape ``(n,)``.
    """
    diagonal = Abar.ndim == 1
    x = Bbar  # x_0 = Ā·0 + B̄·1
    out = []
    for _ in range(length):
        out.append(xp.sum(C * x))
        x = Abar * x if diagonal else Abar @ x  # u_l = 0 for l > 0
    return xp.stack(out)


def _full(xp, x):
    return xp.concatenate([x, xp.conj(x)], axis=-1)


def s4d_kernel(xp, Lambda, B, C, step, length, method):
    """S4D kernel ``(h, L)`` of the full conjugate-symmetric diagonal system.

    ``Lambda, B, C``: ``(h, m)``; ``step``: ``(h,)``. Per channel: build the
    ``N = 2m`` modes, discretise, unroll, take the (zero-imaginary) real part.
    """
    out = []
    for c in range(Lambda.shape[0]):
        Abar, Bbar = discretize_diag(xp, _full(xp, Lambda[c]), _full(xp, B[c]), step[c], method)
        out.append(xp.real(unroll_kernel(xp, Abar, Bbar, _full(xp, C[c]), length)))
    return xp.stack(out)


def dplr_dense(xp, Lambda, P, Q=None):
    """The full ``(N, N)`` matrix ``diag([Λ, Λ̄]) - Σ_r [P_r, P̄_r][Q_r, Q̄_r]*`` of one channel.

    ``Lambda (m,)``; ``P``, ``Q``: ``(r, m)`` (``Q = P`` when None).
    """
    Q = P if Q is None else Q
    A = xp.diag(_full(xp, Lambda))
    for j in range(P.shape[0]):
        A = A - xp.outer(_full(xp, P[j]), xp.conj(_full(xp, Q[j])))
    return A


def matrix_power(xp, M, power):
    """``M^power`` by repeated multiplication."""
    out = xp.eye(M.shape[-1], dtype=M.dtype)
    for _ in range(power):
        out = out @ M
    return out


def dplr_kernel(xp, Lambda, P, B, C, step, length, Q=None, c_is_tilde=False):
    """S4 kernel ``(h, L)``: dense bilinear discretisation of ``Λ - P Q*`` unrolled.

    ``Lambda, B, C``: ``(h, m)``; ``P, Q``: ``(r, h, m)``; ``step``: ``(h,)``.
    With ``c_is_tilde``, ``C`` is ``C̃ = C (I - Ā^L)`` and is first converted back
    to the plain ``C = C̃ (I - Ā^L)^{-1}`` (full ``N``-mode row vectors).
    """
    out = []
    for c in range(Lambda.shape[0]):
        A = dplr_dense(xp, Lambda[c], P[:, c], None if Q is None else Q[:, c])
        Abar, Bbar = discretize_dense(xp, A, _full(xp, B[c]), step[c], "bilinear")
        Cf = _full(xp, C[c])
        if c_is_tilde:
            n = A.shape[-1]
            Cf = Cf @ xp.linalg.inv(xp.eye(n, dtype=A.dtype) - matrix_power(xp, Abar, length))
        out.append(xp.real(unroll_kernel(xp, Abar, Bbar, Cf, length)))
    return xp.stack(out)


def c_tilde(xp, Lambda, P, C, step, length, Q=None):
    """Full ``(h, N)`` ``C̃ = C (I - Ā^L)`` with ``Ā`` dense bilinear and ``Ā^L`` by a loop."""
    out = []
    for c in range(Lambda.shape[0]):
        A = dplr_dense(xp, Lambda[c], P[:, c], None if Q is None else Q[:, c])
        n = A.shape[-1]
        Abar = discretize_dense(xp, A, xp.zeros(n, A.dtype), step[c], "bilinear")[0]
        out.append(_full(xp, C[c]) @ (xp.eye(n, dtype=A.dtype) - matrix_power(xp, Abar, length)))
    return xp.stack(out)


def dense_kernel(xp, A, B, C, step, length, method):
    """Kernel ``(h, L)`` of a dense real system ``A (n, n)``, ``B, C (h, n)`` per step ``(h,)``."""
    out = []
    for c in range(step.shape[0]):
        Abar, Bbar = discretize_dense(xp, A, B[c], step[c], method)
        out.append(unroll_kernel(xp, Abar, Bbar, C[c], length))
    return xp.stack(out)


def cauchy(xp, v, omega, lambd):
    """``out[j] = Σ_n v[n] / (ω[j] - λ[n])`` for 1-D inputs, as a double loop."""
    out = []
    for j in range(omega.shape[0]):
        acc = 0.0
        for n in range(v.shape[0]):
            acc = acc + v[n] / (omega[j] - lambd[n])
        out.append(acc)
    return xp.stack(out)


def causal_conv(xp, u, k, D=None, bidirectional=False):
    """Depthwise convolution by its definition, one output time at a time.

    ``y[:, t] = Σ_{0 ≤ t-s < lk} k[t-s] u[:, s]`` (+ with ``bidirectional``,
    ``k = (k_fwd, k_bwd)`` and ``Σ_{0 ≤ s-t-1 < lk} k_bwd[s-t-1] u[:, s]``)
    ``+ D u[:, t]``. ``u (b, l, h)``, ``k (h, lk)`` or ``(2, h, lk)``.
    """
    length = u.shape[1]
    kf = k[0] if bidirectional else k
    lk = kf.shape[-1]
    ys = []
    for t in range(length):
        y = 0.0 * u[:, t]
        for s in range(max(0, t - lk + 1), t + 1):
            y = y + kf[:, t - s] * u[:, s]
        if bidirectional:
            for s in range(t + 1, min(length, t + 1 + lk)):
                y = y + k[1][:, s - t - 1] * u[:, s]
        if D is not None:
            y = y + D * u[:, t]
        ys.append(y)
    return xp.stack(ys, axis=1)
