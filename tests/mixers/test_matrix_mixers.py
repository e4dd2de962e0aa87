"""Hydra's structured matrix mixers (toeplitz, vandermonde, cauchy, low_rank): float64 oracles.

The contract (segments, matrix path, bfloat16, ...) is checked for every mixer
in ``test_contract.py``; here: outputs, matrices and gradients against
``ref_matrix_mixers`` (the paper's closed forms), init, the lengths the fast
paths must handle, and the memory growth each path actually has.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get  # importing seqjax.mixers registers every family, these four included
from tests.mixers import harness
from tests.mixers.ref_mamba import params_of
from tests.mixers.ref_matrix_mixers import block_reference
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close

NAMES = ["toeplitz", "vandermonde", "cauchy", "low_rank"]
HEADDIM, QK = 8, 4
RTOL = harness.RTOL


def _module(name, **kw):
    kw.setdefault("headdim", HEADDIM)
    kw.setdefault("qk_dim", QK)
    kw.setdefault("max_length", 16)  # a small σ-length: entries of M comparable to I, so M is not hidden
    if name == "vandermonde":
        kw.setdefault("freq_scale", 0.05)  # at 1e-3, cos(2πε q s) − cos(2πε k t) ~ 1e-4 over a few positions
    return get(name)(**kw)


def _reference(m, p, x, seg=None, xp=np):
    return block_reference(m.mixer_name, p, x, headdim=m.headdim, qk_dim=m.qk_dim, max_length=m.max_length,
                           freq_scale=getattr(m, "freq_scale", 1e-3), segment_ids=seg, xp=xp)


def _setup(m, rng, batch, length):
    x = harness.random_input(rng, batch, length, 16)
    return x, harness.perturb(harness.jit_init(m, x), rng)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("length", [1, 37])
def test_matches_reference_float32(rng, name, length):
    m = _module(name)
    x, v = _setup(m, rng, 2, length)
    p = params_of(v)
    x64 = np.asarray(x, np.float64)
    J = harness.Jitted(m)
    assert_rel_close(J.apply(v, x), _reference(m, p, x64)[0], RTOL, f"{name} L={length}")
    seg = harness.segments(rng, 2, length)
    y = J.apply(v, x, segment_ids=jnp.asarray(seg))
    assert_rel_close(y, _reference(m, p, x64, seg)[0], RTOL, f"{name} L={length} segments")


@pytest.mark.slow
@pytest.mark.parametrize("name, impl", [("toeplitz", "direct"), ("low_rank", "reference")])
def test_other_impls_match_reference(rng, name, impl):
    m = _module(name, impl=impl)
    x, v = _setup(m, rng, 2, 11)
    assert_rel_close(jax.jit(m.apply)(v, x), _reference(m, params_of(v), np.asarray(x, np.float64))[0], RTOL, impl)


@pytest.mark.parametrize("name", NAMES)
def test_float64_output_and_matrix_exact(rng, name):
    x = rng.standard_normal((2, 13, 16))
    seg = harness.segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = _module(name, dtype=jnp.float64)
        v = harness.perturb(harness.jit_init(m, jnp.asarray(x)), rng)
        p = params_of(v)
        J = harness.Jitted(m)
        for s in (None, seg):
            y_ref, M_ref = _reference(m, p, x, s)
            ids = None if s is None else jnp.asarray(s)
            y = J.apply(v, jnp.asarray(x), segment_ids=ids)
            assert y.dtype == jnp.float64
            assert_rel_close(y, y_ref, RTOL_F64, f"{name} f64 fast path (segments: {s is not None})")
            eye = np.eye(13)
            assert np.abs(M_ref - eye).max() > 0.05  # the structured part is a visible fraction of the output
        # The matrix read off the mix (segments: the harder case), the structured part alone (M - I),
        # so that the identity cannot hide an error.
        M = J.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        assert_rel_close(np.asarray(M) - eye, M_ref - eye, RTOL_F64, f"{name} f64 M - I")


def _check_gradients(rng, name, batch, length, seg):
    x = rng.standard_normal((batch, length, 16))
    w = rng.standard_normal((batch, length, 16))
    m = _module(name)
    v = nn.meta.unbox(harness.perturb(harness.jit_init(m, jnp.float32(x)), rng))
    ids = None if seg is None else jnp.asarray(seg)

    def loss(params, x):
        return jnp.sum(m.apply({"params": params}, x, segment_ids=ids) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], jnp.float32(x))
    with jax.enable_x64(True):

        def ref_loss(p, x):
            return jnp.sum(_reference(m, p, x, seg, xp=jnp)[0] * w)

        p64 = params_of(v, xp=jnp)
        r_p, r_x = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(p64, jnp.asarray(x))
        assert_rel_close(g_x, r_x, RTOL_GRAD, f"{name} d/dx (segments: {seg is not None})")
        flat = params_of({"params": g_p})
        assert set(flat) == set(p64)
        for key in p64:
            assert_rel_close(flat[key], r_p[key], RTOL_GRAD, f"{name} d/d{key} (segments: {seg is not None})")


@pytest.mark.parametrize("name", NAMES)
def test_gradients(rng, name):
    # The fast paths (FFT, Q(KᵀV), the checkpointed dense scan) against autodiff of the closed form.
    _check_gradients(rng, name, 1, 6, None)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_gradients_segments(rng, name):
    _check_gradients(rng, name, 2, 7, np.array([[0, 0, 1, 1, 1, 2, 2], [3, 3, 3, 3, 3, 0, 0]]))


def test_init():
    m = _module("cauchy", headdim=None, qk_dim=16, max_length=128)
    p = params_of(m.init(jax.random.PRNGKey(0), 64, method=lambda mod, d: mod.parts(d)))
    d_in, h = 128, 2  # headdim: the largest divisor of 128 that is <= 64
    assert p["conv_weight"].shape == (7, d_in + 2 * h * 16) and np.abs(p["conv_weight"]).max() <= 7**-0.5
    assert float(p["cauchy_bias"]) == 0.5
    np.testing.assert_array_equal(p["norm"], np.ones(d_in))
    p = params_of(_module("toeplitz", headdim=8).init(jax.random.PRNGKey(0), 16, method=lambda mod, d: mod.parts(d)))
    assert p["conv_weight"].shape == (7, 32 + 2 * 4)  # two kernel channels per head


@pytest.mark.parametrize("field, value", [("d_conv", 6), ("headdim", 5), ("qk_dim", 0), ("max_length", -1)])
def test_config_errors(field, value):
    with pytest.raises(ConfigError, match=rf"^vandermonde\.{field}={value!r}"):
        _module("vandermonde", d_model=16, **{field: value})


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_short_and_prime_lengths_finite(rng, name):
    m = _module(name, dtype=jnp.bfloat16, max_length=128)
    x, v = _setup(m, rng, 1, 2)
    run = jax.jit(m.apply)
    for length in (1, 97):
        y = run(v, harness.random_input(rng, 1, length, 16).astype(jnp.bfloat16))
        assert y.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y, np.float32)).all(), (name, length)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_4096_finite(rng, name):
    m = _module(name, dtype=jnp.bfloat16, max_length=128)
    x, v = _setup(m, rng, 1, 4)
    x = harness.random_input(rng, 1, 4096, 16).astype(jnp.bfloat16)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(m.apply(v, x).astype(jnp.float32) ** 2)))
    y, g = jax.jit(m.apply)(v, x), grad(x)
    assert np.isfinite(np.asarray(y, np.float32)).all() and np.isfinite(np.asarray(g, np.float32)).all()
    assert float(jnp.std(y.astype(jnp.float32))) > 0


# The paper: Toeplitz O(L log L), low-rank O(L); the Vandermonde and Cauchy
# fast algorithms (O(L log² L)) are not implemented, so their dense paths are
# checked to be what they are: quadratic in memory (and more than linear).
@pytest.mark.parametrize("name, exponent", [("toeplitz", 1.0), ("low_rank", 1.0), ("vandermonde", 2.0),
                                            ("cauchy", 2.0)])
def test_memory_growth(rng, name, exponent):
    ratio = harness.check_memory_growth(_module(name), rng, length=128 if exponent == 1.0 else 256, exponent=exponent)
    print(f"{name}: temp memory x{ratio:.2f} from L to 4L")
    if exponent == 2.0:
        assert ratio > 8, f"{name}: the dense path should grow quadratically, grew {ratio:.2f}x"
