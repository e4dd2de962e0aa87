"""Mixture function classes for in-context learning (Panwar et al. 2024).

"In-Context Learning through the Bayesian Prism" trains on a *mixture* of
function classes and compares the model with the Bayes-optimal predictor under
the mixture prior. Here: ``fourier_mixture``, 1-d Fourier series whose
maximum frequency ``K`` is drawn per prompt uniformly from ``{min_freq, ...,
max_freq}`` (defaults 1..10, half period ``L = 5`` as the paper's Fourier
series), then

    ``y = sum_{k=0..K} a_k cos(k pi u / L) + sum_{k=1..K} b_k sin(k pi u / L)``,

``u = x[0] ~ U(-L, L)``, ``a, b ~ N(0, 1)``. Its Bayes predictor is
``seqjax.tasks.icl_bayes_baselines.bayes_fourier``.

``linear_mixture``: dense and sparse linear regression mixed within a batch
(the paper's dense/sparse regression mixture): each prompt is ``linear``
(``w ~ N(0, I)``) with probability ``dense_prob`` (default 0.5), else
``sparse_linear`` (``sparsity`` N(0, 1) weights on a uniform support of the
active coordinates, default 3, no rescaling as Garg's sparse class). Its Bayes
predictor is ``seqjax.tasks.icl_bayes_baselines.bayes_linear_mixture``.

``class_mixture``: Panwar et al.'s mixtures of function classes; each prompt's
class is drawn from :data:`CLASS_MIXTURE_MEMBERS` with the normalised weights
``p_<member>`` (:func:`class_mixture_members`; the sampling is in
``seqjax.data.icl``). Its Bayes predictor, for Gaussian-prior members, is
``seqjax.tasks.icl_bayes_baselines.gaussian_mixture_queries``.

The features are ordered ``1, cos(w u), sin(w u), cos(2 w u), sin(2 w u), ...``
(``w = pi / L``) so that frequency ``K``'s features are the first ``2K + 1``
columns of any larger ``K``'s: one feature matrix serves every ``K``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.errors import ConfigError


def fourier_features(u, max_freq: int, half_period: float, xp=jnp):
    """Fourier features of ``u`` up to frequency ``max_freq``, interleaved.

    Args:
      u: ``(...)`` the scalar inputs.
      max_freq: ``K`` (static).
      half_period: ``L``; frequency ``k`` is ``cos/sin(k pi u / L)``.
      xp: the array module (``jax.numpy``, or ``numpy`` for float64 on the host).

    Returns:
      ``(..., 2K + 1)``: ``1, cos(w u), sin(w u), ..., cos(K w u), sin(K w u)``.
    """
    k = xp.arange(1, int(max_freq) + 1, dtype=u.dtype)
    arg = u[..., None] * k * (math.pi / half_period)
    pairs = xp.stack([xp.cos(arg), xp.sin(arg)], axis=-1).reshape(u.shape + (2 * int(max_freq),))
    return xp.concatenate([xp.ones(u.shape + (1,), u.dtype), pairs], axis=-1)


def sample_fourier_mixture(key: jax.Array, xs: jax.Array, min_freq: int, max_freq: int, half_period: float):
    """Labels of ``fourier_mixture`` prompts: ``K`` uniform per prompt, then N(0, 1) coefficients.

    Args:
      key: PRNG key.
      xs: ``(b, n, dim)`` inputs; only ``x[0]`` is used.
      min_freq: smallest ``K`` (static).
      max_freq: largest ``K`` (static).
      half_period: ``L``.

    Returns:
      ``(ys (b, n), freq (b,) int32)``: the labels and each prompt's ``K``.
    """
    b = xs.shape[0]
    k_freq, k_coef = jax.random.split(key)
    freq = jax.random.randint(k_freq, (b,), int(min_freq), int(max_freq) + 1)
    coef = jax.random.normal(k_coef, (b, 2 * int(max_freq) + 1))
    # Column c holds frequency ceil(c / 2): keep the columns of frequency <= K.
    col_freq = (np.arange(2 * int(max_freq) + 1) + 1) // 2
    coef = coef * (col_freq[None, :] <= freq[:, None])
    feats = fourier_features(xs[..., 0], max_freq, half_period)
    return jnp.einsum("bnp,bp->bn", feats, coef), freq


# Classes a class_mixture can draw (all on x ~ N(0, I) with the curriculum's
# active coordinates, so the members differ only in f: x alone tells nothing).
CLASS_MIXTURE_MEMBERS = ("linear", "sparse_linear", "quadratic", "relu2nn", "decision_tree")


def class_mixture_members(kw: dict) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The members of a ``class_mixture`` with a positive weight, and their normalised probabilities.

    Args:
      kw: the class's kwargs, with ``p_<member>`` for every member of
        :data:`CLASS_MIXTURE_MEMBERS`.

    Returns:
      ``(members, probs)`` in :data:`CLASS_MIXTURE_MEMBERS` order; ``probs`` sum to 1.

    Raises:
      ConfigError: every weight is 0.
    """
    weights = {m: float(kw[f"p_{m}"]) for m in CLASS_MIXTURE_MEMBERS if float(kw[f"p_{m}"]) > 0}
    if not weights:
        raise ConfigError("config.task.task_kwargs.p_<member> are all 0; at least one of "
                          + ", ".join(f"p_{m}" for m in CLASS_MIXTURE_MEMBERS) + " must be > 0")
    total = sum(weights.values())
    return tuple(weights), tuple(w / total for w in weights.values())


def random_support(key: jax.Array, batch_size: int, active_mask: jax.Array, k: int) -> jax.Array:
    """A uniform ``k``-subset of the active coordinates per row, as a 0/1 mask.

    Args:
      key: PRNG key.
      batch_size: rows.
      active_mask: ``(dim,)`` 1 for active coordinates.
      k: subset size (static; capped at ``dim``).

    Returns:
      ``(batch_size, dim)`` float32 with ``min(k, active)`` ones.
    """
    dim = active_mask.shape[0]
    # Top-k of uniform scores, inactive coordinates scored below every active one.
    scores = jax.random.uniform(key, (batch_size, dim))
    scores = jnp.where(active_mask > 0, scores, -1.0)
    _, idx = jax.lax.top_k(scores, min(int(k), dim))
    return jnp.sum(jax.nn.one_hot(idx, dim), axis=1) * active_mask


def sample_linear_mixture(key: jax.Array, xs: jax.Array, active_mask: jax.Array, sparsity: int, dense_prob: float):
    """Labels of ``linear_mixture`` prompts: dense with probability ``dense_prob``, else sparse.

    Args:
      key: PRNG key.
      xs: ``(b, n, dim)`` inputs.
      active_mask: ``(dim,)`` 1 for active coordinates.
      sparsity: nonzero weights of a sparse prompt (static).
      dense_prob: probability of a dense prompt.

    Returns:
      ``(ys (b, n), w (b, dim), dense (b,) bool)``.
    """
    b = xs.shape[0]
    k_w, k_s, k_c = jax.random.split(key, 3)
    w = jax.random.normal(k_w, (b, xs.shape[-1])) * active_mask
    dense = jax.random.uniform(k_c, (b,)) < dense_prob
    w = jnp.where(dense[:, None], w, w * random_support(k_s, b, active_mask, sparsity))
    return jnp.einsum("bnd,bd->bn", xs, w), w, dense
