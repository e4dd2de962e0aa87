"""Experiment configs: loading config files, their shared helpers, and ``--config.x=y`` overrides.

A config file (``configs/**.py``) is plain data: a ``get_config(arg)`` that
returns an ml_collections ``ConfigDict``. Config files import their shared
helpers from this module (the installed package), never from a ``configs``
package, so :func:`load_config` only has to execute the file: it works from any
working directory and nothing is added to ``sys.path``. A config file that
shares code with its siblings loads that file with :func:`load_module`.

The argument after ``:`` in ``--config=file.py:arg`` is comma-separated
``key=value`` pairs (``"model=mamba,scale=cpu"``), parsed by :func:`parse_arg`
so that every config reports a bad key or value the same way.

``--config.<field>=<value>`` overrides are applied by :func:`apply_overrides`:
the field must exist (a misspelt one fails naming the closest valid names), and
the value is parsed as the field's type (a ``placeholder`` gives a None default
its type). Only the maps in :data:`OPEN_MAPS` (a mixer's or a function class's
keyword arguments) accept new keys; their consumers check them.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import fnmatch
import importlib.util
import pathlib
import sys
import traceback
from collections.abc import Mapping, Sequence
from types import ModuleType

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from seqjax.errors import ConfigError
from seqjax.presets import (  # model presets have their own module; re-exported here
    MASFORMER_FULL_FRACTION, MASFORMER_WINDOW, NGRAM_SUFFIX, PRESETS, apply_model_preset, hybrid_layers,
    XLSTM71_PERIOD, masformer_layers, model_names, xlstm_layers,
)

# --------------------------------------------------------------------------------------
# Loading config files.


def _where(error: BaseException, path: pathlib.Path) -> str:
    """`` (line N)``: the deepest line of ``path`` in ``error``'s traceback, or ""."""
    if isinstance(error, SyntaxError) and error.lineno and error.filename == str(path):
        return f" (line {error.lineno})"
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == str(path):
            line = frame.lineno
    return f" (line {line})" if line else ""


def _summary(error: BaseException) -> str:
    """``"KeyError: 'x'"``: the error's type and the first line of its message."""
    text = str(error.msg if isinstance(error, SyntaxError) else error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def load_module(path: str | pathlib.Path) -> ModuleType:
    """Executes the Python file at ``path`` as a fresh module and returns it.

    Args:
      path: the file (relative paths are relative to the working directory).

    Returns:
      The module (registered in ``sys.modules`` under a name derived from the
      resolved path, so dataclasses and pickling inside it work).

    Raises:
      ConfigError: ``path`` is empty or not a file, or executing it raised
        (one line: the file, the line and the error).
    """
    if not str(path).strip():
        raise ConfigError("--config is empty; give a config file: --config=path/to/config.py[:arg]")
    path = pathlib.Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {str(path)!r} {what} (relative paths start at {pathlib.Path.cwd()})")
    resolved = path.resolve()
    # A module name per file: two config files with the same stem never collide.
    name = "_seqjax_config_" + "".join(c if c.isalnum() else "_" for c in str(resolved))
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        del sys.modules[name]
        raise
    except Exception as e:  # a broken file is a bad input: one line, not the traceback of our loader
        del sys.modules[name]
        raise ConfigError(f"config file {str(path)!r} failed to load{_where(e, resolved)}: {_summary(e)}") from e
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_config(path: str | pathlib.Path, arg: str | None = None) -> ConfigDict:
    """Calls ``get_config(arg)`` of the config file at ``path`` (as ``--config=path:arg`` does).

    Args:
      path: the config file.
      arg: the config argument (None or "" for the file's defaults).

    Returns:
      The config (a mapping that ``get_config`` returns becomes a ConfigDict).

    Raises:
      ConfigError: no such file, a file that fails to load, no ``get_config``,
        a bad argument, a ``get_config`` that raises, or one that returns
        something other than a config (each one line naming the file).
    """
    module = load_module(path)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {str(path)!r} defines no get_config(arg)")
    try:
        config = module.get_config(arg or None)
    except ConfigError:
        raise
    except Exception as e:
        where = _where(e, pathlib.Path(module.__file__))
        raise ConfigError(f"config file {str(path)!r}: get_config({arg or None!r}) failed{where}: {_summary(e)}") from e
    if isinstance(config, Mapping) and not isinstance(config, ConfigDict):
        config = ConfigDict(dict(config))
    if not isinstance(config, ConfigDict):
        raise ConfigError(f"config file {str(path)!r}: get_config returned {type(config).__name__}, "
                          "not a ConfigDict")
    return config


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"path.py:arg"`` → ``("path.py", "arg")``; ``"path.py"`` → ``("path.py", None)``."""
    path, _, arg = spec.partition(":")
    return path, (arg or None)


# --------------------------------------------------------------------------------------
# The config argument and shared pieces of the config files.


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


def positive_int_arg(args: Mapping[str, str], key: str, default: int | None = None, what: str = "") -> int | None:
    """The config argument ``key`` of parsed ``args`` as an int > 0.

    Args:
      args: the dict from :func:`parse_arg`.
      key: the argument's name.
      default: returned when the argument is absent or empty.
      what: what the number counts, for the error line (e.g. "training steps").

    Returns:
      The int, or ``default``.

    Raises:
      ConfigError: the value is not an int > 0 (one line naming the argument).
    """
    value = args.get(key)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        detail = f" ({what})" if what else ""
        raise ConfigError(f"config argument {key}={value!r} must be an int > 0{detail}")
    return number


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


# Model fields whose default is None, with the type a command-line value takes.
_MODEL_NONE_TYPES = {"vocab_size": int, "input_dim": int, "max_length": int, "num_classes": int}


def base_config() -> ConfigDict:
    """Seed, trainer/optimiser/mesh defaults and the model defaults.

    Returns:
      An unlocked ConfigDict; the model's None defaults are typed placeholders,
      so ``--config.model.num_classes=5`` parses as an int.
    """
    from seqjax import models
    from seqjax.train import default_config as train_defaults

    config = train_defaults()
    config.model = models.default_config()
    for key, kind in _MODEL_NONE_TYPES.items():
        if config.model.get(key) is None:
            config.model[key] = placeholder(kind)
    config.unlock()
    return config


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a table (``configs/tables/*.py``).

    Attributes:
      name: folder name of the run under the table's root.
      config: path of the config file, relative to the repository root.
      arg: the config argument.
      init_from: the name of an earlier cell of the same table whose run this
        one starts from (``config.train.init_from`` is set to that cell's run
        folder: self-pretraining, then fine-tuning), or None.
    """

    name: str
    config: str
    arg: str
    init_from: str | None = None


# --------------------------------------------------------------------------------------
# Command-line overrides: ``--config.a.b=value``.

OPEN_MAPS = ("model.mixer_kwargs", "model.mixer_kwargs.*", "task.task_kwargs", "task.builder_kwargs")
"""Config maps whose keys are free (checked by their consumer: the mixer, the
function class, the builder); every other section only takes its own fields."""

_PREFIX = "config."
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_NONE = "None"  # the one spelling of None: "none" is a real value of str fields (model.positions)


@dataclasses.dataclass(frozen=True)
class Override:
    """One ``--config.<path>=<value>`` argument.

    Attributes:
      path: the dotted field path below ``config`` (``"task.dim"``).
      value: the text after ``=`` (None: the bare ``--config.x`` / ``--noconfig.x`` form).
      negated: the ``--noconfig.x`` form (a bool set to False).
    """

    path: str
    value: str | None = None
    negated: bool = False

    @property
    def flag(self) -> str:
        """The argument as written, for messages."""
        name = ("--no" if self.negated else "--") + _PREFIX + self.path
        return name if self.value is None else f"{name}={self.value}"


def split_overrides(argv: Sequence[str]) -> tuple[list[Override], list[str]]:
    """Separates ``--config.x=y`` overrides from the other arguments.

    Accepted forms: ``--config.x=y``, ``--config.x y`` (the next argument is the
    value unless it starts with ``--``), a bare ``--config.x`` (True) and
    ``--noconfig.x`` (False) for bools; one leading dash works too.

    Args:
      argv: the command line (``argv[0]`` included or not).

    Returns:
      ``(overrides in order, the other arguments)``.
    """
    overrides, rest = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        body = arg.lstrip("-")
        negated = body.startswith("no" + _PREFIX)
        if arg.startswith("-") and (body.startswith(_PREFIX) or negated) and arg != body:
            name, eq, value = body.removeprefix("no").removeprefix(_PREFIX).partition("=")
            if not eq and not negated and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, eq = args[i + 1], "="
                i += 1
            overrides.append(Override(name, value if eq else None, negated))
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def _is_open(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in OPEN_MAPS)


def _leaf_paths(node, prefix: str = "") -> list[str]:
    out = []
    for key in node.keys():
        value = node[key]
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, ConfigDict):
            out.extend(_leaf_paths(value, path + "."))
    return out


def _unknown(config: ConfigDict, node: ConfigDict, section: str, key: str, flag: str) -> ConfigError:
    """The one-line error for ``flag`` naming a field ``key`` that ``section`` lacks."""
    names = sorted(node.keys())
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    # The same name elsewhere (``train.learning_rate`` for ``optim.learning_rate``).
    elsewhere = [p for p in _leaf_paths(config) if p.rsplit(".", 1)[-1] == key and p != f"{section}.{key}"]
    hints = [f"config.{section}.{n}" if section else f"config.{n}" for n in close]
    hints += [f"config.{p}" for p in elsewhere[:3] if f"config.{p}" not in hints]
    where = f"config.{section}" if section else "config"
    if hints:
        tail = f"did you mean {' or '.join(hints)}?"
    elif names:
        tail = f"its fields: {', '.join(names)}"
    else:
        tail = "it has no fields"
    return ConfigError(f"{flag}: {where} has no field {key!r}; {tail}")


def _type_name(kind) -> str:
    """``"an int"``, ``"a float"``, ``"a tuple"``... for messages."""
    name = {ConfigDict: "section", dict: "dict", type(None): "value"}.get(kind, getattr(kind, "__name__", str(kind)))
    return ("an " if name[0] in "aeiou" else "a ") + name


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _parse_scalar(text: str, kind):
    """``text`` as a value of ``kind`` (bool, int, float, str); raises ValueError."""
    if kind is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"must be true or false, not {text!r}")
    if kind is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            number = float(text)  # "1e3": an integral float is accepted
            if not number.is_integer():
                raise ValueError(f"must be an int, not {text!r}") from None
            return int(number)
    if kind is float:
        return float(text)
    if kind is str:
        return text
    return _literal(text)


def _parse_value(text: str, current, kind, flag: str, path: str):
    """The value that ``text`` denotes for the field ``path`` holding ``current`` of type ``kind``."""
    if text.strip() == _NONE:
        return None
    try:
        if kind in (bool, int, float, str):
            return _parse_scalar(text, kind)
        if kind in (tuple, list):
            value = _literal(text)
            if isinstance(value, (tuple, list)):
                items = list(value)
            elif isinstance(value, str) or not isinstance(value, (int, float, bool)):
                # "a,b,c" (what a shell leaves of a list): parse each item like the defaults' items.
                item_kind = type(current[0]) if current else None
                items = [_parse_scalar(s.strip(), item_kind) if item_kind in (bool, int, float, str)
                         else _literal(s.strip()) for s in text.split(",") if s.strip()]
            else:
                items = [value]
            return kind(items)
        if kind is ConfigDict or kind is dict:
            value = _literal(text)
            if not isinstance(value, dict):
                raise ValueError("must be a dict literal, e.g. \"{'key': 1}\", or set its fields one by one")
            return value
        return _literal(text)
    except ValueError as e:
        msg = str(e) if str(e).startswith("must") else f"must be {_type_name(kind)}, not {text!r}"
        raise ConfigError(f"{flag}: config.{path} {msg}") from None


def apply_overrides(config: ConfigDict, overrides: Sequence[Override | str]) -> ConfigDict:
    """Applies ``--config.<path>=<value>`` overrides to ``config`` in place.

    Args:
      config: the loaded config.
      overrides: :class:`Override` objects, or strings such as ``"task.dim=3"``.

    Returns:
      ``config``.

    Raises:
      ConfigError: one line naming the flag: an unknown field (with the closest
        valid names), a value that does not parse as the field's type, or a
        bare flag on a field that is not a bool.
    """
    for item in overrides:
        if isinstance(item, str):
            path, eq, value = item.partition("=")
            item = Override(path, value if eq else None)
        _apply_one(config, item)
    return config


def _apply_one(config: ConfigDict, item: Override) -> None:
    flag = item.flag
    parts = item.path.split(".")
    if not item.path or not all(parts):
        raise ConfigError(f"{flag}: not a field path; write --config.<section>.<field>=<value>")
    node, section = config, ""
    for part in parts[:-1]:
        if part not in node:
            if not _is_open(section):
                raise _unknown(config, node, section, part, flag)
            node[part] = ConfigDict()
        elif node[part] is None and _is_open(f"{section}.{part}".lstrip(".")):
            node[part] = ConfigDict()  # an open map that is None by default (e.g. builder_kwargs)
        section = f"{section}.{part}".lstrip(".")
        node = node[part]
        if not isinstance(node, ConfigDict):
            raise ConfigError(f"{flag}: config.{section} is a {type(node).__name__} value, not a section")
    key = parts[-1]
    if key not in node and not _is_open(section):
        raise _unknown(config, node, section, key, flag)
    current = node.get(key)
    kind = node.get_type(key) if key in node else type(None)
    text = (item.value or "").strip()
    if isinstance(current, ConfigDict) and item.value is not None and not text.startswith("{") and text != _NONE:
        names = ", ".join(sorted(current.keys())) or "none"
        raise ConfigError(f"{flag}: config.{item.path} is a section (fields: {names}); set its fields, "
                          f"e.g. --config.{item.path}.<field>=<value>")
    if item.value is None:
        if item.negated and kind is not bool and current is not None:
            raise ConfigError(f"{flag}: config.{item.path} is {_type_name(kind)}; --no{_PREFIX}<field> is for bools")
        if kind is not bool and current is not None:
            raise ConfigError(f"{flag}: config.{item.path} is {_type_name(kind)}; give a value "
                              f"(--config.{item.path}=<value>)")
        value = not item.negated
    elif item.negated:
        raise ConfigError(f"{flag}: --no{_PREFIX}<field> takes no value")
    else:
        value = _parse_value(item.value, current, kind, flag, item.path)
    try:
        node[key] = value
    except (TypeError, ValueError):  # ml_collections' type check (a typed placeholder, a section)
        raise ConfigError(f"{flag}: config.{item.path} must be {_type_name(kind)}, not {value!r}") from None


def fields(config: ConfigDict) -> list[str]:
    """Every field path of ``config`` (sections included), e.g. ``["model", "model.d_model", ...]``."""
    return _leaf_paths(config)


__all__ = ["load_module", "load_config", "split_spec", "parse_arg", "merge", "PRESETS", "NGRAM_SUFFIX",
           "masformer_layers", "hybrid_layers", "xlstm_layers", "XLSTM71_PERIOD", "MASFORMER_FULL_FRACTION", "MASFORMER_WINDOW",
           "model_names", "apply_model_preset", "base_config", "Cell", "OPEN_MAPS", "Override",
           "split_overrides", "apply_overrides", "fields"]
