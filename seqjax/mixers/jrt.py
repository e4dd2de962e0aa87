"""JRT-RNN's prefix linear attention with the Based (Taylor) feature map.

Arora et al. 2024, "Just read twice: closing the recall gap for recurrent
language models" (arXiv 2407.05483). A recurrent model that reads a prompt
left to right must guess what to keep before it sees the question; JRT-RNN
reads the prompt's first ``M`` tokens (the *prefix*) non-causally, as an
encoder, and the rest causally, as a decoder, in one linear-attention layer
("prefix linear attention"). Per head, with the Based feature map ``φ``
(Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff")::

    φ(x) = [1, x / d'^(1/4), vec(x ⊗ x) / (√2 · √d')]     (x: d' = feature_dim numbers)
    φ(q)·φ(k) = 1 + q·k/√d' + (q·k)²/(2d')               (2nd-order Taylor of exp(q·k/√d'))

    S_enc = Σ_{j<M} φ(k^e_j) v^e_jᵀ,   z_enc = Σ_{j<M} φ(k^e_j)      (the whole prefix, non-causal)
    y_i = φ(q_i)ᵀ (S_enc + Σ_{j<=i} φ(k^d_j) v^d_jᵀ) / (φ(q_i)·(z_enc + Σ_{j<=i} φ(k^d_j)) + eps)

for *every* position ``i``, inside the prefix too: the encoder term is the
same for all ``i``, the decoder sum starts at the first token (not at
``M``), as in the authors' public code (``prefix_linear_attention.py`` of
HazyResearch/prefix-linear-attention: the decoder keys/values of the prompt
are part of the causal sum, the encoder keys/values a separate, unmasked
cross term). ``k^e, v^e`` and ``k^d, v^d`` are separate projections of the
same input, ``q`` is shared. With ``M = 0`` this is causal Based linear
attention. A prefix position ``i < M`` sees the whole prefix; a next-token
loss must therefore not score positions ``i < M − 1`` (their next token is
in the prefix); position ``M − 1`` and later see nothing of their targets.

Implementation: two calls of :func:`seqjax.ops.linear_attention`, each with a
ones column appended to the values so that the op also carries the
normaliser: the encoder term as the op's bidirectional form over keys masked
to the prefix (without ``segment_ids`` that is one ``Σ φ(k)vᵀ`` einsum, i.e.
the prefix state; with them, the op's per-segment sums), the decoder term as
its causal form. The prefix is counted from each segment start, so packed
sequences equal separate runs, and it can be given per row at call time
(``prefix_lengths``).

Decoding: :meth:`JRT.prefill` runs a prompt in parallel and returns the
cache ``S = S_enc + Σ_{j<P} φ(k^d_j) v^d_jᵀ`` (and ``z``) of the one combined
state the authors' code keeps; :meth:`~seqjax.mixers.base.Mixer.step` then adds one
decoder token at a time. The prefix of a prompt of ``P`` tokens is ``min(M,
P)``; a step after the prefill reproduces the parallel form at positions
``>= P`` of the whole sequence with that prefix. ``init_cache`` is the empty
cache: stepping from it is the parallel form with ``M = 0`` (no prefix can
be read non-causally one token at a time).

Left out: the rest of the JRT-RNN / Based block. The paper's architecture
interleaves these layers with separate short-convolution and sliding-window
softmax attention layers (the ``sliding_window`` mixer here); this module is
the linear-attention layer alone. Training objectives (which positions a loss
scores) are the task's. Cost: the Taylor features make the state ``D = 1 + d'
+ d'²`` rows deep (273 at d' = 16), so the op runs on ``D``-wide keys; a
kernel that forms ``1 + a/√d' + a²/2d'`` from the raw ``a = q·k`` inside
chunks (as Based's kernels do) would be cheaper and is not written here.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_divides, check_input, check_int, check_number, dense, positions_in_segment
from seqjax.mixers.registry import register
from seqjax.ops.linear_attention import linear_attention
from seqjax.types import SegmentIds, Seq, SeqStep

HIGHEST = jax.lax.Precision.HIGHEST


def taylor_feature_map(x: jax.Array) -> jax.Array:
    """Based's 2nd-order Taylor feature map ``φ(x) = [1, x/d'^(1/4), vec(x⊗x)/(√2·√d')]``.

    ``φ(q)·φ(k) = 1 + q·k/√d' + (q·k)²/(2d')``, the Taylor expansion of
    ``exp(q·k/√d')`` to second order; it is >= 1/2 for every pair, so the
    normaliser of attention built on it never vanishes. The full outer
    product is kept (``d'²`` entries, each off-diagonal pair twice), as in
    Based.

    Args:
      x: ``(..., d')``.

    Returns:
      ``(..., 1 + d' + d'²)`` in ``x``'s dtype.
    """
    d = x.shape[-1]
    second = (x[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (d * d,))
    return jnp.concatenate(
        [jnp.ones(x.shape[:-1] + (1,), x.dtype), x / math.sqrt(math.sqrt(d)), second / (math.sqrt(2.0) * math.sqrt(d))],
        axis=-1)


def expanded_dim(feature_dim: int) -> int:
    """``D = 1 + d' + d'²``, the length of :func:`taylor_feature_map`'s output."""
    return 1 + feature_dim + feature_dim * feature_dim


@register("jrt")
class JRT(Mixer):
    """JRT-RNN prefix linear attention (Arora et al. 2024; see the module docstring).

    Per head (``h = num_heads``, ``dv = d_model / h``, ``d' = feature_dim``,
    ``D = 1 + d' + d'²``)::

        q, k^d, k^e = x W_Q, x W_Kd, x W_Ke        (d' per head)
        v^d, v^e    = x W_Vd, x W_Ve               (dv per head)
        y_i = φ(q_i)ᵀ(Σ_{j<M} φ(k^e_j) v^e_jᵀ + Σ_{j<=i} φ(k^d_j) v^d_jᵀ)
              / (φ(q_i)·(Σ_{j<M} φ(k^e_j) + Σ_{j<=i} φ(k^d_j)) + eps)
        out = concat_h(y) W_O

    with the sums inside the position's segment and ``j < M`` counted from
    the segment start. No biases (as the authors' code).

    Mixing matrix: the mix is linear in the pair ``(v^d, v^e)``, so
    :meth:`mixing_matrix` returns ``2h`` channels: channels ``0..h-1`` the
    decoder matrix ``M^d[t, s] = φ(q_t)·φ(k^d_s) / n_t`` (``s <= t``, lower
    triangular) acting on ``v^d``, channels ``h..2h-1`` the encoder matrix
    ``M^e[t, s] = φ(q_t)·φ(k^e_s) / n_t`` (every row, columns ``s < M``)
    acting on ``v^e``; ``n_t`` the denominator above. ``y = M^d v^d + M^e
    v^e``; with ``M = 0`` the encoder half is zero.

    Attributes:
      num_heads: heads; must divide ``d_model``.
      feature_dim: ``d'``, the query/key width per head before the feature
        map (16 in Based and JRT-RNN).
      prefix_length: ``M``, the tokens read non-causally (from each segment
        start); 0: causal Based linear attention. ``__call__`` and
        ``mixing_matrix`` take ``prefix_lengths`` ``(batch,)`` to set it per row.
      eps: added to the denominator (the authors' 1e-12; it is >= 1/2 per
        summed key anyway).
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections; the feature map, the op and the
        normalisation run in float32 (float64 for a float64 ``dtype``).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention`.
      sequence_axis: must stay None (no sequence-parallel form).
    """

    ops = ("linear_attention",)
    causality = "causal"
    values_index = 2  # v^d in (φq, φk^d, v^d, φk^e masked to the prefix, v^e, segment_ids)
    no_decay_params: ClassVar[tuple[str, ...]] = ()

    num_heads: int = 4
    feature_dim: int = 16
    prefix_length: int = 0
    eps: float = 1e-12
    chunk_size: int = 64

    # --- configuration and parameters ---------------------------------------------------

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_heads", self.num_heads)
        check_int(name, "feature_dim", self.feature_dim)
        check_int(name, "prefix_length", self.prefix_length, minimum=0)
        check_number(name, "eps", self.eps, low=0, open_low=True)
        check_int(name, "chunk_size", self.chunk_size)
        if self.d_model is not None:
            self._dims(self.d_model)

    def _dims(self, d: int) -> tuple[int, int, int]:
        """``(h, dv, D)`` for width ``d``; ConfigError unless ``num_heads`` divides it."""
        dv = check_divides(self.mixer_name, "num_heads", self.num_heads, d, "d_model")
        return self.num_heads, dv, expanded_dim(self.feature_dim)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, dv, _ = self._dims(d)
        # Queries and both keys have d' numbers per head, both values dv (no biases, as the authors' code).
        widths = {"q_proj": self.feature_dim, "k_proj": self.feature_dim, "k_enc_proj": self.feature_dim,
                  "v_proj": dv, "v_enc_proj": dv}
        parts = {name: dense(h * w, ("embed", "mlp"), dtype=self.dtype, name=name) for name, w in widths.items()}
        parts["out_proj"] = dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj")
        parts["dims"] = (h, dv)
        return parts

    def _heads(self, p, x, name, width):
        """Projection ``name`` of ``x`` as ``(..., h, width)`` in the accumulation dtype."""
        return p[name](x).astype(self.acc()).reshape(x.shape[:-1] + (p["dims"][0], width))

    def _branches(self, p, x):
        """``φ(q), φ(k^d), v^d, φ(k^e), v^e`` of ``x`` ``(..., d)``: ``(..., h, D or dv)``, float32+."""
        x = x.astype(self.dtype)
        dv, f = p["dims"][1], self.feature_dim
        fq, fk, fke = (taylor_feature_map(self._heads(p, x, n, f)) for n in ("q_proj", "k_proj", "k_enc_proj"))
        return fq, fk, self._heads(p, x, "v_proj", dv), fke, self._heads(p, x, "v_enc_proj", dv)

    def _prefix(self, segment_ids, batch, length, prefix_lengths):
        """``(b, l)`` booleans: the position is among its segment's first ``M`` (per row) tokens."""
        if prefix_lengths is None:
            m = jnp.full((batch, 1), self.prefix_length, jnp.int32)
        else:
            prefix_lengths = jnp.asarray(prefix_lengths)
            if prefix_lengths.shape != (batch,) or not jnp.issubdtype(prefix_lengths.dtype, jnp.integer):
                raise ValueError(f"{self.mixer_name}: prefix_lengths must be (batch,) = ({batch},) integers, "
                                 f"got {prefix_lengths.shape} {prefix_lengths.dtype}")
            m = prefix_lengths.astype(jnp.int32)[:, None]
        return positions_in_segment(segment_ids, batch, length) < m

    # --- the hooks of the Mixer base ------------------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None, prefix_lengths=None) -> Projection:
        fq, fk, v, fke, ve = self._branches(p, x)
        inside = self._prefix(segment_ids, x.shape[0], x.shape[1], prefix_lengths)
        # A zero encoder key adds nothing to the numerator nor to the normaliser:
        # masking the keys is the whole prefix restriction.
        fke = jnp.where(inside[:, :, None, None], fke, 0)
        return Projection(tokens=(fq, fk, v, fke, ve, segment_ids))

    def _sums(self, fq, fk, v, fke, ve, segment_ids):
        """Unnormalised ``[numerator | denominator]`` ``(b, l, h, dv+1)`` and the combined final state."""
        ones = jnp.ones(v.shape[:-1] + (1,), v.dtype)
        impl = self.impl_for("linear_attention")
        enc, enc_state = linear_attention(fq, fke, jnp.concatenate([ve, ones], -1), causal=False,
                                          segment_ids=segment_ids, chunk_size=self.chunk_size, impl=impl)
        dec, dec_state = linear_attention(fq, fk, jnp.concatenate([v, ones], -1), causal=True,
                                          segment_ids=segment_ids, chunk_size=self.chunk_size, impl=impl)
        return enc + dec, enc_state + dec_state

    def _normalise(self, o):
        return o[..., :-1] / (o[..., -1:] + self.eps)

    def mix(self, axis, fq, fk, v, fke, ve, segment_ids):
        del axis  # no sequence-parallel form
        return self._normalise(self._sums(fq, fk, v, fke, ve, segment_ids)[0])

    def output(self, p, y, proj: Projection) -> Seq:
        """Out-projection of per-head outputs ``(…, h, dv)``."""
        return p["out_proj"](y.reshape(y.shape[:-2] + (-1,)).astype(self.dtype)).astype(self.dtype)

    # --- the mixing matrix: two value streams ------------------------------------------------

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None, **kwargs) -> jax.Array:
        """``[M^d | M^e]``: ``(batch, 2h, l, l)`` with ``mix = M^d v^d + M^e v^e`` per head.

        Read off the mix by one-hot values in one stream and zeros in the
        other (vmapped over positions); see the class docstring.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.
          **kwargs: ``prefix_lengths``.

        Returns:
          ``(batch, 2·num_heads, length, length)``.
        """
        check_input(self.mixer_name, x, segment_ids)
        p = self.parts(self.width(x))
        fq, fk, v, fke, ve, seg = self.project(p, x, segment_ids, **kwargs).tokens
        length = x.shape[1]

        def column(s, stream):
            basis = jnp.broadcast_to((jnp.arange(length) == s).astype(v.dtype)[None, :, None, None], v.shape)
            zeros = jnp.zeros_like(v)
            vd, vd_enc = (basis, zeros) if stream == 0 else (zeros, basis)
            return self.mix(None, fq, fk, vd, fke, vd_enc, seg)[..., 0]  # (b, t, h)

        cols = jnp.concatenate([jax.vmap(lambda s: column(s, i))(jnp.arange(length)) for i in (0, 1)], axis=-1)
        return jnp.transpose(cols, (1, 3, 2, 0))

    def apply_mixing_matrix(self, x: Seq, M: jax.Array, *, segment_ids: SegmentIds | None = None,
                            **kwargs) -> Seq:
        """The mixer with ``y = M^d v^d + M^e v^e`` from a dense ``M`` ``(b, 2h, l, l)``.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: ``(batch, 2·num_heads, length, length)``, e.g. from :meth:`mixing_matrix`.
          segment_ids: optional ids (``M`` already holds the mixing).
          **kwargs: ``prefix_lengths`` (unused by the projection's values).

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        check_input(self.mixer_name, x, segment_ids)
        p = self.parts(self.width(x))
        proj = self.project(p, x, segment_ids, **kwargs)
        v, ve = proj.tokens[2], proj.tokens[4]
        b, length, h = v.shape[:3]
        if M.shape != (b, 2 * h, length, length):
            raise ValueError(f"{self.mixer_name}: M must have shape (b, 2h, l, l) = {(b, 2 * h, length, length)}, "
                             f"got {M.shape}")
        dtype = jnp.result_type(M.dtype, v.dtype)
        y = sum(jnp.einsum("bcts,bscv->btcv", m.astype(dtype), vals.astype(dtype), precision=HIGHEST)
                for m, vals in ((M[:, :h], v), (M[:, h:], ve)))
        return self.output(p, y, proj)

    # --- decoding ------------------------------------------------------------------------

    def prefill(self, x: Seq, prefix_lengths: jax.Array | None = None) -> tuple[Seq, dict]:
        """Runs a prompt in parallel; returns its outputs and the cache for :meth:`step`.

        The prefix is the prompt's first ``min(M, P)`` tokens (``P`` its
        length; ``M`` the field or ``prefix_lengths``). Steps after it give the
        parallel form's outputs at positions ``>= P`` of the whole sequence
        with that prefix.

        Args:
          x: ``(batch, P, d_model)`` prompt (one sequence per row, no segments).
          prefix_lengths: optional ``(batch,)`` ints, per-row ``M``.

        Returns:
          ``(y, cache)``: ``(batch, P, d_model)`` in ``dtype`` and the cache
          ``{"S": (b, h, D, dv), "z": (b, h, D)}`` of :meth:`init_cache`'s form.
        """
        check_input(self.mixer_name, x)
        p = self.parts(self.width(x))
        proj = self.project(p, x, None, prefix_lengths=prefix_lengths)
        o, state = self._sums(*proj.tokens)
        return self.output(p, self._normalise(o), proj), {"S": state[..., :-1], "z": state[..., -1]}

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"S": (b, h, D, dv), "z": (b, h, D)}`` zeros in float32 (float64 for float64)."""
        h, dv, big_d = self._dims(d)
        return {"S": jnp.zeros((batch_size, h, big_d, dv), self.acc()),
                "z": jnp.zeros((batch_size, h, big_d), self.acc())}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # One decoder token: S += φ(k^d) v^dᵀ, z += φ(k^d), y = φ(q)ᵀS / (φ(q)·z + eps).
        fq, fk, v, _, _ = self._branches(p, x_t)  # (b, h, D) x2, (b, h, dv)
        S = cache["S"] + fk[..., :, None] * v[..., None, :]
        z = cache["z"] + fk
        num = jnp.einsum("bhm,bhmv->bhv", fq, S, precision=HIGHEST)
        den = jnp.sum(fq * z, axis=-1, keepdims=True)
        return self.output(p, num / (den + self.eps), Projection()), {"S": S, "z": z}

    def state_size(self, length: int | None = None) -> int:
        """Bytes of inference state per sequence: ``h·D·(dv + 1)`` floats (``S`` and ``z``).

        Args:
          length: unused (the state does not grow with the sequence).

        Returns:
          ``h·(1 + d' + d'²)·(dv + 1)·itemsize(float32)``.
        """
        del length
        h, dv, big_d = self._dims(self.width())
        return h * big_d * (dv + 1) * jnp.dtype(self.acc()).itemsize


__all__ = ["JRT", "taylor_feature_map", "expanded_dim"]
