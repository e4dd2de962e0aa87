"""Small helpers shared by the ops: impl validation, padding, dtypes, segments."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def check_impl(op: str, impl: str, allowed: Sequence[str]) -> None:
    """Raises a ValueError naming the op, the bad value and the allowed ones.

    Args:
      op: name of the op, for the message (e.g. ``"linear_scan"``).
      impl: the value the caller passed.
      allowed: the implementations this op has.
    """
    if impl not in allowed:
        raise ValueError(
            f"{op}: impl={impl!r} is not one of {', '.join(map(repr, allowed))}"
        )


def platform() -> str:
    """The platform of the default backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    return jax.default_backend()


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


def varying_axes(x) -> frozenset:
    """The manual mesh axes over which ``x`` varies (empty outside ``shard_map``).

    Inside ``jax.shard_map`` with ``check_vma=True`` every value carries the set
    of mesh axes along which it may differ between devices; outside it, or with
    ``check_vma=False``, the set is empty.

    Args:
      x: an array or tracer.

    Returns:
      A frozenset of axis names.
    """
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)  # jax >= 0.9: ManualAxisType
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def match_vma(tree, *refs):
    """Marks ``tree``'s leaves as varying over every mesh axis the ``refs`` vary over.

    A loop carry initialised from constants (zeros, ``-inf``) is device-
    invariant, while the loop body mixes in device-varying inputs; inside
    ``shard_map`` the carry types must match, so constants are cast to varying
    first. A no-op outside ``shard_map``.

    Args:
      tree: a pytree of arrays (the constants).
      *refs: pytrees of arrays whose varying axes the result must cover.

    Returns:
      ``tree`` with each leaf cast (``lax.pcast(..., to="varying")``) as needed.
    """
    want = frozenset().union(*(varying_axes(r) for r in jax.tree.leaves(refs)))
    if not want:
        return tree

    def cast(x):
        missing = tuple(sorted(want - varying_axes(x)))
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree)
