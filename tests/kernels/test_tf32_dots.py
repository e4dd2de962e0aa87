"""The chunked GPU kernels' float32 dots: split for TF32 tensor cores, checked on CPU.

On a GPU, Triton's IEEE float32 ``dot`` is a CUDA-core loop (compiled for
sm_90a the chunked kernels had 32 registers per thread and 9-17 KB of spills
per thread; ``docs/kernels.md``), so the GPU bodies split float32 operands
into TF32 pieces (:func:`seqjax.kernels.chunked._split_dot`). CPU interpret
mode computes a DEFAULT dot in full float32, which would hide a missing
piece; these tests put an emulation of the tensor cores in its place
(operands truncated to TF32's 10 mantissa bits, products and sums in float32)
and check the split against float64, alone and inside the SSD and
linear-attention kernels, and that a single TF32 pass fails the same bounds.
The last test lowers the kernels for ``cuda`` and checks that no float32
``tt.dot`` is left at IEEE precision.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.triton_sass import capture_ttir, float32_dot_precisions
from seqjax.kernels import chunked
from seqjax.kernels.delta_rule import delta_rule_pallas
from seqjax.kernels.linear_attention import linear_attention_pallas
from seqjax.kernels.ssd import ssd_pallas
from tests.ops.ref_delta_rule import delta_rule_ref
from tests.ops.ref_linear_attention import linear_attention_ref
from tests.ops.ref_ssd import ssd_ref
from tests.ops.utils import rel_err

NN = chunked._NN


def _emulated_tf32(a, b, dims):
    """A tensor core's TF32 matmul: operands truncated to 10 mantissa bits, exact products, float32 sums."""
    head = chunked._tf32_head
    return jax.lax.dot_general(head(a), head(b), dims, precision=jax.lax.Precision.HIGHEST,
                               preferred_element_type=jnp.float32)


def _single_pass(a, b, dims, lhs_exact=False, engine=None):
    """What DEFAULT precision alone gives on a GPU: one TF32 product."""
    return _emulated_tf32(a, b, dims)


def test_split_dot_is_float32_accurate_on_tf32_engines(rng):
    a = rng.standard_normal((64, 48))
    b = rng.standard_normal((48, 80))
    exact = a @ b
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    split = chunked._split_dot(a32, b32, NN, engine=_emulated_tf32)
    single = _emulated_tf32(a32, b32, NN)
    # 3xTF32 drops lo·lo and rounds lo: ~2^-21 per product; one TF32 pass ~2^-11.
    assert rel_err(split, exact) < 2e-6
    assert rel_err(single, exact) > 1e-4

    # A 0/1 left side (masked sums of log decays): three pieces, every product
    # exact, so the float64 sum of the float32 inputs to float32 rounding.
    mask = np.tril(np.ones((64, 64)))
    g = -rng.uniform(0.0, 30.0, (64, 16))
    sums = chunked._split_dot(jnp.asarray(mask, jnp.float32), jnp.asarray(g, jnp.float32), NN,
                              lhs_exact=True, engine=_emulated_tf32)
    exact = mask @ np.float64(np.float32(g))
    assert rel_err(sums, exact) < 3e-7
    assert rel_err(_emulated_tf32(jnp.asarray(mask, jnp.float32), jnp.asarray(g, jnp.float32), NN), exact) > 1e-5


def _ssd_case(rng, length=40, b=2, h=3, p=5, n=6):
    x = rng.standard_normal((b, length, h, p))
    dt = rng.uniform(0.1, 1.0, (b, length, h))
    A = -rng.uniform(0.5, 4.0, h)
    B, C = rng.standard_normal((2, b, length, 1, n))
    h0 = rng.standard_normal((b, h, p, n))
    return x, dt, A, B, C, h0


@pytest.mark.parametrize("split", [True, False])
def test_ssd_kernel_on_emulated_tensor_cores(rng, monkeypatch, split):
    """Outputs and gradients of the GPU kernels (interpret mode) with TF32 dots."""
    args = _ssd_case(rng)
    monkeypatch.setattr(chunked, "_tf32_engine", _emulated_tf32)
    if not split:
        monkeypatch.setattr(chunked, "_split_dot", _single_pass)
    w = rng.standard_normal(args[0].shape)

    def loss(x, dt, A, B, C, h0):
        y, final = ssd_pallas(x, dt, A, B, C, h0, chunk=16, interpret="gpu")
        return jnp.sum(y * w) + jnp.sum(final), y

    f32 = tuple(jnp.asarray(t, jnp.float32) for t in args)
    grads, y = jax.jit(jax.grad(loss, (0, 1, 3), has_aux=True))(*f32)
    y_ref, final_ref = ssd_ref(np, *args[:5], None, args[5])

    def ref_loss(x, dt, B):
        y, final = ssd_ref(jnp, x, dt, jnp.asarray(args[2]), B, jnp.asarray(args[4]), None, jnp.asarray(args[5]))
        return jnp.sum(y * w) + jnp.sum(final)

    with jax.enable_x64(True):
        g_ref = jax.grad(ref_loss, (0, 1, 2))(*(jnp.asarray(args[i]) for i in (0, 1, 3)))
    errors = [rel_err(y, y_ref)] + [rel_err(gi, np.asarray(gr)) for gi, gr in zip(grads, g_ref)]
    # Split: ~7e-7 (as the float32 kernels at HIGHEST); one TF32 pass: ~1.5e-3.
    assert (max(errors) < 1e-5) == split, errors


@pytest.mark.parametrize("kind, split", [("scalar", True), ("channel", True), ("channel", False)])
def test_gla_kernel_on_emulated_tensor_cores(rng, monkeypatch, kind, split):
    """Scalar and per-channel decay (the row loop's 0/1 products), outputs and gradients."""
    b, length, h, dk, dv = 1, 40, 2, 6, 5
    q, k = rng.standard_normal((2, b, length, h, dk))
    v = rng.standard_normal((b, length, h, dv))
    ld = -rng.uniform(0.0, 1.0, (b, length, h) + ((dk,) if kind == "channel" else ()))
    w = rng.standard_normal(v.shape)
    monkeypatch.setattr(chunked, "_tf32_engine", _emulated_tf32)
    if not split:
        monkeypatch.setattr(chunked, "_split_dot", _single_pass)

    def loss(q, k, v, ld):
        g = ld if kind == "channel" else ld[..., None]
        o, final = linear_attention_pallas(q, k, v, g, chunk=16, interpret="gpu")
        return jnp.sum(o * w) + jnp.sum(final), o

    f32 = tuple(jnp.asarray(t, jnp.float32) for t in (q, k, v, ld))
    grads, o = jax.jit(jax.grad(loss, (0, 1, 2, 3), has_aux=True))(*f32)

    def ref_loss(q, k, v, ld):
        o, final = linear_attention_ref(jnp, q, k, v, ld, True, None, None)
        return jnp.sum(o * w) + jnp.sum(final)

    with jax.enable_x64(True):
        g_ref = jax.grad(ref_loss, (0, 1, 2, 3))(*(jnp.asarray(t) for t in (q, k, v, ld)))
    o_ref, _ = linear_attention_ref(np, q, k, v, ld, True, None, None)
    errors = [rel_err(o, o_ref)] + [rel_err(gi, np.asarray(gr)) for gi, gr in zip(grads, g_ref)]
    assert (max(errors) < 1e-5) == split, errors


@pytest.mark.parametrize("split", [True, False])
def test_delta_rule_kernel_on_emulated_tensor_cores(rng, monkeypatch, split):
    """The forward kernel (its backward is XLA): outputs and final state of a gated delta rule."""
    b, length, h, dk, dv = 1, 40, 2, 6, 5
    q = rng.standard_normal((b, length, h, dk))
    k = rng.standard_normal((b, length, h, dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((b, length, h, dv))
    beta = rng.uniform(0.1, 1.0, (b, length, h))
    ld = -rng.uniform(0.0, 0.5, (b, length, h))
    monkeypatch.setattr(chunked, "_tf32_engine", _emulated_tf32)
    if not split:
        monkeypatch.setattr(chunked, "_split_dot", _single_pass)
    f32 = (jnp.asarray(t, jnp.float32) for t in (q, k, v, beta, ld))
    o, final = jax.jit(lambda q, k, v, beta, ld: delta_rule_pallas(
        q, k, v, beta, log_decay=ld, chunk_size=16, interpret="gpu"))(*f32)
    o_ref, final_ref = delta_rule_ref(np, q, k, v, beta, ld)
    errors = [rel_err(o, o_ref), rel_err(final, final_ref)]
    assert (max(errors) < 1e-5) == split, errors


def _ttir(fn, *shapes):
    args = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)
    return [k["ttir"] for k in capture_ttir(fn, args)]


def test_no_float32_dot_is_lowered_at_ieee_precision():
    b, length, h, d = 1, 256, 2, 64
    ssd_loss = jax.grad(lambda x, dt, B, C: jnp.sum(ssd_pallas(x, dt, -jnp.ones(2), B, C)[0]), (0, 1, 2, 3))
    gla_loss = jax.grad(lambda q, k, v, g: jnp.sum(linear_attention_pallas(q, k, v, g)[0]), (0, 1, 2, 3))
    delta = lambda q, k, v, beta: delta_rule_pallas(q, k, v, beta)[0]  # noqa: E731
    kernels = (_ttir(ssd_loss, (b, length, h, d), (b, length, h), (b, length, 1, d), (b, length, 1, d))
               + _ttir(gla_loss, *[(b, length, h, d)] * 4)
               + _ttir(delta, *[(b, length, h, d)] * 3, (b, length, h)))
    # SSD and GLA: forward states pass, reverse states pass, gradient chunk
    # pass (jax.grad drops the unused output pass); the delta rule's forward
    # (solve, sequential pass).
    assert len(kernels) == 8, len(kernels)
    for ttir in kernels:
        counts = float32_dot_precisions(ttir)
        assert counts and set(counts) == {"tf32"}, counts
