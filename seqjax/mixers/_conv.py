"""The short depthwise convolution of the Mamba family, segment-aware, with a step form.

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
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

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


def segment_runs(segment_ids: SegmentIds, length: int) -> jax.Array:
    """Index of the segment run at each position: ``cumsum`` of the id changes.

    Args:
      segment_ids: ``(b, l)`` integer ids.
      length: ``l`` (a length-1 row has no change to mark).

    Returns:
      ``(b, l)`` int32; equal values mean "same packed sequence".
    """
    change = (segment_ids[:, 1:] != segment_ids[:, :-1]).astype(jnp.int32)
    zero = jnp.zeros((segment_ids.shape[0], 1), jnp.int32)
    return jnp.cumsum(jnp.concatenate([zero, change], axis=1), axis=1)[:, :length]


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
    runs = None if segment_ids is None else segment_runs(segment_ids, x.shape[1])
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
