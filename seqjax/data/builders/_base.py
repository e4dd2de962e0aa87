"""What every seqjax TFDS builder shares: offline, array_record, its own file as ``code_path``.

* :class:`OfflineBuilder` — a ``GeneratorBasedBuilder`` base (not registered
  itself) whose ``file_format`` defaults to ``"array_record"`` (the format
  that loads without TensorFlow, through ``as_data_source``) and whose
  ``code_path`` is the subclass's module file (tfds' own lookup imports the
  ``importlib_resources`` backport, which is not installed).
* :func:`byte_length_configs` — the one-parameter config family of the
  byte-level builders (``lra_text``, ``lra_retrieval``): a registered default
  config and a ``make_config(max_length)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import tensorflow_datasets as tfds
from etils import epath

from seqjax.data.builders import _manual


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the seqjax builders (see the module docstring); subclasses register as usual."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The file that defines the builder class."""
        return epath.Path(sys.modules[cls.__module__].__file__)

    def __init__(self, *args, file_format=None, **kwargs):
        super().__init__(*args, file_format=file_format or "array_record", **kwargs)


class ByteLengthConfig(tfds.core.BuilderConfig):
    """A builder config with one parameter: bytes kept per document.

    Attributes:
      max_length: bytes kept per document (the first ones).
    """

    def __init__(self, *, max_length: int, field: str, **kwargs):
        kwargs.setdefault("version", tfds.core.Version("1.0.0"))
        super().__init__(**kwargs)
        self.max_length = _manual.check_length(field, max_length)


def byte_length_configs(
    builder: str, default_length: int, describe: Callable[[int], str]
) -> tuple[ByteLengthConfig, Callable[[int], ByteLengthConfig]]:
    """The default config of a byte-level builder and its ``make_config``.

    Registered configs are singletons: tfds accepts a config object with a
    registered name only if it *is* that object, so ``make_config`` returns
    the default object for the default length.

    Args:
      builder: the builder's name (for error messages: ``<builder>.max_length``).
      default_length: the registered default's ``max_length``.
      describe: ``max_length -> description`` of a config.

    Returns:
      ``(default_config, make_config)``; ``make_config(max_length)`` returns a
      config named ``str(max_length)`` (so lengths never share a directory)
      and raises ConfigError for a bad length.
    """
    field = f"{builder}.max_length"
    default = ByteLengthConfig(name=str(default_length), max_length=default_length, field=field,
                               description=describe(default_length))

    def make_config(max_length: int = default_length) -> ByteLengthConfig:
        max_length = _manual.check_length(field, max_length)
        if max_length == default_length:
            return default
        return ByteLengthConfig(name=str(max_length), max_length=max_length, field=field,
                                description=describe(max_length))

    make_config.__doc__ = (f"A config of ``{builder}`` that keeps ``max_length`` bytes per document "
                           f"(the registered default for {default_length}).")
    return default, make_config


__all__ = ["OfflineBuilder", "ByteLengthConfig", "byte_length_configs"]
