"""S5 mixer: HiPPO-LegS init, discretisation, float64 loop reference and closed-form matrix, gradients.

The contract (step, causality, segments, mixing matrix vs fast path,
bfloat16, ...) is checked for every mixer in ``test_contract.py``; the
causal/bidirectional switch in ``test_s4.py`` (``test_one_switch``).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.s5  # noqa: F401  (registers "s5")
from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_lru_s5 import params_of, s5_matrix, s5_reference
from tests.mixers.ref_s4 import legs_closed_form
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL  # 2e-4, float32 mixers


def _segments(rng, batch, length):
    # Random contiguous segments; ids repeat non-contiguously (cumsum % 3).
    return np.cumsum(rng.random((batch, length)) < 0.25, axis=1) % 3


def _s5(**kw):
    # Larger steps than the default [0.001, 0.1] so that the SSM part of the
    # output is not swamped by the D u skip (tests would then see little of it).
    kw.setdefault("d_state", 16)
    kw.setdefault("dt_min", 0.05)
    kw.setdefault("dt_max", 0.5)
    return get("s5")(**kw)


def _legs_normal_eigs(n):
    """Eigenvalues of S = A + p pᵀ, from HiPPO-LegS's closed form."""
    A, _ = legs_closed_form(n)
    p = np.sqrt(np.arange(n) + 0.5)
    return np.linalg.eigvals(A + np.outer(p, p))


@pytest.mark.parametrize("d_state, blocks", [(16, 1), (24, 2), (64, 4)])
def test_init_lambda_is_legs_normal_spectrum(rng, d_state, blocks):
    m = get("s5")(d_state=d_state, blocks=blocks)
    p = params_of(harness.init(m, harness.random_input(rng, 1, 3, 16)))
    lam = p["Lambda_re"] + 1j * p["Lambda_im"]
    eig = _legs_normal_eigs(d_state // blocks)
    np.testing.assert_allclose(eig.real, -0.5, atol=1e-9)  # S is -I/2 + skew
    # Conjugate symmetry: the stored modes are the positive-imaginary half,
    # once per block.
    expected = np.sort(np.tile(eig[eig.imag > 0].imag, blocks))
    assert lam.shape == (d_state // 2,)
    np.testing.assert_allclose(np.sort(lam.imag), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lam.real, -0.5, rtol=1e-6)


def test_init_steps_and_projections(rng):
    P, H = 512, 16
    m = get("s5")(d_state=P, blocks=8)
    p = params_of(harness.init(m, harness.random_input(rng, 1, 3, H)))
    assert p["B"].shape == (P // 2, H, 2) and p["C"].shape == (H, P // 2, 2)
    step = np.exp(p["log_step"])
    assert step.min() >= 0.001 * (1 - 1e-6) and step.max() <= 0.1 * (1 + 1e-6)
    # log-uniform: half the steps below the geometric mean (uniform: ~9%).
    assert abs(np.mean(step < math.sqrt(0.001 * 0.1)) - 0.5) < 0.12
    # B̃ = V⁻¹ B for a real B with std 1/sqrt(P): rebuild B = 2 Re(V B̃) with
    # eigenvectors computed here (per-mode phases cancel in V B̃).
    block = P // 8
    A = -np.tril(np.outer(np.sqrt(2 * np.arange(block) + 1), np.sqrt(2 * np.arange(block) + 1)), -1)
    A -= np.diag(np.arange(block) + 1.0)
    pp = np.sqrt(np.arange(block) + 0.5)
    w, Vb = np.linalg.eig(A + np.outer(pp, pp))
    lam = p["Lambda_re"] + 1j * p["Lambda_im"]
    B_t = p["B"][..., 0] + 1j * p["B"][..., 1]
    B_rec = np.zeros((P, H))
    for j in range(8):
        for n in range(j * block // 2, (j + 1) * block // 2):
            k = np.argmin(np.abs(w - lam[n]))
            v_k = Vb[:, k] / np.linalg.norm(Vb[:, k])
            B_rec[j * block:(j + 1) * block] += 2 * np.real(np.outer(v_k, B_t[n]))
    assert abs(B_rec.std() / (1 / math.sqrt(P)) - 1) < 0.1
    # C̃ = C V with C's parts of variance 1/P and orthonormal V: E|C̃|² = 2/P.
    C_t = p["C"][..., 0] + 1j * p["C"][..., 1]
    assert abs(np.mean(np.abs(C_t) ** 2) / (2 / P) - 1) < 0.1


def test_discretisation(rng):
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((2, 13, 16)))
        v = harness.init(_s5(dtype=jnp.float64), x)
        got = {
            method: _s5(discretization=method, dtype=jnp.float64).apply(v, method="discrete_ssm")
            for method in ("zoh", "bilinear")
        }
    p = params_of(v)
    lam = p["Lambda_re"] + 1j * p["Lambda_im"]
    delta = np.exp(p["log_step"])
    B_t = p["B"][..., 0] + 1j * p["B"][..., 1]
    # ZOH: Λ̄ = exp(ΛΔ); B̄ = ∫_0^Δ exp(Λτ) dτ B̃, by 40-point Gauss-Legendre.
    nodes, weights = np.polynomial.legendre.leggauss(40)
    tau = (nodes[None] + 1) * delta[:, None] / 2
    integral = (np.exp(lam[:, None] * tau) * weights).sum(1) * delta / 2
    expected = {
        "zoh": (np.exp(lam * delta), integral[:, None] * B_t),
        "bilinear": (
            (1 + delta * lam / 2) / (1 - delta * lam / 2),
            (delta / (1 - delta * lam / 2))[:, None] * B_t,
        ),
    }
    for method, (A_exp, B_exp) in expected.items():
        Abar, Bbar, _ = got[method]
        assert_rel_close(Abar, A_exp, RTOL_F64, f"{method} Lambda_bar")
        assert_rel_close(Bbar, B_exp, 1e-9, f"{method} B_bar")
        assert np.all(np.abs(np.asarray(Abar)) < 1)  # stable: Re Λ = -1/2
    # The field really switches the rule.
    assert rel_err(got["bilinear"][0], got["zoh"][0]) > 1e-3


CASES = [("zoh", False), ("bilinear", False), ("zoh", True), ("bilinear", True)]


@pytest.mark.parametrize("method, bidirectional", CASES)
@pytest.mark.parametrize("length", [1, 37])
def test_matches_reference_float32(rng, method, bidirectional, length):
    m = _s5(discretization=method, bidirectional=bidirectional)
    x = harness.random_input(rng, 2, length, 16)
    v = harness.init(m, x)
    p = params_of(v)
    seg = _segments(rng, 2, length)
    x64 = np.asarray(x, np.float64)
    kw = dict(method=method, bidirectional=bidirectional)
    y_ref = s5_reference(p, x64, **kw)
    assert rel_err(y_ref - p["D"] * x64, y_ref) > 0.05  # the SSM part is visible
    assert_rel_close(m.apply(v, x), y_ref, RTOL, "s5 f32")
    y = m.apply(v, x, segment_ids=jnp.asarray(seg))
    assert_rel_close(y, s5_reference(p, x64, seg, **kw), RTOL, "s5 f32 segments")


def test_scan_impls_and_clip_eigs(rng):
    x = harness.random_input(rng, 2, 13, 16)
    for impl in ("associative",):
        m = _s5(impl=impl, bidirectional=True, clip_eigs=True)
        v = harness.init(m, x)
        p = params_of(v)
        p["Lambda_re"] = p["Lambda_re"] * 0 + 0.3  # clipping must act
        v = {"params": {k: jnp.asarray(a, jnp.float32) for k, a in p.items()}}
        y_ref = s5_reference(p, np.asarray(x, np.float64), bidirectional=True, clip_eigs=True)
        assert_rel_close(m.apply(v, x), y_ref, RTOL, f"s5 {impl} clip_eigs")


@pytest.mark.parametrize("method, bidirectional", [("zoh", False), ("bilinear", True)])
def test_float64_exact(rng, method, bidirectional):
    x = rng.standard_normal((2, 13, 16))
    seg = _segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = _s5(discretization=method, bidirectional=bidirectional, dtype=jnp.float64)
        v = harness.init(m, jnp.asarray(x))
        y = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
        M = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        y_m = m.apply(v, jnp.asarray(x), M, method="apply_mixing_matrix")
    y_ref = s5_reference(params_of(v), x, seg, method=method, bidirectional=bidirectional)
    assert_rel_close(y, y_ref, RTOL_F64, "s5 f64 scan")
    assert_rel_close(y_m, y_ref, RTOL_F64, "s5 f64 mixing matrix")


@pytest.mark.parametrize("method, bidirectional", [("zoh", True)])
def test_gradients(rng, method, bidirectional):
    x = rng.standard_normal((2, 13, 16))
    w = rng.standard_normal((2, 13, 16))
    seg = _segments(rng, 2, 13)
    kw = dict(discretization=method, bidirectional=bidirectional, d_state=8)

    def grads(m, params, x, w):
        def loss(p, x):
            return jnp.sum(m.apply({"params": p}, x, segment_ids=jnp.asarray(seg)) * w)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

    def ref_grads(p, x, w):
        def loss(p, x):
            y = s5_reference(p, x, seg, method=method, bidirectional=bidirectional, xp=jnp)
            return jnp.sum(y * w)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(p, x)

    m32 = _s5(**kw)
    v = nn.meta.unbox(harness.init(m32, jnp.float32(x)))
    g32 = grads(m32, v["params"], jnp.float32(x), jnp.float32(w))
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(a) for k, a in params_of(v).items()}
        g_ref = ref_grads(p64, jnp.asarray(x), jnp.asarray(w))
        g64 = grads(_s5(dtype=jnp.float64, **kw), p64, jnp.asarray(x), jnp.asarray(w))
    for k in g_ref[0]:
        assert_rel_close(g64[0][k], g_ref[0][k], RTOL_F64, f"f64 d{k}")
        assert_rel_close(g32[0][k], g_ref[0][k], RTOL_GRAD, f"f32 d{k}")
    assert_rel_close(g64[1], g_ref[1], RTOL_F64, "f64 dx")
    assert_rel_close(g32[1], g_ref[1], RTOL_GRAD, "f32 dx")


def test_matrix_is_the_closed_form(rng):
    """The matrix read off the scans is Λ̄_n^(t-s) per mode, and the reversed modes' Λ̄_n^(s-t) after them."""
    x = harness.random_input(rng, 2, 13, 16)
    seg = _segments(rng, 2, 13)
    for kw in (dict(), dict(bidirectional=True, discretization="bilinear")):
        m = _s5(**kw)
        v = harness.perturb(harness.jit_init(m, x), rng)
        matrix = jax.jit(lambda v, x, seg: m.apply(v, x, segment_ids=seg, method="mixing_matrix"))
        for ids in (None, seg):
            M = matrix(v, x, None if ids is None else jnp.asarray(ids))
            assert M.shape == (2, 8 * m.directions, 13, 13)
            want = s5_matrix(params_of(v), np.asarray(x, np.float64), ids, method=m.discretization,
                             bidirectional=m.bidirectional)
            assert_rel_close(M, want, RTOL, f"s5 {kw} matrix vs closed form, segments={ids is not None}")


def test_state_size_needs_no_width():
    # d_state/2 complex64 modes (twice: the carries of a bidirectional layer's two scans).
    assert get("s5")().apply({}, None, method="state_size") == 32 * 8
    assert _s5(d_state=24, blocks=2).apply({}, 100, method="state_size") == 12 * 8
    assert _s5(bidirectional=True).apply({}, None, method="state_size") == 2 * 8 * 8


@pytest.mark.parametrize("kw, match", [
    (dict(d_state=16, blocks=3), r"^s5\.blocks=3 must divide d_state=16 into blocks of even size"),
    (dict(d_state=12, blocks=4), r"^s5\.blocks=4 must divide"),  # blocks of 3: odd
    (dict(discretization="euler"), r"^s5\.discretization='euler' is not allowed; allowed: 'zoh', 'bilinear'"),
    (dict(dt_min=0.5, dt_max=0.1), r"^s5\.dt_min=0.5 must be <= s5\.dt_max=0.1"),
    (dict(impl="fast"), r"^s5\.impl='fast' is not an implementation of linear_scan"),
])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        _s5(**kw)
