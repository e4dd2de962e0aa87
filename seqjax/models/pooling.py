"""Low-rank multi-head attention pooling (``pooling="lowrank_mha"``).

Mehta, Rangwala and Ramakrishnan, "Low Rank Factorization for Compact
Multi-Head Self-Attention" (LAMA, 2019/2020): a sequence ``h_1 … h_L`` (rows of
``x``, width ``d``) is pooled by ``m`` attention distributions that a learned
global context vector ``c`` casts over the positions. Each head scores a
position with a bilinear form ``h_tᵀ W_i c``; writing the ``m`` forms with one
shared low-rank factorisation (low-rank bilinear pooling, rank ``k``) gives
all heads at once:

    f_t = Pᵀ (tanh(Uᵀ h_t) ∘ tanh(Vᵀ c))            f_t ∈ R^m
    a_{t,i} = exp(f_{t,i}) / Σ_s exp(f_{s,i})       (softmax over positions, per head)
    o_i = Σ_t a_{t,i} h_t                            o_i ∈ R^d
    pooled = [o_1; …; o_m]                            R^{m·d}

with ``U, V ∈ R^{d×k}``, ``P ∈ R^{k×m}``, ``c ∈ R^d``: ``2dk + km + d``
parameters for ``m`` heads instead of ``m`` full ``d × d`` bilinear forms.
The query is one global vector, not every position, so the cost is
``O(L·d·k)``.

Padding: the softmax runs over the positions where ``mask`` is True only (as
``mean`` pooling averages them); a row without any True position pools to 0.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from seqjax.mixers.common import dense
from seqjax.types import Seq

# LAMA's context vector plays the part of a learned query; a small normal like
# the CLS vector's keeps tanh(Vᵀ c) away from saturation at init.
CONTEXT_STDDEV = 0.02


def masked_softmax(scores: Float[Array, "b l m"], mask: Bool[Array, "b l"] | None) -> Float[Array, "b l m"]:
    """Softmax over the length axis restricted to ``mask``; all-False rows give zeros.

    Args:
      scores: ``(b, l, m)`` float32 logits.
      mask: ``(b, l)``, True at real positions, or None (every position).

    Returns:
      ``(b, l, m)`` weights summing to 1 over the real positions of each row
      (to 0 for a row with none).
    """
    if mask is None:
        return jax.nn.softmax(scores, axis=1)
    keep = jnp.asarray(mask).astype(bool)[:, :, None]
    scores = jnp.where(keep, scores, -jnp.inf)
    top = jnp.max(scores, axis=1, keepdims=True)
    # An all-padding row has max -inf; shift it by 0 so that exp gives 0, not NaN.
    top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
    weights = jnp.where(keep, jnp.exp(scores - top), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    return weights / jnp.where(total > 0, total, 1.0)


class LowRankAttentionPool(nn.Module):
    """LAMA pooling: ``heads`` attention distributions of a global context vector, concatenated.

    Attributes:
      heads: number of attention distributions ``m`` (the output is ``m · d`` wide).
      rank: rank ``k`` of the factorised bilinear scores.
      dtype: compute dtype of the projections; the scores, the softmax and the
        weighted sum are float32 (params are float32).
    """

    heads: int = 4
    rank: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Seq, mask: Bool[Array, "b l"] | None = None) -> Float[Array, "b md"]:
        """Pools ``x`` over its length.

        Args:
          x: ``(b, l, d)``.
          mask: ``(b, l)``, True at real positions, or None.

        Returns:
          ``(b, heads · d)`` float32: head ``i``'s weighted sum of the rows is
          ``[:, i·d:(i+1)·d]``.
        """
        b, _, d = x.shape
        x32 = x.astype(jnp.float32)
        context = self.param(
            "context", nn.with_logical_partitioning(nn.initializers.normal(CONTEXT_STDDEV), ("embed",)),
            (d,), jnp.float32)
        u = jnp.tanh(dense(self.rank, ("embed", None), dtype=self.dtype, name="U")(x32.astype(self.dtype)))
        v = jnp.tanh(dense(self.rank, ("embed", None), dtype=self.dtype, name="V")(context.astype(self.dtype)))
        scores = dense(self.heads, (None, None), dtype=self.dtype, name="P")(u * v)  # (b, l, m)
        weights = masked_softmax(scores.astype(jnp.float32), mask)
        # Sum over positions in float32 whatever the compute dtype.
        pooled = jnp.einsum("blm,bld->bmd", weights, x32, preferred_element_type=jnp.float32)
        return pooled.reshape(b, self.heads * d)


__all__ = ["LowRankAttentionPool", "masked_softmax"]
