"""seqjax.ops.fast_exp.exp2 against NumPy's float64 exp2: accuracy, bias, edge values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops.fast_exp import LOG2_E, exp2

_exp2 = jax.jit(exp2)


def _rel_err(y):
    got = np.asarray(_exp2(jnp.asarray(y, jnp.float32))).astype(np.float64)
    exact = np.exp2(np.asarray(y, np.float32).astype(np.float64))
    return got / exact - 1


def test_relative_error_over_the_normal_range():
    # Every normal result: y in [-126, 127.5). XLA's own exp2 is within ~1e-7;
    # a degree-5 polynomial reaches 1.9e-7.
    y = np.random.default_rng(0).uniform(-126, 127.5, 1_000_000).astype(np.float32)
    err = _rel_err(y)
    assert np.abs(err).max() <= 1.1e-7


def test_errors_average_out():
    # The mean signed error is what a product of many decays compounds: ~4e-10
    # here, 4.2e-8 for the degree-5 fit.
    y = np.random.default_rng(1).uniform(-60, 60, 1_000_000).astype(np.float32)
    assert abs(_rel_err(y).mean()) <= 5e-9


@pytest.mark.parametrize("low", [-4.0, -1.0, -0.05])
def test_long_products_of_decays(low):
    # 4096 decays, as a scan multiplies them: the product's relative error
    # stays near sqrt(4096) roundings (measured <= 2.7e-6; jnp.exp2's own is
    # up to 1e-5 here), where a biased polynomial drifts to 1.7e-4.
    y = np.random.default_rng(2).uniform(low, 0, 4096).astype(np.float32)
    got = np.asarray(_exp2(y)).astype(np.float64)
    log_err = np.log(got).sum() - y.astype(np.float64).sum() * np.log(2)
    assert abs(log_err) <= 2e-5


def test_edge_values():
    y = jnp.array([-np.inf, -1000.0, -127.0, 0.0, 1.0, -3.0, 127.0, 127.4, 127.6, 128.0, 1000.0, np.inf, np.nan],
                  jnp.float32)
    got = np.asarray(_exp2(y))
    assert got[0] == 0 and got[1] == 0 and got[2] == 0
    # Integer exponents are exact: p(0) is 1.
    assert got[3] == 1.0 and got[4] == 2.0 and got[5] == 0.125 and got[6] == np.float32(2.0**127)
    np.testing.assert_allclose(got[7], np.exp2(np.float64(np.float32(127.4))), rtol=1.1e-7)
    assert np.all(np.isposinf(got[8:12]))
    assert np.isnan(got[12])


def test_integer_exponents_are_exact():
    k = np.arange(-126, 128, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(_exp2(k)), np.exp2(k.astype(np.float64)).astype(np.float32))


def test_other_dtypes_use_jnp_exp2():
    with jax.enable_x64(True):
        y = np.random.default_rng(3).uniform(-50, 50, 1000)
        got = np.asarray(exp2(jnp.asarray(y, jnp.float64)))
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, np.exp2(y), rtol=1e-14)
    yb = jnp.asarray(np.random.default_rng(4).uniform(-5, 5, 100), jnp.bfloat16)
    assert exp2(yb).dtype == jnp.bfloat16


def test_gradient_is_ln2_times_the_value():
    y = np.random.default_rng(5).uniform(-50, 50, 10_000).astype(np.float32)
    g = np.asarray(jax.jit(jax.vmap(jax.grad(exp2)))(y)).astype(np.float64)
    np.testing.assert_allclose(g, np.log(2) * np.exp2(y.astype(np.float64)), rtol=1e-6)


def test_exp_through_log2_e():
    x = np.random.default_rng(6).uniform(-80, 0, 10_000).astype(np.float32)
    got = np.asarray(_exp2(jnp.asarray(x) * LOG2_E)).astype(np.float64)
    # The float32 product x * LOG2_E is rounded, as x itself was: |x| * 2**-24 more.
    np.testing.assert_allclose(got, np.exp(x.astype(np.float64)), rtol=2e-7 + 80 * 2**-24)
