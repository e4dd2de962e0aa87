"""Mamba-1's selective scan (S6): an input-dependent diagonal state-space model.

For every channel ``d`` and state index ``n`` (Gu & Dao 2023, Algorithm 2; the
semantics of ``mamba_ssm``'s ``selective_scan_ref``)::

    Δ_t       = softplus(delta_t + delta_bias)       (bias and softplus optional)
    Ā_t       = exp(Δ_t A)                            (b, l, d, n)
    B̄u_t      = Δ_t u_t B_t                           (B shared by a group of channels)
    h_t       = Ā_t ⊙ h_{t-1} + B̄u_t,   h_{-1} = 0
    y_t       = Σ_n C_t[n] h_t[:, n]  (+ D u_t)  (⊙ silu(z_t))

The state tensor ``h`` is ``n`` times larger than the input (``n = 16`` in
Mamba), which is what the implementations differ on:

  * ``"reference"``: materialises ``Ā``, ``B̄u`` and ``h`` as full
    ``(b, l, d, n)`` tensors and runs them through :func:`linear_scan`; plain
    autodiff. Simple, but its forward and backward memory is O(b·l·d·n).
  * ``"chunked"``: a ``lax.scan`` over chunks of ``chunk_size`` positions that
    only ever holds one chunk's ``(b, chunk, d, n)`` states, with a
    ``jax.custom_vjp`` whose forward saves only the chunk-boundary states
    ``(b, l/chunk, d, n)`` and whose backward recomputes each chunk's states and
    runs the adjoint recurrence chunk by chunk in reverse. Memory
    O(b·chunk·d·n + b·(l/chunk)·d·n) plus the O(b·l·d) inputs and outputs.
    Inside a chunk the recurrences are :func:`linear_scan` calls, so they are
    sequential on CPU and associative (parallel) on accelerators.
  * ``"sequential"``: the same memory plan (chunk-boundary states saved, the
    backward recomputes one chunk at a time) with one ``lax.scan`` step per
    position over a ``(b, n, d)`` state: no ``(b, chunk, d, n)`` tensor is
    written in the forward, and the backward's per-chunk reverse scan reduces
    every gradient in the step that produces the adjoint, so only the
    recomputed states ``(chunk, b, n, d)`` are ever stored. A large batch
    runs in blocks of rows whose state has about ``STATE_BLOCK`` elements,
    one block after another, so that the state stays in cache. The CPU path:
    the per-position sums over ``n`` and over the channels are contractions
    (einsum), the decays a short polynomial (:mod:`seqjax.ops.fast_exp`), a
    call without segments skips the reset mask, and each chunk is sliced and
    put back in place rather than transposing whole inputs; at every size in
    ``benchmarks/results/vm-cpu-paths*.json`` its forward is 1.4-10x faster
    than the other two and its forward+backward 2-8x faster than
    ``"chunked"``'s. On accelerators one step per position is a long chain
    of small kernels, which is what ``"chunked"`` avoids.
  * ``"pallas"``: the kernels of :mod:`seqjax.kernels.selective_scan` (GPU for
    ``n <= 16``, TPU; interpreted, slowly, on CPU).
  * ``"auto"``: ``"sequential"`` on CPU; ``"pallas"`` on TPU
    (``docs/kernels.md``; on an H200 its forward+backward was 0.77x
    ``"chunked"``'s); elsewhere ``"reference"`` while
    ``b·l·d·n <= 2**19``, else ``"chunked"`` (the rows of
    :data:`seqjax.ops.dispatch.AUTO_TABLE`; see :func:`auto_impl` for the
    numbers).

Groups: ``B`` and ``C`` may be ``(b, l, n)`` (shared by all channels) or
``(b, l, g, n)``: the ``d`` channels are split into ``g`` contiguous groups and
channel ``i`` uses group ``i // (d // g)``. Internally channels are viewed as
``(g, d // g)`` so that ``B``/``C`` broadcast over a group without being copied.

Segments: where ``segment_ids`` changes, the state restarts from zero, so
packed sequences give exactly what separate runs give.

Sequence parallelism: ``sequence_axis=`` (inside ``jax.shard_map``, the length
split over that mesh axis) runs :func:`seqjax.ops.selective_scan_sp.selective_scan_sp`
(registered with the front door, :mod:`seqjax.ops.dispatch`): local scans plus
one all-gather of per-shard (decay product, final state) pairs.

Registered implementations take ``fn(u, dt, A, B, C, segment_ids, chunk_size)
-> (y, last_state)`` with ``dt`` after bias and softplus, ``B, C`` as ``(b, l,
g, n)``, all in the accumulation dtype; ``D`` and the gate are the caller's.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.ops import dispatch
from seqjax.ops.collectives import match_vma
from seqjax.ops.common import accum_dtype, pad_axis, segment_starts, sum_by_halves
from seqjax.ops.fast_exp import LOG2_E, exp2
from seqjax.ops.linear_scan import linear_scan
from seqjax.types import SegmentIds, SelA, SelBC, SelInput, SelState

DEFAULT_CHUNK = 64
# "sequential" runs the batch in blocks of rows whose (rows, n, d) state holds
# about this many elements (128 KiB in float32), so that the handful of state-sized
# arrays each backward step touches stay in a core's L2 cache; see _row_blocks.
STATE_BLOCK = 2**15

_HI = lax.Precision.HIGHEST


def selective_scan(
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
    segment_ids: SegmentIds | None = None,
    return_last_state: bool = False,
    impl: str = "auto",
    chunk_size: int = DEFAULT_CHUNK,
    sequence_axis: str | None = None,
) -> SelInput | tuple[SelInput, SelState]:
    """Mamba-1's selective scan (S6).

    Args:
      u: inputs, ``(b, l, d)``.
      delta: step sizes before bias/softplus, ``(b, l, d)``.
      A: state matrix (diagonal per channel), ``(d, n)``, real (negative in
        practice, so that ``Ā = exp(Δ A)`` is a decay).
      B: input projections, ``(b, l, n)`` shared by all channels, or
        ``(b, l, g, n)`` with the channels split into ``g`` contiguous groups.
      C: output projections, same shape as ``B``.
      D: skip connection, ``(d,)``; adds ``D * u`` to the output.
      z: gate, ``(b, l, d)``; the output is multiplied by ``silu(z)``.
      delta_bias: ``(d,)``, added to ``delta`` before the softplus.
      delta_softplus: apply ``softplus`` to ``delta (+ delta_bias)``.
      segment_ids: ``(b, l)`` integers; where the id changes from one position
        to the next, the state restarts from zero.
      return_last_state: also return the state after the last position.
      impl: one of ``"auto"``, ``"reference"``, ``"chunked"``,
        ``"sequential"``, ``"pallas"``; ``"auto"`` runs ``"sequential"`` on
        CPU, ``"pallas"`` on TPU, elsewhere
        ``"reference"`` while ``b*l*d*n <= 2**19`` and ``"chunked"`` above
        (see :func:`auto_impl`).
      chunk_size: positions per chunk for ``"chunked"`` and ``"sequential"``
        (the states saved for the backward pass are those entering each chunk).
      sequence_axis: sequence parallelism. When set, this call must run inside
        ``jax.shard_map`` with the length axis of ``u, delta, B, C, z`` (and
        ``segment_ids``) split contiguously over the mesh axis of this name
        (``A, D, delta_bias`` replicated over it); ``y`` is then the local
        shard and ``last_state`` the global one. See
        :func:`seqjax.ops.selective_scan_sp.selective_scan_sp`.

    Returns:
      ``y`` of shape ``(b, l, d)`` in ``u``'s dtype; with ``return_last_state``,
      ``(y, last_state)`` where ``last_state`` is ``(b, d, n)`` in the
      accumulation dtype (float32, or float64 for float64 inputs).
    """
    dispatch.check("selective_scan", impl)
    if sequence_axis is not None:
        return dispatch.sequence_parallel("selective_scan")(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, axis_name=sequence_axis,
            segment_ids=segment_ids, return_last_state=return_last_state, impl=impl,
            chunk_size=chunk_size)
    u, delta, A, B, C = map(jnp.asarray, (u, delta, A, B, C))
    D, z, delta_bias = (None if x is None else jnp.asarray(x) for x in (D, z, delta_bias))
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
    check_shapes(u, delta, A, B, C, D, z, delta_bias, segment_ids, chunk_size)
    impl = auto_impl(impl, u.shape, A.shape[1])
    optional = [x.dtype for x in (D, z, delta_bias) if x is not None]
    dtype = accum_dtype(u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype, *optional)

    uf = u.astype(dtype)
    dt = delta.astype(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.astype(dtype)
    if delta_softplus:
        dt = jax.nn.softplus(dt)
    # (b, l, n) is the one-group case of (b, l, g, n).
    Bg = (B if B.ndim == 4 else B[:, :, None]).astype(dtype)
    Cg = (C if C.ndim == 4 else C[:, :, None]).astype(dtype)
    Af = A.astype(dtype)

    y, last = dispatch.implementation("selective_scan", impl)(uf, dt, Af, Bg, Cg, segment_ids, chunk_size)

    if D is not None:
        y = y + uf * D.astype(dtype)
    if z is not None:
        y = y * jax.nn.silu(z.astype(dtype))
    y = y.astype(u.dtype)
    return (y, last) if return_last_state else y


def auto_impl(impl: str, shape: tuple[int, int, int], n: int) -> str:
    """The implementation a call runs: ``impl``, or the ``auto`` table's pick for its size.

    The table (:data:`seqjax.ops.dispatch.AUTO_TABLE`): ``"sequential"`` on
    CPU; ``"pallas"`` on TPU (a row added by :mod:`seqjax.kernels.selective_scan`;
    on an H200 the kernel's forward+backward was slower than ``"chunked"``,
    so GPUs take the XLA rows); otherwise it reads the state size
    ``b*l*d*n``: ``"reference"`` up to 2**19 state elements (2 MiB per float32
    state tensor), else ``"chunked"``.

    Measured on the shared 2-core development CPU (jit, forward /
    forward+backward in ms with gradients for all eight inputs and
    ``delta_softplus``; the minimum of 4 interleaved medians of 5 calls;
    ``chunk_size=64``, n = 16; the last two rows from
    ``benchmarks/cpu_paths.py``, 3 rounds of 3, on a nearly idle machine)::

        b, l, d        b*l*d*n   reference      chunked        sequential
        2, 64, 32       2**16    0.27 / 0.70    0.24 / 0.63    0.08 / 0.27
        2, 128, 32      2**17    0.61 / 1.41    0.49 / 1.58    0.15 / 0.47
        2, 128, 64      2**18    0.93 / 2.64    0.66 / 2.73    0.21 / 1.07
        2, 256, 64      2**19    1.60 / 5.81    1.38 / 6.49    0.47 / 2.30
        2, 512, 64      2**20    4.10 / 21.3    3.17 / 13.1    0.98 / 4.57
        2, 1024, 256    2**23    55.0 / 165     19.3 / 70.6    6.66 / 33.1
        16, 1024, 128   2**25    227 / 660      81.6 / 635     29.5 / 168

    ``"sequential"`` wins everywhere on CPU. The one-step-per-position scan
    keeps the ``(b, n, d)`` state in cache; ``"chunked"`` writes
    ``(b, chunk, d, n)`` tensors of decays, inputs and states (several times
    over in its backward), and ``"reference"`` writes a dozen ``(b, l, d, n)``
    tensors, which fall out of cache past ~2**19 elements. The last row is
    Mamba's at LRA scale (width 64, expand 2, batch 16). Where the Pallas
    kernel does not apply (GPU with ``n > 16``) the rows keep ``"reference"``
    up to 2**19 and ``"chunked"`` above (associative scans inside chunks). The
    timings were taken on a shared, loaded machine (noise of +-50%); the
    ratios are what counts.

    Args:
      impl: the requested implementation.
      shape: ``u``'s ``(b, l, d)``.
      n: the state size.

    Returns:
      A registered implementation name.
    """
    batch, length, d = shape
    return dispatch.resolve("selective_scan", impl, state=batch * length * d * n, n=n)


def check_shapes(u, delta, A, B, C, D, z, delta_bias, segment_ids, chunk_size) -> None:
    """Raises a ValueError naming the first argument of ``selective_scan`` with a bad shape or dtype."""
    name = "selective_scan"
    if u.ndim != 3:
        raise ValueError(f"{name}: u must be (batch, length, d), got shape {u.shape}")
    batch, length, d = u.shape
    if length < 1:
        raise ValueError(f"{name}: u must have length >= 1, got shape {u.shape}")
    if delta.shape != u.shape:
        raise ValueError(f"{name}: delta {delta.shape} must have u's shape {u.shape}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"{name}: z {z.shape} must have u's shape {u.shape}")
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"{name}: A must be (d, n) = ({d}, n), got shape {A.shape}")
    n = A.shape[1]
    for label, x in (("A", A), ("u", u), ("delta", delta), ("B", B), ("C", C)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name}: {label} must be a real floating array, got {x.dtype}")
    if B.ndim == 3:
        expected = f"(batch, length, n) = ({batch}, {length}, {n})"
        ok = B.shape == (batch, length, n)
    elif B.ndim == 4:
        expected = f"(batch, length, g, n) = ({batch}, {length}, g, {n})"
        ok = B.shape[:2] == (batch, length) and B.shape[3] == n
    else:
        expected, ok = f"(batch, length, n) or (batch, length, g, n) with n = {n}", False
    if not ok:
        raise ValueError(f"{name}: B must be {expected}, got shape {B.shape}")
    if C.shape != B.shape:
        raise ValueError(f"{name}: C {C.shape} must have B's shape {B.shape}")
    if B.ndim == 4 and (B.shape[2] < 1 or d % B.shape[2]):
        raise ValueError(
            f"{name}: the number of groups g = {B.shape[2]} (B {B.shape}) must divide d = {d}"
        )
    for label, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and x.shape != (d,):
            raise ValueError(f"{name}: {label} must be (d,) = ({d},), got shape {x.shape}")
    if segment_ids is not None and segment_ids.shape != (batch, length):
        raise ValueError(
            f"{name}: segment_ids {segment_ids.shape} must be (batch, length) = {(batch, length)}"
        )
    if chunk_size < 1:
        raise ValueError(f"{name}: chunk_size must be >= 1, got {chunk_size}")


# --- "reference": the full (b, l, d, n) state through linear_scan -------------


@dispatch.register("selective_scan", "reference")
def _reference(u, dt, A, B, C, segment_ids, chunk_size):
    del chunk_size
    d, groups = u.shape[2], B.shape[2]
    Bd = jnp.repeat(B, d // groups, axis=2)  # (b, l, d, n)
    Cd = jnp.repeat(C, d // groups, axis=2)
    dA = jnp.exp(dt[..., None] * A)
    dBu = (dt * u)[..., None] * Bd
    h, last = linear_scan(dA, dBu, segment_ids=segment_ids)
    y = jnp.einsum("bldn,bldn->bld", h, Cd, precision=_HI)
    return y, last


def _keep(segment_ids, batch, length, dtype):
    """``(b, l)``: 0 at a segment start, which cuts the chain (Ā_t := 0 there), else 1."""
    if segment_ids is None:
        return jnp.ones((batch, length), dtype)
    return 1 - segment_starts(segment_ids).astype(dtype)


# --- "chunked": chunk-by-chunk scan with a recomputing custom_vjp -------------


@dispatch.register("selective_scan", "chunked")
def _chunked(u, dt, A, B, C, segment_ids, chunk_size):
    batch, length, d = u.shape
    groups, n = B.shape[2], B.shape[3]
    chunk = min(chunk_size, length)
    keep = _keep(segment_ids, batch, length, u.dtype)
    # Channels as (g, d/g) so that B and C broadcast over a group for free.
    shape = (batch, length, groups, d // groups)
    u4, dt4, A3 = u.reshape(shape), dt.reshape(shape), A.reshape(groups, d // groups, n)
    # Padding with Δ = 0 (Ā = 1, B̄u = 0) and keep = 1 leaves the state unchanged,
    # so the last state is still the state at position length-1.
    u4, dt4, B, C = (pad_axis(x, chunk, axis=1) for x in (u4, dt4, B, C))
    keep = pad_axis(keep, chunk, axis=1, value=1)
    y, last = _chunked_core(u4, dt4, A3, B, C, keep, chunk)
    return y[:, :length].reshape(batch, length, d), last.reshape(batch, d, n)


def _to_chunks(x, chunk):
    # (b, L, ...) -> (L/chunk, b, chunk, ...): chunks leading, for lax.scan.
    x = x.reshape((x.shape[0], x.shape[1] // chunk, chunk) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _from_chunks(x):
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def _chunk_states(u, dt, A, B, keep, h_in):
    """One chunk's decays and states: (b, T, g, e, n) each, e = d/g."""
    dA = jnp.exp(dt[..., None] * A) * keep[:, :, None, None, None]
    dBu = (dt * u)[..., None] * B[:, :, :, None, :]
    h, _ = linear_scan(dA, dBu, h_in)
    return dA, h


def _chunked_forward(u, dt, A, B, C, keep, chunk):
    batch, _, groups, e = u.shape
    # Inside shard_map the carry must vary over the mesh axes the inputs do.
    h0 = match_vma(jnp.zeros((batch, groups, e, A.shape[-1]), u.dtype), u, dt, A, B, C, keep)

    def body(h_in, xs):
        u_c, dt_c, B_c, C_c, keep_c = xs
        _, h = _chunk_states(u_c, dt_c, A, B_c, keep_c, h_in)
        y = jnp.einsum("btgen,btgn->btge", h, C_c, precision=_HI)
        return h[:, -1], (y, h_in)

    xs = tuple(_to_chunks(x, chunk) for x in (u, dt, B, C, keep))
    last, (y, h_starts) = lax.scan(body, h0, xs)
    return _from_chunks(y), last, h_starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _chunked_core(u, dt, A, B, C, keep, chunk):
    y, last, _ = _chunked_forward(u, dt, A, B, C, keep, chunk)
    return y, last


def _chunked_core_fwd(u, dt, A, B, C, keep, chunk):
    y, last, h_starts = _chunked_forward(u, dt, A, B, C, keep, chunk)
    # Only the state entering each chunk, (L/chunk, b, g, e, n), is saved.
    return (y, last), (u, dt, A, B, C, keep, h_starts)


def _chunked_core_bwd(chunk, res, cts):
    u, dt, A, B, C, keep, h_starts = res
    gy, g_last = cts

    def body(carry, xs):
        # mu: dL/dh at this chunk's last position from everything after it.
        mu, gA = carry
        u_c, dt_c, B_c, C_c, keep_c, gy_c, h_in = xs
        dA, h = _chunk_states(u_c, dt_c, A, B_c, keep_c, h_in)
        # Adjoint: lam_t = C_t gy_t + Ā_{t+1} lam_{t+1}, entering with mu.
        direct = gy_c[..., None] * C_c[:, :, :, None, :]
        a_next = jnp.concatenate([dA[:, 1:], jnp.ones_like(dA[:, :1])], axis=1)
        lam, _ = linear_scan(a_next, direct, mu, reverse=True)
        h_prev = jnp.concatenate([h_in[:, None], h[:, :-1]], axis=1)
        # dL/d(Δ A) through Ā = keep * exp(Δ A): lam * h_{t-1} * Ā.
        g_dtA = lam * h_prev * dA
        lam_B = jnp.einsum("btgen,btgn->btge", lam, B_c, precision=_HI)
        g_u = lam_B * dt_c
        g_dt = lam_B * u_c + jnp.einsum("btgen,gen->btge", g_dtA, A, precision=_HI)
        g_B = jnp.einsum("btgen,btge->btgn", lam, dt_c * u_c, precision=_HI)
        g_C = jnp.einsum("btgen,btge->btgn", h, gy_c, precision=_HI)
        gA = gA + jnp.einsum("btgen,btge->gen", g_dtA, dt_c, precision=_HI)
        mu = dA[:, 0] * lam[:, 0]
        return (mu, gA), (g_u, g_dt, g_B, g_C)

    xs = tuple(_to_chunks(x, chunk) for x in (u, dt, B, C, keep, gy)) + (h_starts,)
    (_, gA), grads = lax.scan(body, (g_last, jnp.zeros_like(A)), xs, reverse=True)
    g_u, g_dt, g_B, g_C = (_from_chunks(x) for x in grads)
    return g_u, g_dt, gA, g_B, g_C, jnp.zeros_like(keep)


_chunked_core.defvjp(_chunked_core_fwd, _chunked_core_bwd)


# --- "sequential": one lax.scan step per position, chunk states checkpointed ---


@dispatch.register("selective_scan", "sequential")
def _sequential(u, dt, A, B, C, segment_ids, chunk_size):
    batch, length, d = u.shape
    groups = B.shape[2]
    chunk = min(chunk_size, length)
    keep = _keep(segment_ids, batch, length, u.dtype)
    # The state is laid out (b, n, d), channels last, so that the elementwise
    # work and the sums over n run along the wide axis; B and C become
    # (b, l, n, g), or (b, l, n) for one group: a size-1 axis in the per-step
    # arrays made XLA:CPU's loop body ~10x slower (measured, b=16, d=128).
    Bn, Cn = (jnp.swapaxes(x, 2, 3) for x in (B, C))
    if groups == 1:
        Bn, Cn = Bn[..., 0], Cn[..., 0]
    # Padding with Δ = 0 (Ā = 1, B̄u = 0) and keep = 1 leaves the state unchanged,
    # so the last state is still the state at position length-1.
    u, dt, Bn, Cn = (pad_axis(x, chunk, axis=1) for x in (u, dt, Bn, Cn))
    keep = pad_axis(keep, chunk, axis=1, value=1)
    segmented, At = segment_ids is not None, A.T
    rows = _row_blocks(batch, A.size)
    if rows == batch:
        y, last = _seq_core(u, dt, At, Bn, Cn, keep, chunk, segmented)
    else:
        # Blocks of rows one after another; padded rows (all zeros: Δ = 0, so
        # their state stays zero whatever keep says) are cut from the outputs.
        def split(x):
            x = pad_axis(x, rows, axis=0)
            return x.reshape((-1, rows) + x.shape[1:])

        y, last = lax.map(lambda xs: _seq_core(xs[0], xs[1], At, *xs[2:], chunk, segmented),
                          tuple(split(x) for x in (u, dt, Bn, Cn, keep)))
        y, last = (x.reshape((-1,) + x.shape[2:])[:batch] for x in (y, last))
    return y[:, :length], jnp.swapaxes(last, 1, 2)


def _row_blocks(batch, state_per_row):
    """Rows per block of ``"sequential"``: ``batch`` (one block) or about ``STATE_BLOCK / (n·d)``.

    Blocking pays on a loaded machine (presumably because the other jobs
    evict the cache between time slices): with a training run sharing the 2 CPU cores,
    forward+backward at (b, l, d, n) = (128, 22, 128, 16) went 42 -> 23 ms
    with 16-row blocks, (128, 64, 128, 16) 146 -> 100 ms and (16, 1024, 256,
    16) 449 -> 379 ms with 8. On an idle VM it is neutral (1.06x at length 22,
    0.95x at length 256; ``benchmarks/results/vm-cpu-paths.json``). Blocks of
    one row are not used: a size-1 axis in the per-step arrays made the loop
    ~3x slower (301 vs 97 ms at (4, 256, 1024, 16) for 1- against 2-row
    blocks).
    """
    rows = STATE_BLOCK // state_per_row
    if rows < 2 or rows >= batch:
        return batch
    blocks = -(-batch // rows)
    return -(-batch // blocks)  # the fewest padded rows for that many blocks


def _per_channel(x, d):
    """A position's ``B`` or ``C``, (b, n) or (b, n, g), broadcastable to (b, n, d)."""
    if x.ndim == 2:
        return x[:, :, None]
    return jnp.repeat(x, d // x.shape[-1], axis=-1)


def _sum_n(x, BC):
    """``Σ_n x[b, n, i] BC[b, n(, group of i)]``: (b, d), for ``x`` (b, n, d).

    A contraction rather than a product and a sum: XLA:CPU runs it without
    writing the (b, n, d) product, which made the backward ~25% faster."""
    if BC.ndim == 2:
        return jnp.einsum("bnd,bn->bd", x, BC, precision=_HI)
    groups = BC.shape[-1]
    xg = x.reshape(x.shape[:2] + (groups, -1))
    return jnp.einsum("bngc,bng->bgc", xg, BC, precision=_HI).reshape(x.shape[0], -1)


def _sum_d(x, v, groups):
    """``Σ_{i in group} x[b, n, i] v[b, i]``: (b, n) for one group, else (b, n, g)."""
    if groups == 1:
        return jnp.einsum("bnd,bd->bn", x, v, precision=_HI)
    xg = x.reshape(x.shape[:2] + (groups, -1))
    return jnp.einsum("bngc,bgc->bng", xg, v.reshape(v.shape[0], groups, -1), precision=_HI)


def _groups(B):
    return 1 if B.ndim == 3 else B.shape[-1]


def _step_decay(dt_t, A2, keep_t, segmented):
    """Ā_t = keep_t * 2**(Δ_t A2) = keep_t * exp(Δ_t A) at one position: (b, n, d), for
    ``A2 = A * LOG2_E``; :func:`seqjax.ops.fast_exp.exp2` (its docstring has the
    gain). Without segments ``keep`` is all ones and its product is skipped."""
    decay = exp2(dt_t[:, None] * A2)
    return decay * keep_t[:, None, None] if segmented else decay


def _chunk(x, i, chunk):
    """Chunk ``i`` of ``x`` (b, L, ...) as (chunk, b, ...), time leading for the inner scan.

    Slicing and transposing one chunk at a time keeps the transpose in cache;
    transposing whole (b, L, d) inputs and outputs to time-major cost ~10% of a
    Mamba train step on CPU (measured, b=16, l=1024, d=128)."""
    return jnp.moveaxis(lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=1), 1, 0)


def _put(buf, x, i, chunk):
    """``buf`` (b, L, ...) with chunk ``i`` replaced by ``x`` (chunk, b, ...)."""
    return lax.dynamic_update_slice_in_dim(buf, jnp.moveaxis(x, 0, 1).astype(buf.dtype), i * chunk, axis=1)


def _seq_forward(u, dt, A, B, C, keep, chunk, segmented):
    # One step per position: the state (b, n, d) stays in cache and no
    # (b, chunk, d, n) tensor is ever written (on CPU the materialised per-chunk
    # Ā, B̄u and h tensors cost more memory traffic than the exps themselves).
    batch, length, d = u.shape
    # Inside shard_map the carry must vary over the mesh axes the inputs do.
    h0, y0 = match_vma((jnp.zeros((batch,) + A.shape, u.dtype), jnp.zeros_like(u)), u, dt, A, B, C, keep)
    A2 = A * LOG2_E

    def step(h, xs):
        u_t, dt_t, B_t, C_t, keep_t = xs
        h = _step_decay(dt_t, A2, keep_t, segmented) * h + (dt_t * u_t)[:, None] * _per_channel(B_t, d)
        return h, _sum_n(h, C_t)

    def chunk_body(carry, i):
        h_in, y = carry
        h_out, y_c = lax.scan(step, h_in, tuple(_chunk(x, i, chunk) for x in (u, dt, B, C, keep)))
        return (h_out, _put(y, y_c, i, chunk)), h_in

    (last, y), h_starts = lax.scan(chunk_body, (h0, y0), jnp.arange(length // chunk))
    return y, last, h_starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _seq_core(u, dt, A, B, C, keep, chunk, segmented):
    """``(y (b, L, d), last (b, n, d))`` from ``u, dt (b, L, d)``, ``A (n, d)``,
    ``B, C (b, L, n[, g])``, ``keep (b, L)``; ``L`` a multiple of ``chunk``;
    ``segmented`` False when ``keep`` is all ones (no segments)."""
    y, last, _ = _seq_forward(u, dt, A, B, C, keep, chunk, segmented)
    return y, last


def _seq_core_fwd(u, dt, A, B, C, keep, chunk, segmented):
    y, last, h_starts = _seq_forward(u, dt, A, B, C, keep, chunk, segmented)
    # Only the state entering each chunk, (L/chunk, b, n, d), is saved.
    return (y, last), (u, dt, A, B, C, keep, h_starts)


def _seq_core_bwd(chunk, segmented, res, cts):
    # One reverse scan over chunks carrying the state adjoint mu (dL/dh at the
    # chunk's last position from everything after it), dL/dA per batch row and
    # the gradient buffers. Per chunk, one forward pass from the saved entering
    # state recomputes the states h_{t-1} (the only (chunk, b, n, d) tensor) and
    # the gradient of C; one reverse pass runs the adjoint recurrence and reduces
    # the other gradients in the same step, so no other (chunk, b, n, d) tensor
    # exists.
    u, dt, A, B, C, keep, h_starts = res
    gy, g_last = cts
    d, groups = u.shape[-1], _groups(B)
    A2 = A * LOG2_E

    def recompute(h, xs):
        u_t, dt_t, B_t, keep_t, gy_t = xs
        h_next = _step_decay(dt_t, A2, keep_t, segmented) * h + (dt_t * u_t)[:, None] * _per_channel(B_t, d)
        return h_next, (h, _sum_d(h_next, gy_t, groups))

    def adjoint(carry, xs):
        # lam_t = C_t gy_t + Ā_{t+1} lam_{t+1}; mu carries Ā_{t+1} lam_{t+1}.
        mu, gA = carry
        u_t, dt_t, B_t, C_t, keep_t, gy_t, h_prev = xs
        dA = _step_decay(dt_t, A2, keep_t, segmented)
        lam = mu + gy_t[:, None] * _per_channel(C_t, d)
        mu = dA * lam
        # dL/d(Δ A) through Ā = keep * exp(Δ A): lam * Ā * h_{t-1}.
        g_dtA = mu * h_prev
        # Σ_n lam B (for dL/du and dL/dΔ through B̄u) and Σ_n g_dtA A as separate
        # reductions: one stacked reduction was ~25% slower on XLA:CPU (measured,
        # b=16, l=1024, d=128, n=16). The second by halves: jaxlib 0.10's XLA:CPU
        # ran jnp.sum over n as a YNNPACK reduction of its own, ~30 µs a step at
        # (16, 16, 128) in a profile where the fused loop takes ~6; forward+backward
        # (minimum of 15-21 alternating calls, idle 2-core VM, 2026-12-06) went
        # from 87-98 to 84-91 ms at (b, l, d, n) = (16, 1024, 128, 16) over three
        # runs, 23.0-23.8 to 20.9-21.7 ms at (2, 1024, 256, 16).
        sums = (_sum_n(lam, B_t), sum_by_halves(g_dtA * A, axis=1))
        g_B = _sum_d(lam, dt_t * u_t, groups)
        return (mu, gA + g_dtA * dt_t[:, None]), (sums, g_B)

    def chunk_body(carry, xs):
        i, h_in = xs
        mu, gA, (lam_B, dtA_A, g_B, g_C) = carry
        u_c, dt_c, B_c, C_c, keep_c, gy_c = (_chunk(x, i, chunk) for x in (u, dt, B, C, keep, gy))
        _, (h_prev, g_C_c) = lax.scan(recompute, h_in, (u_c, dt_c, B_c, keep_c, gy_c))
        (mu, gA), ((lam_B_c, dtA_A_c), g_B_c) = lax.scan(
            adjoint, (mu, gA), (u_c, dt_c, B_c, C_c, keep_c, gy_c, h_prev), reverse=True)
        bufs = tuple(_put(buf, x, i, chunk) for buf, x in
                     zip((lam_B, dtA_A, g_B, g_C), (lam_B_c, dtA_A_c, g_B_c, g_C_c)))
        return (mu, gA, bufs), None

    init = match_vma((jnp.zeros_like(h_starts[0]), (jnp.zeros_like(u), jnp.zeros_like(u), jnp.zeros_like(B),
                                                    jnp.zeros_like(C))), u, dt, A, B, C, keep, gy, g_last)
    (_, gA, (lam_B, dtA_A, g_B, g_C)), _ = lax.scan(
        chunk_body, (g_last, init[0], init[1]), (jnp.arange(u.shape[1] // chunk), h_starts), reverse=True)
    g_u, g_dt = lam_B * dt, lam_B * u + dtA_A
    return g_u, g_dt, jnp.sum(gA, axis=0), g_B, g_C, jnp.zeros_like(keep)


_seq_core.defvjp(_seq_core_fwd, _seq_core_bwd)
