"""DeltaNet and Gated DeltaNet: float64 references, closed-form matrices, gradients, init, complexity.

The contract (step, causality, segments, mixing matrix vs the fast path,
bfloat16, state_size vs the cache, ...) is checked for every mixer in
``test_contract.py``.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.harness import Jitted
from tests.mixers.ref_delta import delta_branches, delta_matrix, delta_reference
from tests.mixers.ref_linear_mixers import check_float32, check_float64, check_gradients, params_of, perturb

NAMES = ["deltanet", "gated_deltanet"]
# One mixer per check runs by default (gated_deltanet's path is DeltaNet's plus the
# gate); the other is marked slow, to keep the default run short.
SLOW = pytest.mark.slow


def _both(default="gated_deltanet"):
    return [name if name == default else pytest.param(name, marks=SLOW) for name in NAMES]


def _make(name, **kwargs):
    return Jitted(get(name)(**kwargs), eager_init=True)


def _dims(m, width=16):
    return m.module._dims(width) if isinstance(m, Jitted) else m._dims(width)


def _reference(m, v, x, segment_ids=None, xp=np, params=None):
    p = params_of(v, xp=xp) if params is None else params
    h, dk, dv = _dims(m)
    return delta_reference(p, x, h, dk, dv, m.mixer_name == "gated_deltanet", m.norm_eps, segment_ids, xp)


def _matrix(m, v, x, segment_ids):
    h, dk, dv = _dims(m)
    return delta_matrix(params_of(v), np.asarray(x, np.float64), h, dk, dv, m.mixer_name == "gated_deltanet",
                        segment_ids)


@pytest.mark.parametrize("name, impl, length", [
    ("deltanet", "sequential", 13), ("gated_deltanet", "chunked", 21),
    pytest.param("deltanet", "chunked", 37, marks=SLOW), pytest.param("gated_deltanet", "sequential", 13, marks=SLOW),
])
def test_float32_matches_reference(rng, name, impl, length):
    m = _make(name, num_heads=2, impl=impl, chunk_size=8)
    x = harness.random_input(rng, 2, length, 16)
    v = perturb(harness.init(m, x), rng)
    check_float32(m, v, x, _reference, rng, f"{name} {impl} l={length}")


@pytest.mark.parametrize("name", _both())
def test_float64_op_matrix_and_closed_form(rng, name):
    check_float64(lambda **kw: _make(name, num_heads=2, **kw), rng, _reference, _matrix, name)


@pytest.mark.parametrize("name", _both())
def test_gradients_match_reference(rng, name):
    m = _make(name, num_heads=2, impl="chunked", chunk_size=4)
    x = rng.standard_normal((1, 7, 16))
    v = perturb(harness.jit_init(m, jnp.float32(x)), rng)
    seg = np.array([[0] * 4 + [1] * 3])  # two chunks of 4, a reset inside the second
    check_gradients(m, v, x, seg, _reference, rng)


def test_paper_shapes_and_init(rng):
    m = get("gated_deltanet")(num_heads=2, head_dim=8, expand_v=2)
    x = harness.random_input(rng, 2, 7, 16)
    v = harness.jit_init(m, x)
    p = params_of(v)
    assert p["q_proj.kernel"].shape == (16, 16) and p["v_proj.kernel"].shape == (16, 32)
    assert p["g_proj.kernel"].shape == (16, 32) and p["norm"].shape == (16,)
    assert p["conv_weight"].shape == (4, 2 * 16 + 32)
    assert not any(key.endswith(".bias") for key in p), sorted(p)  # no biases anywhere, as in the code
    A = np.exp(p["A_log"])
    assert np.all((A >= 1.0) & (A <= 16.0))
    dt = np.log1p(np.exp(p["dt_bias"]))
    assert np.all((dt >= 1e-3 - 1e-9) & (dt <= 1e-1 + 1e-9))
    # The projections give unit keys, scaled unit queries, β in (0, 1) and gates in (0, 1].
    q, k, _, beta, log_alpha, _ = delta_branches(p, np.asarray(x, np.float64), 2, 8, 16, True)
    np.testing.assert_allclose(np.linalg.norm(k, axis=-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 8**-0.5, atol=1e-4)
    assert np.all((beta > 0) & (beta < 1)) and np.all(log_alpha <= 0)
    # h·dk·dv float32 for S, plus the conv window: (d_conv - 1)·h·(2dk + dv) inputs.
    assert m.bind(v).state_size() == 2 * 8 * 16 * 4 + 3 * 2 * (2 * 8 + 16) * 4
    d = get("deltanet")(num_heads=4)
    assert d.bind(harness.jit_init(d, x)).state_size() == 4 * 4 * 4 * 4 + 3 * 4 * 12 * 4


@pytest.mark.parametrize("name", _both("deltanet"))
def test_memory_grows_linearly_with_length(rng, name):
    # Chunked delta rule: O(L·C) scores and one state per chunk, so 4x the length is ~4x the memory.
    ratio = harness.check_memory_growth(get(name)(num_heads=2, impl="chunked", chunk_size=16), rng,
                                        length=64, exponent=1.0)
    assert ratio > 2.0, f"memory ratio {ratio:.2f}: the measurement saw no growth at all"


def test_bad_fields_name_the_field():
    with pytest.raises(ConfigError, match=r"^gated_deltanet\.head_dim=0"):
        get("gated_deltanet")(head_dim=0)
    with pytest.raises(ConfigError, match=r"^gated_deltanet\.A_init_range=\(0, 16\)"):
        get("gated_deltanet")(A_init_range=(0, 16))
    with pytest.raises(ConfigError, match=r"^gated_deltanet\.dt_min=0"):
        get("gated_deltanet")(dt_min=0)
    with pytest.raises(ConfigError, match=r"^deltanet\.num_heads=3 must divide d_model=16"):
        get("deltanet")(num_heads=3, d_model=16)
    with pytest.raises(ConfigError, match=r"^deltanet\.norm_eps=0"):
        get("deltanet")(norm_eps=0)
    with pytest.raises(ConfigError, match=r"^deltanet\.chunk_size=0"):
        get("deltanet")(chunk_size=0)
    # head_dim frees the width from the heads.
    m = get("gated_deltanet")(num_heads=3, head_dim=4, d_model=16)
    assert m._dims(16) == (3, 4, 8)


def test_impl_reaches_the_op(rng, monkeypatch):
    from seqjax.ops import dispatch

    seen = []
    original = dispatch.implementation

    def spy(op, impl):
        seen.append((op, impl))
        return original(op, impl)

    monkeypatch.setattr(dispatch, "implementation", spy)
    m = get("deltanet")(num_heads=2, impl="sequential")
    x = harness.random_input(rng, 1, 5, 16)
    m.apply(harness.init(m, x), x)
    assert ("delta_rule", "sequential") in seen
