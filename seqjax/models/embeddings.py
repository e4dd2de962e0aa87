"""Input embeddings: token or continuous read-in, absolute positions, CLS token.

The model's first layer maps ``inputs`` to the residual stream
``(batch, length, d_model)`` (float32):

* ``input="tokens"``: ``inputs`` are ``(b, l)`` integer ids in
  ``[0, vocab_size)``, looked up in a ``(vocab_size, d_model)`` table
  (``N(0, 0.02²)`` init, GPT-2's scale; the blocks are pre-norm, so the scale
  of the stream only sets the relative weight of the first residual branch).
* ``input="continuous"``: ``inputs`` are ``(b, l, input_dim)`` floats, read in
  by a Dense ``input_dim -> d_model`` with bias (ICL regression tokens).

Then absolute positions are added (``positions``):

* ``"none"``: nothing (mixers such as ``mha`` bring their own RoPE/ALiBi, and
  recurrent mixers know the order anyway);
* ``"learned"``: a trainable ``(max_length, d_model)`` table (GPT-2);
* ``"sinusoidal"``: the fixed table of Vaswani et al. 2017,
  ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/d))``.

Positions count from each segment's start (``segment_ids``), so that a packed
row equals its segments run one by one, as the mixers' own positions do.

Finally, with ``cls=True`` (classification with ``pooling="cls"``) a learned
``CLS`` vector is *prepended* at position 0; it gets no position embedding
(the vector itself marks it). The caller extends ``segment_ids`` and the mask
by one column (:func:`prepend_cls_column`).
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from seqjax.errors import ConfigError
from seqjax.mixers.common import dense, positions_in_segment
from seqjax.mixers.positions import LearnedPositions
from seqjax.types import SegmentIds

EMBED_STDDEV = 0.02


def sinusoidal_table(positions, features: int, base: float = 10000.0):
    """Sinusoidal position embeddings (Vaswani et al. 2017), interleaved sin/cos.

    Args:
      positions: integer positions of any shape (a jnp or NumPy array).
      features: embedding width ``d`` (odd widths drop the last cosine).
      base: the wavelength base (10000 in the paper).

    Returns:
      ``positions.shape + (features,)`` float32: channel ``2i`` is
      ``sin(p / base^(2i/d))``, channel ``2i+1`` is ``cos(p / base^(2i/d))``.
    """
    half = (features + 1) // 2
    inv_freq = jnp.asarray(base ** (-2.0 * np.arange(half) / features), jnp.float32)
    angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
    # Interleave (sin, cos) pairs then cut to `features` channels.
    table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(angles.shape[:-1] + (2 * half,))
    return table[..., :features]


def prepend_cls_column(array, value=None):
    """``array`` with one column prepended on the length axis (axis 1).

    Args:
      array: ``(b, l, ...)`` array, or None.
      value: the prepended column's value; None repeats column 0 (segment ids:
        the CLS token joins the first segment).

    Returns:
      ``(b, l + 1, ...)``, or None when ``array`` is None.
    """
    if array is None:
        return None
    array = jnp.asarray(array)
    first = array[:, :1] if value is None else jnp.full_like(array[:, :1], value)
    return jnp.concatenate([first, array], axis=1)


class Embedding(nn.Module):
    """Maps model inputs to the float32 residual stream (see the module docstring).

    Attributes:
      d_model: width of the residual stream.
      input: ``"tokens"`` or ``"continuous"``.
      vocab_size: token vocabulary (``input="tokens"``).
      input_dim: feature width of continuous inputs (``input="continuous"``).
      positions: ``"none"``, ``"learned"`` or ``"sinusoidal"``.
      max_length: size of the learned position table (``positions="learned"``).
      cls: prepend a learned CLS vector (classification with ``pooling="cls"``).
      dropout: dropout rate on the embeddings.
      dtype: compute dtype of the continuous read-in (the output is float32).
    """

    d_model: int
    input: str = "tokens"
    vocab_size: int | None = None
    input_dim: int | None = None
    positions: str = "none"
    max_length: int | None = None
    cls: bool = False
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, inputs: Array, *, segment_ids: SegmentIds | None = None, deterministic: bool = True
    ) -> Float[Array, "b l_out d"]:
        """Embeds ``inputs``.

        Args:
          inputs: ``(b, l)`` int tokens or ``(b, l, input_dim)`` floats.
          segment_ids: ``(b, l)`` ids of packed segments (positions restart at
            each segment start), or None.
          deterministic: disables dropout when True.

        Returns:
          ``(b, l, d_model)`` float32, or ``(b, l + 1, d_model)`` with ``cls``.

        Raises:
          ConfigError: inputs of the wrong rank, dtype or feature width.
        """
        if self.input == "tokens":
            if inputs.ndim != 2 or not jnp.issubdtype(inputs.dtype, jnp.integer):
                raise ConfigError(
                    f"inputs: shape {inputs.shape} dtype {inputs.dtype} is not (batch, length) integer tokens "
                    "(config.model.input='tokens')")
            table = self.param(
                "embedding",
                nn.with_logical_partitioning(nn.initializers.normal(EMBED_STDDEV), ("vocab", "embed")),
                (self.vocab_size, self.d_model),
                jnp.float32,
            )
            h = jnp.take(table, inputs, axis=0)
        elif self.input == "continuous":
            if inputs.ndim != 3 or inputs.shape[-1] != self.input_dim:
                raise ConfigError(
                    f"inputs: shape {inputs.shape} is not (batch, length, {self.input_dim}) "
                    "(config.model.input='continuous', config.model.input_dim)")
            h = dense(self.d_model, (None, "embed"), use_bias=True, dtype=self.dtype, name="read_in")(inputs)
            h = h.astype(jnp.float32)
        else:
            raise ConfigError(f"config.model.input={self.input!r} is not allowed; allowed: tokens, continuous")

        b, l = h.shape[:2]
        if self.positions != "none":
            pos = positions_in_segment(segment_ids, b, l)
            if self.positions == "learned":
                if l > self.max_length:
                    raise ConfigError(
                        f"inputs: length {l} is longer than the model allows "
                        f"(config.model.max_length={self.max_length}, learned positions)")
                h = h + LearnedPositions(self.max_length, self.d_model, name="positions")(pos)
            elif self.positions == "sinusoidal":
                h = h + sinusoidal_table(pos, self.d_model)
            else:
                raise ConfigError(
                    f"config.model.positions={self.positions!r} is not allowed; allowed: none, learned, sinusoidal")

        if self.cls:
            cls = self.param(
                "cls", nn.with_logical_partitioning(nn.initializers.normal(EMBED_STDDEV), ("embed",)),
                (self.d_model,), jnp.float32)
            h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.d_model)), h], axis=1)
        return nn.Dropout(self.dropout)(h, deterministic=deterministic)


__all__ = ["Embedding", "sinusoidal_table", "prepend_cls_column"]
