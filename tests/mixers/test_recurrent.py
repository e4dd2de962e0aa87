"""Head-wise LSTM and GRU: float64 loop references, gradients, init and heads.

The contract (step, causality, segments, no mixing matrix, bfloat16, state
size, no retrace, ...) is checked for every mixer in ``test_contract.py``. The
helpers here are shared with ``test_xlstm.py``.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.recurrent  # noqa: F401  (registers lstm, gru)
from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_recurrent import gru_ref, lstm_ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

NAMES = ["lstm", "gru"]
REFS = {"lstm": lstm_ref, "gru": gru_ref}


@functools.cache
def jitted(name, heads=4, dtype=jnp.float32):
    """One shared jitted module per configuration, so tests reuse compiles."""
    return harness.Jitted(get(name)(num_heads=heads, dtype=dtype))


def init(name, width=16, heads=4, seed=0):
    """The mixer's variables for ``width`` (parameters do not depend on b or l)."""
    return harness.jit_init(jitted(name, heads).module, jnp.zeros((1, 1, width), jnp.float32), seed)


def segments(rng, batch, length):
    """Random contiguous segments (a change every ~5 positions)."""
    return harness.segments(rng, batch, length, p=0.2)


def perturbed_params(name, rng, width=16, heads=4, noise=0.3):
    """Unboxed float64 params with every leaf perturbed (so zero-initialised biases are not)."""
    params = nn.meta.unbox(init(name, width, heads))["params"]
    return jax.tree_util.tree_map(
        lambda a: np.asarray(a, np.float64) + noise * rng.standard_normal(a.shape), params
    )


def f32(params):
    """Variables with the float64 test params cast to float32."""
    return {"params": jax.tree_util.tree_map(jnp.float32, params)}


def rollout(module, variables, x):
    """``step`` over the whole sequence from ``init_cache``: (outputs, last cache)."""
    cache = module.apply(variables, x.shape[0], method="init_cache")
    ys = []
    for t in range(x.shape[1]):
        y_t, cache = module.apply(variables, x[:, t], cache, method="step")
        ys.append(y_t)
    return jnp.stack(ys, axis=1), cache


def _setup(name, rng, batch=2, length=13, width=16, heads=4):
    """Shared jitted module, perturbed float64 params and a float64 input."""
    x = np.asarray(harness.random_input(rng, batch, length, width), np.float64)
    return jitted(name, heads), perturbed_params(name, rng, width, heads), x


def check_float32(module, params, x, heads, ref, rtol, what):
    """The float32 mixer on float32 casts of ``params``, ``x`` vs the float64 reference."""
    y = module.apply(f32(params), jnp.float32(x))
    assert y.dtype == jnp.float32
    assert_rel_close(y, ref(np, params, x, heads), rtol, what)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("length,heads", [(1, 1), (7, 2), (37, 4)])
def test_matches_reference_float32(rng, name, length, heads):
    module, params, x = _setup(name, rng, length=length, heads=heads)
    check_float32(module, params, x, heads, REFS[name], RTOL_SCAN, name)


@pytest.mark.parametrize("name", NAMES)
def test_float64_exact_with_segments(rng, name):
    _, params, x = _setup(name, rng, batch=3, length=29)
    seg = segments(rng, 3, 29)
    expected = REFS[name](np, params, x, 4, segment_ids=seg)
    with jax.enable_x64(True):
        m64 = jitted(name, 4, jnp.float64)
        y = m64.apply({"params": params}, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
        # Without the resets the answer must differ: the test can see segments.
        y_plain = m64.apply({"params": params}, jnp.asarray(x))
        y_step, cache = rollout(m64, {"params": params}, jnp.asarray(x))
    assert_rel_close(y, expected, RTOL_F64, name)
    assert rel_err(y_plain, expected) > 1e-3
    assert_rel_close(y_step, REFS[name](np, params, x, 4), RTOL_F64, f"{name} step")
    assert all(c.dtype == jnp.float64 and c.shape == (3, 4, 4) for c in cache.values())


def check_gradients(name, module, params, x, heads, ref, rng, **ref_kwargs):
    """Gradients (params and x) of the float32 mixer vs autodiff of the float64 reference."""
    seg = segments(rng, *x.shape[:2])
    w = rng.standard_normal(x.shape)

    def loss_fast(p, xx):
        return jnp.sum(module.apply({"params": p}, xx, segment_ids=jnp.asarray(seg)) * jnp.float32(w))

    g_fast = jax.jit(jax.grad(loss_fast, argnums=(0, 1)))(f32(params)["params"], jnp.float32(x))
    with jax.enable_x64(True):

        def loss_ref(p, xx):
            return jnp.sum(ref(jnp, p, xx, heads, segment_ids=seg, **ref_kwargs) * w)

        g_ref = jax.grad(loss_ref, argnums=(0, 1))(jax.tree_util.tree_map(jnp.asarray, params), jnp.asarray(x))
    flat_fast, _ = jax.tree_util.tree_flatten_with_path(g_fast)
    flat_ref = jax.tree_util.tree_leaves(g_ref)
    assert len(flat_fast) == len(flat_ref)
    for (path, gf), gr in zip(flat_fast, flat_ref):
        assert_rel_close(gf, gr, RTOL_GRAD, f"{name} grad {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_reference_autodiff(rng, name):
    module, params, x = _setup(name, rng, length=8, heads=2)
    check_gradients(name, module, params, x, 2, REFS[name], rng)


def test_lstm_forget_bias_init():
    params = nn.meta.unbox(init("lstm", width=12))["params"]
    bias = np.asarray(params["bias"])
    assert bias.shape == (4, 4, 3)  # (heads, gates i f z o, head_dim)
    np.testing.assert_array_equal(bias[:, 1], 1.0)
    np.testing.assert_array_equal(bias[:, [0, 2, 3]], 0.0)
    # Block-diagonal recurrence: one (head_dim, gates * head_dim) block per head.
    assert params["recurrent"].shape == (4, 3, 12)
    assert params["in_proj"]["kernel"].shape == (12, 48)


def test_gru_init():
    params = nn.meta.unbox(init("gru", width=12))["params"]
    np.testing.assert_array_equal(params["bias"], np.zeros((4, 3, 3)))  # (heads, gates r u n, head_dim)
    np.testing.assert_array_equal(params["recurrent_bias"], np.zeros((4, 3)))  # b_hn per head
    assert params["recurrent"].shape == (4, 3, 9)


@pytest.mark.parametrize("name", NAMES)
def test_heads_are_independent(rng, name):
    # Changing one head's recurrent block changes only that head's hidden units.
    module, params, x = _setup(name, rng)
    params2 = jax.tree_util.tree_map(np.copy, params)
    params2["recurrent"][2] += 0.5
    for p in (params, params2):
        p["out_proj"]["kernel"] = np.eye(16)  # identity output projection exposes h
    h1 = np.asarray(module.apply(f32(params), jnp.float32(x)))
    h2 = np.asarray(module.apply(f32(params2), jnp.float32(x)))
    changed = np.abs(h1 - h2).max(axis=(0, 1)) > 1e-6
    np.testing.assert_array_equal(changed, np.arange(16) // 4 == 2)


@pytest.mark.parametrize("name,states", [("lstm", 2), ("gru", 1)])
def test_state_size_is_the_states(name, states):
    # h, c (lstm) or h (gru): d_model float32 each, known from d_model alone (no parameters).
    assert get(name)(d_model=16).apply({}, method="state_size") == states * 16 * 4


def test_config_errors(rng):
    x = harness.random_input(rng, 2, 5, 10)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ConfigError, match=r"^lstm\.num_heads=3 must divide d_model=16"):
        get("lstm")(d_model=16, num_heads=3)
    # Without d_model, the width (10) is known at init.
    with pytest.raises(ConfigError, match=r"^lstm\.num_heads=4 must divide d_model=10"):
        jax.eval_shape(get("lstm")().init, key, x)
    with pytest.raises(ConfigError, match=r"^gru\.impl='chunked': gru calls no op with implementations; allowed: auto"):
        get("gru")(impl="chunked")
    with pytest.raises(ValueError, match="d_model=8"):
        jax.eval_shape(get("gru")(d_model=8, num_heads=2).init, key, x)
