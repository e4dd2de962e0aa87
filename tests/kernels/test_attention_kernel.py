"""The Pallas flash-attention kernels (seqjax/kernels/attention.py) against the float64 loop reference.

On CPU the kernels run in Pallas interpret mode: the GPU kernel is what
``impl="pallas"`` runs here anyway (``on_platform``'s cpu branch); the TPU
kernel is forced with ``interpret="tpu"`` (``pltpu.InterpretParams``). Interpret
mode is slow, so the cases are tiny (l <= 50, d <= 16) with 16-row blocks that
the lengths do not divide; the TPU variant of most cases is ``slow``. Lowering
tests lower forward and gradient for ``cuda`` and ``tpu`` at l = 8192, d = 128.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.kernels.attention import pallas_attention
from seqjax.kernels.attention_common import AttnConfig, visible, whole_key_blocks, whole_query_blocks
from seqjax.ops import dispatch
from seqjax.ops.attention import attention
from tests.kernels.lowering import lower_for
from tests.ops.ref_attention import attention_ref
from tests.ops.utils import RTOL_ATTN, RTOL_GRAD, assert_rel_close

BLOCKS = dict(block_q=16, block_k=16)
# bf16 inputs: the reference runs on the bf16-rounded inputs; what is left is
# the kernel's own rounding (P cast to bf16 for P·V, dS for dS·K, the bf16
# output): ~2^-8 relative per rounding. Measured: 2.1e-3 (output), 5.9e-3 (gradients).
RTOL_BF16 = 1e-2
RTOL_BF16_GRAD = 2e-2
# The autodiffed loop reference unrolls to ~1000 ops and the interpreted kernels
# to large loops: XLA's backend optimisations only cost compile time here.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _segments(rng, b, length, p=0.15):
    return np.cumsum(rng.random((b, length)) < p, axis=1).astype(np.int32)


def _case(name):
    """(q, k, v, kwargs, output weights) of a named case, fresh random inputs from a fixed seed."""
    rng = np.random.default_rng(list(CASES).index(name))
    b, lq, lk, h, hk, dk, dv, kw = CASES[name]
    kw = dict(kw)
    seg = kw.pop("segments", None)
    if seg == "shared":
        kw["segment_ids"] = _segments(rng, b, lq)
    elif seg == "pair":
        # Query ids 0..2, key ids 1..3: queries of id 0 see no key at all.
        kw["segment_ids"] = (np.sort(rng.integers(0, 3, (b, lq)), axis=1).astype(np.int32),
                             np.sort(rng.integers(1, 4, (b, lk)), axis=1).astype(np.int32))
    q = rng.standard_normal((b, lq, h, dk))
    k = rng.standard_normal((b, lk, hk, dk))
    v = rng.standard_normal((b, lk, hk, dv))
    w = rng.standard_normal((b, lq, h, dv))
    return q, k, v, kw, w


# (b, lq, lk, h, hk, dk, dv, kwargs)
CASES = {
    "packed_gqa_causal_window": (2, 37, 37, 4, 2, 8, 6, dict(causal=True, window=9, segments="shared")),
    "q32_k45_causal_gqa1": (1, 32, 45, 4, 1, 16, 16, dict(causal=True)),
    "window_tuple": (1, 40, 40, 2, 1, 8, 8, dict(window=(5, 3))),
    "cross_no_mask": (1, 33, 50, 2, 2, 8, 8, dict()),
    "empty_rows": (1, 20, 12, 2, 1, 8, 8, dict(causal=True, segments="pair")),
}
SLOW_TPU = {"q32_k45_causal_gqa1", "window_tuple", "cross_no_mask", "empty_rows"}
# Covered in the default suite by test_query_that_sees_no_key_outputs_zero_with_finite_gradients.
SLOW = {("cross_no_mask", "gpu"), ("empty_rows", "gpu")}


@functools.lru_cache(maxsize=None)
def _expected(name, dtype):
    """Reference output and gradients (float64) of a case, inputs rounded to ``dtype`` first."""
    q, k, v, kw, w = _case(name)
    q, k, v = (np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64) for x in (q, k, v))
    out = attention_ref(q, k, v, **kw)
    ref_kw = dict(kw)
    if "segment_ids" in ref_kw and isinstance(ref_kw["segment_ids"], tuple):
        ref_kw["segment_ids"] = tuple(ref_kw["segment_ids"])
    with jax.enable_x64(True):
        loss = lambda q, k, v: jnp.sum(attention_ref(q, k, v, xp=jnp, **ref_kw) * w)  # noqa: E731
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), compiler_options=FAST_COMPILE)(q, k, v)
    return out, tuple(np.asarray(g) for g in grads)


@contextlib.contextmanager
def _kernel(kind):
    """impl="pallas" runs the ``kind`` kernel: "gpu" is the CPU default path, "tpu" is forced."""
    if kind == "gpu":
        yield
        return
    impls = dispatch._IMPLS["attention"]
    impls["pallas"] = functools.partial(pallas_attention, interpret="tpu")
    try:
        yield
    finally:
        impls["pallas"] = pallas_attention


def _run(name, kind, dtype):
    q, k, v, kw, w = _case(name)
    fn = functools.partial(attention, impl="pallas", **BLOCKS, **kw)
    args = tuple(jnp.asarray(x, dtype) for x in (q, k, v))
    def out_and_grads(*args):  # one compilation for both (interpret mode compiles slowly)
        out, pull = jax.vjp(fn, *args)
        return out, pull(jnp.asarray(w, out.dtype))

    with _kernel(kind):
        out, grads = jax.jit(out_and_grads, compiler_options=FAST_COMPILE)(*args)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    return np.asarray(out.astype(jnp.float32)), [np.asarray(g.astype(jnp.float32)) for g in grads]


def _params(cases, slow_tpu):
    out = []
    for name in cases:
        for kind in ("gpu", "tpu"):
            slow = (kind == "tpu" and name in slow_tpu) or (name, kind) in SLOW
            out.append(pytest.param(name, kind, id=f"{name}-{kind}", marks=[pytest.mark.slow] if slow else []))
    return out


@pytest.mark.parametrize("window", [None, (20, 0), (7, 30), (0, 0)])
def test_whole_block_ranges_are_exactly_the_fully_visible_blocks(window):
    """The block pairs computed without a mask are exactly those the mask leaves whole."""
    for lq, lk, bq, bk in ((32, 45, 16, 16), (45, 32, 16, 8), (64, 64, 16, 32), (7, 100, 16, 16)):
        left, right = window if window else (None, None)
        cfg = AttnConfig(1.0, left, right, lq, lk, bq, bk, False, None)
        nq, nk = -(-lq // bq), -(-lk // bk)
        qpos = np.arange(nq * bq)[:, None] + lk - lq
        vis = np.asarray(visible(qpos, np.arange(nk * bk)[None, :], cfg, True))
        whole = vis.reshape(nq, bq, nk, bk).all(axis=(1, 3))
        for i in range(nq):
            lo, hi = (int(x) for x in whole_key_blocks(i * bq, cfg, bq, bk))
            assert set(range(lo, hi)) == set(np.flatnonzero(whole[i])), (lq, lk, bq, bk, i)
        for j in range(nk):
            lo, hi = (int(x) for x in whole_query_blocks(j * bk, cfg, bq, bk))
            assert set(range(lo, hi)) == set(np.flatnonzero(whole[:, j])), (lq, lk, bq, bk, j)
    assert whole_key_blocks(0, cfg._replace(segments=True), bq, bk) == (0, 0)


@pytest.mark.parametrize("name, kind", _params(CASES, SLOW_TPU))
def test_float32_matches_reference(name, kind):
    out, grads = _run(name, kind, jnp.float32)
    expected, expected_grads = _expected(name, jnp.float32)
    assert_rel_close(out, expected, RTOL_ATTN, f"{name} {kind} out")
    for what, g, e in zip("qkv", grads, expected_grads):
        assert_rel_close(g, e, RTOL_GRAD, f"{name} {kind} d{what}")


@pytest.mark.parametrize("name, kind", _params(["packed_gqa_causal_window"], {"packed_gqa_causal_window"}))
def test_bfloat16_matches_reference(name, kind):
    out, grads = _run(name, kind, jnp.bfloat16)
    expected, expected_grads = _expected(name, jnp.bfloat16)
    assert_rel_close(out, expected, RTOL_BF16, f"{name} {kind} out")
    for what, g, e in zip("qkv", grads, expected_grads):
        assert_rel_close(g, e, RTOL_BF16_GRAD, f"{name} {kind} d{what}")


@pytest.mark.parametrize("kind", ["gpu", pytest.param("tpu", marks=pytest.mark.slow)])
def test_query_that_sees_no_key_outputs_zero_with_finite_gradients(kind):
    q, k, v, kw, _ = _case("empty_rows")
    seg_q, seg_k = kw["segment_ids"]
    # Causal with lq = 20 > lk = 12: queries 0..7 sit before the first key;
    # query ids 0 never occur among the key ids.
    blind = np.zeros(seg_q.shape, bool)
    blind[:, :8] = True
    blind |= seg_q == 0
    assert blind.any() and not blind.all()
    out, grads = _run("empty_rows", kind, jnp.float32)
    np.testing.assert_array_equal(out[blind], 0.0)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_array_equal(grads[0][blind], 0.0)
    expected, expected_grads = _expected("empty_rows", jnp.float32)
    assert_rel_close(out, expected, RTOL_ATTN, f"empty rows {kind} out")
    for what, g, e in zip("qkv", grads, expected_grads):
        assert_rel_close(g, e, RTOL_GRAD, f"empty rows {kind} d{what}")


def test_matches_the_blockwise_path_through_the_op():
    """impl="pallas" and impl="blockwise" agree through the public op (no forcing, CPU's default kernel)."""
    q, k, v, kw, _ = _case("packed_gqa_causal_window")
    args = tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))
    ours = jax.jit(functools.partial(attention, impl="pallas", **kw))(*args)
    theirs = jax.jit(functools.partial(attention, impl="blockwise", **kw))(*args)
    assert_rel_close(ours, theirs, RTOL_ATTN, "pallas vs blockwise")


def test_bias_is_refused_in_one_line():
    q = jnp.ones((1, 8, 2, 8))
    with pytest.raises(ValueError, match="impl='pallas' takes no bias="):
        attention(q, q, q, bias=jnp.zeros((8, 8)), impl="pallas")


# --- lowering for the accelerators, at a realistic size ----------------------------


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
@pytest.mark.parametrize("segments", [True, False], ids=["segments_window", "causal"])
def test_lowers_for_accelerators_at_l8192(platform, grad, segments):
    """Causal with segments and a window (the masked paths), and plain causal (whole blocks unmasked)."""
    b, length, h, hk, d = 1, 8192, 16, 4, 128
    spec = jax.ShapeDtypeStruct
    q, kv = spec((b, length, h, d), jnp.bfloat16), spec((b, length, hk, d), jnp.bfloat16)
    seg = spec((b, length), jnp.int32)

    def forward(q, k, v, seg):
        if not segments:
            return attention(q, k, v, causal=True, impl="pallas")
        return attention(q, k, v, causal=True, window=1024, segment_ids=seg, impl="pallas")

    fn = forward
    if grad:
        fn = jax.grad(lambda q, k, v, seg: jnp.sum(forward(q, k, v, seg).astype(jnp.float32)), argnums=(0, 1, 2))
    text = lower_for(fn, (q, kv, kv, seg), platform)
    kernels = ("seqjax_attention_dq", "seqjax_attention_dkdv") if grad else ("seqjax_attention_fwd",)
    for name in kernels:
        assert name in text, f"{name} missing from the {platform} lowering"
