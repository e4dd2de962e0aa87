"""Tests for seqjax.ops.ssm_kernels against unrolled float64 recurrences (ref_ssm).

Every kernel is compared with the impulse response of the same discretised SSM
run step by step (``x_l = Ā x_{l-1} + B̄ u_l``) on the full conjugate-symmetric
``N``-mode system; gradients with JAX's autodiff of that same loop in float64.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops import hippo
from seqjax.ops import ssm_kernels as sk

from . import ref_ssm as ref
from .utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

LENGTHS = [1, 7, 64, 129]
METHODS = ["zoh", "bilinear"]
# The DPLR kernel meets the scan bars: evaluated at g(ω) = i(2/Δ)tan(πj/L)
# its Cauchy sums have no cancellation. Measured: float32 forward ≤ 3e-6 (also
# LegS N=64, L=1024), gradients ≤ 3e-6; float64 ≤ 5e-14, gradients ≤ 8e-14.
RTOL_DPLR_F32 = RTOL_SCAN
RTOL_DPLR_GRAD = RTOL_GRAD
RTOL_DPLR_F64 = RTOL_F64


# The fast paths run jitted, as in use (and one compilation beats op-by-op dispatch).
_vandermonde = jax.jit(sk.vandermonde_kernel, static_argnums=(4, 5), static_argnames=("impl",))
VANDERMONDE_IMPLS = ["reference", "chunked"]


@functools.partial(jax.jit, static_argnums=(5,))
def _dplr_from_c(Lambda, P, B, C, step, length, Q=None):
    """S4's kernel from the plain C: C̃ by dplr_c_tilde, then dplr_kernel."""
    return sk.dplr_kernel(Lambda, P, B, sk.dplr_c_tilde(Lambda, P, C, step, length, Q=Q), step, length, Q=Q)


_discretize_dense = jax.jit(sk.discretize_dense, static_argnums=(3,))
_krylov = jax.jit(sk.krylov_kernel, static_argnums=(3,))


def _crandn(rng, *shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _diag_system(rng, h, m):
    Lambda = -rng.uniform(0.1, 1.0, (h, m)) + 1j * rng.uniform(-30, 30, (h, m))
    step = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), h))
    return Lambda, _crandn(rng, h, m), _crandn(rng, h, m), step


def _f32(*xs):
    return [jnp.asarray(x, jnp.complex64 if np.iscomplexobj(x) else jnp.float32) for x in xs]


# ------------------------------------------------------------------ discretise


@pytest.mark.parametrize("method", METHODS)
def test_discretize_diag(rng, method):
    Lambda, B, _, step = _diag_system(rng, 3, 5)
    want = ref.discretize_diag(np, Lambda, B, step[:, None], method)
    with jax.enable_x64(True):
        got = sk.discretize(Lambda, B, step[:, None], method)
        for g, w in zip(got, want):
            assert g.dtype == jnp.complex128
            assert_rel_close(g, w, RTOL_F64, f"{method} float64")
    got = sk.discretize(*_f32(Lambda, B, step[:, None]), method)
    for g, w in zip(got, want):
        assert g.dtype == jnp.complex64
        assert_rel_close(g, w, 1e-6, f"{method} float32")


def test_discretize_zoh_small_step_float32():
    """``(exp(z) - 1)/Λ`` must not cancel when ``ΛΔ`` is tiny (uses expm1)."""
    Lambda = np.array([-0.5 + 0.1j, -0.2 + 3j])
    step = np.array([1e-5, 3e-6])
    want = ref.discretize_diag(np, Lambda, 1.0, step, "zoh")[1]
    Lambda32, step32 = _f32(Lambda, step)
    got = sk.discretize(Lambda32, jnp.ones(2, jnp.complex64), step32, "zoh")[1]
    assert np.max(np.abs(np.asarray(got) - want) / np.abs(want)) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_discretize_dense(rng, method):
    n, h = 6, 3
    A, _ = hippo.hippo_legs(n)
    B = rng.standard_normal((h, n))
    step = np.array([0.01, 0.1, 0.5])
    want = [ref.discretize_dense(np, A, B[c], step[c], method) for c in range(h)]
    with jax.enable_x64(True):
        Abar, Bbar = _discretize_dense(A, B, step, method)
        assert Abar.shape == (h, n, n) and Bbar.shape == (h, n)
        for c in range(h):
            assert_rel_close(Abar[c], want[c][0], RTOL_F64, "Abar float64")
            assert_rel_close(Bbar[c], want[c][1], RTOL_F64, "Bbar float64")
    Abar, Bbar = _discretize_dense(*_f32(A, B, step), method)
    assert Abar.dtype == jnp.float32
    for c in range(h):
        assert_rel_close(Abar[c], want[c][0], RTOL_SCAN, "Abar float32")
        assert_rel_close(Bbar[c], want[c][1], RTOL_SCAN, "Bbar float32")


# ----------------------------------------------------------------- Vandermonde


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("impl", VANDERMONDE_IMPLS)
def test_vandermonde_matches_recurrence(rng, method, length, impl):
    Lambda, B, C, step = _diag_system(rng, 3, 4)
    want = ref.s4d_kernel(np, Lambda, B, C, step, length, method)
    with jax.enable_x64(True):
        got = _vandermonde(Lambda, B, C, step, length, method, impl=impl)
        assert got.dtype == jnp.float64 and got.shape == (3, length)
        assert_rel_close(got, want, RTOL_F64, "float64")
    got = _vandermonde(*_f32(Lambda, B, C, step), length, method, impl=impl)
    assert got.dtype == jnp.float32
    assert_rel_close(got, want, RTOL_SCAN, "float32")


@pytest.mark.parametrize("kind", hippo.S4D_KINDS)
def test_vandermonde_s4d_init_shared_lambda(rng, kind):
    """A ``(m,)`` Lambda shared by all channels (S4D's inits), real B."""
    n, h, length = 16, 3, 64
    Lambda = hippo.s4d_init(n, kind)
    B = np.ones((h, n // 2)) + 0j
    C = _crandn(rng, h, n // 2)
    step = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), h))
    want = ref.s4d_kernel(np, np.broadcast_to(Lambda, (h, n // 2)), B, C, step, length, "zoh")
    got = _vandermonde(*_f32(Lambda, B, C, step), length, "zoh")
    assert_rel_close(got, want, RTOL_SCAN, kind)


def _grad_check(impl_loss, ref_loss, params, what):
    """Gradients of impl_loss (float32 and float64) vs jax autodiff of ref_loss (float64)."""
    argnums = tuple(range(len(params)))
    # One jitted function per precision: a jit cache shared across the x64
    # switch would mix float32 and float64 constants.
    with jax.enable_x64(True):
        want = jax.grad(ref_loss, argnums)(*[jnp.asarray(p) for p in params])
        got64 = jax.jit(jax.grad(impl_loss, argnums))(*[jnp.asarray(p) for p in params])
    got32 = jax.jit(jax.grad(impl_loss, argnums))(*_f32(*params))
    errs32 = []
    for i, (w, g64, g32) in enumerate(zip(want, got64, got32)):
        assert np.max(np.abs(np.asarray(w))) > 0, f"{what}: zero reference gradient {i}"
        assert_rel_close(g64, w, RTOL_F64, f"{what}: float64 grad {i}")
        errs32.append(rel_err(g32, w))
    return max(errs32)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("impl", VANDERMONDE_IMPLS)
def test_vandermonde_grads(rng, method, impl):
    h, m, length = 2, 3, 37
    Lambda, B, C, step = _diag_system(rng, h, m)
    W = rng.standard_normal((h, length))
    params = [Lambda.real, Lambda.imag, B.real, B.imag, C.real, C.imag, step]

    def impl_loss(lr, li, br, bi, cr, ci, s):
        K = sk.vandermonde_kernel(lr + 1j * li, br + 1j * bi, cr + 1j * ci, s, length, method, impl=impl)
        return jnp.sum(K * W)

    def ref_loss(lr, li, br, bi, cr, ci, s):
        return jnp.sum(ref.s4d_kernel(jnp, lr + 1j * li, br + 1j * bi, cr + 1j * ci, s, length, method) * W)

    assert _grad_check(impl_loss, ref_loss, params, method) <= RTOL_GRAD


# ------------------------------------------------------------------------ DPLR


def _dplr_system(rng, h, m, rank=1):
    Lambda, B, C, step = _diag_system(rng, h, m)
    P = 0.5 * _crandn(rng, rank, h, m)
    return Lambda, P, B, C, step


@pytest.mark.parametrize("length", LENGTHS)
def test_dplr_matches_recurrence(rng, length):
    Lambda, P, B, C, step = _dplr_system(rng, 3, 4)
    want = ref.dplr_kernel(np, Lambda, P, B, C, step, length)
    with jax.enable_x64(True):
        got = _dplr_from_c(Lambda, P[0], B, C, step, length)
        assert got.dtype == jnp.float64 and got.shape == (3, length)
        assert_rel_close(got, want, RTOL_DPLR_F64, "float64")
    got = _dplr_from_c(*_f32(Lambda, P[0], B, C, step), length)
    assert got.dtype == jnp.float32
    assert_rel_close(got, want, RTOL_DPLR_F32, "float32")


@pytest.mark.parametrize("length", [7, 64])
def test_dplr_rank2_with_q(rng, length):
    """Rank 2 and ``Q != P`` (the general NPLR form ``Λ - P Q*``)."""
    Lambda, P, B, C, step = _dplr_system(rng, 2, 3, rank=2)
    Q = P + 0.1 * _crandn(rng, *P.shape)
    want = ref.dplr_kernel(np, Lambda, P, B, C, step, length, Q=Q)
    with jax.enable_x64(True):
        assert_rel_close(_dplr_from_c(Lambda, P, B, C, step, length, Q=Q), want, RTOL_DPLR_F64, "rank 2")


@pytest.mark.parametrize("length", LENGTHS)
def test_dplr_legs_equals_hippo_dense(rng, length):
    """S4-LegS from the NPLR form equals the real HiPPO-LegS system, unrolled."""
    n, h = 16, 2
    Lambda, P, B, V = hippo.nplr_legs(n, conj_sym=True)
    A, B_legs = hippo.hippo_legs(n)
    C_real = rng.standard_normal((h, n))
    C = C_real @ V  # row convention: y = C_real x = (C_real V_full) x̃
    step = np.array([0.01, 0.1])
    want = ref.dense_kernel(np, A, np.broadcast_to(B_legs, (h, n)), C_real, step, length, "bilinear")
    # The dense system rebuilt from the NPLR form is the same system.
    nplr_dense = ref.dplr_kernel(np, np.broadcast_to(Lambda, (h, n // 2)), np.broadcast_to(P, (1, h, n // 2)),
                                 np.broadcast_to(B, (h, n // 2)), C, step, length)
    assert_rel_close(nplr_dense, want, 1e-10, "NPLR dense vs HiPPO dense")
    with jax.enable_x64(True):
        assert_rel_close(_dplr_from_c(Lambda, P, B, C, step, length), want, RTOL_DPLR_F64, "float64")
    got = _dplr_from_c(*_f32(Lambda, P, B, C, step), length)
    assert_rel_close(got, want, RTOL_DPLR_F32, "float32")


def test_c_tilde_against_reference_and_inverse(rng):
    Lambda, P, B, C, step = _dplr_system(rng, 2, 3)
    length = 13
    want = ref.c_tilde(np, Lambda, P, C, step, length)
    m = Lambda.shape[1]
    # The full-mode C̃ is conjugate symmetric, so its first half says it all.
    assert_rel_close(want[:, m:], np.conj(want[:, :m]), 1e-12, "reference symmetry")
    with jax.enable_x64(True):
        Ct = sk.dplr_c_tilde(Lambda, P[0], C, step, length)
        assert_rel_close(Ct, want[:, :m], RTOL_F64, "c_tilde")
        back = sk.dplr_c_tilde(Lambda, P[0], Ct, step, length, inverse=True)
        assert_rel_close(back, C, RTOL_F64, "inverse")


def test_dplr_grads(rng):
    h, m, length = 2, 3, 37
    Lambda, P, B, Ct, step = _dplr_system(rng, h, m)
    W = rng.standard_normal((h, length))
    params = [Lambda.real, Lambda.imag, P[0].real, P[0].imag, B.real, B.imag, Ct.real, Ct.imag, step]

    def impl_loss(lr, li, pr, pi, br, bi, cr, ci, s):
        K = sk.dplr_kernel(lr + 1j * li, pr + 1j * pi, br + 1j * bi, cr + 1j * ci, s, length)
        return jnp.sum(K * W)

    def ref_loss(lr, li, pr, pi, br, bi, cr, ci, s):
        K = ref.dplr_kernel(jnp, lr + 1j * li, (pr + 1j * pi)[None], br + 1j * bi, cr + 1j * ci, s, length,
                            c_is_tilde=True)
        return jnp.sum(K * W)

    assert _grad_check(impl_loss, ref_loss, params, "dplr") <= RTOL_DPLR_GRAD


def test_dplr_grads_through_c_tilde(rng):
    """Gradients wrt the plain C (and Λ, P, Δ) through dplr_c_tilde."""
    h, m, length = 2, 3, 13
    Lambda, P, B, C, step = _dplr_system(rng, h, m)
    W = rng.standard_normal((h, length))
    params = [Lambda.real, Lambda.imag, P[0].real, P[0].imag, C.real, C.imag, step]

    def impl_loss(lr, li, pr, pi, cr, ci, s):
        lam, p = lr + 1j * li, pr + 1j * pi
        K = sk.dplr_kernel(lam, p, B, sk.dplr_c_tilde(lam, p, cr + 1j * ci, s, length), s, length)
        return jnp.sum(K * W)

    def ref_loss(lr, li, pr, pi, cr, ci, s):
        return jnp.sum(ref.dplr_kernel(jnp, lr + 1j * li, (pr + 1j * pi)[None], B, cr + 1j * ci, s, length) * W)

    assert _grad_check(impl_loss, ref_loss, params, "dplr via C") <= RTOL_DPLR_GRAD


# ---------------------------------------------------------- Cauchy and Krylov


def test_cauchy(rng):
    v, lam = _crandn(rng, 5), _crandn(rng, 5) - 3.0
    omega = np.exp(-2j * np.pi * np.arange(9) / 9)
    want = ref.cauchy(np, v, omega, lam)
    with jax.enable_x64(True):
        assert_rel_close(sk.cauchy(v, omega, lam), want, RTOL_F64, "cauchy float64")
        # Broadcast form: several weight vectors sharing nodes and poles.
        V = _crandn(rng, 3, 5)
        got = sk.cauchy(V, omega[None], lam[None])
        for j in range(3):
            assert_rel_close(got[j], ref.cauchy(np, V[j], omega, lam), RTOL_F64, "cauchy batched")
    assert_rel_close(sk.cauchy(*_f32(v, omega, lam)), want, 1e-5, "cauchy float32")


@pytest.mark.parametrize("length", LENGTHS)
def test_krylov_kernel(rng, length):
    n, h = 6, 2
    A, _ = hippo.hippo_legs(n)
    B, C = rng.standard_normal((h, n)), rng.standard_normal((h, n))
    step = np.array([0.05, 0.2])
    want = ref.dense_kernel(np, A, B, C, step, length, "bilinear")
    Abar = np.stack([ref.discretize_dense(np, A, B[c], step[c], "bilinear")[0] for c in range(h)])
    Bbar = np.stack([ref.discretize_dense(np, A, B[c], step[c], "bilinear")[1] for c in range(h)])
    with jax.enable_x64(True):
        assert_rel_close(_krylov(Abar, Bbar, C, length), want, RTOL_F64, "float64")
    assert_rel_close(_krylov(*_f32(Abar, Bbar, C), length), want, RTOL_SCAN, "float32")


# ---------------------------------------------------------------- misc checks


def test_no_retrace(rng):
    chex.clear_trace_counter()
    Lambda, P, B, C, step = _dplr_system(rng, 2, 3)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def kernels(lam, p, b, c, s):
        return sk.dplr_kernel(lam, p, b, c, s, 16), sk.vandermonde_kernel(lam, b, c, s, 16)

    args = _f32(Lambda, P[0], B, C, step)
    kernels(*args)
    kernels(*[a + 0.01 for a in args])  # same shapes, new values: no new trace


def test_errors():
    lam = jnp.ones((2, 3), jnp.complex64)
    with pytest.raises(ValueError, match="method"):
        sk.vandermonde_kernel(lam, lam, lam, jnp.ones(2), 4, method="euler")
    with pytest.raises(ValueError, match="impl"):
        sk.vandermonde_kernel(lam, lam, lam, jnp.ones(2), 4, impl="pallas")
    with pytest.raises(ValueError, match="C"):
        sk.vandermonde_kernel(lam, lam, jnp.ones((2, 4), jnp.complex64), jnp.ones(2), 4)
    with pytest.raises(ValueError, match="channel"):
        sk.vandermonde_kernel(lam, lam, lam, jnp.ones(5), 4)
    with pytest.raises(ValueError, match="length"):
        sk.dplr_kernel(lam, lam, lam, lam, jnp.ones(2), 0)
    with pytest.raises(ValueError, match="P"):
        sk.dplr_kernel(lam, jnp.ones((2, 2, 2)), lam, lam, jnp.ones(2), 4)
    with pytest.raises(ValueError, match="A must"):
        sk.discretize_dense(jnp.ones((3, 4)), jnp.ones(4), 0.1)
