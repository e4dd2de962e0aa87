"""Landmark attention (Mohtashami & Jaggi 2023): block retrieval through landmark tokens.

"Landmark Attention: Random-Access Infinite Context Length for Transformers"
(arXiv 2305.16300). The sequence is cut into blocks of ``ℓ = block_size``
tokens and a landmark token follows each complete block. A query ``t`` in
block ``c`` sees, through the paper's *grouped softmax*:

* the tokens ``s <= t`` of its own block and the landmarks ``m_j`` of the
  earlier blocks ``j < c``, all in one softmax group (the landmarks' own
  weights are then set to 0: they only gate);
* each token ``s`` of an earlier block ``j``, with a softmax inside block
  ``j`` multiplied by the probability of ``j``'s landmark in the main group::

    a_ts = q_t·k_s/√dh,   b_tj = q_t·m_j/√dh
    Z_t  = Σ_{s ∈ cur(t)} e^{a_ts} + Σ_{j < c} e^{b_tj}
    w_ts = e^{a_ts} / Z_t                                    s in t's block, s <= t
    w_ts = (e^{b_tj} / Z_t) · e^{a_ts} / Σ_{s' ∈ j} e^{a_ts'}   s in an earlier block j
    o_t  = Σ_s w_ts v_s,   y_t = W_o concat_h(o_t)

Here the landmarks are inserted by the mixer (input and output keep
``(b, l, d)``): landmark ``j`` enters as a learned vector ``e``; its key is
``m_j = W_k (e + W_o concat_h(r_j))`` where ``r_j`` is the landmark query
``W_q e`` attending (plain softmax) over the tokens of block ``j``. This is
what the paper's landmark token carries into the next layer (it attends to
its own block); a landmark key of ``W_k e`` alone would be the same for every
block and could not select one. Positions are not encoded (the paper uses
RoPE with a special index mapping at retrieval; put positions elsewhere).
Segments: blocks restart at each segment start and nothing crosses a
segment, so a packed row equals separate runs.

Inference (the paper's Section 3.2): the cache keeps the keys and values of
every token and one key per completed block; for each head, the query picks
the ``retrieval_top_k`` blocks with the highest landmark scores ``b_tj`` and
runs the same grouped softmax over the current block and those blocks only.
With ``retrieval_top_k=None`` (or at least the number of blocks) that is the
parallel form exactly. The parallel form (training) is the full grouped
softmax, O(l²) like attention; the gain of the paper is at inference, where a
step reads the ``nb`` landmark keys and ``k·ℓ + ℓ`` token slots, not all
``l``.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.attention import Heads, cache_slots, qkvo_projections
from seqjax.mixers.base import Projection
from seqjax.mixers.common import check_input, check_int, param, positions_in_segment, segment_runs
from seqjax.mixers.registry import register
from seqjax.types import SegmentIds, Seq, SeqStep

Cache = dict[str, jax.Array]

# A finite "minus infinity": masked logits must not produce inf - inf in the shifts.
NEG = -1e30


def block_ids(runs: jax.Array, pos: jax.Array, block_size: int) -> jax.Array:
    """Global block index of each position: a block starts at each segment start and every ``ℓ`` tokens.

    Args:
      runs: ``(b, l)`` segment run indices.
      pos: ``(b, l)`` positions inside the segments.
      block_size: ``ℓ``.

    Returns:
      ``(b, l)`` int32, non-decreasing along the row, starting at 0.
    """
    new_run = jnp.concatenate([jnp.ones_like(runs[:, :1], bool), runs[:, 1:] != runs[:, :-1]], axis=1)
    start = new_run | (pos % block_size == 0)
    return jnp.cumsum(start.astype(jnp.int32), axis=1) - 1


def _block_softmax(scores: jax.Array, bid: jax.Array) -> jax.Array:
    """Softmax of ``scores (b, ..., s)`` over the positions ``s`` sharing a block id ``bid (b, s)``."""

    def one(sc, ids):  # sc (..., s), ids (s,)
        data = jnp.moveaxis(sc, -1, 0)
        n = ids.shape[0]
        # The shift cancels in the ratio: no gradient through it.
        mx = jax.lax.stop_gradient(jax.ops.segment_max(data, ids, num_segments=n, indices_are_sorted=True))
        e = jnp.exp(data - mx[ids])
        den = jax.ops.segment_sum(e, ids, num_segments=n, indices_are_sorted=True)[ids]
        return jnp.moveaxis(e / den, 0, -1)

    return jax.vmap(one)(scores, bid)


@register("landmark")
class LandmarkAttention(Heads):
    """Landmark attention: grouped softmax over blocks gated by landmark scores; top-k block retrieval.

    Equations in the module docstring. Mixing matrix (per head, on ``v``):
    the weights ``w_ts`` of the grouped softmax (:meth:`mixing_matrix`
    returns them directly), lower triangular, rows summing to 1 (a landmark's
    probability is handed on to its block's tokens). Complexity: training O(l² · d) time and
    O(h · l²) memory (dense grouped softmax); decoding reads the ``l/ℓ``
    landmark keys plus ``(k + 1) · ℓ`` token slots per head with
    ``retrieval_top_k=k``, from a cache of all keys and values plus one
    landmark key per block.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype (and cache dtype); parameters float32, the
        softmaxes accumulate in float32.
      impl: only ``"auto"`` (no op with implementations is called).
      sequence_axis: must be None (no sequence-parallel form).
      num_heads: heads ``h`` (4).
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      block_size: tokens per block ``ℓ`` (50, the paper's value).
      retrieval_top_k: blocks each head retrieves per decoding step (None: all
        blocks, equal to the parallel form). The parallel form ignores it.
      max_length: default cache length of ``init_cache`` (rounded up to whole blocks).
    """

    values_index = 2  # v (b, l, h, dh)
    # The landmark vector is rank 1: the rank rule already keeps it out of weight decay.

    block_size: int = 50
    retrieval_top_k: int | None = None
    max_length: int | None = None

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "block_size", self.block_size)
        check_int(name, "retrieval_top_k", self.retrieval_top_k, optional=True)
        check_int(name, "max_length", self.max_length, optional=True)
        super().check_fields()

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, _, dh = self.heads(d)
        return {**qkvo_projections(h, dh, d, self.dtype),
                "landmark": param(self, "landmark", nn.initializers.normal(1.0), (d,), ("embed",))}

    # --- shared pieces -----------------------------------------------------------------

    def _qkv(self, p, x):
        *lead, d = x.shape
        h, _, dh = self.heads(d)
        xc = x.astype(self.dtype)
        return tuple(p[n](xc).reshape(*lead, h, dh) for n in ("q_proj", "k_proj", "v_proj"))

    def _scores(self, q, k):
        """``q·k/√dh`` in float32 (or float64): ``(b, h, t, s)``."""
        acc = self.acc()
        s = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=acc)
        return s.astype(acc) / math.sqrt(q.shape[-1])

    def _landmark_keys(self, p, pooled):
        """``W_k (e + W_o concat_h(r))`` for pooled reads ``r (..., h, dh)``: ``(..., h, dh)``."""
        d = p["landmark"].shape[0]
        h, _, dh = self.heads(d)
        e = p["landmark"].astype(self.acc())
        read = p["out_proj"](pooled.reshape(pooled.shape[:-2] + (h * dh,)).astype(self.dtype))
        rep = (e + read.astype(self.acc())).astype(self.dtype)
        return p["k_proj"](rep).reshape(rep.shape[:-1] + (h, dh))

    def _landmark_query(self, p):
        d = p["landmark"].shape[0]
        h, _, dh = self.heads(d)
        return p["q_proj"](p["landmark"].astype(self.dtype)).reshape(h, dh)

    # --- parallel form -----------------------------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        b, length, _ = x.shape
        acc = self.acc()
        q, k, v = self._qkv(p, x)
        runs = segment_runs(segment_ids, b, length)
        pos = positions_in_segment(segment_ids, b, length)
        bid = block_ids(runs, pos, self.block_size)
        # Each block's landmark reads its own block (landmark query, plain softmax).
        qe = self._landmark_query(p)
        sc = jnp.einsum("hd,bshd->bhs", qe, k, preferred_element_type=acc).astype(acc) / math.sqrt(qe.shape[-1])
        w = _block_softmax(sc, bid)  # (b, h, s)
        contrib = w.transpose(0, 2, 1)[..., None] * v.astype(acc)  # (b, s, h, dh)
        pooled = jax.vmap(lambda c, i: jax.ops.segment_sum(c, i, num_segments=length, indices_are_sorted=True))(
            contrib, bid)  # (b, blocks, h, dh); unused rows stay 0
        keys = self._landmark_keys(p, pooled)
        lmk = jnp.take_along_axis(keys, bid[:, :, None, None], axis=1)  # each token carries its block's landmark key
        return Projection(tokens=(q, k, v, lmk, runs, pos, bid))

    def weights(self, q, k, lmk, runs, pos, bid) -> jax.Array:
        """The grouped-softmax weights of the paper, dense.

        Args:
          q, k: ``(b, l, h, dh)`` queries and keys.
          lmk: ``(b, l, h, dh)``: at each position, the landmark key of its block.
          runs, pos, bid: ``(b, l)`` segment runs, positions in the segment, block ids.

        Returns:
          ``w (b, h, t, s)`` in float32 (float64 for a float64 dtype).
        """
        length = q.shape[1]
        blk = pos // self.block_size
        t_idx = jnp.arange(length)
        same = runs[:, :, None] == runs[:, None, :]
        cur = same & (bid[:, :, None] == bid[:, None, :]) & (t_idx[:, None] >= t_idx[None, :])
        earlier = same & (blk[:, None, :] < blk[:, :, None])
        # One landmark per earlier block: held by its last token.
        land = earlier & (pos % self.block_size == self.block_size - 1)[:, None, :]
        a = self._scores(q, k)
        lm = self._scores(q, lmk)  # b_t,block(s) at every (t, s)
        cur, earlier, land = cur[:, None], earlier[:, None], land[:, None]
        main = jnp.where(cur, a, jnp.where(land, lm, NEG))
        m = jax.lax.stop_gradient(jnp.max(main, axis=-1, keepdims=True))
        z = jnp.sum(jnp.exp(main - m), axis=-1, keepdims=True)
        gate = jnp.exp(jnp.where(earlier, lm, NEG) - m) / z
        within = self._within(a, bid)
        return jnp.where(cur, jnp.exp(main - m) / z, 0.0) + jnp.where(earlier, gate * within, 0.0)

    def _within(self, a, bid):
        """Softmax inside each block of ``a (b, h, t, s)`` over ``s``."""
        b, h, t, s = a.shape
        flat = a.reshape(b, h * t, s)
        return _block_softmax(flat, bid).reshape(b, h, t, s)

    def mix(self, axis, q, k, v, lmk, runs, pos, bid):
        del axis
        w = self.weights(q, k, lmk, runs, pos, bid)
        o = jnp.einsum("bhts,bshd->bthd", w.astype(self.dtype), v, preferred_element_type=self.acc())
        return o.astype(self.dtype)

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None, **kwargs) -> jax.Array:
        """The grouped-softmax weights ``(b, h, l, l)`` (``w_ts``; landmark weights are 0 and dropped).

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          ``(b, h, l, l)`` lower triangular, zero across segments.
        """
        del kwargs
        check_input(self.mixer_name, x, segment_ids)
        p = self.parts(self.width(x))
        proj = self.project(p, x, segment_ids)
        q, k, _, lmk, runs, pos, bid = proj.tokens
        return self.weights(q, k, lmk, runs, pos, bid)

    # --- decoding ----------------------------------------------------------------------

    def _slots(self, max_length):
        n = cache_slots(self.mixer_name, self.max_length, max_length)
        return -(-n // self.block_size) * self.block_size

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> Cache:
        """``{"k", "v": (b, slots, h, dh), "lmk": (b, slots/ℓ, h, dh), "pos": (b,)}``; slots: whole blocks."""
        h, _, dh = self.heads(d)
        slots = self._slots(max_length)
        kv = jnp.zeros((batch_size, slots, h, dh), self.dtype)
        lmk = jnp.zeros((batch_size, slots // self.block_size, h, dh), self.dtype)
        return {"k": kv, "v": kv, "lmk": lmk, "pos": jnp.zeros((batch_size,), jnp.int32)}

    def step_mix(self, p, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One decoding position: store ``k_t, v_t``, retrieve blocks, grouped softmax; close a full block.

        Each head picks the ``retrieval_top_k`` earlier blocks with the highest
        landmark scores (all of them when None) and reads only those blocks'
        slots and the current block's. When ``t`` ends a block, the block's
        landmark key is computed and stored. Past the cache's end the output
        is NaN (a jitted step cannot raise).
        """
        ell = self.block_size
        acc = self.acc()
        b = x_t.shape[0]
        rows = jnp.arange(b)
        pos = cache["pos"]
        q, k, v = self._qkv(p, x_t)  # (b, h, dh)
        kc = cache["k"].at[rows, pos].set(k.astype(cache["k"].dtype), mode="drop")
        vc = cache["v"].at[rows, pos].set(v.astype(cache["v"].dtype), mode="drop")
        nb = cache["lmk"].shape[1]
        c = pos // ell  # current block
        scale = 1.0 / math.sqrt(q.shape[-1])
        # The current block's slots (clipped past the end: the output is NaN there anyway).
        cur_slots = jnp.minimum(c[:, None] * ell + jnp.arange(ell)[None], kc.shape[1] - 1)  # (b, ℓ)
        k_cur = kc[rows[:, None], cur_slots]  # (b, ℓ, h, dh)
        v_cur = vc[rows[:, None], cur_slots]
        a_cur = jnp.einsum("bhd,bshd->bhs", q, k_cur, preferred_element_type=acc).astype(acc) * scale
        cur_ok = (jnp.arange(ell)[None] <= (pos % ell)[:, None])[:, None]  # (b, 1, ℓ)
        # Landmark scores of every earlier block; retrieval picks k of them per head.
        lm = jnp.einsum("bhd,bjhd->bhj", q, cache["lmk"], preferred_element_type=acc).astype(acc) * scale
        valid = jnp.arange(nb)[None, None] < c[:, None, None]  # (b, 1, nb)
        lm = jnp.where(valid, lm, NEG)
        top = self.retrieval_top_k
        if top is None or top >= nb:
            idx = jnp.broadcast_to(jnp.arange(nb), lm.shape)
            lm_sel = lm
        else:
            lm_sel, idx = jax.lax.top_k(lm, top)  # (b, h, k)
        ok_sel = idx < c[:, None, None]
        # Gather the retrieved blocks' keys/values per head: (b, h, k, ℓ, dh).
        hh = jnp.arange(q.shape[1])
        slot = idx[..., None] * ell + jnp.arange(ell)  # (b, h, k, ℓ)
        k_sel = kc[rows[:, None, None, None], slot, hh[None, :, None, None]]
        v_sel = vc[rows[:, None, None, None], slot, hh[None, :, None, None]]
        a_sel = jnp.einsum("bhd,bhksd->bhks", q, k_sel, preferred_element_type=acc).astype(acc) * scale
        # The main group: current tokens and retrieved landmarks.
        main_cur = jnp.where(cur_ok, a_cur, NEG)
        main_lm = jnp.where(ok_sel, lm_sel, NEG)
        m = jnp.maximum(jnp.max(main_cur, -1), jnp.max(main_lm, -1))[..., None]  # (b, h, 1)
        e_cur, e_lm = jnp.exp(main_cur - m), jnp.exp(main_lm - m)
        z = jnp.sum(e_cur, -1, keepdims=True) + jnp.sum(e_lm, -1, keepdims=True)
        within = jax.nn.softmax(a_sel, axis=-1)  # each retrieved block is complete
        w_sel = (e_lm / z)[..., None] * within
        o = (jnp.einsum("bhs,bshd->bhd", e_cur / z, v_cur.astype(acc))
             + jnp.einsum("bhks,bhksd->bhd", w_sel, v_sel.astype(acc)))
        o = jnp.where((pos < kc.shape[1])[:, None, None], o, jnp.nan)
        # Close the block: its landmark reads it with the landmark query.
        qe = self._landmark_query(p)
        sc = jnp.einsum("hd,bshd->bhs", qe, k_cur, preferred_element_type=acc).astype(acc) * scale
        pooled = jnp.einsum("bhs,bshd->bhd", jax.nn.softmax(sc, -1), v_cur.astype(acc))
        key = self._landmark_keys(p, pooled)
        done = (pos % ell) == ell - 1
        old = cache["lmk"][rows, jnp.minimum(c, nb - 1)]
        new = jnp.where(done[:, None, None], key.astype(old.dtype), old)
        lmk = cache["lmk"].at[rows, c].set(new, mode="drop")
        y = self.output(p, o.astype(self.dtype), Projection())
        return y, {"k": kc, "v": vc, "lmk": lmk, "pos": pos + 1}
