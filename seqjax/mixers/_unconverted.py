"""Temporary: the two pre-``Mixer`` helpers that the families not yet on the base still import.

``check_seq`` and ``model_width`` used to live in ``seqjax/mixers/recurrent.py``;
the recurrent family now runs on :class:`seqjax.mixers.base.Mixer` (which checks
inputs and finds the width itself), so they moved here unchanged for
``attention``, ``aaren``, ``ngram``, ``linear`` and ``retention``. Delete this
file once none of them imports it.
"""

import flax.linen as nn
import jax

from seqjax.mixers.common import check_input as check_seq


def model_width(module: nn.Module, x: jax.Array | None = None) -> int:
    """The model width: ``d_model`` if set, else from ``x``, else from ``out_proj``.

    Args:
      module: a mixer with a ``d_model`` field and an ``out_proj`` dense layer.
      x: an input whose last axis is the width, or None.

    Returns:
      The width ``d``.
    """
    name = type(module).__name__
    if x is not None:
        if module.d_model is not None and x.shape[-1] != module.d_model:
            raise ValueError(
                f"{name}: x has shape {x.shape}; expected last axis d_model={module.d_model}"
            )
        return x.shape[-1]
    if module.d_model is not None:
        return module.d_model
    params = module.variables.get("params", {})
    if "out_proj" not in params:
        raise ValueError(f"{name}: d_model is None and the module has no parameters to infer it from")
    return nn.meta.unbox(params["out_proj"]["kernel"]).shape[-1]


__all__ = ["check_seq", "model_width"]
