"""Tests of seqjax.ops.attention (reference and blockwise) against a float64 loop reference."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops import flash
from seqjax.ops.attention import attention
from tests.ops.ref_attention import attention_ref
from tests.ops.utils import RTOL_ATTN, RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

IMPLS = ("reference", "blockwise")
BLOCKS = dict(block_q=16, block_k=32)  # deliberately not dividing the lengths


def make_qkv(rng, b, lq, lk, h, hk, dk=8, dv=6):
    q = rng.standard_normal((b, lq, h, dk))
    k = rng.standard_normal((b, lk, hk, dk))
    v = rng.standard_normal((b, lk, hk, dv))
    return q, k, v


def run(impl, q, k, v, dtype, **kw):
    cast = lambda x: None if x is None else jnp.asarray(x, dtype)  # noqa: E731
    bias = kw.pop("bias", None)
    fn = jax.jit(functools.partial(attention, impl=impl, **BLOCKS, **kw))
    return fn(cast(q), cast(k), cast(v), bias=cast(bias))


def check_forward(q, k, v, **kw):
    """Every impl in float32 (<= 2e-4) and float64 (<= 1e-10) against the loop reference."""
    expected = attention_ref(q, k, v, **kw)
    assert np.abs(expected).max() > 0
    outs = {}
    for impl in IMPLS:
        out = outs[impl] = np.asarray(run(impl, q, k, v, jnp.float32, **dict(kw)))
        assert out.dtype == jnp.float32 and out.shape == expected.shape
        assert_rel_close(out, expected, RTOL_ATTN, f"{impl} f32")
        with jax.enable_x64(True):
            out64 = run(impl, q, k, v, jnp.float64, **dict(kw))
            assert out64.dtype == jnp.float64
            assert_rel_close(out64, expected, RTOL_F64, f"{impl} f64")
    return expected, outs


# (b, lq, lk, h, hk, kwargs): lengths 1, 7, 37, 130 against blocks of 16/32,
# lq != lk with aligned ends, grouped queries (hk = 1, 2), windows, bias.
FORWARD_CASES = {
    "len1_causal": (2, 1, 1, 4, 2, dict(causal=True)),
    "len7": (2, 7, 7, 4, 2, dict()),
    "len37_causal_hk1": (2, 37, 37, 4, 1, dict(causal=True)),
    "len130_causal": (1, 130, 130, 4, 2, dict(causal=True)),
    "q7_k37_causal": (1, 7, 37, 4, 4, dict(causal=True)),
    "q37_k130": (1, 37, 130, 4, 1, dict()),
    "window5_causal": (1, 130, 130, 2, 1, dict(causal=True, window=5)),
    "window5": (1, 130, 130, 2, 1, dict(window=5)),
    "window_tuple": (1, 130, 130, 2, 1, dict(window=(3, 2))),
    "window_tuple_causal_q37": (1, 37, 130, 2, 1, dict(causal=True, window=(20, 1))),
    "bias_full": (2, 37, 37, 4, 2, dict(causal=True, bias=(2, 4, 37, 37))),
    "bias_2d_q7_k37": (2, 7, 37, 4, 2, dict(causal=True, bias=(7, 37))),
}


@pytest.mark.parametrize("name", list(FORWARD_CASES))
def test_forward(rng, name):
    b, lq, lk, h, hk, kw = FORWARD_CASES[name]
    kw = dict(kw)
    if "bias" in kw:
        kw["bias"] = rng.standard_normal(kw["bias"])
    q, k, v = make_qkv(rng, b, lq, lk, h=h, hk=hk)
    check_forward(q, k, v, **kw)


def test_queries_before_first_key_output_zero(rng):
    # Causal with lq > lk: query i sits at key position lk - lq + i < 0 for the
    # first lq - lk queries, which therefore see no key.
    q, k, v = make_qkv(rng, 1, 37, 13, h=4, hk=2)
    expected, outs = check_forward(q, k, v, causal=True)
    np.testing.assert_array_equal(expected[:, :24], 0.0)
    for out in outs.values():
        np.testing.assert_array_equal(out[:, :24], 0.0)
        assert np.abs(out[:, 24:]).min() > 0


def test_grouped_query_equals_repeated_heads(rng):
    q, k, v = make_qkv(rng, 2, 37, 37, h=4, hk=2)
    rep = lambda x: np.repeat(x, 2, axis=2)  # noqa: E731  kv head j serves query heads 2j, 2j+1
    expected = attention_ref(q, rep(k), rep(v), causal=True)
    assert_rel_close(run("blockwise", q, k, v, jnp.float32, causal=True), expected, RTOL_ATTN)


def test_segments_packed_equal_separate(rng):
    lens = [(20, 50, 23), (1, 60, 32)]  # two rows of three packed sequences each
    total = 93
    q, k, v = make_qkv(rng, 2, total, total, h=4, hk=2)
    seg = np.stack([np.repeat(np.arange(3), row) for row in lens])
    for impl in IMPLS:
        packed = np.asarray(run(impl, q, k, v, jnp.float32, causal=True, segment_ids=seg))
        for r, row in enumerate(lens):
            start = 0
            for n in row:
                sl = slice(start, start + n)
                alone = attention_ref(q[r:r + 1, sl], k[r:r + 1, sl], v[r:r + 1, sl], causal=True)
                assert_rel_close(packed[r:r + 1, sl], alone, RTOL_ATTN, f"{impl} row {r} len {n}")
                start += n


def test_segments_tuple_and_fully_masked_rows(rng):
    lq, lk = 37, 13
    q, k, v = make_qkv(rng, 2, lq, lk, h=2, hk=1)
    seg_q = rng.integers(0, 3, (2, lq))
    seg_k = rng.integers(0, 2, (2, lk))  # id 2 never occurs among keys
    seg_k[:, 0] = [0, 1]
    expected, outs = check_forward(q, k, v, segment_ids=(seg_q, seg_k), window=(4, 30))
    hidden = seg_q == 2
    assert hidden.any()
    for out in outs.values():
        np.testing.assert_array_equal(out[hidden], 0.0)
    np.testing.assert_array_equal(expected[hidden], 0.0)


def _grad_case(rng, lq, lk, bias_shape, **kw):
    q, k, v = make_qkv(rng, 2, lq, lk, h=4, hk=2)
    bias = None if bias_shape is None else rng.standard_normal(bias_shape)
    w = rng.standard_normal((2, lq, 4, v.shape[-1]))
    return (q, k, v, bias), w, kw


# The autodiffed loop reference unrolls to ~1000 ops; XLA's backend optimisations
# only cost compile time there (they do not change float64 results that matter).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _grads(fn, args, w, compiler_options=None):
    nargs = 3 if args[3] is None else 4
    loss = lambda *a: jnp.sum(fn(*a) * w)  # noqa: E731
    grad = jax.jit(jax.grad(loss, argnums=tuple(range(nargs))), compiler_options=compiler_options)
    return grad(*args[:nargs])


# Gradients use smaller blocks (8 / 16) so that short sequences (the autodiffed
# loop reference compiles slowly) still span several, partly padded blocks.
GRAD_BLOCKS = dict(block_q=8, block_k=16)
GRAD_CASES = [
    # full bias, GQA, causal
    (21, 21, (2, 4, 21, 21), dict(causal=True)),
    # lq != lk, window tuple, segment tuple, bias broadcast over batch and queries
    (13, 37, (4, 1, 37), dict(window=(5, 3), segment_ids=(np.array([[0] * 6 + [1] * 7] * 2),
                                                          np.array([[0] * 20 + [1] * 17] * 2)))),
    # skipped key blocks in both passes (causal and window), bias over keys only
    (30, 30, (1, 1, 1, 30), dict(causal=True, window=7)),
]


@pytest.mark.parametrize("case", range(len(GRAD_CASES)))
def test_gradients(rng, case):
    lq, lk, bias_shape, kw = GRAD_CASES[case]
    args, w, kw = _grad_case(rng, lq, lk, bias_shape, **kw)
    names = ("dq", "dk", "dv", "dbias")

    def fast(impl):
        return lambda q, k, v, bias=None: attention(
            q, k, v, bias=bias, impl=impl, **GRAD_BLOCKS, **kw)

    with jax.enable_x64(True):
        args64 = tuple(None if a is None else jnp.asarray(a, jnp.float64) for a in args)
        def ref_fn(q, k, v, bias=None):
            return attention_ref(q, k, v, bias=bias, xp=jnp, **kw)

        expected = _grads(ref_fn, args64, w, FAST_COMPILE)
        assert all(np.abs(np.asarray(e)).max() > 1e-3 for e in expected)
        # The custom_vjp backward is exact: float64 matches to rounding.
        for g, e, n in zip(_grads(fast("blockwise"), args64, w), expected, names):
            assert_rel_close(g, e, RTOL_F64, f"blockwise f64 {n}")
    args32 = tuple(None if a is None else jnp.asarray(a, jnp.float32) for a in args)
    for impl in IMPLS:
        got = _grads(fast(impl), args32, w)
        assert len(got) == len(expected)
        for g, e, n in zip(got, expected, names):
            assert g.dtype == jnp.float32 and g.shape == e.shape
            assert_rel_close(g, e, RTOL_GRAD, f"{impl} f32 {n}")


def test_fully_masked_rows_have_zero_finite_gradients(rng):
    q, k, v = make_qkv(rng, 1, 20, 8, h=2, hk=2)
    w = rng.standard_normal((1, 20, 2, v.shape[-1]))
    for impl in IMPLS:
        fn = lambda q, k, v, impl=impl: attention(q, k, v, causal=True, impl=impl, **BLOCKS)  # noqa: E731
        dq, dk, dv = _grads(fn, tuple(jnp.asarray(a, jnp.float32) for a in (q, k, v)) + (None,), w)
        assert np.all(np.isfinite(dq)) and np.all(np.isfinite(dk)) and np.all(np.isfinite(dv))
        np.testing.assert_array_equal(np.asarray(dq)[:, :12], 0.0)  # the 12 queries with no key
        assert np.abs(np.asarray(dq)[:, 12:]).max() > 0


def test_reference_gradient_is_finite_when_xla_recomputes_scores_differently(rng):
    """The softmax shift's gradient is not taken (online_softmax.from_scores).

    Autodiff of the max divides by the number of scores equal to it; XLA:CPU at
    LLVM -O0 recomputes the biased scores in a fusion that rounds differently,
    no score equals the max and dq, dk came out NaN (JAX 0.10.2)."""
    (q, k, v, bias), w, _ = _grad_case(rng, 21, 21, (2, 4, 21, 21))
    fn = lambda q, k, v, bias: attention(q, k, v, bias=bias, causal=True, impl="reference")  # noqa: E731
    args = tuple(jnp.asarray(a, jnp.float32) for a in (q, k, v, bias))
    got = _grads(fn, args, w, FAST_COMPILE)
    for g in got:
        assert np.all(np.isfinite(np.asarray(g)))
    for g, want in zip(got, _grads(fn, args, w)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_traced_scale_is_differentiable(rng):
    q, k, v = make_qkv(rng, 1, 13, 13, h=2, hk=1)
    w = rng.standard_normal((1, 13, 2, v.shape[-1]))
    # d/dscale of the float64 reference by a central difference (error ~1e-9).
    eps = 1e-5
    expected = (np.sum(attention_ref(q, k, v, causal=True, scale=0.3 + eps) * w)
                - np.sum(attention_ref(q, k, v, causal=True, scale=0.3 - eps) * w)) / (2 * eps)
    assert abs(expected) > 1e-3
    q, k, v = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
    for impl in IMPLS:
        def loss(s, impl=impl):
            return jnp.sum(attention(q, k, v, causal=True, scale=s, impl=impl, **GRAD_BLOCKS) * w)
        got = jax.jit(jax.grad(loss))(jnp.float32(0.3))
        assert abs(float(got) - expected) <= RTOL_GRAD * abs(expected), (impl, got, expected)


def test_bfloat16(rng):
    q, k, v = make_qkv(rng, 1, 21, 21, h=4, hk=2)
    w = rng.standard_normal((1, 21, 4, v.shape[-1]))

    def loss(q, k, v, impl):
        out = attention(q, k, v, causal=True, impl=impl, **GRAD_BLOCKS)
        return jnp.sum(out.astype(jnp.float32) * w), out

    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=3)
    f32 = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
    (_, expected), expected_dq = value_and_grad(*f32, "reference")
    for impl in IMPLS:
        (_, out), dq = value_and_grad(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), impl)
        assert out.dtype == jnp.bfloat16 and dq.dtype == jnp.bfloat16
        assert rel_err(np.asarray(out, np.float32), expected) < 2e-2, impl
        assert rel_err(np.asarray(dq, np.float32), expected_dq) < 5e-2, impl


def test_bad_inputs(rng):
    q, k, v = (jnp.asarray(x, jnp.float32) for x in make_qkv(rng, 1, 5, 5, h=3, hk=3))
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attention(q, k[:, :, :2], v[:, :, :2])
    with pytest.raises(ValueError, match="key dim"):
        attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="v .* must have k's length"):
        attention(q, k, v[:, :4])
    with pytest.raises(ValueError, match=r"q must have shape \(b, lq, h, dk\)"):
        attention(q[0], k, v)
    for bad in (0, -2, 1.5, (3,), (-1, 2), (1, 2, 3), True):
        with pytest.raises(ValueError, match="window"):
            attention(q, k, v, window=bad)
    with pytest.raises(ValueError, match="impl='flash'.*'reference'"):
        attention(q, k, v, impl="flash")
    with pytest.raises(ValueError, match="segment_ids"):
        attention(q, k, v, segment_ids=np.zeros((1, 4), int))
    with pytest.raises(ValueError, match="segment_ids must be a tuple"):
        attention(q, k[:, :4], v[:, :4], segment_ids=np.zeros((1, 5), int))
    with pytest.raises(ValueError, match="bias of shape"):
        attention(q, k, v, bias=jnp.zeros((2, 3, 5, 5)))
    with pytest.raises(ValueError, match="block_q"):
        attention(q, k, v, block_q=0)


def test_no_retrace(rng):
    q, k, v = (jnp.asarray(x, jnp.float32) for x in make_qkv(rng, 1, 40, 40, h=2, hk=1))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(q, k, v):
        return attention(q, k, v, causal=True, impl="blockwise", **BLOCKS)

    first = fn(q, k, v)
    second = fn(q + 1.0, k, v)  # same shapes, new values: no second trace
    assert not np.allclose(first, second)
    chex.clear_trace_counter()


def test_auto_picks_by_size():
    def uses_blockwise(lq, lk):
        q = jax.ShapeDtypeStruct((1, lq, 1, 4), jnp.float32)
        k = jax.ShapeDtypeStruct((1, lk, 1, 4), jnp.float32)
        jaxpr = jax.make_jaxpr(lambda q, k: attention(q, k, k, impl="auto"))(q, k)
        return "custom_vjp" in str(jaxpr)

    side = 256  # the auto table's threshold: 256^2 scores
    assert uses_blockwise(side, side)
    assert not uses_blockwise(side // 2, side)


@pytest.mark.parametrize("length,causal,window",
                         [(130, True, None), (130, True, 20), (37, False, (5, 9))])
def test_block_ranges_are_exactly_the_visible_blocks(length, causal, window):
    """The key (query) blocks looped over are exactly those holding a visible pair."""
    lq, lk, bq, bk = length - 3, length, 16, 32
    left, right = flash.resolve_window(window, causal)
    cfg = flash.FlashConfig(1.0, left, right, lq, lk, bq, bk)
    nq, nk = -(-lq // bq), -(-lk // bk)
    vis = np.asarray(flash.visible(np.arange(nq * bq) + lk - lq, np.arange(nk * bk), lk, lk,
                                 left, right, None, None))[0, 0, 0]
    blocks = vis.reshape(nq, bq, nk, bk).any(axis=(1, 3))
    for iq in range(nq):
        lo, hi = (int(x) for x in flash._key_block_range(iq * bq, cfg))
        assert set(range(lo, hi)) == set(np.nonzero(blocks[iq])[0]), (iq, lo, hi)
    for jk in range(nk):
        lo, hi = (int(x) for x in flash._query_block_range(jk * bk, cfg))
        assert set(range(lo, hi)) == set(np.nonzero(blocks[:, jk])[0]), (jk, lo, hi)
    if causal:
        assert not blocks.all()  # something is actually skipped


def _temp_bytes(impl, length, heads=2, dim=16):
    """Temporary bytes XLA plans for jit(grad) of causal attention (compiles only)."""
    shape = jax.ShapeDtypeStruct((1, length, heads, dim), jnp.float32)

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, causal=True, impl=impl, block_q=128, block_k=128))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_memory_is_not_quadratic():
    ref_small, ref_big = _temp_bytes("reference", 512), _temp_bytes("reference", 2048)
    blk_small, blk_big = _temp_bytes("blockwise", 512), _temp_bytes("blockwise", 2048)
    assert ref_big / ref_small > 10, (ref_small, ref_big)  # ~16x: L^2 score matrices
    assert blk_big / blk_small < 6, (blk_small, blk_big)  # ~4x: O(L * block)
    assert blk_big * 8 < ref_big, (blk_big, ref_big)


def test_plans_for_32k_fit_where_the_reference_cannot():
    # b=1, h=4, d=64, L=32768: the reference would need one 16 GiB score matrix
    # per intermediate; the blockwise forward+backward plans well under 1 GiB.
    assert _temp_bytes("reference", 32768, heads=4, dim=64) > 16 * 2**30
    assert _temp_bytes("blockwise", 32768, heads=4, dim=64) < 2**30


@pytest.mark.slow
def test_runs_at_32k(rng):
    shape = (1, 32768, 4, 64)
    q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(3))
    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, causal=True, impl="blockwise") ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    assert np.isfinite(float(value))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 0
