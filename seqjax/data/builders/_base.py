"""What every seqjax TFDS builder shares: offline, array_record, its own file as ``code_path``.

* :class:`OfflineBuilder` — a ``GeneratorBasedBuilder`` base (not registered
  itself) whose ``file_format`` defaults to ``"array_record"`` (the format
  that loads without TensorFlow, through ``as_data_source``) and whose
  ``code_path`` is the subclass's module file (tfds' own lookup imports the
  ``importlib_resources`` backport, which is not installed). Its
  ``download_and_prepare`` first removes the ``incomplete.*`` folders that an
  interrupted preparation (a killed process) left beside the dataset, with a
  one-line notice, under a file lock so that a preparation running in another
  process is never touched; generation then starts from the beginning (tfds
  writes a dataset in one pass and cannot resume one).
* :func:`byte_length_configs` — the one-parameter config family of the
  byte-level builders (``lra_text``, ``lra_retrieval``): a registered default
  config and a ``make_config(max_length)``.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import constants

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

    def download_and_prepare(self, *args, **kwargs):
        """tfds' ``download_and_prepare``, after removing what an interrupted one left behind.

        tfds writes into ``incomplete.<random>_<version>/`` beside the version
        folder and renames it when done; a killed process leaves that folder
        (and the next run starts a new one). Under an exclusive lock on
        ``.prepare.lock`` in the same folder (held for the whole preparation,
        so a live one in another process keeps its folder), the leftovers are
        removed with a one-line notice on stderr. Only local folders are
        locked and cleaned (``flock`` needs a local file system).

        Args:
          *args: passed to tfds.
          **kwargs: passed to tfds.
        """
        folder = epath.Path(self.data_dir).parent
        if "://" in os.fspath(folder):
            return super().download_and_prepare(*args, **kwargs)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".prepare.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            remove_interrupted(folder, str(self.version), self.name)
            return super().download_and_prepare(*args, **kwargs)


def remove_interrupted(folder: epath.PathLike, version: str, name: str) -> list[str]:
    """Removes tfds' ``incomplete.*_<version>`` folders in ``folder`` (call it under the lock).

    Args:
      folder: the folder that holds the version folder (``<data_dir>/<name>/<config>``).
      version: the dataset version, e.g. ``"1.0.0"``.
      name: the builder name, for the notice.

    Returns:
      The names of the removed folders (a notice is printed when there are any).
    """
    folder = epath.Path(folder)
    stale = sorted(p for p in folder.glob(f"{constants.INCOMPLETE_PREFIX}*_{version}") if p.is_dir())
    for path in stale:
        path.rmtree()
    if stale:
        names = ", ".join(p.name for p in stale)
        print(f"{name}: removed {names} in {folder}, left by an interrupted preparation; preparing again "
              "from the start", file=sys.stderr, flush=True)
    return [p.name for p in stale]


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


__all__ = ["OfflineBuilder", "remove_interrupted", "ByteLengthConfig", "byte_length_configs"]
