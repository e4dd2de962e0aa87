"""Aaren (Feng et al. 2024): the prefix scan against a float64 loop of softmax over each prefix.

The contract (step, causality, segments, mixing matrix vs fast path,
bfloat16, state_size vs cache bytes, no retrace, default construction) is
checked for every mixer in ``test_contract.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.aaren as aaren_module
from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.ops import online_softmax as osm
from tests.mixers import harness
from tests.mixers.harness import Jitted
from tests.mixers.ref_attention_mixers import (
    aaren_matrix, aaren_reference, assert_gradients_match, params_of, random_variables)
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close

RTOL = RTOL_SCAN  # a scan: 1e-4


def _segments(rng, batch, length):
    return np.cumsum(rng.random((batch, length)) < 0.2, axis=1) % 2


def _setup(rng, batch=2, length=13, width=16, **kw):
    m = Jitted(get("aaren")(**kw))
    x = harness.random_input(rng, batch, length, width)
    return m, x, random_variables(m.module, x, rng)


def _ref(m, v, x, seg=None, xp=np, p=None):
    p = params_of(v, xp) if p is None else p
    return aaren_reference(p, x, num_heads=m.num_heads, head_dim=m.head_dim, segment_ids=seg, xp=xp)


def test_default_parameters_and_init(rng):
    m = Jitted(get("aaren")())
    x = harness.random_input(rng, 2, 13, 16)
    v = harness.init(m, x)
    y = m.apply(v, x)
    p = params_of(v)
    assert set(p) == {"query", "k_proj", "v_proj", "out_proj"} and p["query"].shape == (4, 4)
    assert_rel_close(y, _ref(m, v, np.asarray(x, np.float64)), RTOL, "default aaren")
    # Learned queries start N(0, 1) (documented), distinct per head.
    wide = get("aaren")(num_heads=4)
    q = params_of(harness.init(Jitted(wide), harness.random_input(rng, 1, 2, 256)))["query"]
    assert q.shape == (4, 64) and abs(q.std() - 1) < 0.15 and abs(q.mean()) < 0.15


@pytest.mark.parametrize("length", [1, 7, 37])
def test_matches_reference_float32(rng, length):
    m, x, v = _setup(rng, 2, length, 16, num_heads=2)
    x64 = np.asarray(x, np.float64)
    assert_rel_close(m.apply(v, x), _ref(m, v, x64), RTOL, f"aaren l={length}")
    seg = _segments(rng, 2, length)
    assert_rel_close(m.apply(v, x, segment_ids=jnp.asarray(seg)), _ref(m, v, x64, seg), RTOL, "segments")


def test_large_scores_are_stable(rng):
    # Scores of hundreds: a naive exp would overflow; the (m, l, acc) state must not.
    m, x, v = _setup(rng, 1, 29, 16)
    v["params"]["query"] = v["params"]["query"] * 200.0
    y = m.apply(v, x)
    assert np.isfinite(np.asarray(y)).all()
    assert_rel_close(y, _ref(m, v, np.asarray(x, np.float64)), RTOL, "large scores")


def test_float64_exact(rng):
    x = rng.standard_normal((2, 13, 16))
    seg = _segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = Jitted(get("aaren")(num_heads=2, dtype=jnp.float64))
        v = random_variables(m.module, jnp.asarray(x), rng)
        y = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        M = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        y_m = m.apply(v, jnp.asarray(x), M, method="apply_mixing_matrix")
        cache = m.apply(v, 2, method="init_cache")
        ys = []
        for t in range(13):
            y_t, cache = m.apply(v, jnp.asarray(x[:, t]), cache, method="step")
            ys.append(y_t)
    assert y.dtype == jnp.float64 and cache["acc"].dtype == jnp.float64
    assert_rel_close(y, _ref(m, v, x, seg), RTOL_F64, "f64 scan")
    assert_rel_close(y_m, _ref(m, v, x, seg), RTOL_F64, "f64 matrix")
    assert_rel_close(jnp.stack(ys, 1), _ref(m, v, x), RTOL_F64, "f64 step")


def test_gradients(rng):
    m, x, v = _setup(rng, 1, 9, 16, num_heads=2)
    seg = np.array([[0] * 4 + [1] * 5])
    assert_gradients_match(m.module, v, np.asarray(x), seg, lambda p, xx: _ref(m, None, xx, seg, xp=jnp, p=p),
                           RTOL_GRAD)


def test_matrix_is_the_closed_form(rng):
    """The matrix read off the scan equals the prefix-softmax weights of the learned queries, with segments."""
    m, x, v = _setup(rng, num_heads=2)
    seg = _segments(rng, 2, 13)
    M = np.asarray(m.apply(v, x, segment_ids=jnp.asarray(seg), method="mixing_matrix"))
    assert M.shape == (2, 2, 13, 13)
    want = aaren_matrix(params_of(v), np.asarray(x, np.float64), num_heads=2, segment_ids=seg)
    assert_rel_close(M, want, RTOL, "aaren matrix vs closed form")
    # Prefix softmax: within a segment, a column's weight only shrinks as the prefix grows.
    M = np.asarray(m.apply(v, x, method="mixing_matrix"))
    lower = np.tril(np.ones((13, 13), bool))
    diffs = M[..., 1:, :] - M[..., :-1, :]
    assert (diffs[..., lower[1:] & lower[:-1]] <= 1e-7).all()


def test_segmented_merge_is_associative(rng):
    def element(flag):
        shape = (3, 2)
        s = jnp.asarray(rng.standard_normal(shape + (4,)) * 3)
        vals = jnp.asarray(rng.standard_normal(shape + (4, 5)))
        return jnp.asarray(np.broadcast_to(flag, shape)), osm.from_scores(s, vals)

    for flags in [(0, 0, 0), (0, 1, 0), (1, 0, 1), (0, 0, 1)]:
        a, b, c = (element(f) for f in flags)
        left = aaren_module.segmented_merge(aaren_module.segmented_merge(a, b), c)
        right = aaren_module.segmented_merge(a, aaren_module.segmented_merge(b, c))
        assert bool(jnp.all(left[0] == right[0]))
        assert_rel_close(osm.finalize(left[1]), osm.finalize(right[1]), 1e-6, f"flags {flags}")
    # A flag on the later element discards everything before it.
    a, c = element(0), element(1)
    np.testing.assert_array_equal(aaren_module.segmented_merge(a, c)[1].acc, c[1].acc)


def test_uses_the_shared_merge(rng, monkeypatch):
    calls = []
    merge = osm.merge

    def counting(a, b):
        calls.append(1)
        return merge(a, b)

    monkeypatch.setattr(osm, "merge", counting)
    m, x, v = _setup(rng, 1, 5, 16)
    # Traced, not run: the count is of merges in the program (jit keeps the test cheap).
    jax.jit(m.module.apply)(v, x)
    scan_calls = len(calls)
    cache = m.module.apply(v, 1, method="init_cache")
    jax.jit(lambda v, x, c: m.module.apply(v, x, c, method="step"))(v, x[:, 0], cache)
    assert scan_calls > 0 and len(calls) == scan_calls + 1


def test_bfloat16_state(rng):
    _, x, v = _setup(rng)
    m16 = Jitted(get("aaren")(dtype=jnp.bfloat16))
    cache = m16.apply(v, 2, method="init_cache")
    y_t, cache = m16.apply(v, x[:, 0].astype(jnp.bfloat16), cache, method="step")
    assert y_t.dtype == jnp.bfloat16 and cache["m"].dtype == jnp.float32  # the softmax state stays float32


def test_state_size():
    m = get("aaren")(d_model=16, num_heads=2)  # dh = 8: (m, l, acc) = 2 + 8 floats per head
    assert m.apply({}, 10, method="state_size") == m.apply({}, 10**6, method="state_size") == 2 * 10 * 4


def test_errors(rng):
    with pytest.raises(ConfigError, match=r"^aaren\.num_heads=3 must divide d_model=16"):
        get("aaren")(d_model=16, num_heads=3)
    with pytest.raises(ConfigError, match=r"^aaren\.num_heads=3 must divide d_model=16"):
        get("aaren")(num_heads=3).init(jax.random.PRNGKey(0), harness.random_input(rng, 1, 4, 16))
    with pytest.raises(ConfigError, match=r"^aaren\.impl='reference': aaren calls no op with implementations; allowed: auto"):
        get("aaren")(impl="reference")
    m, x, v = _setup(rng, 1, 4, 16)
    with pytest.raises(ValueError, match="cache"):
        m.apply(v, x[:, 0], {"m": x}, method="step")
    with pytest.raises(ValueError, match="segment_ids"):
        m.apply(v, x, segment_ids=jnp.zeros((1, 3), jnp.int32))
