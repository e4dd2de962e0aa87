"""Combiner (Ren et al. 2021) against its float64 reference (tests/mixers/ref_combiner.py).

The contract (step, causality, segments, matrix path, bfloat16) is checked for
the default layout by tests/mixers/test_contract.py; here: every layout's fast
path and row form against the paper's equations (outputs and gradients), full
attention (every visible weight nonzero), the other layouts' ``step``, short
and long bfloat16 runs, and sub-quadratic memory growth.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import mixers
from seqjax.errors import ConfigError
from seqjax.mixers.combiner import combiner_attention
from seqjax.mixers.common import segment_runs
from tests.mixers import harness
from tests.mixers import ref_combiner as ref
from tests.ops.utils import rel_err

VARIANTS = ("fixed", "axial", "logsparse")


@functools.partial(jax.jit, static_argnames=("variant", "region_size", "causal"))
def _attend(q, k, v, runs, *, variant, region_size, causal):
    return combiner_attention(q, k, v, variant=variant, region_size=region_size, causal=causal, segment_ids=runs)


def _qkv(rng, b=2, length=11, h=2, dh=4):
    with jax.enable_x64(True):
        return tuple(jnp.asarray(rng.standard_normal((b, length, h, dh)), jnp.float64) for _ in range(3))


@functools.partial(jax.jit, static_argnames=("variant",))
def _all_forms(q, k, v, runs, *, variant):
    """Fast path causal and bidirectional, row form (segments) causal and bidirectional: one compile."""
    kw = dict(variant=variant, region_size=3)
    return tuple(combiner_attention(q, k, v, causal=c, segment_ids=r, **kw)
                 for r in (None, runs) for c in (True, False))


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_reference(variant, rng):
    """Fast path (no segments) and row form (segments) equal the float64 reference, causal and bidirectional."""
    with jax.enable_x64(True):
        q, k, v = _qkv(rng)
        seg = harness.segments(rng, 2, 11, p=0.2)
        got = _all_forms(q, k, v, segment_runs(jnp.asarray(seg), 2, 11), variant=variant)
        wants = [ref.combiner_ref(q, k, v, variant, 3, c, sg) for sg in (None, seg) for c in (True, False)]
        for g, want in zip(got, wants):
            assert rel_err(g, want) < 1e-12


@pytest.mark.parametrize("variant,causal", [("axial", True), pytest.param("logsparse", False, marks=pytest.mark.slow),
                                            pytest.param("fixed", False, marks=pytest.mark.slow)])
def test_gradients_match_finite_differences_of_the_reference(variant, causal, rng):
    """d/d(q, k, v) of ``Σ w·A`` (fast path, float64) equals central differences of the reference."""
    with jax.enable_x64(True):
        q, k, v = _qkv(rng, b=1, length=8, h=1)
        w = rng.standard_normal(q.shape)
        kw = dict(variant=variant, region_size=2, causal=causal)
        grads = jax.grad(lambda *a: jnp.sum(_attend(*a, None, **kw) * w), argnums=(0, 1, 2))(q, k, v)

        def loss(arrays):
            return float(np.sum(ref.combiner_ref(*arrays, variant, 2, causal) * w))

        eps = 1e-6
        for which in range(3):
            for idx in [tuple(rng.integers(0, n) for n in q.shape) for _ in range(3)]:
                up = [np.array(a) for a in (q, k, v)]
                down = [np.array(a) for a in (q, k, v)]
                up[which][idx] += eps
                down[which][idx] -= eps
                fd = (loss(up) - loss(down)) / (2 * eps)
                np.testing.assert_allclose(float(grads[which][idx]), fd, rtol=1e-5, atol=1e-8)


def test_mixing_matrix_is_full_attention_and_matches_reference(rng):
    """The module's materialised matrix: the reference's p(j|i) from its own q, k; nonzero on every visible entry."""
    m = mixers.get("combiner")(num_heads=2, variant="fixed", region_size=3, positions="none")
    x = harness.random_input(rng, 1, 13, 16)
    variables = harness.perturb(harness.jit_init(m, x), rng)
    M = np.asarray(harness.Jitted(m).apply(variables, x, method="mixing_matrix"), np.float64)
    p = nn.meta.unbox(variables["params"])
    xs = np.asarray(x, np.float64)[0]
    q = (xs @ np.asarray(p["q_proj"]["kernel"], np.float64)).reshape(13, 2, 8)
    k = (xs @ np.asarray(p["k_proj"]["kernel"], np.float64)).reshape(13, 2, 8)
    for h in range(2):
        want = ref.combiner_probs(q[:, h], k[:, h], "fixed", 3, True)
        assert rel_err(M[0, h], want) < 2e-5
        lower = np.tril(np.ones((13, 13), bool))
        assert (M[0, h][lower] > 0).all() and np.abs(M[0, h][~lower]).max() == 0.0
        np.testing.assert_allclose(M[0, h].sum(-1), 1.0, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["logsparse", "fixed"])
def test_step_matches_parallel(variant, rng):
    """The cached decode (the query's row recomputed from the cache) equals the parallel form.

    Axial's step runs in the contract; the other layouts differ only in :func:`part_labels`, whose
    row form is checked against the reference by test_matches_reference (segments), so these are slow.
    """
    m = mixers.get("combiner")(num_heads=2, variant=variant, region_size=2, max_length=9)
    x = harness.random_input(rng, 1, 9, 16)
    variables = harness.perturb(harness.jit_init(m, x), rng)
    harness.check_step_matches_parallel(harness.Jitted(m), variables, x)


@functools.partial(jax.jit, static_argnames=("variant", "causal"))
def _bf16_forms(q, k, v, *, variant, causal):
    return combiner_attention(q, k, v, variant=variant, region_size=4, causal=causal)


@pytest.mark.parametrize("causal", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_bfloat16_length_1_and_a_prime_are_finite(causal, rng):
    """Length 1 (nothing to pool, one leaf) and 13 (a partial last region), every layout, bfloat16 inputs."""
    for length in (1, 13):
        q, k, v = (jnp.asarray(rng.standard_normal((2, length, 2, 8)), jnp.bfloat16) for _ in range(3))
        for variant in VARIANTS:
            o = _bf16_forms(q, k, v, variant=variant, causal=causal)
            assert bool(jnp.isfinite(o).all()), (variant, length)


def test_bad_fields():
    with pytest.raises(ConfigError, match=r"^combiner\.variant='strided'"):
        mixers.get("combiner")(variant="strided")
    with pytest.raises(ConfigError, match=r"^combiner\.region_size=0"):
        mixers.get("combiner")(region_size=0)


@pytest.mark.slow
@pytest.mark.parametrize("variant,s", [("fixed", 16), ("axial", 16), ("logsparse", 8)])
def test_memory_grows_subquadratically(variant, s, rng):
    """Forward + backward temp memory from L = 256 to 1024 (measured: fixed ~7.6x, axial ~7.2x, logsparse ~5.4x)."""
    m = mixers.get("combiner")(num_heads=2, variant=variant, region_size=s)
    ratio = harness.check_memory_growth(m, rng, length=256, exponent=1.5)
    assert ratio < 9, ratio


@pytest.mark.slow
def test_memory_check_fails_for_full_attention(rng):
    """The same check on materialised full attention (~15.7x measured) fails: the test above can fail."""
    with pytest.raises(AssertionError, match="temp memory grew"):
        harness.check_memory_growth(mixers.get("mha")(num_heads=2, impl="reference"), rng, length=256,
                                    exponent=1.5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_long_bfloat16_is_finite(variant, rng):
    """L = 4096 (region size 64 ≈ √L), forward and gradient finite in bfloat16."""
    module = mixers.get("combiner")(num_heads=4, variant=variant, region_size=64, dtype=jnp.bfloat16)
    x = harness.random_input(rng, 1, 4096, 32).astype(jnp.bfloat16)
    variables = harness.jit_init(module, x)
    y, g = jax.jit(jax.value_and_grad(lambda v, x: jnp.sum(module.apply(v, x).astype(jnp.float32) ** 2),
                                      argnums=1))(variables, x)
    assert np.isfinite(float(y)) and bool(jnp.isfinite(g.astype(jnp.float32)).all())
