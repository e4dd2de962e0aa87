"""LRU mixer: ring init, float64 loop reference, gradients, and the mixer contract."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.lru  # noqa: F401  (registers "lru")
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_lru_s5 import lru_reference, params_of
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL  # 2e-4, float32 mixers


def _segments(rng, batch, length):
    # Random contiguous segments; ids repeat non-contiguously (cumsum % 3).
    return np.cumsum(rng.random((batch, length)) < 0.25, axis=1) % 3


def _lru(**kw):
    kw.setdefault("d_state", 16)
    return get("lru")(**kw)


def _lambda(p):
    return np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))


def test_default_construction(rng):
    m = get("lru")()
    x = harness.random_input(rng, 2, 13, 16)
    v = harness.init(m, x)
    y = m.apply(v, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))
    p = params_of(v)
    assert p["nu_log"].shape == (64,) and p["B_re"].shape == (64, 16)
    # The recurrence contributes, not only the D u skip.
    assert rel_err(y, p["D"] * np.asarray(x)) > 0.05


@pytest.mark.parametrize(
    "r_min, r_max, max_phase", [(0.9, 0.999, 2 * math.pi), (0.1, 0.95, math.pi / 10)]
)
def test_ring_init(rng, r_min, r_max, max_phase):
    n, d = 4096, 8
    m = get("lru")(d_state=n, r_min=r_min, r_max=r_max, max_phase=max_phase)
    p = params_of(harness.init(m, harness.random_input(rng, 1, 3, d), seed=3))
    lam = _lambda(p)
    radius, phase = np.abs(lam), np.exp(p["theta_log"])
    eps = 1e-5
    assert radius.min() >= r_min - eps and radius.max() <= r_max + eps
    assert phase.min() >= 0 and phase.max() <= max_phase * (1 + eps)
    # λ is uniform on the ring's *area*: |λ|² is uniform on [r_min², r_max²].
    # (|λ| uniform on [r_min, r_max] would put ~0.56-0.71 of the mass below.)
    mid = (r_min**2 + r_max**2) / 2
    assert abs(np.mean(radius**2 < mid) - 0.5) < 0.04
    # The phases fill [0, max_phase] uniformly.
    assert abs(np.mean(phase < max_phase / 2) - 0.5) < 0.04
    # γ = sqrt(1 - |λ|²) normalisation.
    np.testing.assert_allclose(np.exp(p["gamma_log"]), np.sqrt(1 - radius**2), rtol=1e-4)
    # B parts ~ N(0, 1/(2d)), C parts ~ N(0, 1/N), D ~ N(0, 1) (Appendix A).
    for name, std in [("B_re", 1 / math.sqrt(2 * d)), ("B_im", 1 / math.sqrt(2 * d)),
                      ("C_re", 1 / math.sqrt(n)), ("C_im", 1 / math.sqrt(n))]:
        assert abs(p[name].std() / std - 1) < 0.05, name


@pytest.mark.parametrize("scan_impl", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("length", [1, 7, 37])
def test_matches_reference_float32(rng, scan_impl, length):
    m = _lru(scan_impl=scan_impl, r_min=0.5)
    x = harness.random_input(rng, 2, length, 16)
    v = harness.init(m, x)
    seg = _segments(rng, 2, length)
    p = params_of(v)
    y = m.apply(v, x)
    assert_rel_close(y, lru_reference(p, np.asarray(x, np.float64)), RTOL, "lru f32")
    y = m.apply(v, x, segment_ids=jnp.asarray(seg))
    assert_rel_close(y, lru_reference(p, np.asarray(x, np.float64), seg), RTOL, "lru f32 segments")


@pytest.mark.parametrize("scan_impl", ["sequential", "associative"])
def test_float64_exact(rng, scan_impl):
    x = rng.standard_normal((2, 13, 16))
    seg = _segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = _lru(dtype=jnp.float64, scan_impl=scan_impl)
        v = harness.init(m, jnp.asarray(x))
        y = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
        M = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        y_m = m.apply(v, jnp.asarray(x), M, method="apply_mixing_matrix")
    y_ref = lru_reference(params_of(v), x, seg)
    assert_rel_close(y, y_ref, RTOL_F64, "lru f64 scan")
    assert_rel_close(y_m, y_ref, RTOL_F64, "lru f64 mixing matrix")


def _grads(m, variables, x, w, seg):
    def loss(p, x):
        return jnp.sum(m.apply({"params": p}, x, segment_ids=seg) * w)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)


def _ref_grads(p, x, w, seg):
    def loss(p, x):
        return jnp.sum(lru_reference(p, x, seg, xp=jnp) * w)

    # jit: the loop reference traced once instead of dispatched op by op.
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(p, x)


def test_gradients(rng):
    x = rng.standard_normal((2, 13, 16))
    w = rng.standard_normal((2, 13, 16))
    seg = _segments(rng, 2, 13)
    m32 = _lru(d_state=8, r_min=0.6)
    v = nn.meta.unbox(harness.init(m32, jnp.float32(x)))
    g32 = _grads(m32, v, jnp.float32(x), jnp.float32(w), jnp.asarray(seg))
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(a) for k, a in params_of(v).items()}
        g_ref = _ref_grads(p64, jnp.asarray(x), jnp.asarray(w), seg)
        m64 = _lru(d_state=8, r_min=0.6, dtype=jnp.float64)
        g64 = _grads(m64, {"params": p64}, jnp.asarray(x), jnp.asarray(w), jnp.asarray(seg))
    for k in g_ref[0]:
        assert_rel_close(g64[0][k], g_ref[0][k], RTOL_F64, f"f64 d{k}")
        assert_rel_close(g32[0][k], g_ref[0][k], RTOL_GRAD, f"f32 d{k}")
    assert_rel_close(g64[1], g_ref[1], RTOL_F64, "f64 dx")
    assert_rel_close(g32[1], g_ref[1], RTOL_GRAD, "f32 dx")


def test_step_matches_parallel(rng):
    m = _lru()
    x = harness.random_input(rng, 2, 13, 16)
    harness.check_step_matches_parallel(m, harness.init(m, x), x)


def test_step_infers_width_and_uses_d_model(rng):
    x = harness.random_input(rng, 2, 13, 16)
    for m in (_lru(), _lru(d_model=16)):
        v = harness.init(m, x)
        cache = m.apply(v, 2, method="init_cache")
        assert cache["h"].shape == (2, 16) and cache["h"].dtype == jnp.complex64
        y_t, _ = m.apply(v, x[:, 0], cache, method="step")
        assert_rel_close(y_t, m.apply(v, x)[:, 0], RTOL, "first step")


def test_causal(rng):
    m = _lru()
    x = harness.random_input(rng, 2, 13, 16)
    harness.check_causal(m, harness.init(m, x), x, rng)


def test_segments(rng):
    m = _lru()
    x = harness.random_input(rng, 1, 16, 16)
    harness.check_segments(m, harness.init(m, x), rng)


def test_mixing_matrix(rng):
    m = _lru(r_min=0.5)
    x = harness.random_input(rng, 2, 13, 16)
    v = harness.init(m, x)
    M = harness.check_mixing_matrix(m, v, x, causal=True)
    assert M.shape == (2, 16, 13, 13)
    # Entries are the powers of λ, computed independently here.
    lam = _lambda(params_of(v))
    t, s = 7, 3
    np.testing.assert_allclose(np.asarray(M[1, :, t, s]), lam ** (t - s), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(M[0, :, t, t]), np.ones(16), rtol=1e-6)
    # With segments: no weight across a boundary, and the dense path still matches.
    seg = jnp.asarray([[0] * 4 + [1] * 9, [2] * 6 + [0] * 7])
    M = m.apply(v, x, segment_ids=seg, method="mixing_matrix")
    assert np.abs(np.asarray(M[0, :, 4:, :4])).max() == 0.0
    assert np.abs(np.asarray(M[0, :, 5, 4])).min() > 0.0
    y_m = m.apply(v, x, M, method="apply_mixing_matrix")
    assert_rel_close(y_m, m.apply(v, x, segment_ids=seg), RTOL, "mixing matrix with segments")


def test_bfloat16(rng):
    x = harness.random_input(rng, 2, 13, 16)
    m32, m16 = _lru(), _lru(dtype=jnp.bfloat16)
    v = harness.init(m32, x)
    y16 = m16.apply(v, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    assert rel_err(y16.astype(jnp.float32), m32.apply(v, x)) < 3e-2
    cache = m16.apply(v, 2, method="init_cache")
    y_t, cache = m16.apply(v, x[:, 0].astype(jnp.bfloat16), cache, method="step")
    assert y_t.dtype == jnp.bfloat16 and cache["h"].dtype == jnp.complex64


def test_state_size():
    assert get("lru")().apply({}, None, method="state_size") == 64 * 8
    assert _lru(d_state=24).apply({}, 1000, method="state_size") == 24 * 8


def test_no_retrace(rng):
    m = _lru()
    x = harness.random_input(rng, 2, 13, 16)
    v = harness.init(m, x)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(v, x):
        return m.apply(v, x)

    f(v, x)
    f(v, x + 1.0)


def test_bad_arguments(rng):
    x = harness.random_input(rng, 2, 5, 8)
    v = harness.init(_lru(), x)
    with pytest.raises(ValueError, match="batch, length, d_model"):
        _lru().apply(v, x[0])
    with pytest.raises(ValueError, match="d_model=6"):
        _lru(d_model=6).apply(v, x)
    with pytest.raises(ValueError, match="segment_ids"):
        _lru().apply(v, x, segment_ids=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="r_min"):
        harness.init(_lru(r_min=0.99, r_max=0.9), x)
    with pytest.raises(ValueError, match="'sequential'"):
        harness.init(_lru(scan_impl="fast"), x)
