"""The backbone: a stack of pre-norm residual blocks, then a final norm.

One block (GPT-2 / Mamba style, pre-norm)::

    h = x + Dropout(Mixer(Norm_1(x)))            # sequence mixing
    y = h + Dropout(Channel(Norm_2(h)))          # per-position channel mixing

with ``Norm`` a LayerNorm (scale and bias) or an RMSNorm (scale only), both
with ``eps = 1e-5`` and computed in float32, and ``Channel`` one of

* ``"mlp"``: ``W_2 gelu(W_1 h + b_1) + b_2``, hidden width
  ``H = round(mlp_ratio * d_model)``, exact (erf) GELU;
* ``"glu"``: SwiGLU (Shazeer 2020), ``W_o (silu(W_g h) * (W_u h))`` without
  biases. Its hidden width is ``H' = round(2H/3)`` so that its three matrices
  hold about as many parameters as the MLP's two (``3 d H' ≈ 2 d H``; the
  LLaMA convention), which keeps model sizes comparable across ``channel``;
* ``"none"``: no channel branch (Mamba-style blocks: the mixer is the block).

The residual stream stays float32 (accumulation); the normalised input of
each branch is cast to the compute ``dtype`` and the branch output back to
float32 before it is added. The mixer is built from the registry by name
(``seqjax.mixers.get``) with its constructor kwargs, and receives
``segment_ids`` and ``deterministic``. The backbone ends with a final norm of
the same kind (pre-norm stacks need it before the head).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from seqjax import mixers
from seqjax.errors import ConfigError
from seqjax.mixers.common import dense, gelu
from seqjax.models.distil import Distil
from seqjax.models.norms import make_norm
from seqjax.models.spiking import lif
from seqjax.parallel.rules import constrain
from seqjax.types import SegmentIds, Seq

RESIDUAL_AXES = ("batch", "length", "embed")
"""Logical names of the residual stream's dimensions."""

CHANNELS = ("mlp", "glu", "none")

# A mixer spec: (registry name, constructor kwargs as sorted (key, value) pairs).
# Tuples, not dicts, so that modules holding them stay hashable.
MixerSpec = tuple[str, tuple[tuple[str, Any], ...]]


def channel_hidden(channel: str, d_model: int, mlp_ratio: float) -> int:
    """Hidden width of the channel branch (see the module docstring).

    Args:
      channel: ``"mlp"``, ``"glu"`` or ``"none"``.
      d_model: model width.
      mlp_ratio: hidden width of the MLP over ``d_model``.

    Returns:
      ``H = round(mlp_ratio * d_model)`` for ``mlp``, ``round(2H/3)`` for
      ``glu`` (at least 1), 0 for ``none``.
    """
    hidden = max(1, int(round(mlp_ratio * d_model)))
    if channel == "glu":
        return max(1, int(round(2 * hidden / 3)))
    return 0 if channel == "none" else hidden


class ChannelMLP(nn.Module):
    """Position-wise MLP ``W_2 gelu(W_1 x + b_1) + b_2`` (exact GELU).

    With ``spiking``, LIF neurons over the positions replace the GELU
    (Spiking LMUFormer's channel mixer, :mod:`seqjax.models.spiking`): the
    hidden layer emits 0/1 spikes and the branch is no longer position-wise.

    Attributes:
      hidden: hidden width ``H``.
      spiking: LIF activation instead of GELU.
      dtype: compute dtype (params are float32).
    """

    hidden: int
    spiking: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Seq, segment_ids: SegmentIds | None = None) -> Seq:
        """Applies the MLP to ``x: (b, l, d)``; returns ``(b, l, d)`` in ``dtype``.

        ``segment_ids`` restart the LIF membranes (``spiking`` only).
        """
        d = x.shape[-1]
        h = dense(self.hidden, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="wi")(x)
        h = lif(h, segment_ids) if self.spiking else gelu(h)
        return dense(d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="wo")(h)


class ChannelGLU(nn.Module):
    """SwiGLU ``W_o (silu(W_g x) * (W_u x))`` without biases.

    Attributes:
      hidden: hidden width ``H'`` (``round(2H/3)`` from :func:`channel_hidden`).
      dtype: compute dtype (params are float32).
    """

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Seq) -> Seq:
        """Applies the GLU to ``x: (b, l, d)``; returns ``(b, l, d)`` in ``dtype``."""
        d = x.shape[-1]
        gate = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="wg")(x)
        up = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="wu")(x)
        return dense(d, ("mlp", "embed"), dtype=self.dtype, name="wo")(nn.silu(gate) * up)


class Block(nn.Module):
    """One pre-norm residual block: mixer branch, then channel branch.

    Attributes:
      mixer: ``(name, kwargs)`` spec; the mixer is ``mixers.get(name)(**kwargs)``
        (kwargs already resolved by ``seqjax.models.build``: causal, dtype, ...).
      channel: ``"mlp"``, ``"glu"`` or ``"none"``.
      mlp_ratio: MLP hidden width over ``d_model`` (see :func:`channel_hidden`).
      norm: ``"layernorm"`` or ``"rmsnorm"``.
      dropout: residual dropout rate on each branch output.
      dtype: compute dtype of the branches.
      spiking: LIF neurons in the ``mlp`` channel branch (Spiking LMUFormer).
    """

    mixer: MixerSpec
    channel: str = "mlp"
    mlp_ratio: float = 4.0
    norm: str = "layernorm"
    dropout: float = 0.0
    dtype: Any = jnp.float32
    spiking: bool = False

    @nn.compact
    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True,
                 cache: dict | None = None):
        """Applies the block.

        Args:
          x: ``(b, l, d)`` float32 residual stream (``(b, 1, d)`` with ``cache``).
          segment_ids: ``(b, l)`` packed-segment ids, passed to the mixer.
          deterministic: disables dropout (here and in the mixer) when True.
          cache: decoding: the mixer's cache (``init_cache``); then ``x`` is
            one position and the mixer runs its recurrent ``step``.

        Returns:
          ``(b, l, d)`` float32; with ``cache``, ``(output, new cache)``.
        """
        x = x.astype(jnp.float32)
        name, kwargs = self.mixer
        h = make_norm(self.norm, "mixer_norm")(x).astype(self.dtype)
        mixer = mixers.get(name)(**dict(kwargs), name="mixer")
        if cache is not None:
            y, cache = mixer.step(h[:, 0], cache)
            y = y[:, None]
        else:
            y = mixer(h, segment_ids=segment_ids, deterministic=deterministic)
        x = x + nn.Dropout(self.dropout)(y.astype(jnp.float32), deterministic=deterministic)
        if self.channel == "none":
            return x if cache is None else (x, cache)
        hidden = channel_hidden(self.channel, x.shape[-1], self.mlp_ratio)
        h = make_norm(self.norm, "channel_norm")(x).astype(self.dtype)
        if self.channel == "mlp":
            y = ChannelMLP(hidden, self.spiking, dtype=self.dtype, name="channel")(h, segment_ids)
        else:
            y = ChannelGLU(hidden, dtype=self.dtype, name="channel")(h)
        x = x + nn.Dropout(self.dropout)(y.astype(jnp.float32), deterministic=deterministic)
        return x if cache is None else (x, cache)


class Backbone(nn.Module):
    """Blocks ``block_0 .. block_{n-1}`` (one per mixer spec), then ``final_norm``.

    With ``distil``, Informer's distilling layer ``distil_i``
    (:class:`~seqjax.models.distil.Distil`: conv, norm, ELU, max-pool) follows
    every block but the last, halving the length each time.

    Attributes:
      layers: one :data:`MixerSpec` per layer (hybrids mix names).
      channel: channel branch of every block.
      mlp_ratio: MLP hidden width over ``d_model``.
      norm: norm kind of every block and of the final norm.
      dropout: residual dropout rate.
      dtype: compute dtype.
      distil: insert the distilling layers (the output is
        ``distilled_length(l, n - 1)`` long); no ``segment_ids`` then.
      spiking: LIF neurons in the ``mlp`` channel branches.
    """

    layers: Sequence[MixerSpec]
    channel: str = "mlp"
    mlp_ratio: float = 4.0
    norm: str = "layernorm"
    dropout: float = 0.0
    dtype: Any = jnp.float32
    distil: bool = False
    spiking: bool = False

    @nn.compact
    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True,
                 caches: Sequence[dict] | None = None):
        """Applies every block then the final norm.

        Args:
          x: ``(b, l, d)`` embedded inputs.
          segment_ids: ``(b, l)`` packed-segment ids, or None.
          deterministic: disables dropout when True.
          caches: decoding: one mixer cache per layer; ``x`` is then one
            position ``(b, 1, d)`` (see :mod:`seqjax.models.decode`).

        Returns:
          ``(b, l, d)`` float32, normalised (``(b, distilled_length(l, n - 1), d)`` with ``distil``);
          with ``caches``, ``(output, new caches)``.

        Raises:
          ConfigError: ``segment_ids`` with ``distil`` (the convolution and the
            pooling would mix neighbouring segments).
        """
        if self.distil and segment_ids is not None:
            raise ConfigError("segment_ids with config.model.distil=True: the distilling conv and max-pool mix "
                              "neighbouring packed sequences; allowed: segment_ids=None (one sequence per row)")
        # The residual stream's layout between blocks (a no-op without a mesh):
        # batch over data/fsdp, length over sequence under fsdp+sequence.
        x = constrain(x, RESIDUAL_AXES)
        new_caches = []
        for i, spec in enumerate(self.layers):
            block = Block(spec, self.channel, self.mlp_ratio, self.norm, self.dropout, self.dtype, self.spiking,
                          name=f"block_{i}")
            if caches is not None:
                x, cache = block(x, deterministic=deterministic, cache=caches[i])
                new_caches.append(cache)
                continue
            x = block(x, segment_ids=segment_ids, deterministic=deterministic)
            if self.distil and i < len(self.layers) - 1:
                x = Distil(self.norm, self.dtype, name=f"distil_{i}")(x)
            x = constrain(x, RESIDUAL_AXES)
        x = make_norm(self.norm, "final_norm")(x)
        return x if caches is None else (x, new_caches)
