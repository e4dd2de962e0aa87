"""ICL baselines vs independent float64 NumPy references (explicit loops over prefixes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.data import icl as icl_data
from seqjax.errors import ConfigError
from seqjax.tasks import icl_baselines as B

# ---------------------------------------------------------------------------
# References: one prefix at a time, float64.


def _per_prefix(xs, ys, fit):
    b, n, _ = xs.shape
    out = np.zeros((b, n))
    for bi in range(b):
        for i in range(1, n):
            out[bi, i] = fit(xs[bi, :i], ys[bi, :i]) @ xs[bi, i]
    return out


def ref_least_squares(x, y):
    return np.linalg.lstsq(x, y, rcond=None)[0]


def ref_ridge(lam):
    return lambda x, y: np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def ref_averaging(x, y):
    return np.mean(x * y[:, None], axis=0)


def ref_gd(steps, lr):
    """GD on 1/(2m)|Xw - y|^2 with step min(lr, 1/lambda_max(X^T X / m))."""

    def fit(x, y):
        w = np.zeros(x.shape[1])
        lmax = np.linalg.eigvalsh(x.T @ x / len(y))[-1]
        eta = min(lr, 1.0 / lmax)
        for _ in range(steps):
            w = w - eta * x.T @ (x @ w - y) / len(y)
        return w

    return fit


def ref_lasso(alpha, tol=1e-12):
    """Cyclic coordinate descent on 1/(2m)|y - Xw|^2 + alpha |w|_1."""

    def fit(x, y):
        m, d = x.shape
        w = np.zeros(d)
        col_sq = np.sum(x * x, axis=0) / m
        for _ in range(20000):
            w_old = w.copy()
            for j in range(d):
                r = y - x @ w + x[:, j] * w[j]
                rho = x[:, j] @ r / m
                w[j] = np.sign(rho) * max(abs(rho) - alpha, 0.0) / col_sq[j] if col_sq[j] > 0 else 0.0
            if np.max(np.abs(w - w_old)) < tol:
                break
        return w

    return fit


def ref_knn(xs, ys, queries, k):
    b, n, q, _ = queries.shape
    out = np.zeros((b, n, q))
    for bi in range(b):
        for i in range(1, n):
            for qi in range(q):
                dist = np.sum((xs[bi, :i] - queries[bi, i, qi]) ** 2, axis=1)
                order = np.argsort(dist, kind="stable")[: min(k, i)]
                out[bi, i, qi] = ys[bi, order].mean()
    return out


def _data(rng, b=3, n=10, d=4, noise=0.0):
    xs = rng.normal(size=(b, n, d))
    w = rng.normal(size=(b, d))
    ys = np.einsum("bnd,bd->bn", xs, w) + noise * rng.normal(size=(b, n))
    return xs, ys


def _j(a):
    return jnp.asarray(a, jnp.float32)


# ---------------------------------------------------------------------------


def test_least_squares_matches_lstsq(rng):
    xs, ys = _data(rng, noise=0.3)
    got = np.asarray(B.least_squares(_j(xs), _j(ys)))
    want = _per_prefix(xs, ys, ref_least_squares)
    # float32 SVD: the square (i = d) system is the worst conditioned.
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_least_squares_error_vanishes_once_n_exceeds_d(rng):
    data = icl_data.sample_batch(jax.random.key(int(rng.integers(2**31))), "linear", 64, 12, 5)
    preds = np.asarray(B.least_squares(data["xs"], data["ys"]))
    err = np.mean((preds - np.asarray(data["ys"])) ** 2, axis=0) / 5
    assert np.all(err[6:] < 1e-6)  # i > d examples: exact recovery
    assert np.all(err[1:5] > 0.05)  # underdetermined: not yet


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_ridge_matches_closed_form(rng, lam):
    xs, ys = _data(rng, noise=0.3)
    got = np.asarray(B.ridge(_j(xs), _j(ys), lam=lam))
    np.testing.assert_allclose(got, _per_prefix(xs, ys, ref_ridge(lam)), rtol=1e-4, atol=1e-4)


def test_bayes_ridge_lambda_and_it_beats_least_squares_on_noise(rng):
    assert B.bayes_ridge_lambda(0.5) == pytest.approx(0.25)
    assert B.bayes_ridge_lambda(1.0, prior_std=2.0) == pytest.approx(0.25)
    sigma, d = 1.0, 5
    data = icl_data.sample_batch(jax.random.key(int(rng.integers(2**31))), "noisy_linear", 256, 10, d,
                                 noise_std=sigma)
    ys = np.asarray(data["ys"])
    err_r = np.mean((np.asarray(B.ridge(data["xs"], data["ys"], lam=B.bayes_ridge_lambda(sigma))) - ys) ** 2, 0)
    err_ls = np.mean((np.asarray(B.least_squares(data["xs"], data["ys"])) - ys) ** 2, 0)
    # The Bayes predictor is better on average at every prefix; by far at i = d.
    assert np.all(err_r[1:] <= err_ls[1:] * 1.05)
    assert err_r[d] < 0.5 * err_ls[d]


def test_averaging_matches_loop(rng):
    xs, ys = _data(rng)
    got = np.asarray(B.averaging(_j(xs), _j(ys)))
    np.testing.assert_allclose(got, _per_prefix(xs, ys, ref_averaging), rtol=1e-4, atol=1e-4)


def test_gd_matches_loop(rng):
    xs, ys = _data(rng)
    got = np.asarray(B.gd(_j(xs), _j(ys), steps=7, lr=0.1))
    np.testing.assert_allclose(got, _per_prefix(xs, ys, ref_gd(7, 0.1)), rtol=1e-4, atol=1e-4)


def _prefix_losses(xs, ys, w):
    """``L_i(w_i) = 1/(2i) sum_{j<i} (w_i.x_j - y_j)^2`` per prompt and prefix ``i >= 1``, float64."""
    xs, ys, w = (np.asarray(a, np.float64) for a in (xs, ys, w))
    n = xs.shape[1]
    r = np.einsum("bid,bjd->bij", w, xs) - ys[:, None, :]  # residual of w_i on example j
    mask = np.tril(np.ones((n, n)), k=-1)
    return (np.sum(mask * r * r, axis=-1) / (2.0 * np.maximum(mask.sum(1), 1.0)))[:, 1:]


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_gd_is_stable_on_every_prompt(rng, scale):
    # Prompts like the ICL task's (dim 5, lr = 1/dim, 10 steps), plus x's with
    # one large-norm row (scale 30): a fixed lr above 2/lambda_max(G) made the
    # iterates grow like |1 - lr lambda|^steps (~2e6 error at n = 2 in
    # docs/results/icl-cpu/linear-transformer).
    b, n, d, steps, lr = 64, 8, 5, 10, 0.2
    xs, ys = _data(rng, b=b, n=n, d=d, noise=0.1)
    xs[:, rng.integers(n)] *= scale
    ys = ys * np.maximum(1.0, scale / 3)
    losses = np.stack([_prefix_losses(xs, ys, B.gd_weights(_j(xs), _j(ys), steps=t, lr=lr))
                       for t in range(steps + 1)])  # (t, b, i)
    # The prefix loss never goes up (float32 rounding aside).
    tol = 1e-5 * (1.0 + losses[0])
    assert np.all(np.diff(losses, axis=0) <= tol[None]), np.max(np.diff(losses, axis=0) - tol[None])
    # With step <= 1/lambda_max each eigen-component of w is a fraction of the
    # min-norm least-squares solution's, so |w_i| <= |pinv(X_<i) y_<i| and a
    # prediction is at most |w_ls| |x_i|.
    w = np.asarray(B.gd_weights(_j(xs), _j(ys), steps=steps, lr=lr), np.float64)
    w_ls = np.stack([np.stack([np.zeros(d)] + [ref_least_squares(xs[bi, :i], ys[bi, :i]) for i in range(1, n)])
                     for bi in range(b)])
    bound = np.linalg.norm(w_ls, axis=-1) * np.linalg.norm(xs, axis=-1)
    pred = np.asarray(B.gd(_j(xs), _j(ys), steps=steps, lr=lr), np.float64)
    assert np.all(np.isfinite(pred))
    assert np.all(np.linalg.norm(w, axis=-1) <= np.linalg.norm(w_ls, axis=-1) * (1 + 1e-3) + 1e-4)
    assert np.all(np.abs(pred) <= bound * (1 + 1e-3) + 1e-4)
    # Where lr is already stable (lr <= 1/lambda_max) the step is lr itself.
    np.testing.assert_allclose(pred, _per_prefix(xs, ys, ref_gd(steps, lr)), rtol=2e-3, atol=2e-3)


def test_lasso_matches_coordinate_descent(rng):
    xs, ys = _data(rng, b=2, n=9, d=4, noise=0.1)
    got = np.asarray(B.lasso(_j(xs), _j(ys), alpha=0.1, iters=3000))
    want = _per_prefix(xs, ys, ref_lasso(0.1))
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
    # The L1 penalty matters: the answer differs from least squares.
    assert np.max(np.abs(want - _per_prefix(xs, ys, ref_least_squares))) > 1e-2


def test_knn_matches_sorting_reference(rng):
    xs, ys = _data(rng, b=2, n=8, d=3)
    got = np.asarray(B.knn(_j(xs), _j(ys), k=3))
    want = ref_knn(xs, ys, xs[:, :, None, :], 3)[..., 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    queries = rng.normal(size=(2, 8, 5, 3))
    got_q = np.asarray(B.knn_queries(_j(xs), _j(ys), _j(queries), k=2))
    np.testing.assert_allclose(got_q, ref_knn(xs, ys, queries, 2), rtol=1e-5, atol=1e-5)


NAMES = ["least_squares", "ridge", "averaging", "gd", "lasso", "knn3"]


@pytest.mark.parametrize("name", NAMES)
def test_prefix_causality_and_first_prediction_zero(rng, name):
    xs, ys = _data(rng, b=2, n=7, d=3)
    base = np.asarray(B.predict(name, _j(xs), _j(ys)))
    assert np.all(base[:, 0] == 0)
    j = 3
    ys2 = ys.copy()
    ys2[:, j] += 10.0
    xs2 = xs.copy()
    xs2[:, j + 1 :] += 1.0  # later x's (queries j+1.. change too, so compare up to j)
    moved = np.asarray(B.predict(name, _j(xs2), _j(ys2)))
    np.testing.assert_allclose(moved[:, : j + 1], base[:, : j + 1], rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(moved[:, j + 1 :] - base[:, j + 1 :])) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_predict_queries_on_prompt_equals_predict(rng, name):
    xs, ys = _data(rng, b=2, n=6, d=3)
    direct = np.asarray(B.predict(name, _j(xs), _j(ys)))
    via = np.asarray(B.predict_queries(name, _j(xs), _j(ys), _j(xs)[:, :, None, :]))[..., 0]
    np.testing.assert_allclose(via, direct, rtol=1e-5, atol=1e-5)


def test_weights_of_linear_baselines(rng):
    xs, ys = _data(rng)
    w = np.asarray(B.weights("least_squares", _j(xs), _j(ys)))
    assert w.shape == xs.shape
    assert np.all(w[:, 0] == 0)
    assert B.weights("knn3", _j(xs), _j(ys)) is None


def test_parse_baseline():
    assert B.parse_baseline("knn5") == ("knn", {"k": 5})
    assert B.parse_baseline("ridge") == ("ridge", {})
    for bad in ("knn0", "svm", "knn"):
        with pytest.raises(ConfigError, match=r"config\.task\.baselines"):
            B.parse_baseline(bad)
