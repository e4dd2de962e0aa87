"""linear_scan's Pallas kernel: interpret mode (GPU and TPU semantics) against the float64 loop reference, and lowering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.kernels import linear_scan as kernel
from seqjax.kernels import sequence_split
from seqjax.kernels.common import interpret_as
from seqjax.ops import dispatch, linear_scan
from tests.kernels.lowering import kernel_calls, lower_for, specs
from tests.ops.ref_scan import linear_scan_ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close

KINDS = ["gpu", "tpu"]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks small enough that tiny inputs span several channel tiles, chunks and a padded remainder
    (on TPU two tiles a program: 3 tiles run as 2 programs, the second half padding)."""
    monkeypatch.setattr(kernel, "TILE", 8)
    monkeypatch.setattr(kernel, "ROWS", 2)
    monkeypatch.setitem(kernel.CHUNK, "gpu", 16)
    monkeypatch.setitem(kernel.CHUNK, "tpu", 8)


@pytest.fixture
def cut_blocks(small_blocks, monkeypatch):
    """Small blocks, and the GPU scan cut into segments at a few programs (sequence_split)."""
    monkeypatch.setattr(sequence_split, "SPLIT_PROGRAMS", 64)
    monkeypatch.setattr(sequence_split, "MIN_SEGMENT", 8)


def _inputs(rng, shape, complex_=False):
    # |a| in (0.5, 1): products over the length neither vanish nor blow up.
    a = rng.uniform(0.5, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    b = rng.standard_normal(shape)
    h0 = rng.standard_normal((shape[0],) + shape[2:])
    if complex_:
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
        b = b + 1j * rng.standard_normal(shape)
        h0 = h0 + 1j * rng.standard_normal(h0.shape)
    return a, b, h0


def _loss(h, last, w, w_last):
    # A real functional of (h, last) that reads real and imaginary parts.
    return jnp.sum(w * jnp.real(h)) + jnp.sum(w * jnp.imag(h) ** 2) + jnp.sum(w_last * jnp.real(last))


def _check(rng, kind, shape, complex_, reverse, segments, dtype, rtol, rtol_grad):
    a, b, h0 = _inputs(rng, shape, complex_)
    seg = np.cumsum(rng.random(shape[:2]) < 0.2, axis=1) % 3 if segments else None
    w, w_last = rng.standard_normal(shape), rng.standard_normal(h0.shape)

    def run(fn, a, b, h0):
        h, last = fn(a, b, h0, reverse=reverse, segment_ids=seg)
        return _loss(h, last, w, w_last), (h, last)

    def fast(a, b, h0, **kw):
        return linear_scan(a, b, h0, impl="pallas", **kw)

    def ref(a, b, h0, **kw):
        return linear_scan_ref(jnp, a, b, h0, **kw)

    with jax.enable_x64(True):
        (g_ref, (h_ref, last_ref)) = _grads(ref, a, b, h0, run)
        with interpret_as(kind):
            cast = [jnp.asarray(x, dtype) for x in (a, b, h0)]
            g, (h, last) = _grads(fast, *cast, run=run)
    assert h.dtype == dtype
    assert_rel_close(h, h_ref, rtol, "h")
    assert_rel_close(last, last_ref, rtol, "h_last")
    for name, gi, gr in zip(("a", "b", "h0"), g, g_ref):
        assert gi.dtype == dtype
        assert_rel_close(gi, gr, rtol_grad, f"grad {name}")


def _grads(fn, a, b, h0, run):
    grad = jax.jit(jax.grad(lambda *x: run(fn, *x), argnums=(0, 1, 2), has_aux=True))
    return grad(a, b, h0)


def test_float64_exact_with_segments_and_h0(rng, small_blocks):
    # 3 channel tiles of 8 (the last padded) and 20 positions: two chunks, the
    # second padded. GPU semantics only: TPUs have no float64.
    _check(rng, "gpu", (2, 20, 3, 6), complex_=False, reverse=False, segments=True,
           dtype=jnp.float64, rtol=RTOL_F64, rtol_grad=RTOL_F64)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_reverse_with_segments_and_h0(rng, small_blocks, kind):
    _check(rng, kind, (2, 20, 3, 6), complex_=False, reverse=True, segments=True,
           dtype=jnp.float32, rtol=RTOL_SCAN, rtol_grad=RTOL_GRAD)


@pytest.mark.parametrize("kind", KINDS)
def test_complex64(rng, small_blocks, kind):
    _check(rng, kind, (2, 12, 9), complex_=True, reverse=False, segments=False,
           dtype=jnp.complex64, rtol=RTOL_SCAN, rtol_grad=RTOL_GRAD)


@pytest.mark.parametrize("complex_, dtype, rtol, segments", [
    (False, jnp.float64, RTOL_F64, 2),  # 6 programs, 48 positions (chunks of 16): 2 segments of 24
    (True, jnp.complex64, RTOL_SCAN, 4),  # chunks of 8 for complex inputs: 4 segments of 16, the last padded
])
def test_cut_sequence(rng, cut_blocks, complex_, dtype, rtol, segments):
    # The GPU kernel with the sequence cut into segments, forward and reverse
    # (the adjoint runs through the same cut), documents starting inside
    # segments, an initial state; a wrong segment decay or entering state
    # fails the reference at ~1e-1.
    chunk = kernel.CHUNK["gpu"] // (2 if complex_ else 1)
    assert sequence_split.split_for(6, 48, chunk) == segments
    for reverse in (False, True):
        _check(rng, "gpu", (2, 45, 3, 6), complex_=complex_, reverse=reverse, segments=True,
               dtype=dtype, rtol=rtol, rtol_grad=rtol)


@pytest.mark.parametrize("length", [1, 45])
def test_front_door_default_blocks(rng, length):
    # The real blocks (128 channels, 32-position chunks) through the op with
    # no override: on CPU the GPU kernel runs interpreted. Length 45: two
    # chunks, the second padded.
    a, b, h0 = _inputs(rng, (2, length, 3))
    h, last = jax.jit(lambda *x: linear_scan(*x, impl="pallas"))(*(jnp.float32(x) for x in (a, b, h0)))
    h_ref, last_ref = linear_scan_ref(np, a, b, h0)
    assert_rel_close(h, h_ref, RTOL_SCAN, "h")
    assert_rel_close(last, last_ref, RTOL_SCAN, "h_last")


@pytest.mark.parametrize("kind", ["gpu", pytest.param("tpu", marks=pytest.mark.slow)])
def test_bfloat16_inputs(rng, small_blocks, kind):
    # bf16 inputs accumulate in float32 (the op casts before the kernel); only
    # the output's rounding to bf16 (8 mantissa bits) is left: tolerance 1e-2.
    a, b, _ = _inputs(rng, (2, 23, 4))
    a_bf, b_bf = jnp.bfloat16(a), jnp.bfloat16(b)
    with interpret_as(kind):
        h, last = jax.jit(lambda a, b: linear_scan(a, b, impl="pallas"))(a_bf, b_bf)
    assert h.dtype == jnp.bfloat16 and last.dtype == jnp.float32
    h_ref, last_ref = linear_scan_ref(np, np.float64(a_bf), np.float64(b_bf))
    assert_rel_close(h, h_ref, 1e-2, "bf16 h")
    assert_rel_close(last, last_ref, RTOL_SCAN, "bf16 h_last (float32)")


@pytest.mark.parametrize("platform, expected", [("tpu", "pallas"), ("gpu", "associative"), ("cpu", "sequential")])
def test_auto_picks_by_platform(monkeypatch, platform, expected):
    # GPU: XLA's associative scan was faster than the kernel on an H200.
    monkeypatch.setattr(dispatch, "platform", lambda: platform)
    assert dispatch.resolve("linear_scan", "auto") == expected


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_lowers_at_realistic_shapes(platform, dtype):
    # b=2, l=4096, d=2048: forward and the gradient (which runs the kernel
    # again for the adjoint scan) lower within shared memory / VMEM. On GPU
    # each scan is two kernels (the sequence cut into 16 segments), on TPU one.
    args = specs(((2, 4096, 2048), dtype), ((2, 4096, 2048), dtype), ((2, 2048), dtype))

    def loss(a, b, h0):
        h, last = linear_scan(a, b, h0, impl="pallas")
        return jnp.sum(jnp.abs(h)) + jnp.sum(jnp.abs(last))

    scan = 2 if platform == "cuda" else 1
    chunk = kernel.CHUNK["gpu"] // (2 if dtype == jnp.complex64 else 1)
    assert sequence_split.split_for(2 * 2048 // kernel.TILE, 4096, chunk) == 16
    assert kernel_calls(lower_for(lambda *x: linear_scan(*x, impl="pallas"), args, platform), platform) == scan
    assert kernel_calls(lower_for(jax.grad(loss, argnums=(0, 1, 2)), args, platform), platform) == 2 * scan


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_default_blocks_several_tiles_and_chunks(rng, kind):
    # The real blocks with gradients: 300 channels (3 tiles, the last padded)
    # and 530 positions (17 GPU chunks / 3 TPU chunks, the last padded). The
    # reference is the op's float64 "sequential" path, which
    # tests/ops/test_linear_scan.py holds to the loop reference at 1e-10 (the
    # loop itself is too slow to differentiate at this length).
    a, b, h0 = _inputs(rng, (2, 530, 300))
    seg = np.cumsum(rng.random((2, 530)) < 0.02, axis=1) % 3
    w = rng.standard_normal(b.shape)

    def grads(impl, x):
        def loss(*x):
            h, last = linear_scan(*x, segment_ids=seg, impl=impl)
            return jnp.sum(w * h) + jnp.sum(last), h
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(*x)

    with interpret_as(kind):
        g, h = grads("pallas", [jnp.float32(x) for x in (a, b, h0)])
    with jax.enable_x64(True):
        g_ref, h_ref = grads("sequential", [jnp.float64(x) for x in (a, b, h0)])
    assert_rel_close(h, h_ref, RTOL_SCAN, "h")
    for name, gi, gr in zip(("a", "b", "h0"), g, g_ref):
        assert_rel_close(gi, gr, RTOL_GRAD, f"grad {name}")
