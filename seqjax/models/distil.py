"""Informer's self-attention distilling between encoder layers (``config.model.distil``).

Zhou et al. 2021 (Informer, eq. 5) halve the length between encoder layers so
that each layer's attention sees a coarser sequence::

    X_{j+1} = MaxPool(ELU(Conv1d(X_j)))

Conv1d: kernel 3 over time, ``d → d`` channels, circular padding (the paper's
code: ``padding_mode="circular"``), with bias; their code then applies
BatchNorm before the ELU. Here the norm is the model's own per-position norm
(LayerNorm or RMSNorm, :func:`~seqjax.models.norms.make_norm`): batch
statistics would need mutable state through the trainer, and a per-position
norm keeps packed batches and evaluation identical to training. MaxPool:
window 3, stride 2, padding 1 (padded with −∞), so ``L → ⌈L/2⌉``.

The convolution and the pooling read neighbours on both sides, so distilling
is for bidirectional encoders whose head pools the sequence (``classification``,
``retrieval``); ``config.model`` refuses it elsewhere. The padding mask
shrinks with the length (:func:`distil_mask`: a pooled position is real when
any position of its window is).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Bool

from seqjax.models.norms import make_norm
from seqjax.types import Seq

WINDOW, STRIDE = 3, 2


def distilled_length(length: int, times: int = 1) -> int:
    """The length after ``times`` distilling layers: ``⌈L/2⌉`` each.

    Args:
      length: ``L``.
      times: how many distilling layers.

    Returns:
      The length.
    """
    for _ in range(times):
        length = (length + 1) // 2
    return length


def _pool(x: jnp.ndarray) -> jnp.ndarray:
    """Max over windows of 3 positions, stride 2, one −∞ pad on each side: ``(b, l, c) → (b, ⌈l/2⌉, c)``."""
    return nn.max_pool(x, window_shape=(WINDOW,), strides=(STRIDE,), padding=((1, 1),))


def distil_mask(mask: Bool[Array, "b l"] | None, times: int = 1) -> Bool[Array, "b m"] | None:
    """The padding mask after ``times`` distilling layers: real where any pooled position was real.

    Args:
      mask: ``(b, l)``, True at real positions, or None.
      times: how many distilling layers.

    Returns:
      ``(b, distilled_length(l, times))`` booleans, or None.
    """
    if mask is None:
        return None
    m = jnp.asarray(mask).astype(jnp.float32)[..., None]
    for _ in range(times):
        m = _pool(m)
    return m[..., 0] > 0


class Distil(nn.Module):
    """One distilling layer: ``MaxPool(ELU(Norm(Conv1d(x))))``, halving the length.

    Attributes:
      norm: ``"layernorm"`` or ``"rmsnorm"`` (in place of the paper's BatchNorm).
      dtype: compute dtype of the convolution (params float32; the output is float32).
    """

    norm: str = "layernorm"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Seq) -> Seq:
        """Distils ``x: (b, l, d)`` to ``(b, ⌈l/2⌉, d)`` float32."""
        d = x.shape[-1]
        conv = nn.Conv(
            d, kernel_size=(WINDOW,), padding="CIRCULAR", use_bias=True, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, "embed", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)), name="conv")
        h = conv(x.astype(self.dtype)).astype(jnp.float32)
        h = nn.elu(make_norm(self.norm, "norm")(h))
        return _pool(h)


__all__ = ["Distil", "distil_mask", "distilled_length"]
