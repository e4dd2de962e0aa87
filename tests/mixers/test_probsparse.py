"""ProbSparse self-attention (Informer) against the float64 reference of the paper's equations.

The contract (step, segments, matrix, bfloat16) runs in ``test_contract.py``
with ``u = L`` (every query active); here the sparse regime ``u < L``:
outputs, gradients and the mixing matrix against ``ref_probsparse`` on the
same sampled keys, the decode rule, memory growth and long inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import mixers
from seqjax.mixers.probsparse import sample_count, sample_keys, select_queries, sparsity_measure, visible_ranges
from tests.mixers import harness
from tests.mixers import ref_probsparse as ref
from tests.mixers.ref_attention_mixers import assert_gradients_match, params_of, random_variables
from tests.ops.utils import assert_rel_close, rel_err

WIDTH = 16


def _config(**kw):
    return dict(dict(num_heads=2, causal=True, factor=2.0, sample_seed=3), **kw)


def _case(rng, config, batch=2, length=29, segments=False):
    module = mixers.get("probsparse")(**config)
    x = np.asarray(rng.standard_normal((batch, length, WIDTH)), np.float32)
    variables = random_variables(module, x, rng)
    seg = harness.segments(rng, batch, length, p=0.1) if segments else None
    return module, x, variables, seg


def _selection(variables, x, config, seg):
    """The reference's top-u selection, with its margin checked so float32 cannot reorder the cut."""
    M = ref.measurements(params_of(variables), x, segment_ids=seg, **config)
    active, gap = ref.top_u(M, ref.count(x.shape[1], config["factor"]))
    assert gap > 1e-4, f"near-tie at the top-u cut ({gap:.1e}): pick another input"
    return active


def test_counts_and_pure_selection():
    assert [sample_count(n, 5.0) for n in (1, 2, 12, 13, 4096)] == [1, 2, 12, 13, 42]
    assert sample_count(29, 2.0) == 7 and sample_count(1000, 0.01) == 1
    m = jnp.asarray([[0.5, 2.0, 2.0, -1.0, 3.0]])
    np.testing.assert_array_equal(select_queries(m, 3), [[4, 1, 2]])  # ties: the lower position first
    s = jnp.asarray([[1.0, 3.0, 5.0, 100.0]])
    assert float(sparsity_measure(s, jnp.asarray([[True, True, True, False]]))[0]) == 2.0


def test_sampling_is_deterministic_and_inside_the_visible_range(rng):
    seg = jnp.asarray(harness.segments(rng, 2, 40, p=0.15))
    sample = jax.jit(lambda seed, lo, hi: sample_keys(seed, jnp.arange(40)[None], lo, hi, 9, 40))
    for causal in (True, False):
        lo, hi = visible_ranges(seg, 2, 40, causal)
        rlo, rhi = ref.ranges(np.asarray(seg), 2, 40, causal)
        np.testing.assert_array_equal(lo, rlo)
        np.testing.assert_array_equal(hi, rhi)
        idx, valid = sample(7, lo, hi)
        idx2, _ = sample(7, lo, hi)
        assert idx.shape == (2, 40, 9) and bool(valid.all())
        np.testing.assert_array_equal(idx, idx2)
        assert bool(((idx >= lo[..., None]) & (idx < hi[..., None])).all())
    # A different seed draws other keys; U >= L gives every key, masked to the range.
    assert not np.array_equal(sample(8, lo, hi)[0], idx)
    idx, valid = sample_keys(0, jnp.arange(5)[None], 0, jnp.arange(1, 6)[None], 5, 5)
    np.testing.assert_array_equal(valid[0], np.tril(np.ones((5, 5), bool)))


@pytest.mark.parametrize("causal", [True, False])
def test_matches_reference(causal, rng):
    """Length 29 (a prime), packed segments; unpacked rows: the step tests (causal) and length 97 (bidirectional)."""
    config = _config(causal=causal)
    module, x, variables, seg = _case(rng, config, segments=True)
    active = _selection(variables, x, config, seg)
    assert 0 < active.sum() < active.size  # the sparse regime: u = 7 of 29
    y = harness.Jitted(module).apply(variables, jnp.asarray(x), segment_ids=jnp.asarray(seg))
    want = ref.probsparse_reference(params_of(variables), np.asarray(x, np.float64), active, segment_ids=seg, **config)
    assert_rel_close(y, want, 2e-5, "output")


@pytest.mark.parametrize("length", [1, pytest.param(97, marks=pytest.mark.slow)])
def test_lengths_one_and_prime(length, rng):
    config = _config(causal=False, factor=5.0, positions="none", num_heads=4)
    module, x, variables, _ = _case(rng, config, batch=1, length=length)
    active = _selection(variables, x, config, None) if length > 1 else np.ones((1, 1, 4), bool)
    y = harness.Jitted(module).apply(variables, jnp.asarray(x))
    want = ref.probsparse_reference(params_of(variables), np.asarray(x, np.float64), active, **config)
    assert_rel_close(y, want, 2e-5, f"L={length}")


@pytest.mark.parametrize("causal", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_mixing_matrix_matches_reference(causal, rng):
    config = _config(causal=causal)
    module, x, variables, seg = _case(rng, config, batch=1, length=17, segments=True)
    active = _selection(variables, x, config, seg)
    M = harness.Jitted(module).apply(variables, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
    want = ref.probsparse_matrix(params_of(variables), x, active, segment_ids=seg, **config)
    assert_rel_close(M, want, 2e-5, "M")
    lazy = ~active[0].T  # (h, l): lazy rows are uniform over the visible keys
    assert np.allclose(np.asarray(M)[0][lazy].max(axis=-1) * (np.asarray(M)[0][lazy] > 0).sum(axis=-1), 1.0)


@pytest.mark.parametrize("causal", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_gradients_match_reference(causal, rng):
    config = _config(causal=causal, num_heads=2)
    module, x, variables, seg = _case(rng, config, batch=1, length=13, segments=True)
    active = _selection(variables, x, config, seg)
    reference = lambda p, xx: ref.probsparse_reference(p, xx, active, segment_ids=seg, xp=jnp, **config)  # noqa: E731
    assert_gradients_match(module, variables, x, seg, reference, 2e-4)


def _rollout(module, variables, x, max_length):
    J = harness.Jitted(module)
    cache = module.apply(variables, x.shape[0], max_length, method="init_cache")
    ys = []
    for t in range(x.shape[1]):
        y_t, cache = J.apply(variables, x[:, t], cache, method="step")
        ys.append(y_t)
    return jnp.stack(ys, axis=1)


def test_step_with_a_separating_threshold_equals_the_sparse_parallel_form(rng):
    """With τ between the u-th and (u+1)-th measurement, decoding picks the parallel form's top u."""
    config = _config(num_heads=1, factor=2.0)
    module, x, variables, _ = _case(rng, config, batch=1, length=19)
    M = ref.measurements(params_of(variables), x, **config)[0, :, 0]
    u = ref.count(19, config["factor"])
    desc = np.sort(M)[::-1]
    assert u < 19 and desc[u - 1] - desc[u] > 1e-4
    tau = float(desc[u - 1] + desc[u]) / 2
    stepper = mixers.get("probsparse")(**config, decode_threshold=tau)
    y = harness.Jitted(module).apply(variables, jnp.asarray(x))
    assert rel_err(_rollout(stepper, variables, jnp.asarray(x), 19), y) < 2e-5


def test_step_threshold_rule_matches_reference(rng):
    config = _config(num_heads=2, factor=2.0)
    module, x, variables, _ = _case(rng, config, batch=2, length=17)
    slots = 24  # the cache is longer than the rollout: samples counted from the cache length
    M = ref.measurements(params_of(variables), x, slots=slots, **config)
    tau = float(np.median(M))
    assert np.abs(M - tau).min() > 1e-5
    active = ref.above(M, tau)
    assert 0 < active.sum() < active.size
    stepper = mixers.get("probsparse")(**config, decode_threshold=tau)
    got = _rollout(stepper, variables, jnp.asarray(x), slots)
    want = ref.probsparse_reference(params_of(variables), np.asarray(x, np.float64), active, **config)
    assert_rel_close(got, want, 2e-5, "step")


@pytest.mark.slow
def test_step_without_threshold_is_full_attention(rng):
    """decode_threshold=None: every decoding query is active, the parallel form with u = L."""
    config = _config(num_heads=2, factor=8.0)  # u = ⌈8 ln 13⌉ >= 13
    module, x, variables, _ = _case(rng, config, batch=2, length=13)
    y = harness.Jitted(module).apply(variables, jnp.asarray(x))
    assert rel_err(_rollout(module, variables, jnp.asarray(x), 13), y) < 2e-5
    want = ref.probsparse_reference(params_of(variables), np.asarray(x, np.float64), np.ones((2, 13, 2), bool),
                                    **config)
    assert_rel_close(y, want, 2e-5, "u = L")


def test_memory_grows_subquadratically(rng):
    """Forward + backward temp memory from L = 128 to 512: ~4.8x measured (u = L, full attention: ~15x)."""
    ratio = harness.check_memory_growth(mixers.get("probsparse")(num_heads=2), rng, length=128, width=WIDTH,
                                        exponent=1.2)
    assert ratio < 8, ratio


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
def test_long_bfloat16_is_finite(causal, rng):
    module = mixers.get("probsparse")(num_heads=4, causal=causal, dtype=jnp.bfloat16)
    x = harness.random_input(rng, 1, 4096, 32).astype(jnp.bfloat16)
    variables = harness.jit_init(module, x)
    y, g = jax.jit(jax.value_and_grad(lambda v, x: jnp.sum(module.apply(v, x).astype(jnp.float32) ** 2),
                                      argnums=1))(variables, x)
    assert np.isfinite(float(y)) and bool(jnp.isfinite(g.astype(jnp.float32)).all())
