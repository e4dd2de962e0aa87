"""Tests of decode_attention (split-KV) against the last row of the loop reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops.decode_attention import decode_attention
from tests.ops.ref_attention import attention_ref
from tests.ops.utils import RTOL_ATTN, RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err


def make_inputs(rng, b, s, h, hk, dk=8, dv=6):
    q = rng.standard_normal((b, h, dk))
    k = rng.standard_normal((b, s, hk, dk))
    v = rng.standard_normal((b, s, hk, dv))
    return q, k, v


def expected_rows(q, k, v, lengths, window=None, xp=np):
    """Per sequence: the last (only) row of causal attention over cache[:length]."""
    rows = []
    for r, n in enumerate(lengths):
        if n == 0:
            rows.append(xp.zeros((q.shape[1], v.shape[-1])))
            continue
        out = attention_ref(q[r:r + 1, None], k[r:r + 1, :n], v[r:r + 1, :n],
                            causal=True, window=window, xp=xp)
        rows.append(out[0, 0])
    return xp.stack(rows)


def check(q, k, v, lengths, **kw):
    expected = expected_rows(q, k, v, lengths, window=kw.get("window"))
    assert np.abs(expected).max() > 0
    f = jax.jit(lambda q, k, v, n: decode_attention(q, k, v, lengths=n, **kw))
    out = f(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(lengths))
    assert out.dtype == jnp.float32 and out.shape == expected.shape
    assert_rel_close(out, expected, RTOL_ATTN, "f32")
    with jax.enable_x64(True):
        out64 = f(*(jnp.asarray(x, jnp.float64) for x in (q, k, v)), jnp.asarray(lengths))
        assert out64.dtype == jnp.float64
        assert_rel_close(out64, expected, RTOL_F64, "f64")
    return np.asarray(out)


@pytest.mark.parametrize("hk,num_splits", [(1, 3), (2, 4), (4, 1), (2, 50)])
def test_matches_last_row_of_causal_attention(rng, hk, num_splits):
    s = 37  # not a multiple of 3 or 4; 50 splits > s
    q, k, v = make_inputs(rng, 5, s, h=4, hk=hk)
    lengths = np.array([1, 37, 13, 2, 30])
    check(q, k, v, lengths, num_splits=num_splits)


def test_default_lengths_use_the_whole_cache(rng):
    q, k, v = make_inputs(rng, 2, 11, h=2, hk=1)
    out = decode_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), num_splits=4)
    assert_rel_close(out, expected_rows(q, k, v, [11, 11]), RTOL_ATTN)


@pytest.mark.parametrize("window", [5, (3, 2)])
def test_window(rng, window):
    q, k, v = make_inputs(rng, 4, 37, h=4, hk=2)
    check(q, k, v, np.array([1, 37, 4, 20]), num_splits=4, window=window)


def test_zero_length_outputs_zero(rng):
    q, k, v = make_inputs(rng, 3, 9, h=2, hk=2)
    out = check(q, k, v, np.array([0, 9, 1]), num_splits=2)
    np.testing.assert_array_equal(out[0], 0.0)


def test_gradients_match_reference_autodiff(rng):
    q, k, v = make_inputs(rng, 3, 19, h=4, hk=2)
    lengths = np.array([19, 1, 8])
    w = rng.standard_normal((3, 4, v.shape[-1]))
    with jax.enable_x64(True):
        def ref_loss(q, k, v):
            return jnp.sum(expected_rows(q, k, v, lengths, xp=jnp) * w)

        expected = jax.jit(jax.grad(ref_loss, argnums=(0, 1, 2)))(q, k, v)

    def loss(q, k, v):
        return jnp.sum(decode_attention(q, k, v, lengths=lengths, num_splits=3) * w)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    got = grad(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)))
    for g, e, n in zip(got, expected, ("dq", "dk", "dv")):
        assert np.abs(np.asarray(e)).max() > 1e-3
        assert_rel_close(g, e, RTOL_GRAD, n)
    # Cache entries past each length get exactly zero gradient.
    np.testing.assert_array_equal(np.asarray(got[1])[1, 1:], 0.0)
    np.testing.assert_array_equal(np.asarray(got[2])[2, 8:], 0.0)


def test_bfloat16(rng):
    q, k, v = make_inputs(rng, 2, 37, h=4, hk=1)
    lengths = np.array([37, 5])
    out = decode_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), lengths=lengths)
    assert out.dtype == jnp.bfloat16
    assert rel_err(np.asarray(out, np.float32), expected_rows(q, k, v, lengths)) < 2e-2


def test_no_retrace_across_lengths(rng):
    q, k, v = (jnp.asarray(x, jnp.float32) for x in make_inputs(rng, 2, 16, h=2, hk=1))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(q, k, v, lengths):
        return decode_attention(q, k, v, lengths=lengths, num_splits=4)

    first = step(q, k, v, jnp.array([3, 16]))
    second = step(q, k, v, jnp.array([4, 16]))  # new lengths are values, not shapes
    assert not np.allclose(first[0], second[0])
    np.testing.assert_allclose(first[1], second[1], rtol=1e-6)
    chex.clear_trace_counter()


def test_bad_inputs(rng):
    q, k, v = (jnp.asarray(x, jnp.float32) for x in make_inputs(rng, 2, 8, h=3, hk=3))
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        decode_attention(q, k[:, :, :2], v[:, :, :2])
    with pytest.raises(ValueError, match="key dim"):
        decode_attention(q[..., :4], k, v)
    with pytest.raises(ValueError, match=r"q must have shape \(b, h, dk\)"):
        decode_attention(q[:, None], k, v)
    with pytest.raises(ValueError, match="lengths must have shape"):
        decode_attention(q, k, v, lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="num_splits"):
        decode_attention(q, k, v, num_splits=0)
    with pytest.raises(ValueError, match="window"):
        decode_attention(q, k, v, window=0)


@pytest.mark.parametrize("s", [5, 6, 9, 10])
def test_cache_sizes_that_need_fewer_splits(rng, s):
    # ceil(s / ceil(s / 4)) < 4 here: the chunks cover the cache in fewer splits.
    q, k, v = make_inputs(rng, 2, s, h=2, hk=1)
    check(q, k, v, np.array([s, max(1, s - 3)]), num_splits=4)
