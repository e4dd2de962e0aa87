"""RetNet (multi-scale retention) and GLA (gated linear attention): float64 references, init, contract."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.retention  # noqa: F401  (registers "retnet", "gla")
from seqjax.mixers import get
from seqjax.mixers.retention import retnet_decays, rotary, segment_positions
from tests.mixers import harness
from tests.mixers.ref_linear_mixers import Jitted, _rotate, gla_reference, params_of, perturb, retnet_reference
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL  # 2e-4, float32 mixers
NAMES = ["retnet", "gla"]


def _get(name):
    """The registered mixer class, constructed wrapped in :class:`Jitted` (apply/init under jit)."""
    return lambda **kwargs: Jitted(get(name)(**kwargs))


def _segments(rng, batch, length):
    # Random contiguous segments whose ids repeat non-contiguously (cumsum % 3).
    return np.cumsum(rng.random((batch, length)) < 0.25, axis=1) % 3


def _setup(rng, m, batch=2, length=13, width=16):
    x = harness.random_input(rng, batch, length, width)
    return x, perturb(harness.init(m, x), rng)


def _reference(m, v, x, segment_ids=None, xp=np, params=None):
    """The float64 loop reference of mixer ``m`` with variables ``v``."""
    p = params_of(v, xp=xp) if params is None else params
    if m.mixer_name == "retnet":
        return retnet_reference(p, x, m.num_heads, eps=m.norm_eps, rope_base=m.rope_base, segment_ids=segment_ids, xp=xp)
    return gla_reference(p, x, m.num_heads, eps=m.norm_eps, temperature=m.gate_temperature, segment_ids=segment_ids, xp=xp)


# --- default construction and the float64 references ------------------------------------


@pytest.mark.parametrize("name, shapes", [
    # RetNet: dk = d/h = 4, dv = 2d/h = 8 (value_factor 2). GLA: key width d/2 = 8, value width d = 16.
    ("retnet", {"q_proj.kernel": (16, 16), "v_proj.kernel": (16, 32), "g_proj.kernel": (16, 32), "out_proj.kernel": (32, 16)}),
    ("gla", {"q_proj.kernel": (16, 8), "k_proj.kernel": (16, 8), "v_proj.kernel": (16, 16),
             "alpha_down.kernel": (16, 16), "alpha_up.kernel": (16, 8), "alpha_up.bias": (8,), "g_proj.bias": (16,)}),
])
def test_default_construction(rng, name, shapes):
    m = _get(name)()
    x = harness.random_input(rng, 2, 13, 16)
    v = harness.init(m, x)
    y = m.apply(v, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))
    p = params_of(v)
    for key, shape in shapes.items():
        assert p[key].shape == shape, (key, p[key].shape)
    assert_rel_close(y, _reference(m, v, np.asarray(x, np.float64)), RTOL, f"default {name}")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("impl, length", [("reference", 1), ("chunked", 37), ("sequential", 13)])
def test_matches_reference_float32(rng, name, impl, length):
    m = _get(name)(impl=impl, chunk_size=8)
    x, v = _setup(rng, m, 2, length, 16)
    x64 = np.asarray(x, np.float64)
    assert_rel_close(m.apply(v, x), _reference(m, v, x64), RTOL, f"{name} {impl}")
    seg = _segments(rng, 2, length)
    y = m.apply(v, x, segment_ids=jnp.asarray(seg))
    assert_rel_close(y, _reference(m, v, x64, seg), RTOL, f"{name} {impl} segments")


@pytest.mark.parametrize("name", NAMES)
def test_float64_exact(rng, name):
    x = rng.standard_normal((2, 13, 16))
    seg = _segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = _get(name)(dtype=jnp.float64, impl="chunked", chunk_size=4)
        v = perturb(harness.init(m, jnp.asarray(x)), rng)
        y = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
        M = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        y_m = m.apply(v, jnp.asarray(x), M, segment_ids=jnp.asarray(seg), method="apply_mixing_matrix")
    y_ref = _reference(m, v, x, seg)
    assert_rel_close(y, y_ref, RTOL_F64, f"{name} f64 op")
    assert_rel_close(y_m, y_ref, RTOL_F64, f"{name} f64 mixing matrix")


@pytest.mark.parametrize("name", NAMES)
def test_gradients(rng, name):
    x = rng.standard_normal((2, 11, 16))
    w = rng.standard_normal((2, 11, 16))
    seg = _segments(rng, 2, 11)
    m = _get(name)(impl="chunked", chunk_size=4)
    v = nn.meta.unbox(perturb(harness.init(m, jnp.float32(x)), rng))

    def loss(params, x):
        return jnp.sum(m.apply({"params": params}, x, segment_ids=jnp.asarray(seg)) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], jnp.float32(x))
    with jax.enable_x64(True):
        p64 = params_of(v, xp=jnp)

        def ref_loss(p, x):
            return jnp.sum(_reference(m, v, x, seg, xp=jnp, params=p) * w)

        r_p, r_x = jax.grad(ref_loss, argnums=(0, 1))(p64, jnp.asarray(x))  # eager: no compile of the loop
    g_p = params_of({"params": g_p})
    assert set(g_p) == set(r_p)
    for k in r_p:
        assert_rel_close(g_p[k], r_p[k], RTOL_GRAD, f"d{k}")
    assert_rel_close(g_x, r_x, RTOL_GRAD, "dx")


# --- the harness ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_step_matches_parallel(rng, name):
    m = _get(name)()
    x, v = _setup(rng, m)
    harness.check_step_matches_parallel(m, v, x)


@pytest.mark.parametrize("name", NAMES)
def test_causal(rng, name):
    m = _get(name)()
    x, v = _setup(rng, m)
    harness.check_causal(m, v, x, rng)


@pytest.mark.parametrize("name", NAMES)
def test_segments(rng, name):
    m = _get(name)()
    _, v = _setup(rng, m, 1, 16, 16)
    harness.check_segments(m, v, rng)


@pytest.mark.parametrize("name", NAMES)
def test_mixing_matrix(rng, name):
    m = _get(name)()
    x, v = _setup(rng, m)
    M = harness.check_mixing_matrix(m, v, x, causal=True)
    assert M.shape == (2, 4, 13, 13)
    seg = jnp.asarray([[0] * 4 + [1] * 9, [2] * 6 + [0] * 7])
    Ms = m.apply(v, x, segment_ids=seg, method="mixing_matrix")
    assert np.abs(np.asarray(Ms[0, :, 4:, :4])).max() == 0.0
    assert np.abs(np.asarray(Ms[1, :, 6:, :6])).max() == 0.0
    assert np.abs(np.asarray(Ms[0, :, 5, 4])).min() > 0.0
    y_m = m.apply(v, x, Ms, segment_ids=seg, method="apply_mixing_matrix")
    assert_rel_close(y_m, m.apply(v, x, segment_ids=seg), RTOL, "mixing matrix with segments")


# --- RetNet: decays, rotary positions, init ----------------------------------------------------


def test_retnet_decay_schedule(rng):
    # γ_h = 1 − 2^(−5−h): 31/32, 63/64, ... (the paper's multi-scale schedule).
    np.testing.assert_allclose(retnet_decays(6), [1 - 2.0 ** -(5 + h) for h in range(6)], rtol=0, atol=1e-7)
    # The mixer applies them: M[h, t, s] = γ_h^(t−s) q_t·k_s with rotated, scaled q and k.
    m = _get("retnet")()
    x, v = _setup(rng, m, 1, 9, 16)
    M = np.asarray(m.apply(v, x, method="mixing_matrix"), np.float64)
    p = params_of(v)
    x64 = np.asarray(x, np.float64)[0]
    q = (x64 @ p["q_proj.kernel"]).reshape(9, 4, 4)
    k = (x64 @ p["k_proj.kernel"]).reshape(9, 4, 4)
    pos = np.arange(9.0)
    qr = np.stack([_rotate(q[t][None], pos[t : t + 1], 1e4, np) for t in range(9)])[:, 0] / 2.0
    kr = np.stack([_rotate(k[t][None], pos[t : t + 1], 1e4, np) for t in range(9)])[:, 0]
    qk = np.einsum("thk,shk->hts", qr, kr)
    gamma = 1 - 2.0 ** -(5 + np.arange(4.0))
    t, s = np.tril_indices(9)
    expected = gamma[:, None] ** (t - s)[None] * qk[:, t, s]
    np.testing.assert_allclose(M[0][:, t, s], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_rotary_is_relative(rng):
    x = jnp.asarray(rng.standard_normal((1, 5, 2, 8)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((1, 5, 2, 8)), jnp.float32)
    pos = jnp.asarray([[0, 3, 4, 9, 20]])

    def scores(shift):
        return jnp.einsum("bthk,bshk->bhts", rotary(x, pos + shift, 1e4), rotary(y, pos + shift, 1e4))

    assert_rel_close(scores(7), scores(0), 1e-5, "shifted positions")
    np.testing.assert_allclose(jnp.linalg.norm(rotary(x, pos, 1e4), axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    # It does rotate: scores differ from the unrotated ones.
    assert rel_err(scores(0), jnp.einsum("bthk,bshk->bhts", x, y)) > 1e-2
    seg = jnp.asarray([[4, 4, 1, 1, 1, 4], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(segment_positions(seg, 2, 6), [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]])


@pytest.mark.parametrize("name", NAMES)
def test_paper_init(rng, name):
    # Xavier-uniform with gain 2^-2.5 (torchscale / flash-linear-attention), out_proj gain 1 for RetNet.
    m = _get(name)()
    v = harness.init(m, harness.random_input(rng, 1, 2, 128), seed=3)
    p = params_of(v)
    for key in ("q_proj.kernel", "k_proj.kernel", "v_proj.kernel", "g_proj.kernel", "out_proj.kernel"):
        gain = 1.0 if (name == "retnet" and key == "out_proj.kernel") else 2**-2.5
        fan_in, fan_out = p[key].shape
        bound = gain * math.sqrt(6 / (fan_in + fan_out))
        assert np.abs(p[key]).max() <= bound * (1 + 1e-6), key
        assert abs(p[key].std() / (bound / math.sqrt(3)) - 1) < 0.05, key
    np.testing.assert_array_equal(p["norm_scale"], 1.0)
    np.testing.assert_array_equal(p["norm_bias"], 0.0)


# --- GLA: decays ------------------------------------------------------------------------------


def test_gla_decays(rng):
    m = _get("gla")()
    x = harness.random_input(rng, 4, 40, 16)
    v = harness.init(m, x)
    log_a = np.asarray(m.apply(v, x, method="log_decay"), np.float64)
    assert log_a.shape == (4, 40, 4, 2)
    alpha = np.exp(log_a)
    assert alpha.min() > 0.0 and alpha.max() < 1.0
    # α = sigmoid(z)^(1/16) with zero bias and small (gain 2^-2.5) weights at init:
    # α^16 = sigmoid(z) sits around 1/2, i.e. α near 2^(-1/16) = 0.958.
    a16 = alpha**16
    assert abs(np.median(a16) - 0.5) < 0.05 and a16.std() > 1e-3
    assert abs(np.median(alpha) - 2 ** (-1 / 16)) < 0.01
    # Even large inputs keep the decays inside (0, 1], and they depend on the input.
    vp = perturb(v, rng, scale=1.0)
    big = np.exp(np.asarray(m.apply(vp, x * 30, method="log_decay"), np.float64))
    assert big.min() >= 0.0 and big.max() <= 1.0 and np.all(np.isfinite(np.log(big)))
    other = np.exp(np.asarray(m.apply(v, harness.random_input(rng, 4, 40, 16), method="log_decay")))
    assert np.abs(other - alpha).max() > 1e-3
    # A smaller temperature decays faster: τ = 1 gives α = sigmoid(z).
    log_fast = np.asarray(_get("gla")(gate_temperature=1.0).apply(v, x, method="log_decay"))
    np.testing.assert_allclose(log_fast, 16 * log_a, rtol=1e-5)


# --- dtypes, state, tracing, errors -------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16(rng, name):
    m32, m16 = _get(name)(), _get(name)(dtype=jnp.bfloat16)
    x = harness.random_input(rng, 2, 13, 16)
    v = perturb(harness.init(m32, x), rng)
    y16 = m16.apply(v, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    assert rel_err(y16.astype(jnp.float32), m32.apply(v, x)) < 5e-2
    cache = m16.apply(v, 2, method="init_cache")
    y_t, cache = m16.apply(v, x[:, 0].astype(jnp.bfloat16), cache, method="step")
    assert y_t.dtype == jnp.bfloat16 and cache["S"].dtype == jnp.float32
    assert rel_err(y_t.astype(jnp.float32), y16[:, 0].astype(jnp.float32)) < 5e-2


@pytest.mark.parametrize("name, expected, cache_shape", [
    ("retnet", 4 * 4 * 8 * 4 + 4, (3, 4, 4, 8)),  # h·dk·dv float32 + an int32 position
    ("gla", 4 * 2 * 4 * 4, (3, 4, 2, 4)),         # h·dk·dv float32 (dk = d/2/h, dv = d/h)
])
def test_state_size(rng, name, expected, cache_shape):
    x = harness.random_input(rng, 1, 3, 16)
    for m in (_get(name)(d_model=16), _get(name)()):
        v = harness.init(m, x)
        assert m.apply(v, 100, method="state_size") == expected
        cache = m.apply(v, 3, method="init_cache")
        assert cache["S"].shape == cache_shape
        assert sum(a.nbytes for a in jax.tree_util.tree_leaves(cache)) == 3 * expected


@pytest.mark.parametrize("name", NAMES)
def test_no_retrace(rng, name):
    m = _get(name)()
    x = harness.random_input(rng, 2, 13, 16)
    v = harness.init(m, x)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(v, x):
        return m.apply(v, x)

    run(v, x)
    run(v, harness.random_input(rng, 2, 13, 16))  # same shapes: no second trace


def test_config_errors(rng):
    x = harness.random_input(rng, 1, 4, 16)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="'reference', 'sequential', 'chunked'"):
        _get("retnet")(impl="fast").init(key, x)
    with pytest.raises(ValueError, match="even"):
        _get("retnet")(num_heads=16).init(key, x)  # dk = 1
    with pytest.raises(ValueError, match="num_heads"):
        _get("retnet")(num_heads=3).init(key, x)
    with pytest.raises(ValueError, match="expand_k"):
        _get("gla")(expand_k=0.3).init(key, x)
    with pytest.raises(ValueError, match="gate_temperature"):
        _get("gla")(gate_temperature=0.0).init(key, x)
    m = _get("retnet")()
    v = harness.init(m, x)
    with pytest.raises(ValueError, match="cache"):
        m.apply(v, x[:, 0], {"S": jnp.zeros((1, 4, 4, 8))}, method="step")
    with pytest.raises(ValueError, match="segment_ids"):
        m.apply(v, x, segment_ids=jnp.zeros((1, 3), jnp.int32))
    with pytest.raises(ValueError, match="M must have shape"):
        m.apply(v, x, jnp.zeros((1, 2, 4, 4)), method="apply_mixing_matrix")
