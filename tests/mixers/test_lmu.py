"""LMU mixer: LegT discretisation, parallel form and step vs a float64 loop, matrix, gradients, memory.

The contract (step, causality, segments, mixing matrix vs fast path,
bfloat16, ...) is checked for every mixer in ``test_contract.py``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.mixers.lmu import legt_zoh
from tests.mixers import harness
from tests.mixers.ref_lmu_gam import lmu_discrete, lmu_matrix, lmu_reference, params_of
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

# The float64 references only have to be right: compile them without optimisation.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
KW = dict(d_state=8, theta=6.0, d_u=2)


def _setup(rng, batch=2, length=13, dtype=jnp.float32, **kw):
    m = get("lmu")(**{**KW, **kw}, dtype=dtype)
    x = rng.standard_normal((batch, length, 16))
    v = harness.perturb(harness.jit_init(m, jnp.float32(x)), rng)
    return m, x, v


def test_discretisation_is_legt_zoh():
    for order, theta in ((8, 6.0), (32, 100.0)):
        Abar, Bbar = legt_zoh(order, theta)
        A_ref, B_ref = lmu_discrete(order, theta)
        assert_rel_close(Abar, A_ref, 1e-12, f"Ā N={order}")
        assert_rel_close(Bbar, B_ref, 1e-12, f"B̄ N={order}")
    # The module runs on these constants: test_float64_exact matches the reference to 1e-10.


def test_memory_holds_the_window():
    # The LMU's purpose (Voelker et al. 2019, Fig. 1): the memory holds the last θ
    # steps of u as Legendre coefficients; P_i(-1) reads the newest input, P_i(1)
    # the one θ steps back, P_i(0) the window's middle (ZOH: half a step later).
    order, theta = 12, 40
    Abar, Bbar = lmu_discrete(order, float(theta))
    u = np.sin(2 * np.pi * np.arange(200) / 90.0)
    m = np.zeros(order)
    for u_t in u:
        m = Abar @ m + Bbar * u_t
    read = lambda r: np.polynomial.legendre.legval(r, np.eye(order)) @ m  # noqa: E731
    assert abs(read(-1.0) - u[-1]) < 0.03
    assert abs(read(1.0) - u[-1 - theta]) < 0.03
    assert abs(read(0.0) - 0.5 * (u[-1 - theta // 2] + u[-theta // 2])) < 0.01


@pytest.mark.parametrize("segments", [False, True])
def test_matches_reference_float32(rng, segments):
    m, x, v = _setup(rng)
    seg = harness.segments(rng, 2, 13) if segments else None
    J = harness.Jitted(m)
    y = J.apply(v, jnp.float32(x), segment_ids=None if seg is None else jnp.asarray(seg))
    p = params_of(v)
    y_ref = lmu_reference(p, x, 8, 6.0, seg)
    assert_rel_close(y, y_ref, harness.RTOL, f"lmu f32 segments={segments}")
    # The memory is visible in the output: zeroing its read-out changes it.
    p0 = dict(p, **{"hidden/kernel": np.concatenate([0 * p["hidden/kernel"][:16], p["hidden/kernel"][16:]])})
    assert rel_err(lmu_reference(p0, x, 8, 6.0, seg), y_ref) > 0.05


def test_direct_convolution_matches_reference(rng):
    # impl addresses fft_conv: the direct (depthwise lax.conv) path gives the same memory.
    m, x, v = _setup(rng, impl="direct")
    y = harness.Jitted(m).apply(v, jnp.float32(x))
    assert_rel_close(y, lmu_reference(params_of(v), x, 8, 6.0), harness.RTOL, "lmu impl=direct")


def test_float64_exact(rng):
    with jax.enable_x64(True):
        m, x, v = _setup(rng, dtype=jnp.float64)
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nn.meta.unbox(v))
        seg = harness.segments(rng, 2, 13)
        for ids in (None, seg):
            y = m.apply(v64, jnp.asarray(x), segment_ids=None if ids is None else jnp.asarray(ids))
            assert y.dtype == jnp.float64
            assert_rel_close(y, lmu_reference(params_of(v), x, 8, 6.0, ids), RTOL_F64, "lmu f64")


def test_long_memory_float32(rng):
    # A long window and kernel: Ā^k B̄ by doubling in float32 stays close to float64.
    m, x, v = _setup(rng, 1, 300, d_state=32, theta=200.0, d_u=1)
    y = jax.jit(m.apply)(v, jnp.float32(x))
    p = params_of(v)
    assert_rel_close(y, lmu_reference(p, x, 32, 200.0), 2e-5, "lmu f32 L=300")


def test_matrix_is_the_closed_form(rng):
    m, x, v = _setup(rng)
    seg = harness.segments(rng, 2, 13)
    J = harness.Jitted(m)
    for ids in (None, seg):
        M = J.apply(v, jnp.float32(x), segment_ids=None if ids is None else jnp.asarray(ids), method="mixing_matrix")
        assert M.shape == (2, 16, 13, 13)
        assert_rel_close(M, lmu_matrix(8, 6.0, 2, 13, ids, channels=2), 1e-5, "lmu M")


def test_step_matches_reference(rng):
    m, x, v = _setup(rng)
    J = harness.Jitted(m)
    cache = J.apply(v, 2, method="init_cache")
    ys = []
    for t in range(13):
        y_t, cache = J.apply(v, jnp.float32(x[:, t]), cache, method="step")
        ys.append(y_t)
    assert_rel_close(jnp.stack(ys, 1), lmu_reference(params_of(v), x, 8, 6.0), harness.RTOL, "lmu step")


@pytest.mark.parametrize("segments", [False, pytest.param(True, marks=pytest.mark.slow)])  # FFT path, segment scan
def test_gradients(rng, segments):
    m, x, v = _setup(rng, length=8)
    w = rng.standard_normal(x.shape)
    seg = harness.segments(rng, 2, 8) if segments else None
    params = nn.meta.unbox(v)["params"]

    def grads(m, params, x, w, ids, options=None):
        def loss(p, x):
            return jnp.sum(m.apply({"params": p}, x, segment_ids=ids) * w)

        return jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=options)(params, x)

    for ids in (seg,):
        jids = None if ids is None else jnp.asarray(ids)
        g32 = grads(m, params, jnp.float32(x), jnp.float32(w), jids)
        with jax.enable_x64(True):
            p64 = {k: jnp.asarray(a) for k, a in params_of(v).items()}

            def ref_loss(p, x):
                return jnp.sum(lmu_reference(p, x, 8, 6.0, ids, xp=jnp) * w)

            g_ref = jax.jit(jax.grad(ref_loss, argnums=(0, 1)), compiler_options=FAST_COMPILE)(p64, jnp.asarray(x))
            m64 = get("lmu")(**KW, dtype=jnp.float64)
            params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
            g64 = grads(m64, params64, jnp.asarray(x), jnp.asarray(w), jids, FAST_COMPILE)
        flat32, flat64 = params_of({"params": g32[0]}), params_of({"params": g64[0]})
        for k in g_ref[0]:
            assert_rel_close(flat64[k], g_ref[0][k], RTOL_F64, f"f64 d{k}")
            assert_rel_close(flat32[k], g_ref[0][k], RTOL_GRAD, f"f32 d{k}")
        assert_rel_close(g64[1], g_ref[1], RTOL_F64, "f64 dx")
        assert_rel_close(g32[1], g_ref[1], RTOL_GRAD, "f32 dx")


def test_memory_grows_linearly(rng):
    # FFT convolution: O(L log L) time, O(L) memory (forward and backward).
    ratio = harness.check_memory_growth(get("lmu")(d_state=16, theta=64.0), rng, length=128, exponent=1.0)
    assert ratio > 1.5  # it does grow with L (the check measured something)


@pytest.mark.parametrize("kw, match", [(dict(theta=0.0), r"^lmu\.theta=0\.0"), (dict(d_u=0), r"^lmu\.d_u=0"),
                                       (dict(d_state=0), r"^lmu\.d_state=0")])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        get("lmu")(**kw)
