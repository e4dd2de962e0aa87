"""Optimiser groups of a model's parameters, read from the model's structure and the mixers' declarations.

:func:`param_labels` puts every parameter leaf of a :class:`~seqjax.models.SequenceModel`
in exactly one group. The rules, first match wins:

``"ssm"``
  A leaf inside layer ``i``'s mixer (``backbone/block_{i}/mixer/...``) whose
  path relative to the mixer (``"/"``-joined, e.g. ``"A_log"``) is declared in
  that mixer class's ``ssm_params``. Only that layer's mixer is searched, so a
  parameter that merely shares a name with some SSM's dynamics (a LoRA
  adapter's ``B``, say) is not caught.
``"no_decay"``
  * a leaf of layer ``i``'s mixer declared in its class's ``no_decay_params``
    (biases of rank > 1 such as the per-head gate biases of the RNNs, or a
    mixer's own learned position table);
  * every leaf of rank <= 1: biases, norm scales, per-channel vectors such as
    the skip ``D``, the CLS vector;
  * the lookup tables of the embedding module (``embed``: the token table and
    the learned position table; everything in it but its read-in projection
    of continuous inputs). Embeddings are left undecayed (minGPT's
    convention): decay shrinks the rows of rare tokens towards zero between
    the steps that see them.
``"decay"``
  Everything else: projection kernels, convolution weights, recurrent
  matrices, output maps.

The layers' mixers come from ``config.model`` (:func:`param_labels`,
:func:`labeler`) or from a built model (:func:`layer_names`, what
``seqjax.train.run`` uses). The optimiser (``seqjax.train.optim``) gives ``"ssm"`` its own learning rate
and no weight decay, ``"no_decay"`` the base rate without decay and
``"decay"`` the base rate with decay. It knows no parameter names: a new
mixer declares its own (``ssm_params`` / ``no_decay_params``, class
attributes holding tuples of names relative to the mixer).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from seqjax import mixers

GROUPS = ("decay", "no_decay", "ssm")
"""The group labels, in the order ``seqjax.train.optim`` builds them."""

# The layout of SequenceModel's param tree (seqjax/models/model.py, backbone.py,
# embeddings.py): the module names that place a leaf.
EMBED = "embed"  # model.py: Embedding(..., name="embed")
READ_IN = "read_in"  # embeddings.py: the Dense that reads continuous inputs in (a matrix: decayed)
BACKBONE = "backbone"  # model.py: Backbone(..., name="backbone")
MIXER = "mixer"  # backbone.py: Block builds its mixer with name="mixer"

def ssm_params(name: str) -> tuple[str, ...]:
    """The SSM-dynamics parameters that mixer ``name`` declares (none for most mixers).

    Args:
      name: a registry name.

    Returns:
      Names relative to the mixer (its class's ``ssm_params``, or ``()``).
    """
    return tuple(mixers.get(name).ssm_params)


def no_decay_params(name: str) -> tuple[str, ...]:
    """The parameters of rank > 1 that mixer ``name`` keeps out of weight decay.

    Args:
      name: a registry name.

    Returns:
      Names relative to the mixer (its class's ``no_decay_params``).
    """
    return tuple(mixers.get(name).no_decay_params)


def _keys(path) -> tuple[str, ...]:
    """The module/parameter names of a tree path (a box's ``.value`` is skipped)."""
    out = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            out.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.GetAttrKey) and entry.name != "value":
            out.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            out.append(str(entry.idx))
    return tuple(out)


def _rank(leaf) -> int:
    # ShapeDtypeStruct leaves (abstract trees) have a shape but no array value.
    shape = getattr(leaf, "shape", None)
    return len(shape) if shape is not None else int(np.ndim(leaf))


def _layer_mixers(model_config) -> list[str]:
    if model_config is None:
        return []
    # Imported here: this module is part of the seqjax.models package, which may import it.
    from seqjax import models

    return models.layer_mixers(model_config)


def _as_paths(layers: Sequence[str] | Mapping[tuple[str, ...], str]) -> Mapping[tuple[str, ...], str]:
    """A SequenceModel's per-layer mixer names as ``{("backbone", "block_i", "mixer"): name}``; a mapping as is."""
    if isinstance(layers, Mapping):
        return layers
    return {(BACKBONE, f"block_{i}", MIXER): name for i, name in enumerate(layers)}


def group_of(keys: Sequence[str], rank: int, layers: Sequence[str] | Mapping[tuple[str, ...], str]) -> str:
    """The group of one leaf (the rules of the module docstring).

    Args:
      keys: the leaf's path in the param tree, e.g.
        ``("backbone", "block_0", "mixer", "A_log")``.
      rank: the leaf's number of dimensions.
      layers: the mixer name of each layer of a ``SequenceModel``
        (:func:`seqjax.models.layer_mixers`), or ``{path of a mixer module:
        its registry name}`` for any model (:func:`layer_names`).

    Returns:
      One of :data:`GROUPS`.
    """
    keys = tuple(keys)
    paths = _as_paths(layers)
    for j, key in enumerate(keys[:-1]):
        if key == MIXER and keys[:j + 1] in paths:
            name, relative = paths[keys[:j + 1]], "/".join(keys[j + 1:])
            if relative in ssm_params(name):
                return "ssm"
            if relative in no_decay_params(name):
                return "no_decay"
            break
    if rank <= 1:
        return "no_decay"
    if keys[:1] == (EMBED,) and keys[1:2] != (READ_IN,):
        return "no_decay"
    return "decay"


def layer_names(model) -> tuple[str, ...] | dict[tuple[str, ...], str]:
    """The mixer of each layer of a built model.

    Args:
      model: a Flax module: a :class:`~seqjax.models.SequenceModel` (whose
        ``layers`` are ``(name, kwargs)`` specs), one of the other
        architectures (``EncoderDecoder``, ``Informer``: an ``encoder``
        backbone and ``decoder_{i}`` blocks; ``HierarchicalModel``: two
        ``SequenceModel`` fields ``low`` and ``high``), or anything else.

    Returns:
      A ``SequenceModel``'s names in layer order; for the other architectures
      ``{path of each mixer module in the param tree: its registry name}``;
      ``()`` for any other module (its parameters then get the rank and
      embedding rules only). Either form is what :func:`labeler` takes.
    """
    from seqjax.models.encoder_decoder import EncoderDecoder
    from seqjax.models.hierarchical import HierarchicalModel
    from seqjax.models.informer import Informer
    from seqjax.models.model import SequenceModel

    if isinstance(model, SequenceModel):
        return tuple(name for name, _ in model.layers)
    if isinstance(model, (EncoderDecoder, Informer)):
        out = {("encoder", f"block_{i}", MIXER): name for i, (name, _) in enumerate(model.encoder_layers)}
        out.update({(f"decoder_{i}", MIXER): name for i, (name, _) in enumerate(model.decoder_layers)})
        return out
    if isinstance(model, HierarchicalModel):
        return {(side,) + path: name for side in ("low", "high")
                for path, name in _as_paths(layer_names(getattr(model, side))).items()}
    return ()


def labeler(model_config=None, *, layers: Sequence[str] | Mapping[tuple[str, ...], str] | None = None
            ) -> Callable[[Any], Any]:
    """``params -> labels`` for models of ``model_config`` (the layers are read once).

    Args:
      model_config: ``config.model`` (None: a model without mixer layers; only
        the rank and embedding rules apply).
      layers: the mixer name of each layer, or ``{mixer path: name}``,
        instead of ``model_config`` (e.g. :func:`layer_names` of a built model).

    Returns:
      A function of a param tree (boxed in ``nn.LogicallyPartitioned`` or
      not) returning the same tree with one of :data:`GROUPS` per leaf; what
      ``optax.multi_transform`` takes as its labels.

    Raises:
      ConfigError: ``model_config.mixers`` / ``num_layers`` cannot be read.
    """
    layers = _as_paths(tuple(_layer_mixers(model_config)) if layers is None else layers)

    def labels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(lambda p, x: group_of(_keys(p), _rank(x), layers), params)

    return labels


def param_labels(params: Any, model_config) -> Any:
    """The group of every parameter leaf of a model built from ``model_config``.

    Args:
      params: the model's ``"params"`` collection, boxed (``nn.LogicallyPartitioned``)
        or unboxed; leaves may be arrays or ``jax.ShapeDtypeStruct``.
      model_config: ``config.model`` (gives the mixer of each layer).

    Returns:
      A pytree of the same structure holding ``"ssm"``, ``"no_decay"`` or ``"decay"``.

    Raises:
      ConfigError: ``model_config.mixers`` / ``num_layers`` cannot be read.
    """
    return labeler(model_config)(params)


__all__ = ["GROUPS", "param_labels", "labeler", "layer_names", "group_of", "ssm_params", "no_decay_params"]
