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
"""

from __future__ import annotations

import math

import numpy as np

from seqjax.data.icl_mixtures import fourier_features


def _noise_var(noise_std, noise_floor):
    return max(float(noise_std), float(noise_floor)) ** 2


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
    n = xs.shape[1]
    s2 = _noise_var(noise_std, noise_floor)
    phi = fourier_features(xs[..., 0], ks[-1], half_period, xp=np)  # (b, n, P)
    mask = np.tril(np.ones((n, n)), k=-1)  # (i, j): pair j is in prefix i
    m = mask.sum(axis=1)  # (i,)
    gram = np.einsum("ij,bjp,bjr->bipr", mask, phi, phi) / s2  # (b, i, P, P)
    rhs = np.einsum("ij,bjp,bj->bip", mask, phi, ys) / s2
    yy = np.einsum("ij,bj->bi", mask, ys * ys) / s2
    logml, mus = [], []
    for k in ks:
        p = 2 * k + 1  # frequency K's features are the first 2K + 1 columns
        a = gram[..., :p, :p] + np.eye(p)
        chol = np.linalg.cholesky(a)  # A >= I: always positive definite
        mu = np.linalg.solve(a, rhs[..., :p, None])[..., 0]  # (b, i, p)
        logdet = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        quad = yy - np.einsum("bip,bip->bi", rhs[..., :p], mu)
        logml.append(-0.5 * (quad + logdet + m * math.log(2 * math.pi * s2)))
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
