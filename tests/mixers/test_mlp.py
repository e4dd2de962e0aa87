"""The ``mlp`` layer of hybrid patterns against a float64 NumPy MLP, and the Mamba-2-Hybrid preset."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from seqjax import mixers
from tests.mixers import harness


def _reference(params, x, activation):
    """``W_2 act(W_1 x + b_1) + b_2`` in float64 (Waleffe et al. 2024's MLP layer)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nn.meta.unbox(params))
    h = np.asarray(x, np.float64) @ p["wi"]["kernel"] + p["wi"]["bias"]
    act = {"gelu": lambda z: 0.5 * z * (1 + erf(z / np.sqrt(2))), "relu": lambda z: np.maximum(z, 0),
           "squared_relu": lambda z: np.maximum(z, 0) ** 2}[activation]
    return act(h) @ p["wo"]["kernel"] + p["wo"]["bias"]


def test_gelu_matches_float64_reference_with_gradient(rng):
    # seqjax's exact GELU (the erf form, faster on CPU than jax.nn.gelu's erfc)
    # against x·Φ(x) and its derivative Φ(x) + x·φ(x) in float64, over the
    # range activations reach, float32 and bfloat16.
    from seqjax.mixers.common import gelu

    x = np.concatenate([rng.uniform(-10, 10, 4000), rng.standard_normal(4000)])
    cdf = 0.5 * (1 + erf(x / np.sqrt(2)))
    want, dwant = x * cdf, cdf + x * np.exp(-x**2 / 2) / np.sqrt(2 * np.pi)
    got = gelu(jnp.float32(x))
    dgot = jax.vmap(jax.grad(gelu))(jnp.float32(x))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=3e-6)
    np.testing.assert_allclose(np.asarray(dgot), dwant, rtol=1e-6, atol=2e-6)
    half = gelu(jnp.asarray(x, jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float64), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("activation", ["gelu", "relu", "squared_relu"])
def test_matches_float64_mlp_with_gradients(activation, rng):
    with jax.enable_x64(True):
        m = mixers.get("mlp")(mlp_ratio=1.5, activation=activation, dtype=jnp.float64)
        x = jnp.asarray(rng.standard_normal((2, 7, 8)))
        v = harness.perturb(m.init(jax.random.key(0), x), rng)
        np.testing.assert_allclose(m.apply(v, x), _reference(v["params"], x, activation), rtol=1e-12, atol=1e-12)
        # Gradients: the float64 reference's by central differences along a random direction.
        w = rng.standard_normal((2, 7, 8))
        loss = lambda xx: jnp.sum(m.apply(v, xx) * w)  # noqa: E731
        d = rng.standard_normal(x.shape)
        eps = 1e-6
        fd = (np.sum(_reference(v["params"], x + eps * d, activation) * w)
              - np.sum(_reference(v["params"], x - eps * d, activation) * w)) / (2 * eps)
        np.testing.assert_allclose(np.sum(np.asarray(jax.grad(loss)(x)) * d), fd, rtol=1e-6)


def test_mixes_no_positions(rng):
    m = mixers.get("mlp")()
    x = jnp.asarray(rng.standard_normal((1, 6, 8)), jnp.float32)
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x)
    y_moved = m.apply(v, x.at[:, 3].add(1.0))
    changed = np.abs(np.asarray(y_moved - y)).max(axis=-1)[0]
    assert changed[3] > 0 and np.all(np.delete(changed, 3) == 0)
