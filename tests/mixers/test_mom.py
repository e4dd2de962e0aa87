"""Mixture-of-Memories: float64 reference (outputs, gradients, matrix), routing, step, balance loss, complexity.

The contract (step vs parallel, causality, segments, mixing matrix vs the
fast path, bfloat16, state_size vs the cache, ...) is checked for every mixer
in ``test_contract.py``; here the float64 oracle of the paper's equations
(``ref_mom.py``) and what is MoM's own: only routed memories change, the
routing weights, the load-balancing loss, memory growth and long inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from seqjax.mixers.mom import load_balancing_loss, route
from tests.mixers import harness
from tests.mixers.harness import Jitted
from tests.mixers.ref_linear_mixers import check_float32, check_float64, check_gradients, params_of, perturb
from tests.mixers.ref_mom import mom_matrix, mom_reference
from tests.ops.utils import assert_rel_close

KINDS = ["gated_delta", "gla"]
SLOW = pytest.mark.slow
SMALL = dict(num_heads=2, num_memories=3, top_k=2)


def _make(**kwargs):
    return Jitted(get("mom")(**{**SMALL, **kwargs}), eager_init=True)


def _cfg(m, width=16):
    mod = m.module if isinstance(m, Jitted) else m
    h, dk, dv = mod._dims(width)
    return dict(heads=h, dk=dk, dv=dv, num_memories=mod.num_memories, top_k=mod.top_k,
                shared=mod.shared_memory, kind=mod.memory, temperature=mod.gate_temperature)


def _reference(m, v, x, segment_ids=None, xp=np, params=None):
    p = params_of(v, xp=xp) if params is None else params
    return mom_reference(p, x, _cfg(m), m.norm_eps, segment_ids, xp)


def _matrix(m, v, x, segment_ids):
    return mom_matrix(params_of(v), np.asarray(x, np.float64), _cfg(m), segment_ids)


@pytest.mark.parametrize("kind, impl, length, extra", [
    ("gated_delta", "chunked", 23, {}),  # a prime length: a ragged last chunk
    ("gla", "chunked", 23, {}),
    pytest.param("gated_delta", "sequential", 13, dict(top_k=1, shared_memory=False), marks=SLOW),
    pytest.param("gla", "sequential", 13, dict(top_k=3, num_memories=3), marks=SLOW),
])
def test_float32_matches_reference(rng, kind, impl, length, extra):
    m = _make(memory=kind, impl=impl, chunk_size=8, **extra)
    x = harness.random_input(rng, 2, length, 16)
    v = perturb(harness.init(m, x), rng)
    check_float32(m, v, x, _reference, rng, f"mom {kind} {impl} l={length} {extra}")


@pytest.mark.parametrize("kind", [pytest.param("gated_delta", marks=SLOW), "gla"])
def test_float64_op_matrix_and_reference_matrix(rng, kind):
    check_float64(lambda **kw: _make(memory=kind, **kw), rng, _reference, _matrix, f"mom {kind}")


@pytest.mark.parametrize("kind", [pytest.param("gated_delta", marks=SLOW), "gla"])
def test_gradients_match_reference(rng, kind):
    # Gradients w.r.t. x and every parameter (router included: through the weights g; with
    # top_k = 1 the renormalised weight is always 1 and the router would get no gradient).
    m = _make(memory=kind, impl="chunked", chunk_size=4)
    x = rng.standard_normal((1, 6, 16))
    v = perturb(harness.jit_init(m, jnp.float32(x)), rng)
    seg = np.array([[0] * 3 + [1] * 3])  # chunks of 4: a reset inside the first, a ragged second
    check_gradients(m, v, x, seg, _reference, rng)


def test_route_is_softmax_topk_renormalised(rng):
    logits = rng.standard_normal((3, 5, 6))
    weights, mask = route(jnp.asarray(logits), 2)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    top = np.argsort(-p, axis=-1)[..., :2]
    want_mask = np.zeros_like(p)
    np.put_along_axis(want_mask, top, 1.0, axis=-1)
    want = want_mask * p / (want_mask * p).sum(-1, keepdims=True)
    np.testing.assert_array_equal(np.asarray(mask), want_mask)
    np.testing.assert_allclose(np.asarray(weights), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["gated_delta", pytest.param("gla", marks=SLOW)])
def test_step_updates_only_the_routed_memories(rng, kind):
    m = _make(memory=kind, num_memories=4, top_k=1, d_model=16)
    x = harness.random_input(rng, 2, 4, 16)
    cache = m.module.init_cache(2)  # d_model set: no parameters needed
    v = perturb(m.init(jax.random.PRNGKey(0), x[:, 0], cache, method="step"), rng)
    bound = m.module.bind(v)
    for t in range(x.shape[1]):
        _, new = m.apply(v, x[:, t], cache, method="step")
        _, routed = route(bound.router_logits(x[:, t : t + 1])[:, 0], 1)
        changed = np.abs(np.asarray(new["S"] - cache["S"])).reshape(2, 5, -1).max(-1) > 0  # (b, M+1)
        routed = np.concatenate([np.asarray(routed) > 0, np.ones((2, 1), bool)], axis=1)  # shared: always
        np.testing.assert_array_equal(changed, routed)
        cache = new


def test_load_balancing_loss_matches_numpy(rng):
    logits = rng.standard_normal((2, 9, 4))
    mask = np.ones((2, 9))
    mask[1, 6:] = 0
    loss = jax.jit(load_balancing_loss, static_argnums=1)
    got = float(loss(jnp.asarray(logits), 2, jnp.asarray(mask)))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    losses = []
    for b in range(2):
        keep = mask[b] > 0
        pb = p[b, keep]
        routed = np.zeros_like(pb)
        np.put_along_axis(routed, np.argsort(-pb, axis=-1)[:, :2], 1.0, axis=-1)
        g = routed * pb / (routed * pb).sum(-1, keepdims=True)
        losses.append(4 * np.sum(routed.mean(0) * g.mean(0)))
    np.testing.assert_allclose(got, np.mean(losses), rtol=1e-5)
    # Perfectly balanced routing gives top_k; a collapsed router (always the same two) gives more.
    balanced = np.log(np.eye(4) + np.roll(np.eye(4), 1, axis=1) + 1e-9)[None]  # token i: memories i, i+1
    collapsed = np.tile(np.log(np.array([1.0, 1.0, 1e-9, 1e-9])), (4, 1))[None]
    assert abs(float(loss(jnp.asarray(balanced), 2)) - 2.0) < 1e-4
    assert float(loss(jnp.asarray(collapsed), 2)) > 3.9
    # The router learns through it.
    grad = jax.jit(jax.grad(lambda z: load_balancing_loss(z, 2)))(jnp.asarray(logits, jnp.float32))
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0


def test_state_size_is_every_memory():
    # (M + 1) states of h·dk·dv float32: the mixer trades state for recall.
    assert get("mom")(d_model=16, num_heads=2, num_memories=3).state_size() == (3 + 1) * 2 * 8 * 8 * 4
    m = get("mom")(d_model=16, num_heads=2, num_memories=3, shared_memory=False, expand_v=2)
    assert m.state_size() == 3 * 2 * 8 * 16 * 4


@SLOW
@pytest.mark.parametrize("kind", KINDS)
def test_memory_grows_linearly_with_length(rng, kind):
    ratio = harness.check_memory_growth(get("mom")(memory=kind, impl="chunked", chunk_size=16, **SMALL), rng,
                                        length=64, exponent=1.0)
    assert ratio > 2.0, f"memory ratio {ratio:.2f}: the measurement saw no growth at all"


def test_length_one(rng):
    m = _make(memory="gla", impl="sequential")
    x = harness.random_input(rng, 2, 1, 16)
    v = perturb(harness.init(m, x), rng)
    assert_rel_close(m.apply(v, x), _reference(m, v, np.asarray(x, np.float64)), harness.RTOL, "l=1")


@SLOW
@pytest.mark.parametrize("kind", KINDS)
def test_long_bfloat16_is_finite(rng, kind):
    m = get("mom")(memory=kind, dtype=jnp.bfloat16, **SMALL)
    x = harness.random_input(rng, 1, 4096, 16).astype(jnp.bfloat16)
    v = harness.jit_init(m, x)
    y = jax.jit(m.apply)(v, x)
    assert y.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y, np.float32)).all()
    g = jax.jit(jax.grad(lambda v, x: jnp.sum(m.apply(v, x).astype(jnp.float32) ** 2)))(v, x)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(g))


def test_bad_fields_name_the_field():
    with pytest.raises(ConfigError, match=r"^mom\.top_k=5 must be an int in \[1, num_memories=4\]"):
        get("mom")(top_k=5)
    with pytest.raises(ConfigError, match=r"^mom\.memory='nope' is not allowed; allowed: 'gla', 'gated_delta'"):
        get("mom")(memory="nope")
    with pytest.raises(ConfigError, match=r"^mom\.num_memories=0"):
        get("mom")(num_memories=0)
    with pytest.raises(ConfigError, match=r"^mom\.shared_memory=1"):
        get("mom")(shared_memory=1)
    with pytest.raises(ConfigError, match=r"^mom\.impl='associative' is not an implementation of "):
        get("mom")(impl="associative")
    with pytest.raises(ConfigError, match=r"^mom\.num_heads=3 must divide d_model=16"):
        get("mom")(num_heads=3, d_model=16)
    get("mom")(memory="gla", impl="reference")  # linear_attention has one


@pytest.mark.parametrize("kind, op", [
    ("gated_delta", "delta_rule"), pytest.param("gla", "linear_attention", marks=SLOW),
])
def test_impl_reaches_the_op(rng, monkeypatch, kind, op):
    from seqjax.ops import dispatch

    seen = []
    original = dispatch.implementation

    def spy(name, impl):
        seen.append((name, impl))
        return original(name, impl)

    monkeypatch.setattr(dispatch, "implementation", spy)
    m = get("mom")(memory=kind, impl="sequential", **SMALL)
    x = harness.random_input(rng, 1, 5, 16)
    v = jax.eval_shape(m.init, jax.random.PRNGKey(0), x)  # shapes only: the spy sees the trace
    jax.eval_shape(m.apply, v, x)
    assert (op, "sequential") in seen
