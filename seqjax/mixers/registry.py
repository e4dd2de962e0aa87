"""The mixer registry: every mixer class is registered under one exact name.

``seqjax.mixers.get("mamba")`` returns the Flax module class; configs and
models choose mixers by these names only.
"""

from collections.abc import Callable

import flax.linen as nn

_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a mixer under ``name``.

    Args:
      name: the registry name (lower case, e.g. ``"sliding_window"``).

    Returns:
      The decorator; it returns the class unchanged and sets ``cls.mixer_name``.
    """

    def decorator(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"mixer name {name!r} is already registered to {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.mixer_name = name
        return cls

    return decorator


def get(name: str) -> type[nn.Module]:
    """The mixer class registered as ``name``.

    Args:
      name: a registry name.

    Returns:
      The ``flax.linen.Module`` subclass.

    Raises:
      ValueError: naming the unknown mixer and listing the registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown mixer {name!r}; allowed: {', '.join(names())}") from None


def names() -> list[str]:
    """All registered mixer names, sorted."""
    return sorted(_REGISTRY)
