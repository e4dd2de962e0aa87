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
from jaxtyping import Array, Bool, Float, Int

from seqjax.mixers.common import dense
from seqjax.mixers.attention import head_sizes
from seqjax.mixers.positions import positions_in_segment, segment_runs
from seqjax.mixers._unconverted import check_seq, model_width
from seqjax.mixers.registry import register
from seqjax.ops.common import accum_dtype
from seqjax.ops import dispatch
from seqjax.ops.attention import attention
from seqjax.types import SegmentIds, Seq, SeqStep, Tokens

Cache = dict[str, jax.Array]
HeadMatrix = Float[Array, "b h l l"]
_HIGHEST = jax.lax.Precision.HIGHEST


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
    runs = segment_runs(segment_ids, b, l)
    match = match & (t[:, None] > t[None, :])[None]
    match = match & (pos >= n - 1)[:, None, :] & (pos >= n - 2)[:, :, None]
    return match & (runs[:, :, None] == runs[:, None, :])


@register("ngram")
class NGramAttention(nn.Module):
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

    Mixing matrix: ``M[t, s] = 1[s ∈ S_t] / |S_t|`` (strictly lower
    triangular, the same for every head). Complexity: training O(l² · (n + d))
    time and an O(l²) pattern; decoding O(l · (n·d + h·dh)) per step with a
    cache of the past tokens (or vectors) and values.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      n: the n of the n-gram (2); ``n = 1`` averages all earlier positions.
      num_heads: heads ``h`` (1), each with its own value projection.
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      max_length: default cache length of ``init_cache``.
      impl: ``impl`` of :func:`seqjax.ops.attention`.
      dtype: compute dtype (and value-cache dtype); parameters are float32.
    """

    d_model: int | None = None
    n: int = 2
    num_heads: int = 1
    head_dim: int | None = None
    max_length: int | None = None
    impl: str = "auto"
    dtype: Any = jnp.float32

    # --- configuration and parameters -----------------------------------------------

    def _dims(self, d: int) -> tuple[int, int]:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"ngram: n must be an int >= 1, got {self.n!r}")
        dispatch.check("attention", self.impl)
        h, _, dh = head_sizes("ngram", d, self.num_heads, None, self.head_dim)
        return h, dh

    @nn.compact
    def _parts(self, d: int) -> dict[str, Any]:
        h, dh = self._dims(d)
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

    def _prepare(self, x, segment_ids, token_ids):
        check_seq("ngram", x, segment_ids)
        p = self._parts(model_width(self, x))
        match = ngram_match(self._keys(x, token_ids), self.n, segment_ids)
        v = p["v_proj"](x.astype(self.dtype))  # (b, l, h·dh)
        return p, match, v

    def _out(self, p, o):
        return p["out_proj"](o.reshape(o.shape[:-2] + (-1,)).astype(self.dtype)).astype(self.dtype)

    # --- public API -----------------------------------------------------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True,
                 token_ids: Tokens | None = None) -> Seq:
        """The n-gram head over a sequence.

        Args:
          x: ``(batch, length, d_model)`` input (values; also the match keys
            when ``token_ids`` is None).
          segment_ids: optional ``(batch, length)`` ids of packed sequences.
          deterministic: unused (no dropout).
          token_ids: optional ``(batch, length)`` integer tokens to match on.

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        del deterministic
        p, match, v = self._prepare(x, segment_ids, token_ids)
        b, l, _ = x.shape
        h, dh = self._dims(x.shape[-1])
        # Constant scores (q·k = 0) plus a 0/-inf bias: softmax = uniform over
        # the matches, and a row without a match outputs 0. All heads share the
        # pattern, so they run as one attention head of width h·dh.
        zeros = jnp.zeros((b, l, 1, 1), self.dtype)
        bias = jax.lax.stop_gradient(jnp.where(match, 0.0, -jnp.inf).astype(jnp.float32))[:, None]
        runs = None if segment_ids is None else segment_runs(segment_ids, b, l)
        o = attention(zeros, zeros, v[:, :, None, :], causal=True, segment_ids=runs, bias=bias, impl=self.impl)
        return self._out(p, o.reshape(b, l, h, dh))

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None,
                      token_ids: Tokens | None = None) -> HeadMatrix:
        """The uniform match matrix ``M[t, s] = 1[s ∈ S_t] / |S_t|`` for every head.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.
          token_ids: optional ``(batch, length)`` tokens to match on.

        Returns:
          ``(batch, heads, length, length)`` in the accumulation dtype; rows
          without a match are 0.
        """
        check_seq("ngram", x, segment_ids)
        h, _ = self._dims(model_width(self, x))
        match = ngram_match(self._keys(x, token_ids), self.n, segment_ids).astype(accum_dtype(self.dtype))
        count = jnp.sum(match, axis=-1, keepdims=True)
        M = match / jnp.maximum(count, 1.0)
        b, l = x.shape[:2]
        return jnp.broadcast_to(M[:, None], (b, h, l, l))

    def apply_mixing_matrix(self, x: Seq, M: HeadMatrix, *, segment_ids: SegmentIds | None = None,
                            token_ids: Tokens | None = None) -> Seq:
        """The value and output projections of ``__call__``, mixing with the dense ``M``.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: ``(batch, heads, length, length)``, e.g. from :meth:`mixing_matrix`.
          segment_ids: unused (``M`` holds the pattern); accepted for symmetry.
          token_ids: unused, as ``segment_ids``.

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        del segment_ids, token_ids
        check_seq("ngram", x, None)
        b, l, d = x.shape
        h, dh = self._dims(d)
        if M.shape != (b, h, l, l):
            raise ValueError(f"ngram: M must have shape (b, heads, l, l)={(b, h, l, l)}, got {M.shape}")
        p = self._parts(d)
        acc = accum_dtype(self.dtype)
        v = p["v_proj"](x.astype(self.dtype)).reshape(b, l, h, dh).astype(acc)
        return self._out(p, jnp.einsum("bhts,bshd->bthd", M.astype(acc), v, precision=_HIGHEST))

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
        d = model_width(self)
        h, dh = self._dims(d)
        slots = self._slots(max_length)
        if use_token_ids:
            keys = jnp.zeros((batch_size, slots), jnp.int32)
        else:
            keys = jnp.zeros((batch_size, slots, d), accum_dtype(self.dtype))
        return {"keys": keys, "v": jnp.zeros((batch_size, slots, h * dh), self.dtype),
                "pos": jnp.zeros((batch_size,), jnp.int32)}

    def _slots(self, max_length):
        max_length = self.max_length if max_length is None else max_length
        if max_length is None:
            raise ValueError("ngram: max_length is required for the cache of past tokens; "
                             "pass init_cache(batch_size, max_length) or set the max_length field")
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"ngram: max_length must be a positive int, got {max_length!r}")
        return max_length

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
        if x_t.ndim != 2:
            raise ValueError(f"ngram.step: x_t must have shape (batch, d_model), got {x_t.shape}")
        if not isinstance(cache, dict) or set(cache) != {"keys", "v", "pos"}:
            raise ValueError("ngram.step: cache must be the dict of init_cache with keys keys, v, pos")
        b, d = x_t.shape
        h, dh = self._dims(model_width(self, x_t))
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
        p = self._parts(d)
        pos, rows = cache["pos"], jnp.arange(b)
        hist = cache["keys"].at[rows, pos].set(key_t, mode="drop")
        vc = cache["v"].at[rows, pos].set(p["v_proj"](x_t.astype(self.dtype)).astype(self.dtype), mode="drop")
        slots = hist.shape[1]
        j = jnp.arange(slots)
        match = (j[None] < pos[:, None]) & (j[None] >= self.n - 1) & (pos >= self.n - 2)[:, None]
        for k in range(self.n - 1):
            query_tok = hist[rows, jnp.maximum(pos - k, 0)]
            # key_tok[:, j] = hist[:, j - 1 - k] (slots before 0 never match: j >= n-1).
            key_tok = jnp.roll(hist, 1 + k, axis=1)
            eq = key_tok == query_tok[:, None]
            match = match & (eq if tokens else jnp.all(eq, axis=-1))
        bias = jnp.where(match, 0.0, -jnp.inf).astype(jnp.float32)[:, None, None, :]
        o = attention(jnp.zeros((b, 1, 1, 1), self.dtype), jnp.zeros((b, slots, 1, 1), self.dtype),
                      vc[:, :, None, :], bias=bias, impl=self.impl)
        o = jnp.where((pos < slots)[:, None, None, None], o, jnp.nan)
        y = self._out(p, o.reshape(b, h, dh))
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
        d = model_width(self)
        h, dh = self._dims(d)
        slots = self._slots(length)
        key = 4 if use_token_ids else d * jnp.dtype(accum_dtype(self.dtype)).itemsize
        return slots * (key + h * dh * jnp.dtype(self.dtype).itemsize) + 4
