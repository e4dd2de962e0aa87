"""mlstm: reference, sequential and chunked against the float64 loop of the paper's stabilised recurrence.

Shapes are small and odd (dk = 4 != dv = 3, lengths 1, primes, not multiples
of the chunk) so that a transposed state, a wrong chunk boundary or a dropped
padding position shows up as a large error. Input gates are N(0, 3^2) (so the
stabiliser moves), forget gates ``log sigmoid(N(2, 2^2))``; the initial state
has a random stabiliser ``m``. The final state is compared as stored, ``m``
included: every impl must follow the recurrence's ``m``, not just give the
same outputs.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops import dispatch
from seqjax.ops.mlstm import mlstm
from tests.ops.ref_mlstm import mlstm_ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, outputs_and_grads, rel_err

IMPLS = ["reference", "sequential", "chunked"]
# "reference" is "chunked" with one chunk: past the float32 and gradient checks its cases are slow-only.
IMPLS_FAST = [pytest.param("reference", marks=pytest.mark.slow), "sequential", "chunked"]
FAST_COMPILE = {"xla_backend_optimization_level": 0}
B, H, DK, DV = 2, 2, 4, 3


def _inputs(rng, l, b=B, h=H, dk=DK, dv=DV, gate_std=3.0):
    q = rng.standard_normal((b, l, h, dk))
    k = rng.standard_normal((b, l, h, dk)) / np.sqrt(dk)
    v = rng.standard_normal((b, l, h, dv))
    log_i = rng.normal(0.0, gate_std, (b, l, h))
    log_f = -np.logaddexp(0.0, -rng.normal(2.0, 2.0, (b, l, h)))  # log sigmoid
    s0 = (rng.standard_normal((b, h, dk, dv)), rng.standard_normal((b, h, dk)), rng.normal(0.0, 2.0, (b, h)))
    return q, k, v, log_i, log_f, s0


def _segments(rng, b, l):
    # Random contiguous segments; ids repeat (mod 3), so only changes count.
    return np.cumsum(rng.random((b, l)) < 0.1, axis=1) % 3


def _f32(x):
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(jnp.asarray(y, jnp.float32) for y in x)
    return jnp.asarray(x, jnp.float32)


def _fast(impl, q, k, v, li, lf, s0=None, seg=None, chunk_size=8):
    fn = jax.jit(functools.partial(mlstm, impl=impl, chunk_size=chunk_size, return_final_state=True))
    return fn(q, k, v, li, lf, initial_state=s0, segment_ids=seg)


def _check_state(s, s_ref, rtol, what):
    for name, x, r in zip("Cnm", s, s_ref):
        assert_rel_close(x, r, rtol, f"final {name} {what}")


# Lengths 1, primes and non-multiples of the chunk; for "chunked" one padded
# chunk (l <= chunk), several chunks with a ragged last one, and an exact multiple.
# The chunk size matters to "chunked" only; the others run the first two lengths.
LENGTH_CASES = [(1, 8), (37, 8), (48, 16), (61, 16)]


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_lengths_chunks_segments_and_state(rng, impl):
    for i, (l, chunk) in enumerate(LENGTH_CASES if impl == "chunked" else LENGTH_CASES[:2]):
        q, k, v, li, lf, s0 = _inputs(rng, l)
        s0 = s0 if i % 3 != 0 else None
        seg = _segments(rng, B, l) if i % 2 == 0 else None
        h, s = _fast(impl, *map(_f32, (q, k, v, li, lf, s0)), seg=seg, chunk_size=chunk)
        h_ref, s_ref = mlstm_ref(np, q, k, v, li, lf, s0, seg)
        what = f"{impl} l={l} chunk={chunk} state={s0 is not None} seg={seg is not None}"
        assert h.dtype == jnp.float32 and all(x.dtype == jnp.float32 for x in s)
        assert h.shape == (B, l, H, DV)
        assert_rel_close(h, h_ref, RTOL_SCAN, f"h {what}")
        _check_state(s, s_ref, RTOL_SCAN, what)


@pytest.mark.parametrize("impl", IMPLS_FAST)
def test_float64_exact_with_segments_and_state(rng, impl):
    q, k, v, li, lf, s0 = _inputs(rng, 37)
    seg = _segments(rng, B, 37)
    seg[0, 20:] = seg[0, 19] + 1  # at least one reset in every row
    with jax.enable_x64(True):
        h, s = _fast(impl, q, k, v, li, lf, s0, seg, chunk_size=8)
        assert h.dtype == jnp.float64 and s[0].dtype == jnp.float64
    h_ref, s_ref = mlstm_ref(np, q, k, v, li, lf, s0, seg)
    assert_rel_close(h, h_ref, RTOL_F64, "h")
    _check_state(s, s_ref, RTOL_F64, "float64")


@pytest.mark.parametrize("impl", [pytest.param("sequential", marks=pytest.mark.slow), "chunked"])
def test_packed_segments_equal_separate_runs(rng, impl):
    bounds = [(0, 9), (9, 26), (26, 31)]
    q, k, v, li, lf, s0 = _inputs(rng, 31, b=1)
    seg = np.array([[5] * 9 + [2] * 17 + [5] * 5])  # an id may come back: still a new run
    h, s = _fast(impl, *map(_f32, (q, k, v, li, lf, s0)), seg, chunk_size=8)
    for j, (lo, hi) in enumerate(bounds):
        # Separate runs of the float64 loop; the initial state belongs to the first segment only.
        part = (x[:, lo:hi] for x in (q, k, v, li, lf))
        h_j, s_j = mlstm_ref(np, *part, s0 if j == 0 else None)
        assert_rel_close(h[:, lo:hi], h_j, RTOL_SCAN, f"h of run {j}")
    _check_state(s, s_j, RTOL_SCAN, "packed")
    h_joined, _ = mlstm_ref(np, q, k, v, li, lf, s0)
    assert rel_err(h_joined[:, 9:], h[:, 9:]) > 1e-2  # the resets matter
    h_fresh, _ = mlstm_ref(np, q, k, v, li, lf)
    assert rel_err(h_fresh[:, :9], h[:, :9]) > 1e-2  # the initial state matters


@functools.lru_cache(maxsize=None)
def _grad_case():
    """Inputs, loss weights and float64 reference gradients (cached)."""
    rng = np.random.default_rng(300)
    q, k, v, li, lf, (c0, n0, m0) = _inputs(rng, 13)
    seg = _segments(rng, B, 13)
    seg[1, 6:] = seg[1, 5] + 1
    w_h = rng.standard_normal((B, 13, H, DV))
    w_c, w_n = rng.standard_normal((B, H, DK, DV)), rng.standard_normal((B, H, DK))
    args = (q, k, v, li, lf, c0, n0, m0)

    def ref_loss(q, k, v, li, lf, c0, n0, m0):
        h, (c, n, _) = mlstm_ref(jnp, q, k, v, li, lf, (c0, n0, m0), seg, stop=jax.lax.stop_gradient)
        return jnp.sum(w_h * h) + jnp.sum(w_c * c) + jnp.sum(w_n * n)

    with jax.enable_x64(True):
        # A 13-step Python loop: compiled at a low optimisation level (it only has to be right).
        g_ref = jax.jit(jax.grad(ref_loss, argnums=tuple(range(len(args)))), compiler_options=FAST_COMPILE)(*args)
    return args, seg, w_h, w_c, w_n, [np.asarray(g) for g in g_ref]


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_reference_autodiff(impl):
    args, seg, w_h, w_c, w_n, g_ref = _grad_case()

    def loss(q, k, v, li, lf, c0, n0, m0):
        h, (c, n, _) = mlstm(q, k, v, li, lf, initial_state=(c0, n0, m0), segment_ids=seg, impl=impl,
                             chunk_size=4, return_final_state=True)
        return jnp.sum(w_h * h) + jnp.sum(w_c * c) + jnp.sum(w_n * n)

    g = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*map(_f32, args))
    for name, gi, gr in zip(["q", "k", "v", "log_i", "log_f", "C0", "n0", "m0"], g, g_ref):
        assert gi.shape == gr.shape
        assert_rel_close(gi, gr, RTOL_GRAD, f"grad {name}")


@pytest.mark.parametrize("impl", IMPLS_FAST)
def test_large_gate_preactivations_do_not_overflow(rng, impl):
    # i~ up to +-100: exp(100) overflows float32 (max ~ exp(88.7)); only the
    # stabilised form stays finite. Some forget gates near 1, some near 0.
    q, k, v, _, _, s0 = _inputs(rng, 29)
    li = rng.choice([-100.0, -30.0, 0.0, 30.0, 100.0], (B, 29, H)) + rng.normal(0.0, 1.0, (B, 29, H))
    lf = -np.logaddexp(0.0, -rng.choice([-30.0, 0.0, 30.0], (B, 29, H)))
    fn = functools.partial(mlstm, impl=impl, chunk_size=8, return_final_state=True)
    (h, s), g = outputs_and_grads(fn, tuple(map(_f32, (q, k, v, li, lf))),
                                  (jnp.ones((B, 29, H, DV)), tuple(jnp.zeros(x.shape) for x in _f32(s0))))
    h_ref, s_ref = mlstm_ref(np, q, k, v, li, lf)
    assert np.isfinite(h_ref).all() and np.max(np.abs(s_ref[2])) > 88.0  # the unstabilised state would overflow
    assert_rel_close(h, h_ref, RTOL_SCAN, "h")
    _check_state(s, s_ref, RTOL_SCAN, "large gates")
    assert all(np.isfinite(np.asarray(x)).all() for x in g)  # padded rows and underflowing exp(-m) included


def test_bfloat16_inputs_accumulate_in_float32(rng):
    q, k, v, li, lf, s0 = _inputs(rng, 70)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v, li, lf)]
    h, s = _fast("chunked", *bf, _f32(s0), chunk_size=16)
    assert h.dtype == jnp.bfloat16 and all(x.dtype == jnp.float32 for x in s)
    h_ref, s_ref = mlstm_ref(np, *(np.float64(np.asarray(x, np.float32)) for x in bf), s0)
    # Only the final rounding of h to bf16 (8-bit mantissa, 2^-8 = 3.9e-3) remains; the state stays float32.
    assert_rel_close(h, h_ref, 1e-2, "bf16 h")
    _check_state(s, s_ref, RTOL_SCAN, "bf16 inputs")


@pytest.mark.slow
def test_chunked_matches_sequential_at_4096(rng):
    # Measured 5.5e-7 - 8.6e-7 relative, 1.6e-5 - 2.3e-5 absolute in h (|h| up to ~27).
    length = 4096
    q, k, v, li, lf, s0 = map(_f32, _inputs(rng, length, b=1, h=2, dk=16, dv=16, gate_std=1.0))
    h_c, s_c = _fast("chunked", q, k, v, li, lf, s0, chunk_size=64)
    h_s, s_s = _fast("sequential", q, k, v, li, lf, s0)
    err = max(rel_err(h_c, h_s), *(rel_err(x, y) for x, y in zip(s_c, s_s)))
    print(f"chunked vs sequential at l={length}, float32: max relative error {err:.2e}, "
          f"max abs error in h {float(jnp.max(jnp.abs(h_c - h_s))):.2e}")
    assert err <= 2e-5, err


def test_auto_rows():
    assert dispatch.resolve("mlstm", "auto", length=4096, chunk_size=64) == "chunked"
    assert dispatch.resolve("mlstm", "auto", length=64, chunk_size=64) == "reference"
    assert dispatch.implementations("mlstm") == ("auto", "reference", "sequential", "chunked")


def test_bad_inputs_raise_clear_errors():
    x, g = jnp.ones((2, 5, 3, 4)), jnp.ones((2, 5, 3))
    with pytest.raises(ValueError, match="impl='fast'.*'chunked'"):
        mlstm(x, x, x, g, g, impl="fast")
    with pytest.raises(ValueError, match="q must be"):
        mlstm(x[0], x[0], x[0], g, g)
    with pytest.raises(ValueError, match="k .* must have q's shape"):
        mlstm(x, x[..., :2], x, g, g)
    with pytest.raises(ValueError, match="v must be"):
        mlstm(x, x, x[:, :4], g, g)
    with pytest.raises(ValueError, match=r"log_f \(2, 5\) must be"):
        mlstm(x, x, x, g, g[..., 0])
    with pytest.raises(ValueError, match="initial_state shapes"):
        mlstm(x, x, x, g, g, initial_state=(jnp.ones((2, 3, 4, 4)), jnp.ones((2, 3, 4)), jnp.ones((3,))))
    with pytest.raises(ValueError, match="segment_ids must be integers"):
        mlstm(x, x, x, g, g, segment_ids=jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm(x, x, x, g, g, chunk_size=0)
    with pytest.raises(NotImplementedError, match="mlstm: no sequence-parallel"):
        mlstm(x, x, x, g, g, sequence_axis="sequence")


def test_no_retrace_on_same_shapes(rng):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(q, k, v, li, lf):
        return mlstm(q, k, v, li, lf, impl="chunked", chunk_size=8)

    q, k, v, li, lf, _ = map(_f32, _inputs(rng, 20))
    f(q, k, v, li, lf)
    f(q * 0.5, k, v + 1.0, li * 2.0, lf * 0.5)  # a second trace would raise
