"""Moneta, Yaad and Memora against the float64 NumPy reference of Miras' equations (ref_miras).

The contract (step vs parallel, causality, segments, bfloat16, state size) is
checked for all three by ``test_contract.py``; here: the layer's output
against the hand-written float64 loop (sequential and chunk-wise, with
packed segments, lengths 1 and 13), float64 exactness, gradients of every
parameter and of x against finite differences of the reference, the chunk
size as an approximation, the fields' checks. One mixer per expensive check
runs by default, the others are marked slow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.harness import Jitted
from tests.mixers.ref_linear_mixers import params_of, perturb
from tests.mixers.ref_miras import miras_reference
from tests.ops.utils import RTOL_F64, assert_rel_close, rel_err

NAMES = ["moneta", "yaad", "memora"]
SLOW = pytest.mark.slow


def _one(default):
    return [name if name == default else pytest.param(name, marks=SLOW) for name in NAMES]


def _make(name, **kwargs):
    return Jitted(get(name)(num_heads=2, **kwargs))


def _ref(m, v, x, seg=None, chunk_size=1):
    return miras_reference(params_of(v), x, m.mixer_name, m.num_heads, m.norm_eps, seg, chunk_size, m.max_lr)


@pytest.mark.parametrize("name, impl, chunk, length", [
    # memora slow: its op path is checked by default in test_memory_update.py, its layer by the contract
    *[(name, "chunked", 4, 13) if name != "memora" else pytest.param(name, "chunked", 4, 13, marks=SLOW)
      for name in NAMES],
    # length 1 (slow: the op's own test covers length 1, the contract the first step)
    *[pytest.param(name, "sequential", 1, 1, marks=SLOW) for name in NAMES],
])
def test_float32_matches_reference(rng, name, impl, chunk, length):
    m = _make(name, impl=impl, chunk_size=chunk)
    x = harness.random_input(rng, 2, length, 16)
    v = perturb(harness.init(m, x), rng)
    seg = np.array([[0] * (length // 2) + [1] * (length - length // 2), [3] * length])
    y = m.apply(v, x, segment_ids=jnp.asarray(seg))
    assert_rel_close(y, _ref(m, v, np.asarray(x, np.float64), seg, chunk), harness.RTOL, f"{name} {impl}")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_float64_exact(rng, name):
    x = rng.standard_normal((2, 11, 16))
    seg = np.array([[0] * 6 + [1] * 5, [0] * 11])
    with jax.enable_x64(True):
        m = _make(name, dtype=jnp.float64, chunk_size=3)
        v = perturb(harness.init(m, jnp.asarray(x)), rng)
        y = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
    assert_rel_close(y, _ref(m, v, x, seg, 3), RTOL_F64, name)


@pytest.mark.parametrize("name", _one("moneta"))
def test_gradients_match_finite_differences(rng, name):
    """⟨∇(Σ w ⊙ y), u⟩ for a random direction u over every parameter and x, vs a central difference."""
    x = rng.standard_normal((1, 6, 16))
    seg = np.array([[0] * 4 + [1] * 2])
    w = rng.standard_normal(x.shape)
    with jax.enable_x64(True):
        m = _make(name, dtype=jnp.float64, chunk_size=3)
        v = perturb(harness.init(m, jnp.asarray(x)), rng)
        params = jax.tree.map(jnp.asarray, v["params"])

        def loss(params, x):
            return jnp.sum(m.apply({"params": params}, x, segment_ids=jnp.asarray(seg)) * w)

        g_p, g_x = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))
    leaves, tree = jax.tree.flatten(params)
    u_leaves = [rng.standard_normal(np.shape(a)) for a in leaves]
    u_x = rng.standard_normal(x.shape)
    analytic = sum(float(np.sum(np.asarray(g) * u)) for g, u in zip(jax.tree.leaves(g_p), u_leaves))
    analytic += float(np.sum(np.asarray(g_x) * u_x))

    def ref_loss(eps):
        moved = jax.tree.unflatten(tree, [np.asarray(a, np.float64) + eps * u for a, u in zip(leaves, u_leaves)])
        return float(np.sum(_ref(m, {"params": moved}, x + eps * u_x, seg, 3) * w))

    eps = 1e-5
    fd = (ref_loss(eps) - ref_loss(-eps)) / (2 * eps)
    assert abs(analytic - fd) <= 1e-6 * max(1.0, abs(fd)), (analytic, fd)


@pytest.mark.slow
def test_chunk_size_is_the_papers_approximation(rng):
    """Chunked C = 8 gives other numbers than the exact recurrence (the gradients lag; 0.41 relative here)."""
    m1, m8 = _make("yaad", impl="sequential", max_lr=1.0), _make("yaad", chunk_size=8, max_lr=1.0)
    x = harness.random_input(rng, 2, 32, 16)
    v = perturb(harness.init(m1, x), rng)
    err = rel_err(m8.apply(v, x), m1.apply(v, x))
    print(f"yaad chunked C=8 vs sequential, l=32, max_lr=1: {err:.3e}")
    assert np.isfinite(err) and err > 1e-5, err


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_long_bfloat16_is_finite(rng, name):
    m = _make(name, dtype=jnp.bfloat16, chunk_size=64)
    x = harness.random_input(rng, 1, 4096, 16).astype(jnp.bfloat16)
    v = harness.init(m, x)
    y = m.apply(v, x)
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))


def test_moneta_initial_weights_have_the_intended_scale():
    """φ(memory_w) (the weights the memory starts from) is N(0, 0.02²) / N(0, 1/dk), not the raw state's scale."""
    from seqjax.ops.memory_update import retained

    m = get("moneta")(num_heads=2)
    keys = jax.random.split(jax.random.PRNGKey(0))
    raw = (m._memory_init(0.02)(keys[0], (2, 8, 16)), m._memory_init(8**-0.5)(keys[1], (2, 16, 8)))
    w1, w2 = jax.vmap(lambda a, b: retained((a, b), "lq", 4.0))(*raw)
    assert 0.015 < float(jnp.std(w1)) < 0.025 and 0.25 < float(jnp.std(w2)) < 0.45


def test_fields_are_checked():
    with pytest.raises(ConfigError, match="moneta.p="):
        get("moneta")(p=1.0)
    with pytest.raises(ConfigError, match="moneta.q="):
        get("moneta")(q=1.0)
    with pytest.raises(ConfigError, match="yaad.max_lr="):
        get("yaad")(max_lr=0.0)
    with pytest.raises(ConfigError, match="yaad.chunk_size="):
        get("yaad")(chunk_size=0)
    with pytest.raises(ConfigError, match="memora.num_heads"):
        get("memora")(d_model=16, num_heads=3)
    with pytest.raises(ConfigError, match="memora.impl"):
        get("memora")(impl="fft")
