"""What ``auto`` picks for attention per platform, and the vendor kernels' argument mapping.

cuDNN cannot run or even be lowered on a CPU machine ("cuDNN is not
detected"), so its path is checked by its dispatch rule and by running the
same mapping (:func:`fused_attention`) with ``implementation="xla"``; splash
runs here in Pallas interpret mode.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.kernels.attention_vendor import fused_attention, splash_call
from seqjax.ops import dispatch
from seqjax.ops.attention import attention, call_sizes
from seqjax.ops.flash import resolve_window
from tests.kernels.attention_layout import to_internal, to_public
from tests.kernels.lowering import lower_for
from tests.ops.ref_attention import attention_ref
from tests.ops.utils import RTOL_ATTN, RTOL_GRAD, assert_rel_close

SPEC = jax.ShapeDtypeStruct


def _sizes(lq=4096, lk=4096, h=16, hk=4, dk=128, dv=None, dtype=jnp.bfloat16, causal=True, window=None,
           segments=None, bias=False):
    dv = dv or dk
    q5 = SPEC((2, hk, h // hk, lq, dk), dtype)
    k4, v4 = SPEC((2, hk, lk, dk), dtype), SPEC((2, hk, lk, dv), dtype)
    seg_q = seg_k = None
    if segments == "shared":
        seg_q = seg_k = SPEC((2, lq), jnp.int32)
    elif segments == "pair":
        seg_q, seg_k = SPEC((2, lq), jnp.int32), SPEC((2, lk), jnp.int32)
    left, right = resolve_window(window, causal)
    return call_sizes(q5, k4, v4, SPEC((1, 1, 1, lq, lk), dtype) if bias else None, seg_q, seg_k, left, right)


# (call, pick on cpu, gpu, tpu)
PICKS = {
    "bf16_causal": (dict(), "blockwise", "cudnn", "splash"),
    "bf16_causal_window": (dict(window=512), "blockwise", "cudnn", "splash"),
    "bf16_full_cross_lengths": (dict(causal=False, lq=1024), "blockwise", "cudnn", "pallas"),
    "bf16_causal_cross_lengths": (dict(lq=1024), "blockwise", "pallas", "pallas"),
    "bf16_segments": (dict(segments="shared"), "blockwise", "pallas", "splash"),
    "bf16_segment_pair": (dict(segments="pair"), "blockwise", "pallas", "pallas"),
    "bf16_window_right": (dict(causal=False, window=(64, 8)), "blockwise", "pallas", "splash"),
    "bf16_head_dim_256": (dict(dk=256), "blockwise", "pallas", "splash"),
    "bf16_odd_length": (dict(lq=1000, lk=1000), "blockwise", "cudnn", "pallas"),
    "f32_causal": (dict(dtype=jnp.float32), "blockwise", "pallas", "splash"),
    "f64_causal": (dict(dtype=jnp.float64), "blockwise", "blockwise", "blockwise"),
    "bias": (dict(bias=True), "blockwise", "blockwise", "blockwise"),
    "tiny": (dict(lq=64, lk=64, dtype=jnp.float32), "reference", "pallas", "pallas"),
}


@pytest.mark.parametrize("name", list(PICKS))
def test_auto_picks_per_platform(monkeypatch, name):
    call, *picks = PICKS[name]
    sizes = _sizes(**call)
    for platform, expected in zip(("cpu", "gpu", "tpu"), picks):
        monkeypatch.setattr(dispatch, "platform", lambda p=platform: p)
        assert dispatch.resolve("attention", "auto", **sizes) == expected, (name, platform, sizes)


def test_a_caller_passing_only_scores_gets_the_xla_rows(monkeypatch):
    monkeypatch.setattr(dispatch, "platform", lambda: "gpu")
    assert dispatch.resolve("attention", "auto", scores=8192 * 8192) == "blockwise"


def _qkv(rng, b, lq, lk, h, hk, d):
    return rng.standard_normal((b, lq, h, d)), rng.standard_normal((b, lk, hk, d)), rng.standard_normal((b, lk, hk, d))


def _check(fn, q, k, v, hk, ref_kw, w):
    """fn(q5, k4, v4) against the references: the output against the float64 loop, the gradients of
    sum(out * w) against the op's materialising impl="reference" in float64 (itself checked against the
    loop in tests/ops/test_attention.py; differentiating the loop at l = 256 takes a minute)."""
    loss = lambda *a: jnp.sum(to_public(fn(*to_internal(*a, hk))) * w)  # noqa: E731
    out = jax.jit(lambda *a: to_public(fn(*to_internal(*a, hk))))(q, k, v)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*(jnp.float32(x) for x in (q, k, v)))
    assert_rel_close(out, attention_ref(q, k, v, **ref_kw), RTOL_ATTN, "out")
    with jax.enable_x64(True):
        ref = functools.partial(attention, impl="reference", **ref_kw)
        ref_loss = lambda *a: jnp.sum(ref(*a) * w)  # noqa: E731
        expected = jax.jit(jax.grad(ref_loss, argnums=(0, 1, 2)))(q, k, v)
    for what, g, e in zip("qkv", grads, expected):
        assert_rel_close(g, e, RTOL_GRAD, f"d{what}")


# (lq, lk, causal, window): what cudnn_serves accepts.
CUDNN_CALLS = {"causal": (24, 24, True, None), "causal_window": (24, 24, True, 5), "full_cross": (9, 24, False, None)}


@pytest.mark.parametrize("name", list(CUDNN_CALLS))
def test_cudnn_mapping_matches_reference(rng, name):
    lq, lk, causal, window = CUDNN_CALLS[name]
    q, k, v = _qkv(rng, 2, lq, lk, 4, 2, 8)
    left, right = resolve_window(window, causal)
    fn = functools.partial(fused_attention, scale=8**-0.5, left=left, right=right, implementation="xla")
    _check(fn, q, k, v, 2, dict(causal=causal, window=window), rng.standard_normal((2, lq, 4, 8)))


@pytest.mark.parametrize("window", [None, (7, 2)], ids=["causal", "window_tuple"])
def test_splash_matches_reference_in_interpret_mode(rng, window):
    b, length, h, hk, d = 1, 256, 4, 2, 16
    q, k, v = _qkv(rng, b, length, length, h, hk, d)
    seg = np.cumsum(rng.random((b, length)) < 0.02, axis=1).astype(np.int32)
    causal = window is None
    left, right = resolve_window(window, causal)
    fn = lambda q5, k4, v4: splash_call(q5, k4, v4, jnp.asarray(seg), d**-0.5, left, right, interpret=True)  # noqa: E731
    _check(fn, q, k, v, hk, dict(causal=causal, window=window, segment_ids=seg), rng.standard_normal(q.shape))


def test_vendor_impls_refuse_calls_they_do_not_serve():
    x = jnp.ones((1, 100, 2, 8), jnp.bfloat16)
    seg = jnp.zeros((1, 100), jnp.int32)
    with pytest.raises(ValueError, match="impl='cudnn' needs"):
        attention(x, x, x, causal=True, segment_ids=seg, impl="cudnn")
    with pytest.raises(ValueError, match="impl='splash' needs lq == lk, a multiple of 128"):
        attention(x, x, x, causal=True, impl="splash")


def test_sequence_parallel_calls_refuse_the_vendor_kernels():
    # Ring attention merges each block's logsumexp, which cuDNN and splash do
    # not return; impl="pallas" runs our kernels per block
    # (tests/kernels/test_ring_attention_kernel.py).
    x = jnp.ones((1, 8, 2, 8))
    for impl in ("cudnn", "splash"):
        with pytest.raises(NotImplementedError, match=f"impl='{impl}' is not available with sequence_axis"):
            attention(x, x, x, impl=impl, sequence_axis="seq")


def test_splash_lowers_for_tpu_at_l8192():
    b, length, h, hk, d = 1, 8192, 16, 4, 128
    q, kv = SPEC((b, length, h, d), jnp.bfloat16), SPEC((b, length, hk, d), jnp.bfloat16)
    seg = SPEC((b, length), jnp.int32)

    def loss(q, k, v, seg):
        out = attention(q, k, v, causal=True, window=1024, segment_ids=seg, impl="splash")
        return jnp.sum(out.astype(jnp.float32))

    grad = jax.grad(loss, argnums=(0, 1, 2))
    text = lower_for(grad, (q, kv, kv, seg), "tpu")
    assert "tpu_custom_call" in text
