"""Hydra (Hwang et al. 2024): a bidirectional, quasiseparable matrix mixer from two SSDs.

"Hydra: Bidirectional State Space Models Through Generalized Matrix Mixers"
(2024). A quasiseparable matrix is a semiseparable lower part plus a
semiseparable upper part plus a free diagonal; Hydra builds one from two
Mamba-2 SSDs, one run forwards and one over the reversed sequence, each shifted
by one position so that neither touches the diagonal, plus a diagonal term::

    QS(x) = shift(SS_f(x)) + flip(shift(SS_b(flip(x)))) + diag(D + W_D x) x

The layer around it is the Mamba-2 block with a centered (non-causal) short
convolution and both directions' ``B``, ``C``, ``dt`` in one input projection.
The SSDs run as one batched :func:`seqjax.ops.ssd` call (the reversed copy
stacked on the batch axis), as the public Hydra code does.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Projection
from seqjax.mixers.common import dense, segment_runs
from seqjax.mixers.mamba_blocks import (
    SSDBlock, gated_rms_norm, short_conv)
from seqjax.mixers.registry import register
from seqjax.ops.ssd import ssd
from seqjax.types import SegmentIds, Seq


def _shift(y, segment_ids):
    """``out[t] = y[t-1]`` along the length, 0 at ``t = 0`` and at segment starts."""
    batch, length = y.shape[:2]
    runs = segment_runs(segment_ids, batch, length)
    keep = (runs[:, 1:] == runs[:, :-1]).reshape((batch, length - 1) + (1,) * (y.ndim - 2))
    return jnp.concatenate([jnp.zeros_like(y[:, :1]), jnp.where(keep, y[:, :-1], 0)], axis=1)


def _flip(a):
    return None if a is None else jnp.flip(a, axis=1)


@register("hydra")
class Hydra(SSDBlock):
    """Hydra (Hwang et al. 2024): the quasiseparable bidirectional mixer; not causal.

    With ``d_in = expand·d_model``, ``h`` heads of ``p = headdim``, ``g``
    groups and ``n = d_state``::

        [z, xBC, dt]          = in_proj(u)          xBC ∈ R^{d_in + 4gn}, dt ∈ R^{2h}
        [x, B_f, C_f, B_b, C_b] = silu(conv1d(xBC))   centered depthwise, d_conv (odd) taps
        dt_f, dt_b            = softplus(dt[:h] + dt_bias), softplus(dt[h:] + dt_bias)
        A                     = -exp(A_log)           (per head, shared by both directions)
        y = shift(SSD_f(x)) + flip(shift(SSD_b(flip(x)))) + (D + W_D x) ⊙ x     (per head)
        out = out_proj(rmsnorm(y) ⊙ w ⊙ silu(z))     (norm before gate, over all of d_in)

    where ``shift`` moves outputs one step later, so the forward term at ``t``
    reads states up to ``t-1`` and the backward term states from ``t+1``.
    The mixing matrix (per head, acting on the post-conv ``x``) is therefore::

        M[t, s] = (C^f_{t-1}·B^f_s) exp(A Σ_{s<r<t} dt^f_r) dt^f_s       s < t
                = D + (W_D x_t)_h                                        s = t
                = (C^b_{t+1}·B^b_s) exp(A Σ_{t<r<s} dt^b_r) dt^b_s       s > t

    — two-sided, with a free (here input-dependent) diagonal.

    Initialisation (the public Hydra code): ``A = 1`` (``A_log = 0``;
    ``A_init_range=(1, 1)``), ``D = 1``, ``softplus(dt_bias)`` log-uniform
    on ``[dt_min, dt_max]``, norm weight 1, conv ``U(±1/sqrt(d_conv))``,
    dense projections (``W_D`` included) LeCun-normal.

    Segments: the centered conv sees only its own segment, both SSDs restart
    at segment boundaries and the shifted terms are zero at a segment's
    first (forward) and last (backward) position.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype; parameters are float32, SSD accumulates in float32.
      impl: ``impl`` of :func:`seqjax.ops.ssd`.
      sequence_axis: unused (Hydra runs unsplit).
      d_state: ``n`` per direction (64, as the Hydra code).
      d_conv: taps of the centered conv, odd (7, as the Hydra code).
      expand: ``d_in = expand·d_model`` (2).
      headdim: ``p``; None takes the largest divisor of ``d_in`` that is <= 64.
      ngroups: ``g``, groups sharing ``B``/``C`` (1).
      A_init_range: ``U[low, high]`` of ``exp(A_log)``; ``(1, 1)`` is Hydra's ``A = -1``.
      dt_min: smallest initial step.
      dt_max: largest initial step.
      dt_init_floor: lower clamp of the initial step.
      diag_proj: the Hydra code's input-dependent diagonal ``D + W_D x``
        (``fc_D``); False keeps the plain learned ``D`` of the paper's equation.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.ssd`.
    """

    causality = "bidirectional"

    d_conv: int = 7
    A_init_range: tuple[float, float] = (1.0, 1.0)
    diag_proj: bool = True

    def check_fields(self):
        super().check_fields()
        if self.d_conv % 2 == 0:
            raise ConfigError(f"{self.mixer_name}.d_conv={self.d_conv!r} must be odd (a centered window)")

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        parts = self.ssd_parts(d, directions=2)
        if self.diag_proj:
            parts["fc_D"] = dense(self.dims(d)[1], ("mlp", "heads"), dtype=self.dtype, name="fc_D")
        return parts

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        acc = self.acc()
        d_in, h, hp, g, n = self.dims(x.shape[-1])
        z, xbc, dt = jnp.split(p["in_proj"](x.astype(self.dtype)), [d_in, 2 * d_in + 4 * g * n], axis=-1)
        xbc = short_conv(xbc, p["conv_weight"], p["conv_bias"], segment_ids=segment_ids, causal=False)
        xbc = jax.nn.silu(xbc).astype(self.dtype)
        xs, Bf, Cf, Bb, Cb = jnp.split(xbc, [d_in + k * g * n for k in range(4)], axis=-1)
        lead = xs.shape[:-1]
        Bf, Cf, Bb, Cb = (t.reshape(lead + (g, n)) for t in (Bf, Cf, Bb, Cb))
        dt = jax.nn.softplus(dt.astype(acc) + jnp.tile(p["dt_bias"].astype(acc), 2))
        diag = jnp.broadcast_to(p["D"].astype(acc), lead + (h,))
        if self.diag_proj:
            diag = diag + p["fc_D"](xs).astype(acc)
        tokens = (xs.reshape(lead + (h, hp)), dt[..., :h], Bf, Cf, dt[..., h:], Bb, Cb, diag, segment_ids)
        return Projection(tokens=tokens, shared=(-jnp.exp(p["A_log"].astype(acc)),), rest=z)

    def mix(self, axis, xh, dtf, Bf, Cf, dtb, Bb, Cb, diag, segment_ids, A):
        del axis
        batch = xh.shape[0]
        # Both directions in one SSD call: the reversed copy goes on the batch axis.
        cat = lambda f, b: jnp.concatenate([f, _flip(b)], axis=0)  # noqa: E731
        seg2 = None if segment_ids is None else cat(segment_ids, segment_ids)
        y2, _ = ssd(cat(xh, xh), cat(dtf, dtb), A, cat(Bf, Bb), cat(Cf, Cb), segment_ids=seg2,
                    chunk_size=self.chunk_size, impl=self.impl_for("ssd"))
        y2 = _shift(y2.astype(self.acc()), seg2)
        return y2[:batch] + _flip(y2[batch:]) + diag[..., None] * xh.astype(self.acc())

    def output(self, p, y, proj: Projection) -> Seq:
        # Gated RMSNorm (norm before gate, one group) and out-projection of y (…, h, p).
        y = y.reshape(y.shape[:-2] + (-1,)).astype(self.acc())
        y = gated_rms_norm(y, proj.rest, p["norm"], 1, norm_before_gate=True)
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)

    def state_size(self, length: int | None = None) -> int:
        """Bytes of state per sequence: both directions' SSD carries and the conv window.

        Hydra is bidirectional, so it has no streaming state; like a
        bidirectional S5 it reports the carries that a chunk-by-chunk pass
        would hold: two ``(h, p, n)`` SSD states (float32) and the ``d_conv - 1``
        positions of the centered conv's window.

        Args:
          length: unused.

        Returns:
          ``(d_conv-1)·(d_in+4gn)·itemsize(dtype) + 2·h·p·n·itemsize(float32)``.
        """
        del length
        d_in, h, hp, g, n = self.dims(self.width())
        conv = (self.d_conv - 1) * (d_in + 4 * g * n) * jnp.dtype(self.dtype).itemsize
        return conv + 2 * h * hp * n * jnp.dtype(self.acc()).itemsize
