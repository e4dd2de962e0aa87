"""PoNet (``ponet``) against the float64 reference of the paper's equations; init, errors, lengths, memory.

The contract (segments, bfloat16, no retrace, no mixing matrix, ...) is
checked for every mixer in ``test_contract.py``; here: outputs and gradients
against ``ref_pooling`` (sequence by sequence, window by window, no segment
ops), each pooling's reach, the lengths the fast path must handle and its
memory growth (the paper: O(L)).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.mixers.pooling import local_max
from tests.mixers import harness
from tests.mixers.ref_pooling import params_of, reference
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL
WIDTH = 16


def _module(**kw):
    kw.setdefault("num_heads", 2)
    kw.setdefault("segment_length", 4)  # several SMP segments at the test lengths
    kw.setdefault("local_window", 3)
    return get("ponet")(**kw)


def _reference(m, p, x, seg=None, xp=np):
    return reference(p, x, num_heads=m.num_heads, segment_length=m.segment_length, local_window=m.local_window,
                     share_kv=m.share_kv, segment_ids=seg, xp=xp)


def _setup(m, rng, batch, length):
    x = harness.random_input(rng, batch, length, WIDTH)
    return x, harness.perturb(harness.jit_init(m, x), rng, scale=0.5)  # biases well off zero


@pytest.mark.parametrize("length", [1, 37, 257])
@pytest.mark.parametrize("share_kv", [False, True])
def test_matches_reference_float32(rng, length, share_kv):
    m = _module(share_kv=share_kv, local_window=5 if share_kv else 3)
    x, v = _setup(m, rng, 2, length)
    p, x64 = params_of(v), np.asarray(x, np.float64)
    J = harness.Jitted(m)
    y_ref = _reference(m, p, x64)
    assert_rel_close(J.apply(v, x), y_ref, RTOL, f"L={length}")
    seg = harness.segments(rng, 2, length)
    y_seg = _reference(m, p, x64, seg)
    assert_rel_close(J.apply(v, x, segment_ids=jnp.asarray(seg)), y_seg, RTOL, f"L={length} segments")
    if length > 8:
        assert rel_err(y_seg, y_ref) > 1e-3  # the segments change the answer


def test_float64_exact(rng):
    x = rng.standard_normal((2, 13, WIDTH))
    seg = harness.segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = _module(dtype=jnp.float64, segment_length=3)
        v = harness.perturb(harness.jit_init(m, jnp.asarray(x)), rng, scale=0.5)
        p = params_of(v)
        J = harness.Jitted(m)
        for s in (None, seg):
            y = J.apply(v, jnp.asarray(x), segment_ids=None if s is None else jnp.asarray(s))
            assert y.dtype == jnp.float64
            assert_rel_close(y, _reference(m, p, x, s), RTOL_F64, f"f64 (segments: {s is not None})")


def _check_gradients(rng, batch, length, seg, **kw):
    x = rng.standard_normal((batch, length, WIDTH))
    w = rng.standard_normal((batch, length, WIDTH))
    m = _module(**kw)
    v = nn.meta.unbox(harness.perturb(harness.jit_init(m, jnp.float32(x)), rng, scale=0.5))
    ids = None if seg is None else jnp.asarray(seg)

    def loss(params, x):
        return jnp.sum(m.apply({"params": params}, x, segment_ids=ids) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], jnp.float32(x))
    with jax.enable_x64(True):

        def ref_loss(p, x):
            return jnp.sum(_reference(m, p, x, seg, xp=jnp) * w)

        p64 = params_of(v, xp=jnp)
        r_p, r_x = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(p64, jnp.asarray(x))
        assert_rel_close(g_x, r_x, RTOL_GRAD, f"d/dx (segments: {seg is not None})")
        flat = params_of({"params": g_p})
        assert set(flat) == set(p64)
        for key in p64:
            assert_rel_close(flat[key], r_p[key], RTOL_GRAD, f"d/d{key} (segments: {seg is not None})")


def test_gradients(rng):
    # Max-pooling routes each gradient to the argmax, the softmax through g' (and g: the mean query).
    _check_gradients(rng, 1, 11, None, segment_length=3)


def test_gradients_segments_shared_kv(rng):
    _check_gradients(rng, 2, 9, np.array([[0, 0, 1, 1, 1, 1, 1, 2, 2], [3, 3, 3, 3, 3, 3, 0, 0, 0]]),
                     share_kv=True, segment_length=2)


def test_each_pooling_reaches_what_the_paper_says(rng):
    """GA sees the whole sequence; SMP exactly its segment; LMP exactly its window (through l alone)."""
    m = _module(segment_length=4, local_window=3)
    x, v = _setup(m, rng, 1, 16)
    p = params_of(v)
    d = WIDTH

    def zero_but(keep):  # keep only some branches' projections (q/k/v/o for GA, s for SMP, l for LMP)
        kern, bias = np.array(p["in_proj/kernel"]), np.array(p["in_proj/bias"])
        for i in set(range(6)) - set(keep):
            kern[:, i * d:(i + 1) * d] = 0
            bias[i * d:(i + 1) * d] = 0
        return {"params": {**v["params"], "in_proj": {"kernel": jnp.float32(kern), "bias": jnp.float32(bias)}}}

    J = harness.Jitted(m)

    def moved(variables, t):  # which outputs move when x_t changes
        x2 = np.array(x)
        x2[0, t] += 3.0 * rng.standard_normal(d)
        diff = np.abs(np.asarray(J.apply(variables, jnp.asarray(x2)) - J.apply(variables, x)))[0].max(axis=-1)
        return set(np.flatnonzero(diff > 1e-6).tolist())

    assert moved(zero_but([0, 1, 2, 3]), 13) == set(range(16))  # GA: everyone
    smp = zero_but([3, 4])  # o and s: SMP alone (g' = 0)
    assert moved(smp, 5) == {4, 5, 6, 7}  # its segment 4..7 (its own o included)
    assert moved(zero_but([5]), 9) == {8, 9, 10}  # LMP: the window of 3


def test_local_max_stops_at_segment_borders():
    x = jnp.asarray(np.arange(8, dtype=np.float32)[None, :, None])
    runs = jnp.asarray([[0, 0, 0, 1, 1, 2, 2, 2]])
    np.testing.assert_array_equal(np.asarray(local_max(x, runs, 3))[0, :, 0], [1, 2, 2, 4, 4, 6, 7, 7])
    np.testing.assert_array_equal(np.asarray(local_max(-x, runs, 5))[0, :, 0], [0, 0, 0, -3, -3, -5, -5, -5])


def test_init():
    m = _module(num_heads=4)
    v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32)))
    p = params_of(v)
    assert p["in_proj/kernel"].shape == (32, 6 * 32) and p["out_proj/kernel"].shape == (32, 32)
    np.testing.assert_array_equal(p["in_proj/bias"], np.zeros(6 * 32))
    p = params_of(_module(share_kv=True).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32))))
    assert p["in_proj/kernel"].shape == (32, 5 * 32)


@pytest.mark.parametrize("field, value", [("num_heads", 0), ("num_heads", 3), ("segment_length", 0),
                                          ("local_window", 4), ("local_window", 0), ("share_kv", 1)])
def test_config_errors(field, value):
    with pytest.raises(ConfigError, match=rf"^ponet\.{field}={value!r}"):
        _module(d_model=WIDTH, **{field: value})


def test_bfloat16_short_and_prime_lengths_finite(rng):
    m = _module(dtype=jnp.bfloat16)
    x, v = _setup(m, rng, 1, 2)
    run = jax.jit(m.apply)
    for length in (1, 97):
        y = run(v, harness.random_input(rng, 1, length, WIDTH).astype(jnp.bfloat16))
        assert y.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y, np.float32)).all(), length


@pytest.mark.slow
def test_bfloat16_4096_finite(rng):
    m = _module(dtype=jnp.bfloat16, segment_length=32)
    x, v = _setup(m, rng, 1, 4)
    x = harness.random_input(rng, 1, 4096, WIDTH).astype(jnp.bfloat16)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(m.apply(v, x).astype(jnp.float32) ** 2)))
    y, g = jax.jit(m.apply)(v, x), grad(x)
    assert np.isfinite(np.asarray(y, np.float32)).all() and np.isfinite(np.asarray(g, np.float32)).all()


def test_memory_growth(rng):
    # The paper: O(L) time and memory (forward and backward).
    ratio = harness.check_memory_growth(_module(segment_length=32), rng, length=128, exponent=1.0)
    print(f"ponet: temp memory x{ratio:.2f} from L to 4L")
