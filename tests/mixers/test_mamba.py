"""Mamba (S6 block) and the shared short convolution: float64 paper references and init.

The contract (step, causality, segments, mixing matrix, bfloat16, ...) is
checked for every mixer in ``test_contract.py``.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.mamba  # noqa: F401  (registers "mamba")
from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.mixers.mamba_blocks import init_conv_buffer, short_conv, short_conv_step
from tests.mixers import harness
from tests.mixers.harness import runs_of
from tests.mixers.ref_mamba import (
    conv_reference, mamba_matrix, mamba_reference, params_of, perturb, segments, setup)
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL  # 2e-4, float32 mixers


# --- the shared short convolution ----------------------------------------------


@pytest.mark.parametrize("causal, kernel", [(True, 4), (True, 1), (False, 7), (False, 3)])
def test_short_conv_matches_reference(rng, causal, kernel):
    x = rng.standard_normal((2, 13, 5))
    w, b = rng.standard_normal((kernel, 5)), rng.standard_normal(5)
    # Ids reused by a later segment (0 ... 0, 1, 0 ...) must still be kept apart.
    seg = np.array([[0] * 4 + [1] + [0] * 8, [2] * 6 + [5] * 2 + [2] * 5])
    for ids in (None, seg):
        y = short_conv(jnp.float32(x), jnp.float32(w), jnp.float32(b), causal=causal,
                       segment_ids=None if ids is None else jnp.asarray(ids))
        y_ref = conv_reference(x, w, b, runs_of(ids, 2, 13), causal)
        assert_rel_close(y, y_ref, 1e-5, f"conv causal={causal} K={kernel} segments={ids is not None}")
    if kernel > 1:
        # The segment mask does something: without it the rows differ.
        assert rel_err(short_conv(jnp.float32(x), jnp.float32(w), jnp.float32(b), causal=causal), y_ref) > 1e-3


def test_short_conv_step_matches_parallel(rng):
    x = jnp.float32(rng.standard_normal((3, 9, 6)))
    w, b = jnp.float32(rng.standard_normal((4, 6))), jnp.float32(rng.standard_normal(6))
    buf = init_conv_buffer(3, 4, 6, jnp.float32)
    ys = []
    for t in range(9):
        y_t, buf = short_conv_step(x[:, t], buf, w, b)
        ys.append(y_t)
    assert_rel_close(jnp.stack(ys, 1), short_conv(x, w, b), 1e-6, "conv step rollout")
    np.testing.assert_array_equal(np.asarray(buf), np.asarray(x[:, -3:]))


def test_short_conv_errors():
    x = jnp.ones((1, 5, 3))
    with pytest.raises(ValueError, match="odd kernel"):
        short_conv(x, jnp.ones((4, 3)), causal=False)
    with pytest.raises(ValueError, match="weight"):
        short_conv(x, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="buffer"):
        short_conv_step(x[:, 0], jnp.zeros((1, 2, 3)), jnp.ones((4, 3)))


# --- Mamba --------------------------------------------------------------------


def test_default_construction(rng):
    m, x, v, y = harness.default_run("mamba", rng)
    p = params_of(v)
    # d_inner = 2·16, d_state 16, dt_rank = ceil(16/16) = 1, d_conv 4.
    assert p["A_log"].shape == (32, 16) and p["dt_proj"].shape == (1, 32)
    assert p["x_proj"].shape == (32, 1 + 2 * 16) and p["conv_weight"].shape == (4, 32)
    assert_rel_close(y, mamba_reference(p, np.asarray(x, np.float64)), RTOL, "default mamba")


def test_paper_init(rng):
    d = 256  # d_inner 512, dt_rank 16
    m = get("mamba")()
    p = params_of(harness.jit_init(m, harness.random_input(rng, 1, 2, d), seed=5))
    # S4D-Real: A = -(1, 2, ..., n) in every channel; D = 1.
    np.testing.assert_allclose(p["A_log"], np.broadcast_to(np.log(np.arange(1, 17)), (512, 16)), rtol=1e-6)
    np.testing.assert_array_equal(p["D"], np.ones(512))
    # softplus(dt_bias) = Δ log-uniform on [1e-3, 1e-1]: half below 1e-2, mean log at log 1e-2.
    dt = np.log1p(np.exp(p["dt_bias"]))
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)
    assert abs(np.mean(dt < 1e-2) - 0.5) < 0.08
    assert abs(np.mean(np.log(dt)) - math.log(1e-2)) < 0.25
    # dt_proj kernel ~ U(±dt_rank^-1/2): bounded, and uniform (std = bound/sqrt 3), not normal.
    bound = 16**-0.5
    assert np.abs(p["dt_proj"]).max() <= bound
    assert abs(p["dt_proj"].std() / (bound / math.sqrt(3)) - 1) < 0.05
    assert np.abs(p["conv_weight"]).max() <= 0.5 and p["conv_weight"].std() > 0.25


@pytest.mark.parametrize(
    "impl, length", [("reference", 1), ("chunked", 1), ("reference", 37), ("chunked", 37), ("sequential", 37)]
)
def test_matches_reference_float32(rng, impl, length):
    m = get("mamba")(d_state=8, impl=impl, chunk_size=8)
    x, v = setup(rng, m, 2, length, 24)  # dt_rank = ceil(24/16) = 2
    p = params_of(v)
    x64 = np.asarray(x, np.float64)
    run = jax.jit(m.apply)
    assert_rel_close(run(v, x), mamba_reference(p, x64), RTOL, "mamba f32")
    seg = segments(rng, 2, length)
    y = run(v, x, segment_ids=jnp.asarray(seg))
    assert_rel_close(y, mamba_reference(p, x64, seg), RTOL, "mamba f32 segments")


def test_float64_exact(rng):
    x = rng.standard_normal((2, 13, 16))
    seg = segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = get("mamba")(d_state=8, dtype=jnp.float64, impl="chunked", chunk_size=4)
        v = perturb(harness.jit_init(m, jnp.asarray(x)), rng)
        # jit: one compile per path instead of op-by-op dispatch in float64.
        y = jax.jit(m.apply)(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64

        @jax.jit
        def dense_path(v, x, seg):
            M = m.apply(v, x, segment_ids=seg, method="mixing_matrix")
            return m.apply(v, x, M, segment_ids=seg, method="apply_mixing_matrix")

        y_m = dense_path(v, jnp.asarray(x), jnp.asarray(seg))
    y_ref = mamba_reference(params_of(v), x, seg)
    assert_rel_close(y, y_ref, RTOL_F64, "mamba f64 scan")
    assert_rel_close(y_m, y_ref, RTOL_F64, "mamba f64 mixing matrix")


def test_gradients(rng):
    # Both scan impls ("chunked" has its own custom_vjp) against autodiff of the
    # float64 loop reference, for the input and every parameter.
    # Short: the unrolled float64 loop reference dominates the compile time.
    x = rng.standard_normal((2, 7, 16))
    w = rng.standard_normal((2, 7, 16))
    seg = np.array([[0, 0, 1, 1, 1, 2, 2], [3, 3, 3, 3, 3, 0, 0]])
    m = get("mamba")(d_state=4)
    v = nn.meta.unbox(perturb(harness.jit_init(m, jnp.float32(x)), rng))
    with jax.enable_x64(True):
        p64 = params_of(v, xp=jnp)

        def ref_loss(p, x):
            return jnp.sum(mamba_reference(p, x, seg, xp=jnp) * w)

        r_p, r_x = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(p64, jnp.asarray(x))
    for impl in ("reference", "chunked"):
        mi = get("mamba")(d_state=4, impl=impl, chunk_size=4)

        def loss(params, x):
            return jnp.sum(mi.apply({"params": params}, x, segment_ids=jnp.asarray(seg)) * w)

        g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], jnp.float32(x))
        g_p = params_of({"params": g_p})
        assert set(g_p) == set(r_p)
        for k in r_p:
            assert_rel_close(g_p[k], r_p[k], RTOL_GRAD, f"{impl}: d{k}")
        assert_rel_close(g_x, r_x, RTOL_GRAD, f"{impl}: dx")


def test_step_infers_width_and_uses_d_model(rng):
    x = harness.random_input(rng, 2, 5, 16)
    m = get("mamba")()  # d_model None: widths come from the parameters
    v, J = harness.jit_init(m, x), harness.Jitted(m)
    for module in (m, get("mamba")(d_model=16)):
        cache = module.apply(v, 2, method="init_cache")
        assert cache["conv"].shape == (2, 3, 32) and cache["ssm"].shape == (2, 32, 16)
        assert cache["ssm"].dtype == jnp.float32
    y_t, _ = J.apply(v, x[:, 0], cache, method="step")
    assert_rel_close(y_t, J.apply(v, x)[:, 0], RTOL, "first step")
    with pytest.raises(ValueError, match="d_model"):
        get("mamba")(d_model=8).init(jax.random.PRNGKey(0), x)


def test_matrix_is_the_closed_form(rng):
    """The mixing matrix read off the scan equals the paper's S6 matrix (with ``D`` and the gate), float64."""
    m = get("mamba")(d_state=8)
    x, v = setup(rng, m)
    seg = jnp.asarray(segments(rng, 2, 13))
    M = harness.Jitted(m).apply(v, x, segment_ids=seg, method="mixing_matrix")
    assert M.shape == (2, 32, 13, 13)
    want = mamba_matrix(params_of(v), np.asarray(x, np.float64), np.asarray(seg))
    assert_rel_close(M, want, RTOL, "mamba matrix vs closed form")
    # Selective: the matrix depends on the input (an LTI SSM's would not).
    assert rel_err(harness.Jitted(m).apply(v, harness.random_input(rng, 2, 13, 16), segment_ids=seg,
                                   method="mixing_matrix"), M) > 1e-2


def test_config_errors(rng):
    x = harness.random_input(rng, 1, 4, 16)
    with pytest.raises(ConfigError, match=r"^mamba\.impl='fast'.*allowed: auto, reference, sequential, chunked"):
        get("mamba")(impl="fast")
    with pytest.raises(ConfigError, match=r"^mamba\.dt_min=0.5 must be <= mamba\.dt_max=0.1"):
        get("mamba")(dt_min=0.5, dt_max=0.1)
    m = get("mamba")()
    v = harness.jit_init(m, x)
    with pytest.raises(ValueError, match="cache"):
        m.apply(v, x[:, 0], {"ssm": jnp.zeros((1, 32, 16))}, method="step")
    with pytest.raises(ValueError, match="segment_ids"):
        m.apply(v, x, segment_ids=jnp.zeros((1, 3), jnp.int32))
