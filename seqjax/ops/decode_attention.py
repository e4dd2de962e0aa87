"""Single-query attention against a KV cache (flash-decoding, split-KV).

In autoregressive decoding each sequence adds one query per step, so the work is
one row of attention over a long cache. Looping over the cache serially leaves
the machine idle; flash-decoding instead cuts the cache into ``num_splits``
chunks, computes each chunk's partial
:class:`~seqjax.ops.online_softmax.SoftmaxState` in parallel (a ``vmap``), and
combines them with the one :func:`~seqjax.ops.online_softmax.merge` (a
log-depth tree). The result equals the last row of causal attention over each
sequence's valid prefix of the cache.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from seqjax.ops import online_softmax as osm
from seqjax.ops.common import accum_dtype, pad_axis
from seqjax.ops.flash import resolve_window
from seqjax.types import DecodeQuery, KVCache


def decode_attention(
    q: DecodeQuery,
    k_cache: KVCache,
    v_cache: Float[Array, "b s hk v"],
    *,
    lengths: Int[Array, "b"] | None = None,
    num_splits: int = 4,
    window: int | tuple[int, int] | None = None,
    scale: float | jax.Array | None = None,
) -> Float[Array, "b h v"]:
    """Attention of one new query per sequence over its KV cache.

    Args:
      q: ``(b, h, dk)`` the new query of each sequence (already written into the
        cache at position ``lengths - 1`` when it attends to itself).
      k_cache: ``(b, s, hk, dk)`` cached keys; ``hk`` divides ``h`` and query
        head ``i`` uses key/value head ``i // (h // hk)``.
      v_cache: ``(b, s, hk, dv)`` cached values.
      lengths: ``(b,)`` ints in ``[0, s]``: the query sees cache positions
        ``< lengths`` (default: all ``s``). A length of 0 outputs 0.
      num_splits: number of cache chunks processed in parallel (need not divide
        ``s``; capped at ``s``).
      window: as in :func:`~seqjax.ops.attention.attention` with
        ``causal=True``, relative to the query's position ``lengths - 1``: an int
        ``w`` keeps positions ``> lengths - 1 - w``; a tuple ``(left, right)``
        keeps positions ``>= lengths - 1 - left``.
      scale: score scale, ``dk ** -0.5`` by default.

    Returns:
      ``(b, h, dv)`` in ``q``'s dtype.
    """
    q, k_cache, v_cache = jnp.asarray(q), jnp.asarray(k_cache), jnp.asarray(v_cache)
    b, h, dk, s, hk, dv = _check_shapes(q, k_cache, v_cache)
    if not isinstance(num_splits, int) or isinstance(num_splits, bool) or num_splits < 1:
        raise ValueError(f"decode_attention: num_splits must be a positive int, got {num_splits!r}")
    left, _ = resolve_window(window, causal=True)
    if lengths is None:
        lengths = jnp.full((b,), s, jnp.int32)
    lengths = jnp.asarray(lengths)
    if lengths.shape != (b,):
        raise ValueError(
            f"decode_attention: lengths must have shape (b,)=({b},), got {lengths.shape}")
    if scale is None:
        scale = dk**-0.5

    g = h // hk
    dtype = accum_dtype(q.dtype, k_cache.dtype, v_cache.dtype)
    num_splits = min(num_splits, s)
    chunk = -(-s // num_splits)
    # Chunks of ceil(s / num_splits) may cover s in fewer splits (s=5, 4 splits
    # -> chunks of 2 -> 3 splits): use that many, so padding to a multiple of
    # chunk gives exactly num_splits * chunk positions.
    num_splits = -(-s // chunk)
    # Padded positions are >= s >= lengths, so hidden.
    kc = pad_axis(k_cache, chunk, axis=1).reshape(b, num_splits, chunk, hk, dk)
    vc = pad_axis(v_cache, chunk, axis=1).reshape(b, num_splits, chunk, hk, dv)
    qg = q.reshape(b, hk, g, dk)
    last = lengths - 1

    def split_state(ks, vs, start):
        scores = jnp.einsum("bhgd,bchd->bhgc", qg, ks, preferred_element_type=dtype) * scale
        pos = start + jnp.arange(chunk)
        vis = pos[None, :] < lengths[:, None]
        if left is not None:
            vis = vis & (last[:, None] - pos[None, :] <= left)
        # values (b, hk, 1, c, dv): shared by the g query heads of a kv head.
        values = vs.transpose(0, 2, 1, 3)[:, :, None]
        return osm.from_scores(scores, values, vis[:, None, None, :])

    states = jax.vmap(split_state, in_axes=(1, 1, 0))(kc, vc, jnp.arange(num_splits) * chunk)
    out = osm.finalize(_merge_all(states))
    return out.reshape(b, h, dv).astype(q.dtype)


def _merge_all(states: osm.SoftmaxState) -> osm.SoftmaxState:
    """Merges a stack of states along axis 0 as a balanced tree (log depth)."""
    while states.m.shape[0] > 1:
        n = states.m.shape[0]
        half = n // 2
        first = jax.tree.map(lambda x: x[:half], states)
        second = jax.tree.map(lambda x: x[half:2 * half], states)
        merged = osm.merge(first, second)
        if n % 2:
            rest = jax.tree.map(lambda x: x[2 * half:], states)
            merged = jax.tree.map(lambda a, r: jnp.concatenate([a, r]), merged, rest)
        states = merged
    return jax.tree.map(lambda x: x[0], states)


def _check_shapes(q, k_cache, v_cache):
    if q.ndim != 3:
        raise ValueError(f"decode_attention: q must have shape (b, h, dk), got {q.shape}")
    if k_cache.ndim != 4 or v_cache.ndim != 4:
        raise ValueError(
            "decode_attention: k_cache and v_cache must have shapes (b, s, hk, dk) and "
            f"(b, s, hk, dv), got {k_cache.shape} and {v_cache.shape}")
    b, h, dk = q.shape
    if k_cache.shape[0] != b or v_cache.shape[0] != b:
        raise ValueError(
            f"decode_attention: batch sizes differ: q {q.shape}, k_cache {k_cache.shape}, "
            f"v_cache {v_cache.shape}")
    _, s, hk, dk_k = k_cache.shape
    if dk_k != dk:
        raise ValueError(
            f"decode_attention: key dim of k_cache {k_cache.shape} (dk={dk_k}) must equal "
            f"that of q {q.shape} (dk={dk})")
    if v_cache.shape[1:3] != (s, hk):
        raise ValueError(
            f"decode_attention: v_cache {v_cache.shape} must have k_cache's length and heads "
            f"(b, {s}, {hk}, dv)")
    if h % hk != 0:
        raise ValueError(
            f"decode_attention: query heads h={h} (q {q.shape}) must be a multiple of "
            f"key/value heads hk={hk} (k_cache {k_cache.shape})")
    if s == 0:
        raise ValueError(f"decode_attention: empty cache {k_cache.shape}")
    return b, h, dk, s, hk, v_cache.shape[3]
