"""Mamba (Gu & Dao 2023): the Mamba block around the selective scan (S6).

"Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023),
Section 3.4 and Figure 3. The block expands the width, runs a short causal
convolution and the input-dependent SSM on one branch, gates it with the other
branch, and projects back; the recurrence itself is
:func:`seqjax.ops.selective_scan`. Also holds the initialisers and the
pairwise decay sums that the Mamba-2 and Hydra modules share.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from seqjax.mixers._conv import init_conv_buffer, segment_runs, short_conv, short_conv_step
from seqjax.mixers._layers import dense
from seqjax.mixers.recurrent import check_seq, model_width
from seqjax.mixers.registry import register
from seqjax.ops import dispatch
from seqjax.ops.common import accum_dtype
from seqjax.ops.selective_scan import selective_scan
from seqjax.parallel.sequence import sequence_map
from seqjax.types import SegmentIds, Seq, SeqStep

Cache = dict[str, jax.Array]
MixMatrix = Float[Array, "b c l l"]

# selective_scan's entry is not jitted and its lax.scan would be re-traced on
# every eager call (~0.2-0.6 s each in tests and eager loops); under an outer
# jit this wrapper is simply inlined.
_selective_scan = jax.jit(
    selective_scan, static_argnames=("delta_softplus", "return_last_state", "impl", "chunk_size", "sequence_axis")
)


# --- initialisers shared by the Mamba family ---------------------------------


def uniform_init(bound: float):
    """``U(-bound, bound)``: PyTorch's default for the depthwise conv and ``dt_proj``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dt_bias_init(dt_min: float, dt_max: float, floor: float):
    """Bias whose softplus is a step ``Δ`` log-uniform on ``[dt_min, dt_max]``.

    Mamba's init (kept by Mamba-2 and Hydra): ``Δ = exp(U[log dt_min, log
    dt_max])`` clamped below at ``floor``, stored as its inverse softplus
    ``Δ + log(-expm1(-Δ))`` so that ``softplus(bias) = Δ`` at init.
    """

    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, jnp.float32)
        dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = jnp.maximum(dt, floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init


def check_dt_range(name: str, dt_min: float, dt_max: float, floor: float) -> None:
    """Raises a ValueError unless ``0 < dt_min <= dt_max`` and ``floor > 0``."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"{name}: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    if not floor > 0:
        raise ValueError(f"{name}: dt_init_floor must be > 0, got {floor}")


def scan_segments(segment_ids: SegmentIds | None, length: int) -> SegmentIds | None:
    """Segment ids for the ops, None for length 1 (where no boundary exists).

    ``seqjax.ops.common.segment_starts`` returns a ``(b, 0)`` array for length
    1, which the scans cannot take; one position has no boundary anyway.
    """
    return None if length == 1 else segment_ids


# --- pairwise sums of a decay, for the materialised matrices ------------------


def pairwise_sums(a: jax.Array, segment_ids: SegmentIds | None = None) -> tuple[jax.Array, jax.Array]:
    """``S[..., t, s] = Σ_{s<r≤t} a[..., r]`` and where it applies.

    Args:
      a: ``(b, ..., l)`` per-position log-decays (or steps).
      segment_ids: optional ``(b, l)`` ids.

    Returns:
      ``(S, keep)``: ``S (b, ..., l, l)`` (zero above the diagonal) and a
      boolean ``keep`` of shape ``(b, 1, ..., 1, l, l)``: ``s <= t`` and, with
      segments, ``s`` and ``t`` in the same segment. A masked cumulative sum,
      not a difference of prefix sums, so every term is a genuine one.
    """
    length = a.shape[-1]
    idx = jnp.arange(length)
    strict = idx[:, None] > idx[None, :]
    S = jnp.cumsum(jnp.where(strict, a[..., :, None], 0), axis=-2)
    keep = jnp.broadcast_to(idx[:, None] >= idx[None, :], (a.shape[0], length, length))
    if segment_ids is not None:
        runs = segment_runs(segment_ids, length)
        keep = keep & (runs[:, :, None] == runs[:, None, :])
    return S, keep.reshape((a.shape[0],) + (1,) * (a.ndim - 2) + (length, length))


def masked_exp(exponent: jax.Array, keep: jax.Array) -> jax.Array:
    """``exp(exponent)`` where ``keep``, exactly 0 elsewhere (no ``exp`` of junk)."""
    return jnp.exp(jnp.where(keep, exponent, -jnp.inf))


@register("mamba")
class Mamba(nn.Module):
    """The Mamba block (Gu & Dao 2023, Section 3.4, Figure 3), causal.

    With ``E = expand``, ``d_in = E·d_model``, ``n = d_state``, ``R = dt_rank``::

        [x, z]    = in_proj(u)                       x, z ∈ R^{d_in}
        x         = silu(conv1d(x))                  causal depthwise, d_conv taps, bias
        [δ, B, C] = x_proj(x)                        δ ∈ R^R, B, C ∈ R^n
        Δ         = softplus(dt_proj(δ) + dt_bias)   ∈ R^{d_in}
        A         = -exp(A_log)                      (d_in, n)
        h_t       = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t x_t) ⊗ B_t     (Ā = exp(ΔA), B̄ = ΔB)
        y_t       = (h_t C_t + D ⊙ x_t) ⊙ silu(z_t)
        out       = out_proj(y)

    Initialisation (the paper and ``mamba_simple``): ``A_log[c, k] =
    log(k + 1)`` (S4D-Real, ``A = -(1, 2, ..., n)``), ``D = 1``,
    ``softplus(dt_bias)`` log-uniform on ``[dt_min, dt_max]`` (clamped at
    ``dt_init_floor``), ``dt_proj`` kernel ``U(±dt_scale·R^-1/2)``, conv
    weight and bias ``U(±1/sqrt(d_conv))`` (PyTorch's default for a depthwise
    conv); the dense projections are LeCun-normal (the house default).

    Mixing matrix (per channel ``c`` of ``d_in``, acting on the post-conv ``x``)::

        M[c, t, s] = Σ_k C_t[k] exp(A[c, k] Σ_{s<r≤t} Δ_r[c]) B_s[k] Δ_s[c]   (s ≤ t)

    Segments: the conv sees only its own segment and the scan restarts there.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      d_state: ``n``, the SSM state per channel (16 in the paper).
      d_conv: taps of the causal conv (4).
      expand: ``E``; ``d_in = E·d_model`` (2).
      dt_rank: ``R``; None means ``ceil(d_model / 16)``.
      dt_min: smallest initial step.
      dt_max: largest initial step.
      dt_init_floor: lower clamp of the initial step.
      dt_scale: scale of the ``dt_proj`` kernel's init bound.
      dtype: compute dtype of projections and activations; parameters are
        float32 and the scan accumulates in float32 (float64 for float64).
      scan_impl: ``impl`` of :func:`seqjax.ops.selective_scan`.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.selective_scan`.
      sequence_axis: mesh axis that splits the length (the sequence-parallel
        selective scan under a context mesh, see :func:`seqjax.parallel.sequence_map`);
        None: never split.
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("A_log", "dt_bias")

    d_model: int | None = None
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    dtype: Any = jnp.float32
    scan_impl: str = "auto"
    chunk_size: int = 64
    sequence_axis: str | None = None

    # --- configuration and parameters ----------------------------------------------

    def _check_config(self):
        for field in ("d_state", "d_conv", "expand"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"mamba: {field} must be a positive int, got {value!r}")
        if self.dt_rank is not None and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ValueError(f"mamba: dt_rank must be None or a positive int, got {self.dt_rank!r}")
        check_dt_range("mamba", self.dt_min, self.dt_max, self.dt_init_floor)
        dispatch.check("selective_scan", self.scan_impl)

    def _rank(self, d: int) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(d / 16)

    @nn.compact
    def _parts(self, d: int) -> dict[str, Any]:
        """Creates/reads the parameters; returns the layers and float arrays."""
        self._check_config()
        d_in, n, rank = self.expand * d, self.d_state, self._rank(d)
        part = nn.with_logical_partitioning
        conv_bound = 1.0 / math.sqrt(self.d_conv)

        def a_log_init(key, shape, dtype=jnp.float32):
            del key
            return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[1] + 1, dtype=dtype)), shape)

        return {
            "in_proj": dense(2 * d_in, ("embed", "mlp"), dtype=self.dtype, name="in_proj"),
            "conv_weight": self.param("conv_weight", part(uniform_init(conv_bound), (None, "mlp")), (self.d_conv, d_in)),
            "conv_bias": self.param("conv_bias", part(uniform_init(conv_bound), ("mlp",)), (d_in,)),
            "x_proj": dense(rank + 2 * n, ("mlp", None), dtype=self.dtype, name="x_proj"),
            "dt_proj": dense(
                d_in, (None, "mlp"), dtype=self.dtype, name="dt_proj",
                kernel_init=uniform_init(self.dt_scale * rank**-0.5),
            ),
            "dt_bias": self.param(
                "dt_bias", part(dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor), ("mlp",)), (d_in,)
            ),
            "A_log": self.param("A_log", part(a_log_init, ("mlp", "state")), (d_in, n)),
            "D": self.param("D", part(nn.initializers.ones_init(), ("mlp",)), (d_in,)),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj"),
        }

    # --- shared pieces of every path ----------------------------------------------

    def _acc(self):
        return accum_dtype(self.dtype)

    def _ssm_inputs(self, p, u, d):
        """``(δ-projection, B, C)`` from the post-conv activations ``u`` (any leading axes)."""
        rank, n = self._rank(d), self.d_state
        dbc = p["x_proj"](u)
        dt_low, B, C = jnp.split(dbc, [rank, rank + n], axis=-1)
        return p["dt_proj"](dt_low), B, C

    def _branches(self, p, x, segment_ids):
        """``(u, delta, B, C, z)``: everything before the scan, for a whole sequence."""
        xz = p["in_proj"](x.astype(self.dtype))
        x_in, z = jnp.split(xz, 2, axis=-1)
        xc = short_conv(x_in, p["conv_weight"], p["conv_bias"], segment_ids=segment_ids)
        u = jax.nn.silu(xc).astype(self.dtype)
        delta, B, C = self._ssm_inputs(p, u, x.shape[-1])
        return u, delta, B, C, z

    def _A(self, p):
        return -jnp.exp(p["A_log"].astype(self._acc()))

    # --- public API -------------------------------------------------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """Runs the Mamba block over a sequence.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids of packed sequences.
          deterministic: unused (no dropout).

        Returns:
          ``(batch, length, d_model)`` output in ``dtype``.
        """
        del deterministic
        check_seq("mamba", x, segment_ids)
        p = self._parts(model_width(self, x))
        u, delta, B, C, z = self._branches(p, x, segment_ids)

        def core(axis, u, delta, B, C, z, segments, A, D, dt_bias):
            return _selective_scan(
                u, delta, A, B, C, D=D, z=z, delta_bias=dt_bias, delta_softplus=True, segment_ids=segments,
                impl=self.scan_impl, chunk_size=self.chunk_size, sequence_axis=axis,
            )

        y = sequence_map(core, self.sequence_axis, (u, delta, B, C, z, scan_segments(segment_ids, x.shape[1])),
                         (self._A(p), p["D"], p["dt_bias"]), what="mamba")
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)

    def init_cache(self, batch_size: int, max_length: int | None = None) -> Cache:
        """Zero cache: the conv's last ``d_conv - 1`` inputs and the SSM state.

        Args:
          batch_size: number of sequences.
          max_length: unused (the state does not grow).

        Returns:
          ``{"conv": (b, d_conv-1, d_in) in dtype, "ssm": (b, d_in, d_state) float32}``.
        """
        del max_length
        self._check_config()
        d_in = self.expand * model_width(self)
        return {
            "conv": init_conv_buffer(batch_size, self.d_conv, d_in, self.dtype),
            "ssm": jnp.zeros((batch_size, d_in, self.d_state), self._acc()),
        }

    def step(self, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One position: conv from the rolling buffer, then one S6 recurrence step.

        ``h = exp(Δ A) ⊙ h + (Δ x) ⊗ B``, ``y = (h C + D x) ⊙ silu(z)``.

        Args:
          x_t: ``(batch, d_model)`` input.
          cache: from :meth:`init_cache` or a previous step.

        Returns:
          ``(y_t, cache)``: ``(batch, d_model)`` output in ``dtype`` and the new cache.
        """
        if x_t.ndim != 2:
            raise ValueError(f"mamba.step: x_t must have shape (batch, d_model), got {x_t.shape}")
        if set(cache) != {"conv", "ssm"}:
            raise ValueError(f"mamba.step: cache must have keys conv, ssm (init_cache), got {sorted(cache)}")
        acc = self._acc()
        d = model_width(self, x_t)
        p = self._parts(d)
        xz = p["in_proj"](x_t.astype(self.dtype))
        x_in, z = jnp.split(xz, 2, axis=-1)
        xc, conv = short_conv_step(x_in, cache["conv"], p["conv_weight"], p["conv_bias"])
        u = jax.nn.silu(xc).astype(self.dtype)
        delta, B, C = self._ssm_inputs(p, u, d)
        delta = jax.nn.softplus(delta.astype(acc) + p["dt_bias"].astype(acc))  # (b, d_in)
        uf = u.astype(acc)
        h = jnp.exp(delta[..., None] * self._A(p)) * cache["ssm"].astype(acc)
        h = h + (delta * uf)[..., None] * B.astype(acc)[:, None, :]
        y = jnp.sum(h * C.astype(acc)[:, None, :], axis=-1) + p["D"].astype(acc) * uf
        y = y * jax.nn.silu(z.astype(acc))
        out = p["out_proj"](y.astype(self.dtype)).astype(self.dtype)
        return out, {"conv": conv, "ssm": h}

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> MixMatrix:
        """The S6 matrices, one per channel of ``d_in``, acting on the post-conv ``x``.

        ``M[b, c, t, s] = Σ_k C_t[k] exp(A[c, k] Σ_{s<r≤t} Δ_r[c]) B_s[k] Δ_s[c]``
        for ``s ≤ t`` in the same segment, 0 elsewhere (lower triangular).

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          ``(batch, d_in, length, length)`` in the accumulation dtype.
        """
        check_seq("mamba", x, segment_ids)
        acc = self._acc()
        p = self._parts(model_width(self, x))
        u, delta, B, C, z = self._branches(p, x, segment_ids)
        delta = jax.nn.softplus(delta.astype(acc) + p["dt_bias"].astype(acc))  # (b, l, c)
        S, keep = pairwise_sums(jnp.moveaxis(delta, 1, -1)[:, :, None], segment_ids)  # (b, c, 1, t, s)
        decay = masked_exp(self._A(p)[None, :, :, None, None] * S, keep)  # (b, c, n, t, s)
        return jnp.einsum(
            "btn,bsn,bcnts,bsc->bcts", C.astype(acc), B.astype(acc), decay, delta,
            precision=jax.lax.Precision.HIGHEST,
        )

    def apply_mixing_matrix(self, x: Seq, M: MixMatrix, *, segment_ids: SegmentIds | None = None) -> Seq:
        """The Mamba block with dense per-channel matrices ``M`` instead of the scan.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: ``(batch, d_in, length, length)``, e.g. from :meth:`mixing_matrix`.
          segment_ids: optional ``(batch, length)`` ids; they only keep the
            short convolution within segments (``M`` already holds the mixing).

        Returns:
          ``(batch, length, d_model)`` output in ``dtype``.
        """
        check_seq("mamba", x, segment_ids)
        acc = self._acc()
        d = model_width(self, x)
        expected = (x.shape[0], self.expand * d, x.shape[1], x.shape[1])
        if M.shape != expected:
            raise ValueError(f"mamba: M must have shape (b, d_in, l, l) = {expected}, got {M.shape}")
        p = self._parts(d)
        u, _, _, _, z = self._branches(p, x, segment_ids)
        uf = u.astype(acc)
        y = jnp.einsum("bcts,bsc->btc", M.astype(acc), uf, precision=jax.lax.Precision.HIGHEST)
        y = (y + p["D"].astype(acc) * uf) * jax.nn.silu(z.astype(acc))
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)

    def state_size(self, length: int | None = None) -> int:
        """Bytes of inference state per sequence: conv buffer plus SSM state.

        Args:
          length: unused (the state does not grow with the sequence).

        Returns:
          ``(d_conv-1)·d_in·itemsize(dtype) + d_in·d_state·itemsize(float32)``.
        """
        del length
        d_in = self.expand * model_width(self)
        conv = (self.d_conv - 1) * d_in * jnp.dtype(self.dtype).itemsize
        return conv + d_in * self.d_state * jnp.dtype(self._acc()).itemsize
