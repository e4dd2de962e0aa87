"""Comparison helpers for op tests: relative error against float64 references."""

import numpy as np

# Float32 tolerances on max|actual - expected| / max|expected| (issue 2's bar).
RTOL_SCAN = 1e-4
RTOL_ATTN = 2e-4
# Gradients accumulate more rounding than forward passes.
RTOL_GRAD = 5e-4
# A float64 run of a fast path must match its float64 reference to rounding.
RTOL_F64 = 1e-10


def rel_err(actual, expected) -> float:
    """max|actual - expected| / max(max|expected|, tiny), in float64."""
    actual = np.asarray(actual, dtype=np.complex128 if np.iscomplexobj(actual) else np.float64)
    expected = np.asarray(expected, dtype=np.complex128 if np.iscomplexobj(expected) else np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.max(np.abs(expected), initial=0.0), 1e-30)
    return float(np.max(np.abs(actual - expected), initial=0.0) / scale)


def assert_rel_close(actual, expected, rtol, what=""):
    """Asserts rel_err(actual, expected) <= rtol, with a readable message."""
    err = rel_err(actual, expected)
    assert np.all(np.isfinite(np.asarray(actual))), f"{what}: non-finite values"
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"


def make_mesh(shape, names):
    """An Auto-typed mesh over the first ``prod(shape)`` host devices (conftest gives 8)."""
    import math

    import jax
    from jax.sharding import AxisType

    n = math.prod(shape)
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=jax.devices()[:n])


def outputs_and_grads(fn, args, cotangents, compiler_options=None):
    """``fn``'s outputs and the VJP of ``cotangents`` w.r.t. every argument, in one jit.

    Args:
      fn: the function.
      args: its positional arguments.
      cotangents: a pytree like ``fn``'s outputs.
      compiler_options: XLA options for the jit (e.g. a low optimisation level
        for float64 references that only have to be right).

    Returns:
      ``(outputs, grads)`` with one gradient per argument.
    """
    import jax

    def run(*a):
        out, vjp = jax.vjp(fn, *a)
        return out, vjp(cotangents)

    return jax.jit(run, compiler_options=compiler_options)(*args)


def sp_segment_ids(batch: int, length: int, shard: int) -> np.ndarray:
    """Segment ids that exercise sequence-parallel segment handling (``batch >= 2``).

    Row 0: a start inside shard 0, a segment crossing several shard
    boundaries, then a start exactly on a boundary. Row 1: one start inside a
    later shard (an initial state reaches it through the earlier shards). Ids
    repeat across rows, so only changes matter.
    """
    seg = np.zeros((batch, length), int)
    seg[0, 3:] = 1
    seg[0, 3 * shard:] = 2  # boundary
    seg[1, 2 * shard + 3:] = 1
    return seg
