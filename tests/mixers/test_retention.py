"""RetNet (multi-scale retention) and GLA (gated linear attention): float64 references, matrices, init.

The contract (step, causality, segments, mixing matrix vs the fast path,
bfloat16, state_size vs the cache, ...) is checked for every mixer in
``test_contract.py``.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.retention  # noqa: F401  (registers "retnet", "gla")
from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.mixers.retention import retnet_decays, retnet_log_decays, rotary
from tests.mixers import harness
from tests.mixers.harness import Jitted
from tests.mixers.ref_linear_mixers import (
    check_float32, check_float64, check_gradients, gla_matrix, gla_reference, params_of, perturb,
    retnet_matrix, retnet_reference, segments)
from tests.ops.utils import assert_rel_close, rel_err

RTOL = harness.RTOL  # 2e-4, float32 mixers
NAMES = ["retnet", "gla"]


def _get(name):
    """The registered mixer class, constructed wrapped in :class:`Jitted` (apply/init under jit)."""
    return lambda **kwargs: Jitted(get(name)(**kwargs))


def _setup(rng, m, batch=2, length=13, width=16):
    x = harness.random_input(rng, batch, length, width)
    return x, perturb(harness.init(m, x), rng)


def _reference(m, v, x, segment_ids=None, xp=np, params=None):
    """The float64 loop reference of mixer ``m`` with variables ``v``."""
    p = params_of(v, xp=xp) if params is None else params
    if m.mixer_name == "retnet":
        return retnet_reference(p, x, m.num_heads, eps=m.norm_eps, rope_base=m.rope_base, segment_ids=segment_ids, xp=xp)
    return gla_reference(p, x, m.num_heads, eps=m.norm_eps, temperature=m.gate_temperature, segment_ids=segment_ids, xp=xp)


def _matrix(m, v, x, segment_ids):
    """The float64 closed-form mixing matrix of mixer ``m`` with variables ``v``."""
    p, x = params_of(v), np.asarray(x, np.float64)
    if m.mixer_name == "retnet":
        return retnet_matrix(p, x, m.num_heads, rope_base=m.rope_base, segment_ids=segment_ids)
    return gla_matrix(p, x, m.num_heads, temperature=m.gate_temperature, segment_ids=segment_ids)


# --- the float64 references ---------------------------------------------------------------


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
    p = params_of(v)
    for key, shape in shapes.items():
        assert p[key].shape == shape, (key, p[key].shape)
    assert_rel_close(m.apply(v, x), _reference(m, v, np.asarray(x, np.float64)), RTOL, f"default {name}")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("impl, length", [("reference", 1), ("chunked", 37), ("sequential", 13)])
def test_matches_reference_float32(rng, name, impl, length):
    m = _get(name)(impl=impl, chunk_size=8)
    x, v = _setup(rng, m, 2, length, 16)
    check_float32(m, v, x, _reference, rng, f"{name} {impl}")


@pytest.mark.parametrize("name", NAMES)
def test_float64_exact(rng, name):
    check_float64(_get(name), rng, _reference, _matrix, name)


@pytest.mark.parametrize("name", NAMES)
def test_gradients(rng, name):
    x = rng.standard_normal((2, 11, 16))
    m = _get(name)(impl="chunked", chunk_size=4)
    v = nn.meta.unbox(perturb(harness.init(m, jnp.float32(x)), rng))
    check_gradients(m, v, x, segments(rng, 2, 11), _reference, rng)


@pytest.mark.parametrize("name", NAMES)
def test_matrix_is_the_closed_form(rng, name):
    """The matrix read off the op is ``Σ_j q_t[j] k_s[j] Π_{s<r≤t} a_r[j]`` (RetNet: ``γ_h^(t−s) q_t·k_s``)."""
    m = _get(name)()
    x, v = _setup(rng, m)
    seg = segments(rng, 2, 13)
    M = m.apply(v, x, segment_ids=jnp.asarray(seg), method="mixing_matrix")
    assert M.shape == (2, 4, 13, 13)
    assert_rel_close(M, _matrix(m, v, x, seg), RTOL, f"{name} matrix vs closed form")
    # RetNet's decay is fixed (the matrix depends on x only through q and k);
    # GLA's depends on the input: the closed form without the decay differs.
    if name == "gla":
        no_decay = gla_matrix(params_of(v), np.asarray(x, np.float64), 4, temperature=math.inf, segment_ids=seg)
        assert rel_err(M, no_decay) > 1e-2


# --- RetNet: decays, rotary positions, init ----------------------------------------------------


def test_retnet_decay_schedule():
    # γ_h = 1 − 2^(−5−h): 31/32, 63/64, ... (the paper's multi-scale schedule), and its exact log.
    np.testing.assert_allclose(retnet_decays(6), [1 - 2.0 ** -(5 + h) for h in range(6)], rtol=0, atol=1e-7)
    np.testing.assert_allclose(retnet_log_decays(6), np.log1p(-(2.0 ** -(5 + np.arange(6)))), rtol=1e-6)


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


# --- state and configuration -------------------------------------------------------------------


def test_state_size():
    # h·dk·dv float32 (+ RetNet's int32 position): retnet dk = 4, dv = 8; gla dk = d/2/h = 2, dv = d/h = 4.
    assert get("retnet")(d_model=16).state_size() == 4 * 4 * 8 * 4 + 4
    assert get("gla")(d_model=16).state_size() == 4 * 2 * 4 * 4


@pytest.mark.parametrize("name, kwargs, message", [
    ("retnet", dict(num_heads=16, d_model=16), r"retnet\.num_heads=16 gives the key head dim .* = 1; it must be even"),
    ("retnet", dict(num_heads=3), r"retnet\.num_heads=3 must divide d_model=16"),  # width known at init
    ("retnet", dict(rope_base=-1.0), r"retnet\.rope_base=-1\.0 must be a number > 0"),
    ("gla", dict(expand_k=0.3, d_model=16), r"gla\.expand_k=0\.3: expand_k · d_model = 4\.8"),
    ("gla", dict(num_heads=3), r"gla\.expand_k=0\.5: .* multiple of num_heads=3"),
    ("gla", dict(gate_low_rank=0), r"gla\.gate_low_rank=0 must be an int >= 1"),
    ("gla", dict(norm_eps=0.0), r"gla\.norm_eps=0\.0 must be a number > 0"),
])
def test_config_errors(rng, name, kwargs, message):
    with pytest.raises(ConfigError, match="^" + message):
        get(name)(**kwargs).init(jax.random.PRNGKey(0), harness.random_input(rng, 1, 4, 16))
