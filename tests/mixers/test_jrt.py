"""JRT-RNN prefix linear attention (``jrt``): float64 references, matrices, prefill + step, prefix rules.

The contract (step from the empty cache, causality, segments, the mixing
matrix path, bfloat16, state_size vs the cache, ...) is checked in
``test_contract.py`` with ``prefix_length=0``; the prefix (non-causal) part is
checked here against the paper's equations (``ref_jrt.py``).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.mixers.jrt import expanded_dim, taylor_feature_map
from tests.mixers import harness
from tests.mixers.harness import Jitted, segments
from tests.mixers.ref_jrt import jrt_matrices, jrt_reference, taylor_features
from tests.mixers.ref_linear_mixers import params_of, perturb
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL
FIELDS = dict(num_heads=2, feature_dim=4)


def _make(**kwargs):
    return Jitted(get("jrt")(**{**FIELDS, **kwargs}))


def _setup(rng, m, batch=2, length=13, width=16):
    x = harness.random_input(rng, batch, length, width)
    return x, perturb(harness.init(m, x), rng)


def _ref(m, v, x, prefix=None, segment_ids=None, xp=np, params=None):
    p = params_of(v, xp=xp) if params is None else params
    prefix = m.prefix_length if prefix is None else prefix
    return jrt_reference(p, xp.asarray(np.asarray(x, np.float64)) if xp is np else x, m.num_heads, m.feature_dim,
                         prefix, m.eps, segment_ids, xp)


# --- the feature map ------------------------------------------------------------------------


def test_taylor_feature_map(rng):
    x = rng.standard_normal((3, 2, 4))
    phi = np.asarray(taylor_feature_map(jnp.asarray(x, jnp.float32)))
    assert phi.shape == (3, 2, expanded_dim(4)) == (3, 2, 21)
    assert_rel_close(phi, taylor_features(x), 1e-6, "feature map vs explicit loops")
    # φ(q)·φ(k) is the 2nd-order Taylor expansion of exp(q·k/√d').
    q, k = x[0, 0], x[1, 1]
    a = q @ k / 2.0
    assert abs(taylor_features(q) @ taylor_features(k) - (1 + a + a * a / 2)) < 1e-12
    small = 1e-2 * x
    with jax.enable_x64(True):
        f = np.asarray(taylor_feature_map(jnp.asarray(small)))
    approx = np.einsum("tf,sf->ts", f.reshape(6, -1), f.reshape(6, -1))
    exact = np.exp(small.reshape(6, 4) @ small.reshape(6, 4).T / 2.0)
    assert np.abs(approx - exact).max() < 1e-6  # error O(a³), a ~ 1e-4


# --- outputs against the reference ------------------------------------------------------------


@pytest.mark.parametrize("impl, length", [("chunked", 13), ("sequential", 13), ("chunked", 1)])
def test_matches_reference_float32(rng, impl, length):
    m = _make(impl=impl, chunk_size=4)
    x, v = _setup(rng, m, 2, length)
    assert_rel_close(m.apply(v, x), _ref(m, v, x), RTOL, f"{impl} no prefix")
    rows = np.asarray([3, 20])  # a prefix longer than the row is the whole row
    seg = segments(rng, 2, length)
    y = m.apply(v, x, segment_ids=jnp.asarray(seg), prefix_lengths=jnp.asarray(rows, jnp.int32))
    assert_rel_close(y, _ref(m, v, x, prefix=rows, segment_ids=seg), RTOL, f"{impl} prefix {rows} segments")


def test_field_and_per_row_prefix_agree(rng):
    m = _make(prefix_length=4)
    x, v = _setup(rng, m, 2, 13)
    y = m.apply(v, x)
    assert_rel_close(y, _ref(m, v, x), RTOL, "prefix_length=4")
    assert rel_err(_make().apply(v, x, prefix_lengths=jnp.asarray([4, 4], jnp.int32)), y) <= 1e-6
    with pytest.raises(ValueError, match=r"prefix_lengths must be \(batch,\)"):
        m.apply(v, x, prefix_lengths=jnp.asarray([1, 2, 3], jnp.int32))


def test_float64_exact(rng):
    """In float64 the op path, the dense-matrix path and both matrices equal the closed forms to rounding."""
    x = rng.standard_normal((2, 13, 16))
    seg = segments(rng, 2, 13)
    rows = np.asarray([3, 6])
    with jax.enable_x64(True):
        m = Jitted(get("jrt")(**FIELDS, dtype=jnp.float64, impl="chunked", chunk_size=4))
        v = perturb(harness.init(m, jnp.asarray(x)), rng)
        kw = dict(segment_ids=jnp.asarray(seg), prefix_lengths=jnp.asarray(rows))
        y = m.apply(v, jnp.asarray(x), **kw)
        M = m.apply(v, jnp.asarray(x), method="mixing_matrix", **kw)
        y_m = m.apply(v, jnp.asarray(x), M, method="apply_mixing_matrix", **kw)
    assert y.dtype == jnp.float64 and M.shape == (2, 4, 13, 13)
    y_ref = _ref(m, v, x, prefix=rows, segment_ids=seg)
    md, me = jrt_matrices(params_of(v), x, 2, 4, rows, m.eps, seg)
    assert_rel_close(y, y_ref, RTOL_F64, "f64 op")
    assert_rel_close(y_m, y_ref, RTOL_F64, "f64 mixing matrix path")
    assert_rel_close(M[:, :2], md, RTOL_F64, "f64 decoder matrix")
    assert_rel_close(M[:, 2:], me, RTOL_F64, "f64 encoder matrix")


def test_gradients(rng):
    """Gradients of Σ w ⊙ jrt(x) for every parameter and x equal autodiff of the float64 reference."""
    x = rng.standard_normal((2, 9, 8))
    seg = segments(rng, 2, 9)
    m = _make(prefix_length=3, impl="chunked", chunk_size=4)
    v = nn.meta.unbox(perturb(harness.init(m, jnp.float32(x)), rng))
    w = rng.standard_normal(x.shape)

    def loss(params, x):
        return jnp.sum(m.apply({"params": params}, x, segment_ids=jnp.asarray(seg)) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], jnp.float32(x))
    with jax.enable_x64(True):
        def ref_loss(p, x):
            return jnp.sum(_ref(m, v, x, segment_ids=seg, xp=jnp, params=p) * w)

        r_p, r_x = jax.grad(ref_loss, argnums=(0, 1))(params_of(v, xp=jnp), jnp.asarray(x))
    g_p = params_of({"params": g_p})
    assert set(g_p) == set(r_p) and len(r_p) == 6
    for k in r_p:
        assert float(np.abs(np.asarray(r_p[k])).max()) > 0, f"d{k} is zero: that branch is unused"
        assert_rel_close(g_p[k], r_p[k], RTOL_GRAD, f"d{k}")
    assert_rel_close(g_x, r_x, RTOL_GRAD, "dx")


# --- the mixing matrix ------------------------------------------------------------------------


def test_mixing_matrix_blocks(rng):
    """Decoder half causal, encoder half full over the prefix columns for every row; rows sum to ~1."""
    m = _make(prefix_length=4)
    x, v = _setup(rng, m)
    M = np.asarray(m.apply(v, x, method="mixing_matrix"))
    md, me = M[:, :2], M[:, 2:]
    assert_rel_close(md, jrt_matrices(params_of(v), np.float64(x), 2, 4, 4, m.eps)[0], RTOL, "decoder matrix")
    assert_rel_close(me, jrt_matrices(params_of(v), np.float64(x), 2, 4, 4, m.eps)[1], RTOL, "encoder matrix")
    assert np.abs(np.triu(md, 1)).max() == 0.0 and (np.tril(md) >= 0).all()
    assert np.abs(me[..., 4:]).max() == 0.0 and (me[..., :4] > 0).all()  # κ >= 1/2 > 0
    np.testing.assert_allclose((md + me).sum(-1), 1.0, rtol=1e-5)
    y_m = m.apply(v, x, jnp.asarray(M), method="apply_mixing_matrix")
    assert rel_err(y_m, m.apply(v, x)) <= RTOL
    with pytest.raises(ValueError, match=r"M must have shape \(b, 2h, l, l\)"):
        m.apply(v, x, jnp.asarray(md), method="apply_mixing_matrix")


# --- causality, segments, decoding -----------------------------------------------------------


def test_non_causal_inside_the_prefix_only(rng):
    m = _make(prefix_length=4)
    x, v = _setup(rng, m)
    harness.check_causal(m, v, x, rng, cut=4)  # nothing at or after the prefix end leaks back
    harness.check_causal(m, v, x, rng, cut=9)
    x2 = np.array(x)
    x2[:, 3] = rng.standard_normal(x2[:, 3].shape)  # the last prefix token changes every earlier output
    moved = np.abs(np.asarray(m.apply(v, jnp.asarray(x2)) - m.apply(v, x)))[:, :3].max(axis=(0, 2))
    assert (moved > 1e-4).all()


def test_segments_count_the_prefix_from_each_start(rng):
    m = _make(prefix_length=4)
    _, v = _setup(rng, m, 1, 13)
    harness.check_segments(m, v, rng, lengths=(6, 7), width=16)


def test_prefill_then_step(rng):
    """Steps after a prefill of P tokens give the parallel form (prefix min(M, P)) at positions >= P."""
    m = _make()
    x, v = _setup(rng, m, 4, 11)
    prompt, rows = 6, np.asarray([0, 4, 6, 9])  # per row: no prefix, inside, the whole prompt, past it
    y_pre, cache = m.apply(v, x[:, :prompt], jnp.asarray(rows, jnp.int32), method="prefill")
    assert set(cache) == {"S", "z"} and cache["S"].shape == (4, 2, 21, 8) and cache["z"].shape == (4, 2, 21)
    steps = []
    for t in range(prompt, 11):
        y_t, cache = m.apply(v, x[:, t], cache, method="step")
        steps.append(y_t)
    assert_rel_close(y_pre, _ref(m, v, x[:, :prompt], prefix=rows), RTOL, "prefill outputs")
    y_ref = _ref(m, v, x, prefix=np.minimum(rows, prompt))
    assert_rel_close(jnp.stack(steps, 1), y_ref[:, prompt:], RTOL, "steps after the prefill")
    # The field sets the prefix of a prefill too.
    _, cache4 = _make(prefix_length=4).apply(v, x[:1, :prompt], method="prefill")
    _, cache_rows = m.apply(v, x[:1, :prompt], jnp.asarray([4], jnp.int32), method="prefill")
    assert rel_err(cache4["S"], cache_rows["S"]) <= 1e-6


# --- configuration, state, memory, low precision -------------------------------------------------


@pytest.mark.parametrize("field, value", [("prefix_length", -1), ("feature_dim", 0), ("num_heads", 3),
                                          ("eps", 0.0), ("prefix_length", 1.5)])
def test_bad_fields(field, value):
    with pytest.raises(ConfigError, match=rf"^jrt\.{field}={value!r}"):
        get("jrt")(d_model=16, **{field: value})


def test_state_size():
    m = get("jrt")(d_model=64)  # defaults: 4 heads of dv = 16, d' = 16: D = 273
    assert m.state_size() == 4 * 273 * 17 * 4 == 74_256
    assert get("jrt")(d_model=16, **FIELDS).state_size(4096) == 2 * 21 * 9 * 4


def test_memory_grows_linearly(rng):
    ratio = harness.check_memory_growth(get("jrt")(**FIELDS, prefix_length=16, chunk_size=16), rng, length=64)
    assert ratio < 6.0


@pytest.mark.parametrize("length", [1, 13])
def test_bfloat16_short(rng, length):
    m = _make(prefix_length=3, dtype=jnp.bfloat16)
    x, v = _setup(rng, _make(), 2, length)
    y = m.apply(v, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y, np.float32)).all()
    assert rel_err(y.astype(jnp.float32), _ref(m, v, x)) < 3e-2


@pytest.mark.slow
def test_bfloat16_long(rng):
    m = _make(prefix_length=1024, dtype=jnp.bfloat16, feature_dim=16, num_heads=4)
    x, v = _setup(rng, _make(feature_dim=16, num_heads=4), 1, 4096, 64)
    y = m.apply(v, x.astype(jnp.bfloat16))
    assert np.isfinite(np.asarray(y, np.float32)).all()
    g = jax.jit(jax.grad(lambda v, x: jnp.sum(m.apply(v, x).astype(jnp.float32) ** 2)))(v, x.astype(jnp.bfloat16))
    assert all(np.isfinite(np.asarray(leaf, np.float32)).all() for leaf in jax.tree.leaves(g))
