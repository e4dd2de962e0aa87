"""Attention with learned relative positions: Music Transformer's relative attention and URPE.

Two mixers of the attention family whose position information is a learned
function of the clipped distance ``i - j`` between query ``i`` and key ``j``:

* ``relative_mha`` (Huang et al. 2018, "Music Transformer", after Shaw et al.
  2018): the logits gain ``q_i · E_{clip(i - j)}`` with a learned table ``E``
  of relative embeddings. The paper's "skewing" (:func:`skew`) computes those
  logits from ``Q E_rᵀ`` (``L × L``) by pad-reshape-slice, so the relative term
  costs O(L·d) extra memory (the ``E_r`` rows) instead of the O(L²·d) tensor
  of gathered embeddings ``E_{i-j}`` of Shaw et al.
* ``urpe`` (Luo et al. 2022, "Your Transformer May Not be as Powerful as You
  Expect"): softmax attention with a relative bias ``b_{i-j}`` whose
  probabilities are then reweighted elementwise by a learned Toeplitz matrix
  ``C_ij = c_{i-j}`` (per head): ``(softmax(QKᵀ/√d + B) ∘ C) V``.

Distances are clipped at ``max_relative`` (Shaw et al.'s ``k``): a causal
table has ``max_relative + 1`` entries (distances ``0..k``), a bidirectional
one ``2·max_relative + 1`` (``-k..k``).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.attention import Cache, Heads, cache_slots, qkvo_projections
from seqjax.mixers.base import Projection
from seqjax.mixers.common import broadcast_batch, check_int, check_option, param, scaled_normal_init, segment_runs
from seqjax.mixers.registry import register
from seqjax.ops.attention import attention
from seqjax.ops.common import accum_dtype
from seqjax.types import SegmentIds, Seq, SeqStep


# --- the relative index and the skew -------------------------------------------------------


def relative_index(dist: jax.Array, max_relative: int, causal: bool) -> jax.Array:
    """The table row of each distance ``i - j`` (query minus key), clipped to ``±max_relative``.

    Args:
      dist: integer distances ``i - j`` of any shape.
      max_relative: the clipping distance ``k``.
      causal: causal tables hold distances ``0..k`` (row ``min(dist, k)``;
        negative distances, which causal attention masks, map to row 0);
        bidirectional ones ``-k..k`` (row ``clip(dist, -k, k) + k``).

    Returns:
      int32 rows of the table, ``dist``'s shape.
    """
    if causal:
        return jnp.clip(dist, 0, max_relative).astype(jnp.int32)
    return (jnp.clip(dist, -max_relative, max_relative) + max_relative).astype(jnp.int32)


def skew(x: jax.Array) -> jax.Array:
    """Music Transformer's skewing: relative-distance columns to key columns, by pad-reshape-slice.

    ``x[..., i, c]`` holds the logit of query ``i`` at relative distance
    ``j - i = c - (L - 1)`` (columns ordered from distance ``-(L-1)`` to 0).
    Padding one zero column on the left, reshaping ``(L, L+1)`` to ``(L+1, L)``
    and dropping the first row moves it to ``out[..., i, j] = x[..., i, L-1+j-i]``
    for every ``j <= i``: no index tensor and no gathered ``(L, L, d)`` embeddings.
    Entries with ``j > i`` are leftovers of other rows (causal attention masks them).

    Args:
      x: ``(..., L, L)``.

    Returns:
      ``(..., L, L)``, exact for ``j <= i``.
    """
    length = x.shape[-1]
    if x.shape[-2] != length:
        raise ValueError(f"skew: x must be square in its last two axes, got {x.shape}")
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(1, 0)])
    return padded.reshape(x.shape[:-2] + (length + 1, length))[..., 1:, :]


def toeplitz(table: jax.Array, length: int, max_relative: int, causal: bool) -> jax.Array:
    """``T[..., i, j] = table[..., relative_index(i - j)]``: a per-head Toeplitz ``(L, L)`` matrix.

    Built without an ``(L, L)`` index: the ``2L - 1`` distinct values (one
    per distance, a small gather) are tiled into rows of width ``2L - 1``, so
    row ``i`` starts one place further back than row ``i - 1``. Gathering
    with an ``(L, L)`` index instead makes the table's gradient a scatter-add
    of ``L²`` entries, which XLA:CPU runs one element at a time (it was half
    of ``urpe``'s forward + backward at L = 320).

    Args:
      table: ``(..., rows)`` values by table row (:func:`relative_index`).
      length: ``L``.
      max_relative: the clipping distance.
      causal: the table's layout (:func:`relative_index`).

    Returns:
      ``(..., L, L)``.
    """
    # u[k] is the value at distance i - j = L - 1 - k, k = 0 .. 2L - 2; one zero after it
    # makes the period 2L, so that (flat index) mod 2L = j - i + L - 1 in rows of 2L - 1.
    u = table[..., relative_index(length - 1 - jnp.arange(2 * length - 1), max_relative, causal)]
    u = jnp.pad(u, [(0, 0)] * (u.ndim - 1) + [(0, 1)])
    flat = jnp.tile(u, (1,) * (u.ndim - 1) + (length + 1,))[..., : length * (2 * length - 1)]
    return flat.reshape(u.shape[:-1] + (length, 2 * length - 1))[..., length - 1:]


def relative_logits(q: jax.Array, table: jax.Array, max_relative: int) -> jax.Array:
    """``S[b, h, i, j] = q_i · E_{clip(i - j)}`` for ``j <= i``, computed by skewing ``Q E_rᵀ``.

    ``E_r`` holds the embeddings of distances ``L-1, ..., 0`` (rows of the
    clipped table, O(L·dh) per head); ``Q E_rᵀ`` is ``(L, L)`` and
    :func:`skew` places each entry at its key.

    Args:
      q: ``(b, L, h, dh)`` queries.
      table: ``(h, max_relative + 1, dh)`` per head, or ``(1, ...)`` shared
        by the heads; row ``r`` is distance ``r``.
      max_relative: the clipping distance.

    Returns:
      ``(b, h, L, L)`` in the accumulation dtype of ``q``; entries ``j > i`` are
      unspecified (mask them).
    """
    length, h = q.shape[1], q.shape[2]
    acc = accum_dtype(q.dtype)
    rows = relative_index(length - 1 - jnp.arange(length), max_relative, True)
    e_r = jnp.broadcast_to(table, (h,) + table.shape[1:])[:, rows]  # (h, L, dh), distance L-1-c in column c
    x = jnp.einsum("blhd,hcd->bhlc", q, e_r.astype(q.dtype), preferred_element_type=acc)
    return skew(x)


def _softmax_mix(scores, v, visible, weights=None):
    """``Σ_s (softmax_s(scores) ∘ weights) v_s`` over the visible keys, softmax in float32 (float64).

    Args:
      scores: ``(b, h, lq, lk)`` in the accumulation dtype.
      v: ``(b, lk, h, dv)``.
      visible: booleans broadcastable to ``scores``.
      weights: optional multipliers of the probabilities, broadcastable to ``scores``.

    Returns:
      ``(b, lq, h, dv)`` in the accumulation dtype; 0 for a query that sees nothing.
    """
    acc = scores.dtype
    masked = jnp.where(visible, scores, -jnp.inf)
    m = jnp.max(masked, axis=-1, keepdims=True)
    # A row with no visible key has m = -inf; shifting by 0 keeps it at exp(-inf) = 0, not NaN.
    e = jnp.exp(masked - jnp.where(jnp.isfinite(m), m, 0.0))
    z = jnp.sum(e, axis=-1, keepdims=True)
    p = e / jnp.where(z > 0, z, 1.0)
    if weights is not None:
        p = p * weights
    return jnp.einsum("bhts,bshd->bthd", p, v.astype(acc))


class RelativeTable(nn.Module):
    """A learned table indexed by clipped relative distance (one ``embedding`` leaf, as an ``nn.Embedding``).

    Attributes:
      shape: the table's shape (float32).
      initializer: its initializer.
      axes: logical axis names of the table's axes.
    """

    shape: tuple[int, ...]
    initializer: Callable
    axes: tuple[str | None, ...]

    @nn.compact
    def __call__(self) -> jax.Array:
        """The table (float32)."""
        return param(self, "embedding", self.initializer, self.shape, self.axes)


def _step_visible(slots: int, pos: jax.Array):
    """Key slots ``s`` and, per sequence, which are filled (``s <= pos``) and their distances ``pos - s``."""
    s = jnp.arange(slots)
    return s[None, :] <= pos[:, None], pos[:, None] - s[None, :]


# --- the shared fields -----------------------------------------------------------------------


class _RelativeHeads(Heads):
    """Head fields, projections, KV cache and output shared by the two mixers (not registered).

    Attributes:
      max_relative: distances are clipped at this ``k`` (table of ``k + 1``
        rows when causal, ``2k + 1`` otherwise).
      max_length: the default KV-cache length of ``init_cache``.
    """

    max_relative: int = 128
    max_length: int | None = None

    values_index = 2  # v (b, l, h, dh)

    def check_fields(self):
        check_int(self.mixer_name, "max_relative", self.max_relative, minimum=1)
        check_int(self.mixer_name, "max_length", self.max_length, optional=True)
        super().check_fields()

    def table_rows(self) -> int:
        """Rows of a relative table: ``k + 1`` causal, ``2k + 1`` bidirectional."""
        return self.max_relative + 1 if self.is_causal else 2 * self.max_relative + 1

    def projections(self, d: int) -> dict[str, Any]:
        h, _, dh = self.heads(d)
        return qkvo_projections(h, dh, d, self.dtype)

    def qkv(self, p, x):
        """``q, k, v (b, l, h, dh)`` in ``dtype``."""
        b, length, d = x.shape
        h, _, dh = self.heads(d)
        xc = x.astype(self.dtype)
        return tuple(p[n](xc).reshape(b, length, h, dh) for n in ("q_proj", "k_proj", "v_proj"))

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> Cache:
        """``{"k", "v": (b, slots, h, dh) in dtype, "pos": (b,) int32}``; ``pos`` counts the positions seen."""
        h, _, dh = self.heads(d)
        kv = jnp.zeros((batch_size, cache_slots(self.mixer_name, self.max_length, max_length), h, dh), self.dtype)
        return {"k": kv, "v": kv, "pos": jnp.zeros((batch_size,), jnp.int32)}

    def append(self, p, x_t, cache):
        """Projects ``x_t`` and writes ``k_t, v_t`` at slot ``pos`` (dropped past the end); returns ``q_t`` and the cache."""
        b = x_t.shape[0]
        pos = cache["pos"]
        q, k, v = self.qkv(p, x_t[:, None])
        rows = jnp.arange(b)
        kc = cache["k"].at[rows, pos].set(k[:, 0].astype(cache["k"].dtype), mode="drop")
        vc = cache["v"].at[rows, pos].set(v[:, 0].astype(cache["v"].dtype), mode="drop")
        return q[:, 0], {"k": kc, "v": vc, "pos": pos + 1}

    def finish_step(self, p, o, pos, slots):
        """The output of a step; NaN past the cache's end (a jitted step cannot raise)."""
        o = jnp.where((pos < slots)[:, None, None], o, jnp.nan)
        return self.output(p, o, Projection())


# --- relative_mha ------------------------------------------------------------------------------


@register("relative_mha")
class RelativeAttention(_RelativeHeads):
    """Causal multi-head attention with learned relative embeddings (Music Transformer).

    With ``h`` heads of size ``dh`` and ``E`` the relative table::

        q_t = W_q x_t,  k_t = W_k x_t,  v_t = W_v x_t
        S^rel_ts = q_t · E_{clip(t - s)}                       (skewed Q E_rᵀ, :func:`relative_logits`)
        o_t = Σ_{s <= t} softmax_s((q_t·k_s + S^rel_ts) / √dh) v_s
        y_t = W_o concat_h(o_t)

    over the keys ``s <= t`` of ``t``'s segment (relative distances need no
    restart: inside a packed segment ``t - s`` is the same). ``E`` has one
    ``dh``-vector per clipped distance ``0..max_relative``, per head (the
    paper's choice) or shared by the heads (``shared_embeddings``, as Shaw
    et al.); initialised ``N(0, 1/dh)``. Beyond ``max_relative`` every
    distance uses the last row (Shaw et al.'s clipping).

    Mixing matrix (per head, on ``v``): the attention probabilities, lower
    triangular. Complexity: training O(L²·d) time; the relative term adds
    O(L·d) memory (``E_r``) besides the ``(b, h, L, L)`` logits it is added to
    as a bias of :func:`seqjax.ops.attention` (so O(h·L²) memory, like ALiBi
    in ``mha``). Decoding: O(L·d + k·d) per step with a KV cache of
    ``2·L·h·dh`` values (``q_t · E`` for the ``k + 1`` distances, gathered per slot).

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype (and KV-cache dtype); parameters are float32 and
        the logits and softmax are float32.
      impl: ``impl`` of :func:`seqjax.ops.attention` (or ``{"attention": ...}``).
      num_heads: heads ``h`` (4).
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      max_relative: clipping distance ``k`` (128): ``E`` has ``k + 1`` rows.
      shared_embeddings: one table for all heads (False: one per head).
      max_length: the default KV-cache length of ``init_cache``.
    """

    ops = ("attention",)
    causality = "causal"
    no_decay_params = ("rel_embedding/embedding",)  # an embedding table, as learned positions

    shared_embeddings: bool = False

    def check_fields(self):
        check_option(self.mixer_name, "shared_embeddings", self.shared_embeddings, (True, False))
        super().check_fields()

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, _, dh = self.heads(d)
        parts = self.projections(d)
        heads = 1 if self.shared_embeddings else h
        parts["rel_embedding"] = RelativeTable((heads, self.table_rows(), dh), scaled_normal_init(dh**-0.5),
                                               ("heads", None, None), name="rel_embedding")()
        return parts

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        b, length, _ = x.shape
        q, k, v = self.qkv(p, x)
        # Run indices, not raw ids: a reused id (0, 1, 0) is still three sequences.
        runs = None if segment_ids is None else segment_runs(segment_ids, b, length)
        return Projection(tokens=(q, k, v, runs), shared=(p["rel_embedding"],))

    def mix(self, axis, q, k, v, runs, table):
        del axis  # no sequence parallelism (the bias is a whole (L, L) array)
        scale = q.shape[-1] ** -0.5
        # The paper scales (QKᵀ + S^rel) by 1/√dh; the op scales q·k itself, so the bias carries its own.
        bias = relative_logits(q, table, self.max_relative) * scale
        return attention(q, k, v, causal=True, segment_ids=runs, bias=bias, impl=self.impl_for("attention"))

    def step_mix(self, p, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One decoding position: append ``k_t, v_t``, then attend with ``q_t`` and ``q_t · E_{clip(pos - s)}``.

        Past the cache's end the output is NaN.
        """
        pos = cache["pos"]
        q, cache = self.append(p, x_t, cache)  # q (b, h, dh)
        acc = accum_dtype(self.dtype)
        h, dh = q.shape[1:]
        table = jnp.broadcast_to(p["rel_embedding"], (h,) + p["rel_embedding"].shape[1:])
        slots = cache["k"].shape[1]
        visible, dist = _step_visible(slots, pos)
        # q_t against each distance once (k + 1 dot products), then one gather per cached slot.
        q_e = jnp.einsum("bhd,hrd->bhr", q, table.astype(q.dtype), preferred_element_type=acc)
        rel = jnp.take_along_axis(q_e, relative_index(dist, self.max_relative, True)[:, None, :], axis=-1)
        qk = jnp.einsum("bhd,bshd->bhs", q, cache["k"], preferred_element_type=acc)
        scores = ((qk + rel) * dh**-0.5)[:, :, None, :]  # (b, h, 1, slots)
        o = _softmax_mix(scores, cache["v"], visible[:, None, None, :])[:, 0]
        return self.finish_step(p, o, pos, slots), cache


# --- urpe ----------------------------------------------------------------------------------------


@register("urpe")
class UniversalRPEAttention(_RelativeHeads):
    """URPE attention (Luo et al. 2022): relative-bias softmax reweighted by a learned Toeplitz matrix.

    Per head, with ``b`` and ``c`` learned per clipped distance::

        A_ts = softmax_s(q_t·k_s / √dh + b_{clip(t - s)})      over the visible s
        o_t = Σ_s A_ts c_{clip(t - s)} v_s                      i.e. (softmax(QKᵀ/√dh + B) ∘ C) V
        y_t = W_o concat_h(o_t)

    ``C`` multiplies the softmax probabilities (after the softmax), so rows
    need not sum to 1: the reason URPE Transformers are universal
    approximators where RPE ones are not. As in the paper's code, ``b`` starts
    ``N(0, 0.02²)`` and ``c`` starts at 1 (``C`` all ones: plain RPE
    attention at init). Visible: ``s <= t`` when ``causal``, and the same
    segment. The paper's code shares ``b`` and ``c`` across layers; here each
    layer has its own.

    Mixing matrix (per head, on ``v``): ``A ∘ C`` (lower triangular when
    causal). Complexity: O(L²·d) time and O(h·L²) memory (the probabilities
    are materialised: ``∘ C`` is not an op of the flash kernel); decoding
    O(L·d) per step with a KV cache of ``2·L·h·dh`` values.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype (and KV-cache dtype); parameters are float32 and
        scores and probabilities are float32.
      num_heads: heads ``h`` (4).
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      causal: causal attention (True; then ``step``); False is bidirectional.
      max_relative: clipping distance ``k`` (128).
      max_length: the default KV-cache length of ``init_cache``.
    """

    causality = "either"
    # Lookup tables (nn.Embedding in the authors' code); weight decay would drag C from 1 towards 0.
    no_decay_params = ("rel_bias/embedding", "rel_weight/embedding")

    causal: bool = True

    def check_fields(self):
        check_option(self.mixer_name, "causal", self.causal, (True, False))
        super().check_fields()

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, _, _ = self.heads(d)
        parts = self.projections(d)
        rows = self.table_rows()
        parts["rel_bias"] = RelativeTable((h, rows), scaled_normal_init(0.02), ("heads", None), name="rel_bias")()
        parts["rel_weight"] = RelativeTable((h, rows), nn.initializers.ones, ("heads", None), name="rel_weight")()
        return parts

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        b, length, _ = x.shape
        q, k, v = self.qkv(p, x)
        runs = segment_runs(segment_ids, b, length)
        return Projection(tokens=(q, k, v, runs), shared=(p["rel_bias"], p["rel_weight"]))

    def mix(self, axis, q, k, v, runs, rel_bias, rel_weight):
        del axis
        length, dh = q.shape[1], q.shape[-1]
        acc = accum_dtype(q.dtype)
        t = jnp.arange(length)
        scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=acc) * (dh**-0.5)
        b = q.shape[0]
        scores = scores + broadcast_batch(toeplitz(rel_bias.astype(acc), length, self.max_relative, self.causal), b)
        visible = (runs[:, :, None] == runs[:, None, :])[:, None]
        if self.causal:
            visible = visible & (t[:, None] >= t[None, :])
        weight = toeplitz(rel_weight.astype(acc), length, self.max_relative, self.causal)
        return _softmax_mix(scores, v, visible, broadcast_batch(weight, b))

    def step_mix(self, p, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One decoding position: append ``k_t, v_t``; scores with ``b_{clip(pos - s)}``, weights ``c_{clip(pos - s)}``.

        Past the cache's end the output is NaN.
        """
        pos = cache["pos"]
        q, cache = self.append(p, x_t, cache)
        acc = accum_dtype(self.dtype)
        dh = q.shape[-1]
        slots = cache["k"].shape[1]
        visible, dist = _step_visible(slots, pos)
        idx = relative_index(dist, self.max_relative, True)  # (b, slots)
        bias = jnp.moveaxis(p["rel_bias"].astype(acc)[:, idx], 0, 1)  # (b, h, slots)
        weight = jnp.moveaxis(p["rel_weight"].astype(acc)[:, idx], 0, 1)
        qk = jnp.einsum("bhd,bshd->bhs", q, cache["k"], preferred_element_type=acc)
        scores = (qk * dh**-0.5 + bias)[:, :, None, :]
        o = _softmax_mix(scores, cache["v"], visible[:, None, None, :], weight[:, :, None, :])[:, 0]
        return self.finish_step(p, o, pos, slots), cache


__all__ = ["RelativeAttention", "UniversalRPEAttention", "RelativeTable", "relative_index", "skew", "relative_logits"]
