"""Landmark attention against the float64 reference of the paper's grouped softmax and retrieval rule.

The contract (step with all blocks, causality, segments, matrix path,
bfloat16) runs in ``test_contract.py``; here: outputs, gradients and the
mixing matrix against ``ref_landmark`` (with segments), the decoding step
with ``retrieval_top_k`` (at least the number of blocks: the parallel form;
fewer: the paper's retrieval rule in float64), what a decoding step reads,
the O(L²) training memory, and long / odd lengths in bfloat16.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import mixers
from seqjax.errors import ConfigError
from tests.mixers import harness
from tests.mixers import ref_landmark as ref
from tests.mixers.ref_attention_mixers import assert_gradients_match, params_of, random_variables
from tests.ops.utils import RTOL_ATTN, RTOL_GRAD, assert_rel_close, rel_err

WIDTH = 16
HEADS = 2


def _case(rng, batch=2, length=11, block_size=3, **kw):
    module = mixers.get("landmark")(num_heads=HEADS, block_size=block_size, **kw)
    x = np.asarray(rng.standard_normal((batch, length, WIDTH)), np.float32)
    return module, x, random_variables(module, x, rng)


def _rollout(module, variables, x, max_length=None):
    J = harness.Jitted(module)
    cache = module.apply(variables, x.shape[0], max_length or x.shape[1], method="init_cache")
    ys = []
    for t in range(x.shape[1]):
        y_t, cache = J.apply(variables, jnp.asarray(x[:, t]), cache, method="step")
        ys.append(y_t)
    return jnp.stack(ys, axis=1)


def test_outputs_and_matrix_match_reference(rng):
    module, x, variables = _case(rng)
    seg = harness.segments(rng, 2, 11, p=0.15)
    J = harness.Jitted(module)
    y = J.apply(variables, jnp.asarray(x), segment_ids=jnp.asarray(seg))
    p = params_of(variables)
    expected = ref.reference(p, np.float64(x), num_heads=HEADS, block_size=3, segment_ids=seg)
    assert_rel_close(y, expected, RTOL_ATTN, "y")
    M = J.apply(variables, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
    W = ref.weights(p, np.float64(x), num_heads=HEADS, block_size=3, segment_ids=seg)
    assert_rel_close(M, W, RTOL_ATTN, "mixing matrix")
    # Earlier blocks really are gated: some weight lands outside the query's own block.
    assert W[:, :, 9, :6].sum() > 1e-3


@pytest.mark.slow
def test_float64_matches_reference_to_rounding(rng):
    module = mixers.get("landmark")(num_heads=HEADS, block_size=3, dtype=jnp.float64)
    x = rng.standard_normal((1, 10, WIDTH))
    with jax.enable_x64(True):
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), random_variables(module, x, rng))
        y = module.apply(variables, jnp.asarray(x, jnp.float64))
        expected = ref.reference(params_of(variables), np.float64(x), num_heads=HEADS, block_size=3)
        assert rel_err(y, expected) <= 1e-10


def test_gradients_match_reference_directional(rng):
    # d/dε of Σ w ⊙ y along a random direction of each parameter and of x:
    # the fast path's autodiff against central differences of the float64
    # reference (cheap: NumPy, no trace of the reference).
    module, x, variables = _case(rng, 1, 7, block_size=2)
    seg = np.array([[0, 0, 0, 0, 0, 1, 1]])
    w = rng.standard_normal(x.shape)

    def loss(params, x):
        return jnp.sum(module.apply({"params": params}, x, segment_ids=jnp.asarray(seg)) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], jnp.float32(x))
    g = dict(params_of({"params": g_p}), x=np.asarray(g_x, np.float64))
    base = dict(params_of(variables), x=np.float64(x))

    def ref_loss(values):
        p = {k: v for k, v in values.items() if k != "x"}
        return float(np.sum(ref.reference(p, values["x"], num_heads=HEADS, block_size=2, segment_ids=seg) * w))

    eps = 1e-5
    for name in base:
        d = rng.standard_normal(base[name].shape)
        plus, minus = dict(base), dict(base)
        plus[name], minus[name] = base[name] + eps * d, base[name] - eps * d
        expected = (ref_loss(plus) - ref_loss(minus)) / (2 * eps)
        got = float(np.sum(g[name] * d))
        assert abs(got - expected) <= RTOL_GRAD * max(abs(expected), 1e-3 * np.abs(g[name]).sum()), (name, got, expected)


@pytest.mark.slow
def test_gradients_match_reference(rng):
    module, x, variables = _case(rng, 1, 7, block_size=2)
    seg = np.array([[0, 0, 0, 0, 0, 1, 1]])

    def reference(p, x):
        return ref.reference(p, x, num_heads=HEADS, block_size=2, segment_ids=seg, xp=jnp)

    assert_gradients_match(module, variables, x, seg, reference, RTOL_GRAD)


@pytest.mark.parametrize("top_k", [4, pytest.param(9, marks=pytest.mark.slow)])
def test_step_with_enough_blocks_is_the_parallel_form(rng, top_k):
    module, x, variables = _case(rng, 2, 14, block_size=3, retrieval_top_k=top_k)
    y = harness.Jitted(module).apply(variables, jnp.asarray(x))
    err = rel_err(_rollout(module, variables, x), y)
    assert err <= RTOL_ATTN, f"top_k={top_k} >= blocks: step vs parallel {err:.2e}"


@pytest.mark.parametrize("top_k", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_step_with_small_top_k_is_the_paper_retrieval_rule(rng, top_k):
    module, x, variables = _case(rng, 2, 17, block_size=3, retrieval_top_k=top_k)
    expected, gap = ref.reference(params_of(variables), np.float64(x), num_heads=HEADS, block_size=3, top_k=top_k)
    assert gap > 1e-4, f"near-tie at the top-k cut ({gap:.1e}): pick another input"
    got = _rollout(module, variables, x)
    assert_rel_close(got, expected, RTOL_ATTN, f"top_k={top_k} decode")
    # Retrieval changes the answer (otherwise the test could not fail).
    assert rel_err(got, ref.reference(params_of(variables), np.float64(x), num_heads=HEADS, block_size=3)) > 1e-3


def _step_cost(module, variables, max_length):
    """Compiled temporary bytes and flops of one decoding step, the cache donated (updated in place)."""
    cache = module.apply(variables, 1, max_length, method="init_cache")
    x_t = jnp.ones((1, WIDTH), jnp.float32)
    step = jax.jit(lambda v, x, c: module.apply(v, x, c, method="step"), donate_argnums=2)
    compiled = step.lower(variables, x_t, cache).compile()
    return compiled.memory_analysis().temp_size_in_bytes, compiled.cost_analysis()["flops"]


@pytest.mark.slow
def test_decoding_with_top_k_reads_a_bounded_number_of_blocks(rng):
    # The paper's claim is about inference: a step reads the landmark keys and
    # k blocks, not the whole cache. Growing the cache 8x leaves the scratch
    # memory of a top-k step unchanged and its flops nearly flat (only the scan
    # of the l/ℓ landmark keys grows), while the all-blocks step grows with it.
    module, x, variables = _case(rng, 1, 4, block_size=32, retrieval_top_k=2)
    full = mixers.get("landmark")(num_heads=HEADS, block_size=32)
    small, large = 256, 2048
    t_small, f_small = _step_cost(module, variables, small)
    t_large, f_large = _step_cost(module, variables, large)
    u_small, g_small = _step_cost(full, variables, small)
    u_large, g_large = _step_cost(full, variables, large)
    assert t_large <= t_small and f_large / f_small < 1.5, (t_small, t_large, f_small, f_large)
    assert u_large / u_small > 4.0 and g_large / g_small > 4.0, (u_small, u_large, g_small, g_large)


@pytest.mark.slow
def test_training_memory_is_quadratic_like_attention(rng):
    # Training is the full grouped softmax: O(L²) like attention (the paper says so).
    module = mixers.get("landmark")(num_heads=HEADS, block_size=8)
    ratio = harness.check_memory_growth(module, rng, length=64, width=WIDTH, exponent=2.0)
    assert ratio > 4.0, f"temp memory grew only {ratio:.1f}x for 4x length: not the dense grouped softmax?"


@pytest.mark.parametrize("length", [1, 31, pytest.param(4096, marks=pytest.mark.slow)])
def test_lengths_in_bfloat16_have_no_nan(rng, length):
    # Closeness to float32 is the contract's bfloat16 test; here odd and long lengths.
    m16 = mixers.get("landmark")(num_heads=HEADS, block_size=8, dtype=jnp.bfloat16)
    x = harness.random_input(rng, 1, length, WIDTH).astype(jnp.bfloat16)
    variables = random_variables(m16, x, rng)
    y16 = jax.jit(m16.apply)(variables, x)
    assert y16.shape == x.shape and y16.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(y16, np.float32)).all()


@pytest.mark.parametrize("field, value", [("block_size", 0), ("retrieval_top_k", 0), ("max_length", -1)])
def test_bad_fields(field, value):
    with pytest.raises(ConfigError, match=rf"^landmark\.{field}={value!r}"):
        mixers.get("landmark")(**{field: value})
