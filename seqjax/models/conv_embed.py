"""LMUFormer's convolutional patch embedding (``config.model.conv_embed``).

Liu, Datta, Li & Beerel 2024 ("LMUFormer: Low Complexity Yet Powerful Spiking
Model With Legendre Memory Units") put a stack of 1-D convolutions (kernel 3,
stride 1, no bias) between the input features and the LMU blocks, then add a
convolutional relative-position term::

    h_0 = x;   h_i = act(Norm(Conv_i(h_{i-1})))   for i = 1 .. n
    out = h_n + Conv_rpe(h_n)

``act`` is ReLU, or LIF neurons in the spiking model
(:func:`seqjax.models.spiking.lif`). Departures from the authors' code, each
for a reason:

* Norm: the model's per-position norm (LayerNorm or RMSNorm) instead of
  BatchNorm, as in :mod:`seqjax.models.distil` (batch statistics need mutable
  state through the trainer; a per-position norm keeps packed batches and
  evaluation identical to training). Their non-spiking embedding applies
  ReLU before BatchNorm; here the norm comes first in both variants.
* Padding: the paper pads one position on each side (each layer reads the next
  position: a one-step latency per layer). A causal model (``config.model.causal``)
  pads two positions on the left instead, so no output reads the future.
* Packed segments: a tap that would read across a segment boundary reads
  zero, exactly as the padding at a sequence end, so packed sequences equal
  separate runs.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from seqjax.models.norms import make_norm
from seqjax.models.spiking import lif
from seqjax.ops.common import segment_runs
from seqjax.types import SegmentIds, Seq

KERNEL = 3


def shifted(x: Seq, offset: int, run: jnp.ndarray | None) -> Seq:
    """``x`` read at ``t + offset`` (zero outside the sequence and across a segment boundary).

    Args:
      x: ``(b, l, d)``.
      offset: relative position (negative: the past).
      run: ``(b, l)`` run indices (:func:`seqjax.ops.common.segment_runs`) or None.

    Returns:
      ``(b, l, d)``.
    """
    length = x.shape[1]
    if offset == 0:
        return x
    if abs(offset) >= length:
        return jnp.zeros_like(x)
    if offset < 0:
        out = jnp.pad(x[:, :offset], ((0, 0), (-offset, 0), (0, 0)))
        same = None if run is None else jnp.pad(run[:, :offset] == run[:, -offset:], ((0, 0), (-offset, 0)))
    else:
        out = jnp.pad(x[:, offset:], ((0, 0), (0, offset), (0, 0)))
        same = None if run is None else jnp.pad(run[:, offset:] == run[:, :-offset], ((0, 0), (0, offset)))
    return out if same is None else jnp.where(same[..., None], out, 0)


class SegmentConv(nn.Module):
    """A kernel-3 convolution over positions, ``d -> d``, no bias, segment-aware.

    Attributes:
      causal: taps at ``t-2, t-1, t`` (True) or ``t-1, t, t+1`` (False).
      dtype: compute dtype (params float32).
    """

    causal: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Seq, run: jnp.ndarray | None) -> Seq:
        """Applies the convolution to ``x: (b, l, d)``; returns ``(b, l, d)`` in ``dtype``."""
        d = x.shape[-1]
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(in_axis=(0, 1),
                                                                                                 out_axis=2),
                                                                   (None, "embed", None)),
                            (KERNEL, d, d), jnp.float32)
        offsets = range(-(KERNEL - 1), 1) if self.causal else range(-(KERNEL // 2), KERNEL // 2 + 1)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        out = 0
        for tap, offset in enumerate(offsets):
            out = out + jnp.einsum("bld,de->ble", shifted(x, offset, run), kernel[tap],
                                   preferred_element_type=jnp.float32)
        return out.astype(self.dtype)


class ConvEmbed(nn.Module):
    """``num_layers`` (conv, norm, act) layers, then ``h + Conv_rpe(h)``.

    Attributes:
      num_layers: convolution layers before the position term (LMUFormer: 4).
      causal: causal (left-padded) convolutions.
      norm: ``"layernorm"`` or ``"rmsnorm"`` (in place of BatchNorm).
      spiking: LIF neurons instead of ReLU.
      dtype: compute dtype.
    """

    num_layers: int
    causal: bool = False
    norm: str = "layernorm"
    spiking: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Seq, segment_ids: SegmentIds | None = None) -> Seq:
        """Embeds ``x: (b, l, d)``; returns ``(b, l, d)`` float32.

        Args:
          x: the token / feature embedding.
          segment_ids: ``(b, l)`` packed-segment ids, or None.

        Returns:
          ``(b, l, d)`` float32.
        """
        run = None if segment_ids is None else segment_runs(jnp.asarray(segment_ids))
        h = x.astype(jnp.float32)
        for i in range(self.num_layers):
            h = SegmentConv(self.causal, self.dtype, name=f"conv_{i}")(h, run).astype(jnp.float32)
            h = make_norm(self.norm, f"norm_{i}")(h)
            h = lif(h, segment_ids) if self.spiking else nn.relu(h)
        return h + SegmentConv(self.causal, self.dtype, name="conv_rpe")(h, run).astype(jnp.float32)


__all__ = ["ConvEmbed", "SegmentConv", "shifted", "KERNEL"]
