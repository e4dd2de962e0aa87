"""GAM: Gated Associative Memory (Acharya 2025), a convolution plus a learned memory bank.

"Gated Associative Memory: A Parallel O(N) Architecture for Efficient
Sequence Modeling" (2025), Section 3 and the public GAM block. The block's
context path, which replaces self-attention, is two parallel pathways fused
by gates computed from the token itself::

    local_t  = causal depthwise conv of x (K taps, bias)            position-dependent, local
    global_t = softmax_slots(x_t Mᵀ) M                              M: (slots, d), learned
    y_t      = σ(W_l x_t + b_l) ⊙ local_t + σ(W_g x_t + b_g) ⊙ global_t

The memory bank is a parameter, not built from the sequence: each token
reads it on its own, so the global path is per token (``O(L·slots·d)`` time,
linear in ``L``) and the convolution's window is the only state a recurrent
``step`` needs; the step is exact. Packed sequences: the convolution sees
zeros before its segment (:func:`seqjax.mixers.mamba_blocks.short_conv`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_int, dense, param, uniform_init
from seqjax.mixers.mamba_blocks import init_conv_buffer, short_conv, short_conv_step
from seqjax.mixers.registry import register
from seqjax.types import SegmentIds, Seq, SeqStep


def _xavier_uniform(key, shape, dtype=jnp.float32):
    # The GAM code's init of the memory bank: U(±sqrt(6 / (slots + d))).
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


@register("gam")
class GAM(Mixer):
    """The GAM block's context path (Acharya 2025), causal.

    With ``d = d_model``, ``K = d_conv``, ``S = num_slots``::

        local_t  = b + Σ_{k<K} w_k ⊙ x_{t-(K-1)+k}       w: (K, d), one filter per channel
        global_t = Σ_s softmax(x_t Mᵀ)_s M_s             M: (S, d)
        [g_l, g_g] = W_g x_t + b_g                       W_g: d → 2d
        y_t = σ(g_l) ⊙ local_t + σ(g_g) ⊙ global_t

    The residual connection, the LayerNorm before and the feed-forward layer
    after belong to the model's block, not to the mixer.

    Initialisation: ``M`` Xavier-uniform (as the GAM code), the conv weight
    and bias ``U(±1/sqrt(K))`` (PyTorch's default for a depthwise conv), the
    gate LeCun-normal with a zero bias (the house default for projections).

    Mixing matrix (the convolution, acting on ``x``; the gate on it is part of
    the mix, the conv bias and the memory path are added after it)::

        M[c, t, s] = σ(g_l)_t[c] · w[K-1-(t-s), c]     0 <= t-s < K in the same segment, else 0

    Attributes:
      d_model: width ``d``; None takes it from the parameters.
      dtype: compute dtype of the projections; the softmax and the
        convolution accumulate in float32 (float64 for float64).
      impl: must be ``"auto"`` (GAM calls no op with implementations).
      sequence_axis: must be None.
      d_conv: ``K``, taps of the causal convolution (3 in the GAM code).
      num_slots: ``S``, slots of the memory bank (512 in the GAM code).
    """

    values_index = 0  # x, the convolution's input
    resettable = True  # the conv window restarts from zeros, as at a segment start
    width_param = (("memory",), 1)

    d_conv: int = 3
    num_slots: int = 512

    def check_fields(self):
        check_int(self.mixer_name, "d_conv", self.d_conv)
        check_int(self.mixer_name, "num_slots", self.num_slots)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        bound = 1.0 / math.sqrt(self.d_conv)
        return {
            "conv_weight": param(self, "conv_weight", uniform_init(bound), (self.d_conv, d), (None, "embed")),
            "conv_bias": param(self, "conv_bias", uniform_init(bound), (d,), ("embed",)),
            "memory": param(self, "memory", _xavier_uniform, (self.num_slots, d), (None, "embed")),
            "gate": dense(2 * d, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="gate"),
        }

    def _gates_and_global(self, p, x):
        """``(σ(g_l), σ(g_g), global)`` of tokens ``x (..., d)``, in the accumulation dtype."""
        acc = self.acc()
        g_l, g_g = jnp.split(p["gate"](x).astype(acc), 2, axis=-1)
        bank = p["memory"].astype(self.dtype)
        scores = jnp.einsum("...d,sd->...s", x, bank, preferred_element_type=acc)
        weights = jax.nn.softmax(scores, axis=-1)  # over the slots: per token, no sequence axis
        glob = jnp.einsum("...s,sd->...d", weights.astype(self.dtype), bank, preferred_element_type=acc)
        return jax.nn.sigmoid(g_l), jax.nn.sigmoid(g_g), glob

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        x = x.astype(self.dtype)
        gate_l, gate_g, glob = self._gates_and_global(p, x)
        return Projection(tokens=(x, gate_l, segment_ids), shared=(p["conv_weight"],), rest=(gate_l, gate_g, glob))

    def mix(self, axis, x, gate_l, segment_ids, weight):
        """``σ(g_l) ⊙ conv(x)`` without the conv bias (linear in ``x``: the mixing matrix)."""
        del axis  # never split (no sequence_parallel)
        return gate_l * short_conv(x, weight.astype(self.acc()), None, segment_ids=segment_ids)

    def output(self, p, y, proj: Projection) -> Seq:
        gate_l, gate_g, glob = proj.rest
        y = y + gate_l * p["conv_bias"].astype(self.acc()) + gate_g * glob
        return y.astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"conv": (batch, d_conv - 1, d)}``: the last inputs, zeros before the sequence."""
        return {"conv": init_conv_buffer(batch_size, self.d_conv, d, self.dtype)}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # The convolution from the rolling window; the memory path needs no state.
        x_t = x_t.astype(self.dtype)
        gate_l, gate_g, glob = self._gates_and_global(p, x_t)
        local, conv = short_conv_step(x_t, cache["conv"], p["conv_weight"].astype(self.acc()))
        return self.output(p, gate_l * local, Projection(rest=(gate_l, gate_g, glob))), {"conv": conv}


__all__ = ["GAM"]
