"""Mamba-2 and Hydra: float64 loop references, closed-form matrices and init.

The contract (step, causality, segments, bfloat16, ...) is checked for every
mixer in ``test_contract.py``.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.hydra  # noqa: F401  (registers "hydra")
import seqjax.mixers.mamba2  # noqa: F401  (registers "mamba2")
from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_mamba import (
    hydra_matrix, hydra_reference, mamba2_matrix, mamba2_reference, params_of, perturb, segments, setup)
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL  # 2e-4, float32 mixers


def _mamba2(**kw):
    kw.setdefault("headdim", 8)  # 4 heads at d_model 16
    kw.setdefault("d_state", 8)
    return get("mamba2")(**kw)


def _hydra(**kw):
    kw.setdefault("headdim", 8)
    kw.setdefault("d_state", 8)
    return get("hydra")(**kw)


def _reference(name, m, p, x, seg=None, xp=np):
    if name == "mamba2":
        return mamba2_reference(p, x, m.ngroups, seg, xp=xp)
    return hydra_reference(p, x, m.ngroups, m.diag_proj, seg, xp=xp)


def _dt_is_log_uniform(dt_bias):
    dt = np.log1p(np.exp(dt_bias))
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)
    assert abs(np.mean(dt < 1e-2) - 0.5) < 0.08
    assert abs(np.mean(np.log(dt)) - math.log(1e-2)) < 0.25


# --- shared by both -----------------------------------------------------------


@pytest.mark.parametrize("name", ["mamba2", "hydra"])
def test_default_construction(rng, name):
    m, x, v, y = harness.default_run(name, rng)
    p = params_of(v)
    # d_inner 32 -> headdim 32 (largest divisor <= 64): one head; d_state 64.
    assert p["A_log"].shape == (1,) and p["norm"].shape == (32,)
    groups_of_bc = 2 if name == "mamba2" else 4
    assert p["conv_weight"].shape == ({"mamba2": 4, "hydra": 7}[name], 32 + groups_of_bc * 64)
    assert_rel_close(y, _reference(name, m, p, np.asarray(x, np.float64)), RTOL, f"default {name}")


def test_init():
    # Many heads (headdim 1) so that the distributions can be checked.
    # Parameters only (no forward pass): init through the parameter method.
    def params(m, seed):
        return params_of(m.init(jax.random.PRNGKey(seed), 256, method=lambda mod, d: mod.parts(d)))

    p = params(_mamba2(headdim=1, d_state=1), 3)
    A = np.exp(p["A_log"])  # 512 heads, A = -exp(A_log) ~ -U[1, 16]
    assert A.min() >= 1 - 1e-5 and A.max() <= 16 + 1e-4
    assert abs(A.mean() - 8.5) < 0.6 and abs(np.mean(A < 8.5) - 0.5) < 0.08
    _dt_is_log_uniform(p["dt_bias"])
    np.testing.assert_array_equal(p["D"], np.ones(512))
    np.testing.assert_array_equal(p["norm"], np.ones(512))
    assert np.abs(p["conv_weight"]).max() <= 0.5
    # Hydra: A = -1 exactly (A_log = 0), D = 1, the same dt init, a 7-tap conv.
    p = params(_hydra(headdim=1, d_state=1), 4)
    np.testing.assert_array_equal(p["A_log"], np.zeros(512))
    np.testing.assert_array_equal(p["D"], np.ones(512))
    _dt_is_log_uniform(p["dt_bias"])
    assert p["conv_weight"].shape == (7, 512 + 4) and np.abs(p["conv_weight"]).max() <= 7**-0.5


@pytest.mark.parametrize(
    "name, impl, length, ngroups",
    [
        ("mamba2", "chunked", 37, 2),
        ("mamba2", "sequential", 1, 4),
        ("hydra", "chunked", 37, 2),
        ("hydra", "sequential", 1, 1),
    ],
)
def test_matches_reference_float32(rng, name, impl, length, ngroups):
    make = _mamba2 if name == "mamba2" else _hydra
    m = make(ngroups=ngroups, impl=impl, chunk_size=8)
    x, v = setup(rng, m, 2, length, 16)
    p = params_of(v)
    x64 = np.asarray(x, np.float64)
    run = jax.jit(m.apply)
    assert_rel_close(run(v, x), _reference(name, m, p, x64), RTOL, f"{name} f32")
    seg = segments(rng, 2, length)
    y = run(v, x, segment_ids=jnp.asarray(seg))
    assert_rel_close(y, _reference(name, m, p, x64, seg), RTOL, f"{name} f32 segments")


@pytest.mark.parametrize("name", ["mamba2", "hydra"])
def test_float64_exact(rng, name):
    x = rng.standard_normal((2, 13, 16))
    seg = segments(rng, 2, 13)
    make = _mamba2 if name == "mamba2" else _hydra
    with jax.enable_x64(True):
        m = make(ngroups=2, dtype=jnp.float64, chunk_size=4)
        v = perturb(harness.jit_init(m, jnp.asarray(x)), rng)
        y = jax.jit(m.apply)(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
        y_ref = _reference(name, m, params_of(v), x, seg)
        assert_rel_close(y, y_ref, RTOL_F64, f"{name} f64 ssd")
        if name == "hydra":  # the two-sided matrix is exact too

            @jax.jit
            def dense_path(v, x, seg):
                M = m.apply(v, x, segment_ids=seg, method="mixing_matrix")
                return m.apply(v, x, M, segment_ids=seg, method="apply_mixing_matrix")

            y_m = dense_path(v, jnp.asarray(x), jnp.asarray(seg))
            assert_rel_close(y_m, y_ref, RTOL_F64, f"{name} f64 mixing matrix")


@pytest.mark.parametrize("name", ["mamba2", "hydra"])
def test_gradients(rng, name):
    # Short: the unrolled float64 loop reference dominates the compile time.
    x = rng.standard_normal((2, 6, 16))
    w = rng.standard_normal((2, 6, 16))
    seg = np.array([[0, 0, 1, 1, 1, 2], [3, 3, 3, 3, 0, 0]])
    make = _mamba2 if name == "mamba2" else _hydra
    m = make(ngroups=2, d_state=4, chunk_size=4)
    v = nn.meta.unbox(perturb(harness.jit_init(m, jnp.float32(x)), rng))

    def loss(params, x):
        return jnp.sum(m.apply({"params": params}, x, segment_ids=jnp.asarray(seg)) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], jnp.float32(x))
    with jax.enable_x64(True):

        def ref_loss(p, x):
            return jnp.sum(_reference(name, m, p, x, seg, xp=jnp) * w)

        # jit: the loop reference compiled once beats op-by-op float64 dispatch here.
        r_p, r_x = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(params_of(v, xp=jnp), jnp.asarray(x))
    g_p = params_of({"params": g_p})
    assert set(g_p) == set(r_p)
    for k in r_p:
        assert_rel_close(g_p[k], r_p[k], RTOL_GRAD, f"{name}: d{k}")
    assert_rel_close(g_x, r_x, RTOL_GRAD, f"{name}: dx")


# --- the matrices -------------------------------------------------------------


@pytest.mark.parametrize("name", ["mamba2", "hydra"])
def test_matrix_is_the_closed_form(rng, name):
    """The matrix read off the SSDs equals the papers' closed form (SSD matrix + D; Hydra's quasiseparable one)."""
    m = (_mamba2 if name == "mamba2" else _hydra)(ngroups=2)
    x, v = setup(rng, m)
    seg = segments(rng, 2, 13)
    M = harness.Jitted(m).apply(v, x, segment_ids=jnp.asarray(seg), method="mixing_matrix")
    assert M.shape == (2, 4, 13, 13)
    p, x64 = params_of(v), np.asarray(x, np.float64)
    want = mamba2_matrix(p, x64, 2, seg) if name == "mamba2" else hydra_matrix(p, x64, 2, True, seg)
    assert_rel_close(M, want, RTOL, f"{name} matrix vs closed form")
    # Input-dependent (selective).
    assert rel_err(harness.Jitted(m).apply(v, harness.random_input(rng, 2, 13, 16), method="mixing_matrix"), M) > 1e-2


# --- Hydra --------------------------------------------------------------------


def test_hydra_mixing_matrix_is_two_sided(rng):
    m = _hydra(ngroups=2)
    x, v = setup(rng, m)
    J = harness.Jitted(m)
    M = np.asarray(J.apply(v, x, method="mixing_matrix"))
    assert M.shape == (2, 4, 13, 13)
    # Quasiseparable: weight strictly below AND strictly above the diagonal.
    assert np.abs(np.tril(M, -1)).max() > 1e-3 and np.abs(np.triu(M, 1)).max() > 1e-3
    # With segments: zero across boundaries in both directions (that the dense
    # path then equals the SSDs is checked in float64 by test_float64_exact).
    seg = jnp.asarray([[0] * 4 + [1] * 9, [2] * 6 + [0] * 7])
    Ms = np.asarray(J.apply(v, x, segment_ids=seg, method="mixing_matrix"))
    assert np.abs(Ms[0, :, 4:, :4]).max() == 0.0 and np.abs(Ms[0, :, :4, 4:]).max() == 0.0
    assert np.abs(Ms[1, :, 6:, :6]).max() == 0.0 and np.abs(Ms[1, :, :6, 6:]).max() == 0.0
    assert np.abs(Ms[0, :, 5, 4]).min() > 0.0 and np.abs(Ms[0, :, 4, 5]).min() > 0.0
    # Without W_D the diagonal is exactly the learned D (the shifts keep off it).
    m_plain = _hydra(diag_proj=False)
    x, v = setup(rng, m_plain)
    M = np.asarray(jax.jit(lambda v, x: m_plain.apply(v, x, method="mixing_matrix"))(v, x))
    D = params_of(v)["D"]
    np.testing.assert_allclose(np.diagonal(M, axis1=-2, axis2=-1), np.broadcast_to(D[:, None], (2, 4, 13)), rtol=1e-5)


def test_hydra_is_bidirectional(rng):
    m = _hydra()
    x, v = setup(rng, m)
    x2 = np.array(x)
    x2[:, 7:] = rng.standard_normal(x2[:, 7:].shape)
    run = jax.jit(m.apply)
    y1, y2 = run(v, x), run(v, jnp.asarray(x2))
    # Past outputs see the future (and through the backward SSD, not only the
    # 3-tap look-ahead of the centered conv: position 0 is 7 steps away).
    assert rel_err(y2[:, :1], y1[:, :1]) > 1e-3
    with pytest.raises(ValueError, match="not causal"):
        m.apply(v, 2, method="init_cache")


def test_hydra_state_size():
    # The centered conv's 6 positions of 32 + 4·8 channels and two SSD carries.
    assert _hydra(d_model=16).apply({}, None, method="state_size") == 6 * 64 * 4 + 2 * 4 * 8 * 8 * 4


# --- sizes and errors ----------------------------------------------------------


def test_config_errors(rng):
    x = harness.random_input(rng, 1, 4, 16)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ConfigError, match=r"^mamba2\.headdim=5 must divide"):
        _mamba2(headdim=5, d_model=16)
    with pytest.raises(ConfigError, match=r"^mamba2\.headdim=5 must divide"):
        _mamba2(headdim=5).init(key, x)  # width from the input
    with pytest.raises(ConfigError, match=r"^mamba2\.ngroups=3 must divide"):
        _mamba2(ngroups=3, d_model=16)
    with pytest.raises(ConfigError, match=r"^mamba2\.impl='flash'.*allowed: auto, reference, sequential, chunked"):
        _mamba2(impl="flash")
    with pytest.raises(ConfigError, match=r"^hydra\.d_conv=4 must be odd"):
        _hydra(d_conv=4)
    with pytest.raises(ConfigError, match=r"^hydra\.A_init_range=\(0.0, 1.0\)"):
        _hydra(A_init_range=(0.0, 1.0))
    m = _mamba2()
    v = harness.jit_init(m, x)
    with pytest.raises(ValueError, match="x_t"):
        m.apply(v, x, m.apply(v, 1, method="init_cache"), method="step")
    with pytest.raises(ValueError, match="M must"):
        m.apply(v, x, jnp.zeros((1, 3, 5, 5)), method="apply_mixing_matrix")
