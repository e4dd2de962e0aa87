"""GAM mixer: the conv + memory-bank paths vs a float64 loop, step, closed-form matrix, gradients, memory.

The contract (step, causality, segments, mixing matrix vs fast path,
bfloat16, ...) is checked for every mixer in ``test_contract.py``.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_lmu_gam import gam_matrix, gam_reference, params_of
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

# The float64 references only have to be right: compile them without optimisation.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
KW = dict(d_conv=3, num_slots=8)


def _setup(rng, batch=2, length=13, dtype=jnp.float32, **kw):
    m = get("gam")(**{**KW, **kw}, dtype=dtype)
    x = rng.standard_normal((batch, length, 16))
    v = harness.perturb(harness.jit_init(m, jnp.float32(x)), rng, scale=0.3)
    return m, x, v


def test_init(rng):
    m = get("gam")()
    p = params_of(harness.jit_init(m, harness.random_input(rng, 1, 3, 64)))
    assert p["memory"].shape == (512, 64) and p["conv_weight"].shape == (3, 64)
    bound = math.sqrt(6 / (512 + 64))  # Xavier-uniform, as the GAM code
    assert np.abs(p["memory"]).max() <= bound and np.abs(p["memory"]).max() > 0.9 * bound
    assert np.abs(p["conv_weight"]).max() <= 1 / math.sqrt(3)
    assert np.all(p["gate/bias"] == 0)


@pytest.mark.parametrize("segments", [False, True])
def test_matches_reference_float32(rng, segments):
    m, x, v = _setup(rng)
    seg = harness.segments(rng, 2, 13) if segments else None
    y = harness.Jitted(m).apply(v, jnp.float32(x), segment_ids=None if seg is None else jnp.asarray(seg))
    p = params_of(v)
    y_ref = gam_reference(p, x, seg)
    assert_rel_close(y, y_ref, harness.RTOL, f"gam f32 segments={segments}")
    # Both paths are visible: removing either one changes the output.
    no_local = dict(p, conv_weight=0 * p["conv_weight"], conv_bias=0 * p["conv_bias"])
    assert rel_err(gam_reference(no_local, x, seg), y_ref) > 0.05
    assert rel_err(gam_reference(dict(p, memory=0 * p["memory"]), x, seg), y_ref) > 0.05


def test_float64_exact(rng):
    with jax.enable_x64(True):
        m, x, v = _setup(rng, dtype=jnp.float64)
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nn.meta.unbox(v))
        seg = harness.segments(rng, 2, 13)  # one compile: the segment mask is the only branch
        y = m.apply(v64, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
        assert_rel_close(y, gam_reference(params_of(v), x, seg), RTOL_F64, "gam f64")


def test_step_matches_reference(rng):
    m, x, v = _setup(rng)
    J = harness.Jitted(m)
    cache = J.apply(v, 2, method="init_cache")
    ys = []
    for t in range(13):
        y_t, cache = J.apply(v, jnp.float32(x[:, t]), cache, method="step")
        ys.append(y_t)
    assert_rel_close(jnp.stack(ys, 1), gam_reference(params_of(v), x), harness.RTOL, "gam step")


def test_matrix_is_the_closed_form(rng):
    m, x, v = _setup(rng)
    seg = harness.segments(rng, 2, 13)
    J = harness.Jitted(m)
    for ids in (None, seg):
        M = J.apply(v, jnp.float32(x), segment_ids=None if ids is None else jnp.asarray(ids), method="mixing_matrix")
        assert M.shape == (2, 16, 13, 13)
        assert_rel_close(M, gam_matrix(params_of(v), x, ids), 1e-6, "gam M")


def test_gradients(rng):
    m, x, v = _setup(rng, length=8)
    w = rng.standard_normal(x.shape)
    seg = harness.segments(rng, 2, 8)
    params = nn.meta.unbox(v)["params"]

    def grads(m, params, x, w, options=None):
        def loss(p, x):
            return jnp.sum(m.apply({"params": p}, x, segment_ids=jnp.asarray(seg)) * w)

        return jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=options)(params, x)

    g32 = grads(m, params, jnp.float32(x), jnp.float32(w))
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(a) for k, a in params_of(v).items()}

        def ref_loss(p, x):
            return jnp.sum(gam_reference(p, x, seg, xp=jnp) * w)

        g_ref = jax.jit(jax.grad(ref_loss, argnums=(0, 1)), compiler_options=FAST_COMPILE)(p64, jnp.asarray(x))
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        g64 = grads(get("gam")(**KW, dtype=jnp.float64), params64, jnp.asarray(x), jnp.asarray(w), options=FAST_COMPILE)
    flat32, flat64 = params_of({"params": g32[0]}), params_of({"params": g64[0]})
    for k in g_ref[0]:
        assert_rel_close(flat64[k], g_ref[0][k], RTOL_F64, f"f64 d{k}")
        assert_rel_close(flat32[k], g_ref[0][k], RTOL_GRAD, f"f32 d{k}")
    assert_rel_close(g64[1], g_ref[1], RTOL_F64, "f64 dx")
    assert_rel_close(g32[1], g_ref[1], RTOL_GRAD, "f32 dx")


def test_memory_grows_linearly(rng):
    # Per-token reads of a fixed bank and a K-tap convolution: O(L) (paper's claim).
    ratio = harness.check_memory_growth(get("gam")(num_slots=32), rng, length=128, exponent=1.0)
    assert ratio > 1.5  # it does grow with L (the check measured something)


@pytest.mark.parametrize("kw, match", [(dict(d_conv=0), r"^gam\.d_conv=0"), (dict(num_slots=0), r"^gam\.num_slots=0")])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        get("gam")(**kw)
