"""ConvS5 mixer: float64 loop reference (outputs, gradients, matrix), init, frames, step resets, memory.

The contract (step, causality, segments, mixing matrix vs fast path,
bfloat16, ...) is checked in ``test_contract.py``; here the paper's equations
(``ref_convs5.py``) on a non-square frame with two kernel sizes, so a swapped
axis or kernel shows.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.mixers.convs5 import ConvS5
from seqjax.ops.hippo import block_diagonal_legs
from tests.mixers import harness
from tests.mixers.ref_convs5 import convs5_matrix, convs5_reference
from tests.mixers.ref_lru_s5 import params_of
from tests.mixers.ref_s4 import legs_closed_form
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL
H, W, U = 3, 2, 2  # a non-square frame: a transposed axis would show
D = H * W * U
# Larger steps than the default [0.001, 0.1] so the state part is not swamped by D ⊙ U.
FIELDS = dict(frame_height=H, frame_width=W, d_state=4, b_kernel_size=3, c_kernel_size=5, dt_min=0.05, dt_max=0.5)


def _make(**kw):
    return get("convs5")(**{**FIELDS, **kw})


def _setup(rng, m, batch=2, length=13):
    x = harness.random_input(rng, batch, length, D)
    return x, harness.perturb(harness.jit_init(getattr(m, "module", m), x), rng)


def _ref(v, x, seg=None, xp=np, **kw):
    return convs5_reference(params_of(v) if xp is np else v, np.asarray(x, np.float64) if xp is np else x,
                            H, W, seg, xp=xp, **kw)


def test_matches_reference_float32(rng):
    length = 13  # prime; length 1 against the reference: test_bfloat16_short
    m = harness.Jitted(_make(clip_eigs=True))
    x, v = _setup(rng, m, 2, length)
    seg = harness.segments(rng, 2, length)
    y_ref = _ref(v, x, clip_eigs=True)
    p = params_of(v)
    assert rel_err(y_ref - np.tile(p["D"], H * W) * np.asarray(x, np.float64), y_ref) > 0.05  # state part visible
    # The parallel (associative) scan, as the paper runs it; "auto" is sequential on CPU (the 5-D call below).
    par = harness.Jitted(_make(clip_eigs=True, impl="associative"))
    assert_rel_close(par.apply(v, x, segment_ids=jnp.asarray(seg)), _ref(v, x, seg, clip_eigs=True), RTOL,
                     "convs5 f32 associative scan, segments")
    # The frames as (b, l, H, W, U) (the (b, l, d) path inside): the output keeps that shape.
    y5 = m.apply(v, x.reshape(2, length, H, W, U))
    assert y5.shape == (2, length, H, W, U)
    assert_rel_close(y5.reshape(2, length, D), y_ref, RTOL, "convs5 f32, 5-D input")


def test_float64_exact(rng):
    x = rng.standard_normal((2, 11, D))
    seg = harness.segments(rng, 2, 11)
    with jax.enable_x64(True):
        m = _make(dtype=jnp.float64)
        J = harness.Jitted(m)
        x64, seg64 = jnp.asarray(x), jnp.asarray(seg)
        v = harness.perturb(harness.jit_init(m, x64), rng)
        y = J.apply(v, x64, segment_ids=seg64)
        assert y.dtype == jnp.float64
        M = J.apply(v, x64, segment_ids=seg64, method="mixing_matrix")
        y_m = J.apply(v, x64, M, method="apply_mixing_matrix")
    y_ref = _ref(v, x, seg)
    assert_rel_close(y, y_ref, RTOL_F64, "convs5 f64 scan")
    assert_rel_close(y_m, y_ref, RTOL_F64, "convs5 f64 mixing matrix")
    assert_rel_close(M, convs5_matrix(params_of(v), 2, 11, H, W, seg), RTOL_F64, "convs5 f64 closed-form matrix")


def test_gradients(rng):
    length = 5
    x = rng.standard_normal((2, length, D))
    w = rng.standard_normal((2, length, D))
    seg = harness.segments(rng, 2, length, p=0.4)

    def grads(m, params, x, w):
        def loss(p, x):
            return jnp.sum(m.apply({"params": p}, x, segment_ids=jnp.asarray(seg)) * w)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

    def ref_grads(p, x, w):
        return jax.jit(jax.grad(lambda p, x: jnp.sum(_ref(p, x, seg, xp=jnp) * w), argnums=(0, 1)))(p, x)

    m32 = _make(c_kernel_size=3)  # a small graph for the reference's gradient (k_C = 5: the output tests)
    v = nn.meta.unbox(harness.perturb(harness.jit_init(m32, jnp.float32(x)), rng))
    g32 = grads(m32, v["params"], jnp.float32(x), jnp.float32(w))
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(a) for k, a in params_of(v).items()}
        g_ref = ref_grads(p64, jnp.asarray(x), jnp.asarray(w))
    for k in g_ref[0]:
        assert_rel_close(g32[0][k], g_ref[0][k], RTOL_GRAD, f"f32 d{k}")
    assert_rel_close(g32[1], g_ref[1], RTOL_GRAD, "f32 dx")


def test_step_frames_and_reset(rng):
    """A 4-D frame step with ``reset`` equals the parallel form with a segment starting there."""
    m = harness.Jitted(_make())
    x, v = _setup(rng, m, 2, 9)
    seg = np.zeros((2, 9), np.int32)
    seg[0, 4:] = 1  # row 0 restarts at t = 4, row 1 never
    y = m.apply(v, x, segment_ids=jnp.asarray(seg))
    cache = m.apply(v, 2, method="init_cache")
    frames = x.reshape(2, 9, H, W, U)
    ys = []
    for t in range(9):
        reset = jnp.asarray([t == 4, False])
        y_t, cache = m.apply(v, frames[:, t], cache, reset, method="step")
        assert y_t.shape == (2, H, W, U)
        ys.append(y_t.reshape(2, D))
    assert_rel_close(jnp.stack(ys, 1), y, RTOL, "step with reset vs segments")
    assert cache["h"].shape == (2, H * W * 2) and cache["h"].dtype == jnp.complex64


def test_init(rng):
    P, k, u = 32, 3, 8
    m = get("convs5")(frame_height=2, frame_width=2, d_state=P, blocks=2, b_kernel_size=k, c_kernel_size=k)
    p = params_of(harness.jit_init(m, harness.random_input(rng, 1, 3, 4 * u)))
    assert p["B"].shape == (k, k, u, P // 2, 2) and p["C"].shape == (k, k, P // 2, u, 2) and p["D"].shape == (u,)
    # Λ: the positive-imaginary eigenvalues of LegS's normal part S = A + p pᵀ, once per block.
    A, _ = legs_closed_form(P // 2)
    pp = np.sqrt(np.arange(P // 2) + 0.5)
    eig = np.linalg.eigvals(A + np.outer(pp, pp))
    np.testing.assert_allclose(p["Lambda_re"], -0.5, rtol=1e-6)
    np.testing.assert_allclose(np.sort(p["Lambda_im"]), np.sort(np.tile(eig[eig.imag > 0].imag, 2)),
                               rtol=1e-5, atol=1e-5)
    step = np.exp(p["log_step"])
    assert step.min() >= 0.001 * (1 - 1e-6) and step.max() <= 0.1 * (1 + 1e-6)
    # B̃ = V⁻¹ B for a real He-normal B (std sqrt(2 / (U k²))): B = 2 Re(V B̃) is real with that spread.
    _, V, _ = block_diagonal_legs(P, 2, conj_sym=True)
    B_t = p["B"][..., 0] + 1j * p["B"][..., 1]
    B = 2 * np.real(np.einsum("ijcm,pm->ijcp", B_t, V))
    assert abs(B.std() / math.sqrt(2 / (u * k * k)) - 1) < 0.1
    # C̃ = C V for a real He-normal C (variance 2 / (P k²)), V with orthonormal columns: E|C̃|² = 2 / (P k²).
    C_t = p["C"][..., 0] + 1j * p["C"][..., 1]
    assert abs(np.mean(np.abs(C_t) ** 2) / (2 / (P * k * k)) - 1) < 0.1


def test_state_size_and_width(rng):
    m = _make()
    assert m.apply({}, None, method="state_size") == H * W * 2 * 8  # H·W·P/2 complex64
    assert get("convs5")(frame_height=16, frame_width=16, d_state=256).state_size() == 16 * 16 * 128 * 8
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), harness.random_input(rng, 1, 3, D))
    assert m.bind(shapes).width() == D  # from D's shape (U,) and the frame


def test_bad_inputs(rng):
    m = _make()
    x = harness.random_input(rng, 1, 3, D)
    with pytest.raises(ValueError, match=r"expected frames of \(frame_height, frame_width\) = \(3, 2\)"):
        m.apply({}, x.reshape(1, 3, W, H, U))  # refused before any parameter is read
    with pytest.raises(ValueError, match="not a multiple of frame_height"):
        m.init(jax.random.PRNGKey(0), harness.random_input(rng, 1, 3, 13))


@pytest.mark.parametrize("kw, match", [
    (dict(frame_height=0), r"^convs5\.frame_height=0 must be an int >= 1"),
    (dict(d_state=6, blocks=2), r"^convs5\.blocks=2 must divide d_state=6 into blocks of even size"),
    (dict(d_state=5), r"^convs5\.d_state=5 must be even"),
    (dict(b_kernel_size=2), r"^convs5\.b_kernel_size=2 must be odd"),
    (dict(c_kernel_size=0), r"^convs5\.c_kernel_size=0 must be an int >= 1"),
    (dict(dt_min=0.5, dt_max=0.1), r"^convs5\.dt_min=0.5 must be <= convs5\.dt_max=0.1"),
    (dict(d_model=13), r"^convs5\.d_model=13 must be a multiple of frame_height·frame_width=6"),
    (dict(impl="fast"), r"^convs5\.impl='fast' is not an implementation of linear_scan"),
])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        _make(**kw)


class _DenseConvS5(ConvS5):
    """ConvS5 through its materialised (l × l) mixing matrix: quadratic memory, for the check's failure."""

    def __call__(self, x, **kwargs):
        return self.apply_mixing_matrix(x, self.mixing_matrix(x))


def test_memory_grows_linearly(rng):
    small = dict(frame_height=2, frame_width=2, d_state=4)
    ratio = harness.check_memory_growth(get("convs5")(**small), rng, length=128, exponent=1.0)
    print(f"convs5: temp memory x{ratio:.2f} from L = 128 to 512")
    assert ratio > 1.5, ratio  # it does grow: the scan's states are per position
    # The check can fail: the same layer through its dense matrix grows quadratically.
    with pytest.raises(AssertionError, match="temp memory grew") as failed:
        harness.check_memory_growth(_DenseConvS5(**small), rng, length=128, exponent=1.0, grad=False)
    print(f"convs5 dense matrix path: {failed.value}")


def test_bfloat16_length_one(rng):
    """One frame in bfloat16: finite and within bf16 rounding of the float64 reference (longer: the slow tests)."""
    length = 1
    m = harness.Jitted(_make())
    x, v = _setup(rng, m, 2, length)
    y = harness.Jitted(_make(dtype=jnp.bfloat16)).apply(v, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y, np.float32)).all()
    assert rel_err(y.astype(jnp.float32), _ref(v, x)) < 3e-2


@pytest.mark.slow
@pytest.mark.parametrize("length", [13, 4096, 4099])
def test_bfloat16_long(rng, length):
    """13 and 4,099 (primes) and 4,096 frames in bfloat16: finite outputs and gradients, close to float32."""
    m16 = _make(frame_height=4, frame_width=4, dtype=jnp.bfloat16, dt_min=0.001, dt_max=0.1)
    m32 = _make(frame_height=4, frame_width=4, dt_min=0.001, dt_max=0.1)
    x = harness.random_input(rng, 1, length, 4 * 4 * U)
    v = harness.jit_init(m32, x[:, :4])
    y16 = jax.jit(m16.apply)(v, x.astype(jnp.bfloat16))
    g = jax.jit(jax.grad(lambda x: jnp.sum(m16.apply(v, x).astype(jnp.float32) ** 2)))(x.astype(jnp.bfloat16))
    assert np.isfinite(np.asarray(y16, np.float32)).all() and np.isfinite(np.asarray(g, np.float32)).all()
    err = rel_err(y16.astype(jnp.float32), jax.jit(m32.apply)(v, x))
    print(f"convs5 bf16 vs f32 at L = {length}: relative error {err:.2e}")
    assert err < 3e-2
