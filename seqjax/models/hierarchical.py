"""``config.model.architecture = "hierarchical"``: the HiSS paper's two-network model (Bhirangi et al. 2024).

HiSS as the authors build it: the input ``(b, L, d_in)`` is cut into
``C = L / k`` chunks of ``k`` samples; a low-level network (a whole
:class:`~seqjax.models.SequenceModel`: read-in, mixer blocks, regression head)
runs over each chunk on its own, and its output at the chunk's last sample is
that chunk's feature ``(b, C, feature_dim)``; a high-level network (another
``SequenceModel``) maps the chunk features to the chunk-rate outputs
``(b, C, output_dim)``. Unlike the registry's linear ``hiss`` mixer (both
levels inside one layer), each level here is a deep, nonlinear network.

So that a task reads every model the same way, the output keeps the input's
length: chunk ``c``'s output sits at its last sample ``ck + k - 1`` and every
other position is 0 (``outputs[:, k-1::k]`` is the chunk-rate prediction).

Config fields (``config.model``): ``architecture``, ``chunk`` (``k``),
``input_dim``, ``output_dim``, ``feature_dim`` (the chunk feature's width),
and ``low`` / ``high``: each a ``SequenceModel`` config (any field of
``seqjax.models.default_config``; missing ones take its defaults) whose
``input``, ``input_dim``, ``head``, ``output_dim`` and ``causal`` are set here
(continuous read-in, regression head, causal). Not supported: ``segment_ids``
and ``mask`` (one row is one sequence), inputs whose length is not a multiple
of ``k``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from seqjax.errors import ConfigError
from seqjax.models import config as sequence

_FIELD = "config.model"
LEVELS = ("low", "high")


def default_config() -> ml_collections.ConfigDict:
    """Every field of a hierarchical ``config.model`` with its default (S4D at both levels, 2 layers × 64 each)."""
    level = dict(mixers="s4d", num_layers=2, d_model=64)
    return ml_collections.ConfigDict(dict(architecture="hierarchical", chunk=10, input_dim=1, output_dim=1,
                                          feature_dim=64, low=dict(level), high=dict(level)))


def _int(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{_FIELD}.{field}={value!r} is not allowed; allowed: an int >= 1")
    return value


def level_configs(model_config) -> dict[str, ml_collections.ConfigDict]:
    """The two levels' ``SequenceModel`` configs, with the fields this architecture sets.

    Args:
      model_config: a hierarchical ``config.model``.

    Returns:
      ``{"low": ..., "high": ...}``: full sequence-model configs.

    Raises:
      ConfigError: a bad ``chunk``/``input_dim``/``output_dim``/``feature_dim``
        or a level that is not a mapping, or a level's own error, prefixed with
        ``config.model.<level>``.
    """
    get = model_config.get
    if get("architecture") != "hierarchical":
        raise ConfigError(f"{_FIELD}.architecture={get('architecture')!r} is not a hierarchical model's")
    for field in ("chunk", "input_dim", "output_dim", "feature_dim"):
        _int(field, get(field))
    io = {"low": (get("input_dim"), get("feature_dim")), "high": (get("feature_dim"), get("output_dim"))}
    out = {}
    for level in LEVELS:
        given = get(level)
        if not hasattr(given, "items"):
            raise ConfigError(f"{_FIELD}.{level}={given!r} is not allowed; allowed: a SequenceModel config mapping")
        cfg = sequence.default_config()
        cfg.update({k: v for k, v in dict(given).items() if v is not None or k in cfg})
        cfg.input, cfg.input_dim = "continuous", io[level][0]
        cfg.head, cfg.output_dim, cfg.causal = "regression", io[level][1], True
        out[level] = cfg
    return out


def _per_level(model_config, call) -> None:
    """Runs ``call(level, cfg)`` for both levels, prefixing a level's ConfigError with its field."""
    for level, cfg in level_configs(model_config).items():
        try:
            call(level, cfg)
        except ConfigError as e:
            raise ConfigError(str(e).replace(f"{_FIELD}.", f"{_FIELD}.{level}.", 1)) from None


def validate(model_config) -> None:
    """Raises a one-line ConfigError unless ``model_config`` can run (both levels validated)."""
    _per_level(model_config, lambda level, cfg: sequence.validate(cfg))


class HierarchicalModel(nn.Module):
    """A low-level network per chunk, a high-level network over the chunk features (module docstring).

    Attributes:
      low: the low-level ``SequenceModel`` (``input_dim -> feature_dim``).
      high: the high-level ``SequenceModel`` (``feature_dim -> output_dim``).
      chunk: ``k``, samples per chunk.
    """

    low: nn.Module
    high: nn.Module
    chunk: int

    def __call__(self, inputs, *, segment_ids=None, mask=None, deterministic: bool = True):
        """``(b, L, d_in)`` → ``(b, L, output_dim)``: chunk outputs at the chunks' last samples, 0 elsewhere.

        Args:
          inputs: float ``(b, L, d_in)``, ``L`` a multiple of ``chunk``.
          segment_ids: must be None.
          mask: must be None.
          deterministic: no dropout when True.

        Returns:
          float32 ``(b, L, output_dim)``.
        """
        if segment_ids is not None or mask is not None:
            raise ConfigError("a hierarchical model takes no segment_ids or mask (one row is one sequence)")
        b, length, d = inputs.shape
        k = self.chunk
        if length % k:
            raise ConfigError(f"{_FIELD}.chunk={k}: inputs of length {length} are not whole chunks")
        c = length // k
        # Each chunk alone through the low level (its state starts empty at every chunk), read at its last sample.
        features = self.low(inputs.reshape(b * c, k, d), deterministic=deterministic)[:, -1]
        y = self.high(features.reshape(b, c, -1), deterministic=deterministic)  # (b, C, output_dim)
        out = jnp.zeros((b, c, k, y.shape[-1]), y.dtype).at[:, :, -1].set(y)
        return out.reshape(b, length, y.shape[-1])


def build(model_config) -> HierarchicalModel:
    """Validates ``model_config`` and builds the two-level network (unbound).

    Args:
      model_config: a hierarchical ``config.model``.

    Returns:
      A :class:`HierarchicalModel`.
    """
    validate(model_config)
    levels = level_configs(model_config)
    return HierarchicalModel(low=sequence.build(levels["low"]), high=sequence.build(levels["high"]),
                             chunk=model_config.get("chunk"))


def check_length(model_config, length: int, field: str) -> None:
    """Raises ConfigError unless ``length`` is whole chunks that both levels accept.

    Args:
      model_config: a hierarchical ``config.model``.
      length: the longest input length that will be fed.
      field: dotted name of where ``length`` comes from.
    """
    k = _int("chunk", model_config.get("chunk"))
    if length % k:
        raise ConfigError(f"{_FIELD}.chunk={k} does not divide {field}={length}; allowed: a divisor of it")
    sizes = {"low": k, "high": math.ceil(length / k)}
    _per_level(model_config, lambda level, cfg: sequence.check_length(cfg, sizes[level], field))


def check_build(model_config, length: int) -> None:
    """The errors only an abstract ``init`` reveals, for each level at its own length."""
    k = _int("chunk", model_config.get("chunk"))
    sizes = {"low": k, "high": max(1, length // k)}
    _per_level(model_config, lambda level, cfg: sequence.check_build(cfg, sizes[level]))


__all__ = ["HierarchicalModel", "LEVELS", "build", "check_build", "check_length", "default_config",
           "level_configs", "validate"]
