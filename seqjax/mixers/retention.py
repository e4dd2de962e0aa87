"""Decayed linear attention with a gated, normalised output: RetNet and GLA.

Both keep a ``(dk, dv)`` state per head that decays before each update::

    S_t = diag(a_t) S_{t-1} + k_t v_tᵀ,   o_t = S_tᵀ q_t

then normalise each head's output, gate it with ``swish(x W_G)`` and project
back. They differ in the decay ``a_t``:

  * ``retnet`` (Sun et al. 2023, "Retentive Network: A Successor to
    Transformer for Large Language Models"): a fixed scalar per head,
    ``γ_h = 1 − 2^(−5−h)`` (multi-scale retention), with rotary positions.
  * ``gla`` (Yang et al. 2024, "Gated Linear Attention Transformers with
    Hardware-Efficient Training", ICML 2024): a data-dependent decay per key
    channel, ``α_t = sigmoid(x_t W_α1 W_α2 + b_α)^(1/τ)``.

The recurrence is :func:`seqjax.ops.linear_attention` (``log_decay`` of shape
``(h,)`` for RetNet, ``(b, l, h, dk)`` for GLA), the mix of the
:class:`~seqjax.mixers.base.Mixer` base; this module computes the
projections, rotations, decays (the projection) and the norm, gate and
out-projection (the output).
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_divides, check_input, check_int, check_number, dense, positions_in_segment
from seqjax.mixers.registry import register
from seqjax.ops.linear_attention import linear_attention
from seqjax.types import SegmentIds, Seq, SeqStep

HIGHEST = jax.lax.Precision.HIGHEST
# Xavier-uniform gain of the RetNet (torchscale) and GLA (flash-linear-attention)
# code for the q/k/v/gate projections.
SMALL_GAIN = 2**-2.5


# --- pieces --------------------------------------------------------------------------


def retnet_decays(num_heads: int, dtype=jnp.float32) -> jax.Array:
    """RetNet's multi-scale decays ``γ_h = 1 − 2^(−5−h)``, ``h = 0 … num_heads−1``.

    Args:
      num_heads: number of heads.
      dtype: dtype of the result.

    Returns:
      ``(num_heads,)`` decays in ``(0, 1)``, increasing with the head.
    """
    return 1.0 - 2.0 ** (-5.0 - jnp.arange(num_heads, dtype=dtype))


def retnet_log_decays(num_heads: int, dtype=jnp.float32) -> jax.Array:
    """``log γ_h = log1p(−2^(−5−h))`` in ``dtype`` (exact to its precision; ``log`` of a
    rounded ``γ`` would not be)."""
    return jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(num_heads, dtype=dtype))))


def rotary(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding (RoPE) of ``x (b, l, h, dk)`` at integer ``positions (b, l)``.

    Channel pairs ``(2i, 2i+1)`` rotate by ``positions · base^(−2i/dk)`` (the
    interleaved layout of RetNet's ``rotate_every_two``), so that
    ``rot(q, t)·rot(k, s)`` depends on ``t − s`` only.
    """
    dk = x.shape[-1]
    theta = base ** (-jnp.arange(0, dk, 2, dtype=x.dtype) / dk)
    angle = positions.astype(x.dtype)[:, :, None, None] * theta  # (b, l, 1, dk/2)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    even, odd = x[..., 0::2], x[..., 1::2]
    return jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(x.shape)


def head_layer_norm(o: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm of each head's ``(…, h, dv)`` output (GroupNorm with h groups), affine per channel.

    Returns:
      ``(…, h·dv)``: ``(o − mean) / sqrt(var + eps) · scale + bias`` over each head.
    """
    mean = jnp.mean(o, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(o - mean), axis=-1, keepdims=True)
    y = ((o - mean) * jax.lax.rsqrt(var + eps)).reshape(o.shape[:-2] + (-1,))
    return y * scale.astype(o.dtype) + bias.astype(o.dtype)


def _xavier(gain: float):
    return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


# --- shared module ---------------------------------------------------------------------


class _GatedDecayAttention(Mixer):
    """Shared machinery of RetNet and GLA (not registered); subclasses define ``_dims``, ``parts`` and ``_project``.

    ``_project(p, x, positions)`` returns ``(q, k, v, log_decay, gate)``: ``q``
    (scaled), ``k`` ``(…, h, dk)``, ``v`` ``(…, h, dv)``, ``log_decay`` ``(h,)``
    or ``(…, h, dk)``, ``gate`` ``(…, h·dv)``, all in the accumulation dtype.
    The mix is the decayed recurrence alone (linear in ``v``); the per-head
    norm and the gate are the output.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections; the op, decays and
        normalisation run in float32 (float64 for a float64 ``dtype``).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention` (a string, or
        ``{"linear_attention": impl}``).
      sequence_axis: mesh axis that splits the length (the sequence-parallel
        ``linear_attention`` under a context mesh, see
        :func:`seqjax.parallel.sequence_map`); None: never split.
      num_heads: heads.
      norm_eps: epsilon of the per-head normalisation.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
    """

    ops = ("linear_attention",)
    sequence_parallel = True
    values_index = 2  # v in (q, k, v, segment_ids, per-token log decay)
    no_decay_params: ClassVar[tuple[str, ...]] = ()  # every bias and norm parameter is rank 1

    num_heads: int = 4
    norm_eps: float = 1e-5
    chunk_size: int = 64

    uses_positions: ClassVar[bool] = False  # RetNet: rotary positions, and a position counter in the cache

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_heads", self.num_heads)
        check_number(name, "norm_eps", self.norm_eps, low=0, open_low=True)
        check_int(name, "chunk_size", self.chunk_size)
        if self.d_model is not None:
            self._dims(self.d_model)

    def _dims(self, d: int) -> tuple[int, int, int]:
        """``(h, dk, dv)`` for width ``d``; ConfigError for widths the heads do not divide."""
        raise NotImplementedError

    def _project(self, p, x, positions):
        raise NotImplementedError

    def _heads(self, y, width):
        return y.astype(self.acc()).reshape(y.shape[:-1] + (self.num_heads, width))

    # --- the hooks of the Mixer base ----------------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        positions = positions_in_segment(segment_ids, x.shape[0], x.shape[1])
        q, k, v, log_decay, gate = self._project(p, x, positions)
        # A fixed per-head decay (RetNet, (h,)) is shared; GLA's (b, l, h, dk) is per token.
        per_token = log_decay.ndim >= 3
        return Projection(tokens=(q, k, v, segment_ids, log_decay if per_token else None),
                          shared=(None if per_token else log_decay,), rest=gate)

    def mix(self, axis, q, k, v, segment_ids, token_decay, shared_decay):
        decay = shared_decay if token_decay is None else token_decay
        return linear_attention(q, k, v, log_decay=decay, segment_ids=segment_ids, chunk_size=self.chunk_size,
                                impl=self.impl_for("linear_attention"), sequence_axis=axis)[0]

    def output(self, p, y, proj: Projection) -> Seq:
        """Per-head norm, ``swish`` gate (``proj.rest``) and out-projection of ``y (…, h, dv)``."""
        y = head_layer_norm(y.astype(self.acc()), p["norm_scale"], p["norm_bias"], self.norm_eps)
        y = y * jax.nn.silu(proj.rest)
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"S": (b, h, dk, dv) float32}``, plus ``"pos": (b,) int32`` with rotary positions."""
        h, dk, dv = self._dims(d)
        cache = {"S": jnp.zeros((batch_size, h, dk, dv), self.acc())}
        if self.uses_positions:
            cache["pos"] = jnp.zeros((batch_size,), jnp.int32)
        return cache

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # S = diag(a_t) S + k_t v_tᵀ, o = Sᵀ q_t, then norm, gate, out-projection.
        pos = cache["pos"] if self.uses_positions else jnp.zeros((x_t.shape[0],), jnp.int32)
        q, k, v, log_decay, gate = self._project(p, x_t[:, None], pos[:, None])
        decay = jnp.exp(log_decay)
        decay = decay[None, :, None, None] if decay.ndim == 1 else decay[:, 0, :, :, None]
        S = decay * cache["S"] + k[:, 0, :, :, None] * v[:, 0, :, None, :]
        o = jnp.einsum("bhk,bhkv->bhv", q[:, 0], S, precision=HIGHEST)
        new = {"S": S}
        if self.uses_positions:
            new["pos"] = pos + 1
        return self.output(p, o[:, None], Projection(rest=gate))[:, 0], new


@register("retnet")
class RetNet(_GatedDecayAttention):
    """Multi-scale retention (Sun et al. 2023, "Retentive Network"), causal.

    With ``h`` heads, ``dk = d_model / h`` and ``dv = value_factor · d_model / h``
    (the paper's value dimension ``2d``)::

        q, k, v = x W_Q, x W_K, x W_V                   (no biases)
        q_t, k_t = RoPE(q_t, t) · dk^-1/2, RoPE(k_t, t)
        S_t = γ_h S_{t-1} + k_tᵀ v_t,   o_t = q_t S_t   γ_h = 1 − 2^(−5−h)  (fixed)
        y   = GroupNorm_h(o)                            (per-head LayerNorm, affine)
        out = (swish(x W_G) ⊙ y) W_O

    i.e. ``Retention(X) = (Q Kᵀ ⊙ D) V`` with ``D[t, s] = γ^(t−s)`` (``s <= t``).
    Positions use RoPE (``θ_i = rope_base^(−2i/dk)``, interleaved pairs), not
    xPos: xPos's extra per-position scale is a decay that ``γ`` already
    provides, as in the authors' torchscale code; positions restart at each
    packed segment. The paper's retention-score normalisations (dividing
    ``D`` and the scores by row sums) are per-row positive factors that
    GroupNorm removes, so they are left out (they differ only through
    ``norm_eps``). Init as torchscale: Xavier-uniform with gain ``2^-2.5`` for
    ``W_Q, W_K, W_V, W_G``, gain 1 for ``W_O``; norm scale 1, bias 0.

    Mixing matrix (per head, acting on ``v``; the GroupNorm and the gate are
    the output, not part of ``M``): ``M[h, t, s] = γ_h^(t−s) q_t·k_s`` for
    ``s <= t`` in the same segment, else 0 (``q``, ``k`` rotated and ``q``
    scaled): a rank-``dk`` matrix masked by a Toeplitz decay, semiseparable
    with fixed decay.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections (retention in float32).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention`.
      sequence_axis: mesh axis that splits the length; None: never split.
      num_heads: heads; must divide ``d_model``; ``dk`` must be even (RoPE).
      norm_eps: epsilon of the per-head GroupNorm.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
      value_factor: ``dv = value_factor · d_model / h`` (2, the paper's).
      rope_base: RoPE base (10000).
    """

    value_factor: int = 2
    rope_base: float = 10000.0

    uses_positions = True

    def check_fields(self):
        check_int(self.mixer_name, "value_factor", self.value_factor)
        check_number(self.mixer_name, "rope_base", self.rope_base, low=0, open_low=True)
        super().check_fields()

    def _dims(self, d: int) -> tuple[int, int, int]:
        dk = check_divides(self.mixer_name, "num_heads", self.num_heads, d, "d_model")
        if dk % 2:
            raise ConfigError(f"{self.mixer_name}.num_heads={self.num_heads!r} gives the key head dim "
                              f"d_model/num_heads = {dk}; it must be even (RoPE rotates channel pairs)")
        return self.num_heads, dk, self.value_factor * dk

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, dk, dv = self._dims(d)
        small = _xavier(SMALL_GAIN)
        part = nn.with_logical_partitioning
        return {
            "dims": (h, dk, dv),
            "q_proj": dense(h * dk, ("embed", "mlp"), dtype=self.dtype, name="q_proj", kernel_init=small),
            "k_proj": dense(h * dk, ("embed", "mlp"), dtype=self.dtype, name="k_proj", kernel_init=small),
            "v_proj": dense(h * dv, ("embed", "mlp"), dtype=self.dtype, name="v_proj", kernel_init=small),
            "g_proj": dense(h * dv, ("embed", "mlp"), dtype=self.dtype, name="g_proj", kernel_init=small),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj", kernel_init=_xavier(1.0)),
            "norm_scale": self.param("norm_scale", part(nn.initializers.ones_init(), ("mlp",)), (h * dv,)),
            "norm_bias": self.param("norm_bias", part(nn.initializers.zeros_init(), ("mlp",)), (h * dv,)),
        }

    def _project(self, p, x, positions):
        _, dk, dv = p["dims"]
        x = x.astype(self.dtype)
        q = rotary(self._heads(p["q_proj"](x), dk), positions, self.rope_base) * dk**-0.5
        k = rotary(self._heads(p["k_proj"](x), dk), positions, self.rope_base)
        v = self._heads(p["v_proj"](x), dv)
        log_decay = retnet_log_decays(self.num_heads, self.acc())
        gate = p["g_proj"](x).astype(self.acc())
        return q, k, v, log_decay, gate


@register("gla")
class GLA(_GatedDecayAttention):
    """Gated linear attention (Yang et al. 2024, Section 4.4, the GLA Transformer layer), causal.

    With ``h`` heads, key width ``d_k = expand_k · d_model`` (the paper's
    ``d/2``) and value width ``d_v = expand_v · d_model`` (``d``), split into
    heads of ``dk = d_k / h`` and ``dv = d_v / h``::

        q, k, v = x W_Q · dk^-1/2, x W_K, x W_V          (no biases)
        α_t = sigmoid(x_t W_α1 W_α2 + b_α)^(1/τ)         W_α1: d×16, W_α2: 16×d_k, τ = 16
        S_t = diag(α_t) S_{t-1} + k_tᵀ v_t,   o_t = q_t S_t   (per head)
        r_t = swish(x_t W_r + b_r)
        out = (r ⊙ LayerNorm_h(o)) W_O                    (LayerNorm per head, affine)

    ``log α_t = log_sigmoid(·)/τ`` is computed directly (stable, ``<= 0``).
    The ``dk^-1/2`` query scale is the flash-linear-attention code's default.
    Init as that code: Xavier-uniform with gain ``2^-2.5`` for every
    projection, zero biases; norm scale 1, bias 0.

    Mixing matrix (per head, acting on ``v``; the LayerNorm and the gate are
    the output, not part of ``M``): ``M[h, t, s] = Σ_j q_t[j] k_s[j]
    Π_{s<r<=t} α_r[j]`` for ``s <= t`` in the same segment, else 0: a sum of
    ``dk`` rank-one matrices each masked by its own input-dependent
    1-semiseparable decay.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections (decays and the op in float32).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention`.
      sequence_axis: mesh axis that splits the length; None: never split.
      num_heads: heads (4, the paper's); must divide both widths.
      norm_eps: epsilon of the per-head LayerNorm.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
      expand_k: key width over ``d_model`` (0.5).
      expand_v: value width over ``d_model`` (1.0).
      gate_low_rank: rank of ``W_α1 W_α2`` (16).
      gate_temperature: ``τ`` (16).
    """

    expand_k: float = 0.5
    expand_v: float = 1.0
    gate_low_rank: int = 16
    gate_temperature: float = 16.0

    def check_fields(self):
        name = self.mixer_name
        for field in ("expand_k", "expand_v", "gate_temperature"):
            check_number(name, field, getattr(self, field), low=0, open_low=True)
        check_int(name, "gate_low_rank", self.gate_low_rank)
        super().check_fields()

    def _dims(self, d: int) -> tuple[int, int, int]:
        widths = []
        for field in ("expand_k", "expand_v"):
            value = getattr(self, field)
            width = d * value
            if width != int(width) or int(width) < 1 or int(width) % self.num_heads:
                raise ConfigError(f"{self.mixer_name}.{field}={value!r}: {field} · d_model = {width} (d_model={d}) "
                                  f"must be a positive integer multiple of num_heads={self.num_heads}")
            widths.append(int(width) // self.num_heads)
        return self.num_heads, widths[0], widths[1]

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, dk, dv = self._dims(d)
        small = _xavier(SMALL_GAIN)
        part = nn.with_logical_partitioning

        def proj(features, name, bias=False, axes=("embed", "mlp")):
            return dense(features, axes, use_bias=bias, dtype=self.dtype, name=name, kernel_init=small)

        return {
            "dims": (h, dk, dv),
            "q_proj": proj(h * dk, "q_proj"),
            "k_proj": proj(h * dk, "k_proj"),
            "v_proj": proj(h * dv, "v_proj"),
            "alpha_down": proj(self.gate_low_rank, "alpha_down"),
            "alpha_up": proj(h * dk, "alpha_up", bias=True, axes=(None, "mlp")),
            "g_proj": proj(h * dv, "g_proj", bias=True),
            "out_proj": proj(d, "out_proj", axes=("mlp", "embed")),
            "norm_scale": self.param("norm_scale", part(nn.initializers.ones_init(), ("mlp",)), (h * dv,)),
            "norm_bias": self.param("norm_bias", part(nn.initializers.zeros_init(), ("mlp",)), (h * dv,)),
        }

    def log_decay(self, x: Seq) -> Float[Array, "b l h k"]:
        """``log α_t`` per head and key channel, ``(batch, length, heads, dk)`` (all ``< 0``).

        Args:
          x: ``(batch, length, d_model)`` input.

        Returns:
          ``log_sigmoid(x W_α1 W_α2 + b_α) / τ`` in the accumulation dtype.
        """
        check_input(self.mixer_name, x)
        p = self.parts(self.width(x))
        return self._log_decay(p, x.astype(self.dtype))

    def _log_decay(self, p, x):
        logits = p["alpha_up"](p["alpha_down"](x)).astype(self.acc())
        return self._heads(jax.nn.log_sigmoid(logits) / self.gate_temperature, p["dims"][1])

    def _project(self, p, x, positions):
        del positions
        _, dk, dv = p["dims"]
        x = x.astype(self.dtype)
        q = self._heads(p["q_proj"](x), dk) * dk**-0.5
        k = self._heads(p["k_proj"](x), dk)
        v = self._heads(p["v_proj"](x), dv)
        gate = p["g_proj"](x).astype(self.acc())
        return q, k, v, self._log_decay(p, x), gate
