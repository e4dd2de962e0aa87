"""LongVQ: the float64 reference of the paper's equations (outputs, matrix, gradients), the
codebook (commitment loss, EMA update), the fixed-size state, lengths and memory growth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import mixers
from seqjax.mixers.longvq import COLLECTION, LOSSES
from tests.mixers import harness
from tests.ops.utils import RTOL_GRAD
from tests.mixers.ref_linear_mixers import assert_rel_close, params_of, perturb
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


@pytest.fixture(scope="module")
def small():
    """The small mixer and its (perturbed) variables, initialised once for the module (fresh inputs per test)."""
    rng = np.random.default_rng(20240417)
    m, _, v = _setup(rng, 1, 4)
    return m, harness.Jitted(m), v


def _reference(m, v, x, segment_ids=None, xp=np, params=None):
    p = params_of(v, xp=xp) if params is None else params
    sg = jax.lax.stop_gradient if xp is jnp else (lambda a: a)
    return longvq_reference(p, x, codebook_of(v), m.qk_dim, m.window, segment_ids, xp=xp, sg=sg)


def test_float32_matches_reference(rng, small):
    # L = 13 with w = 4: most keys reach the output through the per-code memory.
    m, J, v = small
    x = harness.random_input(rng, 2, 13, WIDTH)
    seg = harness.segments(rng, 2, 13)
    x64, s = np.asarray(x, np.float64), jnp.asarray(seg)
    assert_rel_close(J.apply(v, x), _reference(m, v, x64), harness.RTOL, "longvq")
    assert_rel_close(J.apply(v, x, segment_ids=s), _reference(m, v, x64, seg), harness.RTOL, "longvq segments")
    M = J.apply(v, x, segment_ids=s, method="mixing_matrix")
    A = longvq_matrix(params_of(v), x64, codebook_of(v), m.qk_dim, m.window, seg)
    assert_rel_close(M, np.broadcast_to(A[:, None], M.shape), harness.RTOL, "matrix vs closed form")
    # The control: keys beyond the window hold several codes, so the code path is exercised.
    codes = branches(params_of(v), x64, codebook_of(v), m.qk_dim)[3]
    assert len(np.unique(codes[:, : 13 - m.window])) >= 2


@pytest.mark.slow
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
    # As ref_linear_mixers.check_gradients, with the float64 reference jitted (cheaper than eager here).
    m = _make(window=8)
    x = rng.standard_normal((1, 7, WIDTH))
    v = perturb(harness.jit_init(m, jnp.float32(x)), rng)
    seg = np.array([[0] * 3 + [1] * 4])
    w = rng.standard_normal(x.shape)
    rest = {k: val for k, val in v.items() if k != "params"}

    def loss(params, x):
        return jnp.sum(m.apply({"params": params, **rest}, x, segment_ids=jnp.asarray(seg)) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], jnp.float32(x))
    with jax.enable_x64(True):
        ref = jax.jit(jax.grad(lambda p, x: jnp.sum(_reference(m, v, x, seg, xp=jnp, params=p) * w), argnums=(0, 1)))
        r_p, r_x = ref(params_of(v, xp=jnp), jnp.asarray(x))
    g_p = params_of({"params": g_p})
    assert set(g_p) == set(r_p)
    for k in r_p:
        assert_rel_close(g_p[k], np.asarray(r_p[k]), RTOL_GRAD, f"d{k}")
    assert_rel_close(g_x, np.asarray(r_x), RTOL_GRAD, "dx")
    assert np.abs(g_p["qk_beta"][1]).max() > 0  # the straight-through path reached the keys


def test_far_gradients_match_reference(rng, small):
    # L = 13 with w = 4: most keys reach the output only through the per-code memory (the
    # linear-attention read of the fast path). The straight-through gradient of those keys
    # differs by design (module docstring), so only the parameters that feed the queries alone
    # (qk_gamma[0], qk_beta[0]) or the values alone (v_proj) are compared: their gradients
    # pass through the codes' weights and value sums and must equal the reference's.
    m, _, v = small
    x = np.asarray(harness.random_input(rng, 2, 13, WIDTH), np.float64)
    seg = harness.segments(rng, 2, 13)
    w = rng.standard_normal(x.shape)
    rest = {k: val for k, val in v.items() if k != "params"}

    def loss(params):
        return jnp.sum(m.apply({"params": params, **rest}, jnp.float32(x), segment_ids=jnp.asarray(seg)) * w)

    g = params_of({"params": jax.jit(jax.grad(loss))(v["params"])})
    with jax.enable_x64(True):
        ref = jax.jit(jax.grad(lambda p: jnp.sum(_reference(m, v, jnp.asarray(x), seg, xp=jnp, params=p) * w)))
        r = {k: np.asarray(a) for k, a in ref(params_of(v, xp=jnp)).items()}
    codes = branches(params_of(v), np.asarray(x), codebook_of(v), m.qk_dim)[3]
    assert len(np.unique(codes[:, : 13 - m.window])) >= 2  # the far path holds several codes
    for k in r:
        if k.startswith("v_proj"):
            assert_rel_close(g[k], r[k], RTOL_GRAD, f"d{k}")
        elif k.startswith("qk_"):
            assert_rel_close(g[k][0], r[k][0], RTOL_GRAD, f"d{k}[0] (queries)")


def test_commitment_loss_and_ema_codebook(rng, small):
    m, J, v = small
    x = harness.random_input(rng, 2, 13, WIDTH)
    x64 = np.asarray(x, np.float64)
    ref = commitment_reference(params_of(v), x64, codebook_of(v), m.qk_dim)
    assert_rel_close(J.apply(v, x, method="commitment_loss"), np.asarray(ref), harness.RTOL, "commitment")

    @jax.jit
    def run(v, x):
        y0, same = m.apply(v, x, mutable=[COLLECTION, LOSSES])  # deterministic: the codebook stays
        y1, new = m.apply(v, x, deterministic=False, mutable=[COLLECTION])
        return y0, same, y1, new

    y0, same, y, new = run(v, x)
    (sown,) = same[LOSSES]["commitment_loss"]
    assert_rel_close(sown, np.asarray(m.commitment_weight * ref), harness.RTOL, "sown")
    np.testing.assert_array_equal(same[COLLECTION]["codebook_sum"], v[COLLECTION]["codebook_sum"])
    count, total = ema_reference(np.asarray(v[COLLECTION]["codebook_count"], np.float64),
                                 np.asarray(v[COLLECTION]["codebook_sum"], np.float64), params_of(v),
                                 x64, codebook_of(v), m.qk_dim, m.ema_decay)
    assert_rel_close(new[COLLECTION]["codebook_count"], count, harness.RTOL, "count")
    assert_rel_close(new[COLLECTION]["codebook_sum"], total, harness.RTOL, "sum")
    np.testing.assert_array_equal(y, y0)  # the output uses the codebook as it was


def test_state_does_not_grow_with_length(small):
    m, _, v = small
    bound = m.bind(v)
    assert bound.state_size(16) == bound.state_size(4096) == bound.state_size()


@pytest.mark.parametrize("length", [1, 17])
def test_short_and_prime_lengths(rng, small, length):
    m, J, v = small
    x = harness.random_input(rng, 1, length, WIDTH)
    harness.check_step_matches_parallel(J, v, x)
    assert_rel_close(J.apply(v, x), _reference(m, v, np.asarray(x, np.float64)), harness.RTOL, f"L={length}")


def test_memory_grows_linearly(rng):
    # The paper's claim: linear in L (fixed codebook, fixed window). 32 -> 128 positions, forward
    # (the forward + backward version is the slow test below).
    ratio = harness.check_memory_growth(_make(), rng, length=32, exponent=1.0, grad=False)
    print(f"L=32 -> 128: forward temp memory x{ratio:.2f}")


@pytest.mark.slow
def test_memory_grows_linearly_with_gradients(rng):
    ratio = harness.check_memory_growth(_make(codebook_size=8, window=8), rng, length=64, exponent=1.0)
    print(f"L=64 -> 256: forward + backward temp memory x{ratio:.2f}")


@pytest.mark.slow
def test_memory_growth_check_can_fail(rng):
    # The control: the same measurement refuses a sub-linear claim (4^0.5 · 1.5 = 3x), so the check can fail.
    with pytest.raises(AssertionError, match="temp memory grew"):
        harness.check_memory_growth(_make(codebook_size=8, window=8), rng, length=64, exponent=0.5, grad=False)


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
