"""The online-softmax monoid: one merge of partial softmax results.

A softmax-weighted average over a set of keys, ``out = Σ_j e^{s_j} v_j / Σ_j e^{s_j}``,
can be computed piecewise: each piece of the keys is summarised by a
:class:`SoftmaxState` ``(m, l, acc)`` with

* ``m``   the running maximum of the scores (a shift for numerical safety),
* ``l``   the normaliser ``Σ_j exp(s_j - m)``,
* ``acc`` the unnormalised output ``Σ_j exp(s_j - m) v_j``,

and two pieces combine with :func:`merge`, which rescales both to the larger
maximum. ``merge`` is associative and commutative with identity :func:`empty`
(``m = -inf``), so the pieces may be merged in any order or grouping. This is the
single place where that combine lives; it is used by

* blockwise (flash) attention — merge over key blocks (``flash.py``),
* split-KV decoding — merge over cache splits (``decode.py``),
* ring attention — merge over the key shards that arrive by ``ppermute``,
* Aaren — a prefix ``lax.associative_scan`` of :func:`merge` over positions.

Everything is elementwise over leading axes with NumPy broadcasting, so
``merge`` works directly as the combine of ``lax.associative_scan``. Empty
pieces (``m = -inf``, ``l = 0``) are handled without NaNs in values and in
gradients: :func:`finalize` returns 0 and :func:`logsumexp` ``-inf`` for them.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.ops.common import accum_dtype


class SoftmaxState(NamedTuple):
    """Partial result of a softmax-weighted sum over some keys.

    Attributes:
      m: ``(...)`` the maximum score seen (``-inf`` when no key was seen).
      l: ``(...)`` the normaliser ``Σ exp(s - m)``.
      acc: ``(..., v)`` the unnormalised output ``Σ exp(s - m) · v``.
    """

    m: jax.Array
    l: jax.Array
    acc: jax.Array


def _finite_or_zero(m: jax.Array) -> jax.Array:
    # exp(x - m) with m = -inf would give exp(-inf + inf) = NaN; shifting empty
    # states by 0 instead keeps exp(-inf - 0) = 0 and all derivatives finite.
    return jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))


def merge(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """Combines the partial results of two disjoint sets of keys.

    Associative and commutative (exactly commutative; associative up to
    rounding), with :func:`empty` as identity. Elementwise with broadcasting over
    the leading axes, so it can be the combine function of
    ``lax.associative_scan``.

    Args:
      a: a state, ``m, l: (...)``, ``acc: (..., v)``.
      b: a state broadcastable against ``a``.

    Returns:
      The state of the union of both key sets, on the larger maximum.
    """
    m = jnp.maximum(a.m, b.m)
    m_safe = _finite_or_zero(m)
    # a.m = -inf (empty side) gives a factor exp(-inf) = 0 whatever m is.
    alpha = jnp.exp(a.m - m_safe)
    beta = jnp.exp(b.m - m_safe)
    l = alpha * a.l + beta * b.l
    acc = alpha[..., None] * a.acc + beta[..., None] * b.acc
    return SoftmaxState(m, l, acc)


def from_scores(
    scores: jax.Array,
    values: jax.Array,
    mask: jax.Array | None = None,
    axis: int = -1,
) -> SoftmaxState:
    """The partial state of one block of keys.

    Args:
      scores: ``(..., n)`` scores, with the ``n`` keys on ``axis``.
      values: ``(..., n, v)`` values of the keys; the leading axes broadcast
        against those of ``scores`` (with ``axis`` removed). Size-1 leading axes
        are not materialised: e.g. scores ``(b, h, q, n)`` against values
        ``(b, h, 1, n, v)`` is one batched matmul over the ``q`` queries.
      mask: optional booleans broadcastable to ``scores``; False hides a key.
      axis: the keys axis of ``scores`` (and ``mask``).

    Returns:
      The :class:`SoftmaxState` with ``m, l`` of ``scores``' shape without
      ``axis`` and ``acc`` of that shape plus ``v``, in at least float32. A row
      whose keys are all masked gets ``m = -inf, l = 0, acc = 0``.
    """
    scores = jnp.asarray(scores)
    values = jnp.asarray(values)
    dtype = accum_dtype(scores.dtype, values.dtype)
    scores = scores.astype(dtype)
    if mask is not None:
        mask = jnp.broadcast_to(jnp.asarray(mask, bool), scores.shape)
        scores = jnp.where(mask, scores, -jnp.inf)
    scores = jnp.moveaxis(scores, axis, -1)
    # The shift m cancels from everything the state yields (the output, the
    # log-sum-exp), so its gradient is zero and is not taken: autodiff of max
    # divides by the number of entries equal to the max, which is 0 (NaN) when
    # XLA recomputes the scores in a fusion that rounds differently (it did for
    # the float32 reference attention's gradient with a bias, XLA:CPU at LLVM
    # -O0). jax.nn.softmax stops this gradient for the same reason.
    m = lax.stop_gradient(jnp.max(scores, axis=-1))
    # Masked scores are -inf, so exp gives exactly 0 there and, unlike a
    # where() after the exp, no inf * 0 = NaN in the gradient.
    p = jnp.exp(scores - _finite_or_zero(m)[..., None])
    l = jnp.sum(p, axis=-1)
    acc = jnp.einsum("...n,...nv->...v", p, values.astype(dtype))
    return SoftmaxState(m, l, acc)


def empty(shape: tuple[int, ...], dv: int, dtype=jnp.float32) -> SoftmaxState:
    """The identity of :func:`merge`: the state of no keys.

    Args:
      shape: the leading shape ``(...)`` of ``m`` and ``l``.
      dv: the value dimension (last axis of ``acc``).
      dtype: the state dtype (float32 by default).

    Returns:
      ``SoftmaxState(m=-inf, l=0, acc=0)``.
    """
    shape = tuple(shape)
    return SoftmaxState(
        jnp.full(shape, -jnp.inf, dtype),
        jnp.zeros(shape, dtype),
        jnp.zeros(shape + (dv,), dtype),
    )


def finalize(state: SoftmaxState) -> jax.Array:
    """The normalised output ``acc / l``; 0 where no key was visible (``l == 0``).

    Args:
      state: a :class:`SoftmaxState`.

    Returns:
      ``(..., v)`` in the state's dtype.
    """
    nonempty = state.l > 0
    # Divide by 1 on empty rows so that neither value nor gradient sees 0 / 0.
    l_safe = jnp.where(nonempty, state.l, jnp.ones_like(state.l))
    out = state.acc / l_safe[..., None]
    return jnp.where(nonempty[..., None], out, jnp.zeros_like(out))


def logsumexp(state: SoftmaxState) -> jax.Array:
    """``log Σ exp(s)`` over the keys seen: ``m + log l``; ``-inf`` where empty.

    Args:
      state: a :class:`SoftmaxState`.

    Returns:
      ``(...)`` in the state's dtype.
    """
    nonempty = state.l > 0
    l_safe = jnp.where(nonempty, state.l, jnp.ones_like(state.l))
    lse = _finite_or_zero(state.m) + jnp.log(l_safe)
    return jnp.where(nonempty, lse, jnp.full_like(lse, -jnp.inf))
