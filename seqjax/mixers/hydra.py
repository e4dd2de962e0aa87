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

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers._conv import segment_runs, short_conv
from seqjax.mixers._layers import dense
from seqjax.mixers.mamba import check_dt_range, dt_bias_init, scan_segments, uniform_init
from seqjax.mixers.mamba2 import (
    HeadMatrix,
    a_log_init,
    check_groups,
    gated_rms_norm,
    head_dim,
    ssd_matrix,
)
from seqjax.mixers.recurrent import check_seq, model_width
from seqjax.mixers.registry import register
from seqjax.ops.common import accum_dtype
from seqjax.ops import dispatch
from seqjax.ops.ssd import ssd
from seqjax.types import SegmentIds, Seq


def _shift_mask(segment_ids, batch, length):
    """``(b, l-1)``: position ``t+1`` may read position ``t`` (same segment)."""
    if segment_ids is None:
        return jnp.ones((batch, length - 1), bool)
    runs = segment_runs(segment_ids, length)
    return runs[:, 1:] == runs[:, :-1]


def _shift(y, segment_ids, axis=1):
    """``out[t] = y[t-1]`` along ``axis`` (time), 0 at ``t = 0`` and at segment starts."""
    y = jnp.moveaxis(y, axis, 1)
    keep = _shift_mask(segment_ids, y.shape[0], y.shape[1])
    keep = keep.reshape(keep.shape + (1,) * (y.ndim - 2))
    prev = jnp.where(keep, y[:, :-1], 0)
    out = jnp.concatenate([jnp.zeros_like(y[:, :1]), prev], axis=1)
    return jnp.moveaxis(out, 1, axis)


def _flip(a):
    return None if a is None else jnp.flip(a, axis=1)


@register("hydra")
class Hydra(nn.Module):
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
      dtype: compute dtype; parameters are float32, SSD accumulates in float32.
      ssd_impl: ``impl`` of :func:`seqjax.ops.ssd`.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.ssd`.
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("A_log", "dt_bias")

    d_model: int | None = None
    d_state: int = 64
    d_conv: int = 7
    expand: int = 2
    headdim: int | None = None
    ngroups: int = 1
    A_init_range: tuple[float, float] = (1.0, 1.0)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    diag_proj: bool = True
    dtype: Any = jnp.float32
    ssd_impl: str = "auto"
    chunk_size: int = 64

    # --- configuration and parameters ----------------------------------------------

    def _dims(self, d: int) -> tuple[int, int, int, int, int]:
        """``(d_in, h, p, g, n)`` for width ``d``; validates the configuration."""
        for field in ("d_state", "d_conv", "expand"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"hydra: {field} must be a positive int, got {value!r}")
        if self.d_conv % 2 == 0:
            raise ValueError(f"hydra: d_conv must be odd (a centered window), got {self.d_conv}")
        low, high = self.A_init_range
        if not 0 < low <= high:
            raise ValueError(f"hydra: A_init_range must satisfy 0 < low <= high, got {self.A_init_range}")
        check_dt_range("hydra", self.dt_min, self.dt_max, self.dt_init_floor)
        dispatch.check("ssd", self.ssd_impl)
        d_in = self.expand * d
        p = head_dim("hydra", d_in, self.headdim)
        check_groups("hydra", d_in // p, self.ngroups)
        return d_in, d_in // p, p, self.ngroups, self.d_state

    @nn.compact
    def _parts(self, d: int) -> dict[str, Any]:
        """Creates/reads the parameters; returns the layers and float arrays."""
        d_in, h, _, g, n = self._dims(d)
        conv_dim = d_in + 4 * g * n
        part = nn.with_logical_partitioning
        bound = 1.0 / math.sqrt(self.d_conv)
        parts = {
            "in_proj": dense(2 * d_in + 4 * g * n + 2 * h, ("embed", "mlp"), dtype=self.dtype, name="in_proj"),
            "conv_weight": self.param("conv_weight", part(uniform_init(bound), (None, "mlp")), (self.d_conv, conv_dim)),
            "conv_bias": self.param("conv_bias", part(uniform_init(bound), ("mlp",)), (conv_dim,)),
            "dt_bias": self.param(
                "dt_bias", part(dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor), ("heads",)), (h,)
            ),
            "A_log": self.param("A_log", part(a_log_init(*self.A_init_range), ("heads",)), (h,)),
            "D": self.param("D", part(nn.initializers.ones_init(), ("heads",)), (h,)),
            "norm": self.param("norm", part(nn.initializers.ones_init(), ("mlp",)), (d_in,)),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj"),
        }
        if self.diag_proj:
            parts["fc_D"] = dense(h, ("mlp", "heads"), dtype=self.dtype, name="fc_D")
        return parts

    # --- shared pieces of every path ----------------------------------------------

    def _acc(self):
        return accum_dtype(self.dtype)

    def _branches(self, p, x, segment_ids):
        """``z, x (b,l,h,p), diag (b,l,h), (dt, B, C)`` of each direction, in input order."""
        acc = self._acc()
        d_in, h, hp, g, n = self._dims(x.shape[-1])
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
        return z, xs.reshape(lead + (h, hp)), diag, (dt[..., :h], Bf, Cf), (dt[..., h:], Bb, Cb)

    def _A(self, p):
        return -jnp.exp(p["A_log"].astype(self._acc()))

    def _out(self, p, y, z):
        """Gated RMSNorm (norm before gate, one group) and out-projection of ``y (…, h, p)``."""
        y = y.reshape(y.shape[:-2] + (-1,)).astype(self._acc())
        y = gated_rms_norm(y, z, p["norm"], 1, norm_before_gate=True)
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)

    # --- public API -------------------------------------------------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """Runs the Hydra layer over a sequence (bidirectional).

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids of packed sequences.
          deterministic: unused (no dropout).

        Returns:
          ``(batch, length, d_model)`` output in ``dtype``.
        """
        del deterministic
        check_seq("hydra", x, segment_ids)
        batch, length = x.shape[:2]
        p = self._parts(model_width(self, x))
        z, xh, diag, (dtf, Bf, Cf), (dtb, Bb, Cb) = self._branches(p, x, segment_ids)
        # Both directions in one SSD call: the reversed copy goes on the batch axis.
        cat = lambda f, b: jnp.concatenate([f, _flip(b)], axis=0)  # noqa: E731
        seg2 = None if segment_ids is None else cat(segment_ids, segment_ids)
        y2, _ = ssd(
            cat(xh, xh), cat(dtf, dtb), self._A(p), cat(Bf, Bb), cat(Cf, Cb),
            segment_ids=scan_segments(seg2, length), chunk_size=self.chunk_size, impl=self.ssd_impl,
        )
        y2 = _shift(y2.astype(self._acc()), seg2)
        y = y2[:batch] + _flip(y2[batch:]) + diag[..., None] * xh.astype(self._acc())
        return self._out(p, y, z)

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> HeadMatrix:
        """The full two-sided matrix per head, acting on the post-conv ``x``.

        ``M = shift(SS_f) + flip(shift(SS_b)) + diag(D + W_D x)``: strictly
        lower, diagonal and strictly upper parts (see the class docstring);
        zero between different segments.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          ``(batch, heads, length, length)`` in the accumulation dtype.
        """
        check_seq("hydra", x, segment_ids)
        acc = self._acc()
        p = self._parts(model_width(self, x))
        _, _, diag, (dtf, Bf, Cf), (dtb, Bb, Cb) = self._branches(p, x, segment_ids)
        A = self._A(p)
        Mf = ssd_matrix(dtf, A, Bf.astype(acc), Cf.astype(acc), segment_ids)
        Mf = _shift(Mf, segment_ids, axis=2)  # row t <- row t-1
        Mb = ssd_matrix(_flip(dtb), A, _flip(Bb).astype(acc), _flip(Cb).astype(acc), _flip(segment_ids))
        Mb = jnp.flip(_shift(Mb, _flip(segment_ids), axis=2), axis=(2, 3))
        eye = jnp.eye(x.shape[1], dtype=acc)
        return Mf + Mb + jnp.moveaxis(diag, 1, -1)[..., None] * eye

    def apply_mixing_matrix(self, x: Seq, M: HeadMatrix, *, segment_ids: SegmentIds | None = None) -> Seq:
        """The Hydra layer with dense per-head matrices ``M`` instead of the SSDs.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: ``(batch, heads, length, length)``, e.g. from :meth:`mixing_matrix`.
          segment_ids: optional ``(batch, length)`` ids; they only keep the
            short convolution within segments (``M`` already holds the mixing).

        Returns:
          ``(batch, length, d_model)`` output in ``dtype``.
        """
        check_seq("hydra", x, segment_ids)
        d = model_width(self, x)
        _, h, _, _, _ = self._dims(d)
        expected = (x.shape[0], h, x.shape[1], x.shape[1])
        if M.shape != expected:
            raise ValueError(f"hydra: M must have shape (b, heads, l, l) = {expected}, got {M.shape}")
        p = self._parts(d)
        z, xh, _, _, _ = self._branches(p, x, segment_ids)
        acc = self._acc()
        y = jnp.einsum("bhts,bshp->bthp", M.astype(acc), xh.astype(acc), precision=jax.lax.Precision.HIGHEST)
        return self._out(p, y, z)

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
        d_in, h, hp, g, n = self._dims(model_width(self))
        conv = (self.d_conv - 1) * (d_in + 4 * g * n) * jnp.dtype(self.dtype).itemsize
        return conv + 2 * h * hp * n * jnp.dtype(self._acc()).itemsize
