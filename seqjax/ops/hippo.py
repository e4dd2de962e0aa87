"""HiPPO matrices and the state-space initialisations built from them.

These are init-time constants, so they are built in float64 NumPy and returned
as NumPy arrays; the mixers cast them to their parameter dtype.

Sign convention: every function returns ``(A, B)`` of the ODE

    dc/dt = A c(t) + B f(t)            (LegT, LagT, FouT: time-invariant)
    dc/dt = (A c(t) + B f(t)) / t      (LegS: scaled measure)

i.e. ``A`` here is ``-A`` of the HiPPO paper (Gu et al. 2020), which writes
``dc/dt = -A c + B f``. This is the convention of S4 / S4D / S5 / LSSL, whose
state matrices are stable (eigenvalues in the left half-plane).

Conjugate symmetry: a real ``N``-state system diagonalised over the complex
numbers has its eigenvalues in conjugate pairs. S4, S4D and S5 keep only the
``N/2`` modes with positive imaginary part and recover the real system by
adding the conjugate of every mode (``2 Re(...)`` for a diagonal SSM). The
``conj_sym`` options below return those ``N/2`` modes; where a mode has zero
imaginary part (S4D-Lin's ``n = 0``) it still counts once as a pair.

Functions:
  * :func:`hippo_legs`, :func:`hippo_legt`, :func:`hippo_lagt`,
    :func:`hippo_fout` — the HiPPO operators.
  * :func:`nplr_legs` — S4's normal-plus-low-rank form of LegS.
  * :func:`s4d_init` — S4D's diagonal initialisations (LegS, Lin, Inv).
  * :func:`block_diagonal_legs` — S5's block-diagonal LegS-normal init.
"""

import numpy as np

S4D_KINDS = ("legs", "lin", "inv")


def _check_size(n, name="n", even=False):
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    if even and n % 2:
        raise ValueError(f"{name} must be even (conjugate pairs), got {n}")


def hippo_legs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegS: scaled Legendre measure (uniform on ``[0, t]``).

    ``A[i, k] = -sqrt(2i+1) sqrt(2k+1)`` for ``i > k``, ``-(i+1)`` for ``i == k``,
    ``0`` above the diagonal; ``B[i] = sqrt(2i+1)``. The state holds the
    coefficients ``c_i(t) = sqrt(2i+1) ∫_0^1 f(t x) P_i(2x-1) dx`` of the
    orthonormal shifted Legendre basis, and ``dc/dt = (A c + B f(t)) / t``.

    Args:
      n: state size ``N``.

    Returns:
      ``A`` of shape ``(N, N)`` and ``B`` of shape ``(N,)``, float64.
    """
    _check_size(n)
    r = np.sqrt(2.0 * np.arange(n) + 1.0)
    A = -np.tril(np.outer(r, r), -1) - np.diag(np.arange(n) + 1.0)
    return A, r.copy()


def hippo_legt(n: int, theta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegT: translated Legendre measure (uniform on ``[t - θ, t]``).

    The HiPPO paper's form (Theorem 1, LMU basis):
    ``A[i, k] = -(2i+1)/θ · ((-1)^(i-k) if k <= i else 1)``,
    ``B[i] = (2i+1)/θ · (-1)^i``. The state holds
    ``c_i(t) = (2i+1)/θ ∫_{t-θ}^t f(s) P_i(1 - 2 (s-t+θ)/θ) ds``, for which
    ``dc/dt = A c + B f(t)`` holds exactly when ``f`` is a polynomial of degree
    ``< N`` on the window.

    Args:
      n: state size ``N``.
      theta: window length ``θ > 0``.

    Returns:
      ``A`` of shape ``(N, N)`` and ``B`` of shape ``(N,)``, float64.
    """
    _check_size(n)
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta!r}")
    i = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    sign = np.where(k <= i, (-1.0) ** ((i - k) % 2), 1.0)
    A = -(2.0 * i + 1.0) * sign / theta
    B = (2.0 * np.arange(n) + 1.0) * (-1.0) ** (np.arange(n) % 2) / theta
    return A, B


def hippo_lagt(n: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LagT: Laguerre basis under the exponential measure ``e^{-(t-s)}``.

    ``A[i, k] = -1`` for ``k <= i``, ``0`` above the diagonal; ``B[i] = 1``. The
    state holds ``c_i(t) = ∫_{-∞}^t f(s) L_i(t-s) e^{-(t-s)} ds``; because ``A``
    is lower triangular the ODE ``dc/dt = A c + B f(t)`` is exact for every
    ``f`` (no truncation).

    Args:
      n: state size ``N``.

    Returns:
      ``A`` of shape ``(N, N)`` and ``B`` of shape ``(N,)``, float64.
    """
    _check_size(n)
    return -np.tril(np.ones((n, n))), np.ones(n)


def hippo_fout(n: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-FouT: truncated Fourier basis on the window ``[t - 1, t]``.

    Basis (orthonormal on the window, ``x = s - t + 1``): index 0 is ``1``,
    index ``2j-1`` is ``sqrt2 cos(2πjx)`` and index ``2j`` is ``sqrt2 sin(2πjx)``.
    ``B[i]`` is the basis function at ``x = 0`` (``1``, ``sqrt2`` for cosines,
    ``0`` for sines) and ``A = J - B Bᵀ`` where ``J[cos_j, sin_j] = 2πj``,
    ``J[sin_j, cos_j] = -2πj``; the ``-B Bᵀ`` term reconstructs ``f(t-1)`` from
    the state ("How to Train Your HiPPO", Gu et al. 2022). The ODE
    ``dc/dt = A c + B f(t)`` is exact for 1-periodic trigonometric polynomials
    whose frequencies the basis holds.

    Args:
      n: state size ``N`` (odd sizes hold complete cos/sin pairs).

    Returns:
      ``A`` of shape ``(N, N)`` and ``B`` of shape ``(N,)``, float64.
    """
    _check_size(n)
    B = np.zeros(n)
    B[0] = 1.0
    B[1::2] = np.sqrt(2.0)
    J = np.zeros((n, n))
    for j in range(1, (n - 1) // 2 + 1):
        c, s = 2 * j - 1, 2 * j
        J[c, s] = 2.0 * np.pi * j
        J[s, c] = -2.0 * np.pi * j
    return J - np.outer(B, B), B


def _legs_normal_eig(n: int):
    """Eigen-decomposes the normal part ``S = A + P Pᵀ`` of LegS.

    ``S = -I/2 + K`` with ``K`` skew-symmetric, so ``-iK`` is Hermitian and
    ``eigh`` gives real ``μ`` and a unitary ``V``: ``S = V diag(-1/2 + iμ) V*``.
    Eigenvalues are sorted by imaginary part (ascending).
    """
    A, B = hippo_legs(n)
    P = np.sqrt(np.arange(n) + 0.5)
    S = A + np.outer(P, P)
    K = S + 0.5 * np.eye(n)
    mu, V = np.linalg.eigh(-1j * K)
    Lambda = -0.5 + 1j * mu
    return Lambda, V, P, B


def _positive_half(Lambda, V):
    """The ``N/2`` modes with positive imaginary part (the other half: conjugates)."""
    order = np.argsort(Lambda.imag, kind="stable")
    half = order[len(order) // 2:]
    return Lambda[half], V[:, half]


def nplr_legs(
    n: int, *, conj_sym: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """S4's normal-plus-low-rank (NPLR) form of HiPPO-LegS.

    ``A = S - P Pᵀ`` with ``P[i] = sqrt(i + 1/2)`` (rank 1); ``S`` is
    ``-I/2`` plus a skew-symmetric matrix, hence normal, and ``S = V Λ V*``
    with ``V`` unitary. In the eigenbasis ``x̃ = V* x`` the system reads
    ``dx̃/dt = (Λ - P̃ P̃*) x̃ + B̃ f`` with ``P̃ = V* P`` and ``B̃ = V* B``, so
    ``A = V (Λ - P̃ P̃*) V*``.

    Args:
      n: state size ``N`` (even when ``conj_sym``).
      conj_sym: return only the ``N/2`` modes with positive imaginary part.
        The full basis is then ``V_full = [V, conj(V)]`` with
        ``Λ_full = [Λ, conj(Λ)]``, ``P̃_full = [P̃, conj(P̃)]``,
        ``B̃_full = [B̃, conj(B̃)]`` (``P`` and ``B`` are real), which is the
        form :func:`seqjax.ops.ssm_kernels.dplr_kernel` takes.

    Returns:
      ``(Lambda, P, B, V)``: ``Lambda (M,)`` complex eigenvalues (real part
      ``-1/2``), ``P (M,)`` and ``B (M,)`` complex (``V* P``, ``V* B``), and
      ``V (N, M)`` complex, with ``M = N`` or ``N/2``; complex128.
    """
    _check_size(n, even=conj_sym)
    Lambda, V, P, B = _legs_normal_eig(n)
    if conj_sym:
        Lambda, V = _positive_half(Lambda, V)
    Vh = V.conj().T
    return Lambda, Vh @ P, Vh @ B, V


def s4d_init(n: int, kind: str = "legs") -> np.ndarray:
    """S4D's diagonal state matrices (Gu, Gupta, Goel & Ré 2022).

    State size ``N`` uses ``N/2`` complex modes (conjugate symmetry): this
    returns the ``N/2`` eigenvalues with non-negative imaginary part, sorted by
    imaginary part; the kernel adds the conjugates (``2 Re``).

    * ``"legs"`` (S4D-LegS): the eigenvalues of the normal part of LegS's NPLR
      form (:func:`nplr_legs`), ``-1/2 + iμ``.
    * ``"lin"`` (S4D-Lin): ``-1/2 + iπj`` for ``j = 0 .. N/2 - 1``.
    * ``"inv"`` (S4D-Inv): ``-1/2 + i (N/π) (N/(2j+1) - 1)``, ``j = 0 .. N/2 - 1``.

    Args:
      n: state size ``N`` (even).
      kind: one of ``"legs"``, ``"lin"``, ``"inv"``.

    Returns:
      ``Lambda`` of shape ``(N/2,)``, complex128.
    """
    _check_size(n, even=True)
    if kind not in S4D_KINDS:
        raise ValueError(f"s4d_init: kind={kind!r} is not one of {', '.join(map(repr, S4D_KINDS))}")
    j = np.arange(n // 2)
    if kind == "legs":
        Lambda, _ = _positive_half(*_legs_normal_eig(n)[:2])
    elif kind == "lin":
        Lambda = -0.5 + 1j * np.pi * j
    else:
        Lambda = -0.5 + 1j * (n / np.pi) * (n / (2 * j + 1) - 1)
    return Lambda[np.argsort(Lambda.imag, kind="stable")].astype(np.complex128)


def block_diagonal_legs(
    n: int, blocks: int, *, conj_sym: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S5's block-diagonal initialisation (Smith, Warrington & Linderman 2023).

    The state of size ``N`` is split into ``blocks`` blocks of size
    ``m = N / blocks``; each block is the normal part ``S_m`` of LegS
    (see :func:`nplr_legs`), so ``blockdiag(S_m, ..., S_m) = V diag(Λ) Vinv``.
    With ``conj_sym`` each block keeps its ``m/2`` modes of positive imaginary
    part and the real matrix is ``2 Re(V diag(Λ) Vinv)``.

    Args:
      n: state size ``N``.
      blocks: number of blocks ``J`` (divides ``N``; ``N/J`` even with
        ``conj_sym``).
      conj_sym: keep half of each block's modes.

    Returns:
      ``(Lambda, V, Vinv)``: ``Lambda (M,)``, ``V (N, M)``, ``Vinv (M, N)``
      complex128 with ``M = N`` or ``N/2``; ``Vinv = V*`` (``V`` has
      orthonormal columns).
    """
    _check_size(n)
    _check_size(blocks, "blocks")
    if n % blocks:
        raise ValueError(f"blocks={blocks} must divide the state size n={n}")
    m = n // blocks
    _check_size(m, "n // blocks", even=conj_sym)
    Lambda_b, V_b, _, _ = _legs_normal_eig(m)
    if conj_sym:
        Lambda_b, V_b = _positive_half(Lambda_b, V_b)
    mb = len(Lambda_b)
    V = np.zeros((n, mb * blocks), np.complex128)
    for j in range(blocks):
        V[j * m:(j + 1) * m, j * mb:(j + 1) * mb] = V_b
    return np.tile(Lambda_b, blocks), V, V.conj().T
