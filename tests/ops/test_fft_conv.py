"""Tests for seqjax.ops.fft_conv.fft_conv against the direct double-sum convolution (ref_ssm)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops import dispatch
from seqjax.ops.fft_conv import fft_conv, smooth_size

from . import ref_ssm as ref
from .utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

CASES = [(1, 1), (7, 7), (13, 5), (37, 37), (64, 64), (129, 129), (129, 40)]  # (l, lk)
RUN_IMPLS = [i for i in dispatch.implementations("fft_conv") if i != "auto"]

_conv = jax.jit(fft_conv, static_argnames=("bidirectional", "impl"))


def _inputs(rng, l, lk, h=3, b=2, bidirectional=False):
    u = rng.standard_normal((b, l, h))
    k = rng.standard_normal(((2,) if bidirectional else ()) + (h, lk))
    return u, k, rng.standard_normal(h)


@pytest.mark.parametrize("l,lk", CASES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("impl", RUN_IMPLS)
def test_matches_direct_sum(rng, l, lk, bidirectional, impl):
    u, k, D = _inputs(rng, l, lk, bidirectional=bidirectional)
    for use_d in (False, True):
        d = D if use_d else None
        want = ref.causal_conv(np, u, k, d, bidirectional)
        with jax.enable_x64(True):
            got = _conv(u, k, D=d, bidirectional=bidirectional, impl=impl)
            assert got.dtype == jnp.float64 and got.shape == u.shape
            assert_rel_close(got, want, RTOL_F64, f"float64 D={use_d}")
        got = _conv(jnp.float32(u), jnp.float32(k), D=None if d is None else jnp.float32(d),
                    bidirectional=bidirectional, impl=impl)
        assert got.dtype == jnp.float32
        assert_rel_close(got, want, RTOL_SCAN, f"float32 D={use_d}")


def test_no_wraparound(rng):
    """An impulse at the last step reaches no earlier output (even with lk = l)."""
    l, h = 37, 2
    u = np.zeros((1, l, h))
    u[0, -1] = 1.0
    k = rng.uniform(1.0, 2.0, (h, l))
    for impl in RUN_IMPLS:
        y = np.asarray(_conv(jnp.float32(u), jnp.float32(k), impl=impl))
        # Wrap-around would put values of size ~k (1..2) there; FFT rounding is ~1e-7.
        assert np.max(np.abs(y[0, :-1])) < 1e-5, impl
        np.testing.assert_allclose(y[0, -1], k[:, 0], rtol=1e-6)


def test_bfloat16_in_bfloat16_out(rng):
    u, k, D = _inputs(rng, 64, 64)
    want = ref.causal_conv(np, u, k, D)
    got = fft_conv(jnp.asarray(u, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16), D=jnp.asarray(D, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    # bfloat16 rounding of the inputs (and output) dominates: 8 bits of mantissa.
    assert rel_err(np.asarray(got, np.float32), want) < 2e-2


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("impl", RUN_IMPLS)
def test_grads(rng, bidirectional, impl):
    l, lk = 13, 9
    u, k, D = _inputs(rng, l, lk, h=2, bidirectional=bidirectional)
    W = rng.standard_normal(u.shape)

    def impl_loss(u, k, D):
        return jnp.sum(fft_conv(u, k, D=D, bidirectional=bidirectional, impl=impl) * W)

    def ref_loss(u, k, D):
        return jnp.sum(ref.causal_conv(jnp, u, k, D, bidirectional) * W)

    with jax.enable_x64(True):
        want = jax.grad(ref_loss, (0, 1, 2))(jnp.asarray(u), jnp.asarray(k), jnp.asarray(D))
        got64 = jax.jit(jax.grad(impl_loss, (0, 1, 2)))(u, k, D)
    got32 = jax.jit(jax.grad(impl_loss, (0, 1, 2)))(*(jnp.float32(x) for x in (u, k, D)))
    for name, w, g64, g32 in zip("ukD", want, got64, got32):
        assert_rel_close(g64, w, RTOL_F64, f"float64 d{name}")
        assert_rel_close(g32, w, RTOL_GRAD, f"float32 d{name}")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fft_path_is_one_chain_of_transforms(rng, bidirectional):
    """A call is one rFFT and one inverse, its gradient one more of each.

    The kernel is transformed as an extra batch row of the input, so no two
    FFTs of a call or its backward are independent: on JAX 0.11's XLA:CPU two
    FFTs running at once on a 2-thread pool deadlock (docs/kernels.md, Known
    gaps). Separate transforms of input and kernel compiled to 3 and 6."""
    u, k, D = (jnp.float32(x) for x in _inputs(rng, 64, 64, bidirectional=bidirectional))

    def loss(u, k):
        return jnp.sum(jnp.sin(fft_conv(u, k, D=D, bidirectional=bidirectional, impl="fft")))

    def ffts(fn):
        return jax.jit(fn).lower(u, k).compile().as_text().count(" fft(")

    assert ffts(lambda u, k: fft_conv(u, k, D=D, bidirectional=bidirectional, impl="fft")) == 2
    assert ffts(jax.grad(loss, (0, 1))) == 4


def test_auto_agrees(rng):
    for lk in (8, 100):
        u, k, _ = _inputs(rng, 100, lk)
        want = ref.causal_conv(np, u, k)
        assert_rel_close(fft_conv(jnp.float32(u), jnp.float32(k)), want, RTOL_SCAN, f"auto lk={lk}")


def testsmooth_size():
    for n in range(1, 300):
        s = smooth_size(n)
        assert s >= n
        r = s
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1
        # Nothing smaller qualifies.
        assert all(not _is_smooth(t) for t in range(n, s))


def _is_smooth(t):
    for p in (2, 3, 5):
        while t % p == 0:
            t //= p
    return t == 1


def test_no_retrace(rng):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(u, k, D):
        return fft_conv(u, k, D=D, impl="fft")

    u, k, D = (jnp.float32(x) for x in _inputs(rng, 16, 16))
    f(u, k, D)
    f(u + 1.0, k * 2.0, D - 1.0)


def test_errors():
    u = jnp.ones((2, 8, 3))
    with pytest.raises(ValueError, match="impl"):
        fft_conv(u, jnp.ones((3, 8)), impl="pallas")
    with pytest.raises(ValueError, match="k must"):
        fft_conv(u, jnp.ones((3, 9)))
    with pytest.raises(ValueError, match="k must"):
        fft_conv(u, jnp.ones((3, 8)), bidirectional=True)
    with pytest.raises(ValueError, match="D must"):
        fft_conv(u, jnp.ones((3, 8)), D=jnp.ones(4))
    with pytest.raises(ValueError, match="u must"):
        fft_conv(jnp.ones((8, 3)), jnp.ones((3, 8)))

