"""SEA: sparse linear attention with an estimated attention mask (Lee, Kim, Willette, Hwang; ICLR 2024).

SEA estimates each query's attention row in a *compressed* form of fixed
width ``K`` with kernel (Performer) linear attention and a small decoder, picks
the top columns of that estimate, decompresses them to token positions (a
sparse mask) and runs exact softmax attention over the selected keys only.
The linear-attention estimate decides *where* to attend; it is not used for
the values (the paper's output is the sparse attention's). Per head (``dh``),
with ``q, k, v = W_q x, W_k x, W_v x``, query ``t`` at position ``p_t`` of its
segment (``n_t = p_t + 1`` visible keys, the first at ``lo_t = t − p_t``)::

    z_s   = [e(p_s) ; v_s]                                    e: K sinusoidal position features
    C_t   = Σ_{s<=t} φ(q_t)·φ(k_s) z_s / (Σ_{s<=t} φ(q_t)·φ(k_s) + eps)     (Performer, FAVOR+)
    S_t   = W_2 gelu(W_1 [C_t ; v_t] + b_1) + b_2             ∈ R^K  (the decoder, shared by heads)
    Ĉ_t   = S_t + Σ_{a=0..2} Σ_{c=−1..1} W_cnn[a, c] S_{t−a}[· + c]       (causal 3×3 CNN over (t, K))
    col j of row t covers keys lo_t + [⌈j n_t / K⌉, ⌈(j+1) n_t / K⌉)    (decompression of the row)
    c(n)  = clip(round(k K / n), 1, K)                         (the paper's top-k in compressed units)
    sel_t = the c(n_t) highest columns of Ĉ_t among the non-empty ones   (ties: the lower column)
    o_t   = Σ_{s ∈ sel_t} softmax_s(q_t·k_s / √dh) v_s        (exact, over the selected keys only)
    y     = W_o concat_h(o)

``k`` is ``top_k``, the paper's per-row token budget: ``c(n)`` compressed
columns of about ``n/K`` tokens each hold about ``k`` keys. Everything that
picks keys (features, ``C``, the decoder, the CNN, the ranking) reads only
positions ``<= t`` of ``t``'s segment, so the mixer is causal, and ``step``
(a KV cache, the Performer state ``[S | z]`` and the last two decoder rows)
equals the parallel form exactly.

What the paper has and this file simplifies (see ``docs/mixers.md``):

* The causal estimator's ``e(p)``: the authors' code concatenates a *learned*
  positional table (``max_length × K``) to ``v``; here ``e`` is a fixed
  sinusoidal code (no length limit, nothing to train).
* The CNN: the paper's decoder is an MLP plus a small multi-layer 2-D CNN
  with channels; here one residual causal 3×3 convolution with the heads as
  channels. The softmax over the ``K`` columns is left out: it is monotone per
  row, so the top-k reads the scores directly.
* Training the estimator: the paper distils it from a (pretrained) teacher's
  attention (KL + MSE between the estimate and the teacher's rows). The
  selection is piecewise constant, so the task loss gives the estimator's
  parameters zero gradient. Here the teacher is the layer's own exact causal
  attention over the same ``q, k`` (held fixed), compressed to the ``K``
  columns, and the loss is the KL term only (:func:`distillation_loss`; the
  MSE term's exact form was not verified): a training call sows
  ``distill_weight ×`` it into ``"losses"`` and the trainer adds it. That
  costs an O(L²) teacher per layer in training (evaluation and decoding stay
  sparse). The estimator's inputs are wrapped in ``stop_gradient``.
* FlatCSR (the paper's GPU sparse format) is not needed: the selected keys are
  gathered into ``G`` static slots per row (:func:`key_slots`).

Cost per head: O(L·m·(K + dh)) for the estimate, O(L·K·(w + K)) for the decoder and
ranking, O(L·G·dh) for the sparse attention with ``G = max_n min(c(n), n, K)·⌈n/K⌉``
slots per row; ``G <= ~2k`` while ``L <= k·K`` (linear time and memory), and
``G`` grows as ``⌈L/K⌉`` beyond (one column holds more than ``k`` keys).

Mixing matrix: given the selection (which reads ``q``, ``k`` and a copy of ``v``
held fixed), the mix is linear in ``v``: each row is the softmax row over its
selected keys (``values_index = 2``).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqjax.mixers.attention import Heads, cache_slots
from seqjax.mixers.base import AUX_LOSSES, Projection
from seqjax.mixers.common import check_int, check_number, dense, positions_in_segment, segment_runs
from seqjax.mixers.linear import favor_features, orthogonal_random_features
from seqjax.mixers.registry import register
from seqjax.ops.linear_attention import linear_attention
from seqjax.types import SegmentIds, Seq, SeqStep

HIGHEST = jax.lax.Precision.HIGHEST
CNN_ROWS = 3  # the CNN's reach back in time (rows t, t−1, t−2)


# --- the pure functions of the method (shapes static, Python ints where static) -----------


def column_count(n, top_k: int, width: int):
    """``c(n) = clip(round(k·K/n), 1, K)``: compressed columns kept for a row with ``n`` visible keys.

    Integer arithmetic (round half up): ``(2kK + n) // (2n)``.

    Args:
      n: visible keys per row (ints >= 1; array or Python int).
      top_k: ``k``, the per-row token budget.
      width: ``K``.

    Returns:
      ``c(n)``, same type as ``n``.
    """
    xp = np if isinstance(n, (int, np.integer, np.ndarray)) else jnp
    return xp.clip((2 * top_k * width + n) // (2 * n), 1, width)


def key_slots(length: int, top_k: int, width: int) -> int:
    """``G``: the most keys any row of up to ``length`` visible keys selects (the gather's slots).

    A row of ``n`` keys keeps ``min(c(n), n, K)`` non-empty columns of at most
    ``⌈n/K⌉`` keys each.

    Args:
      length: the longest row ``L``.
      top_k: ``k``.
      width: ``K``.

    Returns:
      ``max_{1<=n<=L} min(c(n), n, K)·⌈n/K⌉``, a Python int >= 1.
    """
    n = np.arange(1, length + 1, dtype=np.int64)
    cols = np.minimum(np.minimum(column_count(n, top_k, width), n), width)
    return int(np.max(cols * (-(-n // width))))


def column_bounds(n: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """Offsets ``[⌈j n/K⌉, ⌈(j+1) n/K⌉)`` of the keys each compressed column covers (from the row's first key).

    Args:
      n: visible keys per row, any shape.
      width: ``K``.

    Returns:
      ``(start, end)``, each ``n.shape + (K,)`` int32; a column with ``start == end`` is empty (``n < K``).
    """
    n = jnp.asarray(n, jnp.int32)[..., None]
    j = jnp.arange(width, dtype=jnp.int32)
    return (j * n + width - 1) // width, ((j + 1) * n + width - 1) // width


def select_keys(scores: jax.Array, n: jax.Array, lo: jax.Array, top_k: int,
                slots: int) -> tuple[jax.Array, jax.Array]:
    """The sparse mask: the keys of the ``c(n)`` highest non-empty columns, in position order.

    Args:
      scores: the compressed estimate ``Ĉ`` per row, float32 (or float64).
      n: visible keys per row (broadcastable to ``scores.shape[:-1]``).
      lo: each row's first visible key (broadcastable likewise).
      top_k: ``k``.
      slots: ``G`` (:func:`key_slots` of the longest row), static.

    Returns:
      ``(idx, valid)``: ``scores.shape[:-1] + (G,)`` int32 key positions (0
      where not valid) and booleans; every row has at least one valid key.
    """
    width = scores.shape[-1]
    n = jnp.broadcast_to(jnp.asarray(n, jnp.int32), scores.shape[:-1])
    lo = jnp.broadcast_to(jnp.asarray(lo, jnp.int32), scores.shape[:-1])
    start, end = column_bounds(n, width)
    size = end - start
    masked = jnp.where(size > 0, scores, -jnp.inf)  # empty columns rank last
    order = jax.lax.top_k(masked, width)[1]  # descending; ties: lower column first
    rank = jnp.argsort(order, axis=-1)
    keep = (rank < column_count(n, top_k, width)[..., None]) & (size > 0)
    taken = jnp.where(keep, size, 0)
    stop = jnp.cumsum(taken, axis=-1)  # where each kept column's keys end among the slots
    first = stop - taken
    g = jnp.arange(slots, dtype=jnp.int32)
    col = jnp.sum(stop[..., None, :] <= g[:, None], axis=-1)  # the column that slot g falls in
    col = jnp.minimum(col, width - 1)
    idx = lo[..., None] + jnp.take_along_axis(start, col, axis=-1) + g - jnp.take_along_axis(first, col, axis=-1)
    valid = g < stop[..., -1:]
    return jnp.where(valid, idx, 0), valid


def position_code(pos: jax.Array, width: int, dtype) -> jax.Array:
    """``e(p)``: ``sin(p ω_i), cos(p ω_i)`` interleaved, ``ω_i = 10000^{−2i/K}`` (the first ``K`` entries).

    Args:
      pos: positions in the segment.
      width: ``K``.
      dtype: float dtype.

    Returns:
      ``pos.shape + (K,)``.
    """
    j = jnp.arange(width)
    omega = jnp.power(10000.0, -(2 * (j // 2)) / width).astype(dtype)
    angle = jnp.asarray(pos, dtype)[..., None] * omega
    return jnp.where(j % 2 == 0, jnp.sin(angle), jnp.cos(angle))


def sparse_attention(q: jax.Array, keys: jax.Array, values: jax.Array,
                     idx: jax.Array, valid: jax.Array, acc) -> jax.Array:
    """``o = Σ_g softmax_g(q·k_{idx_g}/√dh) v_{idx_g}`` over the valid slots (gathered, never L×L).

    Args:
      q: ``(b, r, h, dh)`` queries of ``r`` rows.
      keys: ``(b, s, h, dh)`` keys of ``s`` positions.
      values: ``(b, s, h, dh)`` values.
      idx: ``(b, r, h, G)`` selected key positions per row and head.
      valid: ``(b, r, h, G)``, which slots count (at least one per row).
      acc: the accumulation dtype.

    Returns:
      ``(b, r, h, dh)`` in ``acc``.
    """
    b, r, h, slots = idx.shape
    flat = jnp.transpose(idx, (0, 2, 1, 3)).reshape(b, h, r * slots, 1)

    def gather(a):  # (b, s, h, dh) -> (b, h, r, G, dh)
        return jnp.take_along_axis(jnp.swapaxes(a, 1, 2), flat, axis=2).reshape(b, h, r, slots, -1)

    ks, vs = gather(keys), gather(values)
    s = jnp.einsum("brhd,bhrgd->brhg", q, ks, preferred_element_type=acc) / math.sqrt(q.shape[-1])
    w = jax.nn.softmax(jnp.where(valid, s, -jnp.inf), axis=-1)
    return jnp.einsum("brhg,bhrgd->brhd", w, vs.astype(acc), precision=HIGHEST)


def distillation_loss(q: jax.Array, k: jax.Array, scores: jax.Array, pos: jax.Array) -> jax.Array:
    """``KL(T_t ‖ softmax(Ĉ_t))`` averaged over rows and heads: the estimator's distillation loss.

    ``T_t`` is the exact causal softmax row ``softmax_s(q_t·k_s/√dh)`` over
    ``t``'s visible keys, compressed to the estimate's ``K`` columns (column
    ``j`` sums the probabilities of the keys it covers, :func:`column_bounds`);
    the estimate's distribution is the softmax of ``Ĉ_t`` over the non-empty
    columns. ``q`` and ``k`` are held fixed (the teacher), so the gradient
    reaches the estimator (decoder and CNN) only. Builds the ``(b, h, l, l)``
    teacher: O(L²) memory, as the paper's training.

    Args:
      q, k: ``(b, l, h, dh)`` queries and keys.
      scores: ``(b, l, h, K)`` the compressed estimate ``Ĉ`` (float32/64).
      pos: ``(b, l)`` positions in the segment.

    Returns:
      A scalar in ``scores``' dtype.
    """
    acc = scores.dtype
    b, length, _, dh = q.shape
    width = scores.shape[-1]
    qs, ks = (jax.lax.stop_gradient(a).astype(acc) for a in (q, k))
    logits = jnp.einsum("bthd,bshd->bhts", qs, ks, precision=HIGHEST) / math.sqrt(dh)
    t = jnp.arange(length, dtype=jnp.int32)
    lo = t[None] - pos  # (b, l): each row's first visible key
    visible = (t[None, None, :] <= t[None, :, None]) & (t[None, None, :] >= lo[:, :, None])
    teacher = jax.nn.softmax(jnp.where(visible[:, None], logits, -jnp.inf), axis=-1)
    # Column sums as differences of the row's running sum at the column bounds.
    run = jnp.concatenate([jnp.zeros(teacher.shape[:-1] + (1,), acc), jnp.cumsum(teacher, axis=-1)], axis=-1)
    start, end = column_bounds(pos + 1, width)  # (b, l, K)
    at = lambda i: jnp.take_along_axis(run, (lo[..., None] + i)[:, None], axis=-1)  # noqa: E731
    target = jax.lax.stop_gradient(jnp.maximum(at(end) - at(start), 0.0))  # (b, h, l, K)
    nonempty = (end > start)[:, None]
    est = jnp.moveaxis(scores, 2, 1)
    log_p = jnp.where(nonempty, jax.nn.log_softmax(jnp.where(nonempty, est, -jnp.inf), axis=-1), 0.0)
    positive = target > 0
    log_t = jnp.log(jnp.where(positive, target, 1.0))
    return jnp.mean(jnp.sum(jnp.where(positive, target * (log_t - log_p), 0.0), axis=-1))


# --- the mixer ------------------------------------------------------------------------------


@register("sea")
class SEA(Heads):
    """SEA sparse attention with an estimated mask (see the module docstring for the equations).

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections, the attention and the KV cache;
        the estimator and softmax run in float32 (float64 for float64).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention` (the estimate).
      num_heads: heads ``h`` (4).
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      compressed_width: ``K``, the width of the compressed attention estimate (32).
      top_k: ``k``, the per-row token budget (16): ``c(n) = round(k·K/n)`` columns.
      num_features: ``m``, FAVOR+ random features of the estimator (None: ``dh``).
      decoder_width: hidden width of the decoder MLP (64).
      eps: added to the estimate's denominator.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
      max_length: the default KV-cache length of ``init_cache``.
      distill_weight: scale of the estimator's distillation loss
        (:func:`distillation_loss`), sown as ``"distill_loss"`` into the
        ``"losses"`` collection in training (the trainer adds it); 0 sows
        nothing and leaves the estimator untrained (1.0).
    """

    ops = ("linear_attention",)
    causality = "causal"
    values_index = 2  # v in (q, k, v, scores, pos)
    # The estimator gets no gradient from the task loss (the selection is piecewise constant): weight
    # decay alone would shrink it to zero, leaving the decoder's bias to pick the same columns everywhere.
    no_decay_params = ("enc/kernel", "dec/kernel", "cnn")

    compressed_width: int = 32
    top_k: int = 16
    num_features: int | None = None
    decoder_width: int = 64
    eps: float = 1e-6
    chunk_size: int = 64
    max_length: int | None = None
    distill_weight: float = 1.0

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "compressed_width", self.compressed_width)
        check_int(name, "top_k", self.top_k)
        check_int(name, "num_features", self.num_features, optional=True)
        check_int(name, "decoder_width", self.decoder_width)
        check_number(name, "eps", self.eps, low=0, open_low=True)
        check_int(name, "chunk_size", self.chunk_size)
        check_int(name, "max_length", self.max_length, optional=True)
        check_number(name, "distill_weight", self.distill_weight, low=0.0)
        super().check_fields()

    def _features_dim(self, dh: int) -> int:
        return dh if self.num_features is None else self.num_features

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, _, dh = self.heads(d)
        kw = self.compressed_width
        parts = {name: dense(h * dh, ("embed", "heads"), dtype=self.dtype, name=name)
                 for name in ("q_proj", "k_proj", "v_proj")}
        parts["out_proj"] = dense(d, ("heads", "embed"), dtype=self.dtype, name="out_proj")
        # The decoder reads [C ; v] (K + 2 dh) and writes K scores; shared by the heads.
        parts["enc"] = dense(self.decoder_width, (None, "mlp"), use_bias=True, dtype=jnp.float32, name="enc")
        parts["dec"] = dense(kw, ("mlp", None), use_bias=True, dtype=jnp.float32, name="dec")
        fan_in = CNN_ROWS * 3 * h
        parts["cnn"] = self.param("cnn", nn.with_logical_partitioning(
            nn.initializers.normal(fan_in ** -0.5), (None, None, None, None)), (CNN_ROWS, 3, h, h), jnp.float32)
        m = self._features_dim(dh)
        # ω: fixed random draws in a non-trainable collection (as the Performer's).
        rng = self.make_rng("params") if self.is_initializing() else None
        parts["omega"] = self.variable("constants", "omega", lambda key: orthogonal_random_features(key, m, dh),
                                       rng).value
        return parts

    def _qkv(self, p, x):
        b, length, d = x.shape
        h, _, dh = self.heads(d)
        xc = x.astype(self.dtype)
        return tuple(p[n](xc).reshape(b, length, h, dh) for n in ("q_proj", "k_proj", "v_proj"))

    # --- the estimator -----------------------------------------------------------------

    def _estimator_terms(self, p, q, k, v, pos):
        """Features ``φ(q), φ(k)`` and ``z = [e(p) ; v ; 1]`` (the ones column: the denominator)."""
        acc = self.acc()
        q, k, v = (jax.lax.stop_gradient(a).astype(acc) for a in (q, k, v))
        scale = q.shape[-1] ** -0.25
        omega = p["omega"].astype(acc)
        fq, fk = favor_features(q * scale, omega, stabilise=True), favor_features(k * scale, omega)
        e = jnp.broadcast_to(position_code(pos, self.compressed_width, acc)[..., None, :],
                             v.shape[:-1] + (self.compressed_width,))
        return fq, fk, jnp.concatenate([e, v, jnp.ones(v.shape[:-1] + (1,), acc)], axis=-1), v

    def _decode_rows(self, p, num, v):
        """``S = W_2 gelu(W_1 [C ; v] + b_1) + b_2`` from the estimate's ``[num | den]``."""
        c = num[..., :-1] / (num[..., -1:] + self.eps)
        hidden = jax.nn.gelu(p["enc"](jnp.concatenate([c, v], axis=-1)))
        return p["dec"](hidden).astype(self.acc())

    def _rows(self, s, pos):
        """``[S_t, S_{t−1}, S_{t−2}]`` of the decoder rows ``s`` (b, l, h, K), zero before the segment's start."""
        length, rows = s.shape[1], [s]
        for a in range(1, CNN_ROWS):
            shifted = jnp.pad(s, [(0, 0), (a, 0), (0, 0), (0, 0)])[:, :length]
            rows.append(jnp.where((pos >= a)[:, :, None, None], shifted, 0.0))
        return rows

    def _cnn(self, p, rows):
        """``Ĉ_t = S_t + Σ_a conv_K(S_{t−a}, W[a])``; ``rows[a] = S_{t−a}`` (zeros before the segment)."""
        w = p["cnn"].astype(self.acc())
        out = rows[0]
        for a, r in enumerate(rows):
            padded = jnp.pad(r, [(0, 0)] * (r.ndim - 1) + [(1, 1)])
            width = r.shape[-1]
            for c in range(3):
                out = out + jnp.einsum("...gj,gh->...hj", padded[..., c:c + width], w[a, c], precision=HIGHEST)
        return out

    # --- the hooks of the Mixer contract ---------------------------------------------

    def _estimate(self, p, x, segment_ids):
        """``(q, k, v, Ĉ, pos)``: the projections, the compressed estimate ``(b, l, h, K)`` and the positions."""
        b, length, _ = x.shape
        q, k, v = self._qkv(p, x)
        pos = positions_in_segment(segment_ids, b, length)
        runs = None if segment_ids is None else segment_runs(segment_ids, b, length)
        fq, fk, z, v32 = self._estimator_terms(p, q, k, v, pos)
        num, _ = linear_attention(fq, fk, z, causal=True, segment_ids=runs, chunk_size=self.chunk_size,
                                  impl=self.impl_for("linear_attention"))
        return q, k, v, self._cnn(p, self._rows(self._decode_rows(p, num, v32), pos)), pos

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        q, k, v, estimate, pos = self._estimate(p, x, segment_ids)
        if self.distill_weight and self.is_mutable_collection(AUX_LOSSES) and not self.is_initializing():
            # Training only (the trainer makes the collection mutable); the selection below has no gradient.
            self.sow(AUX_LOSSES, "distill_loss", self.distill_weight * distillation_loss(q, k, estimate, pos))
        return Projection(tokens=(q, k, v, jax.lax.stop_gradient(estimate), pos))

    def distillation_loss(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> jax.Array:
        """The unweighted :func:`distillation_loss` of ``x``: what a training call sows × ``distill_weight``.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids of packed sequences.

        Returns:
          A scalar (float32, float64 for float64).
        """
        q, k, _, estimate, pos = self._estimate(self.parts(self.width(x)), x, segment_ids)
        return distillation_loss(q, k, estimate, pos)

    def mix(self, axis, q, k, v, scores, pos):
        del axis  # not sequence parallel
        length = q.shape[1]
        t = jnp.arange(length, dtype=jnp.int32)[None]
        idx, valid = select_keys(scores, (pos + 1)[:, :, None], (t - pos)[:, :, None], self.top_k,
                                 key_slots(length, self.top_k, self.compressed_width))
        return sparse_attention(q, k, v, idx, valid, self.acc()).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """KV cache ``(b, slots, h, dh)`` in ``dtype``, the estimate's state ``(b, h, m, K + dh + 1)``,
        the last two decoder rows ``(b, 2, h, K)`` (float32) and ``pos`` ``(b,)``."""
        h, _, dh = self.heads(d)
        kw, acc = self.compressed_width, self.acc()
        kv = jnp.zeros((batch_size, cache_slots(self.mixer_name, self.max_length, max_length), h, dh), self.dtype)
        return {"k": kv, "v": kv,
                "state": jnp.zeros((batch_size, h, self._features_dim(dh), kw + dh + 1), acc),
                "rows": jnp.zeros((batch_size, CNN_ROWS - 1, h, kw), acc),
                "pos": jnp.zeros((batch_size,), jnp.int32)}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        """One decoding position: the same estimate, ranking and sparse attention; NaN past the cache."""
        b = x_t.shape[0]
        pos = cache["pos"]
        q, k, v = self._qkv(p, x_t[:, None])
        slots = cache["k"].shape[1]
        rows_b = jnp.arange(b)
        kc = cache["k"].at[rows_b, pos].set(k[:, 0].astype(cache["k"].dtype), mode="drop")
        vc = cache["v"].at[rows_b, pos].set(v[:, 0].astype(cache["v"].dtype), mode="drop")
        fq, fk, z, v32 = self._estimator_terms(p, q[:, 0], k[:, 0], v[:, 0], pos)
        state = cache["state"] + fk[..., :, None] * z[..., None, :]  # (b, h, m, K + dh + 1)
        num = jnp.einsum("bhm,bhmc->bhc", fq, state, precision=HIGHEST)
        s = self._decode_rows(p, num, v32)  # (b, h, K)
        scores = self._cnn(p, [s, cache["rows"][:, 0], cache["rows"][:, 1]])
        idx, valid = select_keys(scores[:, None], (pos + 1)[:, None, None], 0, self.top_k,
                                 key_slots(slots, self.top_k, self.compressed_width))
        o = sparse_attention(q, kc, vc, idx, valid, self.acc())[:, 0]
        o = jnp.where((pos < slots)[:, None, None], o, jnp.nan)  # past the cache: no right answer
        rows = jnp.stack([s, cache["rows"][:, 0]], axis=1)
        return self.output(p, o, Projection()), {"k": kc, "v": vc, "state": state, "rows": rows, "pos": pos + 1}


__all__ = ["SEA", "column_count", "key_slots", "column_bounds", "select_keys", "position_code", "distillation_loss",
           "sparse_attention"]
