"""Tests of the online-softmax monoid against float64 softmax written as loops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops import online_softmax as osm
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close


def softmax_loop(scores, values, mask=None):
    """Float64 softmax-weighted average, one row at a time: (r, n), (r, n, v) -> (r, v), (r,)."""
    scores, values = np.asarray(scores, np.float64), np.asarray(values, np.float64)
    outs, lses = [], []
    for r in range(scores.shape[0]):
        keep = np.ones(scores.shape[1], bool) if mask is None else np.asarray(mask[r])
        if not keep.any():
            outs.append(np.zeros(values.shape[-1]))
            lses.append(-np.inf)
            continue
        s = scores[r][keep]
        w = np.exp(s - s.max())
        outs.append((w[:, None] * values[r][keep]).sum(0) / w.sum())
        lses.append(s.max() + np.log(w.sum()))
    return np.stack(outs), np.array(lses)


def random_state(rng, shape, dv, dtype=np.float32):
    m = rng.standard_normal(shape) * 3
    l = rng.uniform(0.5, 5.0, shape)
    acc = rng.standard_normal(shape + (dv,))
    return osm.SoftmaxState(*(jnp.asarray(x, dtype) for x in (m, l, acc)))


def test_commutative_exactly(rng):
    a, b = random_state(rng, (4, 5), 3), random_state(rng, (4, 5), 3)
    ab, ba = osm.merge(a, b), osm.merge(b, a)
    for x, y in zip(ab, ba):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_associative(rng):
    with jax.enable_x64(True):
        a, b, c = (random_state(rng, (6,), 4, np.float64) for _ in range(3))
        left = osm.merge(osm.merge(a, b), c)
        right = osm.merge(a, osm.merge(b, c))
        np.testing.assert_array_equal(np.asarray(left.m), np.asarray(right.m))
        assert_rel_close(left.l, right.l, RTOL_F64, "l")
        assert_rel_close(left.acc, right.acc, RTOL_F64, "acc")
    a, b, c = (random_state(rng, (6,), 4) for _ in range(3))
    left, right = osm.merge(osm.merge(a, b), c), osm.merge(a, osm.merge(b, c))
    assert_rel_close(left.acc, right.acc, 1e-6, "f32")


def test_merge_broadcasts_over_leading_axes(rng):
    a = random_state(rng, (3, 1), 2)
    b = random_state(rng, (1, 5), 2)
    out = osm.merge(a, b)
    assert out.m.shape == (3, 5) and out.acc.shape == (3, 5, 2)
    ref = osm.merge(jax.tree.map(lambda x: jnp.broadcast_to(x, (3, 5) + x.shape[2:]), a),
                    jax.tree.map(lambda x: jnp.broadcast_to(x, (3, 5) + x.shape[2:]), b))
    np.testing.assert_array_equal(np.asarray(out.acc), np.asarray(ref.acc))


@pytest.mark.parametrize("n", [1, 7, 37])
def test_any_split_equals_one_shot(rng, n):
    scores = rng.standard_normal((3, n)) * 4
    values = rng.standard_normal((3, n, 5))
    mask = rng.uniform(size=(3, n)) < 0.8
    mask[1] = False  # one row with no visible key
    expected, expected_lse = softmax_loop(scores, values, mask)
    with jax.enable_x64(True):
        for _ in range(4):
            n_cuts = min(n - 1, int(rng.integers(0, 4)))
            cuts = np.sort(rng.choice(np.arange(1, n), size=n_cuts, replace=False)) if n_cuts else []
            bounds = [0, *cuts, n]
            pieces = [osm.from_scores(scores[:, a:b], values[:, a:b], mask[:, a:b])
                      for a, b in zip(bounds[:-1], bounds[1:])]
            rng.shuffle(pieces)  # any order: the merge is commutative
            state = functools.reduce(osm.merge, pieces, osm.empty((3,), 5, jnp.float64))
            assert_rel_close(osm.finalize(state), expected, RTOL_F64, f"split {bounds}")
            lse = np.asarray(osm.logsumexp(state))
            assert np.isneginf(lse[1])
            np.testing.assert_allclose(lse[[0, 2]], expected_lse[[0, 2]], rtol=1e-12)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    state32 = osm.from_scores(f32(scores), f32(values), mask)
    assert state32.m.dtype == jnp.float32
    assert_rel_close(osm.finalize(state32), expected, 1e-5, "f32 one shot")


def test_from_scores_axis_and_broadcast_values(rng):
    # Keys on axis 0; values shared across the 4 query rows (size-1 axis).
    scores = rng.standard_normal((6, 4))
    values = rng.standard_normal((1, 6, 3))
    with jax.enable_x64(True):
        out = osm.finalize(osm.from_scores(scores, values, axis=0))
    expected, _ = softmax_loop(scores.T, np.broadcast_to(values, (4, 6, 3)))
    assert_rel_close(out, expected, RTOL_F64, "axis=0")


def test_minus_inf_cases():
    e = osm.empty((2,), 3)
    s = osm.SoftmaxState(jnp.array([0.5, -1.0]), jnp.array([2.0, 1.0]), jnp.ones((2, 3)))
    for merged in (osm.merge(e, s), osm.merge(s, e)):
        for x, y in zip(merged, s):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    both = osm.merge(e, e)
    assert np.all(np.isneginf(np.asarray(both.m)))
    np.testing.assert_array_equal(np.asarray(both.l), 0.0)
    np.testing.assert_array_equal(np.asarray(osm.finalize(both)), 0.0)
    assert np.all(np.isneginf(np.asarray(osm.logsumexp(both))))
    masked = osm.from_scores(jnp.ones((2, 4)), jnp.ones((2, 4, 3)), jnp.zeros((2, 4), bool))
    assert np.all(np.isneginf(np.asarray(masked.m)))
    np.testing.assert_array_equal(np.asarray(masked.l), 0.0)
    np.testing.assert_array_equal(np.asarray(masked.acc), 0.0)


def test_minus_inf_gradients_are_finite(rng):
    scores = jnp.asarray(rng.standard_normal((3, 6)) * 30)  # large: exp overflow if unshifted
    values = jnp.asarray(rng.standard_normal((3, 6, 2)))
    mask = np.ones((3, 6), bool)
    mask[0] = False  # fully masked row
    mask[1, :3] = False  # first piece of row 1 is empty

    def loss(scores, values):
        a = osm.from_scores(scores[:, :3], values[:, :3], mask[:, :3])
        b = osm.from_scores(scores[:, 3:], values[:, 3:], mask[:, 3:])
        st = osm.merge(osm.merge(a, osm.empty((3,), 2)), b)
        lse = osm.logsumexp(st)
        return jnp.sum(osm.finalize(st) ** 2) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0))

    gs, gv = jax.grad(loss, argnums=(0, 1))(scores, values)
    assert np.all(np.isfinite(np.asarray(gs))) and np.all(np.isfinite(np.asarray(gv)))
    # Hidden keys and the empty row get exactly zero gradient.
    np.testing.assert_array_equal(np.asarray(gs)[~mask], 0.0)
    np.testing.assert_array_equal(np.asarray(gv)[0], 0.0)
    assert np.abs(np.asarray(gs)[mask]).max() > 0


def prefix_softmax_loop(scores, values, mask):
    """Float64 out[t] = softmax over positions <= t, by an explicit loop over t."""
    rows = []
    for t in range(scores.shape[1]):
        out, _ = softmax_loop(scores[:, : t + 1], values[:, : t + 1], mask[:, : t + 1])
        rows.append(out)
    return np.stack(rows, axis=1)


@jax.jit
def _prefix_scan(scores, values, mask):
    # One key per position: m = s, l = 1, acc = v (or the empty state if masked).
    single = osm.from_scores(scores[..., None], values[..., None, :], mask[..., None])
    return osm.finalize(jax.lax.associative_scan(osm.merge, single, axis=1))


def test_associative_scan_equals_prefix_softmax(rng):
    b, n, dv = 2, 37, 3
    scores = rng.standard_normal((b, n)) * 3
    values = rng.standard_normal((b, n, dv))
    mask = rng.uniform(size=(b, n)) < 0.7
    mask[:, :2] = False  # empty prefixes: outputs 0
    expected = prefix_softmax_loop(scores, values, mask)
    with jax.enable_x64(True):
        out = _prefix_scan(jnp.asarray(scores), jnp.asarray(values), mask)
        np.testing.assert_array_equal(np.asarray(out[:, :2]), 0.0)
        assert_rel_close(out, expected, RTOL_F64, "f64 prefix scan")
    out32 = _prefix_scan(jnp.asarray(scores, jnp.float32), jnp.asarray(values, jnp.float32), mask)
    assert_rel_close(out32, expected, 1e-5, "f32 prefix scan")


def _prefix_loop_jnp(scores, values, mask):
    """The same prefix softmax as prefix_softmax_loop, written with jnp for autodiff."""
    rows = []
    for t in range(scores.shape[1]):
        keep = mask[:, : t + 1]
        s = jnp.where(keep, scores[:, : t + 1], -jnp.inf)
        m = jnp.max(s, axis=1, keepdims=True)
        m = jnp.where(keep.any(1, keepdims=True), m, 0.0)
        e = jnp.exp(jnp.where(keep, scores[:, : t + 1] - m, -jnp.inf))
        den = jnp.sum(e, 1, keepdims=True)
        w = e / jnp.where(den > 0, den, 1.0)
        rows.append(jnp.sum(w[..., None] * values[:, : t + 1], axis=1))
    return jnp.stack(rows, axis=1)


def test_associative_scan_gradients(rng):
    b, n, dv = 2, 13, 3
    scores = rng.standard_normal((b, n)) * 2
    values = rng.standard_normal((b, n, dv))
    mask = rng.uniform(size=(b, n)) < 0.8
    mask[0, 0] = False
    w = rng.standard_normal((b, n, dv))
    with jax.enable_x64(True):
        ref = jax.jit(jax.grad(lambda s, v: jnp.sum(_prefix_loop_jnp(s, v, mask) * w), argnums=(0, 1)))(
            jnp.asarray(scores), jnp.asarray(values))
        got = jax.jit(jax.grad(lambda s, v: jnp.sum(_prefix_scan(s, v, mask) * w), argnums=(0, 1)))(
            jnp.asarray(scores), jnp.asarray(values))
        for g, r, name in zip(got, ref, ("dscores", "dvalues")):
            assert_rel_close(g, r, RTOL_F64, name)
    got32 = jax.jit(jax.grad(lambda s, v: jnp.sum(_prefix_scan(s, v, mask) * w), argnums=(0, 1)))(
        jnp.asarray(scores, jnp.float32), jnp.asarray(values, jnp.float32))
    for g, r, name in zip(got32, ref, ("dscores f32", "dvalues f32")):
        assert_rel_close(g, r, RTOL_GRAD, name)
