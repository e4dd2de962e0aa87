"""The one exception type for bad configurations and bad inputs.

Every check of a config field raises :class:`ConfigError` with a one-line
message that names the field (its dotted path, e.g. ``config.model.mixers``),
the bad value and the allowed values. Entrypoints print that line and exit
with status 2 instead of a traceback.
"""


class ConfigError(ValueError):
    """A config field or input has a value the code cannot run with."""


def check_choice(field: str, value, allowed) -> None:
    """Raises :class:`ConfigError` unless ``value`` is one of ``allowed``.

    Args:
      field: dotted path of the field, e.g. ``"config.task.function_class"``.
      value: the configured value.
      allowed: the allowed values (any iterable).
    """
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def check_positive(field: str, value, *, allow_zero: bool = False) -> None:
    """Raises :class:`ConfigError` unless ``value`` is a number > 0 (>= 0 with ``allow_zero``).

    Args:
      field: dotted path of the field.
      value: the configured value.
      allow_zero: also accept 0.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{field}={value!r} must be a number {bound}")
