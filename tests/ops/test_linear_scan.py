"""linear_scan: every implementation against the float64 loop reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops import dispatch, linear_scan
from tests.ops.ref_scan import linear_scan_ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close

IMPLS = ["sequential", "associative", "chunked"]


def _inputs(rng, shape, complex_=False, a_shape=None):
    a_shape = a_shape or shape
    # |a| in (0.5, 1): realistic decays; long products neither vanish nor blow up.
    a = rng.uniform(0.5, 1.0, a_shape) * rng.choice([-1.0, 1.0], a_shape)
    b = rng.standard_normal(shape)
    h0 = rng.standard_normal((shape[0],) + shape[2:])
    if complex_:
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, a_shape))
        b = b + 1j * rng.standard_normal(shape)
        h0 = h0 + 1j * rng.standard_normal(h0.shape)
    return a, b, h0


def _segments(rng, batch, length):
    # Random contiguous segments, ids not necessarily increasing.
    cuts = rng.random((batch, length)) < 0.2
    return np.cumsum(cuts, axis=1) % 3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("length", [1, 7, 37, 130])
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_reference_float32(rng, impl, length, reverse):
    a, b, h0 = _inputs(rng, (2, length, 3, 2))
    h, last = linear_scan(
        jnp.float32(a), jnp.float32(b), jnp.float32(h0), reverse=reverse, impl=impl, chunk_size=16
    )
    h_ref, last_ref = linear_scan_ref(np, a, b, h0, reverse=reverse)
    assert h.dtype == jnp.float32 and last.dtype == jnp.float32
    assert_rel_close(h, h_ref, RTOL_SCAN, "h")
    assert_rel_close(last, last_ref, RTOL_SCAN, "h_last")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_float64_exact_with_segments(rng, impl, reverse):
    a, b, h0 = _inputs(rng, (3, 41, 4))
    seg = _segments(rng, 3, 41)
    with jax.enable_x64(True):
        h, last = linear_scan(a, b, h0, reverse=reverse, segment_ids=seg, impl=impl, chunk_size=8)
        assert h.dtype == jnp.float64
    h_ref, last_ref = linear_scan_ref(np, a, b, h0, reverse=reverse, segment_ids=seg)
    assert_rel_close(h, h_ref, RTOL_F64, "h")
    assert_rel_close(last, last_ref, RTOL_F64, "h_last")


@pytest.mark.parametrize("impl", IMPLS)
def test_complex(rng, impl):
    a, b, h0 = _inputs(rng, (2, 29, 5), complex_=True)
    h, last = linear_scan(
        jnp.complex64(a), jnp.complex64(b), jnp.complex64(h0), impl=impl, chunk_size=8
    )
    h_ref, last_ref = linear_scan_ref(np, a, b, h0)
    assert h.dtype == jnp.complex64
    assert_rel_close(h, h_ref, RTOL_SCAN, "h")
    assert_rel_close(last, last_ref, RTOL_SCAN, "h_last")


@pytest.mark.parametrize("impl", IMPLS)
def test_broadcast_decay(rng, impl):
    # SSD-style: one decay per (batch, time, head) shared over a (p, n) state.
    a, b, h0 = _inputs(rng, (2, 19, 3, 4, 2), a_shape=(2, 19, 3, 1, 1))
    h, _ = linear_scan(jnp.float32(a), jnp.float32(b), jnp.float32(h0), impl=impl, chunk_size=4)
    h_ref, _ = linear_scan_ref(np, a, b, h0)
    assert_rel_close(h, h_ref, RTOL_SCAN, "h")


def test_segments_equal_separate_runs(rng):
    a, b, _ = _inputs(rng, (1, 30, 3))
    seg = np.array([[0] * 11 + [1] * 12 + [2] * 7])
    h, _ = linear_scan(jnp.float32(a), jnp.float32(b), segment_ids=seg)
    for lo, hi in [(0, 11), (11, 23), (23, 30)]:
        h_sep, _ = linear_scan(jnp.float32(a[:, lo:hi]), jnp.float32(b[:, lo:hi]))
        np.testing.assert_allclose(h[:, lo:hi], h_sep, rtol=1e-6, atol=1e-6)


def _grad_check(rng, impl, complex_, reverse, segments):
    a, b, h0 = _inputs(rng, (2, 23, 3), complex_=complex_)
    seg = _segments(rng, 2, 23) if segments else None
    w = rng.standard_normal(b.shape)  # random projection of h: loss = sum(w * |h|^2)-ish
    w_last = rng.standard_normal(h0.shape)

    def loss(h, last, xp):
        # Real loss of complex h: uses real and imaginary parts.
        return xp.sum(w * xp.real(h)) + xp.sum(w * xp.imag(h) ** 2) + xp.sum(w_last * xp.real(last))

    def fast(a, b, h0):
        h, last = linear_scan(a, b, h0, reverse=reverse, segment_ids=seg, impl=impl, chunk_size=4)
        return loss(h, last, jnp)

    def ref(a, b, h0):
        h, last = linear_scan_ref(jnp, a, b, h0, reverse=reverse, segment_ids=seg)
        return loss(h, last, jnp)

    with jax.enable_x64(True):
        g_ref = jax.grad(ref, argnums=(0, 1, 2))(a, b, h0)
    cast = (lambda x: jnp.complex64(x)) if complex_ else jnp.float32
    g = jax.grad(fast, argnums=(0, 1, 2))(cast(a), cast(b), cast(h0))
    for name, gi, gr in zip("a b h0".split(), g, g_ref):
        assert_rel_close(gi, gr, RTOL_GRAD, f"grad {name}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_real(rng, impl, reverse):
    _grad_check(rng, impl, complex_=False, reverse=reverse, segments=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_complex(rng, impl):
    _grad_check(rng, impl, complex_=True, reverse=False, segments=False)


def test_gradient_of_broadcast_decay_is_reduced(rng):
    a, b, h0 = _inputs(rng, (2, 9, 3, 4), a_shape=(1, 9, 3, 1))
    g = jax.grad(lambda a: jnp.sum(linear_scan(a, jnp.float32(b), jnp.float32(h0))[0] ** 2))(
        jnp.float32(a)
    )
    assert g.shape == a.shape
    with jax.enable_x64(True):
        g_ref = jax.grad(lambda a: jnp.sum(linear_scan_ref(jnp, a, b, h0)[0] ** 2))(a)
    assert_rel_close(g, g_ref, RTOL_GRAD, "grad a")


def test_bfloat16_inputs_accumulate_in_float32(rng):
    a, b, h0 = _inputs(rng, (2, 64, 8))
    a_bf, b_bf = jnp.bfloat16(a), jnp.bfloat16(b)
    h, last = linear_scan(a_bf, b_bf)
    assert h.dtype == jnp.bfloat16 and last.dtype == jnp.float32
    h_ref, _ = linear_scan_ref(np, np.float64(a_bf), np.float64(b_bf))
    # Only the final rounding to bf16 (8 bits of mantissa) remains.
    assert_rel_close(h, h_ref, 1e-2, "bf16 h")


def test_bad_inputs_raise_clear_errors():
    x = jnp.ones((2, 5, 3))
    with pytest.raises(ValueError, match="impl='fast'.*'sequential'"):
        linear_scan(x, x, impl="fast")
    with pytest.raises(ValueError, match="broadcast to b"):
        linear_scan(jnp.ones((2, 5, 4)), x)
    with pytest.raises(ValueError, match="h0"):
        linear_scan(x, x, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="segment_ids"):
        linear_scan(x, x, segment_ids=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="b must be"):
        linear_scan(jnp.ones(3), jnp.ones(3))


def test_no_retrace_on_same_shapes(rng):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(a, b):
        return linear_scan(a, b)[0]

    a, b, _ = _inputs(rng, (2, 16, 3))
    f(jnp.float32(a), jnp.float32(b))
    f(jnp.float32(a) * 0.5, jnp.float32(b) + 1.0)  # a second trace would raise


def test_auto_is_sequential_on_cpu(rng, monkeypatch):
    # The benchmark shows sequential ~3x faster than associative on CPU; auto must
    # not pick associative there. Observed through which forward runs.
    impls = dispatch._IMPLS["linear_scan"]
    sequential = impls["sequential"]
    called = []
    monkeypatch.setitem(impls, "sequential", lambda *args: called.append(1) or sequential(*args))
    if jax.default_backend() == "cpu":
        a, b, _ = _inputs(rng, (1, 8, 2))
        linear_scan(jnp.float32(a), jnp.float32(b))
        assert called, "auto did not use the sequential scan on CPU"


@pytest.mark.parametrize("impl", IMPLS)
def test_shared_decay_stays_compact_in_memory(rng, impl):
    # A decay shared over a (p, n) state must not be expanded to the state's size.
    shape, a_shape = (2, 256, 4, 32, 16), (2, 256, 4, 1, 1)
    state_bytes = np.prod(shape) * 4
    b = jnp.float32(rng.standard_normal(shape))
    compact_a, full_a = jnp.full(a_shape, 0.9, jnp.float32), jnp.full(shape, 0.9, jnp.float32)

    # What the op keeps for its backward pass, whatever the compiler: h (one
    # state-sized buffer) and the decay at its own size; a full-size decay
    # adds one state-sized buffer.
    def residual_bytes(a):  # shapes only: nothing runs
        vjp = jax.eval_shape(lambda a, b: jax.vjp(lambda a, b: linear_scan(a, b, impl=impl)[0], a, b)[1], a, b)
        return sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(vjp))

    assert residual_bytes(full_a) > 1.9 * state_bytes  # the measure sees a full-size decay
    assert residual_bytes(compact_a) < 1.1 * state_bytes, residual_bytes(compact_a) / state_bytes

    # The compiled forward+backward (arguments + temporaries) with the compact
    # decay needs at least half a state-sized buffer less than with a full one.
    # Measured margins in state sizes (sequential, associative, chunked): XLA
    # of jax 0.10.2: 1.00, 2.75, 4.17; jax 0.11.2 and 0.12.0.1: 1.00, 0.75,
    # 4.17 (the associative plan keeps two more state-sized buffers from 0.11
    # on, an XLA regression); with the decay broadcast to full size inside
    # the op: at most 0.16.
    def plan_bytes(a):
        loss = lambda a, b: jnp.sum(linear_scan(a, b, impl=impl)[0] ** 2)
        stats = jax.jit(jax.grad(loss, (0, 1))).lower(a, b).compile().memory_analysis()
        return stats.temp_size_in_bytes + stats.argument_size_in_bytes

    compact, full = plan_bytes(compact_a), plan_bytes(full_a)
    assert compact <= full - 0.5 * state_bytes, ((full - compact) / state_bytes)


@pytest.mark.parametrize("reverse", [False, True])
def test_length_one_with_segments(rng, reverse):
    a, b, h0 = _inputs(rng, (2, 1, 3))
    h, last = linear_scan(
        jnp.float32(a), jnp.float32(b), jnp.float32(h0), reverse=reverse, segment_ids=np.array([[0], [4]])
    )
    assert_rel_close(h, a * h0[:, None] + b, RTOL_SCAN, "h")
    assert_rel_close(last, (a * h0[:, None] + b)[:, 0], RTOL_SCAN, "h_last")
