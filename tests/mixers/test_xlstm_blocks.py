"""mlstm_block and slstm_block: float64 loop references (outputs, step, segments, gradients), state, errors.

The contract (step, causality, segments, no mixing matrix, bfloat16, state
size, no retrace, ...) is checked for every mixer in ``test_contract.py``.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_xlstm_blocks import mlstm_block_ref, slstm_block_ref
from tests.mixers.test_recurrent import f32, rollout
from tests.ops.utils import RTOL_ATTN, RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

REFS = {"mlstm_block": mlstm_block_ref, "slstm_block": slstm_block_ref}
# mLSTM's forward is a quadratic (attention-like) form; sLSTM a scan.
RTOL = {"mlstm_block": RTOL_ATTN, "slstm_block": RTOL_SCAN}
CASES = [("mlstm_block", ()), ("slstm_block", ()), ("slstm_block", (("d_conv", 0),))]


@functools.cache
def jitted(name, heads=4, dtype=jnp.float32, fields=()):
    """One shared jitted module per configuration, so tests reuse compiles."""
    return harness.Jitted(get(name)(num_heads=heads, dtype=dtype, **dict(fields)))


def _init_params(name, heads=4, fields=(), width=16):
    """The mixer's unboxed float32 params at init (shared by the tests: one init compile each)."""
    return _init_cached(name, heads, fields, width)


@functools.cache
def _init_cached(name, heads, fields, width):
    if dict(fields).get("d_conv") == 0:
        # Without the conv the block has the same parameters less conv_weight and conv_bias.
        full = _init_cached(name, heads, tuple((k, v) for k, v in fields if k != "d_conv"), width)
        return {k: v for k, v in full.items() if not k.startswith("conv")}
    variables = harness.jit_init(jitted(name, heads, jnp.float32, fields).module, jnp.zeros((1, 1, width)))
    return jax.tree.map(np.asarray, nn.meta.unbox(variables)["params"])


def _setup(name, rng, batch=2, length=13, width=16, heads=4, fields=()):
    """Jitted module, perturbed float64 params (wide gate biases) and a float64 input."""
    params = jax.tree.map(lambda a: np.asarray(a, np.float64) + 0.3 * rng.standard_normal(a.shape),
                          _init_params(name, heads, fields, width))
    # Input gates over exp(-2..2), forget gates over sigmoid(-1..5): strong and weak decay.
    if name == "slstm_block":
        params["bias"][:, 0] = rng.uniform(-2, 2, params["bias"][:, 0].shape)
        params["bias"][:, 1] = rng.uniform(-1, 5, params["bias"][:, 1].shape)
    else:
        params["gate_bias"][0] = rng.uniform(-2, 2, heads)
        params["gate_bias"][1] = rng.uniform(-1, 5, heads)
    x = np.asarray(harness.random_input(rng, batch, length, width), np.float64)
    return jitted(name, heads, jnp.float32, fields), params, x


def _ref(name, params, x, heads, fields=(), **kwargs):
    return REFS[name](np, params, x, heads, **dict(fields), **kwargs)


@pytest.mark.parametrize("name", ["mlstm_block", "slstm_block"])
def test_matches_reference_float32(rng, name):
    # One position, and a prime length of packed segments.
    for length in (1, 13):
        module, params, x = _setup(name, rng, length=length)
        seg = harness.segments(rng, 2, length, p=0.2)
        y = module.apply(f32(params), jnp.float32(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float32
        expected = _ref(name, params, x, 4, segment_ids=seg)
        assert_rel_close(y, expected, RTOL[name], f"{name} float32, length {length}")


@pytest.mark.parametrize("name,fields", CASES)
def test_float64_exact_with_segments(rng, name, fields):
    # Parallel (with segments: the conv and the cell restart) and step, vs the plain and stabilised loops.
    _, params, x = _setup(name, rng, batch=3, length=17, fields=fields)
    seg = harness.segments(rng, 3, 17, p=0.2)
    with jax.enable_x64(True):
        m64 = jitted(name, 4, jnp.float64, fields)
        y = m64.apply({"params": params}, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        y_step, cache = rollout(m64, {"params": params}, jnp.asarray(x))
        assert y.dtype == jnp.float64 and y_step.dtype == jnp.float64
    expected = _ref(name, params, x, 4, fields, segment_ids=seg)
    assert_rel_close(y, expected, RTOL_F64, f"{name} segments, plain")
    assert_rel_close(y, _ref(name, params, x, 4, fields, segment_ids=seg, stabilised=True), RTOL_F64,
                     f"{name} segments, stabilised")
    whole = _ref(name, params, x, 4, fields)
    assert rel_err(whole, expected) > 1e-3  # the segments matter on this input
    assert_rel_close(y_step, whole, RTOL_F64, f"{name} step")
    assert ("conv" in cache) == (dict(fields).get("d_conv", 4) > 0)


@pytest.mark.parametrize("name", ["mlstm_block", "slstm_block"])
def test_gradients_match_reference_autodiff(rng, name):
    # Params and input, with segments, against autodiff of the plain loops (no stabiliser).
    module, params, x = _setup(name, rng, batch=1, length=6)
    seg = harness.segments(rng, 1, 6, p=0.3)
    w = rng.standard_normal(x.shape)

    def loss_fast(p, xx):
        return jnp.sum(module.apply({"params": p}, xx, segment_ids=jnp.asarray(seg)) * jnp.float32(w))

    g_fast = jax.jit(jax.grad(loss_fast, argnums=(0, 1)))(f32(params)["params"], jnp.float32(x))
    with jax.enable_x64(True):

        def loss_ref(p, xx):
            return jnp.sum(REFS[name](jnp, p, xx, 4, segment_ids=seg) * w)

        g_ref = jax.jit(jax.grad(loss_ref, argnums=(0, 1)))(jax.tree.map(jnp.asarray, params), jnp.asarray(x))
    flat_fast, tree_fast = jax.tree_util.tree_flatten_with_path(g_fast)
    flat_ref, tree_ref = jax.tree_util.tree_flatten(g_ref)
    assert len(flat_fast) == len(flat_ref)
    for (path, gf), gr in zip(flat_fast, flat_ref):
        assert np.abs(np.asarray(gr)).max() > 0, jax.tree_util.keystr(path)
        assert_rel_close(gf, gr, RTOL_GRAD, f"{name} grad {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("name,fields,floats", [
    # conv window 3·(2d) + C (H·P·P) + n (H·P) + m (H), P = 2d/H = 8
    ("mlstm_block", {}, 3 * 32 + 4 * (8 * 8 + 8 + 1)),
    # h, c, n, m per unit + conv window 3·d
    ("slstm_block", {}, 4 * 16 + 3 * 16),
    ("slstm_block", {"d_conv": 0}, 4 * 16),
])
def test_state_size_is_the_states(name, fields, floats):
    assert get(name)(d_model=16, **fields).apply({}, method="state_size") == floats * 4


def test_init():
    params = _init_params("mlstm_block")
    np.testing.assert_allclose(params["gate_bias"][1], np.linspace(3.0, 6.0, 4), rtol=1e-6)  # forget
    np.testing.assert_array_equal(params["gate_proj"]["kernel"], 0.0)  # gates start input-independent
    np.testing.assert_array_equal(params["skip"], 1.0)
    assert params["qkv"].shape == (3, 8, 4, 4)  # q, k, v: 8 diagonal blocks of 4 x 4 on 2d = 32 units
    params = _init_params("slstm_block")
    np.testing.assert_allclose(params["bias"][:, 1], np.broadcast_to(np.linspace(3.0, 6.0, 4), (4, 4)), rtol=1e-6)
    assert params["up_proj"]["kernel"].shape == (16, 2 * 21)  # gate and up branches, round(16 * 4/3) = 21
    assert params["recurrent"].shape == (4, 4, 16)  # block-diagonal: one block per head


def test_config_errors(rng):
    with pytest.raises(ConfigError, match=r"^mlstm_block\.num_heads=3 must divide expand\*d_model=32"):
        get("mlstm_block")(d_model=16, num_heads=3)
    with pytest.raises(ConfigError, match=r"^mlstm_block\.qkv_blocksize=5 must divide expand\*d_model=32"):
        get("mlstm_block")(d_model=16, qkv_blocksize=5)
    with pytest.raises(ConfigError, match=r"^mlstm_block\.d_conv=0 must be an int >= 1"):
        get("mlstm_block")(d_conv=0)
    with pytest.raises(ConfigError, match=r"^slstm_block\.d_conv=-1 must be an int >= 0"):
        get("slstm_block")(d_conv=-1)
    with pytest.raises(ConfigError, match=r"^slstm_block\.proj_factor=0 must be a number > 0"):
        get("slstm_block")(proj_factor=0)
    with pytest.raises(ConfigError, match=r"^slstm_block\.num_heads=3 must divide d_model=16"):
        get("slstm_block")(d_model=16, num_heads=3)
    # Without d_model, the width (10, so 2·10 = 20 inner units) is known at init.
    with pytest.raises(ConfigError, match=r"^mlstm_block\.qkv_blocksize=8 must divide expand\*d_model=20"):
        jax.eval_shape(get("mlstm_block")(qkv_blocksize=8).init, jax.random.PRNGKey(0), jnp.zeros((1, 2, 10)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlstm_block", "slstm_block"])
def test_long_bfloat16_is_finite_and_close(rng, name):
    # 4,096 positions in bfloat16 (packed into two segments) against float32.
    module, params, x = _setup(name, rng, batch=1, length=4096)
    seg = jnp.asarray(np.repeat([[0, 1]], [2500, 1596], axis=1))
    m16 = jitted(name, 4, jnp.bfloat16)
    y16 = m16.apply(f32(params), jnp.asarray(x, jnp.bfloat16), segment_ids=seg)
    y32 = module.apply(f32(params), jnp.float32(x), segment_ids=seg)
    assert y16.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y16, np.float32)).all()
    # bfloat16 rounding through the projections, the conv and the GroupNorm costs a few
    # percent at any length (measured: mlstm_block 2-5% at lengths 13, 256 and 4,096,
    # slstm_block ~1%); the bound catches an error that grows with the length.
    assert rel_err(y16.astype(jnp.float32), y32) < 1e-1
