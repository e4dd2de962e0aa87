"""n-gram heads (Akyürek et al. 2024): hard attention to positions that followed the same (n−1)-gram.

"In-Context Language Learning: Architectures and Algorithms" (ICML 2024),
Section 7: Transformers solve in-context regular languages with heads that
look up earlier continuations of the current context; adding such "n-gram
heads" to other architectures closes much of the gap. Here the head is a
mixer over :func:`seqjax.ops.attention`: the match pattern becomes an
additive 0/−inf bias on constant scores, so the op's uniform softmax over the
matches is exactly the hard attention, and segments and blockwise execution
come from the op.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from seqjax.mixers.attention import Cache, Heads, cache_slots
from seqjax.mixers.base import Projection
from seqjax.mixers.common import check_int, check_step_input, dense, positions_in_segment, same_segment, segment_runs
from seqjax.mixers.registry import register
from seqjax.ops.attention import attention
from seqjax.types import SegmentIds, Seq, SeqStep, Tokens


def ngram_match(keys: Tokens | Seq, n: int, segment_ids: SegmentIds | None = None) -> Bool[Array, "b l l"]:
    """The n-gram match pattern ``match[b, t, s]``.

    Key ``s`` matches query ``t`` iff ``s < t``, both lie in the same segment,
    and the ``n−1`` tokens ending at ``s−1`` equal the ``n−1`` tokens ending
    at ``t``, all inside their segment::

        keys[s−1−k] == keys[t−k]   for k = 0 .. n−2,   s−(n−1) >= start(s),  t−(n−2) >= start(t)

    (``n = 1``: every earlier position of the segment matches.)

    Args:
      keys: ``(b, l)`` token ids, or ``(b, l, d)`` vectors compared for exact equality.
      n: the n of the n-gram (``>= 1``).
      segment_ids: optional ``(b, l)`` ids; a change of id starts a new segment.

    Returns:
      ``(b, l, l)`` booleans.
    """
    b, l = keys.shape[:2]
    if keys.ndim == 2:
        eq = keys[:, :, None] == keys[:, None, :]
    else:
        eq = jnp.all(keys[:, :, None, :] == keys[:, None, :, :], axis=-1)
    # d[t, s] = eq[t, s-1]: the token at t against the token just before key s.
    d = jnp.pad(eq, ((0, 0), (0, 0), (1, 0)))[:, :, :l]
    match = jnp.ones((b, l, l), bool)
    for k in range(n - 1):
        # Shifting both axes by k compares keys[t-k] with keys[s-1-k].
        match = match & jnp.pad(d, ((0, 0), (k, 0), (k, 0)))[:, :l, :l]
    t = jnp.arange(l)
    pos = positions_in_segment(segment_ids, b, l)
    match = match & (t[:, None] > t[None, :])[None]
    match = match & (pos >= n - 1)[:, None, :] & (pos >= n - 2)[:, :, None]
    return match & same_segment(segment_ids, b, l)


@register("ngram")
class NGramAttention(Heads):
    """n-gram heads (Akyürek et al. 2024, Section 7): hard attention to earlier continuations.

    For each position ``t`` the head attends uniformly to the earlier positions
    ``s < t`` that followed the same ``(n−1)``-gram as the one ending at ``t``
    (the ``n−1`` tokens ending at ``s−1`` equal the ``n−1`` tokens ending at
    ``t``; see :func:`ngram_match`) and reads out a projection of what came at
    ``s``::

        o_t = (1/|S_t|) Σ_{s ∈ S_t} W_v x_s     (0 when S_t is empty)
        y_t = W_o o_t

    ``n = 2`` is a bigram head: it attends to the positions right after earlier
    occurrences of the current token. Tokens are compared as ``token_ids`` when
    given (``__call__(x, token_ids=...)``), else as exact equality of the input
    vectors ``x_t`` (e.g. the token embeddings of a first layer). All heads
    share the pattern; they differ in their value projections. Causal only.

    Mixing matrix (per head, acting on the values ``W_v x``; read off the op
    by :meth:`~seqjax.mixers.base.Mixer.mixing_matrix`): ``M[h, t, s] =
    1[s ∈ S_t] / |S_t|`` (strictly lower triangular, the same for every
    head; a row without a match is 0). Complexity: training O(l² · (n + d))
    time and an O(l²) pattern; decoding O(l · (n·d + h·dh)) per step with a
    cache of the past tokens (or vectors) and values.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype (and value-cache dtype); parameters are float32.
      impl: ``impl`` of :func:`seqjax.ops.attention` (or ``{"attention": ...}``).
      sequence_axis: must stay None (the match pattern needs the whole row).
      num_heads: heads ``h`` (1), each with its own value projection.
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      n: the n of the n-gram (2); ``n = 1`` averages all earlier positions.
      max_length: default cache length of ``init_cache``.
    """

    ops = ("attention",)
    values_index = 0  # v (b, l, h, dh)

    num_heads: int = 1
    n: int = 2
    max_length: int | None = None

    def check_fields(self):
        check_int(self.mixer_name, "n", self.n)
        check_int(self.mixer_name, "max_length", self.max_length, optional=True)
        super().check_fields()

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, _, dh = self.heads(d)
        return {
            "v_proj": dense(h * dh, ("embed", "heads"), dtype=self.dtype, name="v_proj"),
            "out_proj": dense(d, ("heads", "embed"), dtype=self.dtype, name="out_proj"),
        }

    def _keys(self, x, token_ids):
        if token_ids is None:
            return x
        token_ids = jnp.asarray(token_ids)
        if token_ids.shape != x.shape[:2] or not jnp.issubdtype(token_ids.dtype, jnp.integer):
            raise ValueError(
                f"ngram: token_ids must be integers of shape (batch, length)={x.shape[:2]}, "
                f"got {token_ids.dtype} {token_ids.shape}")
        return token_ids

    # --- the hooks of the Mixer contract ---------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None, token_ids: Tokens | None = None) -> Projection:
        """Values ``(b, l, h, dh)``, the match pattern ``(b, l, l)`` and the run indices.

        ``token_ids``: optional ``(batch, length)`` integer tokens to match on
        (``__call__(x, token_ids=...)``); None matches the vectors ``x``.
        """
        b, length, d = x.shape
        h, _, dh = self.heads(d)
        match = ngram_match(self._keys(x, token_ids), self.n, segment_ids)
        v = p["v_proj"](x.astype(self.dtype)).reshape(b, length, h, dh)
        runs = None if segment_ids is None else segment_runs(segment_ids, b, length)
        return Projection(tokens=(v, match, runs))

    def mix(self, axis, v, match, runs):
        del axis  # not sequence-parallel
        b, length, h, dh = v.shape
        # Constant scores (q·k = 0) plus a 0/-inf bias: softmax = uniform over
        # the matches, and a row without a match outputs 0. All heads share the
        # pattern, so they run as one attention head of width h·dh.
        zeros = jnp.zeros((b, length, 1, 1), v.dtype)
        bias = jax.lax.stop_gradient(jnp.where(match, 0.0, -jnp.inf).astype(jnp.float32))[:, None]
        o = attention(zeros, zeros, v.reshape(b, length, 1, h * dh), causal=True, segment_ids=runs, bias=bias,
                      impl=self.impl_for("attention"))
        return o.reshape(b, length, h, dh)

    def init_cache(self, batch_size: int, max_length: int | None = None, *, use_token_ids: bool = False) -> Cache:
        """An empty cache of past match keys and values.

        Args:
          batch_size: number of sequences.
          max_length: cache positions; None takes the ``max_length`` field.
          use_token_ids: store integer tokens (then every ``step`` needs
            ``token_ids``) instead of the input vectors.

        Returns:
          ``{"keys": (b, s) int32 or (b, s, d) float, "v": (b, s, h·dh) in
          dtype, "pos": (b,) int32}``. Vectors are kept in the accumulation
          dtype (float32 or float64) so that equality stays exact.
        """
        return self.empty_cache(batch_size, self.width(), max_length, use_token_ids)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None, use_token_ids: bool = False) -> Cache:
        h, _, dh = self.heads(d)
        slots = cache_slots(self.mixer_name, self.max_length, max_length)
        if use_token_ids:
            keys = jnp.zeros((batch_size, slots), jnp.int32)
        else:
            keys = jnp.zeros((batch_size, slots, d), self.acc())
        return {"keys": keys, "v": jnp.zeros((batch_size, slots, h * dh), self.dtype),
                "pos": jnp.zeros((batch_size,), jnp.int32)}

    def step(self, x_t: SeqStep, cache: Cache, *, token_ids: Int[Array, "b"] | None = None) -> tuple[SeqStep, Cache]:
        """One position: store the key and value, then attend to the matching earlier slots.

        Past the cache's end the output is NaN (a jitted step cannot raise).

        Args:
          x_t: ``(batch, d_model)`` input.
          cache: from :meth:`init_cache` or a previous step.
          token_ids: ``(batch,)`` tokens; required iff the cache stores tokens.

        Returns:
          ``(y_t, cache)``: ``(batch, d_model)`` in ``dtype`` and the new cache.
        """
        check_step_input(self.mixer_name, x_t)
        if isinstance(cache, dict) and set(cache) == {"keys", "v", "pos"}:
            # The key (token or vector) goes into the history here, where
            # token_ids is at hand; the base step checks the rest and calls step_mix.
            cache = {**cache, "keys": self._store_key(x_t, cache, token_ids)}
        return super().step(x_t, cache)

    def _store_key(self, x_t, cache, token_ids):
        b = x_t.shape[0]
        tokens = cache["keys"].ndim == 2
        if tokens != (token_ids is not None):
            raise ValueError("ngram.step: pass token_ids iff the cache was made with use_token_ids=True")
        if tokens:
            token_ids = jnp.asarray(token_ids)
            if token_ids.shape != (b,):
                raise ValueError(f"ngram.step: token_ids must have shape (batch,)=({b},), got {token_ids.shape}")
            key_t = token_ids.astype(jnp.int32)
        else:
            key_t = x_t.astype(cache["keys"].dtype)
        return cache["keys"].at[jnp.arange(b), cache["pos"]].set(key_t, mode="drop")

    def step_mix(self, p, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        # cache["keys"] already holds this position's key (see step).
        b = x_t.shape[0]
        h, _, dh = self.heads(x_t.shape[-1])
        hist, pos, rows = cache["keys"], cache["pos"], jnp.arange(b)
        vc = cache["v"].at[rows, pos].set(p["v_proj"](x_t.astype(self.dtype)).astype(self.dtype), mode="drop")
        slots = hist.shape[1]
        j = jnp.arange(slots)
        match = (j[None] < pos[:, None]) & (j[None] >= self.n - 1) & (pos >= self.n - 2)[:, None]
        for k in range(self.n - 1):
            query_tok = hist[rows, jnp.maximum(pos - k, 0)]
            # key_tok[:, j] = hist[:, j - 1 - k] (slots before 0 never match: j >= n-1).
            key_tok = jnp.roll(hist, 1 + k, axis=1)
            eq = key_tok == query_tok[:, None]
            match = match & (eq if hist.ndim == 2 else jnp.all(eq, axis=-1))
        bias = jnp.where(match, 0.0, -jnp.inf).astype(jnp.float32)[:, None, None, :]
        o = attention(jnp.zeros((b, 1, 1, 1), self.dtype), jnp.zeros((b, slots, 1, 1), self.dtype),
                      vc[:, :, None, :], bias=bias, impl=self.impl_for("attention"))
        o = jnp.where((pos < slots)[:, None, None, None], o, jnp.nan)
        y = self.output(p, o.reshape(b, h, dh), Projection())
        return y, {"keys": hist, "v": vc, "pos": pos + 1}

    def state_size(self, length: int | None = None, use_token_ids: bool = False) -> int:
        """Bytes of the decoding cache per sequence at ``length`` positions.

        Args:
          length: positions; None takes the ``max_length`` field.
          use_token_ids: the cache stores int32 tokens instead of vectors.

        Returns:
          ``length · (key + h·dh·itemsize(dtype)) + 4`` with key ``4`` (token)
          or ``d · itemsize(accumulation dtype)`` (vector), plus the int32 counter.
        """
        d = self.width()
        h, _, dh = self.heads(d)
        slots = cache_slots(self.mixer_name, self.max_length, length)
        key = 4 if use_token_ids else d * jnp.dtype(self.acc()).itemsize
        return slots * (key + h * dh * jnp.dtype(self.dtype).itemsize) + 4
