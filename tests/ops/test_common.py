"""seqjax.ops.common helpers that carry arithmetic: sum_by_halves against NumPy's sum in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops.common import sum_by_halves


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 17, 31, 64])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_sum_by_halves_is_the_sum(size, axis):
    shape = [3, 4, 2]
    shape[axis] = size
    x = np.random.default_rng(size).standard_normal(shape)
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(lambda x: sum_by_halves(x, axis))(jnp.asarray(x, jnp.float64)))
    np.testing.assert_allclose(got, x.sum(axis=axis), rtol=1e-13, atol=1e-13)
