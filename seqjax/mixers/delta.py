"""Linear attention with the delta rule: DeltaNet and Gated DeltaNet.

Both keep a ``(dk, dv)`` state per head that, at each step, replaces what it
recalls at key ``k_t`` by the value ``v_t`` at rate ``beta_t`` (one step of
online regression of values on keys)::

    S_t = a_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,   o_t = S_tᵀ q_t

(the papers write the transpose, ``S_t = a_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t
v_t k_tᵀ``, ``o_t = S_t q_t``):

  * ``deltanet`` (Yang, Wang, Zhang, Shen and Kim 2024, "Parallelizing Linear
    Transformers with the Delta Rule over Sequence Length", NeurIPS 2024;
    the rule from Schlag et al. 2021): ``a_t = 1``.
  * ``gated_deltanet`` (Yang, Kautz and Hatamizadeh 2024, "Gated Delta
    Networks: Improving Mamba2 with Delta Rule", ICLR 2025): a data-dependent
    scalar gate per head, ``log a_t = −exp(A_log) · softplus(x_t W_a +
    dt_bias)`` (Mamba-2's parameterisation).

Around the rule, as in the papers' layers (and their flash-linear-attention
code): q, k, v projections, a causal depthwise short convolution (4 taps, no
bias) and SiLU on each, L2-normalised q and k (the recurrence is then a
contraction for ``β ∈ (0, 1)``), ``β_t = sigmoid(x_t W_β)`` per head, the
query scaled by ``dk^−1/2``, a per-head RMSNorm of the output (Gated DeltaNet:
``RMSNorm(o) ⊙ silu(x W_g)``, the output gate), and the output projection.

The recurrence is :func:`seqjax.ops.delta_rule` (the mix); the mix is linear in
the post-conv values ``v`` for fixed q, k, β and gates, so the base class
reads the mixing matrix off it (per head; every value channel of a head sees
the same matrix).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import (
    check_divides, check_int, check_number, dense, head_rms_norm, l2_normalize, param, uniform_init)
from seqjax.mixers.mamba_blocks import (
    a_log_init, check_a_range, check_dt_range, dt_bias_init, init_conv_buffer, short_conv, short_conv_step)
from seqjax.mixers.registry import register
from seqjax.ops.delta_rule import delta_rule
from seqjax.types import SegmentIds, Seq, SeqStep

HIGHEST = jax.lax.Precision.HIGHEST
class _DeltaBase(Mixer):
    """What DeltaNet and Gated DeltaNet share (not registered).

    Subclasses define ``_dims(d) -> (h, dk, dv)``, ``parts`` (calling
    :meth:`_common_parts`), ``_log_decay(p, x)`` and ``_gate(p, x, o)``.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of projections and the convolution; the op, the
        norms and the gates run in float32 (float64 for a float64 ``dtype``).
      impl: ``impl`` of :func:`seqjax.ops.delta_rule` (a string, or
        ``{"delta_rule": impl}``).
      sequence_axis: mesh axis that splits the length (the op's
        sequence-parallel form, :func:`seqjax.ops.delta_rule_sp.delta_rule_sp`).
      num_heads: heads ``h``.
      d_conv: taps of the short convolution (4).
      norm_eps: epsilon of the per-head output RMSNorm.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.delta_rule`.
    """

    ops = ("delta_rule",)
    sequence_parallel = True
    values_index = 2  # v in (q, k, v, beta, log_decay, segment_ids)

    num_heads: int = 4
    d_conv: int = 4
    norm_eps: float = 1e-5
    chunk_size: int = 64

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_heads", self.num_heads)
        check_int(name, "d_conv", self.d_conv)
        check_number(name, "norm_eps", self.norm_eps, low=0, open_low=True)
        check_int(name, "chunk_size", self.chunk_size)
        if self.d_model is not None:
            self._dims(self.d_model)

    def _dims(self, d: int) -> tuple[int, int, int]:
        raise NotImplementedError

    def _common_parts(self, d: int) -> dict[str, Any]:
        """q/k/v/β projections, the conv over the concatenated q|k|v channels, the norm and out-projection."""
        h, dk, dv = self._dims(d)
        conv_dim = h * (2 * dk + dv)
        # PyTorch's default conv init: U(±1/sqrt(fan_in)), fan_in = taps for a depthwise conv.
        bound = 1.0 / math.sqrt(self.d_conv)
        parts = {name: dense(n, ("embed", "mlp"), dtype=self.dtype, name=name)
                 for name, n in (("q_proj", h * dk), ("k_proj", h * dk), ("v_proj", h * dv))}
        parts["b_proj"] = dense(h, ("embed", "heads"), dtype=self.dtype, name="b_proj")
        parts["conv_weight"] = param(self, "conv_weight", uniform_init(bound), (self.d_conv, conv_dim), (None, "mlp"))
        parts["norm"] = param(self, "norm", nn.initializers.ones_init(), (dv,), (None,))
        parts["out_proj"] = dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj")
        parts["dims"] = (h, dk, dv)
        return parts

    def _log_decay(self, p, x):
        """``(…, h)`` log gate in the accumulation dtype, or None (DeltaNet)."""
        return None

    def _gate(self, p, x, o):
        """The normalised output ``o`` ``(…, h, dv)`` after the output gate (DeltaNet: none)."""
        return o

    def _pre_conv(self, p, x):
        """q|k|v projections ``(…, h·(2dk + dv))`` in ``dtype``."""
        x = x.astype(self.dtype)
        return jnp.concatenate([p[n](x) for n in ("q_proj", "k_proj", "v_proj")], axis=-1)

    def _post_conv(self, p, qkv, x):
        """``(q, k, v, β, log a)`` from the conv output and the input, in the accumulation dtype."""
        h, dk, dv = p["dims"]
        acc = self.acc()
        qkv = jax.nn.silu(qkv.astype(self.dtype)).astype(acc)
        q, k, v = jnp.split(qkv, [h * dk, 2 * h * dk], axis=-1)
        lead = q.shape[:-1]
        q = l2_normalize(q.reshape(lead + (h, dk))) * dk**-0.5
        k = l2_normalize(k.reshape(lead + (h, dk)))
        beta = jax.nn.sigmoid(p["b_proj"](x.astype(self.dtype)).astype(acc))
        return q, k, v.reshape(lead + (h, dv)), beta, self._log_decay(p, x)

    # --- the hooks of the Mixer base ----------------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        qkv = short_conv(self._pre_conv(p, x), p["conv_weight"], segment_ids=segment_ids)
        q, k, v, beta, log_decay = self._post_conv(p, qkv, x)
        return Projection(tokens=(q, k, v, beta, log_decay, segment_ids), rest=x)

    def mix(self, axis, q, k, v, beta, log_decay, segment_ids):
        return delta_rule(q, k, v, beta, log_decay=log_decay, segment_ids=segment_ids,
                          chunk_size=self.chunk_size, impl=self.impl_for("delta_rule"), sequence_axis=axis)[0]

    def output(self, p, y, proj: Projection) -> Seq:
        """Per-head RMSNorm, the gate (Gated DeltaNet) and the out-projection of ``y (…, h, dv)``."""
        y = self._gate(p, proj.rest, head_rms_norm(y.astype(self.acc()), p["norm"], self.norm_eps))
        return p["out_proj"](y.reshape(y.shape[:-2] + (-1,)).astype(self.dtype)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"conv": (b, d_conv−1, h·(2dk+dv)) in dtype, "S": (b, h, dk, dv) float32}``."""
        h, dk, dv = self._dims(d)
        return {
            "conv": init_conv_buffer(batch_size, self.d_conv, h * (2 * dk + dv), self.dtype),
            "S": jnp.zeros((batch_size, h, dk, dv), self.acc()),
        }

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # S = a S; u = β (v − Sᵀk); S += k uᵀ; o = Sᵀ q; then norm, gate, out-projection.
        qkv, conv = short_conv_step(self._pre_conv(p, x_t), cache["conv"], p["conv_weight"])
        q, k, v, beta, log_decay = self._post_conv(p, qkv, x_t)
        S = cache["S"]
        if log_decay is not None:
            S = jnp.exp(log_decay)[..., None, None] * S
        u = beta[..., None] * (v - jnp.einsum("bhk,bhkv->bhv", k, S, precision=HIGHEST))
        S = S + k[..., :, None] * u[..., None, :]
        o = jnp.einsum("bhk,bhkv->bhv", q, S, precision=HIGHEST)
        return self.output(p, o, Projection(rest=x_t)), {"conv": conv, "S": S}


@register("deltanet")
class DeltaNet(_DeltaBase):
    """DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule"), causal.

    Per head (``dk = dv = d_model / h``; the code's ``expand_k = expand_v =
    1``), with ``conv`` the causal depthwise short convolution (no bias)::

        q, k, v = silu(conv(x W_Q)), silu(conv(x W_K)), silu(conv(x W_V))
        q, k    = q / |q| · dk^−1/2, k / |k|,     β = sigmoid(x W_β)    (per head)
        S_t     = S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,   o_t = S_t q_t   (papers' orientation)
        out     = concat_h(RMSNorm(o_t) ⊙ w) W_O

    No biases; the RMSNorm weight ``(dv,)`` is shared by the heads (the code's
    ``RMSNorm(head_v_dim)``). Mixing matrix (per head, acting on the post-conv
    ``v``): ``M[h, t, s] = q_tᵀ (Π_{s<r≤t} (I − β_r k_r k_rᵀ)) β_s k_s`` (the
    product ordered left to right from ``t`` down to ``s+1``, the op's
    ``(dk, dv)`` orientation), lower triangular.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections and the convolution (the op in float32).
      impl: ``impl`` of :func:`seqjax.ops.delta_rule`.
      sequence_axis: mesh axis that splits the length (``delta_rule_sp``).
      num_heads: heads; must divide ``d_model``.
      d_conv: taps of the short convolution (4).
      norm_eps: epsilon of the output RMSNorm.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.delta_rule`.
    """

    def _dims(self, d: int) -> tuple[int, int, int]:
        dk = check_divides(self.mixer_name, "num_heads", self.num_heads, d, "d_model")
        return self.num_heads, dk, dk

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        return self._common_parts(d)


@register("gated_deltanet")
class GatedDeltaNet(_DeltaBase):
    """Gated DeltaNet (Yang, Kautz and Hatamizadeh 2024, "Gated Delta Networks"), causal.

    Per head, with ``dk = head_dim`` (None: ``d_model / h``) and ``dv =
    expand_v · dk`` (the paper's layer: ``expand_v = 2``)::

        q, k, v = silu(conv(x W_Q)), silu(conv(x W_K)), silu(conv(x W_V))
        q, k    = q / |q| · dk^−1/2, k / |k|,      β = sigmoid(x W_β)        (per head)
        log α_t = −exp(A_log) · softplus(x W_a + dt_bias)                     (per head)
        S_t     = α_t S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,   o_t = S_t q_t
        out     = concat_h(RMSNorm(o_t) ⊙ w ⊙ silu(x W_g)_h) W_O

    Initialisation (Mamba-2's, as the paper's code): ``A = exp(A_log) ~
    U[A_init_range]`` per head, ``softplus(dt_bias)`` log-uniform on ``[dt_min,
    dt_max]``; no biases in the projections; the RMSNorm weight ``(dv,)`` is
    shared by the heads. Mixing matrix (per head, on the post-conv ``v``):
    ``M[h, t, s] = (Π_{s<r≤t} α_r) q_tᵀ (Π_{s<r≤t} (I − β_r k_r k_rᵀ)) β_s k_s``.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections and the convolution (the op in float32).
      impl: ``impl`` of :func:`seqjax.ops.delta_rule`.
      sequence_axis: mesh axis that splits the length (``delta_rule_sp``).
      num_heads: heads.
      head_dim: ``dk``; None: ``d_model / num_heads`` (then ``num_heads`` must divide it).
      expand_v: ``dv = expand_v · dk`` (2).
      d_conv: taps of the short convolution (4).
      A_init_range: the ``U[low, high]`` of ``exp(A_log)``.
      dt_min: smallest initial ``softplus(dt_bias)``.
      dt_max: largest initial ``softplus(dt_bias)``.
      dt_init_floor: lower clamp of the initial ``softplus(dt_bias)``.
      norm_eps: epsilon of the output RMSNorm.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.delta_rule`.
    """

    ssm_params = ("A_log", "dt_bias")

    head_dim: int | None = None
    expand_v: int = 2
    A_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "head_dim", self.head_dim, optional=True)
        check_int(name, "expand_v", self.expand_v)
        check_a_range(name, self.A_init_range)
        check_dt_range(name, self.dt_min, self.dt_max, self.dt_init_floor)
        super().check_fields()

    def _dims(self, d: int) -> tuple[int, int, int]:
        if self.head_dim is None:
            dk = check_divides(self.mixer_name, "num_heads", self.num_heads, d, "d_model (or set head_dim)")
        else:
            dk = self.head_dim
        return self.num_heads, dk, self.expand_v * dk

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, _, dv = self._dims(d)
        parts = self._common_parts(d)
        parts["a_proj"] = dense(h, ("embed", "heads"), dtype=self.dtype, name="a_proj")
        parts["g_proj"] = dense(h * dv, ("embed", "mlp"), dtype=self.dtype, name="g_proj")
        dt_init = dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor)
        parts["dt_bias"] = param(self, "dt_bias", dt_init, (h,), ("heads",))
        parts["A_log"] = param(self, "A_log", a_log_init(*self.A_init_range), (h,), ("heads",))
        return parts

    def _log_decay(self, p, x):
        acc = self.acc()
        a = p["a_proj"](x.astype(self.dtype)).astype(acc) + p["dt_bias"].astype(acc)
        return -jnp.exp(p["A_log"].astype(acc)) * jax.nn.softplus(a)

    def _gate(self, p, x, o):
        h, _, dv = p["dims"]
        g = p["g_proj"](x.astype(self.dtype)).astype(o.dtype)
        return o * jax.nn.silu(g.reshape(g.shape[:-1] + (h, dv)))
