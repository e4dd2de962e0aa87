"""relative_mha and urpe against float64 references of the papers' equations; the skew; memory growth.

The contract (step vs parallel, causality, segments, mixing matrix vs fast
path, bfloat16, state_size, no retrace, default construction) is checked for
every mixer in ``test_contract.py``; here: the float64 oracles
(``ref_relative.py``: direct lookups of the relative tables, never a skew),
gradients, the skewing trick on its own, initialisation, lengths and memory.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.mixers.common import broadcast_batch
from seqjax.mixers.relative import relative_index, relative_logits, skew, toeplitz
from tests.mixers import harness
from tests.mixers.harness import Jitted
from tests.mixers.ref_attention_mixers import assert_gradients_match, params_of, random_variables
from tests.mixers.ref_relative import matrix, reference, relative_logits_direct
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL
# (name, causal): relative_mha is causal only; urpe either.
KINDS = [("relative_mha", True), ("urpe", True), ("urpe", False)]


def _make(name, causal=True, **kw):
    kw.setdefault("max_length", 40)
    kw.setdefault("max_relative", 4)  # < the test lengths, so clipping shows
    if name == "urpe":
        kw["causal"] = causal
    return Jitted(get(name)(**kw))


def _cfg(m):
    return dict(num_heads=m.num_heads, max_relative=m.max_relative, causal=m.is_causal)


def _setup(rng, name, causal=True, batch=2, length=13, **kw):
    m = _make(name, causal, **kw)
    x = harness.random_input(rng, batch, length, 16)
    return m, x, random_variables(m.module, x, rng)


def _segments(rng, batch, length):
    return np.cumsum(rng.random((batch, length)) < 0.25, axis=1) % 2


# --- against the float64 references -----------------------------------------------------


@pytest.mark.parametrize("name, causal", KINDS)
def test_matches_reference_float32(rng, name, causal):
    m, x, v = _setup(rng, name, causal)
    p, x64 = params_of(v), np.asarray(x, np.float64)
    y_ref = reference(p, x64, name, **_cfg(m))
    assert_rel_close(m.apply(v, x), y_ref, RTOL, f"{name} causal={causal}")
    seg = _segments(rng, 2, 13)
    y_seg = reference(p, x64, name, segment_ids=seg, **_cfg(m))
    assert_rel_close(m.apply(v, x, segment_ids=jnp.asarray(seg)), y_seg, RTOL, "with segments")
    assert rel_err(y_seg, y_ref) > 1e-3  # the segments change the answer


def test_relative_mha_shared_table_and_impls(rng):
    for impl in ("reference", "blockwise"):
        m, x, v = _setup(rng, "relative_mha", shared_embeddings=True, impl=impl, num_heads=2)
        assert params_of(v)["rel_embedding"].shape == (1, 5, 8)
        assert_rel_close(m.apply(v, x), reference(params_of(v), np.asarray(x, np.float64), "relative_mha", **_cfg(m)),
                         RTOL, f"shared table, {impl}")


@pytest.mark.parametrize("name, causal", KINDS)
def test_float64_exact(rng, name, causal):
    x = rng.standard_normal((2, 11, 16))
    seg = _segments(rng, 2, 11)
    with jax.enable_x64(True):
        m = _make(name, causal, dtype=jnp.float64)
        v = random_variables(m.module, jnp.asarray(x), rng)
        y = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        M = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        ys = []
        if causal:
            cache = m.apply(v, 2, method="init_cache")
            for t in range(11):
                y_t, cache = m.apply(v, jnp.asarray(x[:, t]), cache, method="step")
                ys.append(y_t)
    p = params_of(v)
    assert y.dtype == jnp.float64
    assert_rel_close(y, reference(p, x, name, segment_ids=seg, **_cfg(m)), RTOL_F64, f"{name} f64")
    assert_rel_close(M, matrix(p, x, name, segment_ids=seg, **_cfg(m)), RTOL_F64, f"{name} f64 matrix")
    if causal:
        assert_rel_close(jnp.stack(ys, 1), reference(p, x, name, **_cfg(m)), RTOL_F64, f"{name} f64 step")


@pytest.mark.parametrize("name, causal, impl", [
    ("relative_mha", True, "blockwise"), ("urpe", True, "auto"), ("urpe", False, "auto"),
])
def test_gradients(rng, name, causal, impl):
    x = rng.standard_normal((1, 7, 16))
    seg = np.array([[0] * 3 + [1] * 4])
    m = _make(name, causal, max_relative=3, **({"impl": impl} if impl != "auto" else {}))
    v = random_variables(m.module, jnp.float32(x), rng)
    assert_gradients_match(m.module, v, x, seg,
                           lambda p, x: reference(p, x, name, segment_ids=seg, xp=jnp, **_cfg(m)), RTOL_GRAD)


@pytest.mark.parametrize("name, causal", KINDS)
def test_matrix_is_the_closed_form(rng, name, causal):
    m, x, v = _setup(rng, name, causal)
    seg = _segments(rng, 2, 13)
    M = m.apply(v, x, segment_ids=jnp.asarray(seg), method="mixing_matrix")
    assert M.shape == (2, 4, 13, 13)
    assert_rel_close(M, matrix(params_of(v), np.asarray(x, np.float64), name, segment_ids=seg, **_cfg(m)), RTOL,
                     f"{name} matrix")
    sums = np.asarray(M).sum(-1)
    if name == "relative_mha":
        np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
    else:  # C reweights the probabilities: rows no longer sum to 1 (the point of URPE)
        assert np.abs(sums - 1.0).max() > 0.1


# --- the skew --------------------------------------------------------------------------


@pytest.mark.parametrize("length, max_relative, heads", [(13, 5, 3), (7, 20, 1), (1, 3, 3)])
def test_skew_equals_direct_lookup(rng, length, max_relative, heads):
    q = rng.standard_normal((2, length, 3, 8))
    table = rng.standard_normal((heads, max_relative + 1, 8))
    with jax.enable_x64(True):
        S = np.asarray(relative_logits(jnp.asarray(q), jnp.asarray(table), max_relative))
    want = relative_logits_direct(q, table, max_relative)
    lower = np.tril(np.ones((length, length), bool))
    assert_rel_close(S[..., lower], want[..., lower], RTOL_F64, "skewed vs direct q_i · E_clip(i-j)")
    # skew itself: out[i, j] = x[i, L-1+j-i] for j <= i.
    x = rng.standard_normal((length, length)).astype(np.float32)
    out = np.asarray(skew(jnp.asarray(x)))
    for i in range(length):
        for j in range(i + 1):
            assert out[i, j] == x[i, length - 1 + j - i]


def test_relative_index():
    d = jnp.arange(-6, 7)
    np.testing.assert_array_equal(relative_index(d, 3, True), np.clip(np.arange(-6, 7), 0, 3))
    np.testing.assert_array_equal(relative_index(d, 3, False), np.clip(np.arange(-6, 7), -3, 3) + 3)


def _temp(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def _grad_of(logits):
    return jax.grad(lambda q, t: jnp.sum(logits(q, t) ** 2), argnums=(0, 1))


def test_skew_memory():
    """The relative term costs O(L·d) besides the (L, L) logits: temp memory ~L², nearly flat in dh.

    The direct lookup materialises (L, L, dh) gathered embeddings: its memory
    grows with dh (the control, so the test can fail); the skew's barely does.
    """
    k = 64

    def skewed(q, t):
        return relative_logits(q, t, k)

    def gathered(q, t):
        pos = jnp.arange(q.shape[1])
        e = t[:, relative_index(pos[:, None] - pos[None, :], k, True)]  # (h, L, L, dh)
        return jnp.einsum("blhd,hlsd->bhls", q, e)

    def temps(fn, length, dh):
        q, t = jnp.ones((1, length, 2, dh)), jnp.ones((2, k + 1, dh))
        return _temp(fn, q, t) + _temp(_grad_of(fn), q, t)

    by_length = temps(skewed, 256, 16) / temps(skewed, 64, 16)
    assert by_length <= 16 * 1.2, f"skew temp memory grew {by_length:.1f}x for 4x L"
    by_dim = temps(skewed, 128, 64) / temps(skewed, 128, 16)
    control = temps(gathered, 128, 64) / temps(gathered, 128, 16)
    assert by_dim <= 1.5, f"skew temp memory grew {by_dim:.2f}x for 4x dh (should be O(L²) + O(L·dh))"
    assert control >= 3.0, f"the gathered (L, L, dh) control grew only {control:.2f}x"


@pytest.mark.parametrize("name", ["relative_mha", "urpe"])
def test_memory_grows_at_most_quadratically(rng, name):
    ratio = harness.check_memory_growth(get(name)(num_heads=2, max_relative=16), rng, length=32, exponent=2.0)
    assert ratio > 4.0  # and it is more than linear: the (L, L) logits are materialised


# --- lengths, dtypes, init --------------------------------------------------------------


@pytest.mark.parametrize("name, causal", KINDS)
@pytest.mark.parametrize("length", [1, 7])
def test_lengths_bfloat16(rng, name, causal, length):
    m, x, v = _setup(rng, name, causal, batch=1, length=length)
    y = m.apply(v, x)
    assert_rel_close(y, reference(params_of(v), np.asarray(x, np.float64), name, **_cfg(m)), RTOL, f"l={length}")
    y16 = _make(name, causal, dtype=jnp.bfloat16).apply(v, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y16, np.float32)).all()
    assert rel_err(y16.astype(jnp.float32), y) < 6e-2


@pytest.mark.slow
@pytest.mark.parametrize("name, causal", KINDS)
def test_long_bfloat16(rng, name, causal):
    m = get(name)(**({"causal": causal} if name == "urpe" else {}), dtype=jnp.bfloat16)
    x = harness.random_input(rng, 1, 4096, 16)
    v = harness.jit_init(m, x[:, :8])
    y = jax.jit(m.apply)(v, x.astype(jnp.bfloat16))
    assert np.isfinite(np.asarray(y, np.float32)).all() and float(jnp.std(y.astype(jnp.float32))) > 0
    g = jax.jit(jax.grad(lambda v: jnp.sum(m.apply(v, x.astype(jnp.bfloat16)).astype(jnp.float32) ** 2)))(v)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(g))


def test_initialisation(rng):
    x = harness.random_input(rng, 1, 5, 16)
    u = get("urpe")(num_heads=2, max_relative=64)
    p = params_of(harness.jit_init(u, x))
    assert p["rel_weight"].shape == p["rel_bias"].shape == (2, 65)
    np.testing.assert_array_equal(p["rel_weight"], 1.0)  # C all ones: plain RPE attention at init
    assert 0.01 < p["rel_bias"].std() < 0.03
    bidir = jax.eval_shape(get("urpe")(causal=False, max_relative=64).init, jax.random.PRNGKey(0), x)
    assert bidir["params"]["rel_bias"]["embedding"].value.shape == (4, 129)  # distances -k..k
    r = get("relative_mha")(num_heads=2, max_relative=64)
    e = params_of(harness.jit_init(r, x))["rel_embedding"]
    assert e.shape == (2, 65, 8) and 0.25 < e.std() < 0.45  # N(0, 1/dh), dh = 8


@pytest.mark.parametrize("name", ["relative_mha", "urpe"])
def test_cache(rng, name):
    m, x, v = _setup(rng, name, batch=1, length=6)
    cache = m.apply(v, 1, 5, method="init_cache")
    assert cache["k"].shape == (1, 5, 4, 4)
    for t in range(6):
        y_t, cache = m.apply(v, x[:, t], cache, method="step")
        assert np.isnan(np.asarray(y_t)).all() == (t == 5)  # past the cache: NaN, never a wrong number
    for dtype, item in ((jnp.float32, 4), (jnp.bfloat16, 2)):
        assert get(name)(d_model=16, dtype=dtype).apply({}, 100, method="state_size") == 2 * 100 * 16 * item + 4


@pytest.mark.parametrize("name, fields, message", [
    ("relative_mha", dict(max_relative=0), r"^relative_mha\.max_relative=0 must be an int >= 1"),
    ("relative_mha", dict(shared_embeddings="yes"), r"^relative_mha\.shared_embeddings='yes' .*allowed: True, False"),
    ("relative_mha", dict(causal=False), None),
    ("urpe", dict(causal=1.5), r"^urpe\.causal=1.5 .*allowed: True, False"),
    ("urpe", dict(impl="blockwise"), r"^urpe\.impl='blockwise': urpe calls no op"),
    ("urpe", dict(max_length=0), r"^urpe\.max_length=0 must be an int >= 1 or None"),
])
def test_config_errors(name, fields, message):
    if message is None:  # relative_mha has no causal field: it is causal only
        with pytest.raises(TypeError):
            get(name)(**fields)
        return
    with pytest.raises(ConfigError, match=message):
        get(name)(**fields)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [1, 2, 7, 33])
def test_toeplitz_equals_indexing_the_table(rng, causal, length):
    # T[i, j] = table[row of i - j], read here with an explicit (L, L) index, for clipping
    # distances below, near and above the length; and the table's gradient is the per-row
    # sum of the matrix's cotangent (what the index form's scatter-add gives).
    i, j = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
    for k in (1, 3, 40):
        rows = relative_index(jnp.asarray(i - j), k, causal)
        table = rng.standard_normal((3, k + 1 if causal else 2 * k + 1))
        np.testing.assert_array_equal(np.asarray(toeplitz(jnp.asarray(table), length, k, causal)),
                                      table[:, np.asarray(rows)].astype(np.float32))
        w = rng.standard_normal((3, length, length))
        g = jax.grad(lambda t: jnp.sum(toeplitz(t, length, k, causal) * w))(jnp.asarray(table, jnp.float32))
        ref = np.zeros_like(table)
        np.add.at(ref, (slice(None), np.asarray(rows)), w)
        np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3,), (2, 5, 5), (4, 300, 300)])
def test_broadcast_batch_gradient_is_the_batch_sum(rng, shape):
    # The last shape has 360,000 kept elements: the size where XLA:CPU 0.10's leading-axis
    # sum is slow and broadcast_batch's backward takes a product instead (same value).
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((6,) + shape)
    y, vjp = jax.vjp(lambda a: broadcast_batch(a, 6), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(x, (6,) + shape))
    (g,) = vjp(jnp.asarray(w, jnp.float32))
    assert_rel_close(g, w.sum(axis=0), 1e-6, f"broadcast_batch gradient {shape}")
