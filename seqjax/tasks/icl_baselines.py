"""In-context learning baselines: classical learners run on each prompt prefix.

Every baseline ``f(xs, ys, **kw) -> preds`` takes ``xs: (b, n, d)``, ``ys:
(b, n)`` and returns ``(b, n)`` where ``preds[:, i]`` is the prediction for
``x_i`` of the learner fitted on the pairs ``0..i-1`` only (``preds[:, 0] =
0``: nothing to learn from). Prefixes are handled by masking with the strictly
lower-triangular matrix ``M[i, j] = [j < i]``, so everything is vectorised
(no Python loop over ``n``) and jittable.

The linear learners also expose their weights (``*_weights(xs, ys) -> (b, n,
d)``, row ``i`` fitted on the prefix ``0..i-1``), used by the implicit linear
weight difference (ILWD) metric in ``seqjax.tasks.icl``. Every baseline can
answer arbitrary queries through :func:`predict_queries`.

Learners (Garg et al. 2022; Akyürek et al. 2022):
  - least squares: minimum-norm solution ``pinv(X) y`` (SVD of the masked X);
  - ridge: ``(X^T X + lam I)^{-1} X^T y`` on the *sum* of squared errors, so
    that with prior ``w ~ N(0, tau^2 I)`` and noise ``sigma^2`` the Bayes
    posterior mean is ridge with ``lam = sigma^2 / tau^2``
    (:func:`bayes_ridge_lambda`);
  - k-NN: mean ``y`` of the ``min(k, i)`` nearest earlier ``x`` (Euclidean);
  - averaging: ``w = mean_j x_j y_j``;
  - gradient descent: ``steps`` steps of size ``min(lr, 1/lambda_max)`` from
    ``w = 0`` on ``L(w) = 1/(2m) sum_{j<i} (w.x_j - y_j)^2`` (``m = i``),
    ``lambda_max`` the largest eigenvalue of the prefix's ``X^T X / m``, so
    the loss never increases on any prompt (see :func:`gd_weights`);
  - Lasso: ``1/(2m) sum (w.x_j - y_j)^2 + alpha |w|_1`` (scikit-learn's
    scaling) by a fixed number of FISTA iterations with step ``1/L``, ``L``
    the largest eigenvalue of ``X^T X / m``.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError

_HI = jax.lax.Precision.HIGHEST


def prefix_mask(n: int) -> jax.Array:
    """``(n, n)`` float mask, ``M[i, j] = 1`` iff ``j < i`` (example j precedes query i)."""
    return jnp.tril(jnp.ones((n, n), jnp.float32), k=-1)


def _moments(xs, ys):
    """Prefix moments ``G_i = X_i^T X_i / m_i``, ``c_i = X_i^T y_i / m_i`` and counts ``m_i``."""
    n = xs.shape[1]
    mask = prefix_mask(n)
    m = jnp.sum(mask, axis=1)  # i examples before query i
    denom = jnp.maximum(m, 1.0)[None, :, None]
    c = jnp.einsum("ij,bjd,bj->bid", mask, xs, ys, precision=_HI) / denom
    g = jnp.einsum("ij,bjd,bje->bide", mask, xs, xs, precision=_HI) / denom[..., None]
    return g, c, m


def _apply(w, xs):
    return jnp.einsum("bnd,bnd->bn", w, xs, precision=_HI)


# ----------------------------------------------------------------------------
# Linear learners: weights per prefix.


def least_squares_weights(xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Minimum-norm least squares on each prefix.

    Args:
      xs: ``(b, n, d)``.
      ys: ``(b, n)``.

    Returns:
      ``(b, n, d)``: row ``i`` is ``pinv(X_{<i}) y_{<i}`` (zero for ``i = 0``).
    """
    mask = prefix_mask(xs.shape[1])
    xm = xs[:, None, :, :] * mask[None, :, :, None]  # (b, i, j, d): rows j >= i zeroed
    ym = ys[:, None, :] * mask[None]
    # Zero rows add zero singular values, which pinv's cutoff drops: the
    # masked problem's min-norm solution is the prefix's.
    pinv = jnp.linalg.pinv(xm)  # (b, i, d, j)
    return jnp.einsum("bidj,bij->bid", pinv, ym, precision=_HI)


def ridge_weights(xs: jax.Array, ys: jax.Array, lam: float = 0.1) -> jax.Array:
    """Ridge regression ``argmin sum_j (w.x_j - y_j)^2 + lam |w|^2`` on each prefix.

    Args:
      xs: ``(b, n, d)``.
      ys: ``(b, n)``.
      lam: the penalty (> 0); see :func:`bayes_ridge_lambda`.

    Returns:
      ``(b, n, d)`` weights per prefix.
    """
    g, c, m = _moments(xs, ys)
    d = xs.shape[-1]
    scale = jnp.maximum(m, 1.0)[None, :, None]
    # Undo the 1/m normalisation: the penalty is on the sum of squared errors.
    a = g * scale[..., None] + lam * jnp.eye(d, dtype=xs.dtype)
    return jnp.linalg.solve(a, (c * scale)[..., None])[..., 0]


def bayes_ridge_lambda(noise_std: float, prior_std: float = 1.0) -> float:
    """The ridge penalty whose estimate is the Bayes posterior mean: ``sigma^2 / tau^2``.

    Args:
      noise_std: ``sigma``, std of the label noise.
      prior_std: ``tau``, std of each weight coordinate under the prior.

    Returns:
      ``lam = sigma^2 / tau^2``.
    """
    return float(noise_std) ** 2 / float(prior_std) ** 2


def averaging_weights(xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Garg's averaging estimator ``w = mean_{j<i} x_j y_j`` per prefix (``(b, n, d)``)."""
    _, c, _ = _moments(xs, ys)
    return c


def gd_weights(xs: jax.Array, ys: jax.Array, steps: int = 10, lr: float = 0.05) -> jax.Array:
    """Gradient descent from zero on the prefix's mean squared loss, at a stable step.

    The loss ``L(w) = 1/(2m) sum_{j<i} (w.x_j - y_j)^2`` has Hessian ``G =
    X^T X / m``. A fixed step above ``2/lambda_max(G)`` diverges like ``|1 -
    lr lambda_max|^steps``, and ``lambda_max`` varies a lot between prompts
    (``|x_0|^2`` for one example), so each prefix takes the step

        ``eta_i = min(lr, 1 / lambda_max(G_i))``

    (``lr`` itself wherever it is already stable). With ``eta <= 1/lambda_max``
    every eigen-component of the error shrinks monotonically: after ``t``
    steps ``w_t = (I - (I - eta G)^t) G^+ c`` along ``G``'s range (zero
    off it), hence

      - the loss is non-increasing in ``t`` (``L(w - eta g) <= L(w) - eta/2 |g|^2``);
      - ``|w_t| <= |pinv(X_{<i}) y_{<i}|``, the minimum-norm least-squares
        weights' norm, so a prediction is at most ``|w_ls| |x_i|``.

    Args:
      xs: ``(b, n, d)``.
      ys: ``(b, n)``.
      steps: number of full-batch steps (static).
      lr: the largest step size allowed (> 0).

    Returns:
      ``(b, n, d)`` weights after ``steps`` steps.
    """
    g, c, _ = _moments(xs, ys)
    lmax = jnp.linalg.eigvalsh(g)[..., -1]
    # Empty prefix (i = 0): G = 0 and c = 0 keep w = 0 at any step; the floor
    # only avoids 1/0.
    eta = jnp.minimum(lr, 1.0 / jnp.maximum(lmax, 1e-12))[..., None]

    def step(w, _):
        grad = jnp.einsum("bide,bie->bid", g, w, precision=_HI) - c
        return w - eta * grad, None

    w, _ = jax.lax.scan(step, jnp.zeros_like(c), None, length=int(steps))
    return w


def lasso_weights(xs: jax.Array, ys: jax.Array, alpha: float = 0.01, iters: int = 300) -> jax.Array:
    """Lasso ``1/(2m) sum_{j<i} (w.x_j - y_j)^2 + alpha |w|_1`` per prefix, by FISTA.

    Args:
      xs: ``(b, n, d)``.
      ys: ``(b, n)``.
      alpha: the L1 penalty (scikit-learn's scaling).
      iters: FISTA iterations (static; fixed so the cost is predictable).

    Returns:
      ``(b, n, d)`` weights.
    """
    g, c, _ = _moments(xs, ys)
    lmax = jnp.linalg.eigvalsh(g)[..., -1]
    # Empty prefix: G = 0, c = 0, any step keeps w = 0; avoid dividing by zero.
    step = 1.0 / jnp.maximum(lmax, 1e-6)[..., None]

    def soft(v, t):
        return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0)

    def body(carry, _):
        w, z, t = carry
        grad = jnp.einsum("bide,bie->bid", g, z, precision=_HI) - c
        w_new = soft(z - step * grad, step * alpha)
        t_new = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z_new = w_new + ((t - 1.0) / t_new) * (w_new - w)
        return (w_new, z_new, t_new), None

    w0 = jnp.zeros_like(c)
    (w, _, _), _ = jax.lax.scan(body, (w0, w0, jnp.float32(1.0)), None, length=int(iters))
    return w


# ----------------------------------------------------------------------------
# Public predictors: (xs, ys) -> (b, n).


def least_squares(xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Minimum-norm least squares predictions per prefix, ``(b, n)``."""
    return _apply(least_squares_weights(xs, ys), xs)


def ridge(xs: jax.Array, ys: jax.Array, lam: float = 0.1) -> jax.Array:
    """Ridge predictions per prefix (penalty ``lam`` on the summed loss), ``(b, n)``."""
    return _apply(ridge_weights(xs, ys, lam), xs)


def averaging(xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Averaging-estimator predictions per prefix, ``(b, n)``."""
    return _apply(averaging_weights(xs, ys), xs)


def gd(xs: jax.Array, ys: jax.Array, steps: int = 10, lr: float = 0.05) -> jax.Array:
    """Gradient-descent predictions per prefix, ``(b, n)``; see :func:`gd_weights`."""
    return _apply(gd_weights(xs, ys, steps, lr), xs)


def lasso(xs: jax.Array, ys: jax.Array, alpha: float = 0.01, iters: int = 300) -> jax.Array:
    """Lasso predictions per prefix, ``(b, n)``; see :func:`lasso_weights`."""
    return _apply(lasso_weights(xs, ys, alpha, iters), xs)


def knn_queries(xs: jax.Array, ys: jax.Array, queries: jax.Array, k: int = 3) -> jax.Array:
    """k-nearest-neighbour predictions for arbitrary queries, per prefix.

    Args:
      xs: ``(b, n, d)`` the prompt's inputs.
      ys: ``(b, n)``.
      queries: ``(b, n, q, d)``: queries answered with the prefix ``0..i-1``.
      k: neighbours (static).

    Returns:
      ``(b, n, q)``: the mean ``y`` of the ``min(k, i)`` nearest examples
      among ``0..i-1`` (0 when ``i = 0``).
    """
    n = xs.shape[1]
    k = min(int(k), n)
    mask = prefix_mask(n) > 0  # (i, j)
    dist = jnp.sum((queries[:, :, :, None, :] - xs[:, None, None, :, :]) ** 2, axis=-1)  # (b,i,q,j)
    dist = jnp.where(mask[None, :, None, :], dist, jnp.inf)
    neg, idx = jax.lax.top_k(-dist, k)  # nearest first
    valid = jnp.isfinite(neg).astype(ys.dtype)
    yb = jnp.broadcast_to(ys[:, None, None, :], dist.shape)
    vals = jnp.take_along_axis(yb, idx, axis=-1) * valid
    return jnp.sum(vals, axis=-1) / jnp.maximum(jnp.sum(valid, axis=-1), 1.0)


def knn(xs: jax.Array, ys: jax.Array, k: int = 3) -> jax.Array:
    """k-NN predictions per prefix, ``(b, n)``; see :func:`knn_queries`."""
    return knn_queries(xs, ys, xs[:, :, None, :], k)[..., 0]


# ----------------------------------------------------------------------------
# Names used in configs and results.

_WEIGHT_FNS = {
    "least_squares": least_squares_weights,
    "ridge": ridge_weights,
    "averaging": averaging_weights,
    "gd": gd_weights,
    "lasso": lasso_weights,
}
BASELINE_FAMILIES = ("least_squares", "ridge", "averaging", "gd", "lasso", "knn")
_KNN_RE = re.compile(r"^knn(\d+)$")


def parse_baseline(name: str, field: str = "config.task.baselines") -> tuple[str, dict]:
    """Splits a baseline name into its family and fixed kwargs.

    ``"knn3"`` -> ``("knn", {"k": 3})``; the other names are the families
    themselves (their kwargs come from the config).

    Raises:
      ConfigError: unknown name.
    """
    m = _KNN_RE.match(str(name))
    if m and int(m.group(1)) > 0:
        return "knn", {"k": int(m.group(1))}
    if name in _WEIGHT_FNS:
        return name, {}
    raise ConfigError(
        f"{field} has {name!r}, which is not allowed; allowed: "
        f"{', '.join(sorted(_WEIGHT_FNS))}, knn<k> (e.g. knn3)"
    )


def weights(name: str, xs: jax.Array, ys: jax.Array, **kw) -> jax.Array | None:
    """Per-prefix weights ``(b, n, d)`` of a linear baseline, or ``None`` for k-NN."""
    family, fixed = parse_baseline(name)
    if family == "knn":
        return None
    return _WEIGHT_FNS[family](xs, ys, **{**kw, **fixed})


def predict_queries(name: str, xs: jax.Array, ys: jax.Array, queries: jax.Array, **kw) -> jax.Array:
    """A baseline's predictions for arbitrary queries, per prefix.

    Args:
      name: baseline name (``least_squares``, ``ridge``, ``averaging``, ``gd``,
        ``lasso``, ``knn<k>``).
      xs: ``(b, n, d)``.
      ys: ``(b, n)``.
      queries: ``(b, n, q, d)``; ``queries[:, i]`` is answered from pairs ``0..i-1``.
      **kw: the family's kwargs (e.g. ``lam``, ``steps``, ``lr``, ``alpha``).

    Returns:
      ``(b, n, q)``.
    """
    family, fixed = parse_baseline(name)
    if family == "knn":
        return knn_queries(xs, ys, queries, **{**kw, **fixed})
    w = _WEIGHT_FNS[family](xs, ys, **{**kw, **fixed})
    return jnp.einsum("bnqd,bnd->bnq", queries, w, precision=_HI)


@functools.partial(jax.jit, static_argnames=("name", "kw_items"))
def _predict_jit(name, xs, ys, kw_items):
    return predict_queries(name, xs, ys, xs[:, :, None, :], **dict(kw_items))[..., 0]


def predict(name: str, xs: jax.Array, ys: jax.Array, **kw) -> jax.Array:
    """A baseline's predictions ``(b, n)`` on the prompt itself (jitted per name and kwargs)."""
    return _predict_jit(name, xs, ys, tuple(sorted(kw.items())))


@functools.partial(jax.jit, static_argnames=("name", "kw_items"))
def _predict_queries_jit(name, xs, ys, queries, kw_items):
    return predict_queries(name, xs, ys, queries, **dict(kw_items))


def predict_queries_jit(name: str, xs: jax.Array, ys: jax.Array, queries: jax.Array, **kw) -> jax.Array:
    """:func:`predict_queries`, jitted per name, kwargs and shapes."""
    return _predict_queries_jit(name, xs, ys, queries, tuple(sorted(kw.items())))
