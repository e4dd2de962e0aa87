"""sLSTM and mLSTM mixers against float64 loop references, plus the mixer contract."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.xlstm  # noqa: F401  (registers slstm, mlstm)
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_xlstm import mlstm_matrix_ref, mlstm_ref, slstm_ref
from tests.mixers.test_recurrent import check_gradients, f32, init, jitted, perturbed_params, rollout, segments
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
    y = module.apply(f32(params), jnp.float32(x))
    assert y.dtype == jnp.float32
    assert_rel_close(y, REFS[name](np, params, x, heads), RTOL[name], name)


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


@pytest.mark.parametrize("name", NAMES)
def test_harness_step_causal_segments(rng, name):
    x = harness.random_input(rng, 2, 13, 16)
    module = jitted(name)
    variables = harness.init(module, x)
    harness.check_step_matches_parallel(module, variables, x, rtol=RTOL[name])
    harness.check_causal(module, variables, x, rng)
    harness.check_segments(module, variables, rng, rtol=RTOL[name])


def test_mlstm_mixing_matrix(rng):
    module, params, x = _setup("mlstm", rng)
    m = harness.check_mixing_matrix(module, f32(params), jnp.float32(x), causal=True)
    assert m.shape == (2, 4, 13, 13)
    # Entry by entry against the unrolled plain recurrence.
    expected = mlstm_matrix_ref(np, params, x, 4)
    assert_rel_close(m, expected, RTOL_ATTN, "mixing matrix")
    with jax.enable_x64(True):
        mat = jitted("mlstm", 4, jnp.float64).apply({"params": params}, jnp.asarray(x), method="mixing_matrix")
    assert_rel_close(mat, expected, RTOL_F64, "mixing matrix float64")


def test_mlstm_mixing_matrix_segments_are_blocks(rng):
    module, params, _ = _setup("mlstm", rng)
    v = f32(params)
    lengths = (4, 6, 3)
    pieces = [harness.random_input(rng, 1, n, 16) for n in lengths]
    ids = jnp.asarray(np.repeat([0, 1, 0], lengths)[None], jnp.int32)  # id 0 comes back
    m = np.asarray(module.apply(v, jnp.concatenate(pieces, 1), segment_ids=ids, method="mixing_matrix"))
    start = 0
    for piece in pieces:
        end = start + piece.shape[1]
        block = module.apply(v, piece, method="mixing_matrix")
        assert_rel_close(m[..., start:end, start:end], block, RTOL_ATTN, "diagonal block")
        assert np.all(m[..., start:end, :start] == 0.0), "weight across a segment boundary"
        start = end


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

    size = module.apply(variables, None, method="state_size")
    # sLSTM: h, c, n, m per unit; mLSTM: C (4, 4, 4), n (4, 4), m (4,) per head.
    assert size == {"slstm": 4 * 16 * 4, "mlstm": 4 * (16 + 4 + 1) * 4}[name]
    cache = module.apply(variables, 1, method="init_cache")
    assert size == sum(a.nbytes for a in jax.tree_util.tree_leaves(cache))
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(cache))


def test_bad_arguments_raise_clear_errors(rng):
    x = harness.random_input(rng, 2, 5, 10)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="num_heads=4 must be a positive divisor of d_model=10"):
        jax.eval_shape(get("mlstm")().init, key, x)
    with pytest.raises(ValueError, match="num_heads=3 must be a positive divisor"):
        jax.eval_shape(get("slstm")(num_heads=3).init, key, x)
    module = get("mlstm")(num_heads=2)
    variables = jitted("mlstm", 2).init(key, x)

    def shapes(*args, **kwargs):
        return jax.eval_shape(lambda: module.apply(variables, *args, **kwargs))

    with pytest.raises(ValueError, match=r"mixing matrix has shape \(2, 2, 4, 4\)"):
        shapes(x, jnp.zeros((2, 2, 4, 4)), method="apply_mixing_matrix")
    with pytest.raises(ValueError, match="segment_ids"):
        shapes(x, segment_ids=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="cache"):
        shapes(x[:, 0], {"h": jnp.zeros(1)}, method="step")


def test_no_retrace_on_same_shapes(rng):
    module = get("mlstm")()
    x = harness.random_input(rng, 2, 8, 16)
    variables = init("mlstm")

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(v, xx):
        return module.apply(v, xx)

    f(variables, x)
    f(variables, x + 1.0)  # a second trace would raise
