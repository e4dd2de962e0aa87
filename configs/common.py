"""Shared pieces of the experiment configs: model presets and the base config.

A config file composes ``base_config()`` (trainer, optimiser and model
defaults) with a task section and a model preset. Model presets name a layer
pattern of registry mixers; any registry name is also accepted as a preset
(one mixer in every layer), and ``<preset>+ngram`` prepends one layer of
n-gram heads (Akyürek et al. 2024 hard-wire n-gram heads into other models;
putting the layer first lets it match on token embeddings directly).
"""

from ml_collections import ConfigDict

from seqjax import mixers, models
from seqjax.errors import ConfigError
from seqjax.train import default_config as train_defaults

# preset -> (layer pattern, mixer kwargs). "transformer" is softmax attention
# with rotary positions (the RegBench transformer; Garg et al.'s GPT-2 used
# learned absolute positions, which the ICL configs add).
PRESETS = {
    "transformer": ("mha", {}),
}
NGRAM_SUFFIX = "+ngram"


def model_names() -> list[str]:
    """Every accepted ``model=`` value without the ``+ngram`` suffix."""
    return sorted(set(PRESETS) | set(mixers.names()))


def apply_model_preset(config: ConfigDict, name: str, *, num_heads: int | None = None, ngram_n: int = 2) -> None:
    """Sets ``config.model.mixers`` / ``mixer_kwargs`` for the preset ``name`` in place.

    Args:
      config: the full config (its ``model`` section is modified).
      name: a preset, a registry mixer name, or either with ``+ngram``.
      num_heads: heads for the attention-like mixers that take ``num_heads``.
      ngram_n: ``n`` of the n-gram layer added by ``+ngram``.

    Raises:
      ConfigError: ``name`` is neither a preset nor a registry name.
    """
    base, ngram = (name[: -len(NGRAM_SUFFIX)], True) if name.endswith(NGRAM_SUFFIX) else (name, False)
    if base not in model_names():
        raise ConfigError(f"config argument model={name!r} is not allowed; allowed: {', '.join(model_names())} "
                          f"(optionally with {NGRAM_SUFFIX!r})")
    pattern, kwargs = PRESETS.get(base, (base, {}))
    kwargs = {k: dict(v) for k, v in kwargs.items()}
    layers = pattern.split(",")
    if num_heads is not None:
        for layer in set(layers):
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


def base_config() -> ConfigDict:
    """Seed, trainer/optimiser/mesh defaults and the model defaults."""
    config = train_defaults()
    config.model = models.default_config()
    config.unlock()
    return config
