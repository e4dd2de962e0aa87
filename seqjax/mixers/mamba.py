"""Mamba (Gu & Dao 2023): the Mamba block around the selective scan (S6).

"Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023),
Section 3.4 and Figure 3. The block expands the width, runs a short causal
convolution and the input-dependent SSM on one branch, gates it with the other
branch, and projects back; the recurrence itself is
:func:`seqjax.ops.selective_scan`.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_int, dense, param, uniform_init
from seqjax.mixers.mamba_blocks import check_dt_range, dt_bias_init, init_conv_buffer, short_conv, short_conv_step
from seqjax.mixers.registry import register
from seqjax.ops.selective_scan import selective_scan
from seqjax.types import SegmentIds, Seq, SeqStep

# selective_scan's entry is not jitted and its lax.scan would be re-traced on
# every eager call (~0.2-0.6 s each in tests and eager loops); under an outer
# jit this wrapper is simply inlined.
_selective_scan = jax.jit(
    selective_scan, static_argnames=("delta_softplus", "return_last_state", "impl", "chunk_size", "sequence_axis")
)


@register("mamba")
class Mamba(Mixer):
    """The Mamba block (Gu & Dao 2023, Section 3.4, Figure 3), causal.

    With ``E = expand``, ``d_in = E·d_model``, ``n = d_state``, ``R = dt_rank``::

        [x, z]    = in_proj(u)                       x, z ∈ R^{d_in}
        x         = silu(conv1d(x))                  causal depthwise, d_conv taps, bias
        [δ, B, C] = x_proj(x)                        δ ∈ R^R, B, C ∈ R^n
        Δ         = softplus(dt_proj(δ) + dt_bias)   ∈ R^{d_in}
        A         = -exp(A_log)                      (d_in, n)
        h_t       = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t x_t) ⊗ B_t     (Ā = exp(ΔA), B̄ = ΔB)
        y_t       = (h_t C_t + D ⊙ x_t) ⊙ silu(z_t)
        out       = out_proj(y)

    Initialisation (the paper and ``mamba_simple``): ``A_log[c, k] =
    log(k + 1)`` (S4D-Real, ``A = -(1, 2, ..., n)``), ``D = 1``,
    ``softplus(dt_bias)`` log-uniform on ``[dt_min, dt_max]`` (clamped at
    ``dt_init_floor``), ``dt_proj`` kernel ``U(±dt_scale·R^-1/2)``, conv
    weight and bias ``U(±1/sqrt(d_conv))`` (PyTorch's default for a depthwise
    conv); the dense projections are LeCun-normal (the house default).

    Mixing matrix (per channel ``c`` of ``d_in``, acting on the post-conv ``x``;
    the skip ``D`` and the gate are part of the op, so part of ``M``)::

        M[c, t, s] = silu(z_t[c]) (Σ_k C_t[k] exp(A[c, k] Σ_{s<r≤t} Δ_r[c]) B_s[k] Δ_s[c] + D[c] [s = t])

    Segments: the conv sees only its own segment and the scan restarts there.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of projections and activations; parameters are
        float32 and the scan accumulates in float32 (float64 for float64).
      impl: ``impl`` of :func:`seqjax.ops.selective_scan`.
      sequence_axis: mesh axis that splits the length (the sequence-parallel
        selective scan under a context mesh); None: never split.
      d_state: ``n``, the SSM state per channel (16 in the paper).
      d_conv: taps of the causal conv (4).
      expand: ``E``; ``d_in = E·d_model`` (2).
      dt_rank: ``R``; None means ``ceil(d_model / 16)``.
      dt_min: smallest initial step.
      dt_max: largest initial step.
      dt_init_floor: lower clamp of the initial step.
      dt_scale: scale of the ``dt_proj`` kernel's init bound.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.selective_scan`.
    """

    ssm_params = ("A_log", "dt_bias")
    ops = ("selective_scan",)
    sequence_parallel = True
    values_index = 0  # u, the post-conv activations
    resettable = True  # conv window and h restart from zero, as at a segment start

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    chunk_size: int = 64

    def check_fields(self):
        for field in ("d_state", "d_conv", "expand", "chunk_size"):
            check_int(self.mixer_name, field, getattr(self, field))
        check_int(self.mixer_name, "dt_rank", self.dt_rank, optional=True)
        check_dt_range(self.mixer_name, self.dt_min, self.dt_max, self.dt_init_floor)

    def _rank(self, d: int) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(d / 16)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        d_in, n, rank = self.expand * d, self.d_state, self._rank(d)
        conv_bound = 1.0 / math.sqrt(self.d_conv)

        def a_log_init(key, shape, dtype=jnp.float32):
            del key  # S4D-Real: A = -(1, 2, ..., n) for every channel
            return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[1] + 1, dtype=dtype)), shape)

        dt_init = dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor)
        return {
            "in_proj": dense(2 * d_in, ("embed", "mlp"), dtype=self.dtype, name="in_proj"),
            "conv_weight": param(self, "conv_weight", uniform_init(conv_bound), (self.d_conv, d_in), (None, "mlp")),
            "conv_bias": param(self, "conv_bias", uniform_init(conv_bound), (d_in,), ("mlp",)),
            "x_proj": dense(rank + 2 * n, ("mlp", None), dtype=self.dtype, name="x_proj"),
            "dt_proj": dense(d_in, (None, "mlp"), dtype=self.dtype, name="dt_proj",
                             kernel_init=uniform_init(self.dt_scale * rank**-0.5)),
            "dt_bias": param(self, "dt_bias", dt_init, (d_in,), ("mlp",)),
            "A_log": param(self, "A_log", a_log_init, (d_in, n), ("mlp", "state")),
            "D": param(self, "D", nn.initializers.ones_init(), (d_in,), ("mlp",)),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj"),
        }

    def _ssm_inputs(self, p, u):
        """``(δ-projection, B, C)`` from the post-conv activations ``u`` (any leading axes)."""
        rank, n = self._rank(p["out_proj"].features), self.d_state
        dt_low, B, C = jnp.split(p["x_proj"](u), [rank, rank + n], axis=-1)
        return p["dt_proj"](dt_low), B, C

    def _A(self, p):
        return -jnp.exp(p["A_log"].astype(self.acc()))

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        x_in, z = jnp.split(p["in_proj"](x.astype(self.dtype)), 2, axis=-1)
        xc = short_conv(x_in, p["conv_weight"], p["conv_bias"], segment_ids=segment_ids)
        u = jax.nn.silu(xc).astype(self.dtype)
        delta, B, C = self._ssm_inputs(p, u)
        return Projection(tokens=(u, delta, B, C, z, segment_ids), shared=(self._A(p), p["D"], p["dt_bias"]))

    def mix(self, axis, u, delta, B, C, z, segment_ids, A, D, dt_bias):
        return _selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=dt_bias, delta_softplus=True,
                               segment_ids=segment_ids, impl=self.impl_for("selective_scan"),
                               chunk_size=self.chunk_size, sequence_axis=axis)

    def output(self, p, y, proj: Projection) -> Seq:
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"conv": (b, d_conv-1, d_in) in dtype, "ssm": (b, d_in, d_state) float32}``."""
        d_in = self.expand * d
        return {
            "conv": init_conv_buffer(batch_size, self.d_conv, d_in, self.dtype),
            "ssm": jnp.zeros((batch_size, d_in, self.d_state), self.acc()),
        }

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # Conv from the rolling buffer, then h = exp(Δ A) ⊙ h + (Δ x) ⊗ B, y = (h C + D x) ⊙ silu(z).
        acc = self.acc()
        x_in, z = jnp.split(p["in_proj"](x_t.astype(self.dtype)), 2, axis=-1)
        xc, conv = short_conv_step(x_in, cache["conv"], p["conv_weight"], p["conv_bias"])
        u = jax.nn.silu(xc).astype(self.dtype)
        delta, B, C = self._ssm_inputs(p, u)
        delta = jax.nn.softplus(delta.astype(acc) + p["dt_bias"].astype(acc))  # (b, d_in)
        uf = u.astype(acc)
        h = jnp.exp(delta[..., None] * self._A(p)) * cache["ssm"].astype(acc)
        h = h + (delta * uf)[..., None] * B.astype(acc)[:, None, :]
        y = jnp.sum(h * C.astype(acc)[:, None, :], axis=-1) + p["D"].astype(acc) * uf
        y = y * jax.nn.silu(z.astype(acc))
        return self.output(p, y, Projection()), {"conv": conv, "ssm": h}
