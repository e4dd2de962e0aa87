"""Bayes-optimal in-context predictors under mixture priors (Panwar et al. 2024).

``bayes_fourier``: the posterior-predictive mean for ``fourier`` /
``fourier_mixture`` prompts. Under frequency ``K`` the prompt is Gaussian
linear regression ``y = Phi_K(u) w + eps`` on the ``p = 2K + 1`` Fourier
features (``seqjax.data.icl_mixtures.fourier_features``), ``w ~ N(0, I)``,
``eps ~ N(0, s^2)``. On a prefix of ``m`` pairs, with ``A = Phi^T Phi / s^2 +
I`` and ``c = Phi^T y / s^2``:

- the posterior mean of ``w`` is ``mu_K = A^{-1} c``;
- the log marginal likelihood (Woodbury and the determinant lemma on ``C =
  Phi Phi^T + s^2 I``) is ``-1/2 (y^T y / s^2 - c^T A^{-1} c + log det A + m
  log(2 pi s^2))``.

With ``K`` uniform on the set, ``P(K | prefix)`` is the softmax of the log
marginal likelihoods, and the prediction is ``sum_K P(K | prefix) Phi_K(u)
mu_K`` — the Bayes-optimal (minimum expected squared error) predictor.

Noise-free prompts (``noise_std = 0``) use ``s = noise_floor`` (1e-3): the
Gaussian posterior is then within ``O(s^2)`` of its ``s -> 0`` limit (the
interpolant of the simplest ``K`` that fits), and ``s > 0`` keeps ``A``
invertible. Everything runs in float64 NumPy on the host, since ``A`` has
eigenvalues up to ``m / s^2 ~ 4e7``: float32 would lose the marginal
likelihoods' differences.

``bayes_linear_mixture``: the same computation for ``linear_mixture``, whose
prior on ``w`` is a mixture of Gaussians: the dense component ``N(0, I)``
(weight ``dense_prob``) and, for each of the ``C(d, k)`` supports ``S``, the
standard normal on ``S`` and zero elsewhere (weight ``(1 - dense_prob) /
C(d, k)``): component ``S`` is Gaussian regression on the columns ``S`` of
``X``. The supports are enumerated (1140 at ``d = 20, k = 3``) in chunks.

``gaussian_mixture_queries`` is that computation for any mixture of the
Gaussian-prior members ``linear``, ``quadratic`` (features ``x * x /
sqrt(3)``) and ``sparse_linear``: the Bayes predictor of a ``class_mixture``
(Panwar et al.'s mixtures of function classes) whose members are all among
them. ``bayes_linear_mixture`` calls it with the dense/sparse weights.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from seqjax.data.icl_mixtures import fourier_features


def _noise_var(noise_std, noise_floor):
    return max(float(noise_std), float(noise_floor)) ** 2


def _evidence(gram, rhs, yy, m, s2):
    """Log marginal likelihood and posterior mean of Gaussian regression, ``w ~ N(0, I)``.

    Args:
      gram: ``(..., p, p)`` ``Phi^T Phi / s^2`` of the prefix.
      rhs: ``(..., p)`` ``Phi^T y / s^2``.
      yy: ``(...)`` ``y^T y / s^2``; its leading dims broadcast against ``gram``'s.
      m: ``(...)`` pairs in the prefix.
      s2: noise variance.

    Returns:
      ``(log p(y), mu)`` of shapes ``(...)`` and ``(..., p)``.
    """
    a = gram + np.eye(gram.shape[-1])
    chol = np.linalg.cholesky(a)  # A >= I: always positive definite
    mu = np.linalg.solve(a, rhs[..., None])[..., 0]
    logdet = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    quad = yy - np.einsum("...p,...p->...", rhs, mu)
    return -0.5 * (quad + logdet + m * math.log(2 * math.pi * s2)), mu


def _prefix_moments(phi, ys, s2):
    """``(gram, rhs, yy, m)`` of every prefix: ``(b, i, P, P)``, ``(b, i, P)``, ``(b, i)``, ``(i,)``."""
    n = phi.shape[1]
    mask = np.tril(np.ones((n, n)), k=-1)  # (i, j): pair j is in prefix i
    gram = np.einsum("ij,bjp,bjr->bipr", mask, phi, phi) / s2
    rhs = np.einsum("ij,bjp,bj->bip", mask, phi, ys) / s2
    yy = np.einsum("ij,bj->bi", mask, ys * ys) / s2
    return gram, rhs, yy, mask.sum(axis=1)


def fourier_posterior(xs, ys, max_freqs, half_period: float = 5.0, noise_std: float = 0.0,
                      noise_floor: float = 1e-3):
    """Per ``K`` in the set: the posterior over ``K`` and the weights' posterior means, per prefix.

    Args:
      xs: ``(b, n, d)``; only ``x[0]`` is used.
      ys: ``(b, n)``.
      max_freqs: the set of ``K`` (uniform prior over it).
      half_period: ``L`` of the features.
      noise_std: the label noise std ``s``.
      noise_floor: ``s`` used when ``noise_std`` is below it.

    Returns:
      ``(ks, post, mus)``: the sorted distinct ``K``; ``post`` ``(b, n,
      len(ks))``, ``P(K | pairs 0..i-1)`` (uniform at ``i = 0``); ``mus`` a
      list of ``(b, n, 2K + 1)`` posterior means (zero at ``i = 0``).
    """
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    ks = sorted({int(k) for k in max_freqs})
    s2 = _noise_var(noise_std, noise_floor)
    phi = fourier_features(xs[..., 0], ks[-1], half_period, xp=np)  # (b, n, P)
    gram, rhs, yy, m = _prefix_moments(phi, ys, s2)
    logml, mus = [], []
    for k in ks:
        # Frequency K's features are the first 2K + 1 columns.
        lml, mu = _evidence(gram[..., : 2 * k + 1, : 2 * k + 1], rhs[..., : 2 * k + 1], yy, m, s2)
        logml.append(lml)
        mus.append(mu)
    logml = np.stack(logml, axis=-1)  # (b, i, K)
    post = np.exp(logml - logml.max(axis=-1, keepdims=True))
    return ks, post / post.sum(axis=-1, keepdims=True), mus


def bayes_fourier_queries(
    xs,
    ys,
    queries,
    max_freqs: tuple[int, ...] = (10,),
    half_period: float = 5.0,
    noise_std: float = 0.0,
    noise_floor: float = 1e-3,
) -> np.ndarray:
    """Posterior-predictive means of a Fourier-series mixture, per prefix.

    Args:
      xs: ``(b, n, d)``; only ``x[0]`` is used.
      ys: ``(b, n)``.
      queries: ``(b, n, q, d)``; ``queries[:, i]`` answered from pairs ``0..i-1``.
      max_freqs, half_period, noise_std, noise_floor: as :func:`fourier_posterior`.

    Returns:
      ``(b, n, q)`` float32; the prior mean 0 for ``i = 0``.
    """
    ks, post, mus = fourier_posterior(xs, ys, max_freqs, half_period, noise_std, noise_floor)
    phi_q = fourier_features(np.asarray(queries, np.float64)[..., 0], ks[-1], half_period, xp=np)
    out = 0.0
    for j, (k, mu) in enumerate(zip(ks, mus)):
        out = out + post[..., j, None] * np.einsum("biqp,bip->biq", phi_q[..., : 2 * k + 1], mu)
    return np.asarray(out, np.float32)


class _StreamingMixture:
    """Posterior-weighted prediction over components added in chunks (a streaming log-sum-exp).

    Attributes:
      top: running max of the log weights ``(b, i)``.
      total: sum of ``exp(log w - top)``.
      pred: sum of ``exp(log w - top) * prediction`` ``(b, i, q)``.
    """

    def __init__(self):
        self.top = self.total = self.pred = None

    def add(self, logw, preds):
        """Adds components: ``logw (b, i, c)`` log prior + log evidence, ``preds (b, i, q, c)``."""
        new_top = logw.max(axis=-1) if self.top is None else np.maximum(self.top, logw.max(axis=-1))
        w = np.exp(logw - new_top[..., None])
        w_sum, w_pred = w.sum(axis=-1), np.einsum("bic,biqc->biq", w, preds)
        if self.top is None:
            self.total, self.pred = w_sum, w_pred
        else:
            scale = np.exp(self.top - new_top)
            self.total, self.pred = scale * self.total + w_sum, scale[..., None] * self.pred + w_pred
        self.top = new_top

    def mean(self):
        """``(b, i, q)``: the posterior-predictive mean."""
        return self.pred / self.total[..., None]


# Members of a Gaussian mixture prior and their features: y = phi(x) . w, w ~ N(0, I).
GAUSSIAN_MEMBERS = {
    "linear": lambda x: x,
    "quadratic": lambda x: x * x / math.sqrt(3.0),  # seqjax.data.icl's quadratic
    "sparse_linear": lambda x: x,  # one component per support (columns of x)
}


def gaussian_mixture_queries(
    xs,
    ys,
    queries,
    weights: dict[str, float],
    sparsity: int = 3,
    noise_std: float = 0.0,
    noise_floor: float = 1e-3,
    support_chunk: int = 64,
) -> np.ndarray:
    """Posterior-predictive means under a mixture of Gaussian-prior members, per prefix.

    Member ``linear`` is one component (features ``x``), ``quadratic`` one
    (features ``x * x / sqrt(3)``), ``sparse_linear`` one per ``k``-support
    ``S`` (features ``x[S]``, prior weight ``p / C(d, k)``). Each component's
    log evidence and posterior mean come from :func:`_evidence`; the
    prediction is their evidence-weighted average.

    Args:
      xs: ``(b, n, d)``.
      ys: ``(b, n)``.
      queries: ``(b, n, q, d)``; ``queries[:, i]`` answered from pairs ``0..i-1``.
      weights: member -> prior probability (members of :data:`GAUSSIAN_MEMBERS`;
        zero weights are skipped).
      sparsity: ``k`` of ``sparse_linear``.
      noise_std: the label noise std ``s``.
      noise_floor: ``s`` used when ``noise_std`` is below it.
      support_chunk: supports evaluated at once (memory only).

    Returns:
      ``(b, n, q)`` float32; 0 for ``i = 0``.
    """
    xs, ys, queries = (np.asarray(a, np.float64) for a in (xs, ys, queries))
    d = xs.shape[-1]
    s2 = _noise_var(noise_std, noise_floor)
    mix = _StreamingMixture()
    for member in ("linear", "quadratic"):
        if weights.get(member, 0.0) > 0:
            phi = GAUSSIAN_MEMBERS[member]
            gram, rhs, yy, m = _prefix_moments(phi(xs), ys, s2)
            lml, mu = _evidence(gram, rhs, yy, m, s2)
            preds = np.einsum("biqd,bid->biq", phi(queries), mu)
            mix.add((lml + math.log(weights[member]))[..., None], preds[..., None])
    if weights.get("sparse_linear", 0.0) > 0:
        gram, rhs, yy, m = _prefix_moments(xs, ys, s2)
        supports = np.array(list(itertools.combinations(range(d), min(int(sparsity), d))))  # (C, k)
        log_prior = math.log(weights["sparse_linear"] / len(supports))
        for start in range(0, len(supports), int(support_chunk)):
            idx = supports[start : start + int(support_chunk)]  # (c, k)
            g = gram[:, :, idx[:, :, None], idx[:, None, :]]  # (b, i, c, k, k)
            lml, mu = _evidence(g, rhs[:, :, idx], yy[..., None], m[:, None], s2)
            preds = np.einsum("biqck,bick->biqc", queries[:, :, :, idx], mu)
            mix.add(lml + log_prior, preds)
    return np.asarray(mix.mean(), np.float32)


def bayes_linear_mixture_queries(
    xs,
    ys,
    queries,
    sparsity: int = 3,
    dense_prob: float = 0.5,
    noise_std: float = 0.0,
    noise_floor: float = 1e-3,
    support_chunk: int = 64,
) -> np.ndarray:
    """Posterior-predictive means under the dense/sparse linear mixture prior, per prefix.

    Args:
      xs: ``(b, n, d)``.
      ys: ``(b, n)``.
      queries: ``(b, n, q, d)``; ``queries[:, i]`` answered from pairs ``0..i-1``.
      sparsity: ``k``, nonzeros of a sparse ``w``.
      dense_prob: prior probability of the dense component.
      noise_std: the label noise std ``s``.
      noise_floor: ``s`` used when ``noise_std`` is below it.
      support_chunk: supports evaluated at once (memory only).

    Returns:
      ``(b, n, q)`` float32; 0 for ``i = 0``.
    """
    weights = {"linear": float(dense_prob), "sparse_linear": 1.0 - float(dense_prob)}
    return gaussian_mixture_queries(xs, ys, queries, weights, sparsity, noise_std, noise_floor, support_chunk)
