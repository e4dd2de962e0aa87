"""Tests of fourier_mixture (seqjax.data.icl_mixtures) and its Bayes predictor (seqjax.tasks.icl_bayes_baselines)."""

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from seqjax.data import icl as icl_data
from seqjax.data.icl_mixtures import fourier_features
from seqjax.errors import ConfigError
from seqjax.tasks import icl_baselines as B
from seqjax.tasks import icl_bayes_baselines as BF
from seqjax.tasks import icl_learned_baselines as L
from seqjax.tasks.icl import ICLTask, default_config


def _features(u, k, half):
    """Reference features in the textbook order (cosines, then sines): the isotropic prior does not care."""
    w = np.pi / half
    cos = [np.cos(j * w * u) for j in range(k + 1)]
    sin = [np.sin(j * w * u) for j in range(1, k + 1)]
    return np.stack(cos + sin, axis=-1)


def test_single_frequency_is_the_gaussian_posterior_mean():
    rng = np.random.default_rng()
    k, half, noise, n = 3, 5.0, 0.3, 12
    xs = rng.uniform(-half, half, size=(2, n, 1))
    ys = rng.normal(size=(2, n)) * 2
    got = L.predict("bayes_fourier", xs, ys, max_freqs=(k,), half_period=half, noise_std=noise)
    want = np.zeros((2, n))
    for b in range(2):
        for i in range(1, n):
            phi = _features(xs[b, :i, 0], k, half)
            mu = np.linalg.solve(phi.T @ phi + noise**2 * np.eye(2 * k + 1), phi.T @ ys[b, :i])
            want[b, i] = _features(xs[b, i, 0], k, half) @ mu
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mixture_posterior_matches_the_marginal_likelihoods():
    rng = np.random.default_rng()
    ks, half, noise, n, i = (1, 2, 4), 5.0, 0.2, 10, 7
    xs = rng.uniform(-half, half, size=(1, n, 1))
    ys = rng.normal(size=(1, n))
    got_ks, post, mus = BF.fourier_posterior(xs, ys, ks, half, noise)
    assert got_ks == list(ks)
    logml = np.array([
        multivariate_normal.logpdf(ys[0, :i], np.zeros(i), (p := _features(xs[0, :i, 0], k, half)) @ p.T
                                   + noise**2 * np.eye(i))
        for k in ks
    ])
    want = np.exp(logml - logml.max())
    np.testing.assert_allclose(post[0, i], want / want.sum(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(post[0, 0], np.full(3, 1 / 3))  # empty prefix: the prior
    # The prediction is the posterior-weighted mean of the per-K predictions.
    q = rng.uniform(-half, half, size=(1, n, 2, 1))
    pred = BF.bayes_fourier_queries(xs, ys, q, ks, half, noise)[0, i]
    per_k = [fourier_features(q[0, i, :, 0], k, half, xp=np) @ mus[j][0, i] for j, k in enumerate(ks)]
    np.testing.assert_allclose(pred, np.einsum("k,kq->q", post[0, i], np.array(per_k)), rtol=1e-5)


def test_bayes_beats_least_squares_on_the_largest_features_early():
    seed = np.random.SeedSequence().entropy % 2**31
    data = icl_data.sample_batch(jax.random.key(seed), "fourier_mixture", 256, 16, 1)
    xs, ys = data["xs"], data["ys"]
    bayes = np.asarray(L.predict("bayes_fourier", xs, ys, max_freqs=tuple(range(1, 11))))
    ls = np.asarray(B.predict("least_squares", fourier_features(xs[..., 0], 10, 5.0), ys))
    err = lambda p: np.mean((p - np.asarray(ys))[:, 2:16] ** 2)  # noqa: E731
    # Measured 0.74-0.76x over points 3..16 (5 seeds; fewer pairs than the 21 features).
    assert err(bayes) < 0.85 * err(ls), (err(bayes), err(ls))


def test_fourier_mixture_sampler():
    data = icl_data.sample_batch(jax.random.key(np.random.SeedSequence().entropy % 2**31),
                                 "fourier_mixture", 64, 30, 2, min_freq=2, max_freq=6, half_period=3.0)
    xs, ys, freq = (np.asarray(data[k], np.float64) for k in ("xs", "ys", "freq"))
    assert set(freq.astype(int)) <= set(range(2, 7)) and len(set(freq.astype(int))) >= 3
    assert np.all(np.abs(xs) <= 3.0)  # U(-L, L) like fourier
    for b in range(64):
        k = int(freq[b])
        phi = _features(xs[b, :, 0], k, 3.0)
        resid = ys[b] - phi @ np.linalg.lstsq(phi, ys[b], rcond=None)[0]
        assert np.max(np.abs(resid)) < 1e-3  # in its own K's span
        if k > 2:  # and not in a smaller one (generic coefficients)
            phi = _features(xs[b, :, 0], k - 1, 3.0)
            assert np.max(np.abs(ys[b] - phi @ np.linalg.lstsq(phi, ys[b], rcond=None)[0])) > 1e-2


def test_config():
    with pytest.raises(ConfigError) as info:
        icl_data.sample_batch(jax.random.key(0), "fourier_mixture", 2, 3, 1, min_freq=5, max_freq=2)
    assert "config.task.task_kwargs.min_freq" in str(info.value)
    cfg = default_config("fourier_mixture")
    cfg.dim, cfg.n_points = 1, 5
    cfg.task_kwargs.min_freq = 2
    task = ICLTask(cfg)
    assert "bayes_fourier" in task.baselines
    assert task.baseline_kwargs["bayes_fourier"] == {
        "max_freqs": tuple(range(2, 11)), "half_period": 5.0, "noise_std": 0.0}
    bad = default_config("linear")
    bad.baselines = ("least_squares", "bayes_fourier")
    with pytest.raises(ConfigError) as info:
        ICLTask(bad)
    assert "config.task.baselines" in str(info.value) and "fourier_mixture" in str(info.value)
