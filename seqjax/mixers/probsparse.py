"""ProbSparse self-attention (Informer; Zhou et al. 2021, AAAI, Section "Efficient Self-attention Mechanism").

Informer observes that few queries have a "peaked" attention distribution
and that the others are close to uniform. It ranks the queries by a sparsity
measurement, computed on a few sampled keys, and gives full softmax attention
to the top ``u`` only; every other ("lazy") query outputs the mean of the
values it may see (their uniform attention). Per head, with ``s_ij = q_i·k_j/√dh``::

    M̄(q_i) = max_{j ∈ S_i} s_ij − (1/|S_i|) Σ_{j ∈ S_i} s_ij        S_i: U sampled visible keys
    top    = the u queries of largest M̄                             u = ⌈c ln L⌉ (c = factor)
    o_i    = Σ_j softmax_j(s_ij) v_j   over visible j                 i ∈ top
    o_i    = mean of v_j over visible j                               otherwise

Visible keys: the query's own segment, and ``j <= i`` when ``causal`` (then the
lazy output is the cumulative mean ``(1/(i+1)) Σ_{j<=i} v_j``, the paper's
``cumsum`` of V for masked attention). ``U = u = min(L, ⌈c ln L⌉)``, at least 1:
the paper draws ``L_K ln L_Q`` dot-product pairs in all, ``c ln L`` per query
(its code uses ``c ⌈ln L⌉``). When ``U >= L`` every visible key is used and
``M̄`` is exact; when ``u = L`` every query is active and this is full softmax
attention.

Choices made here (the paper leaves them open or its code differs):

* Sampling is deterministic: query ``t``'s ``U`` keys come from
  :func:`sample_keys`, uniform draws from ``jax.random.fold_in(key(sample_seed), t)``
  mapped onto its visible range ``[lo_t, hi_t)`` (drawn with replacement, as the
  paper's ``randint``). The same model gives the same output in training and
  evaluation; the paper's code draws fresh indices on every call.
* Causal: the samples are drawn among the visible keys ``j <= t`` (the paper's
  code draws them from the whole sequence, so a query's rank there reads
  future keys).
* The top-``u`` selection (:func:`select_queries`) is a ranking over the whole
  row, as in the paper. So with ``u < L`` the causal form is causal in what each
  output *reads* (keys and values ``<= t``), but *whether* query ``t`` is active
  depends on the measurements of all queries, future ones included: a changed
  future input can flip a past query between active and lazy. Informer's
  decoder runs one forward pass over a given length and never needed more.
  With packed ``segment_ids`` attention, samples and lazy means stay inside each
  segment, but the ranking (and ``u``, from the row length) is per row, so a
  packed row equals separate runs exactly only when every query is active.

Decoding (``step``; the paper has no decode rule, Informer decodes in one
pass): a KV cache as ``mha``'s. Query ``t`` is active iff ``decode_threshold``
is None, or its measurement against the cached keys (the same samples as the
parallel form for position ``t``, with ``L`` = the cache's ``max_length``) is
``>= decode_threshold``; active queries attend to every cached key, lazy ones
output the mean of the cached values. So ``step`` equals the parallel form when
every query is active there (``u = L``), and with a threshold it equals the
parallel form whenever the threshold separates the parallel form's top ``u``
measurements from the rest (tested); a fixed threshold does not keep ``u``
fixed.

Mixing matrix: the mix is linear in the values given the selection (which
reads ``q`` and ``k`` only): active rows are the softmax rows, lazy rows the
uniform (cumulative) mean over the visible keys, ``values_index = 2``.

Cost: O(L · U · dh) for the measurement, O(u · L · dh) for the active rows,
O(L · dh) for the means (:func:`seqjax.ops.linear_scan` with segment restarts):
O(L log L) time and memory per head for training; decoding O(t) per step with
an O(L · h · dh) KV cache.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from seqjax.mixers.attention import Cache, RopeHeads, cache_slots
from seqjax.mixers.base import Projection
from seqjax.mixers.common import check_int, check_number, check_option, positions_in_segment
from seqjax.mixers.registry import register
from seqjax.ops.decode_attention import decode_attention
from seqjax.ops.linear_scan import linear_scan
from seqjax.types import SegmentIds, SeqStep



# --- the pure functions of the method (the tests' reference reuses sample_keys) ----------


def sample_count(length: int, factor: float) -> int:
    """``min(L, max(1, ⌈c ln L⌉))``: sampled keys per query, and active queries, for a length.

    Args:
      length: ``L``, the number of queries (= keys: self-attention).
      factor: ``c``.

    Returns:
      The count, a Python int in ``[1, L]``.
    """
    return min(length, max(1, math.ceil(factor * math.log(length)))) if length > 1 else 1


def visible_ranges(segment_ids: SegmentIds | None, batch: int, length: int, causal: bool):
    """The keys query ``t`` sees: ``lo[t] <= j < hi[t]`` (its segment; ``j <= t`` when causal).

    Args:
      segment_ids: ``(b, l)`` ids (a change of id starts a segment) or None.
      batch: ``b``.
      length: ``l``.
      causal: cut the range after ``t``.

    Returns:
      ``(lo, hi)``, each ``(b, l)`` int32.
    """
    t = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    lo = t - positions_in_segment(segment_ids, batch, length)
    if causal:
        return lo, t + 1
    if segment_ids is None:
        return lo, jnp.full((batch, length), length, jnp.int32)
    # The end of t's segment: reversed, t's offset from its segment's last position.
    back = positions_in_segment(jnp.asarray(segment_ids)[:, ::-1], batch, length)[:, ::-1]
    return lo, t + 1 + back


def sample_keys(seed: int, t: Int[Array, "..."], lo: Int[Array, "..."], hi: Int[Array, "..."], num_samples: int,
                length: int) -> tuple[Int[Array, "... n"], Bool[Array, "... n"]]:
    """The keys on which query ``t``'s sparsity measurement is computed.

    With ``num_samples < length``: ``num_samples`` draws, uniform with
    replacement over ``[lo, hi)``, from ``fold_in(PRNGKey(seed), t)``: they depend
    on the seed, the absolute position ``t`` and the range only (not on the
    input), so training, evaluation and decoding see the same samples. With
    ``num_samples >= length``: every key ``0 .. length-1``, masked to the range
    (the measurement is then exact).

    Args:
      seed: the fixed sampling seed (the mixer's ``sample_seed``).
      t: query positions, any shape ``*q``.
      lo: first visible key of each query (broadcastable to ``t``).
      hi: one past the last visible key (``> lo``).
      num_samples: ``U`` (from :func:`sample_count`).
      length: ``L``, the number of keys.

    Returns:
      ``(idx, valid)``: ``*q + (n,)`` int32 key indices and booleans (which
      indices count); ``n = U``, or ``L`` in the exact case.
    """
    t, lo, hi = jnp.broadcast_arrays(jnp.asarray(t, jnp.int32), jnp.asarray(lo, jnp.int32),
                                     jnp.asarray(hi, jnp.int32))
    if num_samples >= length:
        idx = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), t.shape + (length,))
        return idx, (idx >= lo[..., None]) & (idx < hi[..., None])
    key = jax.random.PRNGKey(seed)
    draw = lambda p: jax.random.uniform(jax.random.fold_in(key, p), (num_samples,))  # noqa: E731
    r = jax.vmap(draw)(t.reshape(-1)).reshape(t.shape + (num_samples,))
    width = (hi - lo)[..., None]
    idx = lo[..., None] + jnp.minimum(jnp.floor(r * width).astype(jnp.int32), width - 1)
    return idx, jnp.ones(idx.shape, bool)


def sparsity_measure(scores: Float[Array, "... n"], valid: Bool[Array, "... n"]) -> Float[Array, "..."]:
    """``M̄ = max − mean`` of the scaled scores over the valid sampled keys (eq. 4 of the paper).

    Args:
      scores: ``q·k_j/√dh`` for the sampled keys, float32 (or float64).
      valid: which samples count (at least one per query).

    Returns:
      ``M̄`` per query.
    """
    top = jnp.max(jnp.where(valid, scores, -jnp.inf), axis=-1)
    mean = jnp.sum(jnp.where(valid, scores, 0.0), axis=-1) / jnp.sum(valid, axis=-1)
    return top - mean


def select_queries(measure: Float[Array, "... l"], u: int) -> Int[Array, "... u"]:
    """The positions of the ``u`` largest measurements along the last axis (ties: the lower position).

    Args:
      measure: ``M̄`` per query.
      u: how many queries get full attention.

    Returns:
      ``(*b, u)`` int32 positions, largest measurement first.
    """
    return jax.lax.top_k(measure, u)[1].astype(jnp.int32)


# --- the mixer ------------------------------------------------------------------------------


@register("probsparse")
class ProbSparseAttention(RopeHeads):
    """Informer's ProbSparse self-attention (see the module docstring for the equations and choices).

    Projections as ``mha`` (``q, k, v = W_q x, W_k x, W_v x`` split into ``h``
    heads of ``dh``, optional RoPE on ``q, k``, ``y = W_o concat_h(o)``); the
    mixing keeps full softmax attention for the top ``u = ⌈c ln L⌉`` queries of
    each head by the sparsity measurement and gives the others the (cumulative)
    mean of the visible values.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype (and KV-cache dtype); parameters are float32, scores,
        softmax and means accumulate in float32.
      impl: ``impl`` of :func:`seqjax.ops.linear_scan` (the lazy queries' means).
      num_heads: heads ``h`` (4).
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      causal: masked (decoder) ProbSparse: keys ``j <= t``, cumulative means;
        False: bidirectional (Informer's encoder), no ``step``.
      factor: ``c`` (5, the paper's): ``U = u = ⌈c ln L⌉`` sampled keys per
        query and active queries per head.
      sample_seed: the fixed seed of the key sampling (0).
      positions: ``"rope"`` (default) or ``"none"`` (Informer adds absolute
        positions at the input: the model's ``positions``).
      rope_base: RoPE's frequency base (10000).
      max_length: the default KV-cache length of ``init_cache`` (decoding also
        takes the sample count from it).
      decode_threshold: ``step``'s rule: None, every decoding query is active
        (full attention over the cache); a number ``τ``, query ``t`` is active
        iff its measurement against the cache is ``>= τ``.
    """

    ops = ("linear_scan",)
    causality = "either"
    values_index = 2  # v (b, l, h, dh)

    causal: bool = True
    factor: float = 5.0
    sample_seed: int = 0
    max_length: int | None = None
    decode_threshold: float | None = None

    def check_fields(self):
        name = self.mixer_name
        check_option(name, "causal", self.causal, (True, False))
        check_number(name, "factor", self.factor, low=0, open_low=True)
        check_int(name, "sample_seed", self.sample_seed, minimum=0)
        check_int(name, "max_length", self.max_length, optional=True)
        if self.decode_threshold is not None:
            check_number(name, "decode_threshold", self.decode_threshold)
        super().check_fields()

    # --- the hooks of the Mixer contract ---------------------------------------------

    def mix(self, axis, q, k, v, runs):
        del axis  # not sequence parallel
        b, length, h, dh = q.shape
        acc = self.acc()
        scale = 1.0 / math.sqrt(dh)
        n = sample_count(length, self.factor)
        lo, hi = visible_ranges(runs, b, length, self.causal)
        t = jnp.arange(length, dtype=jnp.int32)[None]

        # The measurement only picks indices (zero gradient): keep it out of the backward pass.
        qs, ks = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
        idx, valid = sample_keys(self.sample_seed, t, lo, hi, n, length)  # (b, l, U)
        k_samp = jnp.take_along_axis(ks, idx.reshape(b, -1)[:, :, None, None], axis=1).reshape(b, length, -1, h, dh)
        s_samp = jnp.einsum("blhd,bluhd->bhlu", qs, k_samp, preferred_element_type=acc) * scale
        top = select_queries(sparsity_measure(s_samp, valid[:, None]), n)  # (b, h, u)

        # Full softmax attention for the active queries only: O(u · L) scores.
        qh = jnp.swapaxes(q, 1, 2)  # (b, h, l, dh)
        q_top = jnp.take_along_axis(qh, top[..., None], axis=2)  # (b, h, u, dh)
        s = jnp.einsum("bhud,bshd->bhus", q_top, k, preferred_element_type=acc) * scale
        j = jnp.arange(length)
        lo_top = jnp.take_along_axis(lo[:, None], top, axis=2)[..., None]
        hi_top = jnp.take_along_axis(hi[:, None], top, axis=2)[..., None]
        s = jnp.where((j >= lo_top) & (j < hi_top), s, -jnp.inf)  # every row sees its own key
        w = jax.nn.softmax(s, axis=-1)
        o_top = jnp.einsum("bhus,bshd->bhud", w, v.astype(acc), precision=jax.lax.Precision.HIGHEST)

        # Lazy queries: the mean of the visible values (segment-restarting prefix sums).
        ones = jnp.ones((1, 1, 1, 1), acc)
        fwd, _ = linear_scan(ones, v.astype(acc), segment_ids=runs, impl=self.impl_for("linear_scan"))
        if self.causal:
            total = fwd
        else:
            bwd, _ = linear_scan(ones, v.astype(acc), reverse=True, segment_ids=runs,
                                 impl=self.impl_for("linear_scan"))
            total = fwd + bwd - v.astype(acc)
        mean = total / (hi - lo).astype(acc)[:, :, None, None]
        out = jnp.swapaxes(mean, 1, 2)  # (b, h, l, dh)
        rows, heads = jnp.arange(b)[:, None, None], jnp.arange(h)[None, :, None]
        out = out.at[rows, heads, top].set(o_top)
        return jnp.swapaxes(out, 1, 2).astype(self.dtype)  # (b, l, h, dh)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> Cache:
        """``{"k", "v": (b, max_length, h, dh) in dtype, "pos": (b,) int32}``, as ``mha``'s."""
        _, h, dh = self.heads(d)
        kv = jnp.zeros((batch_size, cache_slots(self.mixer_name, self.max_length, max_length), h, dh), self.dtype)
        return {"k": kv, "v": kv, "pos": jnp.zeros((batch_size,), jnp.int32)}

    def step_mix(self, p, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One decoding position (the rule of the module docstring); NaN past the cache's end."""
        b = x_t.shape[0]
        pos = cache["pos"]
        q, k, v = self._qkv(p, x_t[:, None], pos[:, None])
        slots, _, dh = cache["k"].shape[1:]
        rows = jnp.arange(b)
        kc = cache["k"].at[rows, pos].set(k[:, 0].astype(cache["k"].dtype), mode="drop")
        vc = cache["v"].at[rows, pos].set(v[:, 0].astype(cache["v"].dtype), mode="drop")
        acc = self.acc()
        lengths = jnp.minimum(pos + 1, slots)
        full = decode_attention(q[:, 0], kc, vc, lengths=lengths, num_splits=4).astype(acc)  # (b, h, dh)
        if self.decode_threshold is None:
            o = full
        else:
            seen = jnp.arange(slots)[None, :] <= pos[:, None]  # (b, slots)
            mean = jnp.einsum("bs,bshd->bhd", seen.astype(acc), vc.astype(acc)) / (pos + 1).astype(acc)[:, None, None]
            idx, valid = sample_keys(self.sample_seed, pos, 0, pos + 1, sample_count(slots, self.factor), slots)
            k_samp = jnp.take_along_axis(kc, idx[:, :, None, None], axis=1)  # (b, U, h, dh)
            s = jnp.einsum("bhd,buhd->bhu", q[:, 0], k_samp, preferred_element_type=acc) / math.sqrt(dh)
            active = sparsity_measure(s, valid[:, None]) >= self.decode_threshold  # (b, h)
            o = jnp.where(active[..., None], full, mean)
        o = jnp.where((pos < slots)[:, None, None], o, jnp.nan)  # past the cache: no right answer
        return self.output(p, o, Projection()), {"k": kc, "v": vc, "pos": pos + 1}


__all__ = ["ProbSparseAttention", "sample_count", "visible_ranges", "sample_keys", "sparsity_measure",
           "select_queries"]
