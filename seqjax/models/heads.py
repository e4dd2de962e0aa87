"""Output heads: language modelling, per-position regression, pooled classification.

All heads read the backbone's normalised ``(b, l, d)`` stream and return
float32 (losses are computed in float32 whatever the compute dtype):

* ``"lm"``: untied Dense ``d -> vocab_size`` without bias, logits ``(b, l, vocab)``;
* ``"regression"``: Dense ``d -> output_dim`` with bias at every position,
  ``(b, l, output_dim)`` (ICL reads the predictions at the ``x`` positions);
* ``"classification"``: pool over length, then Dense ``d -> num_classes``
  with bias, ``(b, num_classes)``;
* ``"retrieval"`` (LRA's two-tower matching): both documents are encoded by
  the same backbone and pooled to ``u`` and ``v``; ``[u, v, u*v, u-v]`` goes
  through a one-hidden-layer GELU MLP to ``(b, num_classes)``.

Pooling and the padding mask. Whether a position is padding cannot be told
from the inputs (token 0 may be a real token, continuous inputs have no pad
id), so the caller passes an explicit ``mask: (b, l)``, True (or nonzero) at
real positions and False at padding:

* ``"mean"``: the mean over the positions where ``mask`` is True (all
  positions without a mask; a row without any True position pools to 0);
* ``"last"``: the last position where ``mask`` is True (the final position
  without a mask). With right padding this is the last real token, which is
  what a causal model should read;
* ``"cls"``: position 0, where the embedding prepended the learned CLS token
  (the mask is not needed; the CLS token must be able to see the sequence, so
  the model needs at least one non-causal layer, checked by ``validate``);
* ``"lowrank_mha"``: LAMA's low-rank multi-head attention of a learned global
  context vector over the positions where ``mask`` is True (Mehta et al.,
  :class:`~seqjax.models.pooling.LowRankAttentionPool`), ``heads`` weighted
  sums concatenated: ``(b, heads · d)``. It has parameters, so it is a module
  (:class:`Pooling`), not a case of :func:`pool`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from seqjax.mixers.common import dense
from seqjax.models.pooling import LowRankAttentionPool
from seqjax.types import Seq

POOLINGS = ("mean", "last", "cls", "lowrank_mha")


def pool(x: Seq, pooling: str, mask: Bool[Array, "b l"] | None = None) -> Float[Array, "b d"]:
    """Pools ``x`` over the length axis (see the module docstring).

    Args:
      x: ``(b, l, d)``.
      pooling: ``"mean"``, ``"last"`` or ``"cls"``.
      mask: ``(b, l)``, True at real positions; None: every position is real.

    Returns:
      ``(b, d)`` float32.
    """
    x = x.astype(jnp.float32)
    if pooling == "cls":
        return x[:, 0]
    if mask is None:
        return x.mean(axis=1) if pooling == "mean" else x[:, -1]
    mask = jnp.asarray(mask).astype(bool)
    if pooling == "mean":
        weights = mask.astype(jnp.float32)
        total = jnp.einsum("bl,bld->bd", weights, x)
        return total / jnp.maximum(weights.sum(axis=1, keepdims=True), 1.0)
    if pooling == "last":
        length = x.shape[1]
        # Index of the last True: length - 1 - (first True in the reversed mask).
        last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)
        return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    raise ValueError(f"pooling={pooling!r}; allowed: mean, last, cls (lowrank_mha has parameters: use Pooling)")


class Pooling(nn.Module):
    """Any pooling of :data:`POOLINGS`: :func:`pool`, or the parametrised ``lowrank_mha``.

    Attributes:
      pooling: a name of :data:`POOLINGS`.
      heads: ``lowrank_mha``'s number of heads (the output is ``heads · d`` wide).
      rank: ``lowrank_mha``'s rank of the factorised scores.
      dtype: compute dtype of ``lowrank_mha``'s projections.
    """

    pooling: str = "mean"
    heads: int = 4
    rank: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Seq, mask: Bool[Array, "b l"] | None = None) -> Float[Array, "b w"]:
        """``(b, d)`` float32 (``(b, heads · d)`` for ``lowrank_mha``) of ``x: (b, l, d)``."""
        if self.pooling == "lowrank_mha":
            return LowRankAttentionPool(self.heads, self.rank, dtype=self.dtype, name="lowrank_mha")(x, mask)
        return pool(x, self.pooling, mask)


class LMHead(nn.Module):
    """Untied next-token logits.

    Attributes:
      vocab_size: number of output classes per position.
      dtype: compute dtype of the projection (logits are returned in float32).
    """

    vocab_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Seq) -> Float[Array, "b l vocab"]:
        """Logits ``(b, l, vocab_size)`` float32 of ``x: (b, l, d)``."""
        logits = dense(self.vocab_size, ("embed", "vocab"), dtype=self.dtype, name="logits")(x.astype(self.dtype))
        return logits.astype(jnp.float32)


class RegressionHead(nn.Module):
    """A linear read-out at every position.

    Attributes:
      output_dim: width of each prediction.
      dtype: compute dtype (predictions are returned in float32).
    """

    output_dim: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Seq) -> Float[Array, "b l o"]:
        """Predictions ``(b, l, output_dim)`` float32 of ``x: (b, l, d)``."""
        y = dense(self.output_dim, ("embed", None), use_bias=True, dtype=self.dtype, name="out")(x.astype(self.dtype))
        return y.astype(jnp.float32)


class ClassificationHead(nn.Module):
    """Pooling over length, then a linear classifier.

    Attributes:
      num_classes: number of classes.
      pooling: ``"mean"``, ``"last"``, ``"cls"`` (see :func:`pool`) or ``"lowrank_mha"``.
      pooling_heads: heads of ``lowrank_mha``.
      pooling_rank: rank of ``lowrank_mha``.
      dtype: compute dtype (logits are returned in float32).
    """

    num_classes: int
    pooling: str = "mean"
    pooling_heads: int = 4
    pooling_rank: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Seq, mask: Bool[Array, "b l"] | None = None) -> Float[Array, "b c"]:
        """Class logits ``(b, num_classes)`` float32.

        Args:
          x: ``(b, l, d)`` backbone output.
          mask: ``(b, l)``, True at real positions (see :func:`pool`), or None.

        Returns:
          ``(b, num_classes)`` float32 logits.
        """
        pooled = Pooling(self.pooling, self.pooling_heads, self.pooling_rank, dtype=self.dtype, name="pool")(x, mask)
        y = dense(self.num_classes, ("embed", None), use_bias=True, dtype=self.dtype, name="logits")(
            pooled.astype(self.dtype))
        return y.astype(jnp.float32)


class RetrievalHead(nn.Module):
    """Two-tower matching: ``[u, v, u*v, u-v]`` -> MLP -> class logits (LRA retrieval).

    Attributes:
      num_classes: number of classes.
      hidden: width of the MLP's hidden layer.
      dtype: compute dtype (logits are returned in float32).
    """

    num_classes: int
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, u: Float[Array, "b d"], v: Float[Array, "b d"]) -> Float[Array, "b c"]:
        """Class logits ``(b, num_classes)`` float32 of the pooled encodings ``u``, ``v``."""
        features = jnp.concatenate([u, v, u * v, u - v], axis=-1).astype(self.dtype)
        h = nn.gelu(dense(self.hidden, (None, "mlp"), use_bias=True, dtype=self.dtype, name="hidden")(features))
        y = dense(self.num_classes, ("mlp", None), use_bias=True, dtype=self.dtype, name="logits")(h)
        return y.astype(jnp.float32)
