"""LRU mixer: ring init, float64 loop reference and closed-form matrix, gradients, field checks.

The contract (step, causality, segments, mixing matrix vs fast path,
bfloat16, ...) is checked for every mixer in ``test_contract.py``.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.lru  # noqa: F401  (registers "lru")
from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_lru_s5 import lru_matrix, lru_reference, params_of
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


@pytest.mark.parametrize("impl", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("length", [1, 7, 37])
def test_matches_reference_float32(rng, impl, length):
    m = _lru(impl=impl, r_min=0.5)
    x = harness.random_input(rng, 2, length, 16)
    v = harness.init(m, x)
    seg = _segments(rng, 2, length)
    p = params_of(v)
    x64 = np.asarray(x, np.float64)
    y_ref = lru_reference(p, x64)
    assert rel_err(y_ref, p["D"] * x64) > 0.05  # the recurrence contributes, not only the D u skip
    assert_rel_close(m.apply(v, x), y_ref, RTOL, "lru f32")
    y = m.apply(v, x, segment_ids=jnp.asarray(seg))
    assert_rel_close(y, lru_reference(p, x64, seg), RTOL, "lru f32 segments")


@pytest.mark.parametrize("impl", ["sequential", "associative"])
def test_float64_exact(rng, impl):
    x = rng.standard_normal((2, 13, 16))
    seg = _segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = _lru(dtype=jnp.float64, impl=impl)
        v = harness.init(m, jnp.asarray(x))
        y = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
        M = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        y_m = m.apply(v, jnp.asarray(x), M, method="apply_mixing_matrix")
    y_ref = lru_reference(params_of(v), x, seg)
    assert_rel_close(y, y_ref, RTOL_F64, "lru f64 scan")
    assert_rel_close(y_m, y_ref, RTOL_F64, "lru f64 mixing matrix")


def test_matrix_is_the_closed_form(rng):
    """The matrix read off the scan is λ_n^(t-s) per mode (zero across segments), float64 oracle."""
    m = _lru(r_min=0.5)
    x = harness.random_input(rng, 2, 13, 16)
    v = harness.perturb(harness.jit_init(m, x), rng)
    matrix = jax.jit(lambda v, x, seg: m.apply(v, x, segment_ids=seg, method="mixing_matrix"))
    for seg in (None, _segments(rng, 2, 13)):
        M = matrix(v, x, None if seg is None else jnp.asarray(seg))
        assert M.shape == (2, 16, 13, 13) and jnp.iscomplexobj(M)
        assert_rel_close(M, lru_matrix(params_of(v), np.asarray(x, np.float64), seg), RTOL,
                         f"lru matrix vs closed form, segments={seg is not None}")


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


def test_state_size_needs_no_width():
    # d_state complex64 numbers, whatever the width (no parameters, no d_model).
    assert get("lru")().apply({}, None, method="state_size") == 64 * 8
    assert _lru(d_state=24).apply({}, 1000, method="state_size") == 24 * 8


@pytest.mark.parametrize("kw, match", [
    (dict(r_min=0.99, r_max=0.9), r"^lru\.r_min=0.99 must be <= lru\.r_max=0.9"),
    (dict(r_min=-0.1), r"^lru\.r_min=-0.1 must be a number >= 0.0 and <= 1.0"),
    (dict(max_phase=0.0), r"^lru\.max_phase=0.0 must be a number > 0.0"),
    (dict(d_state=0), r"^lru\.d_state=0 must be an int >= 1"),
    (dict(impl="fast"), r"^lru\.impl='fast' is not an implementation of linear_scan; "
                        r"allowed: auto, sequential, associative, chunked"),
])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        _lru(**kw)
