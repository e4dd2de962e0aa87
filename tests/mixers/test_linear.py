"""Linear attention (Katharopoulos et al.) and Performer (FAVOR+): float64 references, matrices, features.

The contract (step, causality, segments, mixing matrix vs the fast path,
bfloat16, state_size vs the cache, ...) is checked for every mixer in
``test_contract.py``.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.linear  # noqa: F401  (registers "linear_attention", "performer")
from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.mixers.linear import elu_feature_map, favor_features, orthogonal_random_features
from tests.mixers import harness
from tests.mixers.harness import Jitted
from tests.mixers.ref_linear_mixers import (
    check_float32, check_float64, check_gradients, linear_attention_matrix, linear_attention_reference,
    params_of, perturb, runs_of, segments)
from tests.ops.utils import assert_rel_close, rel_err

RTOL = harness.RTOL  # 2e-4, float32 mixers
NAMES = ["linear_attention", "performer"]


def _get(name):
    """The registered mixer class, constructed wrapped in :class:`Jitted` (apply/init under jit)."""
    return lambda **kwargs: Jitted(get(name)(**kwargs), eager_init=True)


def _setup(rng, m, batch=2, length=13, width=16):
    x = harness.random_input(rng, batch, length, width)
    return x, perturb(harness.init(m, x), rng)


def _kwargs(m, v, segment_ids=None, xp=np):
    """The oracles' keyword arguments for mixer ``m`` with variables ``v``."""
    omega = None
    if "constants" in v:
        omega = xp.asarray(np.asarray(v["constants"]["omega"], np.float64))
    return dict(causal=m.causal, eps=m.eps, omega=omega, segment_ids=segment_ids, xp=xp)


def _reference(m, v, x, segment_ids=None, xp=np, params=None):
    """The float64 loop reference of mixer ``m`` with variables ``v``."""
    p = params_of(v, xp=xp) if params is None else params
    return linear_attention_reference(p, x, m.num_heads, **_kwargs(m, v, segment_ids, xp))


def _matrix(m, v, x, segment_ids):
    """The float64 closed-form mixing matrix of mixer ``m`` with variables ``v``."""
    return linear_attention_matrix(params_of(v), np.asarray(x, np.float64), m.num_heads, **_kwargs(m, v, segment_ids))


# --- the float64 references -------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_default_construction(rng, name):
    m = _get(name)()
    x = harness.random_input(rng, 2, 13, 16)
    v = harness.init(m, x)
    assert m.causal and m.num_heads == 4
    assert params_of(v)["q_proj.kernel"].shape == (16, 16)
    if name == "performer":
        # m = 2·dk = 8 features of dk = 4, stored outside "params".
        assert v["constants"]["omega"].shape == (8, 4) and "omega" not in v["params"]
    assert_rel_close(m.apply(v, x), _reference(m, v, np.asarray(x, np.float64)), RTOL, f"default {name}")


@pytest.mark.parametrize("name, causal, impl, length", [
    ("linear_attention", True, "reference", 1), ("linear_attention", True, "chunked", 37),
    ("linear_attention", False, "sequential", 13), ("linear_attention", False, "chunked", 37),
    ("performer", True, "sequential", 13), ("performer", True, "chunked", 37),
    ("performer", False, "reference", 1), ("performer", False, "chunked", 37),
])
def test_matches_reference_float32(rng, name, causal, impl, length):
    m = _get(name)(causal=causal, impl=impl, chunk_size=8)
    x, v = _setup(rng, m, 2, length, 16)
    check_float32(m, v, x, _reference, rng, f"{name} causal={causal}")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [True, False])
def test_float64_exact(rng, name, causal):
    check_float64(lambda **kw: _get(name)(causal=causal, **kw), rng, _reference, _matrix, f"{name} causal={causal}")


@pytest.mark.parametrize("name, causal, length", [("linear_attention", True, 11), ("performer", False, 7)])
def test_gradients(rng, name, causal, length):
    # The bidirectional reference builds the (l, l) matrix: a shorter sequence keeps its trace small.
    x = rng.standard_normal((2, length, 8))
    m = _get(name)(num_heads=2, causal=causal, impl="chunked", chunk_size=4)
    v = nn.meta.unbox(perturb(harness.init(m, jnp.float32(x)), rng))
    check_gradients(m, v, x, segments(rng, 2, length), _reference, rng)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [True, False])
def test_matrix_is_the_closed_form(rng, name, causal):
    """The matrix read off the op (ones column and division included) is the normalised attention matrix."""
    m = _get(name)(causal=causal)
    x, v = _setup(rng, m)
    seg = segments(rng, 2, 13)
    M = np.asarray(m.apply(v, x, segment_ids=jnp.asarray(seg), method="mixing_matrix"))
    assert M.shape == (2, 4, 13, 13)
    assert_rel_close(M, _matrix(m, v, x, seg), RTOL, f"{name} causal={causal} matrix vs closed form")
    # Normalised and positive: every row is a probability vector up to eps, so
    # rows sum to den / (den + eps), just below 1 (eps matters most for short rows).
    assert M.min() >= 0.0
    sums = M.sum(-1)
    assert sums.max() <= 1.0 + 1e-6 and sums.min() > 0.99
    if not causal:
        # The bidirectional matrix looks ahead inside each segment.
        t, s = np.triu_indices(13, k=1)
        runs = runs_of(seg, 2, 13)
        same = runs[:, t] == runs[:, s]
        assert (M[:, :, t, s].min(axis=1)[same] > 0.0).all()


# --- feature maps -------------------------------------------------------------------------


def test_elu_feature_map():
    x = jnp.asarray([-3.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(elu_feature_map(x), [math.exp(-3), math.exp(-0.5), 1.0, 1.5, 3.0], rtol=1e-6)


def test_orthogonal_random_features():
    d, m = 8, 20  # two full blocks and a truncated third
    omega = np.asarray(orthogonal_random_features(jax.random.PRNGKey(3), m, d), np.float64)
    assert omega.shape == (m, d)
    norms = np.linalg.norm(omega, axis=1)
    for start in range(0, m, d):
        block = omega[start : start + d] / norms[start : start + d, None]
        gram = block @ block.T
        np.testing.assert_allclose(gram, np.eye(len(block)), atol=1e-5)
    # chi(d) norms, not all sqrt(d): they vary.
    assert norms.std() > 0.1 and abs(norms.mean() - math.sqrt(d)) < 1.0
    omega2 = np.asarray(orthogonal_random_features(jax.random.PRNGKey(4), m, d))
    assert np.abs(omega2 - omega).max() > 0.1


def test_favor_features_unbiased():
    # E_ω[φ(q)·φ(k)] = exp(q·k): averaged over many orthogonal draws the estimate matches.
    # A statistical check: fixed inputs and draws keep it deterministic.
    rng = np.random.default_rng(0)
    d = 4
    q = rng.standard_normal((6, d)) * 0.25
    k = rng.standard_normal((6, d)) * 0.25
    # 65536 features: the estimate's relative std is about 0.3% here.
    omega = orthogonal_random_features(jax.random.PRNGKey(0), 65536, d)
    with jax.enable_x64(True):
        om = jnp.asarray(np.asarray(omega), jnp.float64)
        est = np.sum(np.asarray(favor_features(jnp.asarray(q), om)) * np.asarray(favor_features(jnp.asarray(k), om)), -1)
        # Stabilising divides each vector's features by one positive constant.
        stab = np.asarray(favor_features(jnp.asarray(q), om, stabilise=True))
        raw = np.asarray(favor_features(jnp.asarray(q), om))
    exact = np.exp(np.sum(q * k, -1))
    np.testing.assert_allclose(est, exact, rtol=0.02)
    ratio = stab / raw
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-10)
    np.testing.assert_allclose(stab.max(-1), 1 / math.sqrt(om.shape[0]), rtol=1e-12)
    # Unit-norm directions (no chi norms) would be biased: the property can fail.
    with jax.enable_x64(True):
        unit = om / jnp.linalg.norm(om, axis=1, keepdims=True)
        bad = np.sum(np.asarray(favor_features(jnp.asarray(q), unit)) * np.asarray(favor_features(jnp.asarray(k), unit)), -1)
    assert np.max(np.abs(bad / exact - 1)) > 0.05


def test_performer_approximates_softmax_attention():
    # With many features the Performer is softmax attention with scores q·k/sqrt(dk),
    # and the error shrinks like m^-1/2 (an unbiased estimate, not a different kernel).
    # The estimator's variance grows like exp(|q + k|² / sqrt(dk)) and is heavy
    # tailed: modest scores (x · 0.4), a fixed input and the mean error over
    # three draws of ω keep this statistical check far from its thresholds.
    x = harness.random_input(np.random.default_rng(0), 1, 9, 16) * 0.4
    errs = {1024: 0.0, 65536: 0.0}
    for features, seed in ((f, s) for f in errs for s in range(3)):
        m = _get("performer")(causal=False, num_features=features)
        v = harness.init(m, x, seed=seed)
        p = params_of(v)
        x64 = np.asarray(x, np.float64)
        q, k, val = (
            (x64 @ p[f"{n}.kernel"] + p[f"{n}.bias"]).reshape(1, 9, 4, 4) for n in ("q_proj", "k_proj", "v_proj")
        )
        s = np.einsum("bthk,bshk->bhts", q, k) / 2.0
        a = np.exp(s - s.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        o = np.einsum("bhts,bshv->bthv", a, val).reshape(1, 9, 16)
        y_soft = o @ p["out_proj.kernel"] + p["out_proj.bias"]
        errs[features] += rel_err(m.apply(v, x), y_soft) / 3
    assert errs[65536] < 0.02 and errs[65536] < errs[1024] / 3, errs
    # elu + 1 linear attention is a different kernel: farther from softmax.
    assert rel_err(_get("linear_attention")(causal=False).apply(v, x), y_soft) > 3 * errs[65536]


def test_performer_features_per_layer_and_fixed(rng):
    m = _get("performer")()
    x = harness.random_input(rng, 1, 5, 16)
    v1, v2 = harness.init(m, x, seed=0), harness.init(m, x, seed=1)
    assert np.abs(np.asarray(v1["constants"]["omega"]) - np.asarray(v2["constants"]["omega"])).max() > 0.1
    # The draws are an input of apply, not redrawn: other constants, other outputs.
    v3 = {"params": v1["params"], "constants": v2["constants"]}
    assert rel_err(m.apply(v3, x), m.apply(v1, x)) > 1e-3
    with pytest.raises(Exception, match="constants"):
        m.apply({"params": v1["params"]}, x)


# --- state and configuration -----------------------------------------------------------------


@pytest.mark.parametrize("name, features", [("linear_attention", 4), ("performer", 8), ("performer", 5)])
def test_state_size(rng, name, features):
    # Per head: S (m x dv) and z (m), float32; h = 4, dv = 4. The bidirectional
    # form has no step but reports the same carry, that of a chunk-by-chunk pass.
    kw = {"num_features": features} if name == "performer" else {}
    expected = 4 * features * (4 + 1) * 4
    x = harness.random_input(rng, 1, 3, 16)
    for m in (_get(name)(d_model=16, **kw), _get(name)(causal=False, **kw)):
        v = harness.init(m, x)
        assert m.apply(v, 100, method="state_size") == expected
        if not m.causal:
            with pytest.raises(ValueError, match="not causal"):
                m.apply(v, 1, method="init_cache")


@pytest.mark.parametrize("name, field, value, d_model", [
    ("linear_attention", "num_heads", 3, 16), ("performer", "num_heads", 3, None),
    ("performer", "num_features", 0, 16), ("performer", "eps", 0.0, None),
    ("linear_attention", "causal", "yes", None), ("linear_attention", "chunk_size", 0, 16),
])
def test_config_errors(rng, name, field, value, d_model):
    # One ConfigError naming the field: at construction, or at init where the
    # check needs the width and d_model is None.
    x = harness.random_input(rng, 1, 4, 16)
    with pytest.raises(ConfigError, match=rf"^{name}\.{field}={value!r} must"):
        get(name)(d_model=d_model, **{field: value}).init(jax.random.PRNGKey(0), x)
