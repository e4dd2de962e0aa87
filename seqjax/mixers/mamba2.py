"""Mamba-2 (Dao & Gu 2024): the Mamba-2 block around state-space duality (SSD).

"Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality" (ICML 2024), Section 7 (the Mamba-2 block).
All of ``x``, ``B``, ``C`` and ``dt`` come from one input projection (in
parallel, not sequentially as in Mamba-1), ``A`` is a scalar per head, and a
gated RMSNorm precedes the output projection; the recurrence is
:func:`seqjax.ops.ssd`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.base import Projection
from seqjax.mixers.mamba_blocks import (
    SSDBlock, gated_rms_norm, init_conv_buffer, short_conv, short_conv_step)
from seqjax.mixers.registry import register
from seqjax.ops.ssd import ssd
from seqjax.types import SegmentIds, Seq, SeqStep


@register("mamba2")
class Mamba2(SSDBlock):
    """The Mamba-2 block (Dao & Gu 2024, Section 7), causal.

    With ``d_in = expand·d_model`` split into ``h`` heads of ``p = headdim``,
    ``g = ngroups`` groups of ``B``/``C`` of size ``n = d_state``::

        [z, xBC, dt] = in_proj(u)                 z ∈ R^{d_in}, xBC ∈ R^{d_in+2gn}, dt ∈ R^h
        [x, B, C]    = silu(conv1d(xBC))          causal depthwise, d_conv taps, bias
        dt           = softplus(dt + dt_bias),    A = -exp(A_log)   (per head)
        H_t          = exp(dt_t A) H_{t-1} + dt_t x_t ⊗ B_t         (b, h, p, n)
        y_t          = H_t C_t + D ⊙ x_t
        out          = out_proj(rmsnorm(y ⊙ silu(z)) ⊙ w)          (per group of d_in/g)

    Initialisation (the Mamba-2 code): ``A = U[1, 16]`` per head (stored as
    its log), ``D = 1``, ``softplus(dt_bias)`` log-uniform on ``[dt_min,
    dt_max]``, norm weight 1, conv ``U(±1/sqrt(d_conv))``, dense projections
    LeCun-normal.

    Mixing matrix (per head, acting on the post-conv ``x``): the SSD matrix
    ``M[h, t, s] = (C_t·B_s) exp(A_h Σ_{s<r≤t} dt_r) dt_s`` (``s ≤ t``) plus
    ``D_h`` on the diagonal — a 1-semiseparable matrix with a scalar decay,
    masked attention with ``Q = C``, ``K = B``, ``V = dt·x``.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype; parameters are float32, SSD accumulates in float32.
      impl: ``impl`` of :func:`seqjax.ops.ssd`.
      sequence_axis: mesh axis that splits the length (the sequence-parallel
        SSD under a context mesh); None: never split.
      d_state: ``n`` (64 here: the paper's Mamba-2 runs use 64-256; the code
        defaults to 128).
      d_conv: taps of the causal conv (4).
      expand: ``d_in = expand·d_model`` (2).
      headdim: ``p``; None takes the largest divisor of ``d_in`` that is at
        most 64 (the code's 64 whenever 64 divides ``d_in``).
      ngroups: ``g``, groups sharing ``B``/``C`` (1); divides the heads.
      A_init_range: the ``U[low, high]`` of ``A = -exp(A_log)``'s magnitude.
      dt_min: smallest initial step.
      dt_max: largest initial step.
      dt_init_floor: lower clamp of the initial step.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.ssd`.
    """

    sequence_parallel = True

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        return self.ssd_parts(d, directions=1)

    def _split(self, zxbcdt, d):
        d_in, _, _, g, n = self.dims(d)
        return jnp.split(zxbcdt, [d_in, 2 * d_in + 2 * g * n], axis=-1)  # z, xBC, dt

    def _post_conv(self, xbc, dt, p, d):
        """``(x (…, h, p), dt (…, h), B (…, g, n), C (…, g, n))`` after conv + SiLU."""
        d_in, h, hp, g, n = self.dims(d)
        x, B, C = jnp.split(jax.nn.silu(xbc).astype(self.dtype), [d_in, d_in + g * n], axis=-1)
        lead = x.shape[:-1]
        dt = jax.nn.softplus(dt.astype(self.acc()) + p["dt_bias"].astype(self.acc()))
        return x.reshape(lead + (h, hp)), dt, B.reshape(lead + (g, n)), C.reshape(lead + (g, n))

    def _A(self, p):
        return -jnp.exp(p["A_log"].astype(self.acc()))

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        d = x.shape[-1]
        z, xbc, dt = self._split(p["in_proj"](x.astype(self.dtype)), d)
        xbc = short_conv(xbc, p["conv_weight"], p["conv_bias"], segment_ids=segment_ids)
        xh, dt, B, C = self._post_conv(xbc, dt, p, d)
        return Projection(tokens=(xh, dt, B, C, segment_ids), shared=(self._A(p), p["D"]), rest=z)

    def mix(self, axis, xh, dt, B, C, segment_ids, A, D):
        return ssd(xh, dt, A, B, C, D=D, segment_ids=segment_ids, chunk_size=self.chunk_size,
                   impl=self.impl_for("ssd"), sequence_axis=axis)[0]

    def output(self, p, y, proj: Projection) -> Seq:
        # Gated RMSNorm (per group of d_in / g) and the out-projection of y (…, h, p).
        y = y.reshape(y.shape[:-2] + (-1,)).astype(self.acc())
        y = gated_rms_norm(y, proj.rest, p["norm"], self.ngroups, norm_before_gate=False)
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"conv": (b, d_conv-1, d_in + 2gn) in dtype, "ssm": (b, h, p, n) float32}``."""
        d_in, h, hp, g, n = self.dims(d)
        return {
            "conv": init_conv_buffer(batch_size, self.d_conv, d_in + 2 * g * n, self.dtype),
            "ssm": jnp.zeros((batch_size, h, hp, n), self.acc()),
        }

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # Conv from the rolling buffer; H = exp(dt A) H + dt x ⊗ B, y = H C + D x; gated norm, out.
        acc, d = self.acc(), x_t.shape[-1]
        _, h, _, g, _ = self.dims(d)
        z, xbc, dt = self._split(p["in_proj"](x_t.astype(self.dtype)), d)
        xbc, conv = short_conv_step(xbc, cache["conv"], p["conv_weight"], p["conv_bias"])
        xh, dt, B, C = self._post_conv(xbc, dt, p, d)  # (b, h, p), (b, h), (b, g, n) x2
        xf = xh.astype(acc)
        Bh = jnp.repeat(B.astype(acc), h // g, axis=1)[:, :, None, :]  # (b, h, 1, n)
        Ch = jnp.repeat(C.astype(acc), h // g, axis=1)[:, :, None, :]
        H = jnp.exp(dt * self._A(p))[..., None, None] * cache["ssm"].astype(acc)
        H = H + (dt[..., None] * xf)[..., None] * Bh
        y = jnp.sum(H * Ch, axis=-1) + p["D"].astype(acc)[:, None] * xf
        return self.output(p, y, Projection(rest=z)), {"conv": conv, "ssm": H}
