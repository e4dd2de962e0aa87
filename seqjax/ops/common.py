"""Helpers shared by the ops (and the mixers): accumulation dtypes, padding, segments, input checks."""

import functools

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


# Implementations whose matmuls take bfloat16 operands as they come and
# accumulate in float32 (tensor cores, the MXU): a float32 operand costs them
# several passes (split TF32 on GPU, six bf16 passes on TPU at HIGHEST). The
# XLA paths cast every operand to the accumulation dtype instead.
LOW_PRECISION_OPERANDS = ("pallas",)


def operand_dtype(impl: str, accum, *dtypes) -> jnp.dtype:
    """The dtype an op hands its matmul operands (``q, k, v``; ``x, B, C``) to ``impl`` in.

    bfloat16 where every operand is bfloat16 and ``impl`` multiplies in it
    (``LOW_PRECISION_OPERANDS``); otherwise ``accum``, the op's accumulation
    dtype (which also counts its other inputs: a float64 decay makes float64
    operands). Decays, states and outputs stay in ``accum`` either way.

    Args:
      impl: the resolved implementation.
      accum: the op's accumulation dtype (:func:`accum_dtype` of all its inputs).
      *dtypes: dtypes of the operands.

    Returns:
      The operands' dtype.
    """
    if impl in LOW_PRECISION_OPERANDS and all(jnp.dtype(d) == jnp.bfloat16 for d in dtypes):
        return jnp.dtype(jnp.bfloat16)
    return jnp.dtype(accum)


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


def sum_by_halves(x: jax.Array, axis: int) -> jax.Array:
    """``jnp.sum(x, axis)`` as the first half of the axis added to the second, repeatedly.

    Adds of slices fuse with the elementwise work that makes ``x`` into one
    XLA loop, where a ``reduce`` over a short middle axis may run as a
    separate library call (jaxlib 0.10 on CPU): worth it inside a scan's step.
    An odd length's last slice is added at the end.

    Args:
      x: the array.
      axis: the axis to sum over (short: the number of adds is its length - 1).

    Returns:
      ``x`` summed over ``axis`` (the axis removed).
    """
    axis = axis % x.ndim
    rest = []
    while x.shape[axis] > 1:
        half = x.shape[axis] // 2
        if x.shape[axis] % 2:
            rest.append(jax.lax.index_in_dim(x, x.shape[axis] - 1, axis, keepdims=False))
        x = (jax.lax.slice_in_dim(x, 0, half, axis=axis)
             + jax.lax.slice_in_dim(x, half, 2 * half, axis=axis))
    total = jax.lax.index_in_dim(x, 0, axis, keepdims=False)
    for r in rest:
        total = total + r
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def broadcast_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """``x`` repeated ``size`` times along a new axis at ``axis``; its gradient sums that axis by halves.

    Autodiff transposes a broadcast into a ``reduce``, and jaxlib 0.10's
    XLA:CPU runs some reduces as YNNPACK library calls. One of them crashed
    (a segfault inside YNNPACK's transpose, on an AMD EPYC host with AVX2,
    2026-12-07): the gradient of the keys broadcast over the query positions
    in the per-channel-decay linear attention. :func:`sum_by_halves` is slice
    adds that XLA fuses into a loop, with no library call.

    Args:
      x: the array.
      axis: where the new axis goes (``0 <= axis <= x.ndim``).
      size: its length.

    Returns:
      ``x.shape[:axis] + (size,) + x.shape[axis:]``.
    """
    return jnp.broadcast_to(jnp.expand_dims(x, axis), x.shape[:axis] + (size,) + x.shape[axis:])


def _broadcast_axis_fwd(x, axis, size):
    return broadcast_axis(x, axis, size), None


def _broadcast_axis_bwd(axis, size, _, g):
    return (sum_by_halves(g, axis),)


broadcast_axis.defvjp(_broadcast_axis_fwd, _broadcast_axis_bwd)


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


def check_heads_inputs(op: str, q, k, v, floats: dict, per_step: dict) -> tuple[int, int, int, int]:
    """The checks every ``(b, l, h, d)`` recurrence op (``delta_rule``, ``mlstm``) starts with.

    Raises a one-line ValueError naming the first wrong argument: ``q``
    ``(b, l, h, dk)``, ``k`` of q's shape, ``v`` ``(b, l, h, dv)``, ``l >= 1``,
    the arrays of ``floats`` floating point, the arrays of ``per_step`` (None
    skipped) ``(b, l, h)``.

    Args:
      op: the op's name (the messages start with it).
      q, k, v: queries, keys, values.
      floats: ``{name: array}`` that must be floating point (q, k, v are checked too).
      per_step: ``{name: array or None}`` of per-position, per-head scalars.

    Returns:
      ``(b, l, h, dk)``.
    """
    if q.ndim != 4:
        raise ValueError(f"{op}: q must be (b, l, h, dk), got shape {q.shape}")
    batch, length, heads, dk = q.shape
    if k.shape != q.shape:
        raise ValueError(f"{op}: k {k.shape} must have q's shape (b, l, h, dk) = {q.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: v must be (b, l, h, dv) with (b, l, h) = {q.shape[:3]}, got {v.shape}")
    if length < 1:
        raise ValueError(f"{op}: the sequence length must be >= 1, got q {q.shape}")
    for name, x in {"q": q, "k": k, "v": v, **floats}.items():
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{op}: {name} must be floating point, got {x.dtype}")
    for name, x in per_step.items():
        if x is not None and x.shape != (batch, length, heads):
            raise ValueError(f"{op}: {name} {x.shape} must be (b, l, h) = {(batch, length, heads)}")
    return batch, length, heads, dk


def check_segments_and_chunk(op: str, segment_ids, batch: int, length: int, chunk_size) -> None:
    """``segment_ids`` None or ``(b, l)`` integers; ``chunk_size`` a positive int (one-line ValueErrors).

    Args:
      op: the op's name (the messages start with it).
      segment_ids: the op's ``segment_ids``.
      batch, length: ``b``, ``l``.
      chunk_size: the op's ``chunk_size``.
    """
    if segment_ids is not None:
        if segment_ids.shape != (batch, length):
            raise ValueError(f"{op}: segment_ids {segment_ids.shape} must be (b, l) = {(batch, length)}")
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f"{op}: segment_ids must be integers, got {segment_ids.dtype}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")
