"""``config.model.architecture``: which network a model config describes, and the calls that dispatch on it.

Each architecture is a module with the same four functions over its own
``config.model`` fields:

* ``validate(model_config)`` — one-line :class:`~seqjax.errors.ConfigError`
  for a config that cannot run;
* ``build(model_config)`` — the unbound Flax module;
* ``check_length(model_config, length, field)`` — "sequence longer than the
  model allows";
* ``check_build(model_config, length)`` — the errors only an (abstract)
  ``init`` reveals.

The trainer and the experiment front door call the functions below, which
pick the module from ``config.model.architecture`` (missing: ``"sequence"``,
so every config written before the field existed means what it meant):

* ``"sequence"`` — :class:`~seqjax.models.SequenceModel`
  (:mod:`seqjax.models.config`), applied as ``model(inputs, segment_ids=,
  mask=)``;
* ``"encoder_decoder"`` — :class:`~seqjax.models.EncoderDecoder`
  (:mod:`seqjax.models.encoder_decoder`), applied as ``model(inputs,
  decoder_inputs=, mask=)`` (``inputs`` the source, ``mask`` its real tokens);
* ``"hierarchical"`` — :class:`~seqjax.models.hierarchical.HierarchicalModel`
  (:mod:`seqjax.models.hierarchical`: the HiSS paper's low-level network per
  chunk and high-level network over the chunk features), applied as
  ``model(inputs)``.
* ``"informer"`` — :class:`~seqjax.models.informer.Informer`
  (:mod:`seqjax.models.informer`), the forecasting encoder–decoder, applied as
  ``model(inputs, decoder_inputs=)`` (history and decoder windows of values and
  time features, ``seqjax.tasks.forecast``).

A task feeds an encoder–decoder by putting ``decoder_inputs`` in its batches
(``seqjax.train.step.MODEL_KEYS``). Modules are imported when first used, so
an architecture module may import :mod:`seqjax.models.config` without a cycle.
"""

import importlib

from seqjax.errors import ConfigError, check_choice

ARCHITECTURES = {
    "sequence": "seqjax.models.config",
    "encoder_decoder": "seqjax.models.encoder_decoder",
    "hierarchical": "seqjax.models.hierarchical",
    "informer": "seqjax.models.informer",
}
"""Architecture name -> the module holding its ``validate``/``build``/``check_length``/``check_build``."""

DEFAULT = "sequence"


def architecture(model_config) -> str:
    """The architecture ``model_config`` describes (``"sequence"`` when it has no ``architecture`` field).

    Args:
      model_config: ``config.model`` (a ConfigDict or a mapping).

    Returns:
      A key of :data:`ARCHITECTURES`.

    Raises:
      ConfigError: an unknown architecture (one line, naming the allowed values).
    """
    if model_config is None:
        raise ConfigError("config.model is missing; it must hold the model fields (see seqjax.models.default_config)")
    name = model_config.get("architecture", DEFAULT)
    name = DEFAULT if name is None else name
    check_choice("config.model.architecture", name, tuple(ARCHITECTURES))
    return name


def module(model_config):
    """The module of ``model_config``'s architecture (see the module docstring for its four functions)."""
    return importlib.import_module(ARCHITECTURES[architecture(model_config)])


def validate(model_config) -> None:
    """Raises ConfigError (one line, naming the field) unless ``model_config`` can run.

    Args:
      model_config: ``config.model``.
    """
    module(model_config).validate(model_config)


def build(model_config):
    """Validates ``model_config`` and builds its network (an unbound Flax module).

    Args:
      model_config: ``config.model``.

    Returns:
      A :class:`~seqjax.models.SequenceModel` or an :class:`~seqjax.models.EncoderDecoder`.
    """
    return module(model_config).build(model_config)


def check_length(model_config, length: int, field: str) -> None:
    """Raises ConfigError when sequences of ``length`` are longer than the model allows.

    Args:
      model_config: ``config.model``.
      length: the longest ``inputs`` length that will be fed.
      field: dotted name of where ``length`` comes from, for the message.
    """
    module(model_config).check_length(model_config, length, field)


def check_build(model_config, length: int) -> None:
    """Raises ConfigError when the model cannot be built for inputs of ``length`` (an abstract ``init``).

    Args:
      model_config: ``config.model`` (already validated).
      length: an input length.
    """
    module(model_config).check_build(model_config, length)


__all__ = ["ARCHITECTURES", "architecture", "module", "validate", "build", "check_length", "check_build"]
