"""Aaren (Feng et al. 2024, "Attention as an RNN"): a learned query over every prefix.

Softmax attention of one fixed (learned) query over a growing prefix is an
RNN: its (max, normaliser, accumulator) state updates in O(1) per token, and
the outputs for all prefixes at once are a *prefix scan* of the online-softmax
monoid — here ``lax.associative_scan`` over positions with the one
:func:`seqjax.ops.online_softmax.merge` (no new combine). Packed sequences use
the segmented version of that monoid (:func:`segmented_merge`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float

from seqjax.mixers.common import dense
from seqjax.mixers.attention import head_sizes
from seqjax.mixers.positions import segment_runs
from seqjax.mixers._unconverted import check_seq, model_width
from seqjax.mixers.registry import register
from seqjax.ops import online_softmax as osm
from seqjax.ops.common import accum_dtype, segment_starts
from seqjax.types import SegmentIds, Seq, SeqStep

Cache = dict[str, jax.Array]
HeadMatrix = Float[Array, "b h l l"]
Flagged = tuple[Bool[Array, "..."], osm.SoftmaxState]
_HIGHEST = jax.lax.Precision.HIGHEST


def segmented_merge(a: Flagged, b: Flagged) -> Flagged:
    """The segmented online-softmax monoid: ``merge``, restarted where a segment starts.

    Elements are ``(flag, state)``, ``flag`` True where a new segment begins.
    ``(fa, a) ∘ (fb, b) = (fa ∨ fb, b if fb else merge(a, b))`` — the standard
    lifting of an associative operator to a segmented scan; associative
    whenever :func:`~seqjax.ops.online_softmax.merge` is.

    Args:
      a: the earlier element ``(flag (...), SoftmaxState)``.
      b: the later element, same shapes.

    Returns:
      The combined element.
    """
    fa, sa = a
    fb, sb = b
    merged = osm.merge(sa, sb)
    state = osm.SoftmaxState(
        jnp.where(fb, sb.m, merged.m),
        jnp.where(fb, sb.l, merged.l),
        jnp.where(fb[..., None], sb.acc, merged.acc),
    )
    return fa | fb, state


@register("aaren")
class Aaren(nn.Module):
    """Aaren (Feng et al. 2024, "Attention as an RNN"), multi-head, causal.

    Each head ``i`` has a learned query ``q_i`` (a parameter, not a function of
    the input) and attends over the prefix::

        k_t = W_k x_t,  v_t = W_v x_t                        (split into h heads of dh)
        o_t = Σ_{s≤t} softmax_s(q · k_s / √dh) v_s            (per head; s in t's segment)
        y_t = W_o concat_h(o_t)

    computed for all ``t`` at once (many-to-many) as a prefix
    ``lax.associative_scan`` of the online-softmax state
    ``(m_t, u_t, w_t) = (max_s s_s, Σ_s e^{s_s−m_t}, Σ_s e^{s_s−m_t} v_s)`` with
    :func:`~seqjax.ops.online_softmax.merge`, then ``o_t = w_t / u_t``. The
    recurrent form (``step``) is one merge per token: O(h · dh) state.

    Mixing matrix (per head): the prefix-softmax weights
    ``P[t, s] = e^{q·k_s/√dh} / Σ_{r≤t} e^{q·k_r/√dh}`` for ``s ≤ t`` (lower
    triangular; within each column the weights only shrink as ``t`` grows).
    Complexity: training O(l · d²) projections plus an O(l · h · dh) scan of
    depth O(log l); inference O(h · dh) time and state per token.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      num_heads: heads ``h`` (4), each with its own learned query.
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      dtype: compute dtype of the projections; the softmax state is float32
        (float64 when ``dtype`` is float64). Queries ``~ N(0, 1)`` at init, so
        that ``q·k/√dh`` starts with unit-order spread.
    """

    d_model: int | None = None
    num_heads: int = 4
    head_dim: int | None = None
    dtype: Any = jnp.float32

    def _dims(self, d: int) -> tuple[int, int]:
        h, _, dh = head_sizes("aaren", d, self.num_heads, None, self.head_dim)
        return h, dh

    @nn.compact
    def _parts(self, d: int) -> dict[str, Any]:
        h, dh = self._dims(d)
        query_init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("heads", None))
        return {
            "query": self.param("query", query_init, (h, dh)),
            "k_proj": dense(h * dh, ("embed", "heads"), dtype=self.dtype, name="k_proj"),
            "v_proj": dense(h * dh, ("embed", "heads"), dtype=self.dtype, name="v_proj"),
            "out_proj": dense(d, ("heads", "embed"), dtype=self.dtype, name="out_proj"),
        }

    def _scores_values(self, p, x):
        """Scores ``q·k/√dh`` ``(..., h)`` and values ``(..., h, dh)`` in the accumulation dtype."""
        h, dh = self._dims(x.shape[-1])
        acc = accum_dtype(self.dtype)
        xc = x.astype(self.dtype)
        k = p["k_proj"](xc).reshape(x.shape[:-1] + (h, dh)).astype(acc)
        v = p["v_proj"](xc).reshape(x.shape[:-1] + (h, dh)).astype(acc)
        s = jnp.einsum("...hd,hd->...h", k, p["query"].astype(acc), precision=_HIGHEST) * dh**-0.5
        return s, v

    def _out(self, p, o):
        return p["out_proj"](o.reshape(o.shape[:-2] + (-1,)).astype(self.dtype)).astype(self.dtype)

    # --- public API -----------------------------------------------------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """All prefix outputs by a (segmented) associative scan of the online-softmax merge.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids; the scan restarts
            where the id changes.
          deterministic: unused (no dropout).

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        del deterministic
        check_seq("aaren", x, segment_ids)
        p = self._parts(model_width(self, x))
        s, v = self._scores_values(p, x)
        # One key per position: the state of the singleton set {s}.
        state = osm.from_scores(s[..., None], v[..., None, :])
        if segment_ids is None:
            out = lax.associative_scan(osm.merge, state, axis=1)
        else:
            flags = jnp.broadcast_to(segment_starts(jnp.asarray(segment_ids))[:, :, None], s.shape)
            _, out = lax.associative_scan(segmented_merge, (flags, state), axis=1)
        return self._out(p, osm.finalize(out))

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> HeadMatrix:
        """The prefix-softmax weights per head, materialised.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          ``(batch, heads, length, length)`` lower triangular, rows summing to 1.
        """
        check_seq("aaren", x, segment_ids)
        p = self._parts(model_width(self, x))
        s, _ = self._scores_values(p, x)
        b, l, _ = x.shape
        t = jnp.arange(l)
        runs = segment_runs(segment_ids, b, l)
        vis = (t[:, None] >= t[None, :])[None] & (runs[:, :, None] == runs[:, None, :])
        scores = jnp.broadcast_to(jnp.moveaxis(s, 1, 2)[:, :, None, :], (b, s.shape[-1], l, l))
        return jax.nn.softmax(jnp.where(vis[:, None], scores, -jnp.inf), axis=-1)

    def apply_mixing_matrix(self, x: Seq, M: HeadMatrix, *, segment_ids: SegmentIds | None = None) -> Seq:
        """The projections of ``__call__``, mixing the values with the dense ``M``.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: ``(batch, heads, length, length)``, e.g. from :meth:`mixing_matrix`.
          segment_ids: unused (``M`` holds the masking).

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        del segment_ids
        check_seq("aaren", x, None)
        b, l, d = x.shape
        h, _ = self._dims(d)
        if M.shape != (b, h, l, l):
            raise ValueError(f"aaren: M must have shape (b, heads, l, l)={(b, h, l, l)}, got {M.shape}")
        p = self._parts(d)
        _, v = self._scores_values(p, x)
        return self._out(p, jnp.einsum("bhts,bshd->bthd", M.astype(v.dtype), v, precision=_HIGHEST))

    def init_cache(self, batch_size: int, max_length: int | None = None) -> Cache:
        """The empty online-softmax state (the identity of ``merge``).

        Args:
          batch_size: number of sequences.
          max_length: unused (the state does not grow).

        Returns:
          ``{"m", "l": (b, h), "acc": (b, h, dh)}`` in the accumulation dtype.
        """
        del max_length
        h, dh = self._dims(model_width(self))
        return osm.empty((batch_size, h), dh, accum_dtype(self.dtype))._asdict()

    def step(self, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One token: merge its singleton state into the running state, normalise.

        Args:
          x_t: ``(batch, d_model)`` input.
          cache: from :meth:`init_cache` or a previous step.

        Returns:
          ``(y_t, cache)``: ``(batch, d_model)`` in ``dtype`` and the new state.
        """
        if x_t.ndim != 2:
            raise ValueError(f"aaren.step: x_t must have shape (batch, d_model), got {x_t.shape}")
        if not isinstance(cache, dict) or set(cache) != {"m", "l", "acc"}:
            raise ValueError("aaren.step: cache must be the dict of init_cache with keys m, l, acc")
        p = self._parts(model_width(self, x_t))
        s, v = self._scores_values(p, x_t)
        state = osm.merge(osm.SoftmaxState(**cache), osm.from_scores(s[..., None], v[..., None, :]))
        return self._out(p, osm.finalize(state)), state._asdict()

    def state_size(self, length: int | None = None) -> int:
        """Bytes of the recurrent state per sequence (independent of ``length``).

        Args:
          length: unused.

        Returns:
          ``h · (dh + 2) · itemsize(accumulation dtype)``.
        """
        del length
        h, dh = self._dims(model_width(self))
        return h * (dh + 2) * jnp.dtype(accum_dtype(self.dtype)).itemsize
