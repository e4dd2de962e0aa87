"""Softmax attention mixers: full multi-head attention and sliding-window attention.

Both are thin Flax modules over :func:`seqjax.ops.attention` (parallel form)
and :func:`seqjax.ops.decode_attention` (one decoding step against a KV
cache); ``sliding_window`` is ``mha`` with a local window and a ring-buffer
cache. Position schemes (RoPE, ALiBi, learned) live in ``positions.py``.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from seqjax.errors import ConfigError
from seqjax.mixers.common import dense
from seqjax.mixers.positions import (
    LearnedPositions,
    alibi_bias,
    alibi_slopes,
    check_positions,
    positions_in_segment,
    rope,
    segment_runs,
)
from seqjax.mixers._unconverted import check_seq, model_width
from seqjax.mixers.registry import register
from seqjax.ops.common import accum_dtype
from seqjax.ops import dispatch
from seqjax.ops.decode_attention import decode_attention
from seqjax.ops.attention import attention
from seqjax.parallel.sequence import sequence_map
from seqjax.types import SegmentIds, Seq, SeqStep

Cache = dict[str, jax.Array]
HeadMatrix = Float[Array, "b h l l"]
_HIGHEST = jax.lax.Precision.HIGHEST


def head_sizes(
    name: str, d: int, num_heads: int, num_kv_heads: int | None, head_dim: int | None
) -> tuple[int, int, int]:
    """``(h, hk, dh)``: query heads, key/value heads and head dimension, validated.

    Args:
      name: the mixer, for messages.
      d: model width.
      num_heads: query heads ``h``.
      num_kv_heads: key/value heads ``hk`` (None: ``h``); must divide ``h``.
      head_dim: ``dh`` (None: ``d // h``, which then must divide evenly).

    Returns:
      ``(h, hk, dh)``.
    """
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{name}: num_heads must be a positive int, got {num_heads!r}")
    hk = num_heads if num_kv_heads is None else num_kv_heads
    if not isinstance(hk, int) or hk < 1 or num_heads % hk:
        raise ValueError(f"{name}: num_kv_heads={num_kv_heads!r} must be a positive divisor of num_heads={num_heads}")
    if head_dim is None:
        if d % num_heads:
            raise ValueError(
                f"{name}: d_model={d} is not divisible by num_heads={num_heads}; set head_dim explicitly")
        head_dim = d // num_heads
    if not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"{name}: head_dim must be a positive int, got {head_dim!r}")
    return num_heads, hk, head_dim


@register("mha")
class MultiHeadAttention(nn.Module):
    """Multi-head softmax attention (Vaswani et al. 2017) with grouped queries.

    With ``h`` query heads, ``hk`` key/value heads (Ainslie et al. 2023, GQA:
    query head ``i`` reads key/value head ``i // (h/hk)``) of size ``dh``::

        q_t = W_q x̃_t,  k_t = W_k x̃_t,  v_t = W_v x_t     (x̃ = x, or x + E[pos] for learned positions)
        o_t = Σ_s softmax_s(q_t·k_s / √dh + b_ts) v_s       over visible s
        y_t = W_o concat_h(o_t)

    Visible: ``s <= t`` when ``causal``, inside the window for
    ``sliding_window``, and in the same segment. Positions (``positions``):
    ``"rope"`` rotates ``q, k`` (RoFormer), ``"alibi"`` adds
    ``b_ts = -m_h |t - s|`` (Press et al. 2022), ``"learned"`` adds a trained
    table ``E`` to the input of the query and key projections only (positions
    steer where to attend but do not enter the values), ``"none"`` nothing.
    Positions restart at each segment start, so packed sequences equal
    separate runs.

    Mixing matrix (per head): the attention probabilities
    ``P[h, t, s] = softmax_s(...)`` (dense; lower triangular when causal).
    Complexity: training O(l² · d) time and, with ``impl="blockwise"``,
    O(l · d) memory besides the inputs (ALiBi adds an O(h · l²) bias);
    decoding O(l · d) per step with an O(l · hk · dh) KV cache.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      num_heads: query heads ``h`` (4).
      num_kv_heads: key/value heads ``hk`` (None: ``h``; 1 is multi-query).
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      causal: causal (decoder) attention; False is bidirectional and has no ``step``.
      positions: ``"none"``, ``"learned"``, ``"rope"`` (default) or ``"alibi"``.
      rope_base: RoPE's frequency base (10000).
      max_length: size of the learned position table (required for
        ``"learned"``) and the default KV-cache length of ``init_cache``.
      impl: ``impl`` of :func:`seqjax.ops.attention`.
      dtype: compute dtype (and KV-cache dtype); parameters are float32 and the
        softmax accumulates in float32.
      sequence_axis: mesh axis that splits the length (ring attention under a
        context mesh, see :func:`seqjax.parallel.sequence_map`); None: never
        split. Not with ``positions="alibi"`` or a window.
    """

    d_model: int | None = None
    num_heads: int = 4
    num_kv_heads: int | None = None
    head_dim: int | None = None
    causal: bool = True
    positions: str = "rope"
    rope_base: float = 10000.0
    max_length: int | None = None
    impl: str = "auto"
    dtype: Any = jnp.float32
    sequence_axis: str | None = None

    # --- hooks that SlidingWindowAttention overrides --------------------------------

    def _window(self) -> int | None:
        return None

    def _cache_slots(self, max_length: int | None) -> int:
        """Slots of the KV cache: one per position up to ``max_length``."""
        name = self._mixer_name()
        max_length = self.max_length if max_length is None else max_length
        if max_length is None:
            raise ValueError(
                f"{name}: max_length is required for attention's KV cache (one slot per position); "
                "pass init_cache(batch_size, max_length) or set the max_length field")
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"{name}: max_length must be a positive int, got {max_length!r}")
        return max_length

    def _mixer_name(self) -> str:
        return getattr(type(self), "mixer_name", type(self).__name__)

    # --- configuration and parameters -----------------------------------------------

    def _dims(self, d: int) -> tuple[int, int, int]:
        name = self._mixer_name()
        check_positions(name, self.positions)
        dispatch.check("attention", self.impl)
        h, hk, dh = head_sizes(name, d, self.num_heads, self.num_kv_heads, self.head_dim)
        if self.positions == "rope" and dh % 2:
            raise ValueError(f"{name}: positions='rope' needs an even head_dim, got {dh}")
        if self.positions == "learned" and self.max_length is None:
            raise ValueError(f"{name}: positions='learned' needs the max_length field (size of the position table)")
        return h, hk, dh

    @nn.compact
    def _parts(self, d: int) -> dict[str, Any]:
        h, hk, dh = self._dims(d)
        parts = {
            "q_proj": dense(h * dh, ("embed", "heads"), dtype=self.dtype, name="q_proj"),
            "k_proj": dense(hk * dh, ("embed", "heads"), dtype=self.dtype, name="k_proj"),
            "v_proj": dense(hk * dh, ("embed", "heads"), dtype=self.dtype, name="v_proj"),
            "out_proj": dense(d, ("heads", "embed"), dtype=self.dtype, name="out_proj"),
        }
        if self.positions == "learned":
            parts["pos_embedding"] = LearnedPositions(self.max_length, d, name="pos_embedding")
        return parts

    def _check_length(self, length: int) -> None:
        if self.positions == "learned" and length > self.max_length:
            raise ValueError(
                f"{self._mixer_name()}: sequence length {length} exceeds max_length={self.max_length} "
                "(the learned position table); raise the max_length field")

    def _qkv(self, p, x, pos):
        """Projected, position-encoded ``q (b,l,h,dh)``, ``k, v (b,l,hk,dh)``."""
        b, l, d = x.shape
        h, hk, dh = self._dims(d)
        xc = x.astype(self.dtype)
        xqk = xc
        if self.positions == "learned":
            acc = accum_dtype(self.dtype)
            xqk = (xc.astype(acc) + p["pos_embedding"](pos).astype(acc)).astype(self.dtype)
        q = p["q_proj"](xqk).reshape(b, l, h, dh)
        k = p["k_proj"](xqk).reshape(b, l, hk, dh)
        v = p["v_proj"](xc).reshape(b, l, hk, dh)
        if self.positions == "rope":
            q, k = rope(q, pos, self.rope_base), rope(k, pos, self.rope_base)
        return q, k, v

    def _alibi(self, length: int):
        """``(1, h, l, l)`` ALiBi bias (relative, so segment restarts change nothing)."""
        if self.positions != "alibi":
            return None
        t = jnp.arange(length)
        return alibi_bias(alibi_slopes(self.num_heads), t, t)[None]

    def _out(self, p, o):
        """Output projection of ``o (..., h, dh)``."""
        o = o.reshape(o.shape[:-2] + (-1,)).astype(self.dtype)
        return p["out_proj"](o).astype(self.dtype)

    def _prepare(self, x, segment_ids):
        check_seq(self._mixer_name(), x, segment_ids)
        b, l, d = x.shape
        p = self._parts(model_width(self, x))
        self._check_length(l)
        q, k, v = self._qkv(p, x, positions_in_segment(segment_ids, b, l))
        return p, q, k, v

    # --- public API -----------------------------------------------------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """Attention over a whole sequence (the parallel form).

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids of packed sequences; a
            change of id starts a new sequence.
          deterministic: unused (no dropout).

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        del deterministic
        p, q, k, v = self._prepare(x, segment_ids)
        b, l, _ = x.shape
        runs = None if segment_ids is None else segment_runs(segment_ids, b, l)
        window, bias = self._window(), self._alibi(l)
        if self.sequence_axis is not None and (window is not None or bias is not None):
            raise ConfigError(f"{self._mixer_name()}: sequence_axis={self.sequence_axis!r} (ring attention) does not "
                              f"support a window or positions='alibi'; use positions='rope', 'learned' or 'none'")

        def core(axis, q, k, v, runs):
            return attention(q, k, v, causal=self.causal, segment_ids=runs, window=window, bias=bias,
                             impl=self.impl, sequence_axis=axis)

        o = sequence_map(core, self.sequence_axis, (q, k, v, runs), what=self._mixer_name())
        return self._out(p, o)

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> HeadMatrix:
        """The attention probabilities per query head, materialised.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          ``(batch, heads, length, length)`` in the accumulation dtype; row
          ``t`` is the softmax over the keys ``t`` sees (masks and biases
          applied), zero elsewhere.
        """
        _, q, k, _ = self._prepare(x, segment_ids)
        b, l, _ = x.shape
        h, hk, dh = q.shape[2], k.shape[2], q.shape[3]
        acc = accum_dtype(self.dtype)
        k = jnp.repeat(k, h // hk, axis=2)
        s = jnp.einsum("bthd,bshd->bhts", q.astype(acc), k.astype(acc), precision=_HIGHEST) * dh**-0.5
        bias = self._alibi(l)
        if bias is not None:
            s = s + bias.astype(acc)
        t = jnp.arange(l)
        dist = t[:, None] - t[None, :]
        vis = jnp.ones((l, l), bool)
        if self.causal:
            vis = vis & (dist >= 0)
        window = self._window()
        if window is not None:
            vis = vis & (jnp.abs(dist) < window)
        runs = segment_runs(segment_ids, b, l)
        vis = vis[None] & (runs[:, :, None] == runs[:, None, :])
        # Every query sees itself, so no row is empty.
        return jax.nn.softmax(jnp.where(vis[:, None], s, -jnp.inf), axis=-1)

    def apply_mixing_matrix(self, x: Seq, M: HeadMatrix, *, segment_ids: SegmentIds | None = None) -> Seq:
        """Same projections as ``__call__``, mixing the values with the dense ``M``.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: ``(batch, heads, length, length)``, e.g. from :meth:`mixing_matrix`.
          segment_ids: optional ids, validated only (the values carry no
            positions, and ``M`` already holds the masks and biases).

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        p, q, _, v = self._prepare(x, segment_ids)
        b, l, h = q.shape[:3]
        if M.shape != (b, h, l, l):
            raise ValueError(f"{self._mixer_name()}: M must have shape (b, heads, l, l)={(b, h, l, l)}, got {M.shape}")
        acc = accum_dtype(self.dtype)
        v = jnp.repeat(v, h // v.shape[2], axis=2).astype(acc)
        o = jnp.einsum("bhts,bshd->bthd", M.astype(acc), v, precision=_HIGHEST)
        return self._out(p, o)

    def init_cache(self, batch_size: int, max_length: int | None = None) -> Cache:
        """An empty KV cache.

        Args:
          batch_size: number of sequences.
          max_length: cache slots (positions); None takes the ``max_length``
            field. Required for ``mha``; ignored by ``sliding_window`` (its
            ring buffer has ``window`` slots).

        Returns:
          ``{"k", "v": (b, slots, hk, dh) in dtype, "pos": (b,) int32}``;
          ``pos`` counts the positions seen.
        """
        if not self.causal:
            raise ValueError(f"{self._mixer_name()}: bidirectional attention (causal=False) has no step/cache")
        _, hk, dh = self._dims(model_width(self))
        slots = self._cache_slots(max_length)
        kv = jnp.zeros((batch_size, slots, hk, dh), self.dtype)
        return {"k": kv, "v": kv, "pos": jnp.zeros((batch_size,), jnp.int32)}

    def step(self, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One decoding position: append ``k_t, v_t`` to the cache, attend with ``q_t``.

        ``mha`` writes slot ``pos``; past the cache's end (or, for learned
        positions, past ``max_length``) the output is NaN (a jitted step cannot
        raise). ``sliding_window`` writes slot
        ``pos mod window`` of its ring buffer, overwriting the key that just
        left the window.

        Args:
          x_t: ``(batch, d_model)`` input.
          cache: from :meth:`init_cache` or a previous step.

        Returns:
          ``(y_t, cache)``: ``(batch, d_model)`` in ``dtype`` and the new cache.
        """
        name = self._mixer_name()
        if not self.causal:
            raise ValueError(f"{name}: bidirectional attention (causal=False) has no step")
        if x_t.ndim != 2:
            raise ValueError(f"{name}.step: x_t must have shape (batch, d_model), got {x_t.shape}")
        if not isinstance(cache, dict) or set(cache) != {"k", "v", "pos"}:
            raise ValueError(f"{name}.step: cache must be the dict of init_cache with keys k, v, pos")
        b = x_t.shape[0]
        p = self._parts(model_width(self, x_t))
        pos = cache["pos"]
        q, k, v = self._qkv(p, x_t[:, None], pos[:, None])
        slots = cache["k"].shape[1]
        ring = self._window() is not None
        slot = pos % slots if ring else pos
        # Out-of-range slots (mha past its end) are dropped by the scatter.
        rows = jnp.arange(b)
        kc = cache["k"].at[rows, slot].set(k[:, 0].astype(cache["k"].dtype), mode="drop")
        vc = cache["v"].at[rows, slot].set(v[:, 0].astype(cache["v"].dtype), mode="drop")
        # Before the ring wraps, the filled slots are 0..pos; afterwards all of them.
        lengths = jnp.minimum(pos + 1, slots)
        if self.positions == "alibi":
            o = self._alibi_decode(q, kc, vc, pos, lengths, ring)
        else:
            o = decode_attention(q[:, 0], kc, vc, lengths=lengths, num_splits=4)
        # Past the cache (mha) or the position table (learned) there is no right
        # answer; NaN makes that visible (the softmax would turn NaN scores into 0).
        limit = None if ring else slots
        if self.positions == "learned":
            limit = self.max_length if limit is None else min(limit, self.max_length)
        if limit is not None:
            o = jnp.where((pos < limit)[:, None, None], o, jnp.nan)
        return self._out(p, o), {"k": kc, "v": vc, "pos": pos + 1}

    def _alibi_decode(self, q, kc, vc, pos, lengths, ring):
        """Decoding with the ALiBi bias, which :func:`decode_attention` does not take.

        Runs :func:`seqjax.ops.attention` with one query; the key position of
        slot ``j`` is ``j`` (full cache) or, in the ring, the latest position
        ``<= pos`` congruent to ``j`` mod the slots; empty slots are masked by
        giving them another segment id.
        """
        b, slots = kc.shape[:2]
        j = jnp.arange(slots)
        kpos = pos[:, None] - (pos[:, None] - j) % slots if ring else jnp.broadcast_to(j, (b, slots))
        valid = j[None, :] < lengths[:, None]
        bias = alibi_bias(alibi_slopes(self.num_heads), pos[:, None], kpos)  # (b, h, 1, slots)
        segs = (jnp.ones((b, 1), jnp.int32), valid.astype(jnp.int32))
        o = attention(q, kc, vc, segment_ids=segs, bias=bias, impl=self.impl)
        return o[:, 0]

    def state_size(self, length: int | None = None) -> int:
        """Bytes of the KV cache per sequence at ``length`` positions (plus the counter).

        Args:
          length: cache positions; None takes the ``max_length`` field. Unused
            by ``sliding_window`` (its cache has ``window`` slots whatever the length).

        Returns:
          ``2 · slots · hk · dh · itemsize(dtype) + 4`` (the int32 position counter).
        """
        _, hk, dh = self._dims(model_width(self))
        slots = self._cache_slots(length)
        return 2 * slots * hk * dh * jnp.dtype(self.dtype).itemsize + 4


@register("sliding_window")
class SlidingWindowAttention(MultiHeadAttention):
    """Sliding-window (local) softmax attention: each query sees the last ``window`` keys.

    Identical to :class:`MultiHeadAttention` (projections, grouped queries,
    positions, segments) except for the visible set: key ``s`` is visible from
    query ``t`` iff ``t - window < s <= t`` (causal) or ``|t - s| < window``
    (``causal=False``). Decoding keeps a ring buffer of the last ``window``
    keys and values, so the state is O(window · hk · dh) whatever the length
    (a banded mixing matrix; training O(l · window · d) time with the
    blockwise op, which skips the key blocks outside the band).

    Stacking ``mha`` layers and ``sliding_window`` layers (a few global layers
    among many local ones) gives MASFormer's mixed attention spans (Zhang et
    al. 2023, "MASFormer: Mixed Attention Span Transformer").

    Attributes:
      window: number of keys each query sees, itself included (64).
      (all fields of :class:`MultiHeadAttention`; ``max_length`` is needed only
      for ``positions="learned"``.)
    """

    window: int = 64

    # Ring attention has no window support (NotImplementedError in the op).
    sequence_parallel: ClassVar[bool] = False

    def _window(self) -> int | None:
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
            raise ValueError(f"sliding_window: window must be a positive int, got {self.window!r}")
        return self.window

    def _cache_slots(self, max_length: int | None) -> int:
        del max_length
        return self._window()
