"""Tests of the Bayes predictor of class_mixture (seqjax.tasks.icl_bayes_baselines.gaussian_mixture_queries)."""

import itertools

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from seqjax.data import icl as icl_data
from seqjax.errors import ConfigError
from seqjax.tasks import icl_baselines as B
from seqjax.tasks import icl_bayes_baselines as BF
from seqjax.tasks import icl_learned_baselines as L
from seqjax.tasks.icl import ICLTask, default_config


def _brute_force(x, y, q, weights, k, noise):
    """Function space, float64: per component y ~ N(0, F F^T + s^2 I), mean at q is f(q) F^T C^{-1} y.

    Components: linear (F = x), quadratic (F = x^2 / sqrt 3), and each k-support S of sparse_linear
    (F = x[:, S]) with prior weight p / C(d, k); weights by SciPy's Gaussian densities.
    """
    d, m = x.shape[1], x.shape[0]
    comps = []
    if weights.get("linear"):
        comps.append((weights["linear"], x, q))
    if weights.get("quadratic"):
        comps.append((weights["quadratic"], x * x / np.sqrt(3.0), q * q / np.sqrt(3.0)))
    if weights.get("sparse_linear"):
        supports = list(itertools.combinations(range(d), k))
        comps += [(weights["sparse_linear"] / len(supports), x[:, s], q[:, s]) for s in map(list, supports)]
    logw, means = [], []
    for prior, f, fq in comps:
        cov = f @ f.T + noise**2 * np.eye(m)
        logw.append(np.log(prior) + multivariate_normal.logpdf(y, np.zeros(m), cov))
        means.append(fq @ f.T @ np.linalg.solve(cov, y))
    w = np.exp(np.array(logw) - max(logw))
    return (w / w.sum()) @ np.array(means)


@pytest.mark.parametrize("weights", [
    {"linear": 0.2, "quadratic": 0.5, "sparse_linear": 0.3},
    {"quadratic": 0.6, "sparse_linear": 0.4},
])
def test_posterior_mean_against_function_space_brute_force(weights):
    rng = np.random.default_rng()
    d, k, noise, n = 4, 2, 0.3, 7
    xs = rng.normal(size=(2, n, d))
    # Labels from a quadratic function plus noise: the posterior over members is far from its prior.
    ys = (xs * xs) @ rng.normal(size=(2, d, 1))[..., 0][:, :, None]
    ys = ys[..., 0] / np.sqrt(3.0) + noise * rng.normal(size=(2, n))
    q = rng.normal(size=(2, n, 3, d))
    got = BF.gaussian_mixture_queries(xs, ys, q, weights, k, noise, support_chunk=4)
    assert np.all(got[:, 0] == 0)  # no pairs: the prior mean
    for b, i in ((0, 2), (1, 5), (0, 6)):
        want = _brute_force(xs[b, :i], ys[b, :i], q[b, i], weights, k, noise)
        np.testing.assert_allclose(got[b, i], want, rtol=2e-5, atol=2e-6)


def test_dense_sparse_weights_reproduce_bayes_linear_mixture():
    rng = np.random.default_rng()
    xs, ys, q = rng.normal(size=(2, 6, 4)), rng.normal(size=(2, 6)), rng.normal(size=(2, 6, 2, 4))
    a = BF.bayes_linear_mixture_queries(xs, ys, q, 2, 0.3, 0.2)
    b = BF.gaussian_mixture_queries(xs, ys, q, {"linear": 0.3, "sparse_linear": 0.7}, 2, 0.2)
    np.testing.assert_array_equal(a, b)


def test_bayes_beats_least_squares_on_class_mixture_prompts():
    cfg = default_config("class_mixture")
    cfg.task_kwargs.update({"p_linear": 1.0, "p_quadratic": 1.0, "p_decision_tree": 0.0})
    cfg.dim, cfg.n_points = 4, 8
    cfg.baselines = ("least_squares", "bayes_class_mixture")
    task = ICLTask(cfg)
    assert task.baseline_kwargs["bayes_class_mixture"] == {
        "weights": {"linear": 0.5, "quadratic": 0.5}, "sparsity": 3, "noise_std": 0.0}
    key = jax.random.key(np.random.SeedSequence().entropy % 2**31)
    data = jax.jit(lambda k: icl_data.sample_batch(k, "class_mixture", 256, 8, 4, **task.task_kwargs))(key)
    xs, ys = data["xs"], data["ys"]
    err = lambda p: np.mean((np.asarray(p) - np.asarray(ys))[:, 1:5] ** 2)
    bayes = err(L.predict("bayes_class_mixture", xs, ys, **task.baseline_kwargs["bayes_class_mixture"]))
    ls = err(B.predict("least_squares", xs, ys))
    assert bayes < 0.9 * ls, (bayes, ls)


def test_config_errors():
    cfg = default_config("class_mixture")  # default members: linear and decision_tree
    cfg.baselines = ("least_squares", "bayes_class_mixture")
    with pytest.raises(ConfigError, match="bayes_class_mixture.*decision_tree") as info:
        ICLTask(cfg)
    assert "\n" not in str(info.value)
    lin = default_config("linear")
    lin.baselines = ("bayes_class_mixture",)
    with pytest.raises(ConfigError, match="needs function_class in class_mixture"):
        ICLTask(lin)
    assert ICLTask(default_config("class_mixture")).baselines[-1] == "tree4"
