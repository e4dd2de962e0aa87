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
from jaxtyping import Array, Bool

from seqjax.mixers.attention import Cache, Heads
from seqjax.mixers.base import Projection
from seqjax.mixers.common import dense, param
from seqjax.mixers.registry import register
from seqjax.ops import online_softmax as osm
from seqjax.ops.common import segment_starts
from seqjax.types import SegmentIds, Seq, SeqStep

Flagged = tuple[Bool[Array, "..."], osm.SoftmaxState]


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
class Aaren(Heads):
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

    Mixing matrix (per head, acting on the values ``v``; read off the scan
    by :meth:`~seqjax.mixers.base.Mixer.mixing_matrix`): the prefix-softmax
    weights ``M[h, t, s] = e^{q·k_s/√dh} / Σ_{r≤t} e^{q·k_r/√dh}`` for
    ``s ≤ t`` in ``t``'s segment (lower triangular; within each column the
    weights only shrink as ``t`` grows). Complexity: training O(l · d²)
    projections plus an O(l · h · dh) scan of depth O(log l); inference
    O(h · dh) time and state per token.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections; the softmax state is float32
        (float64 when ``dtype`` is float64).
      impl: must stay ``"auto"``: the scan calls no op of ``seqjax.ops`` with a choice.
      sequence_axis: must stay None.
      num_heads: heads ``h`` (4), each with its own learned query. Queries
        ``~ N(0, 1)`` at init, so that ``q·k/√dh`` starts with unit-order spread.
      head_dim: ``dh`` (None: ``d_model // num_heads``).
    """

    values_index = 1  # v (b, l, h, dh)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, _, dh = self.heads(d)
        return {
            "query": param(self, "query", nn.initializers.normal(1.0), (h, dh), ("heads", None)),
            "k_proj": dense(h * dh, ("embed", "heads"), dtype=self.dtype, name="k_proj"),
            "v_proj": dense(h * dh, ("embed", "heads"), dtype=self.dtype, name="v_proj"),
            "out_proj": dense(d, ("heads", "embed"), dtype=self.dtype, name="out_proj"),
        }

    def _scores_values(self, p, x):
        """Scores ``q·k/√dh`` ``(..., h)`` and values ``(..., h, dh)`` in the accumulation dtype."""
        h, _, dh = self.heads(x.shape[-1])
        acc = self.acc()
        xc = x.astype(self.dtype)
        k = p["k_proj"](xc).reshape(x.shape[:-1] + (h, dh)).astype(acc)
        v = p["v_proj"](xc).reshape(x.shape[:-1] + (h, dh)).astype(acc)
        s = jnp.einsum("...hd,hd->...h", k, p["query"].astype(acc), precision=jax.lax.Precision.HIGHEST) * dh**-0.5
        return s, v

    # --- the hooks of the Mixer contract ---------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        s, v = self._scores_values(p, x)
        starts = None if segment_ids is None else segment_starts(jnp.asarray(segment_ids))
        return Projection(tokens=(s, v, starts))

    def mix(self, axis, s, v, starts):
        """All prefix outputs by a (segmented) associative scan of the online-softmax merge."""
        del axis  # not sequence-parallel
        # One key per position: the state of the singleton set {s}.
        state = osm.from_scores(s[..., None], v[..., None, :])
        if starts is None:
            out = lax.associative_scan(osm.merge, state, axis=1)
        else:
            flags = jnp.broadcast_to(starts[:, :, None], s.shape)
            _, out = lax.associative_scan(segmented_merge, (flags, state), axis=1)
        return osm.finalize(out)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> Cache:
        """The empty online-softmax state (the identity of ``merge``): ``{"m", "l": (b, h), "acc": (b, h, dh)}``.

        In the accumulation dtype; ``max_length`` is unused (the state does not grow).
        """
        del max_length
        h, _, dh = self.heads(d)
        return osm.empty((batch_size, h), dh, self.acc())._asdict()

    def step_mix(self, p, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        # One token: merge its singleton state into the running state, normalise.
        s, v = self._scores_values(p, x_t)
        state = osm.merge(osm.SoftmaxState(**cache), osm.from_scores(s[..., None], v[..., None, :]))
        return self.output(p, osm.finalize(state), Projection()), state._asdict()
