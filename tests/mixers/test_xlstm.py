"""sLSTM and mLSTM: float64 loop references (plain and stabilised), the gates' extremes, init, mLSTM's matrix.

The contract (step, causality, segments, mixing matrix vs the fast path,
bfloat16, state size, no retrace, ...) is checked for every mixer in
``test_contract.py``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.xlstm  # noqa: F401  (registers slstm, mlstm)
from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_xlstm import mlstm_matrix, mlstm_ref, slstm_ref
from tests.mixers.test_recurrent import (
    check_float32, check_gradients, f32, init, jitted, perturbed_params, rollout, segments)
from tests.ops.utils import RTOL_ATTN, RTOL_F64, RTOL_SCAN, assert_rel_close, rel_err

NAMES = ["slstm", "mlstm"]
REFS = {"slstm": slstm_ref, "mlstm": mlstm_ref}
# mLSTM's forward is a quadratic (attention-like) form; sLSTM a scan.
RTOL = {"slstm": RTOL_SCAN, "mlstm": RTOL_ATTN}


def _setup(name, rng, batch=2, length=13, width=16, heads=4):
    """Shared jitted module, perturbed float64 params and a float64 input.

    The gate biases get wide random values so that the input gates range over
    exp(-2..2) and the forget gates over sigmoid(-1..5): strong and weak decay.
    """
    params = perturbed_params(name, rng, width, heads)
    if name == "slstm":
        params["bias"][:, 0] = rng.uniform(-2, 2, params["bias"][:, 0].shape)
        params["bias"][:, 1] = rng.uniform(-1, 5, params["bias"][:, 1].shape)
    else:
        params["gate_bias"][0] = rng.uniform(-2, 2, heads)
        params["gate_bias"][1] = rng.uniform(-1, 5, heads)
    x = np.asarray(harness.random_input(rng, batch, length, width), np.float64)
    return jitted(name, heads), params, x


def _shift_input_gate(name, params, shift):
    if name == "slstm":
        params["bias"][:, 0] += shift
    else:
        params["gate_bias"][0] += shift


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("length,heads", [(1, 1), (7, 2), (37, 4)])
def test_matches_reference_float32(rng, name, length, heads):
    module, params, x = _setup(name, rng, length=length, heads=heads)
    check_float32(module, params, x, heads, REFS[name], RTOL[name], name)


@pytest.mark.parametrize("name", NAMES)
def test_float64_exact_with_segments(rng, name):
    # Parallel (mLSTM) / scan (sLSTM) and step, against the stabilised and the plain equations.
    _, params, x = _setup(name, rng, batch=3, length=23)
    seg = segments(rng, 3, 23)
    ref = REFS[name]
    with jax.enable_x64(True):
        m64 = jitted(name, 4, jnp.float64)
        y = m64.apply({"params": params}, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        y_plain = m64.apply({"params": params}, jnp.asarray(x))
        y_step, _ = rollout(m64, {"params": params}, jnp.asarray(x))
        assert y.dtype == jnp.float64 and y_step.dtype == jnp.float64
    assert_rel_close(y, ref(np, params, x, 4, segment_ids=seg), RTOL_F64, f"{name} stabilised")
    assert_rel_close(y, ref(np, params, x, 4, segment_ids=seg, stabilised=False), RTOL_F64, f"{name} plain")
    assert rel_err(y_plain, ref(np, params, x, 4, segment_ids=seg)) > 1e-3  # segments are seen
    assert_rel_close(y_plain, ref(np, params, x, 4), RTOL_F64, f"{name} no segments")
    assert_rel_close(y_step, ref(np, params, x, 4, stabilised=False), RTOL_F64, f"{name} step")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("i_bias", [-20.0, 30.0])
def test_reference_stabilised_equals_plain_float64(rng, name, i_bias):
    # The paper's stabiliser is an exact rescaling: equal outputs in float64 wherever
    # the plain form does not overflow (exp(30) and exp(-20) are fine in float64).
    # Not closer than ~1e-11: mLSTM's |n^T q| can cancel and amplify rounding.
    _, params, x = _setup(name, rng, length=17)
    _shift_input_gate(name, params, i_bias)
    seg = segments(rng, 2, 17)
    stab = REFS[name](np, params, x, 4, segment_ids=seg)
    plain = REFS[name](np, params, x, 4, segment_ids=seg, stabilised=False)
    assert np.all(np.isfinite(plain))
    assert_rel_close(stab, plain, RTOL_F64, f"{name} stabilised vs plain")


@pytest.mark.parametrize("name", NAMES)
def test_large_input_gates_stay_finite(rng, name):
    # i~ ~ 100: exp(i~) overflows float32, so the plain form fails; the mixer does not.
    module, params, x = _setup(name, rng)
    _shift_input_gate(name, params, 100.0)
    p32 = jax.tree_util.tree_map(np.float32, params)
    with np.errstate(over="ignore", invalid="ignore"):
        plain32 = REFS[name](np, p32, np.float32(x), 4, stabilised=False)
    assert not np.all(np.isfinite(plain32)), "the plain float32 form was expected to overflow"
    y = module.apply(f32(params), jnp.float32(x))
    _, cache = rollout(module, f32(params), jnp.float32(x))
    assert np.all(np.isfinite(np.asarray(y)))
    assert all(np.all(np.isfinite(np.asarray(c))) for c in cache.values())
    # exp(i~) at i~ ~ 100 turns the float32 rounding of i~ (~1e-5) into ~1e-5 relative
    # errors per term, and mLSTM's |n^T q| can cancel; so the bar is the float32
    # evaluation of the same stabilised equations (mLSTM: up to ~1e-3 vs float64).
    expected = REFS[name](np, params, x, 4)
    stabilised32 = REFS[name](np, p32, np.float32(x), 4)
    assert stabilised32.dtype == np.float32
    bar = max(RTOL[name], 10 * rel_err(stabilised32, expected))
    assert_rel_close(y, expected, bar, f"{name} large gates")


@pytest.mark.parametrize("name", NAMES)
def test_very_negative_input_gates_stay_finite(rng, name):
    # i~ ~ -100 on the first step: a naive m_0 = 0 gives exp(-i~) overflow or 0/0.
    module, params, x = _setup(name, rng)
    _shift_input_gate(name, params, -100.0)
    v = f32(params)
    y = module.apply(v, jnp.float32(x))
    y_step, _ = rollout(module, v, jnp.float32(x))
    assert np.all(np.isfinite(np.asarray(y))) and np.all(np.isfinite(np.asarray(y_step)))
    if name == "slstm":
        # h = o c / n is a ratio in which the tiny input gate cancels: still exact.
        assert_rel_close(y, slstm_ref(np, params, x, 4), RTOL_SCAN, "slstm tiny gates")
        assert_rel_close(y_step, slstm_ref(np, params, x, 4), RTOL_SCAN, "slstm tiny gates, step")
    else:
        # h~ ~ e^-100: the output is the output projection of (numerically) zero.
        assert np.abs(np.asarray(y)).max() < 1e-30 and np.abs(np.asarray(y_step)).max() < 1e-30


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_reference_autodiff(rng, name):
    # Against autodiff of the plain equations: no stabiliser, no stop_gradient.
    module, params, x = _setup(name, rng, length=8, heads=2)
    check_gradients(name, module, params, x, 2, REFS[name], rng, stabilised=False)


def test_matrix_is_the_closed_form(rng):
    """mLSTM's matrix read off the parallel form equals the unrolled recurrence's, with segments."""
    module, params, x = _setup("mlstm", rng)
    seg = segments(rng, 2, 13)
    expected = mlstm_matrix(params, x, 4, seg)
    M = module.apply(f32(params), jnp.float32(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
    assert M.shape == (2, 4, 13, 13) and M.dtype == jnp.float32
    assert_rel_close(M, expected, RTOL_ATTN, "mlstm matrix vs closed form")
    with jax.enable_x64(True):
        M64 = jitted("mlstm", 4, jnp.float64).apply(
            {"params": params}, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
    assert_rel_close(M64, expected, RTOL_F64, "mlstm matrix vs closed form, float64")
    # The segments are seen: without them the matrix differs.
    assert rel_err(mlstm_matrix(params, x, 4), expected) > 1e-3


def test_slstm_forget_bias_init():
    params = nn.meta.unbox(init("slstm", width=12, heads=2))["params"]
    bias = np.asarray(params["bias"])
    assert bias.shape == (2, 4, 6)  # (heads, gates i f z o, head_dim)
    np.testing.assert_allclose(bias[:, 1], np.broadcast_to(np.linspace(3.0, 6.0, 6), (2, 6)), rtol=1e-6)
    np.testing.assert_array_equal(bias[:, [0, 2, 3]], 0.0)
    assert params["recurrent"].shape == (2, 6, 24)  # block-diagonal: one block per head


def test_mlstm_gate_bias_init():
    params = nn.meta.unbox(init("mlstm"))["params"]
    gate_bias = np.asarray(params["gate_bias"])
    np.testing.assert_allclose(gate_bias[1], np.linspace(3.0, 6.0, 4), rtol=1e-6)  # forget
    assert 0.0 < np.abs(gate_bias[0]).max() < 0.5  # input: N(0, 0.1^2), not zero


@pytest.mark.parametrize("name,floats", [("slstm", 4 * 16), ("mlstm", 4 * (4 * 4 + 4 + 1))])
def test_state_size_is_the_states(name, floats):
    # sLSTM: h, c, n, m per unit; mLSTM: C (dk, dv), n (dk), m per head; float32, from d_model alone.
    assert get(name)(d_model=16).apply({}, method="state_size") == floats * 4


def test_config_and_input_errors(rng):
    x = harness.random_input(rng, 2, 5, 10)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ConfigError, match=r"^mlstm\.num_heads=4 must divide d_model=10"):
        jax.eval_shape(get("mlstm")().init, key, x)
    with pytest.raises(ConfigError, match=r"^slstm\.num_heads=3 must divide d_model=16"):
        get("slstm")(d_model=16, num_heads=3)
    with pytest.raises(ConfigError, match=r"^mlstm\.impl names op 'linear_attention'; allowed ops: mlstm"):
        get("mlstm")(impl={"linear_attention": "chunked"})
    module = get("mlstm")(num_heads=2)
    variables = harness.jit_init(module, x)

    def shapes(*args, **kwargs):
        return jax.eval_shape(lambda: module.apply(variables, *args, **kwargs))

    with pytest.raises(ValueError, match=r"M must have shape \(b, channels, l, l\)"):
        shapes(x, jnp.zeros((2, 2, 4, 4)), method="apply_mixing_matrix")
    with pytest.raises(ValueError, match="cache must have keys C, m, n"):
        shapes(x[:, 0], {"h": jnp.zeros(1)}, method="step")
