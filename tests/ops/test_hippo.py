"""Tests for seqjax.ops.hippo: closed forms, the ODEs they encode, NPLR, S4D/S5 inits.

Each matrix is checked twice: against its closed form written here as a double
loop, and against the projection ODE it is derived from — the state of a test
function (computed by Gauss quadrature) must satisfy ``dc/dt = A c + B f``
exactly where the theory says so. That second check fixes every sign and
normalisation independently of the formulas.
"""

import numpy as np
import pytest
from numpy.polynomial import laguerre, legendre
from numpy.polynomial import polynomial as poly

from seqjax.ops import hippo

from .utils import rel_err

SIZES = [1, 2, 7, 16]


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("n", SIZES)
def test_legs_closed_form(n):
    A_ref = np.zeros((n, n))
    B_ref = np.zeros(n)
    for i in range(n):
        B_ref[i] = np.sqrt(2 * i + 1)
        for k in range(n):
            if i > k:
                A_ref[i, k] = -np.sqrt(2 * i + 1) * np.sqrt(2 * k + 1)
            elif i == k:
                A_ref[i, k] = -(i + 1)
    A, B = hippo.hippo_legs(n)
    assert A.dtype == np.float64 and A.shape == (n, n) and B.shape == (n,)
    np.testing.assert_array_equal(A, A_ref)
    np.testing.assert_array_equal(B, B_ref)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("theta", [1.0, 2.5])
def test_legt_closed_form(n, theta):
    A_ref = np.zeros((n, n))
    B_ref = np.zeros(n)
    for i in range(n):
        B_ref[i] = (2 * i + 1) * (-1) ** i / theta
        for k in range(n):
            A_ref[i, k] = -(2 * i + 1) / theta * ((-1) ** (i - k) if i >= k else 1)
    A, B = hippo.hippo_legt(n, theta)
    np.testing.assert_allclose(A, A_ref, rtol=1e-15)
    np.testing.assert_allclose(B, B_ref, rtol=1e-15)


@pytest.mark.parametrize("n", SIZES)
def test_lagt_closed_form(n):
    A_ref = np.zeros((n, n))
    for i in range(n):
        for k in range(n):
            A_ref[i, k] = -1.0 if k <= i else 0.0
    A, B = hippo.hippo_lagt(n)
    np.testing.assert_array_equal(A, A_ref)
    np.testing.assert_array_equal(B, np.ones(n))


@pytest.mark.parametrize("n", SIZES)
def test_fout_closed_form(n):
    def b(i):
        return 1.0 if i == 0 else (np.sqrt(2) if i % 2 == 1 else 0.0)

    A_ref = np.zeros((n, n))
    for i in range(n):
        for k in range(n):
            A_ref[i, k] = -b(i) * b(k)
            if i % 2 == 1 and k == i + 1:  # cos_j -> sin_j, j = (i+1)/2
                A_ref[i, k] += 2 * np.pi * ((i + 1) // 2)
            if i % 2 == 0 and i > 0 and k == i - 1:  # sin_j -> cos_j, j = i/2
                A_ref[i, k] -= 2 * np.pi * (i // 2)
    A, B = hippo.hippo_fout(n)
    np.testing.assert_allclose(A, A_ref, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(B, [b(i) for i in range(n)])


# -------------------------------------------- the projection ODEs, by quadrature

GL_X, GL_W = legendre.leggauss(60)
GL_X, GL_W = (GL_X + 1) / 2, GL_W / 2  # Gauss-Legendre on [0, 1]


def _shifted_legendre(i, x):
    return legendre.legval(2 * x - 1, np.eye(i + 1)[i])


def test_legs_ode_exact(rng):
    """c_i(t) = sqrt(2i+1) ∫_0^1 f(tx) P_i(2x-1) dx satisfies t c' = A c + B f(t).

    LegS's A is lower triangular, so c_0..c_{N-1} evolve without truncation:
    the ODE holds for polynomials of any degree (here 14 > N).
    """
    n = 9
    A, B = hippo.hippo_legs(n)
    coef = rng.standard_normal(15)
    dcoef = poly.polyder(coef)
    for t in (0.7, 1.6):
        basis = [np.sqrt(2 * i + 1) * _shifted_legendre(i, GL_X) for i in range(n)]
        c = np.array([np.sum(GL_W * poly.polyval(t * GL_X, coef) * basis[i]) for i in range(n)])
        dc = np.array([np.sum(GL_W * GL_X * poly.polyval(t * GL_X, dcoef) * basis[i]) for i in range(n)])
        assert rel_err(t * dc, A @ c + B * poly.polyval(t, coef)) < 1e-10


@pytest.mark.parametrize("theta", [1.0, 2.0])
def test_legt_ode_exact_for_polynomials(rng, theta):
    """c_i(t) = (2i+1) ∫_0^1 f(t-θ+θx) P_i(1-2x) dx satisfies c' = A c + B f(t)."""
    n = 8
    A, B = hippo.hippo_legt(n, theta)
    coef = rng.standard_normal(n)
    dcoef = poly.polyder(coef)
    for t in (0.4, 3.1):
        s = t - theta + theta * GL_X
        basis = [legendre.legval(1 - 2 * GL_X, np.eye(i + 1)[i]) for i in range(n)]
        c = np.array([(2 * i + 1) * np.sum(GL_W * poly.polyval(s, coef) * basis[i]) for i in range(n)])
        dc = np.array([(2 * i + 1) * np.sum(GL_W * poly.polyval(s, dcoef) * basis[i]) for i in range(n)])
        assert rel_err(dc, A @ c + B * poly.polyval(t, coef)) < 1e-10
    # Degree N is past the truncation (LegT reconstructs f(t-θ) from c): the ODE fails.
    coef = np.eye(n + 1)[n]
    t = 0.4
    s = t - theta + theta * GL_X
    c = np.array([(2 * i + 1) * np.sum(GL_W * poly.polyval(s, coef) * basis[i]) for i in range(n)])
    dc = np.array([(2 * i + 1) * np.sum(GL_W * poly.polyval(s, poly.polyder(coef)) * basis[i]) for i in range(n)])
    assert rel_err(dc, A @ c + B * poly.polyval(t, coef)) > 1e-3


def test_lagt_ode_exact(rng):
    """c_i(t) = ∫_0^∞ f(t-y) L_i(y) e^{-y} dy satisfies c' = A c + B f(t) for any f."""
    n = 5
    A, B = hippo.hippo_lagt(n)
    y, w = laguerre.laggauss(40)
    coef = rng.standard_normal(12)  # degree 11 > N: LagT has no truncation
    dcoef = poly.polyder(coef)
    t = 0.9
    basis = [laguerre.lagval(y, np.eye(i + 1)[i]) for i in range(n)]
    c = np.array([np.sum(w * poly.polyval(t - y, coef) * basis[i]) for i in range(n)])
    dc = np.array([np.sum(w * poly.polyval(t - y, dcoef) * basis[i]) for i in range(n)])
    assert rel_err(dc, A @ c + B * poly.polyval(t, coef)) < 1e-11


def test_fout_ode_exact_for_trig_polynomials(rng):
    """c_i(t) = ∫_0^1 f(t-1+x) p_i(x) dx satisfies c' = A c + B f(t) for 1-periodic f."""
    K = 3
    n = 2 * K + 1
    A, B = hippo.hippo_fout(n)
    a, b = rng.standard_normal(K + 1), rng.standard_normal(K + 1)

    def f(s, deriv=False):
        out = 0.0 * s + (0.0 if deriv else a[0])
        for j in range(1, K + 1):
            w = 2 * np.pi * j
            if deriv:
                out = out - a[j] * w * np.sin(w * s) + b[j] * w * np.cos(w * s)
            else:
                out = out + a[j] * np.cos(w * s) + b[j] * np.sin(w * s)
        return out

    def basis(i, x):
        if i == 0:
            return np.ones_like(x)
        j = (i + 1) // 2
        return np.sqrt(2) * (np.cos if i % 2 == 1 else np.sin)(2 * np.pi * j * x)

    t = 0.37
    s = t - 1 + GL_X
    c = np.array([np.sum(GL_W * f(s) * basis(i, GL_X)) for i in range(n)])
    dc = np.array([np.sum(GL_W * f(s, deriv=True) * basis(i, GL_X)) for i in range(n)])
    np.testing.assert_allclose(B, [basis(i, np.zeros(1))[0] for i in range(n)], atol=1e-15)
    assert rel_err(dc, A @ c + B * f(np.array(t))) < 1e-11


# ------------------------------------------------------------------ NPLR / S4D


@pytest.mark.parametrize("n", [1, 2, 7, 16, 64])
def test_nplr_reconstruction(n):
    Lambda, P, B, V = hippo.nplr_legs(n)
    A, B_legs = hippo.hippo_legs(n)
    p = np.array([np.sqrt(i + 0.5) for i in range(n)])
    assert rel_err(V.conj().T @ V, np.eye(n)) < 1e-12  # unitary
    np.testing.assert_allclose(Lambda.real, -0.5, atol=1e-12)
    np.testing.assert_allclose(P, V.conj().T @ p, atol=1e-12)
    np.testing.assert_allclose(B, V.conj().T @ B_legs, atol=1e-12)
    A_rec = V @ (np.diag(Lambda) - np.outer(P, P.conj())) @ V.conj().T
    assert np.max(np.abs(A_rec - A)) < 1e-10
    assert np.max(np.abs(A_rec.imag)) < 1e-10


@pytest.mark.parametrize("n", [2, 8, 64])
def test_nplr_conj_sym_reconstruction(n):
    Lambda, P, B, V = hippo.nplr_legs(n, conj_sym=True)
    assert Lambda.shape == P.shape == B.shape == (n // 2,) and V.shape == (n, n // 2)
    assert np.all(Lambda.imag > 0)
    Vf = np.concatenate([V, V.conj()], axis=1)
    Lf, Pf = np.concatenate([Lambda, Lambda.conj()]), np.concatenate([P, P.conj()])
    A, B_legs = hippo.hippo_legs(n)
    assert rel_err(Vf.conj().T @ Vf, np.eye(n)) < 1e-12
    assert np.max(np.abs(Vf @ (np.diag(Lf) - np.outer(Pf, Pf.conj())) @ Vf.conj().T - A)) < 1e-10
    np.testing.assert_allclose(Vf @ np.concatenate([B, B.conj()]), B_legs, atol=1e-10)


@pytest.mark.parametrize("n", [2, 8, 64])
def test_s4d_legs_is_nplr_normal_spectrum(n):
    A, _ = hippo.hippo_legs(n)
    S = A + np.outer(np.sqrt(np.arange(n) + 0.5), np.sqrt(np.arange(n) + 0.5))
    eig = np.linalg.eigvals(S)
    expected = np.array(sorted(eig[eig.imag > 0], key=lambda z: z.imag))  # positive half
    Lambda = hippo.s4d_init(n, "legs")
    assert Lambda.shape == (n // 2,)
    np.testing.assert_allclose(Lambda, expected, atol=1e-10)
    np.testing.assert_allclose(Lambda, hippo.nplr_legs(n, conj_sym=True)[0], atol=1e-12)


@pytest.mark.parametrize("n", [2, 8, 64])
def test_s4d_lin_inv(n):
    lin = [complex(-0.5, np.pi * j) for j in range(n // 2)]
    inv = [complex(-0.5, n / np.pi * (n / (2 * j + 1) - 1)) for j in range(n // 2)]
    np.testing.assert_allclose(hippo.s4d_init(n, "lin"), lin, rtol=1e-15)
    # S4D-Inv is decreasing in j; the function sorts by imaginary part.
    np.testing.assert_allclose(hippo.s4d_init(n, "inv"), sorted(inv, key=lambda z: z.imag), rtol=1e-15)


@pytest.mark.parametrize("n,blocks", [(8, 1), (8, 2), (12, 3)])
@pytest.mark.parametrize("conj_sym", [True, False])
def test_block_diagonal_legs(n, blocks, conj_sym):
    m = n // blocks
    S = np.zeros((m, m))  # LegS normal part, closed form
    for i in range(m):
        for k in range(m):
            r = 0.5 * np.sqrt(2 * i + 1) * np.sqrt(2 * k + 1)
            S[i, k] = -r if i > k else (r if i < k else -0.5)
    expected = np.kron(np.eye(blocks), S)
    Lambda, V, Vinv = hippo.block_diagonal_legs(n, blocks, conj_sym=conj_sym)
    M = n // 2 if conj_sym else n
    assert Lambda.shape == (M,) and V.shape == (n, M) and Vinv.shape == (M, n)
    np.testing.assert_allclose(Vinv @ V, np.eye(M), atol=1e-12)
    rec = V @ np.diag(Lambda) @ Vinv
    rec = 2 * rec.real if conj_sym else rec
    assert np.max(np.abs(rec - expected)) < 1e-10


def test_errors():
    with pytest.raises(ValueError, match="even"):
        hippo.s4d_init(7, "lin")
    with pytest.raises(ValueError, match="kind"):
        hippo.s4d_init(8, "foo")
    with pytest.raises(ValueError, match="divide"):
        hippo.block_diagonal_legs(8, 3)
    with pytest.raises(ValueError, match="positive integer"):
        hippo.hippo_legs(0)
    with pytest.raises(ValueError, match="even"):
        hippo.nplr_legs(5, conj_sym=True)
