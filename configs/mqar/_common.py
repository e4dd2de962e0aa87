"""What the recall configs (``mqar.py``, ``set_disjointness.py``) share, loaded by path."""

from seqjax.errors import ConfigError


def number(args: dict, key: str, kind: type, default):
    """``kind(args[key])`` (an int or float > 0), or ``default`` when the argument is empty.

    Raises:
      ConfigError: the argument is not a number > 0 of that kind.
    """
    if not args[key]:
        return default
    try:
        value = kind(args[key])
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise ConfigError(f"config argument {key}={args[key]!r} must be a{'n' if kind is int else ''} "
                          f"{kind.__name__} > 0")
    return value
