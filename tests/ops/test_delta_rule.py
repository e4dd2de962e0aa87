"""delta_rule: sequential, chunked and reference against the float64 loop of the papers' equations.

Shapes are small and odd (dk = 4 != dv = 3, lengths 1, primes, not multiples
of the chunk) so that a transposed state, a wrong chunk boundary or a dropped
padding position shows up as a large error. Keys are unit vectors and beta is
in (0, 1), as the mixers give them (the recurrence is then a contraction);
one head's gate decays strongly (exp(-5) per step) in the gated cases.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops import dispatch
from seqjax.ops.delta_rule import delta_rule
from tests.ops.ref_delta_rule import delta_rule_ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

IMPLS = ["sequential", "chunked"]
ALL_IMPLS = IMPLS + ["reference"]  # the one-chunk form: only in the cheap float64 / gradient / segment checks
B, H, DK, DV = 2, 2, 4, 3


def _inputs(rng, gated, l, b=B, h=H, dk=DK, dv=DV):
    q = rng.standard_normal((b, l, h, dk))
    k = rng.standard_normal((b, l, h, dk))
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((b, l, h, dv))
    beta = rng.uniform(0.05, 1.0, (b, l, h))
    ld = None
    if gated:
        ld = -rng.uniform(0.0, 0.5, (b, l, h))
        ld[:, :, 0] = -rng.uniform(4.0, 6.0, (b, l))
    s0 = rng.standard_normal((b, h, dk, dv))
    return q, k, v, beta, ld, s0


def _segments(rng, b, l):
    # Random contiguous segments; ids repeat (mod 3), so only changes count.
    return np.cumsum(rng.random((b, l)) < 0.1, axis=1) % 3


def _f32(x):
    return None if x is None else jnp.asarray(x, jnp.float32)


def _fast(impl, q, k, v, beta, ld=None, s0=None, seg=None, chunk_size=16):
    fn = jax.jit(functools.partial(delta_rule, impl=impl, chunk_size=chunk_size))
    return fn(q, k, v, beta, log_decay=ld, initial_state=s0, segment_ids=seg)


def _check_f32(rng, impl, gated, l, chunk_size, with_state, seg=None):
    q, k, v, beta, ld, s0 = _inputs(rng, gated, l)
    s0 = s0 if with_state else None
    o, s = _fast(impl, *map(_f32, (q, k, v, beta, ld, s0)), seg=seg, chunk_size=chunk_size)
    o_ref, s_ref = delta_rule_ref(np, q, k, v, beta, ld, s0, seg)
    what = f"{impl} gated={gated} l={l} chunk={chunk_size} state={with_state} seg={seg is not None}"
    assert o.dtype == jnp.float32 and s.dtype == jnp.float32
    assert o.shape == (B, l, H, DV) and s.shape == (B, H, DK, DV)
    assert_rel_close(o, o_ref, RTOL_SCAN, f"o {what}")
    assert_rel_close(s, s_ref, RTOL_SCAN, f"final_state {what}")


# Lengths 1, primes and non-multiples of the chunk; for "chunked" one padded
# chunk (l <= chunk), several chunks with a ragged last one, and an exact multiple.
LENGTH_CASES = [(1, 16), (7, 16), (37, 16), (37, 64), (48, 16), (131, 16)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gated", [False, True])
def test_float32_lengths_chunks_segments_and_state(rng, impl, gated):
    for i, (l, chunk) in enumerate(LENGTH_CASES):
        seg = _segments(rng, B, l) if i % 2 == 0 else None
        _check_f32(rng, impl, gated, l, chunk, with_state=i % 3 != 0, seg=seg)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("gated", [False, True])
def test_float64_exact_with_segments_and_state(rng, impl, gated):
    q, k, v, beta, ld, s0 = _inputs(rng, gated, 37)
    seg = _segments(rng, B, 37)
    seg[0, 20:] = seg[0, 19] + 1  # at least one reset in every row
    with jax.enable_x64(True):
        o, s = _fast(impl, q, k, v, beta, ld, s0, seg, chunk_size=8)
        assert o.dtype == jnp.float64 and s.dtype == jnp.float64
    o_ref, s_ref = delta_rule_ref(np, q, k, v, beta, ld, s0, seg)
    assert_rel_close(o, o_ref, RTOL_F64, "o")
    assert_rel_close(s, s_ref, RTOL_F64, "final_state")


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_packed_segments_equal_separate_runs(rng, impl):
    bounds = [(0, 9), (9, 26), (26, 31)]
    q, k, v, beta, ld, s0 = map(_f32, _inputs(rng, True, 31, b=1))
    seg = np.array([[5] * 9 + [2] * 17 + [5] * 5])  # an id may come back: still a new run
    o, s = _fast(impl, q, k, v, beta, ld, s0, seg, chunk_size=8)
    for j, (lo, hi) in enumerate(bounds):
        # The initial state belongs to the first segment only.
        part = (x[:, lo:hi] for x in (q, k, v, beta, ld))
        o_j, s_j = _fast(impl, *part, s0 if j == 0 else None, chunk_size=8)
        np.testing.assert_allclose(o[:, lo:hi], o_j, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(s, s_j, rtol=2e-5, atol=2e-5)
    o_joined, _ = _fast(impl, q, k, v, beta, ld, s0, chunk_size=8)
    assert rel_err(o_joined[:, 9:], o[:, 9:]) > 1e-2  # the resets matter


@functools.lru_cache(maxsize=None)
def _grad_case(gated):
    """Inputs, loss weights and float64 reference gradients (cached)."""
    rng = np.random.default_rng(200 + gated)
    q, k, v, beta, ld, s0 = _inputs(rng, gated, 13)
    seg = _segments(rng, B, 13)
    seg[1, 6:] = seg[1, 5] + 1
    w_o = rng.standard_normal((B, 13, H, DV))
    w_s = rng.standard_normal((B, H, DK, DV))
    args = (q, k, v, beta, s0) + (() if ld is None else (ld,))

    def ref_loss(q, k, v, beta, s0, ld=None):
        o, s = delta_rule_ref(jnp, q, k, v, beta, ld, s0, seg)
        return jnp.sum(w_o * o) + jnp.sum(w_s * s**2)

    with jax.enable_x64(True):
        g_ref = jax.jit(jax.grad(ref_loss, argnums=tuple(range(len(args)))))(*args)
    return args, seg, w_o, w_s, [np.asarray(g) for g in g_ref]


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("gated", [False, True])
def test_gradients_match_reference_autodiff(impl, gated):
    args, seg, w_o, w_s, g_ref = _grad_case(gated)

    def loss(q, k, v, beta, s0, ld=None):
        o, s = delta_rule(q, k, v, beta, log_decay=ld, initial_state=s0, segment_ids=seg, impl=impl, chunk_size=4)
        return jnp.sum(w_o * o) + jnp.sum(w_s * s**2)

    g = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*map(_f32, args))
    for name, gi, gr in zip(["q", "k", "v", "beta", "initial_state", "log_decay"], g, g_ref):
        assert gi.shape == gr.shape
        assert_rel_close(gi, gr, RTOL_GRAD, f"grad {name}")


def test_aligned_keys_stay_accurate(rng):
    # All keys of a head nearly equal: the strictly lower A has entries ~beta,
    # where a Neumann-series inverse of I + A would cancel terms ~binom(64, 32).
    q, k, v, beta, ld, s0 = _inputs(rng, True, 128, b=1)
    k = k[:, :1] + 0.01 * k
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    o, s = _fast("chunked", *map(_f32, (q, k, v, beta, ld, s0)), chunk_size=64)
    o_ref, s_ref = delta_rule_ref(np, q, k, v, beta, ld, s0)
    assert_rel_close(o, o_ref, RTOL_SCAN, "o")
    assert_rel_close(s, s_ref, RTOL_SCAN, "final_state")


def test_chunked_float32_precision_under_strong_decay(rng):
    # Half the steps gate by exp(-5)..exp(-20), the others barely: late in a
    # 64-chunk the cumulative log decay is ~ -300 while neighbouring weak steps
    # weigh ~1. Decays as sums of the spanned log decays keep ~1e-7 (measured
    # 1.8e-7 in o, as the scan's 2.2e-7); differences of running sums would
    # keep only ~ulp(300).
    b, l, h, dk, dv = 1, 256, 2, 8, 8
    ld = np.where(rng.random((b, l, h)) < 0.5, -rng.uniform(5.0, 20.0, (b, l, h)), -rng.uniform(0.0, 0.1, (b, l, h)))
    q, k, v, beta, _, _ = _inputs(rng, False, l, b=b, h=h, dk=dk, dv=dv)
    o, s = _fast("chunked", *map(_f32, (q, k, v, beta, ld)), chunk_size=64)
    o_ref, s_ref = delta_rule_ref(np, q, k, v, beta, ld)
    assert rel_err(o, o_ref) <= 1e-6, f"o: {rel_err(o, o_ref):.2e}"
    assert rel_err(s, s_ref) <= 1e-6, f"final_state: {rel_err(s, s_ref):.2e}"


def test_bfloat16_inputs_accumulate_in_float32(rng):
    q, k, v, beta, ld, s0 = _inputs(rng, True, 70)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v, beta)]
    o, s = _fast("chunked", *bf, _f32(ld), _f32(s0))
    assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    o_ref, s_ref = delta_rule_ref(np, *(np.float64(x) for x in bf), ld, s0)
    # Only the final rounding of o to bf16 (8-bit mantissa) remains; the state stays float32.
    assert_rel_close(o, o_ref, 1e-2, "bf16 o")
    assert_rel_close(s, s_ref, RTOL_SCAN, "float32 state")


@pytest.mark.parametrize("gated", [pytest.param(False, marks=pytest.mark.slow), True])
def test_chunked_matches_sequential_at_4096(rng, gated):
    q, k, v, beta, ld, s0 = map(_f32, _inputs(rng, gated, 4096, b=1, h=2, dk=16, dv=16))
    o_c, s_c = _fast("chunked", q, k, v, beta, ld, s0, chunk_size=64)
    o_s, s_s = _fast("sequential", q, k, v, beta, ld, s0)
    assert rel_err(o_c, o_s) <= 2e-5 and rel_err(s_c, s_s) <= 2e-5, (rel_err(o_c, o_s), rel_err(s_c, s_s))


def test_auto_is_chunked():
    assert dispatch.resolve("delta_rule", "auto", length=4096, chunk_size=64) == "chunked"
    assert dispatch.implementations("delta_rule") == ("auto", "reference", "sequential", "chunked", "pallas")


def test_bad_inputs_raise_clear_errors():
    x, b = jnp.ones((2, 5, 3, 4)), jnp.ones((2, 5, 3))
    with pytest.raises(ValueError, match="impl='fast'.*'chunked'"):
        delta_rule(x, x, x, b, impl="fast")
    with pytest.raises(ValueError, match="q must be"):
        delta_rule(x[0], x[0], x[0], b)
    with pytest.raises(ValueError, match="k .* must have q's shape"):
        delta_rule(x, x[..., :2], x, b)
    with pytest.raises(ValueError, match="v must be"):
        delta_rule(x, x, x[:, :4], b)
    with pytest.raises(ValueError, match=r"beta \(2, 5\) must be"):
        delta_rule(x, x, x, b[..., 0])
    with pytest.raises(ValueError, match=r"log_decay \(3,\) must be"):
        delta_rule(x, x, x, b, log_decay=-jnp.ones((3,)))
    with pytest.raises(ValueError, match="initial_state"):
        delta_rule(x, x, x, b, initial_state=jnp.ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="segment_ids"):
        delta_rule(x, x, x, b, segment_ids=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="segment_ids must be integers"):
        delta_rule(x, x, x, b, segment_ids=jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule(x, x, x, b, chunk_size=0)
    with pytest.raises(ValueError, match="beta must be floating"):
        delta_rule(x, x, x, jnp.ones((2, 5, 3), jnp.int32))


def test_no_retrace_on_same_shapes(rng):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(q, k, v, beta, ld):
        return delta_rule(q, k, v, beta, log_decay=ld, impl="chunked", chunk_size=8)

    q, k, v, beta, ld, _ = map(_f32, _inputs(rng, True, 20))
    f(q, k, v, beta, ld)
    f(q * 0.5, k, v + 1.0, beta * 0.5, ld * 2.0)  # a second trace would raise


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_forward_mode_equals_reverse_mode(rng, impl):
    """jvp through the delta rule (the chunked UT solve included) equals <grad, tangent>, float64."""
    q, k, v, beta, ld, s0 = _inputs(rng, True, 12)
    tangents = [rng.standard_normal(x.shape) for x in (q, v, beta)]
    with jax.enable_x64(True):
        def f(q_, v_, beta_):
            out, state = delta_rule(q_, jnp.asarray(k), v_, beta_, log_decay=jnp.asarray(ld),
                                    initial_state=jnp.asarray(s0), chunk_size=4, impl=impl)
            return jnp.sum(out * out) + jnp.sum(state)

        primals = tuple(jnp.asarray(x) for x in (q, v, beta))
        _, forward = jax.jvp(f, primals, tuple(jnp.asarray(t) for t in tangents))
        grads = jax.grad(f, argnums=(0, 1, 2))(*primals)
    reverse = sum(float(np.sum(np.asarray(g, np.float64) * t)) for g, t in zip(grads, tangents))
    assert abs(float(forward) - reverse) <= 1e-9 * max(1.0, abs(reverse)), (float(forward), reverse)
