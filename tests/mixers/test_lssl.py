"""LSSL mixer: fixed HiPPO-LegS, Krylov kernel = unrolled recurrence, float64 loop reference, contract."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.lssl  # noqa: F401  (registers "lssl")
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers import ref_s4 as ref
from tests.mixers.test_s4 import _init, _Jitted, _mk, _run
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

RTOL = harness.RTOL  # 2e-4, float32 mixers


def _lssl(**kw):
    return _mk("lssl", **kw)


def test_default_construction(rng):
    m = get("lssl")()
    x = harness.random_input(rng, 2, 13, 16)
    v = _init(m, x)
    y = _Jitted(m).apply(v, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))
    p = ref.params_of(v)
    # A and B are fixed (HiPPO-LegS), not parameters.
    assert set(p) == {"C", "D", "log_step", "out"}
    assert p["C"].shape == (1, 16, 64) and p["out"]["kernel"].shape == (16, 32)
    assert m.causal is True and m.bidirectional is False
    assert get("lssl")(causal=False).bidirectional is True


def test_init(rng):
    m = get("lssl")(d_state=64)
    p = ref.params_of(_init(m, harness.random_input(rng, 1, 1, 64)))
    step = np.exp(p["log_step"])
    assert step.min() >= 0.001 * (1 - 1e-6) and step.max() <= 0.1 * (1 + 1e-6)
    assert abs(np.mean(step < math.sqrt(0.001 * 0.1)) - 0.5) < 0.15  # log-uniform
    assert abs(p["C"].std() - 1) < 0.05 and abs(p["C"].mean()) < 0.05  # C ~ N(0, 1)
    assert 0.6 < p["D"].std() < 1.4


def test_fixed_legs_discretisation(rng):
    # The materialised Ā is the bilinear transform of LegS (closed form here);
    # LegS is lower triangular, so Ā is too, with the LegS eigenvalues
    # (-1, ..., -N) mapped by z = (1 + Δλ/2)/(1 - Δλ/2) on its diagonal.
    N = 16
    x = harness.random_input(rng, 1, 1, 4)
    v = _init(_lssl(d_state=N), x)
    with jax.enable_x64(True):
        system = _lssl(d_state=N, dtype=jnp.float64).apply(v, 1, method="init_cache")["system"]
    A, B = ref.legs_closed_form(N)
    step = np.exp(ref.params_of(v)["log_step"])
    for h in range(4):
        left = np.eye(N) - step[h] / 2 * A
        assert_rel_close(system["A"][h], np.linalg.solve(left, np.eye(N) + step[h] / 2 * A), RTOL_F64, "Abar")
        assert_rel_close(system["B"][h], np.linalg.solve(left, step[h] * B), RTOL_F64, "Bbar")
        lam = -np.arange(1, N + 1)
        z = (1 + step[h] * lam / 2) / (1 - step[h] * lam / 2)
        np.testing.assert_allclose(np.diag(system["A"][h]), z, rtol=1e-12)
        assert np.abs(np.triu(system["A"][h], 1)).max() < 1e-12


CASES = [(), (("bidirectional", True), ("output", "linear"))]


@pytest.mark.parametrize("kw", CASES)
def test_matches_reference(rng, kw):
    """Krylov kernel = unrolled recurrence, and the whole layer = the loop reference (f32, f64)."""
    kw = dict(kw)
    L = 37
    m = _lssl(**kw)
    x = harness.random_input(rng, 2, L, 16)
    v = _init(m, x)
    p = ref.params_of(v)
    x64 = np.asarray(x, np.float64)
    system = ref.lssl_system(p)
    K_ref = ref.kernel_reference(system, L)
    assert np.abs(K_ref[..., 0]).max() > 1e-2
    K = m.apply(v, L, method="kernel")
    assert K.shape == (m.module.directions, 16, L)
    assert_rel_close(K, K_ref, RTOL_SCAN, "lssl kernel f32")
    y_ref = ref.layer_reference(p, system, x64, output=m.module.output)
    assert_rel_close(m.apply(v, x), y_ref, RTOL, "lssl layer f32")
    pre = ref.ssm_reference(system, p["D"], x64)
    assert rel_err(pre - p["D"] * x64, pre) > 0.05  # the SSM part is visible
    with jax.enable_x64(True):
        m64 = _lssl(dtype=jnp.float64, **kw)
        K64 = m64.apply(v, L, method="kernel")
        y64 = m64.apply(v, jnp.asarray(x64))
        assert K64.dtype == y64.dtype == jnp.float64
    assert_rel_close(K64, K_ref, RTOL_F64, "lssl kernel f64")
    assert_rel_close(y64, y_ref, RTOL_F64, "lssl layer f64")
    # Length 1: the kernel is C B̄ alone.
    y1 = m.apply(v, x[:, :1])
    assert_rel_close(y1, ref.layer_reference(p, system, x64[:, :1], output=m.module.output), RTOL, "L=1")


def test_gradients(rng):
    L = 7
    x = rng.standard_normal((2, L, 4))
    w = rng.standard_normal((2, L, 4))
    kw = dict(d_state=8, bidirectional=True)

    def grads(m, params, x, w):
        def loss(p, x):
            return jnp.sum(m.module.apply({"params": p}, x) * w)

        return _run(jax.grad(loss, argnums=(0, 1)), params, x)

    m32 = _lssl(**kw)
    v = nn.meta.unbox(_init(m32, jnp.float32(x)))
    g32 = grads(m32, v["params"], jnp.float32(x), jnp.float32(w))
    with jax.enable_x64(True):
        p64 = jax.tree.map(jnp.asarray, ref.params_of(v))

        def ref_loss(p, x):
            y = ref.layer_reference(p, ref.lssl_system(p, xp=jnp), x, output=m32.module.output, xp=jnp)
            return jnp.sum(y * w)

        g_ref = _run(jax.grad(ref_loss, argnums=(0, 1)), p64, jnp.asarray(x))
        g64 = grads(_lssl(dtype=jnp.float64, **kw), p64, jnp.asarray(x), jnp.asarray(w))
    flat_ref = jax.tree_util.tree_flatten_with_path(g_ref[0])[0]
    for (path, gr), g6, g3 in zip(flat_ref, jax.tree.leaves(g64[0]), jax.tree.leaves(g32[0])):
        key = jax.tree_util.keystr(path)
        assert np.abs(np.asarray(gr)).max() > 0, key
        assert_rel_close(g6, gr, RTOL_F64, f"f64 d{key}")
        assert_rel_close(g3, gr, RTOL_GRAD, f"f32 d{key}")
    assert_rel_close(g64[1], g_ref[1], RTOL_F64, "f64 dx")
    assert_rel_close(g32[1], g_ref[1], RTOL_GRAD, "f32 dx")


def test_step_matches_parallel(rng):
    m = _lssl()
    x = harness.random_input(rng, 2, 13, 16)
    v = _init(m, x)
    harness.check_step_matches_parallel(m, v, x)
    cache = m.apply(v, 2, method="init_cache")
    assert cache["x"].shape == (2, 16, 16) and cache["x"].dtype == jnp.float32
    assert cache["system"]["A"].shape == (16, 16, 16)
    y_t, _ = _lssl(d_model=16).apply(v, x[:, 0], cache, method="step")
    assert_rel_close(y_t, m.apply(v, x)[:, 0], RTOL, "first step")


def test_causal_and_bidirectional(rng):
    x = harness.random_input(rng, 2, 13, 16)
    m = _lssl()
    harness.check_causal(m, _init(m, x), x, rng)
    mb = _lssl(bidirectional=True)
    v = _init(mb, x)
    x2 = np.array(x)
    x2[:, 7:] = rng.standard_normal(x2[:, 7:].shape)
    assert rel_err(mb.apply(v, jnp.asarray(x2))[:, :7], mb.apply(v, x)[:, :7]) > 1e-3  # not causal
    with pytest.raises(ValueError, match="not causal"):
        mb.module.apply(v, 2, method="init_cache")


def test_mixing_matrix_and_segments(rng):
    x = harness.random_input(rng, 2, 13, 16)
    m = _lssl()
    v = _init(m, x)
    M = np.asarray(harness.check_mixing_matrix(m, v, x, causal=True))
    K = np.asarray(m.apply(v, 13, method="kernel"))[0]
    np.testing.assert_allclose(M[1, :, 9, 4], K[:, 5], rtol=1e-6)  # Toeplitz
    np.testing.assert_allclose(M[0, :, 6, 6], K[:, 0] + ref.params_of(v)["D"], rtol=1e-6)
    mb = _lssl(bidirectional=True)
    vb = _init(mb, x)
    M = np.asarray(harness.check_mixing_matrix(mb, vb, x, causal=False))
    Kb = np.asarray(mb.apply(vb, 13, method="kernel"))
    np.testing.assert_allclose(M[0, :, 4, 9], Kb[1, :, 4], rtol=1e-6)  # k_bwd[s - t - 1]
    # Segments run the same-segment-masked Toeplitz matrix: a packed row equals
    # separate runs, and the segmented dense matrix gives the same output.
    seg = jnp.asarray([[0] * 4 + [1] * 9, [2] * 6 + [0] * 7])
    y_s = mb.apply(vb, x, segment_ids=seg)
    assert_rel_close(y_s[1:, 6:], mb.apply(vb, x[1:, 6:]), RTOL, "segment alone")
    assert_rel_close(y_s[:1, :4], mb.apply(vb, x[:1, :4]), RTOL, "first segment alone")
    Ms = mb.apply(vb, x, segment_ids=seg, method="mixing_matrix")
    y_m = mb.apply(vb, x, Ms, method="apply_mixing_matrix")
    assert_rel_close(y_m, y_s, RTOL, "segmented dense path")
    harness.check_segments(m, v, rng)


def test_bfloat16(rng):
    x = harness.random_input(rng, 2, 13, 16)
    m32, m16 = _lssl(), _lssl(dtype=jnp.bfloat16)
    v = _init(m32, x)
    y16 = m16.apply(v, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    assert rel_err(y16.astype(jnp.float32), m32.apply(v, x)) < 3e-2
    cache = m16.apply(v, 2, method="init_cache")
    y_t, cache = m16.apply(v, x[:, 0].astype(jnp.bfloat16), cache, method="step")
    assert y_t.dtype == jnp.bfloat16 and cache["x"].dtype == jnp.float32


def test_state_size():
    v = {"params": {"D": jnp.zeros(16)}}
    assert get("lssl")().apply(v, None, method="state_size") == 16 * 64 * 4  # N float32 per channel
    assert get("lssl")(d_model=4, d_state=7).apply({}, 100, method="state_size") == 4 * 7 * 4
    assert get("lssl")(d_model=4, d_state=7, causal=False).apply({}, None, method="state_size") == 2 * 4 * 7 * 4


def test_no_retrace(rng):
    m = _lssl().module
    x = harness.random_input(rng, 2, 13, 16)
    v = _init(m, x)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(v, x):
        return m.apply(v, x)

    f(v, x)
    f(v, x + 1.0)


def test_bad_arguments(rng):
    x = harness.random_input(rng, 2, 5, 8)
    for kw, match in [
        (dict(d_state=0), "d_state"),
        (dict(output="gelu"), "'glu', 'linear'"),
        (dict(dt_min=0.0), "dt_min"),
        (dict(conv_impl="fast"), "'fft', 'direct'"),
    ]:
        with pytest.raises(ValueError, match=match):
            get("lssl")(**kw).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="contradicts"):
        get("lssl")(causal=False, bidirectional=False)
