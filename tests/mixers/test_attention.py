"""mha and sliding_window: float64 loop references, positions (RoPE, ALiBi, learned), GQA, caches."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.attention  # noqa: F401  (registers "mha", "sliding_window")
from seqjax.mixers import get
from seqjax.mixers.positions import alibi_slopes, positions_in_segment, rope
from tests.mixers import harness
from tests.mixers.ref_attention_mixers import Jitted, alibi_slopes_ref, mha_reference, params_of, random_variables
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL  # 2e-4
POSITIONS = ("none", "learned", "rope", "alibi")
NAMES = ("mha", "sliding_window")


def _segments(rng, batch, length):
    # Contiguous runs whose ids repeat non-contiguously (cumsum % 2): 0 0 1 1 0 ...
    return np.cumsum(rng.random((batch, length)) < 0.25, axis=1) % 2


def _make(name, **kw):
    kw.setdefault("max_length", 40)
    if name == "sliding_window":
        kw.setdefault("window", 4)
    return Jitted(get(name)(**kw))


def _init(m, x, rng):
    return random_variables(m.module, x, rng)


def _nbytes(tree):
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def _ref_kw(m):
    return dict(num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim, causal=m.causal,
                positions=m.positions, rope_base=m.rope_base, window=getattr(m, "window", None))


def _setup(rng, name, batch=2, length=13, width=16, **kw):
    m = _make(name, **kw)
    x = harness.random_input(rng, batch, length, width)
    return m, x, _init(m, x, rng)


# --- against the float64 loop reference ---------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_default_construction(rng, name):
    m = Jitted(get(name)())
    x = harness.random_input(rng, 2, 13, 16)
    v = harness.init(m, x)
    y = m.apply(v, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    p = params_of(v)
    assert set(p) == {"q_proj", "k_proj", "v_proj", "out_proj"}
    assert p["q_proj"].shape == p["k_proj"].shape == (16, 16) and p["out_proj"].shape == (16, 16)
    assert m.positions == "rope" and m.causal and m.num_heads == 4
    assert_rel_close(y, mha_reference(p, np.asarray(x, np.float64), **_ref_kw(m)), RTOL, f"default {name}")


@pytest.mark.parametrize("name, positions, causal", [(n, p, True) for n in NAMES for p in POSITIONS]
                         + [("mha", "alibi", False), ("sliding_window", "rope", False), ("mha", "learned", False)])
def test_matches_reference_float32(rng, name, positions, causal):
    m, x, v = _setup(rng, name, positions=positions, causal=causal, num_kv_heads=2)
    p = params_of(v)
    x64 = np.asarray(x, np.float64)
    y_ref = mha_reference(p, x64, **_ref_kw(m))
    assert_rel_close(m.apply(v, x), y_ref, RTOL, f"{name} {positions} causal={causal}")
    seg = _segments(rng, 2, 13)
    y_seg_ref = mha_reference(p, x64, segment_ids=seg, **_ref_kw(m))
    assert_rel_close(m.apply(v, x, segment_ids=jnp.asarray(seg)), y_seg_ref, RTOL, "with segments")
    assert rel_err(y_seg_ref, y_ref) > 1e-3  # the segments change the answer


@pytest.mark.parametrize("impl", ["reference", "blockwise"])
@pytest.mark.parametrize("length", [1, 37])
def test_lengths_and_impls(rng, length, impl):
    m, x, v = _setup(rng, "mha", 1, length, 16, positions="rope", impl=impl, num_kv_heads=1)
    assert_rel_close(m.apply(v, x), mha_reference(params_of(v), np.asarray(x, np.float64), **_ref_kw(m)),
                     RTOL, f"mha l={length} {impl}")


@pytest.mark.parametrize("name, positions", [("mha", "alibi"), ("sliding_window", "rope"), ("mha", "learned")])
def test_float64_exact(rng, name, positions):
    x = rng.standard_normal((2, 13, 16))
    seg = _segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = _make(name, positions=positions, num_kv_heads=2, dtype=jnp.float64)
        v = _init(m, jnp.asarray(x), rng)
        y = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
        M = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        y_m = m.apply(v, jnp.asarray(x), M, segment_ids=jnp.asarray(seg), method="apply_mixing_matrix")
        cache = m.apply(v, 2, method="init_cache")
        ys = []
        for t in range(13):
            y_t, cache = m.apply(v, jnp.asarray(x[:, t]), cache, method="step")
            ys.append(y_t)
    p = params_of(v)
    assert_rel_close(y, mha_reference(p, x, segment_ids=seg, **_ref_kw(m)), RTOL_F64, f"{name} f64")
    assert_rel_close(y_m, mha_reference(p, x, segment_ids=seg, **_ref_kw(m)), RTOL_F64, f"{name} f64 matrix")
    assert_rel_close(jnp.stack(ys, 1), mha_reference(p, x, **_ref_kw(m)), RTOL_F64, f"{name} f64 step")


@pytest.mark.parametrize("name, positions, impl", [
    ("mha", "rope", "blockwise"), ("sliding_window", "alibi", "blockwise"), ("mha", "learned", "reference"),
])
def test_gradients(rng, name, positions, impl):
    x = rng.standard_normal((1, 9, 16))
    w = rng.standard_normal((1, 9, 16))
    seg = np.array([[0] * 4 + [1] * 5])
    m = _make(name, positions=positions, impl=impl, num_kv_heads=2, max_length=12)
    v = _init(m, jnp.float32(x), rng)

    def loss(params, x):
        return jnp.sum(m.apply({"params": params}, x, segment_ids=jnp.asarray(seg)) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], jnp.float32(x))
    with jax.enable_x64(True):
        def ref_loss(p, x):
            return jnp.sum(mha_reference(p, x, segment_ids=seg, xp=jnp, **_ref_kw(m)) * w)

        r_p, r_x = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(params_of(v, xp=jnp), jnp.asarray(x))
    g_p = params_of({"params": g_p})
    assert set(g_p) == set(r_p)
    for k in r_p:
        assert_rel_close(g_p[k], r_p[k], RTOL_GRAD, f"d{k}")
    assert_rel_close(g_x, r_x, RTOL_GRAD, "dx")


# --- the mixer contract ---------------------------------------------------------------


@pytest.mark.parametrize("positions", ("learned", "rope", "alibi"))
@pytest.mark.parametrize("name", NAMES)
def test_step_matches_parallel(rng, name, positions):
    # l = 13 > window = 4: the ring buffer wraps several times.
    m, x, v = _setup(rng, name, positions=positions, num_kv_heads=2, max_length=16)
    harness.check_step_matches_parallel(m, v, x)


@pytest.mark.parametrize("name, positions", [("mha", "learned"), ("sliding_window", "alibi")])
def test_causal_and_segments(rng, name, positions):
    m, x, v = _setup(rng, name, positions=positions)
    harness.check_causal(m, v, x, rng)
    harness.check_segments(m, v, rng)
    # Reused ids (0, 1, 0) are three sequences, not two.
    m, x, v = _setup(rng, name, 1, 12, 16, positions="learned")
    ids = jnp.asarray([[0] * 4 + [1] * 4 + [0] * 4])
    y = m.apply(v, x, segment_ids=ids)
    assert_rel_close(y[:, 8:], m.apply(v, x[:, 8:]), RTOL, "third segment alone")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_mixing_matrix(rng, name, causal):
    m, x, v = _setup(rng, name, positions="alibi", causal=causal, num_kv_heads=2)
    M = np.asarray(harness.check_mixing_matrix(m, v, x, causal=causal))
    assert M.shape == (2, 4, 13, 13)
    np.testing.assert_allclose(M.sum(-1), 1.0, rtol=1e-5)
    dist = np.arange(13)[:, None] - np.arange(13)[None, :]
    if name == "sliding_window":  # banded: |t - s| < window
        band = (np.abs(dist) < 4) & ((dist >= 0) | (not causal))
        assert np.abs(M[..., ~band]).max() == 0.0 and M[..., band].min() > 0.0
    if not causal:
        assert np.triu(M[0, 0], 1).max() > 0.0
    seg = jnp.asarray([[0] * 5 + [1] * 8, [0] * 9 + [3] * 4])
    Ms = m.apply(v, x, segment_ids=seg, method="mixing_matrix")
    assert np.abs(np.asarray(Ms[0, :, 5:, :5])).max() == 0.0 and np.abs(np.asarray(Ms[0, :, :5, 5:])).max() == 0.0
    assert_rel_close(m.apply(v, x, Ms, segment_ids=seg, method="apply_mixing_matrix"),
                     m.apply(v, x, segment_ids=seg), RTOL, "mixing matrix with segments")


# --- positions ------------------------------------------------------------------------


def test_rope_depends_only_on_offset(rng):
    q = jnp.asarray(rng.standard_normal((1, 1, 3, 8)))
    k = jnp.asarray(rng.standard_normal((1, 1, 3, 8)))

    def score(i, j):
        qi = rope(q, jnp.full((1, 1), i), 10000.0)
        kj = rope(k, jnp.full((1, 1), j), 10000.0)
        return np.asarray(jnp.sum(qi * kj, -1))

    for i, j, c in [(5, 2, 7), (0, 9, 31), (12, 12, 100), (3, 40, 1000)]:
        np.testing.assert_allclose(score(i + c, j + c), score(i, j), rtol=2e-4, atol=2e-4)
    # ...but does depend on the offset, and position 0 is the identity (norms kept).
    assert np.abs(score(5, 2) - score(5, 3)).max() > 1e-2
    np.testing.assert_array_equal(np.asarray(rope(q, jnp.zeros((1, 1), jnp.int32))), np.asarray(q))
    r = rope(q, jnp.full((1, 1), 17), 10000.0)
    np.testing.assert_allclose(jnp.linalg.norm(r, axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5)


def test_positions_restart_per_segment():
    ids = jnp.asarray([[3, 3, 3, 1, 1, 3, 3], [0] * 7])
    np.testing.assert_array_equal(positions_in_segment(ids, 2, 7), [[0, 1, 2, 0, 1, 0, 1], list(range(7))])


def test_alibi_slopes():
    # Press et al.: 8 heads -> 1/2, 1/4, ..., 1/256; n a power of two -> 2^(-8i/n).
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-i for i in range(1, 9)], rtol=1e-7)
    for n in (1, 2, 4, 16, 32):
        np.testing.assert_allclose(alibi_slopes(n), [2 ** (-8 * i / n) for i in range(1, n + 1)], rtol=1e-6)
        ratios = alibi_slopes(n)[1:] / alibi_slopes(n)[:-1]
        np.testing.assert_allclose(ratios, alibi_slopes(n)[0], rtol=1e-5)  # start == ratio
    # Not a power of two: slopes of 4 heads, then every other slope of 8 heads.
    np.testing.assert_allclose(alibi_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3], rtol=1e-7)
    for n in (3, 5, 6, 12):
        np.testing.assert_allclose(alibi_slopes(n), alibi_slopes_ref(n), rtol=1e-6)


def test_learned_positions_length_limit(rng):
    m, x, v = _setup(rng, "mha", 1, 13, 16, positions="learned", max_length=13)
    with pytest.raises(ValueError, match="max_length=13"):
        m.apply(v, harness.random_input(rng, 1, 14, 16))
    with pytest.raises(ValueError, match="max_length"):
        get("mha")(positions="learned").init(jax.random.PRNGKey(0), x)
    # A decoding step past the table (or mha's cache) returns NaN, never a wrong number.
    cache = m.apply(v, 1, 14, method="init_cache")
    for t in range(14):
        y_t, cache = m.apply(v, x[:, min(t, 12)], cache, method="step")
        assert np.isnan(np.asarray(y_t)).all() == (t == 13)


def test_mha_cache_capacity(rng):
    m, x, v = _setup(rng, "mha", 1, 6, 16, positions="rope")
    cache = m.apply(v, 1, 5, method="init_cache")
    for t in range(6):
        y_t, cache = m.apply(v, x[:, t], cache, method="step")
    assert np.isnan(np.asarray(y_t)).all()
    m, x, v = _setup(rng, "sliding_window", 1, 6, 16, positions="alibi", window=2)
    cache = m.apply(v, 1, method="init_cache")
    assert cache["k"].shape == (1, 2, 4, 4)
    for t in range(6):
        y_t, cache = m.apply(v, x[:, t], cache, method="step")
    assert_rel_close(y_t, m.apply(v, x)[:, -1], RTOL, "ring buffer after 3 wraps")


# --- configuration, dtypes, sizes -------------------------------------------------------


def test_grouped_queries(rng):
    for hk in (1, 2, 4):
        m, x, v = _setup(rng, "mha", 1, 7, 16, num_kv_heads=hk, positions="rope")
        p = params_of(v)
        assert p["k_proj"].shape == p["v_proj"].shape == (16, hk * 4) and p["q_proj"].shape == (16, 16)
        assert_rel_close(m.apply(v, x), mha_reference(p, np.asarray(x, np.float64), **_ref_kw(m)), RTOL, f"hk={hk}")
    # head_dim independent of d_model / num_heads.
    m, x, v = _setup(rng, "mha", 1, 7, 16, num_heads=2, head_dim=6)
    assert params_of(v)["q_proj"].shape == (16, 12)
    assert_rel_close(m.apply(v, x), mha_reference(params_of(v), np.asarray(x, np.float64), **_ref_kw(m)), RTOL, "dh=6")
    with pytest.raises(ValueError, match="num_kv_heads"):
        _make("mha", num_kv_heads=3).init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16(rng, name):
    m32, x, v = _setup(rng, name)
    m16 = _make(name, dtype=jnp.bfloat16)
    y16 = m16.apply(v, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    assert rel_err(y16.astype(jnp.float32), m32.apply(v, x)) < 5e-2
    cache = m16.apply(v, 2, method="init_cache")
    assert cache["k"].dtype == jnp.bfloat16
    y_t, cache = m16.apply(v, x[:, 0].astype(jnp.bfloat16), cache, method="step")
    assert y_t.dtype == jnp.bfloat16
    assert rel_err(y_t.astype(jnp.float32), y16[:, 0].astype(jnp.float32)) < 5e-2


@pytest.mark.parametrize("dtype, item", [(jnp.float32, 4), (jnp.bfloat16, 2)])
def test_state_size(rng, dtype, item):
    m = get("mha")(d_model=16, num_kv_heads=2, dtype=dtype)  # hk·dh = 8
    assert m.apply({}, 100, method="state_size") == 2 * 100 * 8 * item + 4
    s = get("sliding_window")(d_model=16, window=8, dtype=dtype)  # hk·dh = 16
    assert s.apply({}, 100, method="state_size") == s.apply({}, 10**6, method="state_size") == 2 * 8 * 16 * item + 4
    for mod in (m, s):
        cache = jax.eval_shape(lambda: mod.apply({}, 3, 100, method="init_cache"))
        assert _nbytes(cache) == 3 * mod.apply({}, 100, method="state_size")
    with pytest.raises(ValueError, match="max_length"):
        m.apply({}, method="state_size")


def test_no_retrace(rng):
    m, x, v = _setup(rng, "sliding_window", positions="alibi")

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(v, x):
        return m.apply(v, x)

    run(v, x)
    run(v, harness.random_input(rng, 2, 13, 16))


def test_config_errors(rng):
    x = harness.random_input(rng, 1, 4, 16)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="'none', 'learned', 'rope', 'alibi'"):
        get("mha")(positions="sinusoidal").init(key, x)
    with pytest.raises(ValueError, match="'reference', 'blockwise'"):
        get("mha")(impl="flash").init(key, x)
    with pytest.raises(ValueError, match="even head_dim"):
        get("mha")(num_heads=2, head_dim=5).init(key, x)
    with pytest.raises(ValueError, match="window"):
        get("sliding_window")(window=0).init(key, x)
    with pytest.raises(ValueError, match="num_heads"):
        get("mha")(num_heads=3).init(key, x)
    m = Jitted(get("mha")())
    v = random_variables(m.module, x, rng)
    with pytest.raises(ValueError, match="max_length is required"):
        m.apply(v, 1, method="init_cache")
    bi = Jitted(get("mha")(causal=False, max_length=8))
    with pytest.raises(ValueError, match="causal=False"):
        bi.apply(random_variables(bi.module, x, rng), 1, method="init_cache")
    with pytest.raises(ValueError, match="cache"):
        get("mha")(max_length=8).apply(v, x[:, 0], {"k": x}, method="step")
    assert math.isclose(m.rope_base, 10000.0)
