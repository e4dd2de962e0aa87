"""Model presets: named layer patterns of registry mixers (``model=<preset>``).

``PRESETS`` maps a name to a layer pattern (or a function of the depth giving
one), the mixers' kwargs and other model fields; :func:`apply_model_preset`
writes them into ``config.model``. Every registry mixer name is a preset too
(the mixer in every layer), and ``<preset>+ngram`` adds a layer of n-gram heads.
Re-exported by :mod:`seqjax.config`.
"""

from ml_collections import ConfigDict

from seqjax.errors import ConfigError

# MASFormer (Zhang et al. 2023, "Efficient Long-Range Transformers: You Need to
# Attend More, but Not Necessarily at Every Layer"): full attention in a few
# bottom layers, sliding-window attention in the rest. One layer in six is full,
# at least one (4 of 24 layers, our reading of the paper's 1.3B setting: check it
# against the paper before quoting a comparison).
MASFORMER_FULL_FRACTION = 6
# Keys each sliding-window query sees. The paper's sparse span is about 1,024 tokens
# on 8,192-token inputs (again to check against the paper); at CPU scale (inputs of
# ~100 tokens) that would be full attention, so the preset keeps the
# sliding_window default of 64 (override mixer_kwargs.sliding_window.window).
MASFORMER_WINDOW = 64


def masformer_layers(num_layers: int) -> str:
    """MASFormer's per-layer pattern: ``mha`` in the bottom layers, ``sliding_window`` above.

    Args:
      num_layers: depth of the model (``config.model.num_layers``).

    Returns:
      ``num_layers`` comma-separated registry names, bottom layer first:
      ``max(1, num_layers // 6)`` ``mha`` layers, then ``sliding_window``
      (e.g. 12 layers -> 2 ``mha`` + 10 ``sliding_window``).

    Raises:
      ConfigError: ``num_layers`` is not an int >= 1.
    """
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ConfigError(f"config.model.num_layers={num_layers!r} must be an int > 0 for model=masformer")
    full = max(1, num_layers // MASFORMER_FULL_FRACTION)
    return ",".join(["mha"] * full + ["sliding_window"] * (num_layers - full))


# Mamba-2-Hybrid (Waleffe et al. 2024, "An Empirical Study of Mamba-based Language
# Models"): the 8B model's 56 single-branch layers, M = Mamba-2, * = self-attention,
# - = MLP (24 / 4 / 28; the pattern NVIDIA's Megatron-LM release of the model uses).
HYBRID_8B_PATTERN = "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"
HYBRID_SYMBOLS = {"M": "mamba2", "*": "mha", "-": "mlp"}


def hybrid_layers(num_layers: int) -> str:
    """Mamba-2-Hybrid's per-layer pattern: Mamba-2, attention and MLP layers interleaved.

    At 56 layers it is the 8B model's pattern (:data:`HYBRID_8B_PATTERN`). At
    other depths it keeps the 8B recipe's proportions and placement: mixer and
    MLP layers alternate (half the layers MLPs), about 7% of the layers
    (4 of 56, at least one) are attention, spread evenly over the mixer slots
    away from the ends, the rest Mamba-2 — e.g. 8 layers give
    ``mamba2,mlp,mamba2,mlp,mha,mlp,mamba2,mlp``.

    Args:
      num_layers: depth (``config.model.num_layers``), at least 3.

    Returns:
      ``num_layers`` comma-separated registry names, bottom layer first.

    Raises:
      ConfigError: ``num_layers`` is not an int >= 3.
    """
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 3:
        raise ConfigError(f"config.model.num_layers={num_layers!r} must be an int >= 3 for model=mamba2_hybrid "
                          "(a Mamba-2, an attention and an MLP layer at least)")
    if num_layers == len(HYBRID_8B_PATTERN):
        return ",".join(HYBRID_SYMBOLS[c] for c in HYBRID_8B_PATTERN)
    slots = (num_layers + 1) // 2  # even positions: sequence mixers; odd: MLPs
    attention = max(1, round(num_layers * 4 / 56))
    # Evenly spread, centred in equal shares of the mixer slots (the 8B places its
    # four attention layers at 18%, 39%, 59% and 80% of the depth).
    places = {int((k + 0.5) * slots / attention) for k in range(attention)}
    layers = []
    for i in range(num_layers):
        layers.append("mlp" if i % 2 else ("mha" if i // 2 in places else "mamba2"))
    return ",".join(layers)


# xLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"): xLSTM[a:b]
# stacks mLSTM and sLSTM blocks in the ratio a:b. Where the sLSTM blocks sit is our
# choice, not read off the paper: one per group of XLSTM71_PERIOD layers, at the
# group's second layer (the authors' code's README example puts its one sLSTM
# block at index 1); xLSTM[1:1] alternates, mLSTM first.
XLSTM71_PERIOD = 8


def xlstm_layers(num_layers: int, period: int) -> str:
    """An xLSTM[period-1:1] stack: ``slstm_block`` at layers ``i % period == 1``, ``mlstm_block`` elsewhere.

    Args:
      num_layers: depth of the model (``config.model.num_layers``).
      period: layers per sLSTM block: 8 for xLSTM[7:1], 2 for xLSTM[1:1].

    Returns:
      ``num_layers`` comma-separated registry names, bottom layer first (e.g.
      8 layers, period 8 -> ``mlstm_block, slstm_block, mlstm_block x 6``; a
      1-layer stack is one ``mlstm_block``).

    Raises:
      ConfigError: ``num_layers`` is not an int >= 1.
    """
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ConfigError(f"config.model.num_layers={num_layers!r} must be an int > 0 for an xLSTM preset")
    return ",".join("slstm_block" if i % period == 1 else "mlstm_block" for i in range(num_layers))


# preset -> (layer pattern, mixer kwargs[, model fields]). The pattern is a string,
# or a function of config.model.num_layers giving one name per layer (a placement
# that depends on the depth, as MASFormer's); the optional third entry sets other
# config.model fields (the hybrid's single-branch layers: channel="none"). "transformer" is softmax attention with rotary
# positions (the RegBench transformer; Garg et al.'s GPT-2 used learned absolute
# positions, which the ICL configs add).
# LMUFormer (Liu, Datta, Li & Beerel 2024): a convolutional patch embedding (4
# kernel-3 conv layers + a conv position term, the authors' Tokenizer), then
# blocks of the LMU and a channel MLP (ratio 4, their gsc.yml); the spiking
# model puts LIF neurons in the embedding and the channel MLP (the LMU itself
# keeps its ReLUs here: docs/models.md). Use with config.model.pooling="mean"
# for classification, as the paper does.
LMUFORMER_CONV_LAYERS = 4

PRESETS = {
    "transformer": ("mha", {}),
    "masformer": (masformer_layers, {"sliding_window": {"window": MASFORMER_WINDOW}}),
    "mamba2_hybrid": (hybrid_layers, {"mlp": {"activation": "squared_relu"}}, {"channel": "none"}),
    # The xLSTM blocks carry their own projections (the sLSTM block its gated MLP).
    "xlstm71": (lambda n: xlstm_layers(n, XLSTM71_PERIOD), {}, {"channel": "none"}),
    "xlstm11": (lambda n: xlstm_layers(n, 2), {}, {"channel": "none"}),
    "lmuformer": ("lmu", {}, {"channel": "mlp", "mlp_ratio": 4.0, "conv_embed": LMUFORMER_CONV_LAYERS}),
    "spiking_lmuformer": ("lmu", {}, {"channel": "mlp", "mlp_ratio": 4.0, "conv_embed": LMUFORMER_CONV_LAYERS,
                                      "spiking": True}),
}
NGRAM_SUFFIX = "+ngram"


def model_names() -> list[str]:
    """Every accepted ``model=`` value without the ``+ngram`` suffix."""
    from seqjax import mixers

    return sorted(set(PRESETS) | set(mixers.names()))


def apply_model_preset(config: ConfigDict, name: str, *, num_heads: int | None = None, ngram_n: int = 2) -> None:
    """Sets ``config.model.mixers`` / ``mixer_kwargs`` for the preset ``name`` in place.

    Model presets name a layer pattern of registry mixers (``masformer``: one
    name per layer, from ``config.model.num_layers``); any registry name is
    also a preset (one mixer in every layer), and ``<preset>+ngram`` prepends one
    layer of n-gram heads (Akyürek et al. 2024 hard-wire n-gram heads into other
    models; putting the layer first lets it match on token embeddings directly).

    Args:
      config: the full config (its ``model`` section is modified).
      name: a preset, a registry mixer name, or either with ``+ngram``.
      num_heads: heads for the attention-like mixers that take ``num_heads``.
      ngram_n: ``n`` of the n-gram layer added by ``+ngram``.

    Raises:
      ConfigError: ``name`` is neither a preset nor a registry name.
    """
    from seqjax import mixers

    base, ngram = (name[: -len(NGRAM_SUFFIX)], True) if name.endswith(NGRAM_SUFFIX) else (name, False)
    if base not in model_names():
        raise ConfigError(f"config argument model={name!r} is not allowed; allowed: {', '.join(model_names())} "
                          f"(optionally with {NGRAM_SUFFIX!r})")
    pattern, kwargs, *fields = PRESETS.get(base, (base, {}))
    if callable(pattern):
        # A depth-dependent placement: one name per layer, so set num_layers before
        # calling this (a later --config.model.num_layers override would repeat it).
        pattern = pattern(config.model.num_layers)
    kwargs = {k: dict(v) for k, v in kwargs.items()}
    layers = pattern.split(",")
    if num_heads is not None:
        for layer in sorted(set(layers)):
            if "num_heads" in mixers.get(layer).__dataclass_fields__:
                kwargs.setdefault(layer, {})["num_heads"] = num_heads
    if ngram:
        # An explicit per-layer list: the n-gram layer, then the preset's pattern
        # repeated over num_layers (the model repeats a pattern that divides it).
        layers = ["ngram"] + layers * (config.model.num_layers // len(layers))
        kwargs.setdefault("ngram", {})["n"] = ngram_n
        config.model.num_layers = len(layers)
    config.model.mixers = ",".join(layers)
    config.model.mixer_kwargs = kwargs
    for key, value in (fields[0] if fields else {}).items():
        config.model[key] = value


__all__ = ["PRESETS", "NGRAM_SUFFIX", "MASFORMER_FULL_FRACTION", "MASFORMER_WINDOW", "HYBRID_8B_PATTERN",
           "masformer_layers", "hybrid_layers", "xlstm_layers", "XLSTM71_PERIOD", "model_names", "apply_model_preset"]
