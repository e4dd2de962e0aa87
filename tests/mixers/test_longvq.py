"""LongVQ: the float64 reference of the paper's equations (outputs, matrix, gradients), the
codebook (commitment loss, EMA update), the fixed-size state, lengths and memory growth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import mixers
from seqjax.mixers.longvq import COLLECTION, LOSSES
from tests.mixers import harness
from tests.mixers.ref_linear_mixers import assert_rel_close, check_gradients, params_of, perturb
from tests.mixers.ref_longvq import (
    branches, codebook_of, commitment_reference, ema_reference, longvq_matrix, longvq_reference)

WIDTH = 16
SMALL = dict(qk_dim=8, ema_dim=4, codebook_size=4, window=4)


def _make(**kw):
    return mixers.get("longvq")(**{**SMALL, **kw})


def _setup(rng, batch=2, length=13, **kw):
    m = _make(**kw)
    x = harness.random_input(rng, batch, length, WIDTH)
    v = perturb(harness.jit_init(m, x), rng)
    return m, x, v


def _reference(m, v, x, segment_ids=None, xp=np, params=None):
    p = params_of(v, xp=xp) if params is None else params
    sg = jax.lax.stop_gradient if xp is jnp else (lambda a: a)
    return longvq_reference(p, x, codebook_of(v), m.qk_dim, m.window, segment_ids, xp=xp, sg=sg)


def test_float32_matches_reference(rng):
    # L = 13 with w = 4: most keys reach the output through the per-code memory.
    m, x, v = _setup(rng)
    J = harness.Jitted(m)
    seg = harness.segments(rng, 2, 13)
    x64 = np.asarray(x, np.float64)
    assert_rel_close(J.apply(v, x), _reference(m, v, x64), harness.RTOL, "longvq")
    assert_rel_close(J.apply(v, x, segment_ids=jnp.asarray(seg)), _reference(m, v, x64, seg), harness.RTOL,
                     "longvq segments")
    # The control: keys beyond the window hold several codes, so the code path is exercised.
    codes = branches(params_of(v), x64, codebook_of(v), m.qk_dim)[3]
    assert len(np.unique(codes[:, : 13 - m.window])) >= 2


def test_float64_matrix_and_paths(rng):
    x = rng.standard_normal((2, 13, WIDTH))
    seg = harness.segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = _make(dtype=jnp.float64)
        J = harness.Jitted(m)
        v = perturb(harness.jit_init(m, jnp.asarray(x)), rng)
        xs, s = jnp.asarray(x), jnp.asarray(seg)
        y = J.apply(v, xs, segment_ids=s)
        M = J.apply(v, xs, segment_ids=s, method="mixing_matrix")
        y_m = J.apply(v, xs, M, segment_ids=s, method="apply_mixing_matrix")
        assert y.dtype == jnp.float64
    y_ref = _reference(m, v, x, seg)
    assert_rel_close(y, y_ref, 1e-10, "f64 op")
    assert_rel_close(y_m, y_ref, 1e-10, "f64 matrix path")
    A = longvq_matrix(params_of(v), x, codebook_of(v), m.qk_dim, m.window, seg)
    assert_rel_close(M, np.broadcast_to(A[:, None], M.shape), 1e-10, "f64 matrix vs closed form")


def test_gradients_match_reference(rng):
    # Straight-through: the reference differentiates k̂ = k + sg(C − k) through every key; with
    # L <= window every key is in the window, where the fast path does the same (module docstring).
    # The keys' parameters (qk_gamma[1], qk_beta[1]) get their output gradient only this way.
    m = _make(window=8)
    x = rng.standard_normal((1, 7, WIDTH))
    v = perturb(harness.jit_init(m, jnp.float32(x)), rng)
    seg = np.array([[0] * 3 + [1] * 4])
    check_gradients(m, v, x, seg, _reference, rng)


def test_commitment_loss_method_and_sow(rng):
    m, x, v = _setup(rng)
    loss = harness.Jitted(m).apply(v, x, method="commitment_loss")
    ref = commitment_reference(params_of(v), np.asarray(x, np.float64), codebook_of(v), m.qk_dim)
    assert_rel_close(loss, np.asarray(ref), harness.RTOL, "commitment")
    _, state = jax.jit(lambda v, x: m.apply(v, x, mutable=[LOSSES]))(v, x)
    (sown,) = state[LOSSES]["commitment_loss"]
    assert_rel_close(sown, np.asarray(m.commitment_weight * ref), harness.RTOL, "sown")


def test_ema_codebook_update(rng):
    m, x, v = _setup(rng)

    @jax.jit
    def run(v, x):
        y0, same = m.apply(v, x, mutable=[COLLECTION])  # deterministic: the codebook stays
        y1, new = m.apply(v, x, deterministic=False, mutable=[COLLECTION])
        return y0, same, y1, new

    y0, same, y, new = run(v, x)
    np.testing.assert_array_equal(same[COLLECTION]["codebook_sum"], v[COLLECTION]["codebook_sum"])
    count, total = ema_reference(np.asarray(v[COLLECTION]["codebook_count"], np.float64),
                                 np.asarray(v[COLLECTION]["codebook_sum"], np.float64), params_of(v),
                                 np.asarray(x, np.float64), codebook_of(v), m.qk_dim, m.ema_decay)
    assert_rel_close(new[COLLECTION]["codebook_count"], count, harness.RTOL, "count")
    assert_rel_close(new[COLLECTION]["codebook_sum"], total, harness.RTOL, "sum")
    np.testing.assert_array_equal(y, y0)  # the output uses the codebook as it was


def test_state_does_not_grow_with_length(rng):
    m, _, v = _setup(rng, 1, 4)
    bound = m.bind(v)
    assert bound.state_size(16) == bound.state_size(4096) == bound.state_size()


@pytest.mark.parametrize("length", [1, 17])
def test_short_and_prime_lengths(rng, length):
    m, x, v = _setup(rng, 1, length)
    J = harness.Jitted(m)
    harness.check_step_matches_parallel(J, v, x)
    assert_rel_close(J.apply(v, x), _reference(m, v, np.asarray(x, np.float64)), harness.RTOL, f"L={length}")


def test_memory_grows_linearly(rng):
    # The paper's claim: linear in L (fixed codebook, fixed window). 64 -> 256 positions.
    ratio = harness.check_memory_growth(_make(codebook_size=8, window=8), rng, length=64, exponent=1.0)
    print(f"L=64 -> 256: temp memory x{ratio:.2f}")


@pytest.mark.slow
def test_memory_growth_check_can_fail(rng):
    # The control: the same measurement refuses a sub-linear claim (4^0.5 · 1.5 = 3x), so the check can fail.
    with pytest.raises(AssertionError, match="temp memory grew"):
        harness.check_memory_growth(_make(codebook_size=8, window=8), rng, length=64, exponent=0.5)


@pytest.mark.slow
def test_long_bfloat16(rng):
    m = _make(dtype=jnp.bfloat16, codebook_size=64, window=32, qk_dim=16)
    x = harness.random_input(rng, 1, 4096, WIDTH)
    v = perturb(harness.jit_init(m, x), rng)
    y = jax.jit(m.apply)(v, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y, np.float32)).all()
    g = jax.jit(jax.grad(lambda x: jnp.sum(m.apply(v, x).astype(jnp.float32) ** 2)))(x.astype(jnp.bfloat16))
    assert np.isfinite(np.asarray(g, np.float32)).all()
    y32 = jax.jit(m.apply)(v, x)
    assert float(jnp.linalg.norm(y.astype(jnp.float32) - y32) / jnp.linalg.norm(y32)) < 6e-2
