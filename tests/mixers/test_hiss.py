"""HiSS mixer: float64 chunk-by-chunk reference and closed-form matrix, gradients, step, memory.

The contract (step vs parallel, causality, segments, matrix path, bfloat16,
...) is checked for every mixer in ``test_contract.py``; here the outputs are
compared with :mod:`tests.mixers.ref_hiss`, written from the paper.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.ref_hiss import hiss_matrix, hiss_reference, params_of
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close

RTOL = harness.RTOL  # 2e-4, float32 mixers
K = 3  # chunk size of the tests: 13 and 16 are not multiples of it


def _hiss(**kw):
    # Larger steps than the default [0.001, 0.1] so that both levels' kernels
    # matter next to the D u skip.
    kw = {"chunk_size": K, "low": 4, "high": 6, "dt_min": 0.05, "dt_max": 0.5, **kw}
    return get("hiss")(**kw)


def _segments(rng, batch, length):
    return harness.segments(rng, batch, length, p=0.2)


def _setup(rng, length, readout, batch=2, **kw):
    m = _hiss(readout=readout, **kw)
    x = harness.random_input(rng, batch, length, 16)
    return m, x, harness.perturb(harness.jit_init(m, x), rng)


@pytest.mark.parametrize("readout, length", [("upsample", 1), ("upsample", 13), ("chunk", 13)])
def test_matches_reference(rng, readout, length):
    m, x, v = _setup(rng, length, readout)
    J, p = harness.Jitted(m), params_of(v)
    for seg in (None, _segments(rng, 2, length)):
        y = J.apply(v, x, segment_ids=None if seg is None else jnp.asarray(seg))
        ref = hiss_reference(p, np.asarray(x, np.float64), seg, K, readout)
        assert_rel_close(y, ref, RTOL, f"hiss {readout} L={length} segments={seg is not None}")


@pytest.mark.parametrize("readout", ["upsample", "chunk"])
def test_mixing_matrix_is_the_closed_form(rng, readout):
    # Both high-level paths; with segments the closed form holds inside each one, zeros across.
    m, x, v = _setup(rng, 13, readout)
    for seg in (None, _segments(rng, 2, 13)):
        M = harness.Jitted(m).apply(v, x, segment_ids=None if seg is None else jnp.asarray(seg),
                                    method="mixing_matrix")
        assert M.shape == (2, 16, 13, 13) and not jnp.iscomplexobj(M)
        assert_rel_close(M, hiss_matrix(params_of(v), 2, 13, seg, K, readout), RTOL,
                         f"hiss {readout} matrix, segments={seg is not None}")


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size", [1, 16])  # every position its own chunk; one chunk longer than the row
@pytest.mark.parametrize("readout", ["upsample", "chunk"])
def test_extreme_chunk_sizes_match_reference(rng, chunk_size, readout):
    m, x, v = _setup(rng, 13, readout, chunk_size=chunk_size)
    for seg in (None, _segments(rng, 2, 13)):
        y = harness.Jitted(m).apply(v, x, segment_ids=None if seg is None else jnp.asarray(seg))
        ref = hiss_reference(params_of(v), np.asarray(x, np.float64), seg, chunk_size, readout)
        assert_rel_close(y, ref, RTOL, f"hiss k={chunk_size} {readout} segments={seg is not None}")


def _grads(m, params, x, w, seg):
    def loss(p, x):
        return jnp.sum(m.apply({"params": p}, x, segment_ids=seg) * w)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


@pytest.mark.parametrize("readout, segmented", [
    ("upsample", False), ("upsample", True),  # the chunk-rate high level and the input-rate one
    pytest.param("chunk", False, marks=pytest.mark.slow), pytest.param("chunk", True, marks=pytest.mark.slow)])
def test_gradients_and_float64_outputs(rng, readout, segmented):
    x = rng.standard_normal((1, 8, 16))
    w = rng.standard_normal((1, 8, 16))
    seg = np.asarray([[0] * 5 + [1] * 3]) if segmented else None
    m32 = _hiss(readout=readout)
    v = nn.meta.unbox(harness.perturb(harness.init(m32, jnp.float32(x)), rng))
    g32 = _grads(m32, v["params"], jnp.float32(x), jnp.float32(w), seg)
    with jax.enable_x64(True):
        p64 = jax.tree.map(jnp.asarray, params_of(v))

        def ref_loss(p, x):
            return jnp.sum(hiss_reference(p, x, seg, K, readout, xp=jnp) * w)

        g_ref = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(p64, jnp.asarray(x))
        m64 = _hiss(readout=readout, dtype=jnp.float64)
        g64 = _grads(m64, p64, jnp.asarray(x), jnp.asarray(w), seg)
        y64 = jax.jit(lambda p, x: m64.apply({"params": p}, x, segment_ids=seg))(p64, jnp.asarray(x))
    assert_rel_close(y64, hiss_reference(params_of(v), x, seg, K, readout), RTOL_F64, "f64 outputs")
    for (path, ref), got64, got32 in zip(jax.tree_util.tree_flatten_with_path(g_ref[0])[0],
                                         jax.tree.leaves(g64[0]), jax.tree.leaves(g32[0])):
        name = jax.tree_util.keystr(path)
        assert_rel_close(got64, ref, RTOL_F64, f"f64 d{name}")
        assert_rel_close(got32, ref, RTOL_GRAD, f"f32 d{name}")
    assert_rel_close(g64[1], g_ref[1], RTOL_F64, "f64 dx")
    assert_rel_close(g32[1], g_ref[1], RTOL_GRAD, "f32 dx")


@pytest.mark.parametrize("readout", ["upsample", "chunk"])
def test_step_rollout_with_resets_matches_segments(rng, readout):
    # Crosses chunk boundaries, a segment start at 7 (not a chunk boundary: 7 = 2k + 1)
    # restarts both levels through reset=, and the row ends inside a chunk.
    m, x, v = _setup(rng, 14, readout)
    seg = np.asarray([[0] * 7 + [1] * 7, [0] * 14])
    J = harness.Jitted(m)
    y = J.apply(v, x, segment_ids=jnp.asarray(seg))
    cache = m.apply(v, 2, method="init_cache")
    ys = []
    for t in range(14):
        reset = jnp.asarray([t == 7, False])
        y_t, cache = J.apply(v, x[:, t], cache, reset, method="step")
        ys.append(y_t)
    assert_rel_close(jnp.stack(ys, axis=1), y, RTOL, f"hiss {readout} step vs parallel")
    assert np.asarray(cache["pos"]).tolist() == [7 % K, 14 % K]


def test_state_size():
    m = get("hiss")(d_model=64)
    # d · (low + high)/2 complex64 modes + the int32 position in the chunk.
    assert m.state_size() == 64 * (32 + 32) // 2 * 8 + 4 == 16388
    assert get("hiss")(d_model=8, low=4, high=6).state_size(10_000) == 8 * 5 * 8 + 4


def test_memory_grows_linearly(rng):
    ratio = harness.check_memory_growth(_hiss(chunk_size=8), rng, length=128, exponent=1.0)
    assert ratio > 1.5  # it does grow: the scans' states are per position


@pytest.mark.parametrize("field, value", [("chunk_size", 0), ("low", 3), ("high", 0), ("readout", "mean"),
                                          ("dt_min", 0.0), ("impl", "fft")])
def test_bad_fields(field, value):
    with pytest.raises(ConfigError, match=rf"^hiss\.{field}={value!r}"):
        get("hiss")(**{field: value})


def test_dt_order_is_checked():
    with pytest.raises(ConfigError, match=r"^hiss\.dt_min=0\.5 must be <= hiss\.dt_max=0\.1"):
        get("hiss")(dt_min=0.5, dt_max=0.1)


@pytest.mark.slow
def test_long_bfloat16_is_finite(rng):
    m = get("hiss")(dtype=jnp.bfloat16)
    x = harness.random_input(rng, 1, 4096, 16)
    v = harness.jit_init(m, x)
    y = jax.jit(m.apply)(v, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and bool(jnp.isfinite(y.astype(jnp.float32)).all())
    y32 = jax.jit(get("hiss")().apply)(v, x)
    assert float(jnp.linalg.norm(y.astype(jnp.float32) - y32) / jnp.linalg.norm(y32)) < 6e-2
