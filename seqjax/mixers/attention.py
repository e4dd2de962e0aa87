"""Softmax attention mixers: full multi-head attention and sliding-window attention.

Both are :class:`~seqjax.mixers.base.Mixer` subclasses over
:func:`seqjax.ops.attention` (the parallel form; ring attention when the
length is split) and :func:`seqjax.ops.decode_attention` (one decoding step
against a KV cache); ``sliding_window`` is ``mha`` with a local window and a
ring-buffer cache. Position schemes (RoPE, ALiBi, learned) live in
``positions.py``.

Also here, for the whole attention family (``mha``, ``sliding_window``,
``ngram``, ``aaren``): :class:`Heads`, the unregistered base holding the head
fields, their checks and the output projection, and :func:`cache_slots`, the
length of a cache with one slot per position.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import (
    check_divides, check_int, check_number, check_option, dense, positions_in_segment, segment_runs)
from seqjax.mixers.positions import POSITIONS, LearnedPositions, alibi_bias, alibi_slopes, rope
from seqjax.mixers.registry import register
from seqjax.ops.attention import attention
from seqjax.ops.decode_attention import decode_attention
from seqjax.types import SegmentIds, Seq, SeqStep

Cache = dict[str, jax.Array]


def cache_slots(name: str, field: int | None, max_length: int | None) -> int:
    """Slots of a cache that keeps one entry per position.

    Args:
      name: the mixer, for messages.
      field: the mixer's ``max_length`` field (the default).
      max_length: the length asked for (``init_cache``/``state_size``), or None.

    Returns:
      ``max_length``, else ``field``.

    Raises:
      ValueError: neither is set, or the length is not a positive int.
    """
    max_length = field if max_length is None else max_length
    if max_length is None:
        raise ValueError(
            f"{name}: max_length is required for its cache (one slot per position); "
            "pass init_cache(batch_size, max_length) or set the max_length field")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError(f"{name}: max_length must be a positive int, got {max_length!r}")
    return max_length


class Heads(Mixer):
    """The head fields of the attention family (not registered).

    ``mha``, ``sliding_window``, ``ngram`` and ``aaren`` split their
    projections into ``h`` heads of ``dh`` channels and end with
    ``y = W_o concat_h(o)`` (:meth:`output`).

    Attributes:
      num_heads: query heads ``h``.
      head_dim: ``dh`` (None: ``d_model // num_heads``, which must then divide evenly).
    """

    num_heads: int = 4
    head_dim: int | None = None

    def kv_heads(self) -> int | None:
        """Key/value heads; None: one per query head (only ``mha`` has a field for it)."""
        return None

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_heads", self.num_heads)
        if self.kv_heads() is not None:
            check_divides(name, "num_kv_heads", self.kv_heads(), self.num_heads, "num_heads")
        check_int(name, "head_dim", self.head_dim, optional=True)
        if self.d_model is not None:
            self.heads(self.d_model)

    def heads(self, d: int) -> tuple[int, int, int]:
        """``(h, hk, dh)`` for width ``d``: query heads, key/value heads, head dimension.

        Raises:
          ConfigError: ``head_dim`` is None and ``num_heads`` does not divide ``d``.
        """
        h = self.num_heads
        dh = self.head_dim
        if dh is None:
            dh = check_divides(self.mixer_name, "num_heads", h, d, "d_model")
        return h, self.kv_heads() or h, dh

    def output(self, p, o, proj: Projection) -> Seq:
        """``W_o concat_h(o)`` of ``o (..., h, dh)``, in ``dtype``."""
        del proj
        return p["out_proj"](o.reshape(o.shape[:-2] + (-1,)).astype(self.dtype)).astype(self.dtype)


def check_rope_head_dim(name: str, positions: str, dh: int | None, derived: bool = False) -> None:
    """RoPE rotates channel pairs: a head dimension must be even with ``positions="rope"``.

    Args:
      name: the mixer's registry name (for the message).
      positions: the mixer's ``positions`` field.
      dh: the head dimension (None: not set, nothing to check).
      derived: ``dh`` came from ``d_model // num_heads`` (the message says so), not the ``head_dim`` field.

    Raises:
      ConfigError: ``dh`` is odd with RoPE.
    """
    if positions != "rope" or dh is None or dh % 2 == 0:
        return
    if derived:
        raise ConfigError(f"{name}.positions='rope' needs an even head dimension, got "
                          f"d_model // num_heads = {dh}; set head_dim")
    raise ConfigError(f"{name}.head_dim={dh!r} must be even with positions='rope'")


def qkvo_projections(h: int, dh: int, d: int, dtype: Any) -> dict[str, nn.Module]:
    """``mha``'s four projections without grouping: ``q/k/v_proj`` ``d -> h·dh``, ``out_proj`` ``h·dh -> d``.

    Call from inside a compact method: the layers become the caller's submodules.

    Args:
      h: heads.
      dh: head dimension.
      d: model width.
      dtype: compute dtype.

    Returns:
      ``{"q_proj", "k_proj", "v_proj", "out_proj"}`` Dense layers.
    """
    return {
        "q_proj": dense(h * dh, ("embed", "heads"), dtype=dtype, name="q_proj"),
        "k_proj": dense(h * dh, ("embed", "heads"), dtype=dtype, name="k_proj"),
        "v_proj": dense(h * dh, ("embed", "heads"), dtype=dtype, name="v_proj"),
        "out_proj": dense(d, ("heads", "embed"), dtype=dtype, name="out_proj"),
    }


class RopeHeads(Heads):
    """Heads with plain ``q, k, v, out`` projections and optional RoPE (not registered).

    The shared front of the attention variants that keep ``mha``'s projections
    and change only the mixing (``combiner``, ``probsparse``): one head of
    keys/values per query head, ``positions`` ``"rope"`` (on ``q, k`` at the
    positions within each segment) or ``"none"``.

    Attributes:
      positions: ``"rope"`` (default) or ``"none"``.
      rope_base: RoPE's frequency base (10000).
    """

    positions: str = "rope"
    rope_base: float = 10000.0

    def check_fields(self):
        name = self.mixer_name
        check_option(name, "positions", self.positions, ("none", "rope"))
        check_number(name, "rope_base", self.rope_base, low=0, open_low=True)
        check_rope_head_dim(name, self.positions, self.head_dim)
        super().check_fields()

    def heads(self, d: int) -> tuple[int, int, int]:
        h, hk, dh = super().heads(d)
        check_rope_head_dim(self.mixer_name, self.positions, dh, derived=True)
        return h, hk, dh

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, _, dh = self.heads(d)
        return qkvo_projections(h, dh, d, self.dtype)

    def _qkv(self, p, x, pos):
        """Projected ``q, k, v (b, l, h, dh)``, RoPE on ``q, k`` at positions ``pos``."""
        b, length, d = x.shape
        h, _, dh = self.heads(d)
        xc = x.astype(self.dtype)
        q, k, v = (p[n](xc).reshape(b, length, h, dh) for n in ("q_proj", "k_proj", "v_proj"))
        if self.positions == "rope":
            q, k = rope(q, pos, self.rope_base), rope(k, pos, self.rope_base)
        return q, k, v

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        """``(q, k, v, runs)``: RoPE at the positions within each segment; ``runs`` the run indices (or None)."""
        b, length, _ = x.shape
        q, k, v = self._qkv(p, x, positions_in_segment(segment_ids, b, length))
        # Run indices, not raw ids: a reused id (0, 1, 0) is still three sequences.
        runs = None if segment_ids is None else segment_runs(segment_ids, b, length)
        return Projection(tokens=(q, k, v, runs))


@register("mha")
class MultiHeadAttention(Heads):
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

    Mixing matrix (per query head, acting on the values ``v``; read off the
    op by :meth:`~seqjax.mixers.base.Mixer.mixing_matrix`): the attention
    probabilities ``M[h, t, s] = softmax_s(q_t·k_s / √dh + b_ts)`` over the
    visible ``s``, 0 elsewhere (dense; lower triangular when causal, banded
    for ``sliding_window``). Complexity: training O(l² · d) time and, with
    ``impl="blockwise"``, O(l · d) memory besides the inputs (ALiBi adds an
    O(h · l²) bias); decoding O(l · d) per step with an O(l · hk · dh) KV cache.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype (and KV-cache dtype); parameters are float32 and the
        softmax accumulates in float32.
      impl: ``impl`` of :func:`seqjax.ops.attention` (or ``{"attention": ...}``).
      sequence_axis: mesh axis that splits the length (ring attention under a
        context mesh, see :func:`seqjax.parallel.sequence_map`); None: never
        split. Not with ``positions="alibi"`` (nor for ``sliding_window``).
      num_heads: query heads ``h`` (4).
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      num_kv_heads: key/value heads ``hk`` (None: ``h``; 1 is multi-query); divides ``h``.
      causal: causal (decoder) attention; False is bidirectional and has no ``step``.
      positions: ``"none"``, ``"learned"``, ``"rope"`` (default) or ``"alibi"``.
      rope_base: RoPE's frequency base (10000).
      max_length: size of the learned position table (required for
        ``"learned"``) and the default KV-cache length of ``init_cache``.
    """

    ops = ("attention",)
    causality = "either"
    sequence_parallel = True
    values_index = 2  # v (b, l, hk, dh)
    # The own learned position table (positions="learned") is an embedding: no weight decay.
    no_decay_params = ("pos_embedding/embedding",)

    num_kv_heads: int | None = None
    causal: bool = True
    positions: str = "rope"
    rope_base: float = 10000.0
    max_length: int | None = None

    # --- hooks that SlidingWindowAttention overrides --------------------------------

    def _window(self) -> int | None:
        return None

    def _cache_slots(self, max_length: int | None) -> int:
        """Slots of the KV cache: one per position up to ``max_length``."""
        return cache_slots(self.mixer_name, self.max_length, max_length)

    # --- configuration and parameters -----------------------------------------------

    def kv_heads(self) -> int | None:
        return self.num_kv_heads

    def check_fields(self):
        name = self.mixer_name
        check_option(name, "positions", self.positions, POSITIONS)
        check_option(name, "causal", self.causal, (True, False))
        check_number(name, "rope_base", self.rope_base, low=0, open_low=True)
        check_int(name, "max_length", self.max_length, optional=True)
        if self.positions == "learned" and self.max_length is None:
            raise ConfigError(f"{name}.max_length=None: positions='learned' needs it (the size of the position table)")
        if self.sequence_axis is not None and self.positions == "alibi":
            raise ConfigError(f"{name}.sequence_axis={self.sequence_axis!r}: ring attention does not support "
                              "positions='alibi'; allowed positions with a split length: 'none', 'learned', 'rope'")
        check_rope_head_dim(name, self.positions, self.head_dim)
        super().check_fields()

    def heads(self, d: int) -> tuple[int, int, int]:
        h, hk, dh = super().heads(d)
        check_rope_head_dim(self.mixer_name, self.positions, dh, derived=True)
        return h, hk, dh

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, hk, dh = self.heads(d)
        parts = {
            "q_proj": dense(h * dh, ("embed", "heads"), dtype=self.dtype, name="q_proj"),
            "k_proj": dense(hk * dh, ("embed", "heads"), dtype=self.dtype, name="k_proj"),
            "v_proj": dense(hk * dh, ("embed", "heads"), dtype=self.dtype, name="v_proj"),
            "out_proj": dense(d, ("heads", "embed"), dtype=self.dtype, name="out_proj"),
        }
        if self.positions == "learned":
            parts["pos_embedding"] = LearnedPositions(self.max_length, d, name="pos_embedding")
        return parts

    def _qkv(self, p, x, pos):
        """Projected, position-encoded ``q (b,l,h,dh)``, ``k, v (b,l,hk,dh)``."""
        b, length, d = x.shape
        h, hk, dh = self.heads(d)
        xc = x.astype(self.dtype)
        xqk = xc
        if self.positions == "learned":
            acc = self.acc()
            xqk = (xc.astype(acc) + p["pos_embedding"](pos).astype(acc)).astype(self.dtype)
        q = p["q_proj"](xqk).reshape(b, length, h, dh)
        k = p["k_proj"](xqk).reshape(b, length, hk, dh)
        v = p["v_proj"](xc).reshape(b, length, hk, dh)
        if self.positions == "rope":
            q, k = rope(q, pos, self.rope_base), rope(k, pos, self.rope_base)
        return q, k, v

    def _alibi(self, length: int):
        """``(1, h, l, l)`` ALiBi bias (relative, so segment restarts change nothing), or None."""
        if self.positions != "alibi":
            return None
        t = jnp.arange(length)
        return alibi_bias(alibi_slopes(self.num_heads), t, t)[None]

    # --- the hooks of the Mixer contract ---------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        b, length, _ = x.shape
        if self.positions == "learned" and length > self.max_length:
            raise ValueError(
                f"{self.mixer_name}: sequence length {length} exceeds max_length={self.max_length} "
                "(the learned position table); raise the max_length field")
        q, k, v = self._qkv(p, x, positions_in_segment(segment_ids, b, length))
        # Run indices, not raw ids: a reused id (0, 1, 0) is still three sequences.
        runs = None if segment_ids is None else segment_runs(segment_ids, b, length)
        return Projection(tokens=(q, k, v, runs))

    def mix(self, axis, q, k, v, runs):
        return attention(q, k, v, causal=self.causal, segment_ids=runs, window=self._window(),
                         bias=self._alibi(q.shape[1]), impl=self.impl_for("attention"), sequence_axis=axis)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> Cache:
        """``{"k", "v": (b, slots, hk, dh) in dtype, "pos": (b,) int32}``; ``pos`` counts the positions seen.

        ``slots`` is ``max_length`` (else the field) for ``mha``; ``window``
        for ``sliding_window`` (its ring buffer), whatever the length.
        """
        _, hk, dh = self.heads(d)
        kv = jnp.zeros((batch_size, self._cache_slots(max_length), hk, dh), self.dtype)
        return {"k": kv, "v": kv, "pos": jnp.zeros((batch_size,), jnp.int32)}

    def step_mix(self, p, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One decoding position: append ``k_t, v_t`` to the cache, attend with ``q_t``.

        ``mha`` writes slot ``pos``; past the cache's end (or, for learned
        positions, past ``max_length``) the output is NaN (a jitted step cannot
        raise). ``sliding_window`` writes slot ``pos mod window`` of its ring
        buffer, overwriting the key that just left the window.
        """
        b = x_t.shape[0]
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
        return self.output(p, o, Projection()), {"k": kc, "v": vc, "pos": pos + 1}

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
        o = attention(q, kc, vc, segment_ids=segs, bias=bias, impl=self.impl_for("attention"))
        return o[:, 0]


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
    al. 2023, "Efficient Long-Range Transformers: You Need to Attend More, but
    Not Necessarily at Every Layer"; the ``masformer`` preset of seqjax.config).

    Attributes:
      window: number of keys each query sees, itself included (64).
      (all fields of :class:`MultiHeadAttention`; ``max_length`` is needed only
      for ``positions="learned"``; no ``sequence_axis``.)
    """

    # Ring attention has no window support (NotImplementedError in the op).
    sequence_parallel = False

    window: int = 64

    def check_fields(self):
        check_int(self.mixer_name, "window", self.window)
        super().check_fields()

    def _window(self) -> int | None:
        return self.window

    def _cache_slots(self, max_length: int | None) -> int:
        del max_length  # the ring buffer: window slots whatever the length
        return self.window
