"""mha and sliding_window: float64 loop references, positions (RoPE, ALiBi, learned), GQA, caches.

The contract (step, causality, segments, mixing matrix vs fast path,
bfloat16, state_size vs cache bytes, no retrace, default construction) is
checked for every mixer in ``test_contract.py``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.attention  # noqa: F401  (registers "mha", "sliding_window")
from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.mixers.common import positions_in_segment
from seqjax.mixers.positions import alibi_slopes, rope
from tests.mixers import harness
from tests.mixers.harness import Jitted
from tests.mixers.ref_attention_mixers import (
    alibi_slopes_ref, assert_gradients_match, mha_matrix, mha_reference, params_of, random_variables)
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


def _ref_kw(m):
    return dict(num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim, causal=m.causal,
                positions=m.positions, rope_base=m.rope_base, window=getattr(m, "window", None))


def _setup(rng, name, batch=2, length=13, width=16, **kw):
    m = _make(name, **kw)
    x = harness.random_input(rng, batch, length, width)
    return m, x, _init(m, x, rng)


# --- against the float64 loop reference ---------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_default_parameters(rng, name):
    m = Jitted(get(name)())
    x = harness.random_input(rng, 2, 13, 16)
    v = harness.init(m, x)
    p = params_of(v)
    assert set(p) == {"q_proj", "k_proj", "v_proj", "out_proj"}
    assert p["q_proj"].shape == p["k_proj"].shape == (16, 16) and p["out_proj"].shape == (16, 16)
    assert m.positions == "rope" and m.causal and m.num_heads == 4
    assert_rel_close(m.apply(v, x), mha_reference(p, np.asarray(x, np.float64), **_ref_kw(m)), RTOL, f"default {name}")


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


@pytest.mark.parametrize("impl", ["reference", "blockwise", {"attention": "blockwise"}])
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
    seg = np.array([[0] * 4 + [1] * 5])
    m = _make(name, positions=positions, impl=impl, num_kv_heads=2, max_length=12)
    v = _init(m, jnp.float32(x), rng)
    assert_gradients_match(m.module, v, x, seg, lambda p, x: mha_reference(p, x, segment_ids=seg, xp=jnp,
                                                                           **_ref_kw(m)), RTOL_GRAD)


@pytest.mark.parametrize("name, positions, causal", [
    ("mha", "alibi", False), ("mha", "learned", True), ("sliding_window", "alibi", True),
    ("sliding_window", "rope", False),
])
def test_matrix_is_the_closed_form(rng, name, positions, causal):
    """The matrix read off the op equals the softmax probabilities over the visible keys (GQA, segments)."""
    m, x, v = _setup(rng, name, positions=positions, causal=causal, num_kv_heads=2)
    seg = _segments(rng, 2, 13)
    M = m.apply(v, x, segment_ids=jnp.asarray(seg), method="mixing_matrix")
    assert M.shape == (2, 4, 13, 13)
    want = mha_matrix(params_of(v), np.asarray(x, np.float64), segment_ids=seg, **_ref_kw(m))
    assert_rel_close(M, want, RTOL, f"{name} {positions} causal={causal} matrix vs closed form")
    np.testing.assert_allclose(np.asarray(M).sum(-1), 1.0, rtol=1e-5)  # every query sees itself
    if not causal:
        assert np.triu(np.asarray(M)[0, 0], 1).max() > 0.0


# --- decoding -------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ("learned", "alibi"))
def test_ring_buffer_with_positions(rng, positions):
    # l = 13 > window = 4: the ring buffer wraps several times (the contract steps RoPE only).
    m, x, v = _setup(rng, "sliding_window", positions=positions, num_kv_heads=2)
    harness.check_step_matches_parallel(m, v, x)


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


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_cache(rng, name):
    _, x, v = _setup(rng, name)
    m16 = _make(name, dtype=jnp.bfloat16)
    y16 = m16.apply(v, x.astype(jnp.bfloat16))
    cache = m16.apply(v, 2, method="init_cache")
    assert cache["k"].dtype == jnp.bfloat16
    y_t, cache = m16.apply(v, x[:, 0].astype(jnp.bfloat16), cache, method="step")
    assert y_t.dtype == jnp.bfloat16
    assert rel_err(y_t.astype(jnp.float32), y16[:, 0].astype(jnp.float32)) < 5e-2


@pytest.mark.parametrize("dtype, item", [(jnp.float32, 4), (jnp.bfloat16, 2)])
def test_state_size(dtype, item):
    m = get("mha")(d_model=16, num_kv_heads=2, dtype=dtype)  # hk·dh = 8
    assert m.apply({}, 100, method="state_size") == 2 * 100 * 8 * item + 4
    s = get("sliding_window")(d_model=16, window=8, dtype=dtype)  # hk·dh = 16
    assert s.apply({}, 100, method="state_size") == s.apply({}, 10**4, method="state_size") == 2 * 8 * 16 * item + 4
    with pytest.raises(ValueError, match="max_length is required"):
        m.apply({}, method="state_size")


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


def test_positions_restart_per_segment(rng):
    ids = jnp.asarray([[3, 3, 3, 1, 1, 3, 3], [0] * 7])
    np.testing.assert_array_equal(positions_in_segment(ids, 2, 7), [[0, 1, 2, 0, 1, 0, 1], list(range(7))])
    # Reused ids (0, 1, 0) are three sequences, not two: learned positions restart at the third.
    m, x, v = _setup(rng, "mha", 1, 12, 16, positions="learned")
    y = m.apply(v, x, segment_ids=jnp.asarray([[0] * 4 + [1] * 4 + [0] * 4]))
    assert_rel_close(y[:, 8:], m.apply(v, x[:, 8:]), RTOL, "third segment alone")


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
    with pytest.raises(ConfigError, match=r"^mha\.max_length=None: positions='learned'"):
        get("mha")(positions="learned")
    # A decoding step past the table (or mha's cache) returns NaN, never a wrong number.
    cache = m.apply(v, 1, 14, method="init_cache")
    for t in range(14):
        y_t, cache = m.apply(v, x[:, min(t, 12)], cache, method="step")
        assert np.isnan(np.asarray(y_t)).all() == (t == 13)


# --- configuration ----------------------------------------------------------------------


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


@pytest.mark.parametrize("name, fields, message", [
    ("mha", dict(positions="sinusoidal"), r"^mha\.positions='sinusoidal' .*allowed: 'none', 'learned', 'rope'"),
    ("mha", dict(impl="flash"), r"^mha\.impl='flash' .*allowed: auto, reference, blockwise"),
    ("mha", dict(impl={"ssd": "chunked"}), r"^mha\.impl names op 'ssd'; allowed ops: attention"),
    ("mha", dict(num_heads=2, head_dim=5), r"^mha\.head_dim=5 must be even with positions='rope'"),
    ("mha", dict(num_kv_heads=3), r"^mha\.num_kv_heads=3 must divide num_heads=4"),
    ("mha", dict(rope_base=0.0), r"^mha\.rope_base=0.0 must be a number > 0"),
    ("mha", dict(max_length=0), r"^mha\.max_length=0 must be an int >= 1 or None"),
    ("mha", dict(positions="alibi", sequence_axis="sequence"), r"^mha\.sequence_axis='sequence': .*'alibi'"),
    ("sliding_window", dict(window=0), r"^sliding_window\.window=0 must be an int >= 1"),
    ("sliding_window", dict(sequence_axis="sequence"), r"^sliding_window\.sequence_axis='sequence'"),
])
def test_config_errors_at_construction(name, fields, message):
    with pytest.raises(ConfigError, match=message):
        get(name)(**fields)


def test_width_checks(rng):
    x = harness.random_input(rng, 1, 4, 16)
    # With d_model the width-dependent checks run at construction...
    with pytest.raises(ConfigError, match=r"^mha\.num_heads=3 must divide d_model=16"):
        get("mha")(d_model=16, num_heads=3)
    with pytest.raises(ConfigError, match=r"^mha\.positions='rope' needs an even head dimension"):
        get("mha")(d_model=12, num_heads=4)
    # ...without it, once the width is known (init).
    with pytest.raises(ConfigError, match=r"^mha\.num_heads=3 must divide d_model=16"):
        get("mha")(num_heads=3).init(jax.random.PRNGKey(0), x)


def test_call_errors(rng):
    x = harness.random_input(rng, 1, 4, 16)
    m = Jitted(get("mha")())
    v = random_variables(m.module, x, rng)
    with pytest.raises(ValueError, match="max_length is required"):
        m.apply(v, 1, method="init_cache")
    bi = Jitted(get("mha")(causal=False, max_length=8))
    with pytest.raises(ValueError, match="not causal"):
        bi.apply(random_variables(bi.module, x, rng), 1, method="init_cache")
    with pytest.raises(ValueError, match="cache"):
        get("mha")(max_length=8).apply(v, x[:, 0], {"k": x}, method="step")
    assert math.isclose(m.rope_base, 10000.0)
