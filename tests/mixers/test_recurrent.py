"""Head-wise LSTM and GRU mixers against float64 loop references, plus the mixer contract."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.recurrent  # noqa: F401  (registers lstm, gru)
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_recurrent import gru_ref, lstm_ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

NAMES = ["lstm", "gru"]
REFS = {"lstm": lstm_ref, "gru": gru_ref}


class Jitted:
    """A mixer whose ``init``/``apply`` are jitted: one compile per shape, not one per op.

    The harness and the comparisons call it like the module; the property tested
    is the module's, the jit only saves test time (eager Flax compiles every op
    of every new shape). ``init_cache``/``state_size`` take Python ints and run
    eagerly.
    """

    def __init__(self, module):
        self.module = module
        self.init = jax.jit(module.init)
        self._apply = jax.jit(module.apply, static_argnames=("method",))

    def apply(self, variables, *args, method=None, **kwargs):
        if method in ("init_cache", "state_size"):
            return self.module.apply(variables, *args, method=method, **kwargs)
        return self._apply(variables, *args, method=method, **kwargs)


@functools.cache
def jitted(name, heads=4, dtype=jnp.float32):
    """One shared :class:`Jitted` per configuration, so tests reuse compiles."""
    return Jitted(get(name)(num_heads=heads, dtype=dtype))


def init(name, width=16, heads=4, seed=0):
    """The mixer's variables for ``width`` (parameters do not depend on b or l)."""
    return jitted(name, heads).init(jax.random.PRNGKey(seed), jnp.zeros((1, 1, width), jnp.float32))


def segments(rng, batch, length):
    """Random contiguous segments; ids repeat non-adjacently (only changes matter)."""
    return np.cumsum(rng.random((batch, length)) < 0.2, axis=1) % 3


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


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("length,heads", [(1, 1), (7, 2), (37, 4)])
def test_matches_reference_float32(rng, name, length, heads):
    module, params, x = _setup(name, rng, length=length, heads=heads)
    y = module.apply(f32(params), jnp.float32(x))
    assert y.dtype == jnp.float32
    assert_rel_close(y, REFS[name](np, params, x, heads), RTOL_SCAN, name)


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
        y_step, _ = rollout(m64, {"params": params}, jnp.asarray(x))
    assert_rel_close(y, expected, RTOL_F64, name)
    assert rel_err(y_plain, expected) > 1e-3
    assert_rel_close(y_step, REFS[name](np, params, x, 4), RTOL_F64, f"{name} step")


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


@pytest.mark.parametrize("name", NAMES)
def test_harness_step_causal_segments(rng, name):
    x = harness.random_input(rng, 2, 13, 16)
    module = jitted(name)
    variables = harness.init(module, x)
    harness.check_step_matches_parallel(module, variables, x, rtol=RTOL_SCAN)
    harness.check_causal(module, variables, x, rng)
    harness.check_segments(module, variables, rng, rtol=RTOL_SCAN)


@pytest.mark.parametrize("name", NAMES)
def test_step_matches_reference_float32(rng, name):
    module, params, x = _setup(name, rng)
    y, cache = rollout(module, f32(params), jnp.float32(x))
    assert all(c.dtype == jnp.float32 and c.shape == (2, 4, 4) for c in cache.values())
    assert_rel_close(y, REFS[name](np, params, x, 4), RTOL_SCAN, f"{name} step")


def test_lstm_forget_bias_init():
    params = nn.meta.unbox(init("lstm", width=12))["params"]
    bias = np.asarray(params["bias"])
    assert bias.shape == (4, 4, 3)  # (heads, gates i f z o, head_dim)
    np.testing.assert_array_equal(bias[:, 1], 1.0)
    np.testing.assert_array_equal(bias[:, [0, 2, 3]], 0.0)
    # Block-diagonal recurrence: one (head_dim, gates * head_dim) block per head.
    assert params["recurrent"].shape == (4, 3, 12)
    assert params["in_proj"]["kernel"].shape == (12, 48)


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


@pytest.mark.parametrize("name", NAMES)
def test_default_construction_bf16_and_state_size(rng, name):
    x = harness.random_input(rng, 2, 13, 16)
    module = get(name)()
    variables = module.init(jax.random.PRNGKey(0), x)  # eager, the plain contract
    y = module.apply(variables, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(nn.meta.unbox(variables)))

    y16 = jitted(name, 4, jnp.bfloat16).apply(variables, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y16, np.float32)))
    assert rel_err(np.asarray(y16, np.float32), y) < 5e-2

    n_states = {"lstm": 2, "gru": 1}[name]
    size = module.apply(variables, None, method="state_size")
    assert size == n_states * 16 * 4
    cache = module.apply(variables, 1, method="init_cache")
    assert size == sum(a.nbytes for a in jax.tree_util.tree_leaves(cache))
    # An explicit d_model gives the same answer without looking at parameters.
    assert get(name)(d_model=16).apply({}, None, method="state_size") == size


def test_bad_arguments_raise_clear_errors(rng):
    x = harness.random_input(rng, 2, 5, 10)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="num_heads=4 must be a positive divisor of d_model=10"):
        jax.eval_shape(get("lstm")().init, key, x)
    with pytest.raises(ValueError, match="d_model=8"):
        jax.eval_shape(get("gru")(d_model=8, num_heads=2).init, key, x)
    with pytest.raises(ValueError, match="segment_ids"):
        jax.eval_shape(lambda: get("gru")(num_heads=2).init(key, x, segment_ids=jnp.zeros((2, 4), jnp.int32)))
    with pytest.raises(ValueError, match="x must have shape"):
        jax.eval_shape(get("lstm")(num_heads=2).init, key, x[0])


def test_no_retrace_on_same_shapes(rng):
    module = get("lstm")()
    x = harness.random_input(rng, 2, 8, 16)
    variables = init("lstm")

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(v, xx):
        return module.apply(v, xx)

    f(variables, x)
    f(variables, x + 1.0)  # a second trace would raise
