"""The SSD (Mamba-2) Pallas kernel against the float64 loop reference.

Interpret mode on CPU with GPU semantics and TPU semantics, two groups of two
heads, odd sizes (p = 3, n = 5: the GPU kernel pads them to 16), a length that
is not a multiple of the chunk, segments and an initial state; the op's front
door with ``impl="pallas"`` (outputs and gradients of every argument, ``D``
included); the ``auto`` rows; lowering for ``cuda`` and ``tpu`` at a
realistic shape.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.kernels.ssd import ssd_pallas
from seqjax.ops import dispatch
from seqjax.ops.ssd import ssd
from tests.kernels.lowering import lower
from tests.ops.ref_ssd import ssd_ref
from tests.ops.utils import RTOL_ATTN, RTOL_GRAD, assert_rel_close

ARG_NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


def _inputs(rng, length, b=2, h=4, p=3, g=2, n=5):
    """Float64 (x, dt, A, B, C, D, h0) and segment ids (two starts in row 0)."""
    x = rng.standard_normal((b, length, h, p))
    dt = rng.uniform(0.1, 1.0, (b, length, h))
    A = -rng.uniform(0.2, 1.5, h)
    A[0] = -8.0  # one strongly decaying head
    B, C = rng.standard_normal((2, b, length, g, n))
    D = rng.standard_normal(h)
    h0 = rng.standard_normal((b, h, p, n))
    seg = np.zeros((b, length), np.int32)
    seg[0, length // 3:] = 1
    seg[0, length // 2:] = 2
    return (x, dt, A, B, C, D, h0), seg


def _f32(args):
    return tuple(jnp.asarray(t, jnp.float32) for t in args)


@pytest.mark.parametrize("interpret", ["gpu", "tpu"])
def test_kernel_matches_reference(rng, interpret):
    # 37 = two full chunks of 16 and a padded one; segments start mid-chunk.
    (x, dt, A, B, C, _, h0), seg = _inputs(rng, 37)
    fn = jax.jit(functools.partial(ssd_pallas, chunk=16, interpret=interpret))
    y, final = fn(*_f32((x, dt, A, B, C, h0)), seg)
    y_ref, final_ref = ssd_ref(np, x, dt, A, B, C, None, h0, seg)
    assert y.dtype == jnp.float32 and final.shape == h0.shape
    assert_rel_close(y, y_ref, RTOL_ATTN, "y")
    assert_rel_close(final, final_ref, RTOL_ATTN, "final_state")


@pytest.mark.parametrize("interpret", ["gpu", pytest.param("tpu", marks=pytest.mark.slow)])
def test_bfloat16_inputs(rng, interpret):
    (x, dt, A, B, C, _, h0), seg = _inputs(rng, 37)
    x, B, C = (jnp.asarray(t, jnp.bfloat16) for t in (x, B, C))
    fn = jax.jit(functools.partial(ssd_pallas, chunk=16, interpret=interpret))
    y, final = fn(x, *_f32((dt, A)), B, C, jnp.asarray(h0, jnp.float32), seg)
    assert y.dtype == jnp.bfloat16 and final.dtype == jnp.float32
    y_ref, final_ref = ssd_ref(np, *(np.float64(t) for t in (x, dt, A, B, C)), None, h0, seg)
    # dt·x and the decayed C rounded to bf16 before the tensor-core products,
    # y rounded to bf16: a few bf16 roundings (8-bit mantissa).
    assert_rel_close(y, y_ref, 2e-2, "bf16 y")
    assert_rel_close(final, final_ref, 1e-2, "bf16 final_state")


def test_front_door_outputs_and_gradients(rng):
    args, seg = _inputs(rng, 21)
    wy = rng.standard_normal(args[0].shape)
    wf = rng.standard_normal(args[6].shape)

    def loss(impl, *a):
        x, dt, A, B, C, D, h0 = a
        if impl is None:
            y, final = ssd_ref(jnp, x, dt, A, B, C, D, h0, seg)
        else:
            y, final = ssd(x, dt, A, B, C, D=D, initial_state=h0, segment_ids=seg, impl=impl)
        return jnp.sum(y * wy) + jnp.sum(final * wf), (y, final)

    argnums = tuple(range(1, 8))
    grads, (y, final) = jax.jit(jax.grad(loss, argnums, has_aux=True), static_argnums=0)("pallas", *_f32(args))
    with jax.enable_x64(True):
        g_ref, _ = jax.grad(loss, argnums, has_aux=True)(None, *(jnp.asarray(t) for t in args))
    y_ref, final_ref = ssd_ref(np, *args, seg)
    assert_rel_close(y, y_ref, RTOL_ATTN, "y")
    assert_rel_close(final, final_ref, RTOL_ATTN, "final_state")
    for name, gi, gr in zip(ARG_NAMES, grads, g_ref):
        assert gi.shape == gr.shape
        assert_rel_close(gi, np.asarray(gr), RTOL_GRAD, f"d{name}")


def test_strong_decay_gradients_stay_float32_accurate(rng):
    # Σ dt·A ≈ -570 over 70 steps (two chunks of 64 through the front door).
    # The decay's gradient is a sum of genuine terms; FLA's q·dq - k·dk suffix
    # sum cancelled to 5.6e-3 relative error in dA at this strength.
    (x, dt, A, B, C, D, h0), _ = _inputs(rng, 70)
    dt = rng.uniform(0.5, 1.5, dt.shape)
    A = -rng.uniform(7.0, 9.0, A.shape)
    args = (x, dt, A, B, C, D, h0)
    wy, wf = rng.standard_normal(x.shape), rng.standard_normal(h0.shape)

    def loss(impl, *a):
        x, dt, A, B, C, D, h0 = a
        if impl is None:
            y, final = ssd_ref(jnp, x, dt, A, B, C, D, h0)
        else:
            y, final = ssd(x, dt, A, B, C, D=D, initial_state=h0, impl=impl)
        return jnp.sum(y * wy) + jnp.sum(final * wf)

    grads = jax.jit(jax.grad(loss, (1, 2, 3)), static_argnums=0)("pallas", *_f32(args))
    with jax.enable_x64(True):
        g_ref = jax.grad(loss, (1, 2, 3))(None, *(jnp.asarray(t) for t in args))
    for name, gi, gr in zip(("x", "dt", "A"), grads, g_ref):
        assert_rel_close(gi, np.asarray(gr), 1e-5, f"d{name}")


@pytest.mark.parametrize("platform, length, expected", [
    # GPU: the XLA rows (the kernel was ~50x slower on an H200).
    ("gpu", 8, "reference"), ("gpu", 4096, "chunked"), ("tpu", 4096, "pallas"),
    ("cpu", 8, "reference"), ("cpu", 4096, "chunked"),
])
def test_auto_picks_the_kernel_on_accelerators(monkeypatch, platform, length, expected):
    monkeypatch.setattr(dispatch, "platform", lambda: platform)
    assert dispatch.resolve("ssd", "auto", length=length, chunk_size=64) == expected


def test_bad_chunk_raises():
    (x, dt, A, B, C, _, _), _ = _inputs(np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match="chunk must be a power of two >= 16"):
        ssd_pallas(x, dt, A, B, C, chunk=48)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_lowers_at_realistic_shape(platform):
    # b=2, l=4096, h=32, p=64, n=128, one group, bf16 with segments; forward and gradient.
    b, length, h, p, n = 2, 4096, 32, 64, 128
    spec = lambda *shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    args = [spec(b, length, h, p, dtype=jnp.bfloat16), spec(b, length, h), spec(h),
            spec(b, length, 1, n, dtype=jnp.bfloat16), spec(b, length, 1, n, dtype=jnp.bfloat16),
            spec(b, h, p, n), spec(b, length, dtype=jnp.int32)]

    def loss(x, dt, A, B, C, h0, seg):
        y, final = ssd_pallas(x, dt, A, B, C, h0, seg)
        return jnp.sum(y.astype(jnp.float32)) + jnp.sum(final)

    text = lower(jax.value_and_grad(loss, (0, 1, 2, 3, 4, 5)), args, platform).as_text()
    # 2 forward kernels (states, outputs) and 3 backward ones.
    assert text.count("__gpu$xla.gpu.triton" if platform == "cuda" else "tpu_custom_call") == 5
