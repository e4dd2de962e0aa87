"""seqjax.mixers.common.Dense: nn.Dense's parameters and results, leading axes merged for the dot."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import parallel
from seqjax.mixers.common import Dense, dense


def _pair(features, **kw):
    return Dense(features, **kw), nn.Dense(features, **kw)


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("use_bias", [False, True])
def test_same_parameters_values_and_gradients_as_nn_dense(shape, use_bias, rng):
    ours, theirs = _pair(7, use_bias=use_bias, param_dtype=jnp.float64, dtype=jnp.float64)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=shape))
        v = ours.init(jax.random.key(1), x)
        assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, theirs.init(jax.random.key(1), x))
        g = jnp.asarray(rng.normal(size=shape[:-1] + (7,)))

        def loss(module):
            return lambda v, x: jnp.sum(module.apply(v, x) * g)

        y = np.asarray(ours.apply(v, x))
        # float64 NumPy: x @ W + b.
        want = np.asarray(x) @ np.asarray(v["params"]["kernel"])
        if use_bias:
            want = want + np.asarray(v["params"]["bias"])
        np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)
        ours_g, theirs_g = (jax.grad(loss(m), argnums=(0, 1))(v, x) for m in (ours, theirs))
        for a, b in zip(jax.tree.leaves(ours_g), jax.tree.leaves(theirs_g)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
        # float64 NumPy gradients of sum(y * g): dW = xᵀ g, db = Σ g, dx = g Wᵀ over all leading axes.
        xn, gn, wn = np.asarray(x), np.asarray(g), np.asarray(v["params"]["kernel"])
        rows_x, rows_g = xn.reshape(-1, xn.shape[-1]), gn.reshape(-1, 7)
        (gv, gx) = ours_g
        np.testing.assert_allclose(np.asarray(gv["params"]["kernel"]), rows_x.T @ rows_g, rtol=1e-12, atol=1e-12)
        if use_bias:
            np.testing.assert_allclose(np.asarray(gv["params"]["bias"]), rows_g.sum(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(gx), gn @ wn.T, rtol=1e-12, atol=1e-12)


def _dot_lhs_ranks(module, v, x):
    jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x))(v, x)
    return [e.invars[0].aval.ndim for e in jaxpr.eqns if e.primitive.name == "dot_general"]


def test_leading_axes_are_merged_for_the_dot(rng):
    # The point of the class: the dot (and so its transpose for the kernel
    # gradient) sees a (rows, d_in) matrix.
    module = dense(6, ("embed", "mlp"))
    x = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    v = module.init(jax.random.key(0), x)
    assert _dot_lhs_ranks(module, v, x) == [2]
    assert module.apply(v, x).shape == (2, 3, 6)


def test_leading_axes_kept_under_a_context_mesh(rng):
    # With the length axis split over devices, merging it into the batch
    # would make XLA reshard; under a mesh the dot keeps (b, l, d_in).
    module = dense(6, ("embed", "mlp"))
    x = jnp.asarray(rng.normal(size=(2, 8, 4)), jnp.float32)
    v = module.init(jax.random.key(0), x)
    mesh = parallel.make_mesh({"data": 2, "sequence": 4, "preset": "fsdp+sequence"})
    with parallel.activate(mesh, parallel.get_rules("fsdp+sequence")):
        assert _dot_lhs_ranks(module, v, x) == [3]
        y = jax.jit(module.apply)(v, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(module.apply(v, x)), rtol=1e-6, atol=1e-6)


def test_low_precision_compute_dtype(rng):
    ours, theirs = _pair(5, use_bias=True, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    v = ours.init(jax.random.key(2), x)
    y = ours.apply(v, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(theirs.apply(v, x), np.float32), rtol=1e-2,
                               atol=1e-2)
