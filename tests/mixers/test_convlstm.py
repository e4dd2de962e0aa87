"""ConvLSTM mixer: float64 loop reference (outputs, gradients), step = parallel, resets, init, errors.

The contract (step, causality, segments, bfloat16, ...) is checked in
``test_contract.py`` and the per-row reset in ``test_reset.py``; here Shi et
al.'s eq. 3 (``ref_convlstm.py``, its own convolution loop, one gate at a
time) on a non-square frame, so a transposed axis, a swapped gate or a
peephole on the wrong cell shows.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_convlstm import convlstm_reference
from tests.mixers.ref_lru_s5 import params_of
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL
H, W, U = 3, 2, 2  # a non-square frame: a transposed axis would show
D = H * W * U
LENGTH = 6
# Parameters moved well off their init (peepholes start at zero, biases at 0/1), so every term shows.
SCALE = 0.5


def _make(**kw):
    return get("convlstm")(**{"frame_height": H, "frame_width": W, **kw})


def _setup(rng, m, batch=2, length=LENGTH):
    x = harness.random_input(rng, batch, length, D)
    return x, harness.perturb(harness.jit_init(getattr(m, "module", m), x), rng, SCALE)


def _ref(v, x, seg=None, xp=np, **kw):
    return convlstm_reference(params_of(v) if xp is np else v, np.asarray(x, np.float64) if xp is np else x,
                              H, W, seg, xp=xp, **kw)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_matches_reference_float32(rng, kernel_size):
    m = harness.Jitted(_make(kernel_size=kernel_size))
    x, v = _setup(rng, m)
    seg = harness.segments(rng, 2, LENGTH, p=0.3)
    seg[0] = [0, 0, 0, 1, 1, 2]  # restarts in row 0 for sure
    y_ref = _ref(v, x, seg)
    assert_rel_close(m.apply(v, x, segment_ids=jnp.asarray(seg)), y_ref, RTOL, f"convlstm f32 k={kernel_size}")
    # The peepholes and the resets matter at these parameters (the checks above could not pass without them).
    assert rel_err(_ref(v, x, seg, peephole=False), y_ref) > 0.02
    assert rel_err(_ref(v, x)[0, 3:], y_ref[0, 3:]) > 0.02
    # The frames as (b, l, H, W, U): the output keeps that shape.
    y5 = m.apply(v, x.reshape(2, LENGTH, H, W, U), segment_ids=jnp.asarray(seg))
    assert y5.shape == (2, LENGTH, H, W, U)
    assert_rel_close(y5.reshape(2, LENGTH, D), y_ref, RTOL, "convlstm f32, 5-D input")


def test_without_peephole_matches_reference(rng):
    m = harness.Jitted(_make(peephole=False))
    x, v = _setup(rng, m)
    assert "peephole" not in v["params"]
    assert_rel_close(m.apply(v, x), _ref(v, x, peephole=False), RTOL, "convlstm f32, no peephole")


def test_float64_exact(rng):
    x = rng.standard_normal((2, LENGTH, D))
    seg = harness.segments(rng, 2, LENGTH, p=0.3)
    with jax.enable_x64(True):
        m = _make(dtype=jnp.float64)
        v = harness.perturb(harness.jit_init(m, jnp.asarray(x)), rng, SCALE)
        y = harness.Jitted(m).apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
    assert_rel_close(y, _ref(v, x, seg), RTOL_F64, "convlstm f64 scan")


def test_gradients(rng):
    """The float32 gradient against central differences of the float64 NumPy reference, per parameter and dx.

    Directional derivatives along random directions (two per array): a wrong
    entry of a gradient shows in a random direction. Differences of the NumPy
    loop, not autodiff of it: compiling the unrolled loop takes a minute.
    """
    length = 4
    x = rng.standard_normal((2, length, D))
    w = rng.standard_normal((2, length, D))
    seg = np.array([[0, 0, 1, 1], [0, 0, 0, 0]])  # a restart in row 0: the gradient must stop there too

    m = _make()
    v = nn.meta.unbox(harness.perturb(harness.jit_init(m, jnp.float32(x)), rng, SCALE))

    def loss(p, x):
        return jnp.sum(m.apply({"params": p}, x, segment_ids=jnp.asarray(seg)) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], jnp.float32(x))
    grads = {**{k: np.asarray(g, np.float64) for k, g in g_p.items()}, "x": np.asarray(g_x, np.float64)}
    assert set(grads) == {"input_kernel", "recurrent_kernel", "bias", "peephole", "x"}
    p64 = params_of(v)

    def ref_loss(p, x):
        return float(np.sum(convlstm_reference(p, x, H, W, seg) * w))

    eps = 1e-5
    for name, g in grads.items():
        for _ in range(2):
            delta = rng.standard_normal(g.shape)
            plus, minus = dict(p64), dict(p64)
            xp_, xm_ = x, x
            if name == "x":
                xp_, xm_ = x + eps * delta, x - eps * delta
            else:
                plus[name], minus[name] = p64[name] + eps * delta, p64[name] - eps * delta
            fd = (ref_loss(plus, xp_) - ref_loss(minus, xm_)) / (2 * eps)
            ad = float(np.sum(g * delta))
            assert abs(ad - fd) <= RTOL_GRAD * (abs(fd) + np.linalg.norm(g) * np.linalg.norm(delta) * 1e-2), \
                f"d{name}: autodiff {ad:.6g} vs central difference {fd:.6g}"


def test_step_frames_and_reset(rng):
    """4-D frame steps with ``reset`` equal the parallel form with a segment starting there."""
    m = harness.Jitted(_make())
    x, v = _setup(rng, m, 2, 7)
    seg = np.zeros((2, 7), np.int32)
    seg[0, 3:] = 1  # row 0 restarts at t = 3, row 1 never
    y = m.apply(v, x, segment_ids=jnp.asarray(seg))
    cache = m.apply(v, 2, method="init_cache")
    assert set(cache) == {"h", "c"} and cache["c"].shape == (2, H, W, U) and cache["c"].dtype == jnp.float32
    frames = x.reshape(2, 7, H, W, U)
    ys = []
    for t in range(7):
        y_t, cache = m.apply(v, frames[:, t], cache, jnp.asarray([t == 3, False]), method="step")
        assert y_t.shape == (2, H, W, U)
        ys.append(y_t.reshape(2, D))
    assert_rel_close(jnp.stack(ys, 1), y, RTOL, "step with reset vs segments")
    assert_rel_close(y, _ref(v, x, seg), RTOL, "parallel with segments vs reference")
    # The whole state is (H, C): 2 · H·W·U float32 per sequence.
    assert m.apply(v, method="state_size") == 2 * H * W * U * 4


def test_init(rng):
    u, k = 16, 3
    m = get("convlstm")(frame_height=2, frame_width=4, kernel_size=k)
    p = params_of(harness.jit_init(m, harness.random_input(rng, 1, 3, 8 * u)))
    assert p["input_kernel"].shape == p["recurrent_kernel"].shape == (k, k, u, 4 * u)
    assert p["bias"].shape == (4, u) and p["peephole"].shape == (3, 2, 4, u)
    # Forget gate (the second, order i, f, c, o) +1, the others 0; peepholes start at zero.
    np.testing.assert_array_equal(p["bias"], np.stack([np.zeros(u), np.ones(u), np.zeros(u), np.zeros(u)]))
    np.testing.assert_array_equal(p["peephole"], 0.0)
    # LeCun normal over the fan-in k²·U.
    for name in ("input_kernel", "recurrent_kernel"):
        assert abs(p[name].std() * np.sqrt(k * k * u) - 1) < 0.15, name


def test_errors(rng):
    with pytest.raises(ConfigError, match=r"^convlstm\.kernel_size=4 must be odd"):
        _make(kernel_size=4)
    with pytest.raises(ConfigError, match=r"^convlstm\.kernel_size=0 must be an int >= 1"):
        _make(kernel_size=0)
    with pytest.raises(ConfigError, match=r"^convlstm\.peephole='yes' must be a bool"):
        _make(peephole="yes")
    with pytest.raises(ConfigError, match=r"^convlstm\.frame_width=0 must be an int >= 1"):
        _make(frame_width=0)
    with pytest.raises(ConfigError, match=r"^convlstm\.d_model=10 must be a multiple of frame_height·frame_width=6"):
        _make(d_model=10)
    with pytest.raises(ConfigError, match=r"^convlstm\.impl='xla'"):
        _make(impl="xla")
    for make in (lambda: _make(kernel_size=2), lambda: _make(peephole=1)):
        with pytest.raises(ConfigError) as e:
            make()
        assert "\n" not in str(e.value)
    m = _make()
    with pytest.raises(ValueError, match="width 10 is not a multiple of frame_height·frame_width=3·2"):
        harness.jit_init(m, harness.random_input(rng, 1, 2, 10))
    _, v = _setup(rng, m, 1, 2)
    with pytest.raises(ValueError, match=r"expected frames of \(frame_height, frame_width\) = \(3, 2\)"):
        m.apply(v, jnp.zeros((1, 2, 2, 3, U)))
