"""The top-level sequence model: embedding, backbone, head.

``SequenceModel`` is what :func:`seqjax.models.build` returns. Its fields are
the *resolved* configuration (mixer kwargs already carry ``causal``, ``dtype``
and the rest, see ``seqjax/models/__init__.py``), so that the module itself
holds no config logic and can also be built by hand in tests.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Bool

from seqjax.errors import ConfigError
from seqjax.models.backbone import Backbone, MixerSpec
from seqjax.models.conv_embed import ConvEmbed
from seqjax.models.distil import distil_mask
from seqjax.models.embeddings import Embedding, prepend_cls_column
from seqjax.models.heads import ClassificationHead, LMHead, Pooling, RegressionHead, RetrievalHead
from seqjax.types import SegmentIds


class SequenceModel(nn.Module):
    """Embedding -> pre-norm residual blocks -> final norm -> head.

    Attributes:
      layers: one ``(mixer name, kwargs)`` spec per layer.
      d_model: width of the residual stream.
      channel: ``"mlp"``, ``"glu"`` or ``"none"``.
      mlp_ratio: MLP hidden width over ``d_model``.
      norm: ``"layernorm"`` or ``"rmsnorm"``.
      dropout: dropout rate (embeddings and residual branches).
      input: ``"tokens"`` or ``"continuous"``.
      vocab_size: token vocabulary (tokens input; also the LM head's width).
      input_dim: continuous input width.
      positions: ``"none"``, ``"learned"`` or ``"sinusoidal"`` (model-level
        absolute positions; mixers may add their own, e.g. RoPE in ``mha``).
      max_length: learned position table size.
      head: ``"lm"``, ``"regression"``, ``"classification"`` or
        ``"retrieval"`` (inputs ``(b, 2, l)``: two documents through the same
        encoder, see ``heads.py``).
      output_dim: regression width.
      num_classes: classification classes.
      pooling: ``"mean"``, ``"last"``, ``"cls"`` or ``"lowrank_mha"`` (classification, retrieval).
      pooling_heads: heads of ``lowrank_mha`` pooling.
      pooling_rank: rank of ``lowrank_mha`` pooling.
      dtype: compute dtype; params are float32.
      distil: Informer's distilling layers between the blocks (each halves
        the length; classification and retrieval heads only, see ``distil.py``).
      conv_embed: LMUFormer's convolutional patch embedding after the
        embedding: this many kernel-3 conv layers plus the conv position term
        (0: none; see ``conv_embed.py``).
      spiking: LIF neurons in the conv embedding and the ``mlp`` channel
        branches (Spiking LMUFormer, ``spiking.py``).
      causal: the conv embedding reads only the past (its padding); the
        mixers carry their own ``causal``.
    """

    layers: Sequence[MixerSpec]
    d_model: int = 64
    channel: str = "mlp"
    mlp_ratio: float = 4.0
    norm: str = "layernorm"
    dropout: float = 0.0
    input: str = "tokens"
    vocab_size: int | None = None
    input_dim: int | None = None
    positions: str = "none"
    max_length: int | None = None
    head: str = "lm"
    output_dim: int = 1
    num_classes: int | None = None
    pooling: str = "mean"
    pooling_heads: int = 4
    pooling_rank: int = 16
    dtype: Any = jnp.float32
    distil: bool = False
    conv_embed: int = 0
    spiking: bool = False
    causal: bool = True

    @property
    def uses_cls(self) -> bool:
        """Whether a CLS token is prepended (classification with ``pooling="cls"``)."""
        return self.head in ("classification", "retrieval") and self.pooling == "cls"

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        *,
        segment_ids: SegmentIds | None = None,
        mask: Bool[Array, "b l"] | None = None,
        deterministic: bool = True,
        caches: Sequence[dict] | None = None,
    ):
        """Runs the model.

        Args:
          inputs: ``(b, l)`` int tokens or ``(b, l, input_dim)`` floats;
            retrieval: ``(b, 2, l)`` (or ``(b, 2, l, input_dim)``), and
            ``segment_ids``/``mask`` ``(b, 2, l)``.
          segment_ids: ``(b, l)`` ids of packed sequences (every mixer and the
            positions restart at a segment start), or None.
          mask: ``(b, l)``, True at real (non-padding) positions; used by the
            classification head's ``mean``/``last``/``lowrank_mha`` pooling only (losses of the
            other heads mask their targets themselves). It does not stop
            bidirectional mixers from reading padding; give padding its own
            ``segment_ids`` for that.
          deterministic: disables dropout when True (pass
            ``rngs={"dropout": key}`` to ``apply`` otherwise).
          caches: decoding (:mod:`seqjax.models.decode`): one mixer cache per
            layer; ``inputs`` is then one position per row, ``(b, 1)``, and
            every mixer runs its recurrent ``step`` (causal ``lm`` models
            without model-level positions).

        Returns:
          lm: ``(b, l, vocab_size)`` logits; regression: ``(b, l, output_dim)``;
          classification and retrieval: ``(b, num_classes)`` logits. All float32.
          With ``caches``: ``(logits (b, 1, vocab_size), new caches)``.

        Raises:
          ConfigError: inputs, ``segment_ids`` or ``mask`` of the wrong shape.
        """
        if self.distil and self.head not in ("classification", "retrieval"):
            raise ConfigError(f"config.model.distil=True with config.model.head={self.head!r}: the distilled "
                              "sequence is shorter than the targets; allowed heads: classification, retrieval")
        if caches is not None and (self.head != "lm" or self.positions != "none" or self.distil):
            raise ConfigError(f"decoding with caches needs config.model.head='lm' and positions='none' (mixers carry "
                              f"their own, e.g. RoPE), got head={self.head!r}, positions={self.positions!r}")
        if caches is not None and (self.conv_embed or self.spiking):
            raise ConfigError(f"decoding with caches: config.model.conv_embed={self.conv_embed} and "
                              f"spiking={self.spiking} keep state outside the mixers' caches; allowed: conv_embed=0, "
                              "spiking=False")
        if self.head == "retrieval":
            # One encoder for both documents: fold the pair axis into the batch.
            if inputs.ndim < 3 or inputs.shape[1] != 2:
                raise ConfigError(f"retrieval inputs: shape {tuple(inputs.shape)}; expected (batch, 2, length[, dim])")
            pair = inputs.shape[0]
            fold = lambda a: None if a is None else a.reshape((2 * pair,) + a.shape[2:])  # noqa: E731
            inputs, segment_ids, mask = fold(inputs), fold(segment_ids), fold(mask)
        b, l = inputs.shape[:2]
        for what, arr in (("segment_ids", segment_ids), ("mask", mask)):
            if arr is not None and tuple(arr.shape) != (b, l):
                raise ConfigError(f"{what}: shape {tuple(arr.shape)} does not match the inputs' (batch, length) = {(b, l)}")
        x = Embedding(
            d_model=self.d_model, input=self.input, vocab_size=self.vocab_size, input_dim=self.input_dim,
            positions=self.positions, max_length=self.max_length, cls=self.uses_cls, dropout=self.dropout,
            dtype=self.dtype, name="embed",
        )(inputs, segment_ids=segment_ids, deterministic=deterministic)
        if self.uses_cls:
            segment_ids = prepend_cls_column(segment_ids)
            mask = prepend_cls_column(mask, True)
        if self.conv_embed:
            x = ConvEmbed(self.conv_embed, causal=self.causal, norm=self.norm, spiking=self.spiking, dtype=self.dtype,
                          name="conv_embed")(x, segment_ids)
        backbone = Backbone(
            self.layers, channel=self.channel, mlp_ratio=self.mlp_ratio, norm=self.norm, dropout=self.dropout,
            dtype=self.dtype, distil=self.distil, spiking=self.spiking, name="backbone",
        )
        if caches is not None:
            x, caches = backbone(x, deterministic=deterministic, caches=caches)
            return LMHead(self.vocab_size, dtype=self.dtype, name="head")(x), caches
        x = backbone(x, segment_ids=segment_ids, deterministic=deterministic)
        if self.distil:  # the pooling heads read the shorter sequence
            mask = distil_mask(mask, len(self.layers) - 1)
        if self.head == "lm":
            return LMHead(self.vocab_size, dtype=self.dtype, name="head")(x)
        if self.head == "regression":
            return RegressionHead(self.output_dim, dtype=self.dtype, name="head")(x)
        if self.head == "classification":
            return ClassificationHead(self.num_classes, self.pooling, self.pooling_heads, self.pooling_rank,
                                      dtype=self.dtype, name="head")(x, mask)
        if self.head == "retrieval":
            pooled = Pooling(self.pooling, self.pooling_heads, self.pooling_rank, dtype=self.dtype, name="pool")(
                x, mask).reshape(b // 2, 2, -1)
            return RetrievalHead(self.num_classes, hidden=self.d_model, dtype=self.dtype, name="head")(
                pooled[:, 0], pooled[:, 1])
        raise ConfigError(
            f"config.model.head={self.head!r} is not allowed; allowed: lm, regression, classification, retrieval")
