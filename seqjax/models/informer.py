"""Informer's encoder–decoder for long-sequence forecasting (Zhou et al. 2021), over registry mixers.

The network (``config.model.architecture = "informer"``)::

    e = DataEmbedding(history)            # value conv (k=3, circular) + time-feature Dense + sinusoidal positions
    m = Encoder(e)                        # Backbone: mixer blocks (probsparse, bidirectional), distilling between
    x = DataEmbedding'(decoder_inputs)    # label_len known values, then pred_len zeros; their time features
    for each decoder block:               # seqjax.models.encoder_decoder.DecoderBlock
        x = x + SelfMixer(Norm(x))        # causal (masked) ProbSparse or any causal mixer
        x = x + CrossAttention(Norm(x), m)
        x = x + MLP(Norm(x))
    y = Dense_C(Norm(x))                  # (b, label_len + pred_len, C); the last pred_len are the forecast

All ``pred_len`` outputs come from one forward pass (the paper's "generative
style decoder"): the horizon positions hold zeros and their time stamps, never
the values they predict, so changing the values beyond the history cannot
change the output (tested).

* **Inputs**: ``inputs (b, seq_len, C + k)`` and ``decoder_inputs (b,
  label_len + pred_len, C + k)``: the first ``channels = C`` features are the
  values, the rest the ``k`` time features (``seqjax.tasks.forecast``).
* **Embedding** (the paper's ``DataEmbedding``, ``embed="timeF"``): a kernel-3
  convolution over time with circular padding maps the ``C`` values to
  ``d_model``; a Dense maps the ``k`` time features to ``d_model``; sinusoidal
  positions are added; then dropout. The encoder and the decoder each have
  their own embedding, as the paper's code.
* **Encoder**: any registry mixer(s) (``encoder_mixers``, non-causal where the
  mixer has a ``causal`` field), ``distil`` = Informer's distilling layers
  (``seqjax.models.distil``) between the blocks; the final norm.
* **Decoder**: ``num_decoder_layers`` of the seq2seq model's
  :class:`~seqjax.models.encoder_decoder.DecoderBlock` (its cross-attention
  through :func:`seqjax.ops.attention`), the self-mixer causal.
* **Decoder-less baseline** (``num_decoder_layers = 0``): the encoder's last
  position (after its final norm) → Dense to ``pred_len · C`` → ``(b,
  pred_len, C)``; ``decoder_inputs`` are then ignored. This is how "any mixer
  as the encoder" without a decoder is scored (a causal mixer's last position
  has read the whole history).

Departures from the paper's code: pre-norm residual blocks (the project's
``Block``; the paper's layers are post-norm), the channel MLP's exact GELU and
no conv-1×1 form (equivalent), the distilling layer's LayerNorm in place of
BatchNorm (``distil.py``), no ``mix`` transpose of the decoder's self-attention
output (a reshape quirk of the authors' code), ProbSparse's deterministic key
sampling (``seqjax/mixers/probsparse.py``), and the 3 + 1-layer encoder stack
of the paper's Informer (its "InformerStack") is not built: one encoder, as the
authors' ``--model informer``.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jaxtyping import Array, Float

from seqjax.errors import ConfigError, check_choice
from seqjax.mixers.common import Dense
from seqjax.models.backbone import CHANNELS, Backbone, MixerSpec
from seqjax.models.config import DTYPES, merge_fields
from seqjax.models.embeddings import sinusoidal_table
from seqjax.models.encoder_decoder import DecoderBlock, side_layers, side_spec, source_ids
from seqjax.models.norms import NORMS, make_norm

_FIELD = "config.model"


class DataEmbedding(nn.Module):
    """Value convolution + time-feature Dense + sinusoidal positions, then dropout.

    Attributes:
      d_model: width.
      channels: ``C``: the first ``C`` input features are values, the rest time features.
      dropout: dropout rate.
      dtype: compute dtype (params float32; the output is float32).
    """

    d_model: int
    channels: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "b l f"], deterministic: bool = True) -> Float[Array, "b l d"]:
        """Embeds ``x (b, l, C + k)`` to ``(b, l, d_model)`` float32."""
        values, marks = x[..., :self.channels], x[..., self.channels:]
        h = nn.Conv(self.d_model, kernel_size=(3,), padding="CIRCULAR", dtype=self.dtype, param_dtype=jnp.float32,
                    name="value")(values.astype(self.dtype)).astype(jnp.float32)
        if marks.shape[-1]:
            h = h + Dense(self.d_model, dtype=self.dtype, param_dtype=jnp.float32, name="time")(
                marks.astype(self.dtype)).astype(jnp.float32)
        h = h + sinusoidal_table(jnp.arange(x.shape[1]), self.d_model)
        return nn.Dropout(self.dropout)(h, deterministic=deterministic)


class Informer(nn.Module):
    """The Informer encoder–decoder (see the module docstring).

    Parameters: ``enc_embed/``, ``encoder/`` (a Backbone), ``dec_embed/``,
    ``decoder_{i}/`` (DecoderBlocks), ``final_norm``, ``head``.

    Attributes:
      encoder_layers: one mixer spec per encoder layer.
      decoder_layers: one causal mixer spec per decoder layer (empty: the decoder-less baseline).
      d_model: width.
      num_heads: cross-attention heads.
      channels: ``C``, values per step (input values and outputs).
      pred_len: horizon (the decoder-less head's output length).
      channel: channel branch of every block.
      mlp_ratio: MLP hidden width over ``d_model``.
      norm: norm kind.
      dropout: dropout rate (embeddings, residual branches).
      distil: distilling layers between the encoder blocks.
      dtype: compute dtype; params float32.
    """

    encoder_layers: Sequence[MixerSpec]
    decoder_layers: Sequence[MixerSpec]
    d_model: int = 64
    num_heads: int = 4
    channels: int = 1
    pred_len: int = 24
    channel: str = "mlp"
    mlp_ratio: float = 4.0
    norm: str = "layernorm"
    dropout: float = 0.0
    distil: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: Float[Array, "b l f"], *, decoder_inputs: Float[Array, "b m f"] | None = None,
                 mask=None, segment_ids=None, deterministic: bool = True) -> Float[Array, "b m c"]:
        """Forecasts from the history.

        Args:
          inputs: ``(b, seq_len, C + k)`` history (values, then time features).
          decoder_inputs: ``(b, label_len + pred_len, C + k)`` (the known start,
            zeros over the horizon; time features throughout); required with a decoder.
          mask: unused (every position is real); accepted for the trainer.
          segment_ids: must be None (one series window per row).
          deterministic: disables dropout (else pass ``rngs={"dropout": key}``).

        Returns:
          ``(b, label_len + pred_len, C)`` float32 (decoder-less: ``(b, pred_len, C)``).

        Raises:
          ConfigError: ``segment_ids`` given, ``decoder_inputs`` missing or of another width.
        """
        del mask
        if segment_ids is not None:
            raise ConfigError("informer: segment_ids must be None (one window per row; the embedding's circular "
                              "convolution and the distilling read neighbours)")
        x = DataEmbedding(self.d_model, self.channels, self.dropout, self.dtype, name="enc_embed")(
            inputs, deterministic)
        memory = Backbone(self.encoder_layers, channel=self.channel, mlp_ratio=self.mlp_ratio, norm=self.norm,
                          dropout=self.dropout, dtype=self.dtype, distil=self.distil, name="encoder")(
            x, deterministic=deterministic)
        if not self.decoder_layers:
            y = Dense(self.pred_len * self.channels, dtype=self.dtype, param_dtype=jnp.float32, name="head")(
                memory[:, -1].astype(self.dtype))
            return y.astype(jnp.float32).reshape(inputs.shape[0], self.pred_len, self.channels)
        if decoder_inputs is None or decoder_inputs.shape[-1] != inputs.shape[-1]:
            got = None if decoder_inputs is None else tuple(decoder_inputs.shape)
            raise ConfigError(f"informer: decoder_inputs={got}; expected (batch, label_len + pred_len, "
                              f"{inputs.shape[-1]}) as the task's batch['decoder_inputs']")
        kv_ids = source_ids(jnp.ones(memory.shape[:2], bool))  # every encoder position is real
        h = DataEmbedding(self.d_model, self.channels, self.dropout, self.dtype, name="dec_embed")(
            decoder_inputs, deterministic)
        for i, spec in enumerate(self.decoder_layers):
            h = DecoderBlock(spec, self.num_heads, self.channel, self.mlp_ratio, self.norm, self.dropout, self.dtype,
                             name=f"decoder_{i}")(h, kv_ids=kv_ids, memory=memory, deterministic=deterministic)
        h = make_norm(self.norm, "final_norm")(h)
        return Dense(self.channels, dtype=self.dtype, param_dtype=jnp.float32, name="head")(
            h.astype(self.dtype)).astype(jnp.float32)


# ----------------------------------------------------------------------------- configuration


def default_config() -> ml_collections.ConfigDict:
    """Every field of the Informer's ``config.model`` with its default (set ``channels`` and ``pred_len``).

    Returns:
      A fresh ConfigDict: ``architecture="informer"``, 2 ``probsparse`` encoder
      layers with distilling, 1 ``probsparse`` decoder layer, d_model 64, 4 heads.
    """
    return ml_collections.ConfigDict(dict(
        architecture="informer", encoder_mixers="probsparse", decoder_mixers="probsparse", num_encoder_layers=2,
        num_decoder_layers=1, d_model=64, num_heads=4, channels=1, pred_len=24, mixer_kwargs={}, channel="mlp",
        mlp_ratio=4.0, norm="layernorm", dropout=0.0, distil=True, dtype="float32",
    ))


_NO_POSITIONS = {"positions": "none"}


def validate(model_config) -> None:
    """Raises ConfigError (one line naming the field and the allowed values) unless the config can be built.

    Args:
      model_config: a ConfigDict / dict with the fields of :func:`default_config`.
    """
    _checked(model_config)


def _checked(model_config) -> tuple[dict, list[MixerSpec], list[MixerSpec]]:
    """``(fields merged over the defaults, encoder specs, decoder specs)``, every field checked."""
    cfg = merge_fields(model_config, default_config().to_dict(), "an Informer")
    for field, low in (("num_encoder_layers", 1), ("num_decoder_layers", 0), ("d_model", 1), ("num_heads", 1),
                       ("channels", 1), ("pred_len", 1)):
        value = cfg[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{_FIELD}.{field}={value!r} is not allowed; allowed: an int >= {low}")
    if cfg["d_model"] % cfg["num_heads"]:
        raise ConfigError(f"{_FIELD}.num_heads={cfg['num_heads']} must divide {_FIELD}.d_model={cfg['d_model']}")
    check_choice(f"{_FIELD}.channel", cfg["channel"], CHANNELS)
    check_choice(f"{_FIELD}.norm", cfg["norm"], NORMS)
    check_choice(f"{_FIELD}.dtype", cfg["dtype"], DTYPES)
    check_choice(f"{_FIELD}.distil", cfg["distil"], (True, False))
    if not 0.0 <= float(cfg["dropout"]) < 1.0:
        raise ConfigError(f"{_FIELD}.dropout={cfg['dropout']!r} is not allowed; allowed: a number in [0, 1)")
    if cfg["architecture"] != "informer":
        raise ConfigError(f"{_FIELD}.architecture={cfg['architecture']!r} is not the Informer's; allowed here: "
                          "'informer'")
    # The embedding adds Informer's absolute positions, so mixers with a positions field get none.
    enc = [side_spec(cfg, name, False, _NO_POSITIONS) for name in side_layers(cfg, "encoder")]
    dec = ([side_spec(cfg, name, True, _NO_POSITIONS) for name in side_layers(cfg, "decoder")]
           if cfg["num_decoder_layers"] else [])
    return cfg, enc, dec


def build(model_config) -> Informer:
    """Validates an Informer ``config.model`` and builds the network.

    Args:
      model_config: a ConfigDict / dict with the fields of :func:`default_config`.

    Returns:
      An unbound :class:`Informer`; ``model.init(key, inputs, decoder_inputs=...)``.

    Raises:
      ConfigError: an unknown field or a bad value (one line naming the field and the allowed values).
    """
    cfg, enc, dec = _checked(model_config)
    return Informer(encoder_layers=tuple(enc), decoder_layers=tuple(dec), d_model=cfg["d_model"],
                    num_heads=cfg["num_heads"], channels=cfg["channels"], pred_len=cfg["pred_len"],
                    channel=cfg["channel"], mlp_ratio=float(cfg["mlp_ratio"]), norm=cfg["norm"],
                    dropout=float(cfg["dropout"]), distil=cfg["distil"], dtype=DTYPES[cfg["dtype"]])


def check_length(model_config, length: int, field: str) -> None:
    """Raises ConfigError for a length the model cannot take; the Informer has no length limit.

    Its positions are sinusoidal (no table) and its mixers get no ``max_length``,
    so only the value is checked.

    Args:
      model_config: ``config.model``.
      length: the longest ``inputs`` length that will be fed.
      field: dotted name of where ``length`` comes from, for the message.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise ConfigError(f"{field}={length!r} must be an int > 0")


def check_build(model_config, length: int) -> None:
    """Raises ConfigError when the network cannot be initialised (an abstract ``init``: nothing is computed).

    Args:
      model_config: ``config.model`` (already passed by :func:`validate`).
      length: history and decoder length of the traced example (values only, no time features).
    """
    model = build(model_config)
    x = jax.ShapeDtypeStruct((1, length, int(model.channels)), jnp.float32)
    try:
        jax.eval_shape(lambda a, b: model.init(jax.random.key(0), a, decoder_inputs=b), x, x)
    except (TypeError, ValueError) as e:  # a width rule a mixer checks only when it creates its parameters
        message = str(e).strip().splitlines()
        raise ConfigError(f"{_FIELD} does not build: {type(e).__name__}: {message[0] if message else ''}") from None


__all__ = ["DataEmbedding", "Informer", "build", "check_build", "check_length", "default_config", "validate"]
