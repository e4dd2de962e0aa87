"""First-order linear recurrences: ``h_t = a_t * h_{t-1} + b_t``.

This is the primitive under every diagonal state-space model and linear RNN
(S4D/S5/LRU states, Mamba's selective scan, the chunk states of SSD and of
chunked linear attention). It is elementwise over any trailing axes and works
for real and complex dtypes.

Implementations (``impl``):
  * ``"sequential"``: ``lax.scan`` over time; O(L) steps, no extra memory.
  * ``"associative"``: ``lax.associative_scan`` with the affine-map monoid
    ``(a1, b1) ∘ (a2, b2) = (a1 a2, a2 b1 + b2)``; O(log L) depth, ~2x the flops.
  * ``"chunked"``: associative scan inside chunks of ``chunk_size`` positions
    (vectorised over chunks), then a sequential scan over the chunk carries.
  * ``"pallas"``: the kernel of :mod:`seqjax.kernels.linear_scan` (GPU/TPU;
    interpreted, slowly, on CPU).
  * ``"auto"``: ``"sequential"`` on CPU, where it beats ``"associative"`` by ~3x
    (see ``benchmarks/results``); on GPU and TPU the Pallas kernel (``"pallas"``, registered by :mod:`seqjax.kernels`; ``docs/kernels.md``), else
    ``"associative"``.

Sequence parallelism: ``sequence_axis=`` (inside ``jax.shard_map``, the length
split over that mesh axis) runs :func:`seqjax.ops.linear_scan_sp.linear_scan_sp`
(registered with the front door, :mod:`seqjax.ops.dispatch`): local scans plus
one all-gather of per-shard (decay product, final state) pairs.

Registered implementations (``dispatch.register("linear_scan", name)``) are
*forward* scans ``fn(a, b, h0, chunk_size) -> h`` on full-shape, forward-order,
accumulation-dtype inputs (``a`` broadcast along the length only); the one
``custom_vjp`` below runs the backward pass with the same implementation.

Gradients: all implementations share one ``jax.custom_vjp`` whose backward pass
is the adjoint recurrence — itself a reverse linear scan run with the same
implementation — so the backward pass stores only ``h`` (which the forward pass
returns anyway) and never the intermediate products of the associative tree.
"""

import functools

import jax
import jax.numpy as jnp

from seqjax.ops import dispatch
from seqjax.ops.collectives import match_vma
from seqjax.ops.common import accum_dtype, pad_axis, segment_starts
from seqjax.types import ScanCoeff, ScanState, SegmentIds

DEFAULT_CHUNK = 64


def linear_scan(
    a: ScanCoeff,
    b: ScanCoeff,
    h0: ScanState | None = None,
    *,
    reverse: bool = False,
    segment_ids: SegmentIds | None = None,
    impl: str = "auto",
    chunk_size: int = DEFAULT_CHUNK,
    sequence_axis: str | None = None,
) -> tuple[ScanCoeff, ScanState]:
    """Runs ``h[:, t] = a[:, t] * h[:, t-1] + b[:, t]`` along axis 1.

    Args:
      a: decays, broadcastable to ``b.shape`` with the same number of axes (for
        example ``(b, l, h, 1, 1)`` against ``(b, l, h, p, n)``, or ``(1, 1, n)``
        for a time-invariant decay). Real or complex.
      b: inputs, ``(batch, length, *rest)``.
      h0: initial state, broadcastable to ``(batch, *rest)``; zeros if None.
      reverse: run from the end: ``h[:, t] = a[:, t] * h[:, t+1] + b[:, t]``.
      segment_ids: ``(batch, length)`` integers; where the id changes (in scan
        order) the state restarts from zero, so packed sequences behave as
        separate ones. ``h0`` applies to the first segment only.
      impl: one of ``"auto"``, ``"sequential"``, ``"associative"``, ``"chunked"``, ``"pallas"``.
      chunk_size: chunk length for ``"chunked"``.
      sequence_axis: sequence parallelism. When set, this call must run inside
        ``jax.shard_map`` with the length axis of ``a``, ``b`` (and
        ``segment_ids``) split contiguously over the mesh axis of this name;
        ``h0`` is replicated over it. See :func:`seqjax.ops.linear_scan_sp.linear_scan_sp`.

    Returns:
      ``(h, h_last)``: ``h`` of ``b``'s shape in the inputs' common dtype, and the
      state after the whole scan (``h[:, -1]``, or ``h[:, 0]`` when reversed) in
      the accumulation dtype (at least float32), ready to carry into a next call.
      With ``sequence_axis``, ``h`` is the local shard and ``h_last`` the global
      final state, the same on every device of the axis.
    """
    dispatch.check("linear_scan", impl)
    if sequence_axis is not None:
        return dispatch.sequence_parallel("linear_scan")(
            a, b, h0, axis_name=sequence_axis, reverse=reverse, segment_ids=segment_ids, impl=impl,
            chunk_size=chunk_size)
    a, b, h0 = jnp.asarray(a), jnp.asarray(b), None if h0 is None else jnp.asarray(h0)
    check_shapes(a, b, h0, segment_ids, chunk_size)
    impl = dispatch.resolve("linear_scan", impl)

    out_dtype = jnp.result_type(a, b)
    dtype = accum_dtype(a.dtype, b.dtype, *(() if h0 is None else (h0.dtype,)))
    state_shape = (b.shape[0],) + b.shape[2:]
    # Only the length axis of a is broadcast: a decay shared over state axes
    # (e.g. one per head for a (p, n) state) stays compact in memory and in
    # the backward residuals.
    a = jnp.broadcast_to(a.astype(dtype), a.shape[:1] + b.shape[1:2] + a.shape[2:])
    b = b.astype(dtype)
    h0 = jnp.zeros(state_shape, dtype) if h0 is None else jnp.broadcast_to(h0.astype(dtype), state_shape)
    # Inside shard_map: the scan carry must vary over the mesh axes that a, b
    # do, and the custom_vjp must return gradients typed like its inputs, so a
    # replicated a or h0 (e.g. a time-invariant decay) is cast to varying; the
    # cast's transpose sums its gradient over the devices.
    a, b, h0 = match_vma((a, b, h0), a, b, h0)

    if segment_ids is not None:
        # A segment start cuts the chain: h_t no longer depends on h_{t-1}.
        starts = segment_starts(jnp.asarray(segment_ids), reverse=reverse)
        starts = starts.reshape(starts.shape + (1,) * (b.ndim - 2))
        a = jnp.where(starts, jnp.zeros((), dtype), a)
    if reverse:
        a, b = jnp.flip(a, 1), jnp.flip(b, 1)
    h = _scan(a, b, h0, impl, chunk_size)
    if reverse:
        h = jnp.flip(h, 1)
    h_last = h[:, 0] if reverse else h[:, -1]
    return h.astype(out_dtype), h_last


def check_shapes(a, b, h0, segment_ids, chunk_size) -> None:
    """Raises a ValueError naming the first argument of ``linear_scan`` with a bad shape."""
    if b.ndim < 2:
        raise ValueError(f"linear_scan: b must be (batch, length, ...), got shape {b.shape}")
    if a.ndim != b.ndim or any(x not in (1, y) for x, y in zip(a.shape, b.shape)):
        raise ValueError(
            f"linear_scan: a {a.shape} must have b's rank and broadcast to b {b.shape}"
        )
    if h0 is not None:
        state = (b.shape[0],) + b.shape[2:]
        try:
            jnp.broadcast_shapes(h0.shape, state)
        except ValueError:
            raise ValueError(
                f"linear_scan: h0 {h0.shape} does not broadcast to the state shape {state}"
            ) from None
    if segment_ids is not None and tuple(jnp.shape(segment_ids)) != b.shape[:2]:
        raise ValueError(
            f"linear_scan: segment_ids {jnp.shape(segment_ids)} must be (batch, length) = {b.shape[:2]}"
        )
    if chunk_size < 1:
        raise ValueError(f"linear_scan: chunk_size must be >= 1, got {chunk_size}")


# --- forward implementations (full shapes, accumulation dtype, forward order) --


@dispatch.register("linear_scan", "sequential")
def _sequential(a, b, h0, chunk_size):
    del chunk_size
    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    _, h = jax.lax.scan(step, h0, (jnp.moveaxis(a, 1, 0), jnp.moveaxis(b, 1, 0)))
    return jnp.moveaxis(h, 0, 1)


def _combine(left, right):
    # Composition of affine maps h -> a h + b: first `left`, then `right`.
    a1, b1 = left
    a2, b2 = right
    return a1 * a2, a2 * b1 + b2


@dispatch.register("linear_scan", "associative")
def _associative(a, b, h0, chunk_size):
    del chunk_size
    # Folding h0 into the first input makes the scan start from zero.
    b = b.at[:, 0].add(a[:, 0] * h0)
    _, h = jax.lax.associative_scan(_combine, (a, b), axis=1)
    return h


@dispatch.register("linear_scan", "chunked")
def _chunked(a, b, h0, chunk_size):
    length = b.shape[1]
    chunk = min(chunk_size, length)
    # Padding with a=1, b=0 leaves the carried state unchanged.
    a = pad_axis(a, chunk, axis=1, value=1)
    b = pad_axis(b, chunk, axis=1, value=0)
    batch, padded = b.shape[:2]

    def split(x):
        return x.reshape((x.shape[0], padded // chunk, chunk) + x.shape[2:])

    a_cum, h_local = jax.lax.associative_scan(_combine, (split(a), split(b)), axis=2)
    # Sequential part: the state entering each chunk.
    def step(carry, x):
        a_end, h_end = x
        return a_end * carry + h_end, carry

    _, h_in = jax.lax.scan(
        step, h0, (jnp.moveaxis(a_cum[:, :, -1], 1, 0), jnp.moveaxis(h_local[:, :, -1], 1, 0))
    )
    h = h_local + a_cum * jnp.moveaxis(h_in, 0, 1)[:, :, None]
    return h.reshape((batch, padded) + b.shape[2:])[:, :length]


def _forward(a, b, h0, impl, chunk_size):
    return dispatch.implementation("linear_scan", impl)(a, b, h0, chunk_size)


# --- custom_vjp: the backward pass is the adjoint (reverse) scan -------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _scan(a, b, h0, impl, chunk_size):
    return _forward(a, b, h0, impl, chunk_size)


def _scan_fwd(a, b, h0, impl, chunk_size):
    h = _forward(a, b, h0, impl, chunk_size)
    return h, (a, h, h0)


def _scan_bwd(impl, chunk_size, res, g):
    a, h, h0 = res
    # lam_t = dL/dh_t in total = g_t + a_{t+1} lam_{t+1}: a reverse linear scan.
    # JAX's complex convention is the transpose (no conjugation), so the
    # adjoint uses a itself, not conj(a).
    a_next = jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)
    lam = jnp.flip(
        _forward(jnp.flip(a_next, 1), jnp.flip(g, 1), jnp.zeros_like(h0), impl, chunk_size), 1
    )
    h_prev = jnp.concatenate([h0[:, None], h[:, :-1]], axis=1)
    return _sum_to(lam * h_prev, a.shape), lam, a[:, 0] * lam[:, 0]


def _sum_to(x, shape):
    """Sums x over the axes where ``shape`` broadcasts (size 1), keeping them."""
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, x.shape)) if n == 1 and m != 1)
    return jnp.sum(x, axis=axes, keepdims=True) if axes else x


_scan.defvjp(_scan_fwd, _scan_bwd)
