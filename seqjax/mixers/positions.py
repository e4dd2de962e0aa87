"""Position information for the attention mixers: RoPE, ALiBi and learned tables.

Shared by ``attention.py`` (``mha``, ``sliding_window``) and any other mixer
that needs positions. Three schemes:

* **RoPE** (Su et al. 2021, "RoFormer"): rotate each pair of query/key
  channels by an angle proportional to the position, so that the score
  ``rope(q, i) · rope(k, j)`` depends on ``i - j`` only. We use the
  "rotate-half" pairing (channel ``c`` with ``c + d/2``, as in GPT-NeoX and
  LLaMA): with ``θ_c = base^(-2c/d)`` for ``c < d/2``::

      x'_c       = x_c cos(pθ_c) - x_{c+d/2} sin(pθ_c)
      x'_{c+d/2} = x_{c+d/2} cos(pθ_c) + x_c sin(pθ_c)

* **ALiBi** (Press et al. 2022, "Train Short, Test Long"): no position in the
  inputs; a head-specific linear penalty ``-m_h |i - j|`` is added to the
  attention scores, with slopes ``m_h`` a geometric sequence (see
  :func:`alibi_slopes`).
* **Learned absolute positions** (as in GPT-2): a trainable table of
  ``max_length`` vectors, looked up by position (:class:`LearnedPositions`).

Packed sequences: the mixers feed positions that restart at every segment
start (:func:`seqjax.mixers.common.positions_in_segment`), so that a packed
row equals separate runs even for absolute (learned) positions. A *change* of
segment id starts a new segment (ids may repeat later in the row), as in
:func:`seqjax.ops.linear_scan`.
"""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from seqjax.ops.common import accum_dtype

POSITIONS = ("none", "learned", "rope", "alibi")
"""The values of the attention mixers' ``positions`` field."""


# --- RoPE ----------------------------------------------------------------------------


def rope(x: Float[Array, "b l h k"], positions: Int[Array, "b l"], base: float = 10000.0) -> Float[Array, "b l h k"]:
    """Rotary position embedding (rotate-half pairing) of queries or keys.

    Args:
      x: ``(b, l, h, dk)`` with ``dk`` even.
      positions: ``(b, l)`` integer positions (e.g. ``common.positions_in_segment``).
      base: the frequency base (10000 in RoFormer).

    Returns:
      ``(b, l, h, dk)`` in ``x``'s dtype; angles and products in at least float32.
    """
    dk = x.shape[-1]
    if dk % 2:
        raise ValueError(f"rope: the head dimension must be even, got x of shape {x.shape}")
    if positions.shape != x.shape[:2]:
        raise ValueError(f"rope: positions must have shape (b, l)={x.shape[:2]}, got {positions.shape}")
    dtype = accum_dtype(x.dtype)
    half = dk // 2
    inv_freq = base ** (-jnp.arange(half, dtype=dtype) * 2.0 / dk)
    angle = positions.astype(dtype)[:, :, None, None] * inv_freq  # (b, l, 1, half)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x1, x2 = jnp.split(x.astype(dtype), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# --- ALiBi ---------------------------------------------------------------------------


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi's head slopes (Press et al. 2022, Section 3 and their code).

    For ``n`` a power of two the slopes are the geometric sequence that starts
    at ``2^(-8/n)`` with that same ratio: ``m_i = 2^(-8i/n)``, ``i = 1..n``
    (``1/2, 1/4, ..., 1/256`` for 8 heads). Otherwise the paper's code takes
    the slopes of the largest power of two ``p < n`` and adds every other slope
    of ``2p`` heads (``m = 2^(-4i/p)`` for odd ``i``) until there are ``n``.

    Args:
      num_heads: ``n >= 1``.

    Returns:
      ``(n,)`` float32 NumPy array (a constant, not a parameter).
    """
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"alibi_slopes: num_heads must be a positive int, got {num_heads!r}")

    def power_of_two(n):
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    p = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two(p)
    if p < num_heads:
        slopes += power_of_two(2 * p)[0::2][: num_heads - p]
    return np.asarray(slopes, np.float32)


def alibi_bias(slopes, q_pos: Int[Array, "*b lq"], k_pos: Int[Array, "*b lk"]) -> Float[Array, "*b h lq lk"]:
    """The ALiBi score bias ``-m_h |i - j|`` for query positions ``i``, key positions ``j``.

    The absolute distance serves both directions: causal attention only sees
    ``j <= i`` (where it is ``i - j``, the paper's bias) and bidirectional
    attention penalises both sides symmetrically.

    Args:
      slopes: ``(h,)`` from :func:`alibi_slopes`.
      q_pos: ``(*b, lq)`` integer positions of the queries.
      k_pos: ``(*b, lk)`` integer positions of the keys (same leading axes).

    Returns:
      ``(*b, h, lq, lk)`` float32.
    """
    dist = jnp.abs(q_pos[..., :, None] - k_pos[..., None, :]).astype(jnp.float32)
    slopes = jnp.asarray(slopes, jnp.float32)[:, None, None]
    return -slopes * dist[..., None, :, :]


# --- learned absolute positions ------------------------------------------------------


class LearnedPositions(nn.Module):
    """A trainable table of absolute position embeddings (GPT-2 style).

    ``e_p = E[p]`` for ``0 <= p < max_length``. Looking up a position past the
    table (which a jitted decoding step cannot report as an error) returns NaN,
    so that running past ``max_length`` is visible instead of silently wrong.

    Attributes:
      max_length: number of positions in the table.
      features: width of each embedding.
      stddev: initial scale, ``E ~ N(0, stddev²)`` (0.02 as in GPT-2).
    """

    max_length: int
    features: int
    stddev: float = 0.02

    @nn.compact
    def __call__(self, positions: Int[Array, "*b"]) -> Float[Array, "*b d"]:
        """Embeddings of ``positions``.

        Args:
          positions: integer positions of any shape.

        Returns:
          ``positions.shape + (features,)`` float32; NaN rows for positions
          outside ``[0, max_length)``.
        """
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(self.stddev), (None, "embed")),
            (self.max_length, self.features),
        )
        return jnp.take(table, positions, axis=0, mode="fill", fill_value=jnp.nan)
