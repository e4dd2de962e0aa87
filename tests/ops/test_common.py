"""seqjax.ops.common helpers that carry arithmetic: sum_by_halves and broadcast_axis against NumPy in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops.common import broadcast_axis, sum_by_halves


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 17, 31, 64])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_sum_by_halves_is_the_sum(size, axis):
    shape = [3, 4, 2]
    shape[axis] = size
    x = np.random.default_rng(size).standard_normal(shape)
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(lambda x: sum_by_halves(x, axis))(jnp.asarray(x, jnp.float64)))
    np.testing.assert_allclose(got, x.sum(axis=axis), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("axis, size", [(0, 3), (1, 8), (2, 5), (3, 1)])
def test_broadcast_axis_and_its_gradient(axis, size):
    rng = np.random.default_rng(axis + 10 * size)
    x = rng.standard_normal((3, 4, 2))
    w = rng.standard_normal(x.shape[:axis] + (size,) + x.shape[axis:])
    with jax.enable_x64(True):
        y = broadcast_axis(jnp.asarray(x), axis, size)
        g = jax.grad(lambda x: jnp.sum(w * broadcast_axis(x, axis, size)))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(np.expand_dims(x, axis), w.shape))
    # d/dx sum(w * broadcast(x)) = w summed over the new axis.
    np.testing.assert_allclose(np.asarray(g), w.sum(axis=axis), rtol=1e-13, atol=1e-13)


def test_broadcast_axis_gradient_has_no_reduce():
    # The point of the helper: its transpose is slice adds, never a reduce
    # (which XLA:CPU may run as a library call; see its docstring). A plain
    # broadcast's vjp has one.
    x = jnp.ones((2, 3, 4))

    def vjp_eqns(f):
        _, pullback = jax.vjp(f, x)
        return {e.primitive.name for e in jax.make_jaxpr(pullback)(jnp.ones((2, 8, 3, 4))).eqns}

    assert "reduce_sum" in vjp_eqns(lambda x: jnp.broadcast_to(x[:, None], (2, 8, 3, 4)))
    assert "reduce_sum" not in vjp_eqns(lambda x: broadcast_axis(x, 1, 8))
