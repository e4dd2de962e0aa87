"""An encoder–decoder (seq2seq) model over registry mixers, and its greedy / beam-search decoding.

The network (Vaswani et al. 2017's layout, pre-norm)::

    e = Embed(src)                                   # one token table for source and target
    m = Encoder(e)                                   # Backbone: bidirectional mixer blocks + final norm
    x = Embed(tgt_in)
    for each decoder block:
        x = x + SelfMixer(Norm(x))                   # any causal registry mixer
        x = x + CrossAttention(Norm(x), m)           # q from x, k/v from m; source padding masked
        x = x + Channel(Norm(x))                     # MLP / GLU (backbone.py)
    logits = LMHead(Norm(x))                         # untied from the embedding

* **Embedding**: one ``(vocab_size, d_model)`` table shared by the source and
  the target (they share one vocabulary); no model-level positions (``mha``
  brings RoPE, recurrent mixers know the order). The LM head is a separate
  (untied) matrix, as in :class:`~seqjax.models.model.SequenceModel`.
* **Source padding**: ``src == pad_id`` (or an explicit ``src_mask``, True at
  real tokens). The encoder gets ``segment_ids`` 1 at real tokens and 2 at
  padding, so no mixer reads padding into a real position (segments are
  independent); cross-attention gets ``(q ids = 1, kv ids = those)``, so no
  query attends to padding. Source padding must be on the right for the
  segment view to hold (a pad run in the middle would split the real tokens
  into two segments that cannot see each other).
* **Cross-attention**: ``num_heads`` heads of width ``d_model / num_heads``
  through :func:`seqjax.ops.attention` (``causal=False``), float32 softmax.
* **Decoding**: :func:`generate_seq2seq` encodes the source once, projects
  every decoder block's cross-attention K/V once and keeps them in the cache
  with the source ids, then feeds BOS and each generated token through the
  self-mixers' ``step``; the loops are the LM's
  (:func:`~seqjax.models.decode.greedy_search`,
  :func:`~seqjax.models.decode.beam_search`), so beams reorder these caches as
  they reorder an LM's.

Configuration: :func:`default_config` / :func:`build` (one-line
``ConfigError`` for a bad field).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from seqjax import mixers
from seqjax.errors import ConfigError, check_choice
from seqjax.mixers.common import dense
from seqjax.models.backbone import CHANNELS, Backbone, ChannelGLU, ChannelMLP, MixerSpec, channel_hidden
from seqjax.models.config import DTYPES, merge_fields
from seqjax.models.decode import beam_search, check_stop, greedy_search
from seqjax.models.embeddings import Embedding
from seqjax.models.heads import LMHead
from seqjax.models.norms import NORMS, make_norm
from seqjax.ops import attention

_FIELD = "config.model"
REAL, PAD = 1, 2  # encoder segment ids of real source tokens and of padding


def source_ids(src_mask: jax.Array) -> jax.Array:
    """Encoder / cross-attention key segment ids: :data:`REAL` at real tokens, :data:`PAD` at padding."""
    return jnp.where(src_mask, REAL, PAD).astype(jnp.int32)


class CrossKV(nn.Module):
    """The cross-attention keys and values of the encoder output (computed once per source when decoding).

    Attributes:
      num_heads: heads ``h``; ``h`` divides the width.
      dtype: compute dtype (params float32).
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``memory (b, ls, d)`` -> ``(k, v)``, each ``(b, ls, h, d / h)`` in ``dtype``."""
        b, ls, d = memory.shape
        mem = memory.astype(self.dtype)
        k = dense(d, ("embed", "heads"), dtype=self.dtype, name="wk")(mem)
        v = dense(d, ("embed", "heads"), dtype=self.dtype, name="wv")(mem)
        return k.reshape(b, ls, self.num_heads, -1), v.reshape(b, ls, self.num_heads, -1)


class CrossAttention(nn.Module):
    """Multi-head attention of decoder positions over precomputed encoder keys/values.

    Attributes:
      num_heads: heads ``h``.
      dtype: compute dtype (params float32; the softmax runs in float32 inside the op).
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, k: jax.Array, v: jax.Array, kv_ids: jax.Array) -> jax.Array:
        """Attends ``x (b, lt, d)`` over ``k, v (b, ls, h, dh)``; keys with ``kv_ids != REAL`` are hidden.

        Returns:
          ``(b, lt, d)`` in ``dtype``.
        """
        b, lt, d = x.shape
        if d % self.num_heads:
            raise ConfigError(f"{_FIELD}.num_heads={self.num_heads} must divide {_FIELD}.d_model={d}")
        q = dense(d, ("embed", "heads"), dtype=self.dtype, name="wq")(x.astype(self.dtype))
        q = q.reshape(b, lt, self.num_heads, -1)
        q_ids = jnp.full((b, lt), REAL, jnp.int32)
        y = attention(q, k, v, causal=False, segment_ids=(q_ids, kv_ids))
        return dense(d, ("heads", "embed"), dtype=self.dtype, name="wo")(y.reshape(b, lt, d))


class DecoderBlock(nn.Module):
    """Pre-norm residual decoder block: causal self-mixer, cross-attention, channel branch.

    Attributes:
      mixer: the self-mixer's ``(name, kwargs)`` spec (a causal mixer).
      num_heads: cross-attention heads.
      channel: ``"mlp"``, ``"glu"`` or ``"none"``.
      mlp_ratio: MLP hidden width over ``d_model``.
      norm: ``"layernorm"`` or ``"rmsnorm"``.
      dropout: residual dropout rate.
      dtype: compute dtype.
    """

    mixer: MixerSpec
    num_heads: int = 4
    channel: str = "mlp"
    mlp_ratio: float = 4.0
    norm: str = "layernorm"
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array | None, *, kv_ids: jax.Array, memory: jax.Array | None = None,
                 kv: tuple | None = None, cache: dict | None = None, deterministic: bool = True):
        """Applies the block (or, with ``x=None``, only projects the cross K/V of ``memory``).

        Args:
          x: ``(b, lt, d)`` float32 residual stream (``(b, 1, d)`` with ``cache``), or None.
          kv_ids: ``(b, ls)`` source segment ids (:func:`source_ids`).
          memory: ``(b, ls, d)`` encoder output (when ``kv`` is not given).
          kv: precomputed ``(k, v)`` of this block (decoding).
          cache: the self-mixer's cache; then ``x`` is one position and the mixer runs ``step``.
          deterministic: disables dropout.

        Returns:
          ``x=None``: ``(k, v)``. Otherwise ``(b, lt, d)`` float32, and with ``cache`` also the new cache.
        """
        if kv is None:
            kv = CrossKV(self.num_heads, self.dtype, name="cross_kv")(memory)
        if x is None:
            return kv
        drop = lambda y: nn.Dropout(self.dropout)(y.astype(jnp.float32), deterministic=deterministic)  # noqa: E731
        x = x.astype(jnp.float32)
        name, kwargs = self.mixer
        mixer = mixers.get(name)(**dict(kwargs), name="mixer")
        h = make_norm(self.norm, "mixer_norm")(x).astype(self.dtype)
        if cache is not None:
            y, cache = mixer.step(h[:, 0], cache)
            y = y[:, None]
        else:
            y = mixer(h, deterministic=deterministic)  # target padding is on the right: causal mixing ignores it
        x = x + drop(y)
        h = make_norm(self.norm, "cross_norm")(x)
        x = x + drop(CrossAttention(self.num_heads, self.dtype, name="cross")(h, kv[0], kv[1], kv_ids))
        if self.channel != "none":
            hidden = channel_hidden(self.channel, x.shape[-1], self.mlp_ratio)
            branch = {"mlp": ChannelMLP, "glu": ChannelGLU}[self.channel](hidden, dtype=self.dtype, name="channel")
            x = x + drop(branch(make_norm(self.norm, "channel_norm")(x).astype(self.dtype)))
        return x if cache is None else (x, cache)


class OutputHead(nn.Module):
    """The decoder's final norm and the (untied) LM head.

    Attributes:
      norm: norm kind.
      vocab_size: logits width.
      dtype: compute dtype (logits float32).
    """

    norm: str
    vocab_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(b, l, d)`` -> ``(b, l, vocab_size)`` float32 logits."""
        return LMHead(self.vocab_size, dtype=self.dtype, name="lm")(make_norm(self.norm, "final_norm")(x))


class EncoderDecoder(nn.Module):
    """Encoder–decoder model (see the module docstring).

    Parameters: ``embed/``, ``encoder/block_{i}/...`` and ``encoder/final_norm``
    (a :class:`~seqjax.models.backbone.Backbone`), ``decoder_{i}/{mixer_norm,
    mixer, cross_norm, cross_kv, cross, channel_norm, channel}``, ``head/{final_norm, lm}``.

    Attributes:
      encoder_layers: one mixer spec per encoder layer (non-causal where the mixer can be).
      decoder_layers: one causal mixer spec per decoder layer.
      d_model: width.
      num_heads: cross-attention heads.
      vocab_size: the shared source/target vocabulary.
      channel: channel branch of every block.
      mlp_ratio: MLP hidden width over ``d_model``.
      norm: norm kind.
      dropout: dropout rate (embeddings, residual branches).
      pad_id: the source padding token (when no ``src_mask`` is given).
      dtype: compute dtype; params float32.
    """

    encoder_layers: Sequence[MixerSpec]
    decoder_layers: Sequence[MixerSpec]
    d_model: int = 64
    num_heads: int = 4
    vocab_size: int = 16
    channel: str = "mlp"
    mlp_ratio: float = 4.0
    norm: str = "layernorm"
    dropout: float = 0.0
    pad_id: int = 0
    dtype: Any = jnp.float32

    def setup(self):
        self.embed = Embedding(d_model=self.d_model, vocab_size=self.vocab_size, dropout=self.dropout,
                               dtype=self.dtype)
        self.encoder = Backbone(self.encoder_layers, channel=self.channel, mlp_ratio=self.mlp_ratio, norm=self.norm,
                                dropout=self.dropout, dtype=self.dtype)
        self.decoder = [DecoderBlock(spec, self.num_heads, self.channel, self.mlp_ratio, self.norm, self.dropout,
                                     self.dtype) for spec in self.decoder_layers]
        self.head = OutputHead(self.norm, self.vocab_size, self.dtype)

    def _mask(self, src, src_mask):
        return (src != self.pad_id) if src_mask is None else jnp.asarray(src_mask).astype(bool)

    def encode(self, src: jax.Array, src_mask: jax.Array | None = None, deterministic: bool = True):
        """Encodes ``src (b, ls)``; returns ``(memory (b, ls, d) float32, kv_ids (b, ls))``."""
        ids = source_ids(self._mask(src, src_mask))
        x = self.embed(src, segment_ids=ids, deterministic=deterministic)
        return self.encoder(x, segment_ids=ids, deterministic=deterministic), ids

    def __call__(self, src: jax.Array, tgt_in: jax.Array | None = None, *, decoder_inputs: jax.Array | None = None,
                 src_mask: jax.Array | None = None, mask: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """Teacher-forced forward.

        The trainer calls ``model(inputs, decoder_inputs=..., mask=...)``
        (batch keys, ``seqjax.train.step.MODEL_KEYS``); ``tgt_in`` and
        ``src_mask`` are the same arguments by their positional names.

        Args:
          src: ``(b, ls)`` source token ids (padding ``pad_id`` on the right).
          tgt_in: ``(b, lt)`` decoder inputs (BOS, then the target shifted right).
          decoder_inputs: ``tgt_in`` by the trainer's name (give one of the two).
          src_mask: ``(b, ls)``, True at real source tokens; default ``src != pad_id``.
          mask: ``src_mask`` by the trainer's name (give at most one of the two).
          deterministic: disables dropout (else pass ``rngs={"dropout": key}``).

        Returns:
          ``(b, lt, vocab_size)`` float32 logits (position ``t`` predicts target token ``t``).
        """
        if (tgt_in is None) == (decoder_inputs is None):
            raise ValueError("EncoderDecoder: give the decoder inputs once, as tgt_in or decoder_inputs")
        if src_mask is not None and mask is not None:
            raise ValueError("EncoderDecoder: give the source mask at most once, as src_mask or mask")
        tgt_in = decoder_inputs if tgt_in is None else tgt_in
        src_mask = mask if src_mask is None else src_mask
        memory, ids = self.encode(src, src_mask, deterministic)
        x = self.embed(tgt_in, deterministic=deterministic)
        for block in self.decoder:
            x = block(x, kv_ids=ids, memory=memory, deterministic=deterministic)
        return self.head(x)

    def prepare(self, src: jax.Array, src_mask: jax.Array | None = None) -> dict:
        """Decoding: encodes ``src`` and projects every decoder block's cross K/V once.

        Returns:
          ``{"kv_ids": (b, ls), "kv": [(k, v) per decoder block]}``, all batch-first.
        """
        memory, ids = self.encode(src, src_mask)
        return {"kv_ids": ids, "kv": [block(None, kv_ids=ids, memory=memory) for block in self.decoder]}

    def step(self, tokens: jax.Array, cross: dict, caches: Sequence[dict]):
        """Decoding: one target position ``tokens (b,)`` through every block's ``step``.

        Returns:
          ``(logits (b, vocab_size) float32, new self-mixer caches)``.
        """
        x = self.embed(tokens[:, None])
        new = []
        for block, kv, cache in zip(self.decoder, cross["kv"], caches):
            x, cache = block(x, kv_ids=cross["kv_ids"], kv=kv, cache=cache)
            new.append(cache)
        return self.head(x)[:, 0], new


# ----------------------------------------------------------------------------- configuration


def default_config() -> ml_collections.ConfigDict:
    """Every field of the encoder–decoder's ``config.model`` with its default (2 + 2 ``mha`` layers, d=64).

    Returns:
      A fresh ConfigDict; set ``vocab_size``.
    """
    return ml_collections.ConfigDict(dict(
        architecture="encoder_decoder",  # seqjax.models.build dispatches on it (seqjax.models.architectures)
        encoder_mixers="mha", decoder_mixers="mha", num_encoder_layers=2, num_decoder_layers=2, d_model=64,
        num_heads=4, vocab_size=None, mixer_kwargs={}, channel="mlp", mlp_ratio=4.0, norm="layernorm",
        dropout=0.0, pad_id=0, dtype="float32",
    ))


def _positive_int(field: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{_FIELD}.{field}={value!r} must be an int > 0")


def side_layers(cfg: dict, side: str) -> list[str]:
    """The mixer name of every layer of ``side`` (``encoder``/``decoder``): the pattern repeated.

    Shared with the Informer's config (``seqjax.models.informer``): both read
    ``<side>_mixers`` and ``num_<side>_layers``; a decoder mixer must be causal.
    """
    field, n = f"{side}_mixers", cfg[f"num_{side}_layers"]
    value = cfg[field]
    if not isinstance(value, (str, list, tuple)):
        raise ConfigError(f"{_FIELD}.{field}={value!r} must be a comma-separated string of mixer names")
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s).strip() for s in value]
    for name in names:
        check_choice(f"{_FIELD}.{field}", name, mixers.names())
        if side == "decoder" and mixers.get(name).causality == "bidirectional":
            causal = [m for m in mixers.names() if mixers.get(m).causality != "bidirectional"]
            raise ConfigError(f"{_FIELD}.{field}: {name!r} is bidirectional only and cannot decode; allowed: "
                              f"{', '.join(causal)}")
    if n % len(names):
        raise ConfigError(f"{_FIELD}.{field}={value!r} has {len(names)} entries, which does not divide "
                          f"{_FIELD}.num_{side}_layers={n}")
    return names * (n // len(names))


def side_spec(cfg: dict, name: str, causal: bool, defaults: dict | None = None) -> MixerSpec:
    """Mixer ``name``'s constructor kwargs on one side: ``mixer_kwargs[name]`` + causal, dtype, num_heads.

    ``defaults``: further fields set where the mixer has them and the user did not
    (the Informer sets ``positions="none"``: its embedding adds the positions).
    """
    cls = mixers.get(name)
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    raw = cfg["mixer_kwargs"].get(name) or {}
    kwargs = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
    for key in kwargs:
        if key not in fields:
            raise ConfigError(f"{_FIELD}.mixer_kwargs.{name}.{key} is not a field of mixer {name!r}; "
                              f"allowed: {', '.join(sorted(fields))}")
        if key in ("causal", "bidirectional"):
            raise ConfigError(f"{_FIELD}.mixer_kwargs.{name}.{key} is set by the side (encoder: bidirectional, "
                              "decoder: causal); allowed: leave it unset")
    if "causal" in fields:
        kwargs["causal"] = causal
    if "dtype" in fields:
        kwargs["dtype"] = DTYPES[cfg["dtype"]]
    if "num_heads" in fields:
        kwargs.setdefault("num_heads", cfg["num_heads"])
    for key, value in (defaults or {}).items():
        if key in fields:
            kwargs.setdefault(key, value)
    cls(**kwargs)  # the mixer checks its own fields (one-line ConfigError)
    return name, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


def validate(model_config) -> None:
    """Raises ConfigError (one line naming the field and the allowed values) unless the config can be built.

    Args:
      model_config: a ConfigDict / dict with the fields of :func:`default_config`.
    """
    _checked(model_config)


def _checked(model_config) -> tuple[dict, list[MixerSpec], list[MixerSpec]]:
    """``(fields merged over the defaults, encoder specs, decoder specs)``, every field checked."""
    cfg = merge_fields(model_config, default_config().to_dict(), "an encoder–decoder")
    for field in ("num_encoder_layers", "num_decoder_layers", "d_model", "num_heads", "vocab_size"):
        _positive_int(field, cfg[field])
    if cfg["d_model"] % cfg["num_heads"]:
        raise ConfigError(f"{_FIELD}.num_heads={cfg['num_heads']} must divide {_FIELD}.d_model={cfg['d_model']}")
    check_choice(f"{_FIELD}.channel", cfg["channel"], CHANNELS)
    check_choice(f"{_FIELD}.norm", cfg["norm"], NORMS)
    check_choice(f"{_FIELD}.dtype", cfg["dtype"], DTYPES)
    if not 0.0 <= float(cfg["dropout"]) < 1.0:
        raise ConfigError(f"{_FIELD}.dropout={cfg['dropout']!r} must be in [0, 1)")
    if not isinstance(cfg["pad_id"], int) or not 0 <= cfg["pad_id"] < cfg["vocab_size"]:
        raise ConfigError(f"{_FIELD}.pad_id={cfg['pad_id']!r} must be an int in [0, vocab_size)")
    if not isinstance(cfg["mixer_kwargs"], dict) and not hasattr(cfg["mixer_kwargs"], "to_dict"):
        raise ConfigError(f"{_FIELD}.mixer_kwargs={cfg['mixer_kwargs']!r} must be a dict of dicts")
    if cfg["architecture"] != "encoder_decoder":
        raise ConfigError(f"{_FIELD}.architecture={cfg['architecture']!r} is not an encoder–decoder's; "
                          "allowed here: 'encoder_decoder'")
    enc = [side_spec(cfg, name, False) for name in side_layers(cfg, "encoder")]
    dec = [side_spec(cfg, name, True) for name in side_layers(cfg, "decoder")]
    return cfg, enc, dec


def build(model_config) -> EncoderDecoder:
    """Validates an encoder–decoder ``config.model`` and builds the network.

    Args:
      model_config: a ConfigDict / dict with the fields of :func:`default_config`.

    Returns:
      An unbound :class:`EncoderDecoder`; ``model.init(key, src, tgt_in)``.

    Raises:
      ConfigError: an unknown field or a bad value (one line naming the field and the allowed values).
    """
    cfg, enc, dec = _checked(model_config)
    return EncoderDecoder(
        encoder_layers=tuple(enc), decoder_layers=tuple(dec), d_model=cfg["d_model"], num_heads=cfg["num_heads"],
        vocab_size=cfg["vocab_size"], channel=cfg["channel"], mlp_ratio=float(cfg["mlp_ratio"]), norm=cfg["norm"],
        dropout=float(cfg["dropout"]), pad_id=cfg["pad_id"], dtype=DTYPES[cfg["dtype"]],
    )


def check_length(model_config, length: int, field: str) -> None:
    """Raises ConfigError for a length the model cannot take; the encoder–decoder has no length limit.

    It has no model-level position table, and its mixers get no ``max_length``
    (``mha``'s KV cache is sized by the decoding call), so only the value is checked.

    Args:
      model_config: ``config.model``.
      length: the longest ``inputs`` length that will be fed.
      field: dotted name of where ``length`` comes from, for the message.
    """
    if not isinstance(length, int) or length <= 0:
        raise ConfigError(f"{field}={length!r} must be an int > 0")


def check_build(model_config, length: int) -> None:
    """Raises ConfigError when the network cannot be initialised (an abstract ``init``: nothing is computed).

    Args:
      model_config: ``config.model`` (already passed by :func:`validate`).
      length: source and target length of the traced example.
    """
    model = build(model_config)
    tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
    try:
        jax.eval_shape(lambda s, t: model.init(jax.random.key(0), s, t), tokens, tokens)
    except (TypeError, ValueError) as e:  # a width rule a mixer checks only when it creates its parameters
        message = str(e).strip().splitlines()
        raise ConfigError(f"{_FIELD} does not build: {type(e).__name__}: {message[0] if message else ''}") from None


# ----------------------------------------------------------------------------- decoding


def init_decoder_caches(model: EncoderDecoder, variables: dict, batch_size: int, max_length: int) -> list[dict]:
    """Every decoder block's empty self-mixer cache.

    Args:
      model: the encoder–decoder.
      variables: its variables.
      batch_size: rows to decode.
      max_length: target positions the caches hold (BOS + generated tokens).

    Returns:
      One cache per decoder block.
    """
    caches = []
    for i, (name, kwargs) in enumerate(model.decoder_layers):
        mixer_vars = {c: t[f"decoder_{i}"]["mixer"] for c, t in variables.items()
                      if f"decoder_{i}" in t and "mixer" in t[f"decoder_{i}"]}
        caches.append(mixers.get(name)(**dict(kwargs)).apply(mixer_vars, batch_size, max_length, method="init_cache"))
    return caches


def generate_seq2seq(model: EncoderDecoder, variables: dict, src: jax.Array, *, max_new_tokens: int, bos_id: int,
                     beam_size: int = 1, src_mask: jax.Array | None = None, eos_id: int | None = None,
                     length_penalty: float = 0.0) -> dict:
    """Greedy or beam-search decoding of the target of ``src`` through the decoder's ``step``.

    Args:
      model: an :class:`EncoderDecoder`.
      variables: its variables.
      src: ``(b, ls)`` int source ids (padding ``model.pad_id`` on the right).
      max_new_tokens: target tokens to generate (>= 1).
      bos_id: the token fed first.
      beam_size: 1 for greedy decoding, ``k > 1`` for beam search.
      src_mask: ``(b, ls)`` True at real source tokens; default ``src != pad_id``.
      eos_id: stop token (a finished row repeats it at no cost); None: every row runs to the end.
      length_penalty: beam search's final length normalisation exponent (as :func:`seqjax.models.generate`).

    Returns:
      As :func:`seqjax.models.generate`: ``tokens`` ``(b, max_new_tokens)``,
      ``score`` ``(b,)``, ``length`` ``(b,)``; greedy adds ``logits`` (per-position log-probs),
      beam adds ``beams`` ``(b, k, n)``, ``beam_scores`` and ``beam_lengths`` ``(b, k)``.

    Raises:
      ConfigError: a bad ``src`` / ``max_new_tokens`` / ``beam_size`` / ``bos_id``.
    """
    src = jnp.asarray(src)
    if src.ndim != 2 or src.shape[1] < 1 or not jnp.issubdtype(src.dtype, jnp.integer):
        raise ConfigError(f"generate_seq2seq: src must be (batch, length >= 1) int token ids, got {src.shape} "
                          f"{src.dtype}")
    for field, value in (("max_new_tokens", max_new_tokens), ("beam_size", beam_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"generate_seq2seq: {field}={value!r} must be an int >= 1")
    if not isinstance(bos_id, int) or not 0 <= bos_id < model.vocab_size:
        raise ConfigError(f"generate_seq2seq: bos_id={bos_id!r} must be an int in [0, {model.vocab_size})")
    check_stop("generate_seq2seq", model.vocab_size, eos_id, length_penalty)
    mask = (src != model.pad_id) if src_mask is None else jnp.asarray(src_mask).astype(bool)
    caches = init_decoder_caches(model, variables, src.shape[0], max_new_tokens + 1)
    return _seq2seq_jit(model, variables, src, mask, caches, max_new_tokens, beam_size, bos_id, eos_id,
                        float(length_penalty))


def _seq2seq_impl(model, variables, src, mask, caches, steps, k, bos_id, eos_id, length_penalty):
    cross = model.apply(variables, src, mask, method="prepare")

    def step(tokens, state):
        cross, caches = state
        logits, caches = model.apply(variables, tokens, cross, caches, method="step")
        return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), (cross, caches)

    # The cross K/V ride in the cache state, so the beams reorder them with the self-mixer caches.
    logp, state = step(jnp.full((src.shape[0],), bos_id, jnp.int32), (cross, caches))
    if k == 1:
        return greedy_search(step, logp, state, steps, eos_id)
    return beam_search(step, logp, state, steps, k, eos_id, length_penalty)


_seq2seq_jit = jax.jit(_seq2seq_impl, static_argnums=(0, 5, 6, 7, 8, 9))

__all__ = ["EncoderDecoder", "DecoderBlock", "CrossAttention", "CrossKV", "default_config", "build",
           "init_decoder_caches", "generate_seq2seq", "source_ids", "side_layers", "side_spec"]
