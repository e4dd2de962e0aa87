"""``config.model``: its fields, their checks (all in this one module) and the build.

Public functions (re-exported by :mod:`seqjax.models`):

* :func:`default_config` — every field of ``config.model`` with its default;
* :func:`validate` — raises :class:`~seqjax.errors.ConfigError` (one line,
  naming the field) for a config the code cannot run;
* :func:`layer_mixers` — the mixer name of every layer (a pattern repeats);
* :func:`mixer_kwargs` — the resolved constructor kwargs of one mixer;
* :func:`check_length` — "sequence longer than the model allows";
* :func:`check_build` — the errors that only the width reveals (an abstract ``init``);
* :func:`build` — validates and returns a :class:`SequenceModel`.

Mixer construction. Layer ``i`` runs ``mixers.get(name)(**kwargs)`` with
``kwargs = config.model.mixer_kwargs[name]`` plus, when the mixer class has
the field and the user did not set it:

* ``causal = config.model.causal`` (setting a contradicting ``causal`` or
  ``bidirectional`` in ``mixer_kwargs`` is an error: a model is causal or not
  as a whole);
* ``dtype`` = the compute dtype (``config.model.dtype``);
* ``max_length = config.model.max_length`` (+1 with a CLS token): the
  default KV-cache size of ``mha``/``sliding_window``/``ngram`` and the size
  of ``mha``'s own learned position table.

Causality comes from each mixer class's declaration (``Mixer.causality``):
``"either"`` mixers have a ``causal`` field; the others are causal-only
(``mamba``, ``mamba2``, ``gla``, ``retnet``, ``lru``, the RNNs, ``aaren``,
``ngram``: they have a recurrent ``step``) or bidirectional-only (``hydra``).
``causal=True`` with a bidirectional-only mixer is an error. ``causal=False``
with a causal-only mixer is allowed: that layer stays causal (a hybrid such as
``"mamba,mha"`` with ``causal=False`` has causal Mamba layers and
bidirectional attention layers). A CLS token (``pooling="cls"``) is prepended,
so it needs at least one layer that sees the future; otherwise it is an error.
"""

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections.config_dict import placeholder

from seqjax import mixers
from seqjax.errors import ConfigError, check_choice, check_positive
from seqjax.models.backbone import CHANNELS
from seqjax.models.norms import NORMS
from seqjax.models.heads import POOLINGS
from seqjax.models.model import SequenceModel

INPUTS = ("tokens", "continuous")
POSITIONS = ("none", "learned", "sinusoidal")
HEADS = ("lm", "regression", "classification", "retrieval")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

_FIELD = "config.model"


def default_config() -> ml_collections.ConfigDict:
    """Every field of ``config.model`` with its default (a 2-layer causal ``mha`` LM, d=64).

    Returns:
      A fresh ConfigDict; ``vocab_size``/``input_dim``/``max_length``/
      ``num_classes`` are None (set them for the task).
    """
    return ml_collections.ConfigDict(dict(
        architecture="sequence",  # see seqjax.models.architectures ("encoder_decoder": encoder_decoder.py's fields)
        mixers="mha",
        num_layers=2,
        d_model=64,
        mixer_kwargs={},
        causal=True,
        channel="mlp",
        mlp_ratio=4.0,
        norm="layernorm",
        dropout=0.0,
        input="tokens",
        vocab_size=None,
        input_dim=None,
        positions="none",
        max_length=None,
        head="lm",
        output_dim=1,
        num_classes=None,
        pooling="mean",
        pooling_heads=4,  # pooling="lowrank_mha": attention distributions, concatenated
        pooling_rank=16,  # pooling="lowrank_mha": rank of the factorised scores
        dtype="float32",
        sequence_axis=placeholder(str),  # "sequence": split the length (see seqjax.parallel)
        distil=False,  # Informer's distilling (conv, ELU, max-pool) between layers: bidirectional pooled heads
        conv_embed=0,  # LMUFormer's conv patch embedding: kernel-3 conv layers after the embedding (0: none)
        spiking=False,  # Spiking LMUFormer: LIF neurons in the conv embedding and the mlp channel branches
    ))


def sequence_parallel_mixers() -> list[str]:
    """Registry names of the mixers that can run with the length split (they declare ``sequence_parallel``)."""
    return [name for name in mixers.names() if mixers.get(name).sequence_parallel]


def _as_dict(value) -> dict:
    """A plain dict of a ConfigDict / mapping (nested ConfigDicts converted)."""
    if value is None:
        return {}
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return dict(value)


def merge_fields(model_config, defaults: dict, what: str) -> dict:
    """``model_config`` merged over ``defaults``; a key not among them is a one-line ConfigError.

    Every architecture's config check starts here (``seqjax.models.architectures``).

    Args:
      model_config: ``config.model`` (a ConfigDict or a mapping; None: no fields).
      defaults: the architecture's fields with their defaults.
      what: the architecture in words, for the message (e.g. ``"a model"``, ``"an Informer"``).

    Returns:
      A plain dict of every field.
    """
    given = _as_dict(model_config)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"{_FIELD}.{unknown[0]} is not {what} field; allowed: {', '.join(sorted(defaults))}")
    return {**defaults, **given}


def _fields(model_config) -> dict:
    """``model_config`` merged over the defaults; unknown keys raise ConfigError."""
    return merge_fields(model_config, default_config().to_dict(), "a model")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(field: str, value) -> None:
    """A positive int (not a float, not a bool)."""
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"{field}={value!r} must be an int > 0")


def _pattern(value) -> list[str]:
    if isinstance(value, str):
        return [name.strip() for name in value.split(",")]
    if isinstance(value, (list, tuple)):
        return [str(name).strip() for name in value]
    raise ConfigError(f"{_FIELD}.mixers={value!r} must be a comma-separated string of mixer names")


def layer_mixers(model_config) -> list[str]:
    """The mixer name of each layer: the ``mixers`` pattern repeated to ``num_layers``.

    Args:
      model_config: ``config.model``.

    Returns:
      ``num_layers`` registry names, e.g. ``"mamba,mha"`` with 4 layers ->
      ``["mamba", "mha", "mamba", "mha"]``.

    Raises:
      ConfigError: unknown names, empty entries, or a pattern whose length does
        not divide ``num_layers``.
    """
    cfg = _fields(model_config)
    if cfg["architecture"] != "sequence":
        raise ConfigError(f"{_FIELD}.architecture={cfg['architecture']!r} is not a SequenceModel's; build it with "
                          "seqjax.models.build (allowed here: 'sequence')")
    _check_int(f"{_FIELD}.num_layers", cfg["num_layers"])
    pattern = _pattern(cfg["mixers"])
    allowed = mixers.names()
    for name in pattern:
        if name not in allowed:
            raise ConfigError(f"{_FIELD}.mixers={cfg['mixers']!r}: unknown mixer {name!r}; allowed: {', '.join(allowed)}")
    n = cfg["num_layers"]
    if n % len(pattern):
        raise ConfigError(
            f"{_FIELD}.mixers={cfg['mixers']!r} has {len(pattern)} entries, which does not divide "
            f"{_FIELD}.num_layers={n}; allowed: a pattern whose length divides num_layers")
    return pattern * (n // len(pattern))


def _mixer_fields(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}


def causal_only(name: str) -> bool:
    """A mixer that is always causal (it has a recurrent ``step`` and no ``causal`` field)."""
    return mixers.get(name).causality == "causal"


def bidirectional_only(name: str) -> bool:
    """A mixer that is never causal (``hydra``)."""
    return mixers.get(name).causality == "bidirectional"


def _uses_cls(cfg: dict) -> bool:
    return cfg["head"] in ("classification", "retrieval") and cfg["pooling"] == "cls"


def _dtype(field: str, value):
    if isinstance(value, str):
        check_choice(field, value, DTYPES)
        return DTYPES[value]
    return value


def mixer_kwargs(model_config, name: str) -> dict[str, Any]:
    """The constructor kwargs of mixer ``name`` in this model (see the module docstring).

    Args:
      model_config: ``config.model``.
      name: a registry name.

    Returns:
      ``mixer_kwargs[name]`` plus ``causal``, ``dtype`` and ``max_length``
      where the class has those fields and the user left them unset.

    Raises:
      ConfigError: unknown kwargs, a contradicting ``causal``/``bidirectional``
        or ``d_model``.
    """
    cfg = _fields(model_config)
    cls = mixers.get(name)
    fields = _mixer_fields(cls)
    field = f"{_FIELD}.mixer_kwargs.{name}"
    raw = _as_dict(cfg["mixer_kwargs"]).get(name)
    if raw is not None and not isinstance(raw, dict) and not hasattr(raw, "to_dict"):
        raise ConfigError(f"{field}={raw!r} must be a dict of constructor kwargs of mixer {name!r}")
    kwargs = _as_dict(raw)
    for key in kwargs:
        if key not in fields:
            raise ConfigError(f"{field}.{key} is not a field of mixer {name!r}; allowed: {', '.join(fields)}")
    causal = bool(cfg["causal"])
    if "causal" in kwargs and kwargs["causal"] is not None and bool(kwargs["causal"]) != causal:
        raise ConfigError(f"{field}.causal={kwargs['causal']!r} contradicts {_FIELD}.causal={causal}; "
                          f"set {_FIELD}.causal instead")
    if "bidirectional" in kwargs and kwargs["bidirectional"] is not None and bool(kwargs["bidirectional"]) == causal:
        raise ConfigError(f"{field}.bidirectional={kwargs['bidirectional']!r} contradicts {_FIELD}.causal={causal}; "
                          f"set {_FIELD}.causal instead")
    if kwargs.get("d_model") not in (None, cfg["d_model"]):
        raise ConfigError(f"{field}.d_model={kwargs['d_model']!r} must equal {_FIELD}.d_model={cfg['d_model']}")
    if "causal" in fields:
        kwargs["causal"] = causal
    if "dtype" in fields:
        kwargs["dtype"] = _dtype(f"{field}.dtype", kwargs.get("dtype", cfg["dtype"]))
    if "max_length" in fields and kwargs.get("max_length") is None and cfg["max_length"] is not None:
        kwargs["max_length"] = cfg["max_length"] + int(_uses_cls(cfg))
    axis = cfg["sequence_axis"]
    if axis is not None:
        if not cls.sequence_parallel:
            raise ConfigError(f"{_FIELD}.sequence_axis={axis!r} but mixer {name!r} cannot run with the length split; "
                              f"allowed mixers: {', '.join(sequence_parallel_mixers())}")
        kwargs.setdefault("sequence_axis", axis)
    # Lists from configs become tuples so that the module stays hashable.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def validate(model_config) -> None:
    """Raises ConfigError (one line, naming the field) unless ``model_config`` can run.

    Args:
      model_config: ``config.model`` (a ConfigDict or a mapping; missing fields
        take :func:`default_config`'s values).

    Raises:
      ConfigError: see ``docs/models.md`` for the list of checks.
    """
    cfg = _fields(model_config)
    _check_int(f"{_FIELD}.num_layers", cfg["num_layers"])
    _check_int(f"{_FIELD}.d_model", cfg["d_model"])
    names = layer_mixers(cfg)
    if not isinstance(cfg["causal"], bool):
        raise ConfigError(f"{_FIELD}.causal={cfg['causal']!r} must be a bool")
    check_choice(f"{_FIELD}.channel", cfg["channel"], CHANNELS)
    if cfg["channel"] != "none":
        check_positive(f"{_FIELD}.mlp_ratio", cfg["mlp_ratio"])
    check_choice(f"{_FIELD}.norm", cfg["norm"], NORMS)
    dropout = cfg["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{_FIELD}.dropout={dropout!r} must be a number in [0, 1)")
    check_choice(f"{_FIELD}.input", cfg["input"], INPUTS)
    if cfg["input"] == "tokens":
        _check_int(f"{_FIELD}.vocab_size", cfg["vocab_size"])
    else:
        _check_int(f"{_FIELD}.input_dim", cfg["input_dim"])
    check_choice(f"{_FIELD}.positions", cfg["positions"], POSITIONS)
    if cfg["positions"] == "learned" or cfg["max_length"] is not None:
        _check_int(f"{_FIELD}.max_length", cfg["max_length"])
    check_choice(f"{_FIELD}.head", cfg["head"], HEADS)
    if cfg["head"] == "lm":
        _check_int(f"{_FIELD}.vocab_size", cfg["vocab_size"])
    elif cfg["head"] == "regression":
        _check_int(f"{_FIELD}.output_dim", cfg["output_dim"])
    else:
        _check_int(f"{_FIELD}.num_classes", cfg["num_classes"])
    check_choice(f"{_FIELD}.pooling", cfg["pooling"], POOLINGS)
    _check_int(f"{_FIELD}.pooling_heads", cfg["pooling_heads"])
    _check_int(f"{_FIELD}.pooling_rank", cfg["pooling_rank"])
    check_choice(f"{_FIELD}.dtype", cfg["dtype"], DTYPES)
    if cfg["sequence_axis"] is not None and not isinstance(cfg["sequence_axis"], str):
        raise ConfigError(f"{_FIELD}.sequence_axis={cfg['sequence_axis']!r} must be None or a mesh axis name "
                          f"(\"sequence\")")
    if cfg["sequence_axis"] is not None and _uses_cls(cfg):
        raise ConfigError(f"{_FIELD}.sequence_axis={cfg['sequence_axis']!r} with pooling='cls': the CLS token makes "
                          f"the length odd; allowed pooling with a split length: mean, last")
    _check_distil(cfg)
    _check_conv_embed(cfg)

    kwargs_cfg = _as_dict(cfg["mixer_kwargs"])
    for name in kwargs_cfg:
        if name not in mixers.names():
            raise ConfigError(f"{_FIELD}.mixer_kwargs has unknown mixer {name!r}; allowed: {', '.join(mixers.names())}")
    for name in dict.fromkeys(names):
        if cfg["causal"] and bidirectional_only(name):
            raise ConfigError(f"{_FIELD}.causal=True but mixer {name!r} in {_FIELD}.mixers is bidirectional only; "
                              f"set {_FIELD}.causal=False")
        kwargs = mixer_kwargs(cfg, name)
        if kwargs.get("positions") == "learned" and "max_length" in _mixer_fields(mixers.get(name)) \
                and kwargs.get("max_length") is None:
            raise ConfigError(f"{_FIELD}.mixer_kwargs.{name}.positions='learned' needs a position table size: "
                              f"set {_FIELD}.max_length (or {_FIELD}.mixer_kwargs.{name}.max_length)")
        try:  # Every mixer checks its own fields on construction ("<mixer>.<field>=...").
            mixers.get(name)(**kwargs)
        except (TypeError, ValueError) as e:
            message = str(e).splitlines()[0]
            if isinstance(e, ConfigError) and message.startswith(f"{name}."):
                raise ConfigError(f"{_FIELD}.mixer_kwargs.{message}") from None
            raise ConfigError(f"{_FIELD}.mixer_kwargs.{name}: {message}") from None
    if _uses_cls(cfg) and all(cfg["causal"] or causal_only(name) for name in names):
        raise ConfigError(f"{_FIELD}.pooling='cls' prepends a CLS token that no layer lets see the sequence "
                          f"(every mixer is causal); allowed: mean, last, or {_FIELD}.causal=False with a "
                          "bidirectional mixer")


def _check_distil(cfg: dict) -> None:
    """``distil``: a bool, and only where halving the length between layers is defined."""
    field = f"{_FIELD}.distil"
    if not isinstance(cfg["distil"], bool):
        raise ConfigError(f"{field}={cfg['distil']!r} must be a bool")
    if not cfg["distil"]:
        return
    if cfg["causal"]:
        raise ConfigError(f"{field}=True needs {_FIELD}.causal=False: the distilling conv and max-pool read the next "
                          "positions; allowed: distil=False for causal models")
    if cfg["head"] not in ("classification", "retrieval"):
        raise ConfigError(f"{field}=True with {_FIELD}.head={cfg['head']!r}: the distilled sequence is shorter than "
                          "the per-position targets; allowed heads: classification, retrieval")
    if cfg["pooling"] == "cls":
        raise ConfigError(f"{field}=True with {_FIELD}.pooling='cls': the max-pool merges the CLS token with its "
                          "neighbours; allowed pooling: mean, last, lowrank_mha")
    if cfg["sequence_axis"] is not None:
        raise ConfigError(f"{field}=True with {_FIELD}.sequence_axis={cfg['sequence_axis']!r}: the distilling layer "
                          "does not run with the length split; allowed: sequence_axis=None")


def _check_conv_embed(cfg: dict) -> None:
    """``conv_embed`` (an int >= 0) and ``spiking`` (a bool): not with the length split."""
    field = f"{_FIELD}.conv_embed"
    if not _is_int(cfg["conv_embed"]) or cfg["conv_embed"] < 0:
        raise ConfigError(f"{field}={cfg['conv_embed']!r} must be an int >= 0 (conv layers; 0: none)")
    if not isinstance(cfg["spiking"], bool):
        raise ConfigError(f"{_FIELD}.spiking={cfg['spiking']!r} must be a bool")
    if cfg["spiking"] and cfg["channel"] != "mlp" and not cfg["conv_embed"]:
        raise ConfigError(f"{_FIELD}.spiking=True has nothing to act on: it replaces the activations of "
                          f"channel='mlp' and of the conv embedding; got channel={cfg['channel']!r}, conv_embed=0")
    if (cfg["conv_embed"] or cfg["spiking"]) and cfg["sequence_axis"] is not None:
        raise ConfigError(f"{field}={cfg['conv_embed']} / spiking={cfg['spiking']} with {_FIELD}.sequence_axis="
                          f"{cfg['sequence_axis']!r}: the convolutions and LIF neurons read across shard "
                          "boundaries; allowed: sequence_axis=None")


def check_length(model_config, length: int, field: str) -> None:
    """Raises ConfigError when sequences of ``length`` are longer than the model allows.

    Limits: ``max_length`` with learned positions; a mixer's own table
    (``positions="learned"`` in ``mha``/``sliding_window``); ``s4``'s ``l_max``.
    A CLS token adds one position for the mixers.

    Args:
      model_config: ``config.model``.
      length: the longest ``inputs`` length that will be fed (e.g. ``task.max_length``).
      field: dotted name of where ``length`` comes from, for the message.

    Raises:
      ConfigError: naming ``field``, ``length`` and the limiting model field.
    """
    cfg = _fields(model_config)
    if cfg["positions"] == "learned" and cfg["max_length"] is not None and length > cfg["max_length"]:
        raise ConfigError(f"{field}={length}: sequence longer than the model allows "
                          f"({_FIELD}.max_length={cfg['max_length']} with learned positions)")
    seen = length + int(_uses_cls(cfg))
    for name in dict.fromkeys(layer_mixers(cfg)):
        kwargs = mixer_kwargs(cfg, name)
        limits = []
        if kwargs.get("positions") == "learned" and kwargs.get("max_length") is not None:
            limits.append(("max_length", kwargs["max_length"]))
        if kwargs.get("l_max") is not None:
            limits.append(("l_max", kwargs["l_max"]))
        for key, limit in limits:
            if seen > limit:
                raise ConfigError(f"{field}={length}: sequence longer than the model allows "
                                  f"(mixer {name!r}: {key}={limit}{', plus the CLS token' if seen > length else ''})")


# (model fields as JSON, length) of every model that check_build has traced without error.
_BUILT: set[tuple[str, int]] = set()


def check_build(model_config, length: int) -> None:
    """Raises ConfigError when the model cannot be built for inputs of ``length``.

    :func:`validate` constructs every mixer, but some checks need the width, which a
    mixer only sees when it creates its parameters (``num_heads`` must divide
    ``d_model``, ``mamba2``'s ``headdim`` must divide ``expand * d_model``...).
    This traces the ``init`` of the model with one layer per distinct mixer
    abstractly (``jax.eval_shape``: nothing is computed or allocated) on one
    example of ``length``, so those errors surface before a run writes anything.
    A model that passed is remembered (tables check many cells of one model).

    Args:
      model_config: ``config.model`` (already passed by :func:`validate`).
      length: the input length (e.g. the task's ``max_length``).

    Raises:
      ConfigError: one line; a mixer's own check is named
        ``config.model.mixer_kwargs.<mixer>.<field>``.
    """
    full = _fields(model_config)
    # One layer per distinct mixer: a width error does not depend on the depth, and
    # tracing a 12-layer paper model would cost 12 times as much.
    names = list(dict.fromkeys(layer_mixers(full)))
    cfg = {**full, "mixers": ",".join(names), "num_layers": len(names)}
    key = (json.dumps(cfg, sort_keys=True, default=repr), length)
    if key in _BUILT:  # tables check the same model once per cell and device count
        return
    model = build(cfg)
    shape = (1, 2, length) if cfg["head"] == "retrieval" else (1, length)
    if cfg["input"] == "tokens":
        inputs = jax.ShapeDtypeStruct(shape, jnp.int32)
    else:
        inputs = jax.ShapeDtypeStruct(shape + (cfg["input_dim"],), jnp.float32)

    def init(key, x):
        return model.init({"params": key, "dropout": key}, x, deterministic=True)

    try:
        jax.eval_shape(init, jax.random.key(0), inputs)
    except ConfigError as e:
        message = str(e).splitlines()[0]
        if message.split(".", 1)[0] in names:
            # The width is config.model.d_model, which the mixer only knows as "d_model".
            width = f" ({_FIELD}.d_model={cfg['d_model']})" if "d_model" in message else ""
            raise ConfigError(f"{_FIELD}.mixer_kwargs.{message}{width}") from None
        raise ConfigError(f"{_FIELD}: {message}") from None
    except (TypeError, ValueError) as e:  # a structural error the field checks above do not know
        message = str(e).strip().splitlines()
        raise ConfigError(f"{_FIELD} does not build: {type(e).__name__}: {message[0] if message else ''}") from None
    _BUILT.add(key)


def build(model_config) -> SequenceModel:
    """Validates ``config.model`` and builds the network.

    Args:
      model_config: ``config.model``.

    Returns:
      An unbound :class:`SequenceModel`; call ``model.init(key, inputs)`` and
      ``model.apply(params, inputs, segment_ids=None, mask=None,
      deterministic=True, rngs={"dropout": key})``.

    Raises:
      ConfigError: as :func:`validate`.
    """
    validate(model_config)
    cfg = _fields(model_config)
    specs = {name: tuple(sorted(mixer_kwargs(cfg, name).items())) for name in dict.fromkeys(layer_mixers(cfg))}
    return SequenceModel(
        layers=tuple((name, specs[name]) for name in layer_mixers(cfg)),
        d_model=cfg["d_model"],
        channel=cfg["channel"],
        mlp_ratio=float(cfg["mlp_ratio"]),
        norm=cfg["norm"],
        dropout=float(cfg["dropout"]),
        input=cfg["input"],
        vocab_size=cfg["vocab_size"],
        input_dim=cfg["input_dim"],
        positions=cfg["positions"],
        max_length=cfg["max_length"],
        head=cfg["head"],
        output_dim=cfg["output_dim"],
        num_classes=cfg["num_classes"],
        pooling=cfg["pooling"],
        pooling_heads=cfg["pooling_heads"],
        pooling_rank=cfg["pooling_rank"],
        dtype=DTYPES[cfg["dtype"]],
        distil=cfg["distil"],
        conv_embed=cfg["conv_embed"],
        spiking=cfg["spiking"],
        causal=cfg["causal"],
    )


__all__ = [
    "build", "check_build", "default_config", "validate", "layer_mixers", "mixer_kwargs", "check_length",
    "causal_only", "bidirectional_only", "sequence_parallel_mixers", "merge_fields",
]
