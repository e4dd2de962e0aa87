"""Sequence-parallel selective scan (Mamba-1 S6) with the length split over a mesh axis.

Called *inside* ``jax.shard_map`` on local shards whose length axis (axis 1) is
split contiguously over the mesh axis ``axis_name`` (``P`` devices; device
``i`` holds positions ``[i n, (i + 1) n)``). The S6 recurrence

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t,      y_t = C_t · h_t

is affine in the state ``h`` ``(b, d, n)``, so a shard acts on the state that
enters it through the pair (decay product ``exp(A Σ_shard Δ)``, its final
state from zero), and the state entering it adds

    y_t += Σ_n C_t[n] exp(A[:, n] cΔ_t) h_start[:, n],   cΔ_t = Σ_{start ≤ s ≤ t} Δ_s

to the outputs (before ``D u`` and the ``silu(z)`` gate). The algorithm:

1. each shard runs :func:`~seqjax.ops.selective_scan.selective_scan` from a zero
   state (any ``impl``) and the prefix sum ``cΔ`` of its step sizes;
2. one ``all_gather`` of the per-shard (decay product, final state), two
   ``(b, d, n)`` arrays per device — the only communication (plus, with
   segments, one ``ppermute`` of ``b`` boundary ids);
3. every device runs the exclusive prefix combine over the ``P`` pairs, picks
   the state entering its shard, and adds the correction above. The same
   combine gives the global final state on every device.

Memory: the correction needs ``exp(A cΔ_t)`` per position, a ``(b, n_loc, d,
n)`` tensor. It is built one chunk of ``chunk_size`` positions at a time in a
``lax.scan`` whose body is rematerialised (``jax.checkpoint``), so neither the
forward nor the backward pass holds more than ``(b, chunk, d, n)`` of it; with
``impl="reference"`` (which materialises the full states anyway) it is one
einsum over the whole shard.

Gradients are plain autodiff through these steps (the local scan has its own
``custom_vjp``; the all_gather transposes to a reduce-scatter; the replicated
``A``, ``D`` and ``delta_bias`` get the sum of the per-device gradients).

Segments: a segment start cuts the carry (shard boundaries included; whether a
shard's first position starts a segment is decided from the previous shard's
last id, :func:`~seqjax.ops.collectives.global_segment_starts`).
"""

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.ops import dispatch
from seqjax.ops.collectives import before_first_start, combine_shards, global_segment_starts, match_vma
from seqjax.ops.common import accum_dtype, pad_axis
from seqjax.ops.selective_scan import auto_impl, check_shapes, selective_scan
from seqjax.types import SegmentIds, SelA, SelBC, SelInput, SelState

_HI = lax.Precision.HIGHEST


@dispatch.register_sequence_parallel("selective_scan")
def selective_scan_sp(
    u: SelInput,
    delta: SelInput,
    A: SelA,
    B: SelBC,
    C: SelBC,
    D: jax.Array | None = None,
    z: SelInput | None = None,
    delta_bias: jax.Array | None = None,
    delta_softplus: bool = False,
    *,
    axis_name: str,
    segment_ids: SegmentIds | None = None,
    return_last_state: bool = False,
    impl: str = "auto",
    chunk_size: int = 64,
) -> SelInput | tuple[SelInput, SelState]:
    """``selective_scan`` over a sequence split across the devices of ``axis_name``.

    Must be called inside ``jax.shard_map`` with the length axis of ``u``,
    ``delta``, ``B``, ``C``, ``z`` (and ``segment_ids``) split contiguously over
    ``axis_name``; ``A``, ``D`` and ``delta_bias`` are replicated over it.

    Args:
      u, delta, A, B, C, D, z, delta_bias, delta_softplus, segment_ids: as in
        :func:`seqjax.ops.selective_scan`, with local lengths.
      axis_name: the mesh axis that splits the length.
      return_last_state: also return the *global* final state (after the
        global last position), the same on every device of ``axis_name``.
      impl: the ``selective_scan`` implementation of the local scans (``"auto"``
        decides from the local size).
      chunk_size: chunk length of the local ``"chunked"`` scan and of the
        chunk loop that builds the correction.

    Returns:
      The local ``y`` ``(b, n_loc, d)`` in ``u``'s dtype; with
      ``return_last_state``, ``(y, last_state)`` with the global
      ``(b, d, n)`` final state in the accumulation dtype.
    """
    u, delta, A, B, C = map(jnp.asarray, (u, delta, A, B, C))
    D, z, delta_bias = (None if x is None else jnp.asarray(x) for x in (D, z, delta_bias))
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
    check_shapes(u, delta, A, B, C, D, z, delta_bias, segment_ids, chunk_size)
    optional = [x.dtype for x in (D, z, delta_bias) if x is not None]
    dtype = accum_dtype(u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype, *optional)
    batch, length, d = u.shape
    n = A.shape[-1]
    impl = auto_impl(impl, u.shape, n)
    # 1. The local scan from zero, without D and the gate (the correction comes
    # first). u in the accumulation dtype, so y comes back unrounded. A is
    # cast to varying: the local scan's custom_vjp returns a per-device dA, and
    # the cast's transpose sums it over the devices.
    A_v = match_vma(A, u, delta, B, C)
    y, last_local = selective_scan(
        u.astype(dtype), delta, A_v, B, C, delta_bias=delta_bias, delta_softplus=delta_softplus,
        segment_ids=segment_ids, return_last_state=True, impl=impl, chunk_size=chunk_size)

    dt = delta.astype(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.astype(dtype)
    if delta_softplus:
        dt = jax.nn.softplus(dt)
    # Σ_{start ≤ s ≤ t} Δ_s: a plain prefix sum from the shard's start.
    cdt = jnp.cumsum(dt, axis=1)  # (b, n_loc, d)
    Af = A.astype(dtype)
    keep = None
    if segment_ids is not None:
        keep = before_first_start(global_segment_starts(segment_ids, axis_name), dtype)  # (b, n_loc)
    decay_total = jnp.exp(cdt[:, -1, :, None] * Af)  # (b, d, n)
    if keep is not None:
        decay_total = decay_total * keep[:, -1, None, None]

    # 2. The only communication, (P, b, d, n) twice, and the prefix over devices.
    h_start, last = combine_shards(decay_total, last_local, jnp.zeros((batch, d, n), dtype), axis_name)
    Cg = (C if C.ndim == 4 else C[:, :, None]).astype(dtype)
    chunk = length if impl == "reference" else min(chunk_size, length)
    corr = _correction(cdt, Af, Cg, h_start, chunk)
    if keep is not None:
        corr = corr * keep[..., None]
    y = y + corr
    if D is not None:
        y = y + u.astype(dtype) * D.astype(dtype)
    if z is not None:
        y = y * jax.nn.silu(z.astype(dtype))
    y = y.astype(u.dtype)
    return (y, last) if return_last_state else y


def _correction(cdt, A, C, h_start, chunk):
    """``Σ_n C_t[g, n] exp(A[:, n] cdt_t) h_start[:, n]`` as ``(b, l, d)``.

    Args:
      cdt: ``(b, l, d)`` prefix sums of the step sizes from the shard's start.
      A: ``(d, n)``.
      C: ``(b, l, g, n)``, channel ``i`` in group ``i // (d // g)``.
      h_start: ``(b, d, n)`` state entering the shard.
      chunk: positions per step of the chunk loop; ``>= l`` is one einsum.

    Returns:
      The ``(b, l, d)`` correction in ``cdt``'s dtype.
    """
    batch, length, d = cdt.shape
    groups, n = C.shape[2:]
    e = d // groups
    A3 = A.reshape(groups, e, n)
    h3 = h_start.reshape(batch, groups, e, n)

    def block(cdt_c, C_c):
        # (b, T, g, e, n) for T positions only.
        decay = jnp.exp(cdt_c.reshape(cdt_c.shape[:2] + (groups, e))[..., None] * A3)
        out = jnp.einsum("btgen,btgn->btge", decay * h3[:, None], C_c, precision=_HI)
        return out.reshape(cdt_c.shape)

    if chunk >= length:
        return block(cdt, C)
    # Padding with zeros adds rows that are cut off again.
    cdt_p, C_p = pad_axis(cdt, chunk, axis=1), pad_axis(C, chunk, axis=1)
    num = cdt_p.shape[1] // chunk
    to_chunks = lambda x: jnp.moveaxis(  # noqa: E731
        x.reshape((batch, num, chunk) + x.shape[2:]), 1, 0)

    def body(_, xs):
        return None, block(*xs)

    # The rematerialised body keeps only its inputs for the backward pass.
    _, out = lax.scan(jax.checkpoint(body), None, (to_chunks(cdt_p), to_chunks(C_p)))
    out = jnp.moveaxis(out, 0, 1).reshape(batch, num * chunk, d)
    return out[:, :length]
