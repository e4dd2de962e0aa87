"""Helpers shared by the ops (and the mixers): accumulation dtypes, padding, segments."""

import jax
import jax.numpy as jnp


def accum_dtype(*dtypes) -> jnp.dtype:
    """The dtype to accumulate in: the inputs' common dtype, at least float32.

    Low-precision inputs (bfloat16, float16) are accumulated in float32; float64
    and complex inputs keep their precision.

    Args:
      *dtypes: dtypes of the inputs.

    Returns:
      The accumulation dtype.
    """
    return jnp.result_type(jnp.float32, *dtypes)


def pad_axis(x: jax.Array, multiple: int, axis: int, value=0) -> jax.Array:
    """Pads ``x`` at the end of ``axis`` up to a multiple of ``multiple``.

    Args:
      x: the array.
      multiple: the size that the padded axis must be a multiple of.
      axis: the axis to pad.
      value: the fill value.

    Returns:
      ``x`` unchanged when already a multiple, else the padded array.
    """
    size = x.shape[axis]
    extra = -size % multiple
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def segment_starts(segment_ids: jax.Array, reverse: bool = False) -> jax.Array:
    """Marks the positions where a new segment begins (in scan order).

    Args:
      segment_ids: ``(b, l)`` integer ids; a change of id starts a new segment.
      reverse: when True, marks the positions that start a segment for a scan
        running from the end (i.e. where the *next* id differs).

    Returns:
      ``(b, l)`` boolean array; position 0 (or ``l-1`` when reversed) is never
      marked, since the initial state applies there.
    """
    if segment_ids.ndim != 2:
        raise ValueError(
            f"segment_ids must have shape (batch, length), got {segment_ids.shape}"
        )
    change = segment_ids[:, 1:] != segment_ids[:, :-1]
    # Built from segment_ids, not `change`, which is empty when length == 1.
    false = jnp.zeros_like(segment_ids[:, :1], dtype=bool)
    if reverse:
        return jnp.concatenate([change, false], axis=1)
    return jnp.concatenate([false, change], axis=1)


def segment_runs(segment_ids: jax.Array) -> jax.Array:
    """Run index of each position: 0 in the first segment, +1 at every segment start.

    Segments are maximal runs of equal ids (a *change* of id starts a new one),
    so an id reused later in the row is still a new segment. Two positions
    belong to the same packed sequence iff their run indices agree.

    Args:
      segment_ids: ``(b, l)`` integer ids.

    Returns:
      ``(b, l)`` int32 run indices.
    """
    return jnp.cumsum(segment_starts(segment_ids), axis=1, dtype=jnp.int32)
