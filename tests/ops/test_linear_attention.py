"""linear_attention: every implementation against the float64 loop reference.

Shapes are small and odd (dk = 4 != dv = 3, lengths 1, 7, 37, 130, chunk sizes
that do not divide them) so that a transposed state, a wrong chunk boundary or
a dropped padding position shows up as a large error.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops.linear_attention import linear_attention
from tests.ops.ref_linear_attention import linear_attention_ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

IMPLS = ["reference", "sequential", "chunked"]
KINDS = [None, "head", "scalar", "channel"]
B, H, DK, DV = 2, 2, 4, 3


def _log_decay(rng, kind, b, l, h, dk):
    """Log decays <= 0 of each kind, with one strongly decaying head or channel."""
    if kind is None:
        return None
    if kind == "head":  # RetNet: fixed gamma_h in (0.37, 0.95)
        return -rng.uniform(0.05, 1.0, (h,))
    if kind == "scalar":
        g = -rng.uniform(0.0, 0.5, (b, l, h))
        g[:, :, 0] = -rng.uniform(4.0, 6.0, (b, l))  # ~exp(-5) per step
        return g
    g = -rng.uniform(0.0, 0.3, (b, l, h, dk))
    g[..., 0] = -rng.uniform(4.0, 6.0, (b, l, h))
    return g


def _inputs(rng, kind, l, b=B, h=H, dk=DK, dv=DV):
    q = rng.standard_normal((b, l, h, dk))
    k = rng.standard_normal((b, l, h, dk))
    v = rng.standard_normal((b, l, h, dv))
    s0 = rng.standard_normal((b, h, dk, dv))
    return q, k, v, _log_decay(rng, kind, b, l, h, dk), s0


def _segments(rng, b, l):
    # Random contiguous segments; ids repeat (mod 3), so only changes count.
    return np.cumsum(rng.random((b, l)) < 0.1, axis=1) % 3


def _f32(x):
    return None if x is None else jnp.asarray(x, jnp.float32)


def _fast(impl, q, k, v, ld=None, s0=None, seg=None, causal=True, chunk_size=16):
    fn = jax.jit(functools.partial(linear_attention, impl=impl, causal=causal, chunk_size=chunk_size))
    return fn(q, k, v, log_decay=ld, initial_state=s0, segment_ids=seg)


def _check_f32(rng, impl, kind, l, chunk_size, with_state, seg=None, rtol=RTOL_SCAN):
    q, k, v, ld, s0 = _inputs(rng, kind, l)
    s0 = s0 if with_state else None
    o, s = _fast(impl, *map(_f32, (q, k, v, ld, s0)), seg=seg, chunk_size=chunk_size)
    o_ref, s_ref = linear_attention_ref(np, q, k, v, ld, True, s0, seg)
    what = f"{impl} kind={kind} l={l} chunk={chunk_size} state={with_state}"
    assert o.dtype == jnp.float32 and s.dtype == jnp.float32
    assert o.shape == (B, l, H, DV) and s.shape == (B, H, DK, DV)
    assert_rel_close(o, o_ref, rtol, f"o {what}")
    assert_rel_close(s, s_ref, rtol, f"final_state {what}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_float32_each_decay_kind(rng, impl, kind):
    _check_f32(rng, impl, kind, 37, 16, with_state=True)


# Chunk size only matters to "chunked": there it covers one padded chunk (l <= chunk),
# several chunks with a ragged last one, and exact multiples are not special-cased.
LENGTH_CASES = {
    "reference": [(1, 16), (7, 16), (37, 16), (130, 16)],
    "sequential": [(1, 16), (7, 16), (37, 16), (130, 16)],
    "chunked": [(1, 16), (7, 16), (37, 16), (37, 64), (130, 16), (130, 64)],
}


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_lengths_and_chunks(rng, impl):
    for i, (l, chunk) in enumerate(LENGTH_CASES[impl]):
        seg = _segments(rng, B, l) if i % 2 == 0 else None
        _check_f32(rng, impl, "channel", l, chunk, with_state=i % 2 == 1, seg=seg)


@pytest.mark.parametrize("kind", [None, "head", "scalar"])
def test_chunked_long_with_scalar_decays(rng, kind):
    _check_f32(rng, "chunked", kind, 130, 16, with_state=True, seg=_segments(rng, B, 130))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_float64_exact_with_segments_and_state(rng, impl, kind):
    q, k, v, ld, s0 = _inputs(rng, kind, 37)
    seg = _segments(rng, B, 37)
    seg[0, 20:] = seg[0, 19] + 1  # at least one reset in every row
    with jax.enable_x64(True):
        o, s = _fast(impl, q, k, v, ld, s0, seg, chunk_size=8)
        assert o.dtype == jnp.float64 and s.dtype == jnp.float64
    o_ref, s_ref = linear_attention_ref(np, q, k, v, ld, True, s0, seg)
    assert_rel_close(o, o_ref, RTOL_F64, "o")
    assert_rel_close(s, s_ref, RTOL_F64, "final_state")


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_segments_equal_separate_runs(rng, impl):
    bounds = [(0, 9), (9, 26), (26, 31)]
    q, k, v, ld, s0 = map(_f32, _inputs(rng, "channel", 31, b=1))
    seg = np.array([[5] * 9 + [2] * 17 + [5] * 5])  # an id may come back: still a new run
    o, s = _fast(impl, q, k, v, ld, s0, seg, chunk_size=8)
    for j, (lo, hi) in enumerate(bounds):
        # The initial state belongs to the first segment only.
        o_j, s_j = _fast(impl, q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], ld[:, lo:hi], s0 if j == 0 else None, chunk_size=8)
        np.testing.assert_allclose(o[:, lo:hi], o_j, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(s, s_j, rtol=2e-5, atol=2e-5)
    # And the resets matter: without them the answer differs.
    o_joined, _ = _fast(impl, q, k, v, ld, s0, chunk_size=8)
    assert rel_err(o_joined[:, 9:], o[:, 9:]) > 1e-2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("segments", [False, True])
def test_bidirectional(rng, impl, segments):
    q, k, v, _, _ = _inputs(rng, None, 37)
    seg = _segments(rng, B, 37) if segments else None
    o, s = _fast(impl, *map(_f32, (q, k, v)), seg=seg, causal=False, chunk_size=8)
    o_ref, s_ref = linear_attention_ref(np, q, k, v, causal=False, segment_ids=seg)
    assert_rel_close(o, o_ref, RTOL_SCAN, "o")
    assert_rel_close(s, s_ref, RTOL_SCAN, "final_state")
    if not segments:  # the full sum of k_s v_s^T
        np.testing.assert_allclose(s, np.einsum("blhk,blhv->bhkv", k, v), rtol=1e-5, atol=1e-5)


def test_bidirectional_rejects_decay_and_state():
    x = jnp.ones((1, 5, 2, 3))
    with pytest.raises(ValueError, match="causal=False.*log_decay"):
        linear_attention(x, x, x, causal=False, log_decay=-jnp.ones((2,)))
    with pytest.raises(ValueError, match="causal=False.*initial_state"):
        linear_attention(x, x, x, causal=False, initial_state=jnp.ones((1, 2, 3, 3)))


@functools.lru_cache(maxsize=None)
def _grad_case(kind):
    """Inputs, loss weights and float64 reference gradients (cached per kind)."""
    rng = np.random.default_rng(KINDS.index(kind) + 100)
    q, k, v, ld, s0 = _inputs(rng, kind, 13)
    seg = _segments(rng, B, 13)
    seg[1, 6:] = seg[1, 5] + 1
    w_o = rng.standard_normal((B, 13, H, DV))
    w_s = rng.standard_normal((B, H, DK, DV))
    args = (q, k, v, s0) + (() if ld is None else (ld,))

    def ref_loss(q, k, v, s0, ld=None):
        o, s = linear_attention_ref(jnp, q, k, v, ld, True, s0, seg)
        return jnp.sum(w_o * o) + jnp.sum(w_s * s**2)

    with jax.enable_x64(True):
        # jit: tracing the 13-step loop once beats dispatching it op by op.
        g_ref = jax.jit(jax.grad(ref_loss, argnums=tuple(range(len(args)))))(*args)
    return args, seg, w_o, w_s, [np.asarray(g) for g in g_ref]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_reference_autodiff(impl, kind):
    args, seg, w_o, w_s, g_ref = _grad_case(kind)

    def loss(q, k, v, s0, ld=None):
        o, s = linear_attention(q, k, v, log_decay=ld, initial_state=s0, segment_ids=seg, impl=impl, chunk_size=4)
        return jnp.sum(w_o * o) + jnp.sum(w_s * s**2)

    g = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*map(_f32, args))
    for name, gi, gr in zip(["q", "k", "v", "initial_state", "log_decay"], g, g_ref):
        assert gi.shape == gr.shape
        assert_rel_close(gi, gr, RTOL_GRAD, f"grad {name}")


@pytest.mark.parametrize("impl", ["sequential", "chunked"])
def test_strong_decay_long_sequence_is_finite_and_accurate(rng, impl):
    l = 1000
    q, k, v, ld, s0 = _inputs(rng, "channel", l, b=1, h=1)
    ld[..., 1] = -20.0  # exp(-20 * 64) underflows to zero inside a chunk
    q, k, v, ld, s0 = map(_f32, (q, k, v, ld, s0))

    def loss(q, k, v, ld, s0):
        o, s = linear_attention(q, k, v, log_decay=ld, initial_state=s0, impl=impl, chunk_size=64)
        return jnp.sum(o**2) + jnp.sum(s), (o, s)

    grads, (o, s) = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(q, k, v, ld, s0)
    for x in grads:
        assert np.all(np.isfinite(np.asarray(x)))
    o_ref, s_ref = linear_attention_ref(np, *(np.float64(x) for x in (q, k, v, ld)), True, np.float64(s0))
    assert_rel_close(o, o_ref, RTOL_SCAN, "o")
    assert_rel_close(s, s_ref, RTOL_SCAN, "final_state")


@pytest.mark.parametrize("kind", ["scalar", "channel"])
def test_chunked_float32_precision_under_strong_decay(rng, kind):
    # Half the steps decay by exp(-5)..exp(-20), the others barely: late in a
    # chunk the cumulative log decay is ~ -300 while the weights between
    # neighbouring weak steps are ~1. Differences of cumulative sums kept only
    # ~ulp(300) of the exponent (measured here: 1.4e-5 / 7.7e-6 relative error
    # in o for scalar / channel); sums of the spanned log decays give 1.0e-7 /
    # 1.5e-7.
    b, l, h, dk, dv = 1, 256, 2, 8, 8
    shape = (b, l, h) if kind == "scalar" else (b, l, h, dk)
    ld = np.where(rng.random(shape) < 0.5, -rng.uniform(5.0, 20.0, shape), -rng.uniform(0.0, 0.1, shape))
    q, k, v = (rng.standard_normal((b, l, h, n)) for n in (dk, dk, dv))
    o, s = _fast("chunked", *map(_f32, (q, k, v, ld)), chunk_size=64)
    o_ref, s_ref = linear_attention_ref(np, q, k, v, ld)
    assert rel_err(o, o_ref) <= 1e-6, f"o: {rel_err(o, o_ref):.2e}"
    assert rel_err(s, s_ref) <= 1e-6, f"final_state: {rel_err(s, s_ref):.2e}"


def test_reference_gradients_finite_under_strong_decay(rng):
    # The quadratic form masks c_t - c_s (s > t) before exp: no inf * 0 in the backward.
    q, k, v, ld, _ = map(_f32, _inputs(rng, "channel", 130, b=1))
    f = jax.jit(jax.grad(lambda ld: jnp.sum(linear_attention(q, k, v, log_decay=ld, impl="reference")[0])))
    assert np.all(np.isfinite(np.asarray(f(ld * 4.0))))


def test_gradient_at_shape_that_once_crashed_xla_cpu():
    # Placing the per-channel diagonal blocks into a (C, C) score matrix made
    # XLA:CPU's compiled gradient corrupt memory (segfault) at exactly this shape.
    rng = np.random.default_rng(7)
    q, k, v, ld, _ = map(_f32, _inputs(rng, "channel", 16, b=4, h=4, dk=64, dv=64))

    def grads(impl):
        f = lambda q, k, ld: jnp.sum(linear_attention(q, k, v, log_decay=ld, impl=impl)[0] ** 2)  # noqa: E731
        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(q, k, ld)

    for g, g_seq in zip(grads("chunked"), grads("sequential")):
        assert_rel_close(g, g_seq, RTOL_GRAD, "grad chunked vs sequential")


@pytest.mark.parametrize("chunk_size", [8, 32])
def test_key_gradient_at_shapes_that_crashed_xla_cpu_in_a_library_reduce(chunk_size):
    # The chunked per-channel form's key gradient at (b, l, h, dk, dv) = (2,
    # 22, 4, 8, 16) segfaulted in XLA:CPU's YNNPACK reduce (jaxlib 0.10, an
    # AMD EPYC host with AVX2, 2026-12-07) while the keys were broadcast over
    # the query positions with a plain broadcast; on other hosts it ran.
    rng = np.random.default_rng(22)
    q, k, v, ld, _ = map(_f32, _inputs(rng, "channel", 22, b=2, h=4, dk=8, dv=16))

    def grads(impl):
        f = lambda q, k, v, ld: jnp.sum(linear_attention(q, k, v, log_decay=ld, impl=impl,  # noqa: E731
                                                         chunk_size=chunk_size)[0] ** 2)
        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(q, k, v, ld)

    for g, g_seq in zip(grads("chunked"), grads("sequential")):
        assert_rel_close(g, g_seq, RTOL_GRAD, "grad chunked vs sequential")


def test_bfloat16_inputs_accumulate_in_float32(rng):
    q, k, v, ld, s0 = _inputs(rng, "channel", 70)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    o, s = _fast("chunked", *bf, _f32(ld), _f32(s0))
    assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    o_ref, s_ref = linear_attention_ref(np, *(np.float64(x) for x in bf), ld, True, s0)
    # Only the final rounding of o to bf16 (8-bit mantissa) remains; the state stays float32.
    assert_rel_close(o, o_ref, 1e-2, "bf16 o")
    assert_rel_close(s, s_ref, RTOL_SCAN, "float32 state")


def test_auto_matches_reference_short_and_long(rng):
    for l in (7, 130):
        q, k, v, ld, s0 = _inputs(rng, "scalar", l)
        o, s = _fast("auto", *map(_f32, (q, k, v, ld, s0)), chunk_size=32)
        o_ref, s_ref = linear_attention_ref(np, q, k, v, ld, True, s0)
        assert_rel_close(o, o_ref, RTOL_SCAN, f"o l={l}")
        assert_rel_close(s, s_ref, RTOL_SCAN, f"state l={l}")


def test_normaliser_by_ones_column(rng):
    # The docstring's recipe: a ones column in v yields q_t . sum_{s<=t} k_s.
    q, k, v, _, _ = _inputs(rng, None, 11)
    q, k = np.abs(q), np.abs(k)  # positive features, as after elu + 1
    ones = np.ones(v.shape[:-1] + (1,))
    o, _ = _fast("chunked", *map(_f32, (q, k, np.concatenate([v, ones], -1))), chunk_size=4)
    denom = np.einsum("blhk,blhk->blh", q, np.cumsum(k, axis=1))
    np.testing.assert_allclose(o[..., -1], denom, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    x = jnp.ones((2, 5, 3, 4))
    with pytest.raises(ValueError, match="impl='fast'.*'chunked'"):
        linear_attention(x, x, x, impl="fast")
    with pytest.raises(ValueError, match="q must be"):
        linear_attention(x[0], x[0], x[0])
    with pytest.raises(ValueError, match="k .* must have q's shape"):
        linear_attention(x, x[..., :2], x)
    with pytest.raises(ValueError, match="v must be"):
        linear_attention(x, x, x[:, :4])
    with pytest.raises(ValueError, match=r"log_decay \(2, 5\) must be"):
        linear_attention(x, x, x, log_decay=-jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"log_decay \(4,\) must be"):
        linear_attention(x, x, x, log_decay=-jnp.ones((4,)))
    with pytest.raises(ValueError, match="initial_state"):
        linear_attention(x, x, x, initial_state=jnp.ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="segment_ids"):
        linear_attention(x, x, x, segment_ids=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="segment_ids must be integers"):
        linear_attention(x, x, x, segment_ids=jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(x, x, x, chunk_size=0)


def test_no_retrace_on_same_shapes(rng):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(q, k, v, ld):
        return linear_attention(q, k, v, log_decay=ld, impl="chunked", chunk_size=8)

    q, k, v, ld, _ = map(_f32, _inputs(rng, "channel", 20))
    f(q, k, v, ld)
    f(q * 0.5, k + 1.0, v, ld * 2.0)  # a second trace would raise
