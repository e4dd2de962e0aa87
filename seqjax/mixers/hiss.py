"""HiSS: hierarchical state-space models (Bhirangi et al. 2024).

"Hierarchical State Space Models for Continuous Sequence-to-Sequence
Modeling" (ICML 2024). The input is cut into non-overlapping chunks of
``k`` positions; a low-level SSM runs over each chunk on its own (its state
restarts at every chunk start) and its output at the chunk's last position
is that chunk's feature; a high-level SSM runs over the sequence of chunk
features, so it sees the sequence at ``1/k`` of the input rate.

This module is one linear, causal HiSS layer with diagonal (S4D-Lin)
single-input SSMs per channel at both levels, run with
:func:`seqjax.ops.linear_scan`:

* chunk resets are segment starts of the low-level scan (ids that change at
  every chunk start), so no new loop is needed;
* the high-level recurrence runs over the ``⌈l/k⌉`` chunk features (the row
  padded to whole chunks, then the outputs placed back at the input rate);
  with ``segment_ids`` the chunk ends fall at uneven places, so it runs at the
  input rate instead, with decay ``Ā_high`` and input ``B̄_high z`` at chunk
  ends only (decay 1 and input 0 elsewhere): its state at ``t`` is the state
  after the last chunk that ended at or before ``t``.

The paper uses S5 or Mamba models (nonlinear networks) at each level; here
the two levels are joined linearly (no nonlinearity between them), so the
layer is linear in its input and has a mixing matrix; depth and nonlinearity
come from stacking layers in the model. Both levels are single-input per
channel (as Mamba's and S4D's SSMs, not S5's multi-input one), so the whole
mix stays channel-wise, one ``l × l`` matrix per channel, and channels are
mixed by the output map only.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import (
    as_complex, check_int, check_number, check_option, complex_dtype, constant_init, log_uniform_init, param,
    positions_in_segment, scaled_normal_init)
from seqjax.mixers.registry import register
from seqjax.ops.common import accum_dtype
from seqjax.ops.hippo import s4d_init
from seqjax.ops.linear_scan import linear_scan
from seqjax.types import SegmentIds, Seq, SeqStep

READOUTS = ("upsample", "chunk")
LEVELS = ("low", "high")


def _two_re(C: jax.Array, h: jax.Array) -> jax.Array:
    """``2 Re(Σ_n C[h, n] x[..., h, n])``: the real output of the conjugate-symmetric modes."""
    return 2.0 * (C.real * h.real - C.imag * h.imag).sum(-1)


class _Level(nn.Module):
    """One level's diagonal SSM (S4D-Lin, ``B = 1``, ZOH): its parameters and discrete system.

    A submodule (``low`` or ``high``), so both levels' parameters keep the
    family's leaf names (``log_step``, ``Lambda_log_re``, ``Lambda_im``, ``C``).

    Attributes:
      n: state size ``N`` (even; ``N/2`` complex modes per channel).
      dt_min: smallest initial step ``Δ``.
      dt_max: largest initial step ``Δ``.
      dtype: the mixer's compute dtype (sets the complex dtype of the system).
    """

    n: int
    dt_min: float
    dt_max: float
    dtype: Any

    @nn.compact
    def __call__(self, d: int) -> dict:
        """``Ā``, ``B̄`` (complex, ``(d, N/2)``) and ``C`` (``(d, N/2)``, accumulation dtype)."""
        m, acc = self.n // 2, accum_dtype(self.dtype)
        Lambda0 = s4d_init(self.n, "lin")  # -1/2 + iπj: every mode decays at rate 1/2, frequencies spread
        log_step = param(self, "log_step", log_uniform_init(self.dt_min, self.dt_max), (d,), ("embed",))
        log_re = param(self, "Lambda_log_re", constant_init(np.log(-Lambda0.real)), (d, m), ("embed", "state"))
        im = param(self, "Lambda_im", constant_init(Lambda0.imag), (d, m), ("embed", "state"))
        # C complex normal (parts N(0, 1/2)), as S4D's C.
        C = param(self, "C", scaled_normal_init(math.sqrt(0.5)), (d, m, 2), ("embed", "state", None))
        Lambda = jax.lax.complex(-jnp.exp(log_re.astype(acc)), im.astype(acc))
        z = Lambda * jnp.exp(log_step.astype(acc))[:, None]
        cdt = complex_dtype(self.dtype)
        # ZOH with B = 1; expm1 keeps B̄ accurate when ΛΔ is small.
        return {"a": jnp.exp(z).astype(cdt), "b": (jnp.expm1(z) / Lambda).astype(cdt), "C": as_complex(C, acc)}


@register("hiss")
class HiSS(Mixer):
    """HiSS (Bhirangi et al. 2024): a low-level SSM per chunk, a high-level SSM over chunks.

    Equations per channel ``h`` (``d = d_model`` channels), for position ``t``
    of a segment at offset ``p = t - start(t)``, chunk ``c = ⌊p/k⌋``, offset
    ``j = p mod k`` in its chunk; each level is a diagonal SSM with ``N/2``
    complex modes (conjugate symmetry, as S4D), ``B = 1`` and ZOH::

        Λ = -exp(Λ_log_re) + i Λ_im,   Ā = exp(ΛΔ),   B̄ = (Ā - 1)/Λ   (per level)
        low:   x_t = [j > 0] Ā_lo ⊙ x_{t-1} + B̄_lo u_t        (restart at every chunk start)
               z_t = 2 Re(C_lo · x_t) + D u_t
        chunk feature  f_c = z at the last position of chunk c
        high:  g_c = Ā_hi ⊙ g_{c-1} + B̄_hi f_c,   g_{-1} = 0  (restart at every segment start)
               w_c = 2 Re(C_hi · g_c)
        readout="upsample":  y_t = z_t + w_{c-1}               (w_{-1} = 0)
        readout="chunk":     y_t = w_c at the last position of chunk c, else 0
        out_t = W y_t + b

    ``readout="upsample"`` (default) gives every position the low-level output plus
    the high-level output of the last *completed* chunk before its own (the
    sum: the per-channel scales of ``C_lo`` and ``C_hi`` weigh the two), so
    ``y_t`` depends on ``u_{≤t}`` only. ``"chunk"`` is the paper's chunk-rate
    prediction kept at shape ``(b, l, d)``: the high-level output of chunk
    ``c`` sits at the chunk's last position (``y[:, k-1::k]`` without
    segments) and every other position, the unfinished last chunk included, is
    0 (before the bias of the output map). An unfinished last chunk gives the
    high level no feature: it only ever reads finished chunks, so the step
    rollout (which cannot know where a row ends) equals the parallel form at
    every length; under ``"upsample"`` that chunk's running low-level output
    ``z_t`` still reaches ``y_t``.

    Segments: chunks are counted from each segment start and both states
    restart there, so a packed row equals separate runs.

    Mixing matrix (the two levels, ``D`` included, per channel, acting on
    ``u = x`` in the compute dtype; the output map is outside it). With
    ``K_lev[τ] = 2 Re(Σ_n C_n B̄_n Ā_n^τ)``, ``e(s)`` the last position of
    ``s``'s chunk and ``F[s] = K_lo[e(s) - s] + D [s = e(s)]`` (what ``u_s``
    adds to its chunk's feature), for ``s <= t`` in one segment::

        upsample: M[h, t, s] = K_lo[t - s] + D [s = t]         c(s) = c(t)
                  M[h, t, s] = K_hi[c(t) - 1 - c(s)] F[s]        c(s) < c(t)
        chunk:    M[h, t, s] = K_hi[c(t) - c(s)] F[s]            t a chunk end, else 0

    lower triangular and real.

    Attributes:
      d_model: width ``d`` (channels); None takes it from the input.
      dtype: compute dtype of the input and output map; the scans run in
        complex64 (complex128 for float64).
      impl: ``impl`` of :func:`seqjax.ops.linear_scan` (both levels).
      sequence_axis: must be None (chunk offsets are counted over the whole row).
      chunk_size: ``k``, positions per chunk (>= 1).
      low: state size ``N_lo`` of each channel's low-level SSM (even; ``N_lo/2``
        complex modes).
      high: state size ``N_hi`` of each channel's high-level SSM (even).
      dt_min: smallest initial step ``Δ`` of either level (``log Δ`` uniform;
        the high level's step is in chunks).
      dt_max: largest initial step ``Δ``.
      readout: ``"upsample"`` (default) or ``"chunk"`` (``output`` is the
        name of the base's output hook, so the field has another name).
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = tuple(
        f"{lev}/{name}" for lev in LEVELS for name in ("log_step", "Lambda_log_re", "Lambda_im"))
    ops = ("linear_scan",)
    values_index = 0  # u, the input in the compute dtype
    resettable = True  # every leaf of the cache restarts at a segment start
    width_param = (("D",), 0)

    chunk_size: int = 8
    low: int = 32
    high: int = 32
    dt_min: float = 0.001
    dt_max: float = 0.1
    readout: str = "upsample"

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "chunk_size", self.chunk_size)
        for field in LEVELS:
            value = getattr(self, field)
            check_int(name, field, value, minimum=2)
            if value % 2:
                raise ConfigError(f"{name}.{field}={value!r} must be even (conjugate pairs of modes)")
        check_number(name, "dt_min", self.dt_min, low=0.0, open_low=True)
        check_number(name, "dt_max", self.dt_max, low=0.0, open_low=True)
        if self.dt_min > self.dt_max:
            raise ConfigError(f"{name}.dt_min={self.dt_min!r} must be <= {name}.dt_max={self.dt_max!r}")
        check_option(name, "readout", self.readout, READOUTS)

    # --- parameters -------------------------------------------------------------------

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        """Both levels' systems, ``D (d,)`` and the output map ``W (d, d)``, ``b (d,)``."""
        low, high = (_Level(getattr(self, lev), self.dt_min, self.dt_max, self.dtype, name=lev)(d)
                     for lev in LEVELS)
        D = param(self, "D", scaled_normal_init(1.0), (d,), ("embed",))
        W = param(self, "out_kernel", nn.initializers.lecun_normal(), (d, d), ("mlp", "embed"))
        bias = param(self, "out_bias", nn.initializers.zeros_init(), (d,), ("embed",))
        return {"ssm": {"low": low, "high": high, "D": D.astype(self.acc())}, "W": W, "bias": bias}

    # --- the Mixer hooks ------------------------------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        return Projection(tokens=(x.astype(self.dtype), segment_ids), shared=(p["ssm"],))

    def mix(self, axis, u, segment_ids, ssm):
        del axis  # never split (no sequence_parallel)
        b, length, _ = u.shape
        k, impl = self.chunk_size, self.impl_for("linear_scan")
        low, high = ssm["low"], ssm["high"]
        uu = u.astype(self.acc())
        offset = positions_in_segment(segment_ids, b, length)  # 0 at every segment start
        j = offset % k
        end = (j == k - 1)[..., None]  # (b, l, 1): the last position of a chunk
        # Low level: a new scan segment at every chunk start (segment starts included).
        chunk_ids = jnp.cumsum(j == 0, axis=1)
        x, _ = linear_scan(low["a"][None, None], uu[..., None] * low["b"], segment_ids=chunk_ids, impl=impl)
        z = _two_re(low["C"], x) + ssm["D"] * uu  # (b, l, d)
        if segment_ids is None:
            return self._high_at_chunk_rate(z, high, impl)
        return self._high_at_input_rate(z, end, offset, segment_ids, high, impl)

    def _high_at_chunk_rate(self, z, high, impl):
        """Without segments: the high level over the ``⌈l/k⌉`` chunk features, then placed.

        The row is padded to whole chunks; a partial last chunk's padded
        "feature" is never read (its ``w`` would only reach later chunks, and
        its end lies beyond the row).
        """
        b, length, d = z.shape
        k = self.chunk_size
        chunks = -(-length // k)
        zc = jnp.pad(z, ((0, 0), (0, chunks * k - length), (0, 0))).reshape(b, chunks, k, d)
        g, _ = linear_scan(high["a"][None, None], zc[:, :, -1, :, None] * high["b"], impl=impl)
        w = _two_re(high["C"], g)  # (b, chunks, d): w_c
        if self.readout == "chunk":
            y = jnp.zeros_like(zc).at[:, :, -1].set(w)
        else:
            prev = jnp.pad(w[:, :-1], ((0, 0), (1, 0), (0, 0)))  # w_{c-1}, 0 for the first chunk
            y = zc + prev[:, :, None]
        return y.reshape(b, chunks * k, d)[:, :length]

    def _high_at_input_rate(self, z, end, offset, segment_ids, high, impl):
        """With segments (chunk ends at uneven places): the high level scanned at the input rate.

        It moves (decay ``Ā``, input ``B̄ z``) at chunk ends only and keeps its
        state elsewhere (decay 1, input 0), restarting at segment starts.
        """
        one = jnp.ones((), high["a"].dtype)
        a_hi = jnp.where(end[..., None], high["a"], one)  # (b, l, d, m)
        e_hi = jnp.where(end, z, 0.0)[..., None] * high["b"]
        g, _ = linear_scan(a_hi, e_hi, segment_ids=jnp.asarray(segment_ids), impl=impl)
        w = _two_re(high["C"], g)  # w at t: the high output after the last chunk ending at or before t
        if self.readout == "chunk":
            return jnp.where(end, w, 0.0)
        # w_{c-1} for a position in chunk c is w at t - 1 (chunk c is unfinished there),
        # and 0 at a segment start, where no chunk of this segment has ended.
        prev = jnp.pad(w[:, :-1], ((0, 0), (1, 0), (0, 0)))
        return z + jnp.where((offset == 0)[..., None], 0.0, prev)

    def output(self, p, y, proj: Projection) -> Seq:
        out = jnp.einsum("...i,io->...o", y.astype(self.dtype), p["W"].astype(self.dtype),
                         preferred_element_type=self.acc())
        return (out + p["bias"].astype(self.acc())).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """Zero states of both levels and the position in the chunk.

        Returns:
          ``{"x": (batch, d, low/2), "g": (batch, d, high/2)`` complex, ``"pos": (batch,)`` int32``}``;
          ``g`` is the high-level state after the last completed chunk, from
          which the upsampled output ``w_{c-1}`` is read.
        """
        cdt = complex_dtype(self.dtype)
        return {"x": jnp.zeros((batch_size, d, self.low // 2), cdt),
                "g": jnp.zeros((batch_size, d, self.high // 2), cdt),
                "pos": jnp.zeros((batch_size,), jnp.int32)}

    def cache_keys(self, d: int) -> set[str]:
        return {"x", "g", "pos"}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        ssm, k = p["ssm"], self.chunk_size
        low, high = ssm["low"], ssm["high"]
        u = x_t.astype(self.dtype).astype(self.acc())
        pos = cache["pos"]
        start = (pos == 0)[:, None, None]
        x = jnp.where(start, 0.0, low["a"] * cache["x"]) + low["b"] * u[..., None]
        z = _two_re(low["C"], x) + ssm["D"] * u
        end = (pos == k - 1)[:, None, None]
        g = jnp.where(end, high["a"] * cache["g"] + high["b"] * z[..., None], cache["g"])
        if self.readout == "chunk":
            y = jnp.where(end[..., 0], _two_re(high["C"], g), 0.0)
        else:
            y = z + _two_re(high["C"], cache["g"])  # the last completed chunk's w
        new = {"x": x.astype(cache["x"].dtype), "g": g.astype(cache["g"].dtype), "pos": (pos + 1) % k}
        return self.output(p, y, Projection()), new

    def state_size(self, length: int | None = None) -> int:
        """Bytes of recurrent state per sequence: both levels' modes and the chunk position.

        Args:
          length: unused (the state does not grow with length).

        Returns:
          ``d · (low + high)/2 · itemsize(complex) + 4``.
        """
        del length
        item = jnp.dtype(complex_dtype(self.dtype)).itemsize
        return self.width() * (self.low + self.high) // 2 * item + 4


__all__ = ["HiSS", "READOUTS"]
