"""Pieces of the Mamba family (Mamba, Mamba-2, Hydra): the short convolution and the Δ init.

The short depthwise convolution, segment-aware, with a step form:

Mamba, Mamba-2 and Hydra run a depthwise (one filter per channel) 1-D
convolution of a few taps over their projected inputs before the SSM. In the
PyTorch code this is ``nn.Conv1d(groups=channels)``, i.e. a cross-correlation;
with kernel size ``K`` and weight ``w: (K, c)``::

    causal   (Mamba, Mamba-2; padding K-1, truncated to l):
        y_t = bias + Σ_{k<K} w_k ⊙ x_{t-(K-1)+k}
    centered (Hydra; padding K//2 on both sides, K odd):
        y_t = bias + Σ_{k<K} w_k ⊙ x_{t-K//2+k}

Positions outside the sequence count as zeros. With ``segment_ids`` (packed
sequences), positions of another segment count as zeros too, so a packed row
gives exactly what separate runs give. Segments are maximal runs of equal ids
(the rule of the ops: a *change* of id starts a new segment), so two runs that
reuse an id are still kept apart.

``K`` is tiny (4 in Mamba, 7 in Hydra), so the convolution is a sum of ``K``
shifted, masked copies (no time loop, and XLA fuses it); the step form keeps
the last ``K-1`` inputs in a rolling buffer.

Also here: what the three blocks share besides the convolution: the step-size
bias init (:func:`dt_bias_init`) and its field checks, and Mamba-2's head
sizes, per-head ``A`` init and gated RMSNorm (Mamba-2 and Hydra).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer
from seqjax.mixers.common import check_int, dense, param, segment_runs, uniform_init
from seqjax.ops.common import accum_dtype
from seqjax.types import SegmentIds

ConvWeight = Float[Array, "k d"]
ConvBuffer = Float[Array, "b k d"]


def _check(name, x, weight, bias):
    if weight.ndim != 2 or weight.shape[1] != x.shape[-1] or weight.shape[0] < 1:
        raise ValueError(
            f"{name}: weight must be (kernel, channels) = (K, {x.shape[-1]}), got {weight.shape}"
        )
    if bias is not None and bias.shape != (x.shape[-1],):
        raise ValueError(f"{name}: bias must be (channels,) = ({x.shape[-1]},), got {bias.shape}")


def _shift(x, offset):
    """``out[:, t] = x[:, t + offset]``, zero where ``t + offset`` is outside."""
    length = x.shape[1]
    if offset == 0:
        return x
    if abs(offset) >= length:
        return jnp.zeros_like(x)
    pad = [(0, 0)] * x.ndim
    if offset < 0:
        pad[1] = (-offset, 0)
        return jnp.pad(x[:, : length + offset], pad)
    pad[1] = (0, offset)
    return jnp.pad(x[:, offset:], pad)


def short_conv(
    x: Float[Array, "b l d"],
    weight: ConvWeight,
    bias: Float[Array, "d"] | None = None,
    *,
    segment_ids: SegmentIds | None = None,
    causal: bool = True,
) -> Float[Array, "b l d"]:
    """Depthwise short convolution, causal or centered, that stops at segment boundaries.

    Args:
      x: ``(b, l, c)`` input.
      weight: ``(K, c)`` taps; tap ``K-1`` (causal) or ``K//2`` (centered)
        multiplies the current position.
      bias: ``(c,)`` or None.
      segment_ids: optional ``(b, l)`` ids; inputs from another segment are
        treated as zeros.
      causal: True for the causal form, False for the centered one (``K``
        must then be odd, so that the window is symmetric).

    Returns:
      ``(b, l, c)`` in the accumulation dtype of ``x`` and ``weight`` (at least
      float32); the caller casts.
    """
    if x.ndim != 3:
        raise ValueError(f"short_conv: x must be (batch, length, channels), got {x.shape}")
    _check("short_conv", x, weight, bias)
    kernel = weight.shape[0]
    if not causal and kernel % 2 == 0:
        raise ValueError(f"short_conv: a centered convolution needs an odd kernel size, got {kernel}")
    if segment_ids is not None and segment_ids.shape != x.shape[:2]:
        raise ValueError(
            f"short_conv: segment_ids {segment_ids.shape} must be (batch, length) = {x.shape[:2]}"
        )
    dtype = accum_dtype(x.dtype, weight.dtype)
    x = x.astype(dtype)
    w = weight.astype(dtype)
    first = -(kernel - 1) if causal else -(kernel // 2)
    runs = None if segment_ids is None else segment_runs(segment_ids, *x.shape[:2])
    y = jnp.zeros_like(x) if bias is None else jnp.broadcast_to(bias.astype(dtype), x.shape)
    for k in range(kernel):
        offset = first + k
        term = _shift(x, offset)
        if runs is not None and offset != 0:
            # Out-of-range positions are already zero; the -1 fill never matches a run.
            same = _shift(runs + 1, offset) - 1 == runs
            term = jnp.where(same[..., None], term, 0)
        y = y + w[k] * term
    return y


def init_conv_buffer(batch_size: int, kernel: int, channels: int, dtype) -> ConvBuffer:
    """Zero rolling buffer for :func:`short_conv_step`: the last ``K-1`` inputs.

    Args:
      batch_size: number of sequences.
      kernel: ``K``.
      channels: ``c``.
      dtype: dtype of the stored inputs.

    Returns:
      ``(batch_size, K-1, c)`` zeros (zeros = "before the sequence").
    """
    return jnp.zeros((batch_size, kernel - 1, channels), dtype)


def short_conv_step(
    x_t: Float[Array, "b d"],
    buffer: ConvBuffer,
    weight: ConvWeight,
    bias: Float[Array, "d"] | None = None,
) -> tuple[Float[Array, "b d"], ConvBuffer]:
    """One position of the causal :func:`short_conv`, from a rolling buffer.

    Args:
      x_t: ``(b, c)`` input at the current position.
      buffer: ``(b, K-1, c)`` previous inputs, oldest first (from
        :func:`init_conv_buffer` or a previous step).
      weight: ``(K, c)`` taps.
      bias: ``(c,)`` or None.

    Returns:
      ``(y_t, buffer)``: ``(b, c)`` output in the accumulation dtype and the
      buffer shifted by one (``x_t`` appended, in the buffer's dtype).
    """
    if x_t.ndim != 2:
        raise ValueError(f"short_conv_step: x_t must be (batch, channels), got {x_t.shape}")
    _check("short_conv_step", x_t[:, None], weight, bias)
    kernel = weight.shape[0]
    expected = (x_t.shape[0], kernel - 1, x_t.shape[1])
    if buffer.shape != expected:
        raise ValueError(f"short_conv_step: buffer must be (b, K-1, c) = {expected}, got {buffer.shape}")
    dtype = accum_dtype(x_t.dtype, weight.dtype)
    window = jnp.concatenate([buffer.astype(dtype), x_t.astype(dtype)[:, None]], axis=1)
    w = weight.astype(dtype)
    # Same terms in the same order as short_conv (elementwise, no matmul whose
    # precision the backend may lower), so step and parallel agree to rounding.
    y = jnp.zeros_like(window[:, 0]) if bias is None else jnp.broadcast_to(bias.astype(dtype), window[:, 0].shape)
    for k in range(kernel):
        y = y + w[k] * window[:, k]
    return y, window[:, 1:].astype(buffer.dtype)


# --- the step-size bias ---------------------------------------------------------------


def dt_bias_init(dt_min: float, dt_max: float, floor: float):
    """Bias whose softplus is a step ``Δ`` log-uniform on ``[dt_min, dt_max]``.

    Mamba's init (kept by Mamba-2 and Hydra): ``Δ = exp(U[log dt_min, log
    dt_max])`` clamped below at ``floor``, stored as its inverse softplus
    ``Δ + log(-expm1(-Δ))`` so that ``softplus(bias) = Δ`` at init.
    """

    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, jnp.float32)
        dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = jnp.maximum(dt, floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init


def check_dt_range(name: str, dt_min: float, dt_max: float, floor: float) -> None:
    """Raises ConfigError unless ``0 < dt_min <= dt_max`` and ``dt_init_floor > 0``."""
    for field, value in (("dt_min", dt_min), ("dt_max", dt_max), ("dt_init_floor", floor)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ConfigError(f"{name}.{field}={value!r} must be a number > 0")
    if dt_min > dt_max:
        raise ConfigError(f"{name}.dt_min={dt_min!r} must be <= {name}.dt_max={dt_max!r}")


# --- Mamba-2's heads, A init and gated RMSNorm (Mamba-2 and Hydra) ---------------------------

# The Mamba-2 code's head dimension; smaller widths take the largest divisor.
PAPER_HEADDIM = 64
RMS_EPS = 1e-5


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
    check_int(name, "headdim", headdim)
    if d_in % headdim:
        raise ConfigError(f"{name}.headdim={headdim!r} must divide d_inner = expand * d_model = {d_in}")
    return headdim


def check_groups(name: str, heads: int, ngroups: int) -> None:
    """Raises ConfigError unless ``ngroups`` divides the number of heads."""
    check_int(name, "ngroups", ngroups)
    if heads % ngroups:
        raise ConfigError(f"{name}.ngroups={ngroups!r} must divide the {heads} heads (d_inner / headdim)")


def check_a_range(name: str, a_range) -> None:
    """Raises ConfigError unless ``A_init_range = (low, high)`` with ``0 < low <= high``."""
    ok = isinstance(a_range, (tuple, list)) and len(a_range) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in a_range)
    if not ok or not 0 < a_range[0] <= a_range[1]:
        raise ConfigError(f"{name}.A_init_range={a_range!r} must be (low, high) with 0 < low <= high")


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


class SSDBlock(Mixer):
    """The fields and head sizes that Mamba-2 and Hydra share (not registered).

    Attributes:
      d_state: ``n``, the SSD state per head and group.
      d_conv: taps of the short convolution.
      expand: ``d_in = expand·d_model``.
      headdim: ``p``; None takes the largest divisor of ``d_in`` that is at most 64.
      ngroups: ``g``, groups sharing ``B``/``C``; divides the heads.
      A_init_range: the ``U[low, high]`` of ``A = -exp(A_log)``'s magnitude.
      dt_min: smallest initial step.
      dt_max: largest initial step.
      dt_init_floor: lower clamp of the initial step.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.ssd`.
    """

    ssm_params = ("A_log", "dt_bias")
    ops = ("ssd",)
    values_index = 0  # x (b, l, h, p), the post-conv activations

    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int | None = None
    ngroups: int = 1
    A_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    chunk_size: int = 64

    def check_fields(self):
        name = self.mixer_name
        for field in ("d_state", "d_conv", "expand", "chunk_size"):
            check_int(name, field, getattr(self, field))
        check_a_range(name, self.A_init_range)
        check_dt_range(name, self.dt_min, self.dt_max, self.dt_init_floor)
        check_int(name, "ngroups", self.ngroups)
        if self.d_model is not None:
            self.dims(self.d_model)

    def ssd_parts(self, d: int, directions: int) -> dict:
        """The parameters both blocks have, for ``directions`` SSDs (1: Mamba-2, 2: Hydra).

        Call from the subclass's ``@nn.compact`` ``parts``. The input projection
        gives ``z``, ``x``, each direction's ``B, C`` and ``dt``; ``A``, ``D`` and
        ``dt_bias`` are per head, shared by the directions.
        """
        d_in, h, _, g, n = self.dims(d)
        conv_dim = d_in + 2 * directions * g * n
        bound = 1.0 / math.sqrt(self.d_conv)
        dt_init = dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor)
        return {
            "in_proj": dense(d_in + conv_dim + directions * h, ("embed", "mlp"), dtype=self.dtype, name="in_proj"),
            "conv_weight": param(self, "conv_weight", uniform_init(bound), (self.d_conv, conv_dim), (None, "mlp")),
            "conv_bias": param(self, "conv_bias", uniform_init(bound), (conv_dim,), ("mlp",)),
            "dt_bias": param(self, "dt_bias", dt_init, (h,), ("heads",)),
            "A_log": param(self, "A_log", a_log_init(*self.A_init_range), (h,), ("heads",)),
            "D": param(self, "D", nn.initializers.ones_init(), (h,), ("heads",)),
            "norm": param(self, "norm", nn.initializers.ones_init(), (d_in,), ("mlp",)),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj"),
        }

    def dims(self, d: int) -> tuple[int, int, int, int, int]:
        """``(d_in, h, p, g, n)`` for width ``d``."""
        d_in = self.expand * d
        p = head_dim(self.mixer_name, d_in, self.headdim)
        check_groups(self.mixer_name, d_in // p, self.ngroups)
        return d_in, d_in // p, p, self.ngroups, self.d_state
