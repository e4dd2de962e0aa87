"""Helpers every mixer family shares: input checks, segments, projections, inits, field checks.

Nothing here belongs to one family. The family files import from here (and
from ``seqjax.ops``), never from each other's private helpers.
"""

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqjax.errors import ConfigError
from seqjax.ops.common import accum_dtype, segment_runs as _runs, segment_starts
from seqjax.types import SegmentIds

# --- input checks ----------------------------------------------------------------------


def check_input(name: str, x: jax.Array, segment_ids: SegmentIds | None = None) -> None:
    """Validates a mixer input ``x: (b, l, d)`` and its ``segment_ids: (b, l)``.

    Args:
      name: the mixer, for the message.
      x: the input.
      segment_ids: optional ids.
    """
    if x.ndim != 3:
        raise ValueError(f"{name}: x must have shape (batch, length, d_model), got {x.shape}")
    if segment_ids is not None and tuple(jnp.shape(segment_ids)) != x.shape[:2]:
        raise ValueError(
            f"{name}: segment_ids has shape {jnp.shape(segment_ids)}; expected (batch, length) = {x.shape[:2]}")


def check_step_input(name: str, x_t: jax.Array) -> None:
    """Validates one position ``x_t: (b, d)`` for ``step``."""
    if x_t.ndim != 2:
        raise ValueError(f"{name}.step: x_t must have shape (batch, d_model), got {x_t.shape}")


# --- field checks (ConfigError: "<mixer>.<field>=<value> ..., allowed: ...") ----------------


def check_int(name: str, field: str, value, *, minimum: int = 1, optional: bool = False) -> None:
    """Raises ConfigError unless ``value`` is an int ``>= minimum`` (or None when ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = f"an int >= {minimum}" + (" or None" if optional else "")
        raise ConfigError(f"{name}.{field}={value!r} must be {what}")


def check_number(name: str, field: str, value, *, low: float | None = None, high: float | None = None,
                 open_low: bool = False) -> None:
    """Raises ConfigError unless ``value`` is a number in the given range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if open_low else '>='} {low}")
        if high is not None:
            bounds.append(f"<= {high}")
        raise ConfigError(f"{name}.{field}={value!r} must be a number {' and '.join(bounds)}".rstrip())


def check_option(name: str, field: str, value, allowed: Sequence) -> None:
    """Raises ConfigError unless ``value`` is one of ``allowed``."""
    if value not in tuple(allowed):
        raise ConfigError(f"{name}.{field}={value!r} is not allowed; allowed: {', '.join(map(repr, allowed))}")


def check_divides(name: str, field: str, value: int, total: int, what: str) -> int:
    """Raises ConfigError unless the int ``value`` divides ``total``; returns ``total // value``."""
    check_int(name, field, value)
    if total % value:
        raise ConfigError(f"{name}.{field}={value!r} must divide {what}={total}")
    return total // value


# --- segments and positions -------------------------------------------------------------


def segment_runs(segment_ids: SegmentIds | None, batch: int, length: int) -> jax.Array:
    """Run index of each position: 0, 0, 1, 1, 1, 2, ... (zeros without segments).

    A new segment starts wherever the id changes, so ids that repeat later in a
    row (``0, 0, 1, 0``) still give separate segments; pass these run indices
    (not the raw ids) to ops that compare ids.

    Args:
      segment_ids: ``(b, l)`` integer ids, or None (one segment per row).
      batch: ``b``.
      length: ``l``.

    Returns:
      ``(b, l)`` int32 run indices.
    """
    if segment_ids is None:
        return jnp.zeros((batch, length), jnp.int32)
    return _runs(jnp.asarray(segment_ids))


def positions_in_segment(segment_ids: SegmentIds | None, batch: int, length: int) -> jax.Array:
    """Each position's offset from the start of its segment (0 at every start).

    Args:
      segment_ids: ``(b, l)`` integer ids, or None.
      batch: ``b``.
      length: ``l``.

    Returns:
      ``(b, l)`` int32: ``t - start(t)``; ``t`` itself without segments.
    """
    t = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if segment_ids is None:
        return t
    start = jax.lax.cummax(jnp.where(segment_starts(jnp.asarray(segment_ids)), t, 0), axis=1)
    return t - start


def same_segment(segment_ids: SegmentIds | None, batch: int, length: int) -> jax.Array:
    """``(b, l, l)`` booleans: positions ``t`` and ``s`` are in the same packed sequence."""
    runs = segment_runs(segment_ids, batch, length)
    return runs[:, :, None] == runs[:, None, :]


# --- projections and dtypes ----------------------------------------------------------------


class Dense(nn.Dense):
    """``nn.Dense`` that multiplies ``(..., d_in)`` inputs as one ``(rows, d_in)`` matrix.

    Same parameters and results as ``nn.Dense``. For the kernel's gradient of
    a dot over ``(b, l, d_in)`` inputs, XLA:CPU first transposes the whole
    ``(b, l, d_out)`` cotangent into a ``(d_out, b·l)`` copy; with the leading
    axes merged it contracts them in place. Forward and backward of one
    projection at ``(16, 1024, 64) -> 256`` took 11 instead of 24 ms
    (``4 -> 128``, Mamba's ``dt_proj``: 1.2 instead of 4.2), and the LRA
    train steps of issue 13 (width 64, 2 layers, length 1024, batch 16) went
    368 -> 299 ms (Mamba) and 174 -> 140 ms (S4D) (JAX 0.10.2, the same on
    0.11.2; minimum of 12 alternating steps, idle 2-core VM, 2026-12-06).
    Under a context mesh (:func:`seqjax.parallel.rules.activate`) the leading
    axes stay apart: merging a ``length`` axis split over devices into the
    batch would make XLA reshard the activations.

    Attributes:
      (those of ``flax.linen.Dense``: features, use_bias, dtype, param_dtype,
      kernel_init, bias_init, ...).
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if jnp.ndim(inputs) <= 2 or not jax.sharding.get_abstract_mesh().empty:
            return super().__call__(inputs)
        lead = jnp.shape(inputs)[:-1]
        y = super().__call__(jnp.reshape(inputs, (-1, jnp.shape(inputs)[-1])))
        return y.reshape(lead + y.shape[-1:])


def dense(
    features: int,
    axes: Sequence[str | None],
    *,
    use_bias: bool = False,
    dtype=jnp.float32,
    name: str | None = None,
    kernel_init=nn.initializers.lecun_normal(),
) -> Dense:
    """A float32-parameter :class:`Dense` whose kernel carries logical axis names.

    Parameters carry logical axis names (``embed``, ``heads``, ``mlp``,
    ``state``, ...) so that ``seqjax.parallel`` can map them to mesh axes;
    without a mesh the names are inert metadata.

    Args:
      features: output width.
      axes: logical names of the kernel's (input, output) axes.
      use_bias: add a bias (named after the output axis).
      dtype: compute dtype.
      name: submodule name.
      kernel_init: initializer of the kernel.

    Returns:
      The Dense module (not yet bound).
    """
    return Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(kernel_init, tuple(axes)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)),
        name=name,
    )


def complex_dtype(dtype) -> jnp.dtype:
    """The complex accumulation dtype for a compute dtype (complex64 at least)."""
    return jnp.result_type(accum_dtype(dtype), jnp.complex64)


def as_complex(p: jax.Array, dtype) -> jax.Array:
    """A ``(..., 2)`` real parameter as a complex array of real dtype ``dtype``."""
    p = p.astype(dtype)
    return jax.lax.complex(p[..., 0], p[..., 1])


def split_complex(z):
    """A complex array as real ``(..., 2)`` parts (the storage of complex parameters)."""
    xp = np if isinstance(z, np.ndarray) else jnp  # init-time constants stay NumPy float64
    return xp.stack([xp.real(z), xp.imag(z)], axis=-1)


# --- initialisers ------------------------------------------------------------------------


def constant_init(value):
    """An initializer returning ``value`` broadcast to the requested shape."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.broadcast_to(jnp.asarray(value, dtype), shape)

    return init


def uniform_init(bound: float):
    """``U(-bound, bound)`` (PyTorch's default init of a conv or linear layer)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def log_uniform_init(low: float, high: float):
    """``log Δ`` uniform on ``[log low, log high]`` (Δ log-uniform, as S4/S5)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, math.log(low), math.log(high))

    return init


def scaled_normal_init(scale: float):
    """``N(0, scale²)``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) * scale

    return init


def param(module: nn.Module, name: str, init, shape, axes: Sequence[str | None]) -> jax.Array:
    """``module.param`` with logical axis names, float32."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), shape, jnp.float32)


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x·Φ(x) = x (1 + erf(x / √2)) / 2`` (PyTorch's ``nn.GELU()``), in ``x``'s dtype.

    The same function as ``jax.nn.gelu(x, approximate=False)``, which goes
    through ``erfc(-x / √2)``: XLA:CPU evaluates that piecewise and runs it
    1.6-1.8x slower with gradients (2026-12-06, 2 cores, ``(16, 1024, 256)``
    float32: forward 7.2 -> 4.6 ms, gradient 11.3 -> 6.2 ms; ``(128, 22,
    256)``: 1.6 -> 0.7 / 1.8 -> 1.5 ms). The two agree to 1.5e-6 absolute in
    float32 over ``|x| <= 10``, gradients to 6e-7; for ``x`` far below 0 the
    erf form rounds the tiny output (``x Φ(x)`` < 1e-7 |x|) to zero where the
    erfc form keeps its relative precision, which no layer here relies on.

    Args:
      x: any shape, a float dtype.

    Returns:
      ``gelu(x)``, same shape and dtype.
    """
    return x * (1 + jax.lax.erf(x * np.asarray(math.sqrt(0.5), x.dtype))) * np.asarray(0.5, x.dtype)


# The flash-linear-attention code's epsilon of the q/k L2 normalisation.
L2_EPS = 1e-6


def l2_normalize(x: jax.Array, eps: float = L2_EPS) -> jax.Array:
    """``x / sqrt(|x|² + eps)`` over the last axis.

    Args:
      x: ``(..., n)``.
      eps: keeps the gradient finite at ``x = 0``.

    Returns:
      ``x`` scaled to (nearly) unit norm, same shape and dtype.
    """
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def head_rms_norm(o: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm of each head's ``(…, h, dv)`` output with a ``(dv,)`` weight shared by the heads.

    Returns:
      ``(…, h, dv)``: ``o / sqrt(mean(o²) + eps) · weight`` over each head.
    """
    return o * jax.lax.rsqrt(jnp.mean(o * o, axis=-1, keepdims=True) + eps) * weight.astype(o.dtype)


__all__ = [
    "L2_EPS", "l2_normalize", "head_rms_norm",
    "check_input", "check_step_input", "check_int", "check_number", "check_option", "check_divides",
    "segment_runs", "positions_in_segment", "same_segment", "dense", "complex_dtype", "as_complex",
    "split_complex", "constant_init", "uniform_init", "log_uniform_init", "scaled_normal_init", "param",
]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_batch(x: jax.Array, batch: int) -> jax.Array:
    """``x`` repeated along a new leading (batch) axis; its gradient sums that axis as a product.

    The transpose of a broadcast is a sum over the new axis. XLA:CPU in
    jaxlib 0.10 (what Python 3.11 gets) runs a sum over a short leading axis
    with 64K or more kept elements 20–150× slower than the same sum written
    as ``ones @ g`` (measured 2026-12-05: ``(32, 4, 320, 320)`` 120 ms against
    1.4 ms; jaxlib 0.11 takes 2.4 ms either way). A per-head ``(L, L)`` bias
    or weight added to a batch of scores meets exactly that sum in its
    backward.

    Args:
      x: any array (e.g. ``(h, L, L)``).
      batch: size of the new leading axis.

    Returns:
      ``(batch,) + x.shape``.
    """
    return jnp.broadcast_to(x[None], (batch,) + x.shape)


def _broadcast_batch_fwd(x, batch):
    return broadcast_batch(x, batch), None


def _broadcast_batch_bwd(batch, _, g):
    ones = jnp.ones((batch,), g.dtype)
    total = jnp.matmul(ones, g.reshape(batch, -1), precision=jax.lax.Precision.HIGHEST)
    return (total.reshape(g.shape[1:]),)


broadcast_batch.defvjp(_broadcast_batch_fwd, _broadcast_batch_bwd)
