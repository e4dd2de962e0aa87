"""Normalised linear attention: Katharopoulos et al. 2020 and the Performer (FAVOR+).

Both replace softmax attention's ``exp(q·k)`` by a kernel ``φ(q)·φ(k)`` with a
positive feature map ``φ``, which turns causal attention into a recurrence on
a ``(m, dv)`` state ``S`` and a ``(m,)`` normaliser ``z`` per head::

    S_t = S_{t-1} + φ(k_t) v_tᵀ,   z_t = z_{t-1} + φ(k_t)
    o_t = φ(q_t)ᵀ S_t / (φ(q_t)·z_t + eps)

The hot loop is :func:`seqjax.ops.linear_attention`; the normaliser comes out
of the same op by appending a ones column to ``v`` (so the op's state is
``[S | z]``). Both the ones column and the division are inside the mixer's
:meth:`~seqjax.mixers.base.Mixer.mix`, which is therefore linear in ``v``:
the base class reads the normalised attention matrix off it. ``causal=False``
gives the bidirectional form (sums over the whole segment).

  * ``linear_attention`` ("Transformers are RNNs", ICML 2020): ``φ(x) = elu(x) + 1``.
  * ``performer`` ("Rethinking Attention with Performers", ICLR 2021): FAVOR+
    positive orthogonal random features, an unbiased estimate of the softmax
    kernel ``exp(q·k / sqrt(dk))``.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_divides, check_int, check_number, dense
from seqjax.mixers.registry import register
from seqjax.ops.linear_attention import linear_attention
from seqjax.types import SegmentIds, Seq, SeqStep

HIGHEST = jax.lax.Precision.HIGHEST


# --- feature maps ----------------------------------------------------------------


def elu_feature_map(x: jax.Array) -> jax.Array:
    """Katharopoulos et al.'s ``φ(x) = elu(x) + 1`` (positive, elementwise)."""
    return jax.nn.elu(x) + 1


def orthogonal_random_features(key: jax.Array, num_features: int, dim: int) -> Float[Array, "m k"]:
    """FAVOR+'s orthogonal random projection ``ω``, ``(num_features, dim)``.

    Rows come in blocks of ``dim`` exactly orthogonal directions (the Q factor
    of a Gaussian matrix, signs fixed so that it is Haar distributed), each
    row rescaled by an independent ``chi(dim)`` norm (the norm of a Gaussian
    vector; the Performer code's ``scaling=0``), so that every row is
    marginally ``N(0, I)`` and the features stay unbiased. The last block is
    truncated when ``dim`` does not divide ``num_features``.

    Args:
      key: PRNG key.
      num_features: ``m``.
      dim: the head dimension ``dk``.

    Returns:
      ``ω`` of shape ``(m, dk)`` in float32.
    """
    blocks = -(-num_features // dim)
    block_key, norm_key = jax.random.split(key)
    q, r = jnp.linalg.qr(jax.random.normal(block_key, (blocks, dim, dim), jnp.float32))
    signs = jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))
    # Columns of q·diag(sign r) are Haar-orthonormal; take them as rows.
    directions = jnp.swapaxes(q * signs[:, None, :], -1, -2).reshape(blocks * dim, dim)[:num_features]
    norms = jnp.linalg.norm(jax.random.normal(norm_key, (num_features, dim), jnp.float32), axis=-1)
    return directions * norms[:, None]


def favor_features(x: jax.Array, omega: jax.Array, *, stabilise: bool = False) -> jax.Array:
    """FAVOR+ positive random features ``φ(x) = exp(ωx − |x|²/2) / sqrt(m)``.

    ``E_ω[φ(x)·φ(y)] = exp(x·y)`` for ``ω`` rows ``N(0, I)`` (Choromanski et
    al. 2021, Lemma 1). ``stabilise=True`` subtracts, per vector ``x``, the
    largest exponent over the ``m`` features (so the largest feature is
    ``1/sqrt(m)``): a positive factor per vector, which cancels between the
    numerator and denominator of normalised attention when applied to the
    queries (keys would need one factor shared by all positions; see
    :class:`Performer`).

    Args:
      x: ``(..., dk)``.
      omega: ``(m, dk)`` projection, e.g. :func:`orthogonal_random_features`.
      stabilise: subtract the per-vector max exponent.

    Returns:
      ``(..., m)`` positive features in ``x``'s dtype.
    """
    logits = jnp.einsum("...k,mk->...m", x, omega.astype(x.dtype), precision=HIGHEST)
    logits = logits - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
    if stabilise:
        logits = logits - jnp.max(logits, axis=-1, keepdims=True)
    return jnp.exp(logits) / math.sqrt(omega.shape[0])


# --- shared module -----------------------------------------------------------------


class _NormalisedLinearAttention(Mixer):
    """Multi-head normalised linear attention with a pluggable feature map (not registered).

    Subclasses define ``_feature_dim`` (``m``), ``_features`` and, where the
    map has fixed random draws, ``_constants_init``.

    Mixing matrix (per head ``h``, acting on ``v``; the normalisation is part
    of the mix, so part of ``M``)::

        M[h, t, s] = φ(q_t)·φ(k_s) / (Σ_{s'} φ(q_t)·φ(k_{s'}) + eps)

    over ``s, s' <= t`` (causal) or the whole segment (``causal=False``), 0
    elsewhere: a row-normalised, positive matrix of rank ``<= m`` before the mask.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections; features, the op and the
        normalisation run in float32 (float64 for a float64 ``dtype``).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention` (a string, or
        ``{"linear_attention": impl}``).
      sequence_axis: must stay None (these mixers do not run with the length split).
      num_heads: heads; must divide ``d_model`` (head dim ``dk = dv = d_model / h``).
      causal: True: ``o_t`` attends to ``s <= t`` (has ``step``); False: to
        the whole segment.
      eps: added to the denominator ``φ(q_t)·z_t``.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
    """

    ops = ("linear_attention",)
    causality = "either"
    values_index = 2  # v in (φq, φk, v, segment_ids)
    # Every bias is rank 1 (undecayed by rank); the Performer's ω is a constant, not a parameter.
    no_decay_params: ClassVar[tuple[str, ...]] = ()

    num_heads: int = 4
    causal: bool = True
    eps: float = 1e-6
    chunk_size: int = 64

    # --- subclass hooks ---------------------------------------------------------------

    def _feature_dim(self, dk: int) -> int:
        return dk

    def _constants_init(self, dk: int):
        """Initialiser of the fixed ``constants`` collection entry, or None."""
        return None

    def _features(self, q, k, consts):
        """``(φ(q), φ(k))`` of ``(..., h, dk)`` queries/keys, each ``(..., h, m)``."""
        raise NotImplementedError

    # --- configuration and parameters -----------------------------------------------

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_heads", self.num_heads)
        if not isinstance(self.causal, bool):
            raise ConfigError(f"{name}.causal={self.causal!r} must be a bool (True or False)")
        check_number(name, "eps", self.eps, low=0, open_low=True)
        check_int(name, "chunk_size", self.chunk_size)
        if self.d_model is not None:
            self._dims(self.d_model)

    def _dims(self, d: int) -> tuple[int, int, int]:
        """``(h, dk, m)`` for width ``d``; ConfigError unless ``num_heads`` divides it."""
        dk = check_divides(self.mixer_name, "num_heads", self.num_heads, d, "d_model")
        return self.num_heads, dk, self._feature_dim(dk)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, dk, m = self._dims(d)
        parts = {
            name: dense(h * dk, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name=name)
            for name in ("q_proj", "k_proj", "v_proj")
        }
        parts["out_proj"] = dense(d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="out_proj")
        parts["dims"] = (h, dk, m)
        init = self._constants_init(dk)
        parts["consts"] = None
        if init is not None:
            # A non-trainable collection: no optimiser (nor weight decay) ever
            # touches the random draws; each layer gets its own from the init rng.
            rng = self.make_rng("params") if self.is_initializing() else None
            parts["consts"] = self.variable("constants", "omega", init, rng).value
        return parts

    def _branches(self, p, x):
        """Feature-mapped ``(φq, φk)`` ``(…, h, m)`` and ``v`` ``(…, h, dv)``, all in float32+."""
        h, dk, _ = p["dims"]
        x = x.astype(self.dtype)
        q, k, v = (p[n](x).astype(self.acc()).reshape(x.shape[:-1] + (h, dk)) for n in ("q_proj", "k_proj", "v_proj"))
        fq, fk = self._features(q, k, p["consts"])
        return fq, fk, v

    # --- the hooks of the Mixer base ----------------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        fq, fk, v = self._branches(p, x)
        return Projection(tokens=(fq, fk, v, segment_ids))

    def mix(self, axis, fq, fk, v, segment_ids):
        # The ones column makes the op carry z = Σ φ(k) beside S = Σ φ(k) vᵀ;
        # dividing here keeps the whole normalised attention inside the mix.
        ones = jnp.ones(v.shape[:-1] + (1,), v.dtype)
        o, _ = linear_attention(
            fq, fk, jnp.concatenate([v, ones], axis=-1), causal=self.causal, segment_ids=segment_ids,
            chunk_size=self.chunk_size, impl=self.impl_for("linear_attention"), sequence_axis=axis,
        )
        return o[..., :-1] / (o[..., -1:] + self.eps)

    def output(self, p, y, proj: Projection) -> Seq:
        """Out-projection of per-head outputs ``(…, h, dv)``."""
        return p["out_proj"](y.reshape(y.shape[:-2] + (-1,)).astype(self.dtype)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"S": (b, h, m, dv), "z": (b, h, m)}`` zeros in float32 (float64 for float64)."""
        h, dk, m = self._dims(d)
        return {
            "S": jnp.zeros((batch_size, h, m, dk), self.acc()),
            "z": jnp.zeros((batch_size, h, m), self.acc()),
        }

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # S += φ(k) vᵀ, z += φ(k), o = φ(q)ᵀS / (φ(q)·z + eps).
        fq, fk, v = self._branches(p, x_t)  # (b, h, m) x2, (b, h, dv)
        S = cache["S"] + fk[..., :, None] * v[..., None, :]
        z = cache["z"] + fk
        num = jnp.einsum("bhm,bhmv->bhv", fq, S, precision=HIGHEST)
        den = jnp.sum(fq * z, axis=-1, keepdims=True)
        return self.output(p, num / (den + self.eps), Projection()), {"S": S, "z": z}

    def state_size(self, length: int | None = None) -> int:
        """Bytes of inference state per sequence: ``h·m·(dv + 1)`` floats (``S`` and ``z``).

        Also for ``causal=False``, which has no ``step``: there it is the
        ``[S | z]`` carry of a chunk-by-chunk pass, the same size.

        Args:
          length: unused (the state does not grow with the sequence).

        Returns:
          ``h·m·(dv + 1)·itemsize(float32)``.
        """
        del length
        h, dk, m = self._dims(self.width())
        return h * m * (dk + 1) * jnp.dtype(self.acc()).itemsize


@register("linear_attention")
class LinearAttention(_NormalisedLinearAttention):
    """Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

    Per head (``dk = dv = d_model / h``), with ``φ(x) = elu(x) + 1``::

        q, k, v = x W_Q + b_Q, x W_K + b_K, x W_V + b_V
        o_t = Σ_{s<=t} (φ(q_t)·φ(k_s)) v_s / (Σ_{s<=t} φ(q_t)·φ(k_s) + eps)
            = φ(q_t)ᵀ S_t / (φ(q_t)·z_t + eps),  S_t = S_{t-1} + φ(k_t) v_tᵀ,  z_t = z_{t-1} + φ(k_t)
        out = concat_h(o) W_O + b_O

    (``causal=False``: the sums run over the whole segment.) Projections have
    biases, as ``nn.Linear`` in the authors' ``fast-transformers``; ``eps =
    1e-6`` as there. Mixing matrix (per head, acting on ``v``): the normalised
    attention matrix ``M[h, t, s] = φ(q_t)·φ(k_s) / (Σ_{s'} φ(q_t)·φ(k_{s'}) +
    eps)``, rank ``<= dk`` before the mask.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections (the op runs in float32).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention`.
      sequence_axis: must stay None (no sequence-parallel form).
      num_heads: heads; must divide ``d_model``.
      causal: causal (with ``step``) or bidirectional.
      eps: added to the denominator.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
    """

    def _features(self, q, k, consts):
        return elu_feature_map(q), elu_feature_map(k)


@register("performer")
class Performer(_NormalisedLinearAttention):
    """Performer (Choromanski et al. 2021): FAVOR+ softmax-kernel linear attention.

    Per head (``dk = dv = d_model / h``), ``m = num_features`` orthogonal
    random features ``ω`` (:func:`orthogonal_random_features`), and
    ``φ(x) = exp(ωx − |x|²/2) / sqrt(m)`` (positive random features, so
    ``E[φ(x)·φ(y)] = exp(x·y)``)::

        q', k' = (x W_Q + b_Q) dk^-1/4, (x W_K + b_K) dk^-1/4
        o_t = Σ_{s<=t} (φ(q'_t)·φ(k'_s)) v_s / (Σ_{s<=t} φ(q'_t)·φ(k'_s) + eps)
              ≈ softmax attention with scores q_t·k_s / sqrt(dk)
        out = concat_h(o) W_O + b_O

    Mixing matrix (per head, acting on ``v``): ``M[h, t, s] = φ(q'_t)·φ(k'_s) /
    (Σ_{s'} φ(q'_t)·φ(k'_{s'}) + eps)``, an unbiased rank-``m`` estimate of
    the softmax attention matrix (up to ``eps``).

    Stabilisation: each query's features are divided by their largest value
    (exponent minus its max over the ``m`` features), a positive factor per
    query that cancels between numerator and denominator (up to ``eps``), as
    in the Performer code. Keys get no data-dependent shift: a per-key one
    would not cancel, and the code's max over all keys would look into the
    future (breaking causality and ``step``). They need none against
    overflow: ``ωᵀk − |k|²/2 <= |ω|²/2`` for every ``k``, about ``dk/2`` (rows
    have ``chi(dk)`` norms), far below float32's limit of 88 for
    ``dk <= 128``.

    The random draws ``ω`` ``(m, dk)`` (shared by the heads, as in the
    Performer code) are drawn at init from the ``params`` rng and stored in a
    non-trainable ``"constants"`` collection (``variables["constants"]["omega"]``),
    so optimisers and weight decay never change them; apply the module with
    the whole ``variables``, not only ``params``. No feature redrawing.

    Attributes:
      num_features: ``m``, the random features per head; None gives ``2·dk``.
      num_heads: heads (they share ``ω``); must divide ``d_model``.
      causal: causal (with ``step``) or bidirectional.
      eps: added to the denominator (the query stabilisation cancels up to it).
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections (features and the op in float32).
      impl: ``impl`` of :func:`seqjax.ops.linear_attention`.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.linear_attention`.
      sequence_axis: must stay None (no sequence-parallel form).
    """

    num_features: int | None = None

    def check_fields(self):
        check_int(self.mixer_name, "num_features", self.num_features, optional=True)
        super().check_fields()

    def _feature_dim(self, dk: int) -> int:
        return 2 * dk if self.num_features is None else self.num_features

    def _constants_init(self, dk: int):
        m = self._feature_dim(dk)
        return lambda key: orthogonal_random_features(key, m, dk)

    def _features(self, q, k, omega):
        scale = q.shape[-1] ** -0.25
        return favor_features(q * scale, omega, stabilise=True), favor_features(k * scale, omega)
