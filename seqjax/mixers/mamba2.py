"""Mamba-2 (Dao & Gu 2024): the Mamba-2 block around state-space duality (SSD).

"Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality" (ICML 2024), Section 7 (the Mamba-2 block).
All of ``x``, ``B``, ``C`` and ``dt`` come from one input projection (in
parallel, not sequentially as in Mamba-1), ``A`` is a scalar per head, and a
gated RMSNorm precedes the output projection; the recurrence is
:func:`seqjax.ops.ssd`. Also holds the pieces that Hydra
(``seqjax/mixers/hydra.py``) shares: head sizes, the gated RMSNorm and the
materialised SSD matrix.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from seqjax.mixers._conv import init_conv_buffer, short_conv, short_conv_step
from seqjax.mixers._layers import dense
from seqjax.mixers.mamba import (
    check_dt_range,
    dt_bias_init,
    masked_exp,
    pairwise_sums,
    scan_segments,
    uniform_init,
)
from seqjax.mixers.recurrent import check_seq, model_width
from seqjax.mixers.registry import register
from seqjax.ops.common import accum_dtype
from seqjax.ops import dispatch
from seqjax.ops.ssd import ssd
from seqjax.parallel.sequence import sequence_map
from seqjax.types import SegmentIds, Seq, SeqStep, SSDBC, SSDStep

Cache = dict[str, jax.Array]
HeadMatrix = Float[Array, "b h l l"]

# The Mamba-2 code's head dimension; smaller widths take the largest divisor.
PAPER_HEADDIM = 64
RMS_EPS = 1e-5


# --- pieces shared with Hydra -------------------------------------------------


def head_dim(name: str, d_in: int, headdim: int | None) -> int:
    """``headdim``, or (None) the largest divisor of ``d_in`` that is <= 64.

    Args:
      name: the mixer, for messages.
      d_in: the inner width ``expand · d_model``.
      headdim: the configured head dimension, or None.

    Returns:
      The head dimension ``p`` (it divides ``d_in``).
    """
    if headdim is None:
        return max(k for k in range(1, min(PAPER_HEADDIM, d_in) + 1) if d_in % k == 0)
    if not isinstance(headdim, int) or headdim < 1 or d_in % headdim:
        raise ValueError(f"{name}: headdim={headdim!r} must be a positive divisor of d_inner={d_in}")
    return headdim


def check_groups(name: str, heads: int, ngroups: int) -> None:
    """Raises a ValueError unless ``ngroups`` divides the number of heads."""
    if not isinstance(ngroups, int) or ngroups < 1 or heads % ngroups:
        raise ValueError(f"{name}: ngroups={ngroups!r} must be a positive divisor of the {heads} heads")


def a_log_init(low: float, high: float):
    """``A_log = log(U[low, high])`` per head (Mamba-2: ``A ∈ [1, 16]``; Hydra: ``A = 1``)."""

    def init(key, shape, dtype=jnp.float32):
        return jnp.log(jax.random.uniform(key, shape, jnp.float32, low, high)).astype(dtype)

    return init


def gated_rms_norm(y, z, weight, groups: int, norm_before_gate: bool, eps: float = RMS_EPS):
    """Mamba-2's gated RMSNorm over the last axis, in groups of ``width / groups``.

    ``norm_before_gate=False`` (Mamba-2): ``rms(y ⊙ silu(z)) ⊙ w``;
    ``True`` (Hydra): ``rms(y) ⊙ w ⊙ silu(z)``, with
    ``rms(v) = v / sqrt(mean(v²) + eps)`` over each group.

    Args:
      y: ``(..., width)`` in the accumulation dtype.
      z: ``(..., width)`` gate.
      weight: ``(width,)``.
      groups: number of normalisation groups (divides ``width``).
      norm_before_gate: the order, as above.
      eps: the RMSNorm epsilon.

    Returns:
      ``(..., width)`` in ``y``'s dtype.
    """
    gate = jax.nn.silu(z.astype(y.dtype))
    if not norm_before_gate:
        y = y * gate
    v = y.reshape(y.shape[:-1] + (groups, -1))
    v = v * jax.lax.rsqrt(jnp.mean(v * v, axis=-1, keepdims=True) + eps)
    out = v.reshape(y.shape) * weight.astype(y.dtype)
    return out * gate if norm_before_gate else out


def ssd_matrix(dt: SSDStep, A: jax.Array, B: SSDBC, C: SSDBC, segment_ids: SegmentIds | None = None) -> HeadMatrix:
    """The SSD matrix per head, materialised.

    ``M[b, h, t, s] = (C_t · B_s) exp(A_h Σ_{s<r≤t} dt_r) dt_s`` for ``s ≤ t`` in
    the same segment, 0 elsewhere; ``y_t = Σ_s M[t, s] x_s`` is :func:`ssd`
    without ``D``.

    Args:
      dt: ``(b, l, h)`` positive steps.
      A: ``(h,)``.
      B: ``(b, l, g, n)``.
      C: ``(b, l, g, n)``; head ``i`` uses group ``i // (h / g)``.
      segment_ids: optional ``(b, l)`` ids.

    Returns:
      ``(b, h, l, l)``.
    """
    heads, groups = dt.shape[-1], B.shape[2]
    CB = jnp.einsum("btgn,bsgn->bgts", C, B, precision=jax.lax.Precision.HIGHEST)
    CB = jnp.repeat(CB, heads // groups, axis=1)  # (b, h, t, s)
    dt_h = jnp.moveaxis(dt, 1, -1)  # (b, h, l)
    S, keep = pairwise_sums(dt_h, segment_ids)
    return CB * masked_exp(A[None, :, None, None] * S, keep) * dt_h[:, :, None, :]


@register("mamba2")
class Mamba2(nn.Module):
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
    ``M[h, t, s] = (C_t·B_s) exp(A_h Σ_{s<r≤t} dt_r) dt_s`` (``s ≤ t``) — a
    1-semiseparable matrix with a scalar decay, masked attention with
    ``Q = C``, ``K = B``, ``V = dt·x``.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
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
      dtype: compute dtype; parameters are float32, SSD accumulates in float32.
      ssd_impl: ``impl`` of :func:`seqjax.ops.ssd`.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.ssd`.
      sequence_axis: mesh axis that splits the length (the sequence-parallel
        SSD under a context mesh, see :func:`seqjax.parallel.sequence_map`);
        None: never split.
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("A_log", "dt_bias")

    d_model: int | None = None
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int | None = None
    ngroups: int = 1
    A_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    dtype: Any = jnp.float32
    ssd_impl: str = "auto"
    chunk_size: int = 64
    sequence_axis: str | None = None

    # --- configuration and parameters ----------------------------------------------

    def _dims(self, d: int) -> tuple[int, int, int, int, int]:
        """``(d_in, h, p, g, n)`` for width ``d``; validates the configuration."""
        for field in ("d_state", "d_conv", "expand"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"mamba2: {field} must be a positive int, got {value!r}")
        low, high = self.A_init_range
        if not 0 < low <= high:
            raise ValueError(f"mamba2: A_init_range must satisfy 0 < low <= high, got {self.A_init_range}")
        check_dt_range("mamba2", self.dt_min, self.dt_max, self.dt_init_floor)
        dispatch.check("ssd", self.ssd_impl)
        d_in = self.expand * d
        p = head_dim("mamba2", d_in, self.headdim)
        check_groups("mamba2", d_in // p, self.ngroups)
        return d_in, d_in // p, p, self.ngroups, self.d_state

    @nn.compact
    def _parts(self, d: int) -> dict[str, Any]:
        """Creates/reads the parameters; returns the layers and float arrays."""
        d_in, h, _, g, n = self._dims(d)
        conv_dim = d_in + 2 * g * n
        part = nn.with_logical_partitioning
        bound = 1.0 / math.sqrt(self.d_conv)
        return {
            "in_proj": dense(2 * d_in + 2 * g * n + h, ("embed", "mlp"), dtype=self.dtype, name="in_proj"),
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

    # --- shared pieces of every path ----------------------------------------------

    def _acc(self):
        return accum_dtype(self.dtype)

    def _split(self, zxbcdt, d):
        d_in, h, _, g, n = self._dims(d)
        return jnp.split(zxbcdt, [d_in, 2 * d_in + 2 * g * n], axis=-1)  # z, xBC, dt

    def _post_conv(self, xbc, dt, p, d):
        """``(x (…, h, p), dt (…, h), B (…, g, n), C (…, g, n))`` after conv + SiLU."""
        d_in, h, hp, g, n = self._dims(d)
        xbc = jax.nn.silu(xbc).astype(self.dtype)
        x, B, C = jnp.split(xbc, [d_in, d_in + g * n], axis=-1)
        lead = x.shape[:-1]
        dt = jax.nn.softplus(dt.astype(self._acc()) + p["dt_bias"].astype(self._acc()))
        return x.reshape(lead + (h, hp)), dt, B.reshape(lead + (g, n)), C.reshape(lead + (g, n))

    def _branches(self, p, x, segment_ids):
        d = x.shape[-1]
        z, xbc, dt = self._split(p["in_proj"](x.astype(self.dtype)), d)
        xbc = short_conv(xbc, p["conv_weight"], p["conv_bias"], segment_ids=segment_ids)
        return (z,) + self._post_conv(xbc, dt, p, d)

    def _A(self, p):
        return -jnp.exp(p["A_log"].astype(self._acc()))

    def _out(self, p, y, z):
        """Gated RMSNorm and out-projection of ``y (…, h, p)`` (accumulation dtype)."""
        y = y.reshape(y.shape[:-2] + (-1,)).astype(self._acc())
        y = gated_rms_norm(y, z, p["norm"], self.ngroups, norm_before_gate=False)
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)

    # --- public API -------------------------------------------------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """Runs the Mamba-2 block over a sequence.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids of packed sequences.
          deterministic: unused (no dropout).

        Returns:
          ``(batch, length, d_model)`` output in ``dtype``.
        """
        del deterministic
        check_seq("mamba2", x, segment_ids)
        p = self._parts(model_width(self, x))
        z, xh, dt, B, C = self._branches(p, x, segment_ids)

        def core(axis, xh, dt, B, C, segments, A, D):
            return ssd(xh, dt, A, B, C, D=D, segment_ids=segments, chunk_size=self.chunk_size, impl=self.ssd_impl,
                       sequence_axis=axis)[0]

        y = sequence_map(core, self.sequence_axis, (xh, dt, B, C, scan_segments(segment_ids, x.shape[1])),
                         (self._A(p), p["D"]), what="mamba2")
        return self._out(p, y, z)

    def init_cache(self, batch_size: int, max_length: int | None = None) -> Cache:
        """Zero cache: the conv's last ``d_conv - 1`` inputs and the SSD state.

        Args:
          batch_size: number of sequences.
          max_length: unused (the state does not grow).

        Returns:
          ``{"conv": (b, d_conv-1, d_in + 2gn) in dtype, "ssm": (b, h, p, n) float32}``.
        """
        del max_length
        d_in, h, hp, g, n = self._dims(model_width(self))
        return {
            "conv": init_conv_buffer(batch_size, self.d_conv, d_in + 2 * g * n, self.dtype),
            "ssm": jnp.zeros((batch_size, h, hp, n), self._acc()),
        }

    def step(self, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One position: conv from the rolling buffer, then one SSD recurrence step.

        ``H = exp(dt A) H + dt x ⊗ B``, ``y = H C + D x``, gated norm, out-projection.

        Args:
          x_t: ``(batch, d_model)`` input.
          cache: from :meth:`init_cache` or a previous step.

        Returns:
          ``(y_t, cache)``: ``(batch, d_model)`` output in ``dtype`` and the new cache.
        """
        if x_t.ndim != 2:
            raise ValueError(f"mamba2.step: x_t must have shape (batch, d_model), got {x_t.shape}")
        if set(cache) != {"conv", "ssm"}:
            raise ValueError(f"mamba2.step: cache must have keys conv, ssm (init_cache), got {sorted(cache)}")
        acc = self._acc()
        d = model_width(self, x_t)
        _, h, _, g, _ = self._dims(d)
        p = self._parts(d)
        z, xbc, dt = self._split(p["in_proj"](x_t.astype(self.dtype)), d)
        xbc, conv = short_conv_step(xbc, cache["conv"], p["conv_weight"], p["conv_bias"])
        xh, dt, B, C = self._post_conv(xbc, dt, p, d)  # (b, h, p), (b, h), (b, g, n) x2
        xf = xh.astype(acc)
        Bh = jnp.repeat(B.astype(acc), h // g, axis=1)[:, :, None, :]  # (b, h, 1, n)
        Ch = jnp.repeat(C.astype(acc), h // g, axis=1)[:, :, None, :]
        H = jnp.exp(dt * self._A(p))[..., None, None] * cache["ssm"].astype(acc)
        H = H + (dt[..., None] * xf)[..., None] * Bh
        y = jnp.sum(H * Ch, axis=-1) + p["D"].astype(acc)[:, None] * xf
        return self._out(p, y, z), {"conv": conv, "ssm": H}

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> HeadMatrix:
        """The SSD matrix per head, acting on the post-conv ``x`` (``D`` excluded).

        ``M[b, h, t, s] = (C_t·B_s) exp(A_h Σ_{s<r≤t} dt_r) dt_s`` for ``s ≤ t``
        in the same segment, else 0 (lower triangular).

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          ``(batch, heads, length, length)`` in the accumulation dtype.
        """
        check_seq("mamba2", x, segment_ids)
        acc = self._acc()
        p = self._parts(model_width(self, x))
        _, _, dt, B, C = self._branches(p, x, segment_ids)
        return ssd_matrix(dt, self._A(p), B.astype(acc), C.astype(acc), segment_ids)

    def apply_mixing_matrix(self, x: Seq, M: HeadMatrix, *, segment_ids: SegmentIds | None = None) -> Seq:
        """The Mamba-2 block with dense per-head matrices ``M`` instead of SSD.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: ``(batch, heads, length, length)``, e.g. from :meth:`mixing_matrix`.
          segment_ids: optional ``(batch, length)`` ids; they only keep the
            short convolution within segments (``M`` already holds the mixing).

        Returns:
          ``(batch, length, d_model)`` output in ``dtype``.
        """
        check_seq("mamba2", x, segment_ids)
        acc = self._acc()
        d = model_width(self, x)
        _, h, _, _, _ = self._dims(d)
        expected = (x.shape[0], h, x.shape[1], x.shape[1])
        if M.shape != expected:
            raise ValueError(f"mamba2: M must have shape (b, heads, l, l) = {expected}, got {M.shape}")
        p = self._parts(d)
        z, xh, _, _, _ = self._branches(p, x, segment_ids)
        xf = xh.astype(acc)
        y = jnp.einsum("bhts,bshp->bthp", M.astype(acc), xf, precision=jax.lax.Precision.HIGHEST)
        y = y + p["D"].astype(acc)[:, None] * xf
        return self._out(p, y, z)

    def state_size(self, length: int | None = None) -> int:
        """Bytes of inference state per sequence: conv buffer plus SSD state.

        Args:
          length: unused (the state does not grow with the sequence).

        Returns:
          ``(d_conv-1)·(d_in+2gn)·itemsize(dtype) + h·p·n·itemsize(float32)``.
        """
        del length
        d_in, h, hp, g, n = self._dims(model_width(self))
        conv = (self.d_conv - 1) * (d_in + 2 * g * n) * jnp.dtype(self.dtype).itemsize
        return conv + h * hp * n * jnp.dtype(self._acc()).itemsize
