"""Tests of the ICL function-class samplers, token layout and curriculum (seqjax.data.icl)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.data import icl
from seqjax.errors import ConfigError


def _key(rng):
    return jax.random.key(int(rng.integers(2**31)))


def _sample(key, task, b, n, d, **kw):
    """sample_batch under jit (eager dispatch of every op is slow on a busy CPU)."""
    return jax.jit(lambda k: icl.sample_batch(k, task, b, n, d, **kw))(key)


@pytest.mark.parametrize("task", icl.FUNCTION_CLASSES)
def test_shapes_inactive_coordinates_and_determinism(task, rng):
    key = _key(rng)
    kwargs = {"hidden_size": 8} if task == "relu2nn" else {}
    out = icl.sample_batch(key, task, 6, 9, 5, active_dim=3, noise_std=0.0, **kwargs)
    xs, ys = np.asarray(out["xs"]), np.asarray(out["ys"])
    assert xs.shape == (6, 9, 5) and ys.shape == (6, 9)
    assert out["xs"].dtype == jnp.float32 and out["ys"].dtype == jnp.float32
    assert np.all(np.isfinite(ys))
    assert np.all(xs[..., 3:] == 0)  # curriculum: inactive coordinates zero
    assert np.all(np.abs(xs[..., :3]) > 0)
    assert np.std(ys) > 0
    # Deterministic given the key, eager or jitted (traced active_dim); another key differs.
    f = jax.jit(lambda k, a: icl.sample_batch(k, task, 6, 9, 5, active_dim=a, **kwargs))
    np.testing.assert_allclose(np.asarray(f(key, 3)["ys"]), ys, rtol=1e-5, atol=1e-5)
    other = f(jax.random.fold_in(key, 1), 3)
    assert not np.allclose(np.asarray(other["xs"]), xs)


def test_linear_is_exact_and_weights_inactive_zero(rng):
    out = _sample(_key(rng), "linear", 16, 10, 6, active_dim=4)
    xs, ys, w = (np.asarray(out[k], np.float64) for k in ("xs", "ys", "w"))
    assert np.all(w[:, 4:] == 0) and np.all(w[:, :4] != 0)
    np.testing.assert_allclose(ys, np.einsum("bnd,bd->bn", xs, w), rtol=1e-5, atol=1e-5)


def test_noisy_linear_residual_variance(rng):
    sigma = 0.5
    out = _sample(_key(rng), "noisy_linear", 256, 16, 4, noise_std=sigma)
    xs, ys, w = (np.asarray(out[k], np.float64) for k in ("xs", "ys", "w"))
    resid = ys - np.einsum("bnd,bd->bn", xs, w)
    assert abs(resid.var() / sigma**2 - 1.0) < 0.1
    assert abs(resid.mean()) < 0.05


def test_sparse_linear_has_exactly_k_active_nonzeros(rng):
    out = _sample(_key(rng), "sparse_linear", 64, 5, 10, active_dim=6, sparsity=3)
    w = np.asarray(out["w"])
    assert np.all((w != 0).sum(axis=1) == 3)
    assert np.all(w[:, 6:] == 0)
    # The support is spread over all active coordinates, not a fixed subset.
    assert np.all((w[:, :6] != 0).sum(axis=0) > 0)
    np.testing.assert_allclose(
        np.asarray(out["ys"]), np.einsum("bnd,bd->bn", np.asarray(out["xs"]), w), rtol=1e-5, atol=1e-5
    )


def test_quadratic_formula(rng):
    out = _sample(_key(rng), "quadratic", 8, 7, 5)
    xs, ys, w = (np.asarray(out[k], np.float64) for k in ("xs", "ys", "w"))
    np.testing.assert_allclose(ys, np.einsum("bnd,bd->bn", xs**2, w) / math.sqrt(3), rtol=1e-5, atol=1e-5)


def test_linear_classification_labels_are_signs(rng):
    out = _sample(_key(rng), "linear_classification", 32, 12, 5, noise_std=0.3)
    xs, ys, w = (np.asarray(out[k], np.float64) for k in ("xs", "ys", "w"))
    assert set(np.unique(ys)) == {-1.0, 1.0}
    np.testing.assert_array_equal(ys, np.where(np.einsum("bnd,bd->bn", xs, w) >= 0, 1.0, -1.0))


def test_relu2nn_variance_matches_linear_scale(rng):
    out = _sample(_key(rng), "relu2nn", 1024, 8, 6, active_dim=4)
    ys = np.asarray(out["ys"], np.float64)
    assert abs(np.mean(ys**2) / 4.0 - 1.0) < 0.2  # sqrt(2/h) scaling: E y^2 = active_dim


def test_decision_tree_depth1_splits_on_one_active_sign(rng):
    out = _sample(_key(rng), "decision_tree", 32, 20, 6, active_dim=4, depth=1)
    xs, ys = np.asarray(out["xs"]), np.asarray(out["ys"])
    for b in range(xs.shape[0]):
        # Some active coordinate c with y a function of sign(x_c) alone.
        ok = False
        for c in range(4):
            right = xs[b, :, c] > 0
            if len(set(ys[b, right])) <= 1 and len(set(ys[b, ~right])) <= 1:
                ok = True
        assert ok, b


def test_decision_tree_depth4_has_at_most_16_leaves(rng):
    out = _sample(_key(rng), "decision_tree", 16, 200, 5)
    ys = np.asarray(out["ys"])
    counts = [len(np.unique(row)) for row in ys]
    assert max(counts) <= 16 and max(counts) > 2


def test_fourier_is_a_fourier_series_of_the_first_coordinate(rng):
    kmax, half = 3, 5.0
    out = _sample(_key(rng), "fourier", 4, 24, 1, max_freq=kmax, half_period=half)
    u = np.asarray(out["xs"], np.float64)[..., 0]
    ys = np.asarray(out["ys"], np.float64)
    assert np.all(np.abs(u) <= half)
    for b in range(4):
        basis = [np.cos(k * np.pi * u[b] / half) for k in range(kmax + 1)]
        basis += [np.sin(k * np.pi * u[b] / half) for k in range(1, kmax + 1)]
        a = np.stack(basis, axis=1)
        coef, *_ = np.linalg.lstsq(a, ys[b], rcond=None)
        assert np.max(np.abs(a @ coef - ys[b])) < 1e-4
    # A lower maximum frequency cannot fit it (the check above could fail).
    a2 = np.stack([np.cos(k * np.pi * u[0] / half) for k in range(2)], axis=1)
    coef2, *_ = np.linalg.lstsq(a2, ys[0], rcond=None)
    assert np.max(np.abs(a2 @ coef2 - ys[0])) > 1e-2


def test_sliding_window_reference(rng):
    window = 3
    out = _sample(_key(rng), "sliding_window", 5, 9, 4, window=window)
    xs, ys, w = (np.asarray(out[k], np.float64) for k in ("xs", "ys", "w"))
    assert w.shape == (5, window, 4)
    ref = np.zeros_like(ys)
    for b in range(5):
        for i in range(9):
            for j in range(window):
                if i - j >= 0:
                    ref[b, i] += w[b, j] @ xs[b, i - j]
    np.testing.assert_allclose(ys, ref, rtol=1e-5, atol=1e-5)


def test_traced_active_dim_does_not_recompile(rng):
    traces = []

    @jax.jit
    def f(key, active):
        traces.append(1)
        return icl.sample_batch(key, "sparse_linear", 4, 5, 6, active_dim=active)

    key = _key(rng)
    for a in (2, 4, 6):
        xs = np.asarray(f(key, a)["xs"])
        assert np.all(xs[..., a:] == 0) and np.all(xs[..., :a] != 0)
    assert len(traces) == 1


def test_errors():
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match=r"config\.task\.function_class.*allowed: linear"):
        icl.sample_batch(key, "cubic", 2, 3, 4)
    with pytest.raises(ConfigError, match=r"config\.task\.task_kwargs\.depth"):
        icl.sample_batch(key, "linear", 2, 3, 4, depth=3)
    with pytest.raises(ConfigError, match=r"config\.task\.task_kwargs\.window=0"):
        icl.sample_batch(key, "sliding_window", 2, 3, 4, window=0)
    with pytest.raises(ConfigError, match="active_dim"):
        icl.sample_batch(key, "linear", 2, 3, 4, active_dim=5)


def test_to_model_inputs_layout(rng):
    xs = rng.normal(size=(2, 4, 3)).astype(np.float32)
    ys = rng.normal(size=(2, 4)).astype(np.float32)
    tokens = np.asarray(icl.to_model_inputs(jnp.asarray(xs), jnp.asarray(ys)))
    assert tokens.shape == (2, 8, 3)
    for b in range(2):
        for i in range(4):
            np.testing.assert_array_equal(tokens[b, 2 * i], xs[b, i])
            np.testing.assert_array_equal(tokens[b, 2 * i + 1], [ys[b, i], 0.0, 0.0])


def test_curriculum_stages():
    c = icl.Curriculum()  # Garg's defaults
    assert c.at(0) == (5, 11)
    assert c.at(1999) == (5, 11)
    assert c.at(2000) == (6, 13)
    assert c.at(2000 * 15) == (20, 41)
    assert c.at(10**7) == (20, 41)
    c2 = icl.Curriculum(dim_start=2, dim_end=3, dim_inc=1, points_start=4, points_end=10, points_inc=3, interval=5)
    assert [c2.at(s) for s in (0, 4, 5, 10, 15)] == [(2, 4), (2, 4), (3, 7), (3, 10), (3, 10)]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"interval": 0}, "interval"),
        ({"dim_start": 0}, "dim_start"),
        ({"dim_start": 9, "dim_end": 5}, "dim_start"),
        ({"points_start": 50}, "points_start"),
        ({"dim_inc": 1.5}, "dim_inc"),
    ],
)
def test_curriculum_errors(kwargs, field):
    with pytest.raises(ConfigError, match=rf"config\.task\.curriculum\.{field}"):
        icl.Curriculum(**kwargs)
