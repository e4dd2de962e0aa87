"""A position-wise MLP as a layer of a hybrid pattern (no sequence mixing).

Waleffe et al. 2024, "An Empirical Study of Mamba-based Language Models",
build the Mamba-2-Hybrid from three kinds of single-branch pre-norm residual
layers: Mamba-2, self-attention and MLP. seqjax's block is ``x + Mixer(Norm(x))``
followed by an optional channel branch; with ``config.model.channel="none"``
the registry name ``mlp`` in ``config.model.mixers`` is exactly the paper's
MLP layer::

    y_t = W_2 act(W_1 x_t + b_1) + b_2          (per position, no mixing across t)

so a layer pattern such as ``"mamba2,mlp,mamba2,mlp,mha,mlp"`` is the paper's
interleaving (``configs/common.py``'s ``mamba2_hybrid`` preset places them as
the 8B model does).

It has no state: ``step`` applies the MLP to the position, the cache is empty
(``state_size`` 0), segments and causality hold trivially, and under sequence
parallelism each shard applies it to its own positions.
"""

from typing import Any

import flax.linen as nn
import jax

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_number, dense, gelu
from seqjax.mixers.registry import register
from seqjax.types import SegmentIds, Seq, SeqStep

ACTIVATIONS = {
    "gelu": gelu,  # exact (erf) GELU, as the model's ChannelMLP
    "relu": jax.nn.relu,
    "squared_relu": lambda h: jax.nn.relu(h) ** 2,  # the Mamba-2-Hybrid 8B MLPs (Megatron's default there)
}


@register("mlp")
class PositionwiseMLP(Mixer):
    """``W_2 act(W_1 x + b_1) + b_2`` at every position (a hybrid pattern's MLP layer).

    Attributes:
      d_model: width ``d``; None takes it from the parameters.
      dtype: compute dtype (parameters float32).
      impl: must be ``"auto"`` (no op).
      sequence_axis: mesh axis of the length split (nothing to exchange).
      causal: whether the model runs causally; the output never looks at
        other positions either way, but a causal layer has ``step``.
      mlp_ratio: hidden width ``H = round(mlp_ratio · d)``; the 8B hybrid
        uses 4 (ffn 16,384 at d = 4,096).
      activation: ``gelu`` (exact), ``relu`` or ``squared_relu``.
    """

    causality = "either"
    sequence_parallel = True
    resettable = True  # nothing to restart
    width_param = (("wo", "kernel"), -1)

    causal: bool = True
    mlp_ratio: float = 4.0
    activation: str = "gelu"

    def check_fields(self):
        check_number(self.mixer_name, "mlp_ratio", self.mlp_ratio, low=0.0, open_low=True)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"{self.mixer_name}.activation={self.activation!r} is not allowed; "
                              f"allowed: {', '.join(ACTIVATIONS)}")

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        hidden = max(1, int(round(self.mlp_ratio * d)))
        return {
            "wi": dense(hidden, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="wi"),
            "wo": dense(d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="wo"),
        }

    def _mlp(self, p, x):
        h = ACTIVATIONS[self.activation](p["wi"](x.astype(self.dtype)))
        return p["wo"](h).astype(self.dtype)

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        del segment_ids  # position-wise: packed sequences cannot see each other
        return Projection(tokens=(self._mlp(p, x),))

    def mix(self, axis, y):
        """The identity: an MLP layer mixes no positions."""
        del axis
        return y

    def output(self, p, y, proj: Projection) -> Seq:
        return y

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{}``: the layer keeps no state."""
        return {}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        return self._mlp(p, x_t), cache


__all__ = ["PositionwiseMLP", "ACTIVATIONS"]
