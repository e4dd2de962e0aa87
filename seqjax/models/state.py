"""The recurrent state of a model, per layer, from ``config.model`` alone.

Zoology (Arora et al. 2023) compares sequence mixers at equal *recurrent
state*: what a causal layer must keep per sequence to generate the next token.
Every causal mixer already reports it (``Mixer.state_size(length)``: the bytes
of its inference cache per sequence, e.g. ``2·L·d`` floats of keys and values
for attention); this module builds each layer's mixer from the config, as
:func:`seqjax.models.build` would, and asks it. Nothing is initialised: the
sizes come from the cache's shapes.
"""

from seqjax import mixers
from seqjax.errors import ConfigError
from seqjax.models.config import default_config, layer_mixers, mixer_kwargs


def layer_state_sizes(model_config, length: int) -> list[int]:
    """Bytes of recurrent (inference) state per sequence of each layer.

    Args:
      model_config: ``config.model`` (a ConfigDict or a plain dict such as a
        ``results.json``'s ``config["model"]``).
      length: the sequence length the state must cover (the KV cache of
        attention grows with it; fixed-state mixers ignore it).

    Returns:
      One size in bytes per layer (``num_layers`` entries), the mixer's
      ``state_size(length)`` at the model's width and kwargs.

    Raises:
      ConfigError: a layer is not causal (it has no recurrent state), or the
        model config is invalid.
    """
    given = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    d_model = given.get("d_model", default_config().d_model)
    sizes = {}
    for name in dict.fromkeys(layer_mixers(model_config)):
        kwargs = mixer_kwargs(model_config, name)
        if not kwargs.get("causal", mixers.get(name).causality == "causal"):
            raise ConfigError(f"config.model.mixers: layer {name!r} is not causal, so it has no recurrent state; "
                              f"set config.model.causal=True")
        module = mixers.get(name)(**{**kwargs, "d_model": d_model})
        sizes[name] = int(module.apply({}, int(length), method="state_size"))
    return [sizes[name] for name in layer_mixers(model_config)]


__all__ = ["layer_state_sizes"]
