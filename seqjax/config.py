"""Helpers for the ``get_config(arg)`` files under ``configs/``.

A config file takes one string argument of comma-separated ``key=value`` pairs
(``"model=mamba,scale=cpu"``), parsed here so that every config reports a bad
key or value the same way: one line naming the argument and the allowed values.
``--config.x=y`` overrides are handled by ml_collections' ``config_flags`` in
the entrypoints, after ``get_config`` returns.
"""

from collections.abc import Mapping

from ml_collections import ConfigDict

from seqjax.errors import ConfigError


def parse_arg(arg: str | None, allowed: Mapping[str, list[str] | None], defaults: Mapping[str, str]) -> dict[str, str]:
    """Parses ``"k1=v1,k2=v2"`` into a dict, checking keys and values.

    Args:
      arg: the string after ``:`` in ``--config=file.py:arg`` (None or "" for defaults).
      allowed: key → allowed values (None: any value).
      defaults: key → default value (every key in ``allowed`` should have one).

    Returns:
      ``defaults`` updated with the parsed pairs.

    Raises:
      ConfigError: an unknown key, a pair without ``=``, or a value not allowed.
    """
    out = dict(defaults)
    for pair in filter(None, (p.strip() for p in (arg or "").split(","))):
        if "=" not in pair:
            raise ConfigError(f"config argument {pair!r} is not key=value; keys: {', '.join(allowed)}")
        key, value = (s.strip() for s in pair.split("=", 1))
        if key not in allowed:
            raise ConfigError(f"config argument {key!r} is unknown; keys: {', '.join(allowed)}")
        if allowed[key] is not None and value not in allowed[key]:
            raise ConfigError(f"config argument {key}={value!r} is not allowed; allowed: {', '.join(allowed[key])}")
        out[key] = value
    return out


def merge(base: ConfigDict, updates: Mapping) -> ConfigDict:
    """Recursively sets ``updates`` (nested dicts) on a copy of ``base``.

    New keys are allowed (ml_collections locks nothing here), so presets can
    add fields such as a mixer's kwargs.

    Args:
      base: the config to start from (not modified).
      updates: nested mapping of values.

    Returns:
      The updated copy.
    """
    out = ConfigDict(base.to_dict())
    for key, value in updates.items():
        if isinstance(value, Mapping) and key in out and isinstance(out[key], ConfigDict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
