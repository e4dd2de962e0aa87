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
``(h,)`` for RetNet, ``(b, l, h, dk)`` for GLA); this module computes the
projections, rotations, decays and the output path.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from seqjax.mixers.common import dense
from seqjax.mixers.common import same_segment
from seqjax.mixers._unconverted import check_seq, model_width
from seqjax.mixers.registry import register
from seqjax.ops.common import accum_dtype
from seqjax.ops import dispatch
from seqjax.ops.linear_attention import linear_attention
from seqjax.parallel.sequence import sequence_map
from seqjax.types import SegmentIds, Seq, SeqStep

Cache = dict[str, jax.Array]
HeadMatrix = Float[Array, "b h l l"]
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


def segment_positions(segment_ids: SegmentIds | None, batch: int, length: int) -> jax.Array:
    """Position of each token within its packed sequence, ``(b, l)`` int32.

    Restarting at each segment keeps packed rows identical to separate runs
    (rotary scores depend only on ``t − s`` in exact arithmetic; restarting
    also keeps the angles, and their rounding, the same).
    """
    idx = jnp.arange(length, dtype=jnp.int32)
    if segment_ids is None or length == 1:
        return jnp.broadcast_to(idx, (batch, length))
    first = jnp.ones((batch, 1), bool)
    start = jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return idx - jax.lax.cummax(jnp.where(start, idx, 0), axis=1)


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


def pairwise_sums(a: jax.Array, segment_ids: SegmentIds | None = None) -> tuple[jax.Array, jax.Array]:
    """``S[..., t, s] = Σ_{s<r≤t} a[..., r]`` and where it applies (``s <= t``, same segment)."""
    length = a.shape[-1]
    idx = jnp.arange(length)
    S = jnp.cumsum(jnp.where(idx[:, None] > idx[None, :], a[..., :, None], 0), axis=-2)
    keep = (idx[:, None] >= idx[None, :]) & same_segment(segment_ids, a.shape[0], length)
    return S, keep.reshape((a.shape[0],) + (1,) * (a.ndim - 2) + (length, length))


def masked_exp(exponent: jax.Array, keep: jax.Array) -> jax.Array:
    """``exp(exponent)`` where ``keep``, exactly 0 elsewhere (no ``exp`` of junk)."""
    return jnp.exp(jnp.where(keep, exponent, -jnp.inf))


def _xavier(gain: float):
    return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


# --- shared module ---------------------------------------------------------------------


class _GatedDecayAttention(nn.Module):
    """Shared machinery; subclasses define ``_dims``, ``_parts`` and ``_project``.

    ``_project(p, x, positions)`` returns ``(q, k, v, log_decay, gate)``: ``q``
    (scaled), ``k`` ``(…, h, dk)``, ``v`` ``(…, h, dv)``, ``log_decay`` ``(h,)``
    or ``(…, h, dk)``, ``gate`` ``(…, h·dv)``, all in the accumulation dtype.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      num_heads: heads.
      norm_eps: epsilon of the per-head normalisation.
      dtype: compute dtype of the projections; the op, decays and
        normalisation run in float32 (float64 for a float64 ``dtype``).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention`.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
      sequence_axis: mesh axis that splits the length (the sequence-parallel
        ``linear_attention`` under a context mesh, see
        :func:`seqjax.parallel.sequence_map`); None: never split.
    """

    d_model: int | None = None
    num_heads: int = 4
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    impl: str = "auto"
    chunk_size: int = 64
    sequence_axis: str | None = None

    mixer_name: ClassVar[str] = "decayed linear attention"
    uses_positions: ClassVar[bool] = False

    def _check_common(self, d: int, widths: dict[str, int]) -> None:
        name = self.mixer_name
        if not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise ValueError(f"{name}: num_heads must be a positive int, got {self.num_heads!r}")
        for what, width in widths.items():
            if width < 1 or width % self.num_heads:
                raise ValueError(f"{name}: {what}={width} (d_model={d}) must be a positive multiple of num_heads={self.num_heads}")
        if not self.norm_eps > 0:
            raise ValueError(f"{name}: norm_eps must be > 0, got {self.norm_eps!r}")
        dispatch.check("linear_attention", self.impl)

    def _acc(self):
        return accum_dtype(self.dtype)

    def _heads(self, y, width):
        return y.astype(self._acc()).reshape(y.shape[:-1] + (self.num_heads, width))

    def _out(self, p, o, gate):
        """Per-head norm, ``swish`` gate and out-projection of ``o (…, h, dv)``."""
        y = head_layer_norm(o.astype(self._acc()), p["norm_scale"], p["norm_bias"], self.norm_eps)
        y = y * jax.nn.silu(gate)
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)

    def _prepare(self, x, segment_ids):
        check_seq(self.mixer_name, x, segment_ids)
        p = self._parts(model_width(self, x))
        positions = segment_positions(segment_ids, x.shape[0], x.shape[1])
        return p, self._project(p, x, positions)

    # --- public API -----------------------------------------------------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """Runs the mixer over a sequence (causal).

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids of packed sequences.
          deterministic: unused (no dropout).

        Returns:
          ``(batch, length, d_model)`` output in ``dtype``.
        """
        del deterministic
        p, (q, k, v, log_decay, gate) = self._prepare(x, segment_ids)
        # A fixed per-head decay (RetNet, (h,)) is shared; GLA's (b, l, h, dk) is per token.
        per_token = log_decay is not None and log_decay.ndim >= 3

        def core(axis, q, k, v, segments, token_decay, shared_decay):
            decay = token_decay if per_token else shared_decay
            return linear_attention(q, k, v, log_decay=decay, segment_ids=segments, chunk_size=self.chunk_size,
                                    impl=self.impl, sequence_axis=axis)[0]

        o = sequence_map(core, self.sequence_axis, (q, k, v, segment_ids, log_decay if per_token else None),
                         (None if per_token else log_decay,), what=self.mixer_name)
        return self._out(p, o, gate)

    def init_cache(self, batch_size: int, max_length: int | None = None) -> Cache:
        """Zero state ``S`` per head (and, with rotary positions, the position counter).

        Args:
          batch_size: number of sequences.
          max_length: unused (the state does not grow).

        Returns:
          ``{"S": (b, h, dk, dv) float32}``, plus ``"pos": (b,) int32`` for RetNet.
        """
        del max_length
        h, dk, dv = self._dims(model_width(self))
        cache = {"S": jnp.zeros((batch_size, h, dk, dv), self._acc())}
        if self.uses_positions:
            cache["pos"] = jnp.zeros((batch_size,), jnp.int32)
        return cache

    def step(self, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One position: ``S = diag(a_t) S + k_t v_tᵀ``, ``o = Sᵀ q_t``, norm, gate, out-projection.

        Args:
          x_t: ``(batch, d_model)`` input.
          cache: from :meth:`init_cache` or a previous step.

        Returns:
          ``(y_t, cache)``: ``(batch, d_model)`` output in ``dtype`` and the new cache.
        """
        if x_t.ndim != 2:
            raise ValueError(f"{self.mixer_name}.step: x_t must have shape (batch, d_model), got {x_t.shape}")
        keys = {"S", "pos"} if self.uses_positions else {"S"}
        if not isinstance(cache, dict) or set(cache) != keys:
            raise ValueError(f"{self.mixer_name}.step: cache must be a dict with keys {', '.join(sorted(keys))} (init_cache)")
        p = self._parts(model_width(self, x_t))
        batch = x_t.shape[0]
        pos = cache["pos"] if self.uses_positions else jnp.zeros((batch,), jnp.int32)
        q, k, v, log_decay, gate = self._project(p, x_t[:, None], pos[:, None])
        decay = jnp.exp(log_decay)
        decay = decay[None, :, None, None] if decay.ndim == 1 else decay[:, 0, :, :, None]
        S = decay * cache["S"] + k[:, 0, :, :, None] * v[:, 0, :, None, :]
        o = jnp.einsum("bhk,bhkv->bhv", q[:, 0], S, precision=HIGHEST)
        new = {"S": S}
        if self.uses_positions:
            new["pos"] = pos + 1
        return self._out(p, o[:, None], gate)[:, 0], new

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> HeadMatrix:
        """The decayed attention matrix per head, materialised.

        ``M[b, h, t, s] = Σ_j q_t[j] k_s[j] Π_{s<r<=t} a_r[j]`` for ``s <= t`` in
        the same segment, else 0 (RetNet: ``γ_h^(t−s) q_t·k_s``).

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          ``(batch, heads, length, length)`` in the accumulation dtype.
        """
        _, (q, k, _, log_decay, _) = self._prepare(x, segment_ids)
        batch, length, heads, _ = q.shape
        if log_decay.ndim == 1:
            a = jnp.broadcast_to(log_decay[None, :, None], (batch, heads, length))
            S, keep = pairwise_sums(a, segment_ids)  # (b, h, l, l)
            return jnp.einsum("bthk,bshk->bhts", q, k, precision=HIGHEST) * masked_exp(S, keep)
        S, keep = pairwise_sums(jnp.transpose(log_decay, (0, 2, 3, 1)), segment_ids)  # (b, h, dk, l, l)
        return jnp.einsum("bthk,bshk,bhkts->bhts", q, k, masked_exp(S, keep), precision=HIGHEST)

    def apply_mixing_matrix(self, x: Seq, M: HeadMatrix, *, segment_ids: SegmentIds | None = None) -> Seq:
        """The mixer with dense per-head matrices ``M`` instead of the op: ``o = M v``, then norm, gate, out.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: ``(batch, heads, length, length)``, e.g. from :meth:`mixing_matrix`.
          segment_ids: optional ``(batch, length)`` ids (they only reset the
            rotary positions; ``M`` already holds the mixing).

        Returns:
          ``(batch, length, d_model)`` output in ``dtype``.
        """
        p, (_, _, v, _, gate) = self._prepare(x, segment_ids)
        expected = (x.shape[0], self.num_heads, x.shape[1], x.shape[1])
        if M.shape != expected:
            raise ValueError(f"{self.mixer_name}: M must have shape (b, heads, l, l) = {expected}, got {M.shape}")
        o = jnp.einsum("bhts,bshv->bthv", M.astype(v.dtype), v, precision=HIGHEST)
        return self._out(p, o, gate)

    def state_size(self, length: int | None = None) -> int:
        """Bytes of inference state per sequence: ``h·dk·dv`` floats (+ an int32 position for RetNet).

        Args:
          length: unused (the state does not grow with the sequence).

        Returns:
          ``h·dk·dv·itemsize(float32)`` (+ 4).
        """
        del length
        h, dk, dv = self._dims(model_width(self))
        return h * dk * dv * jnp.dtype(self._acc()).itemsize + (4 if self.uses_positions else 0)


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

    Mixing matrix: ``M[h, t, s] = γ_h^(t−s) q_t·k_s`` (``s <= t``): a rank-``dk``
    matrix masked by a Toeplitz decay, semiseparable with fixed decay.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      num_heads: heads; must divide ``d_model``; ``dk`` must be even (RoPE).
      value_factor: ``dv = value_factor · d_model / h`` (2, the paper's).
      rope_base: RoPE base (10000).
      norm_eps: epsilon of the per-head GroupNorm.
      dtype: compute dtype of the projections (retention in float32).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention`.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
    """

    value_factor: int = 2
    rope_base: float = 10000.0

    mixer_name: ClassVar[str] = "retnet"
    uses_positions: ClassVar[bool] = True

    def _dims(self, d: int) -> tuple[int, int, int]:
        if not isinstance(self.value_factor, int) or self.value_factor < 1:
            raise ValueError(f"retnet: value_factor must be a positive int, got {self.value_factor!r}")
        self._check_common(d, {"d_model": d})
        dk = d // self.num_heads
        if dk % 2:
            raise ValueError(f"retnet: the key head dim d_model/num_heads = {dk} must be even for RoPE")
        return self.num_heads, dk, self.value_factor * dk

    @nn.compact
    def _parts(self, d: int) -> dict[str, Any]:
        h, dk, dv = self._dims(d)
        small = _xavier(SMALL_GAIN)
        part = nn.with_logical_partitioning
        return {
            "q_proj": dense(h * dk, ("embed", "mlp"), dtype=self.dtype, name="q_proj", kernel_init=small),
            "k_proj": dense(h * dk, ("embed", "mlp"), dtype=self.dtype, name="k_proj", kernel_init=small),
            "v_proj": dense(h * dv, ("embed", "mlp"), dtype=self.dtype, name="v_proj", kernel_init=small),
            "g_proj": dense(h * dv, ("embed", "mlp"), dtype=self.dtype, name="g_proj", kernel_init=small),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj", kernel_init=_xavier(1.0)),
            "norm_scale": self.param("norm_scale", part(nn.initializers.ones_init(), ("mlp",)), (h * dv,)),
            "norm_bias": self.param("norm_bias", part(nn.initializers.zeros_init(), ("mlp",)), (h * dv,)),
        }

    def _project(self, p, x, positions):
        _, dk, dv = self._dims(p["out_proj"].features)
        x = x.astype(self.dtype)
        q = rotary(self._heads(p["q_proj"](x), dk), positions, self.rope_base) * dk**-0.5
        k = rotary(self._heads(p["k_proj"](x), dk), positions, self.rope_base)
        v = self._heads(p["v_proj"](x), dv)
        log_decay = retnet_log_decays(self.num_heads, self._acc())
        gate = p["g_proj"](x).astype(self._acc())
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

    Mixing matrix: ``M[h, t, s] = Σ_j q_t[j] k_s[j] Π_{s<r<=t} α_r[j]``
    (``s <= t``): a sum of ``dk`` rank-one matrices each masked by its own
    input-dependent 1-semiseparable decay.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      num_heads: heads (4, the paper's); must divide both widths.
      expand_k: key width over ``d_model`` (0.5).
      expand_v: value width over ``d_model`` (1.0).
      gate_low_rank: rank of ``W_α1 W_α2`` (16).
      gate_temperature: ``τ`` (16).
      norm_eps: epsilon of the per-head LayerNorm.
      dtype: compute dtype of the projections (decays and the op in float32).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention`.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
    """

    expand_k: float = 0.5
    expand_v: float = 1.0
    gate_low_rank: int = 16
    gate_temperature: float = 16.0

    mixer_name: ClassVar[str] = "gla"

    def _widths(self, d: int) -> tuple[int, int]:
        key_width, value_width = d * self.expand_k, d * self.expand_v
        for what, w in (("expand_k", key_width), ("expand_v", value_width)):
            if w != int(w):
                raise ValueError(f"gla: {what} · d_model = {w} must be an integer")
        return int(key_width), int(value_width)

    def _dims(self, d: int) -> tuple[int, int, int]:
        if not isinstance(self.gate_low_rank, int) or self.gate_low_rank < 1:
            raise ValueError(f"gla: gate_low_rank must be a positive int, got {self.gate_low_rank!r}")
        if not self.gate_temperature > 0:
            raise ValueError(f"gla: gate_temperature must be > 0, got {self.gate_temperature!r}")
        key_width, value_width = self._widths(d)
        self._check_common(d, {"expand_k · d_model": key_width, "expand_v · d_model": value_width})
        return self.num_heads, key_width // self.num_heads, value_width // self.num_heads

    @nn.compact
    def _parts(self, d: int) -> dict[str, Any]:
        key_width, value_width = self._widths(d)
        self._dims(d)
        small = _xavier(SMALL_GAIN)
        part = nn.with_logical_partitioning

        def proj(features, name, bias=False, axes=("embed", "mlp")):
            return dense(features, axes, use_bias=bias, dtype=self.dtype, name=name, kernel_init=small)

        return {
            "q_proj": proj(key_width, "q_proj"),
            "k_proj": proj(key_width, "k_proj"),
            "v_proj": proj(value_width, "v_proj"),
            "alpha_down": proj(self.gate_low_rank, "alpha_down"),
            "alpha_up": proj(key_width, "alpha_up", bias=True, axes=(None, "mlp")),
            "g_proj": proj(value_width, "g_proj", bias=True),
            "out_proj": proj(d, "out_proj", axes=("mlp", "embed")),
            "norm_scale": self.param("norm_scale", part(nn.initializers.ones_init(), ("mlp",)), (value_width,)),
            "norm_bias": self.param("norm_bias", part(nn.initializers.zeros_init(), ("mlp",)), (value_width,)),
        }

    def log_decay(self, x: Seq) -> Float[Array, "b l h k"]:
        """``log α_t`` per head and key channel, ``(batch, length, heads, dk)`` (all ``< 0``).

        Args:
          x: ``(batch, length, d_model)`` input.

        Returns:
          ``log_sigmoid(x W_α1 W_α2 + b_α) / τ`` in the accumulation dtype.
        """
        check_seq("gla", x, None)
        p = self._parts(model_width(self, x))
        return self._log_decay(p, x.astype(self.dtype))

    def _log_decay(self, p, x):
        _, dk, _ = self._dims(p["out_proj"].features)
        logits = p["alpha_up"](p["alpha_down"](x)).astype(self._acc())
        return self._heads(jax.nn.log_sigmoid(logits) / self.gate_temperature, dk)

    def _project(self, p, x, positions):
        del positions
        _, dk, dv = self._dims(p["out_proj"].features)
        x = x.astype(self.dtype)
        q = self._heads(p["q_proj"](x), dk) * dk**-0.5
        k = self._heads(p["k_proj"](x), dk)
        v = self._heads(p["v_proj"](x), dv)
        gate = p["g_proj"](x).astype(self._acc())
        return q, k, v, self._log_decay(p, x), gate

