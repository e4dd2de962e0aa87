"""Hydra's structured matrix mixers: Toeplitz, Vandermonde, Cauchy and low-rank (Hwang et al. 2024).

"Hydra: Bidirectional State Space Models Through Generalized Matrix Mixers"
(2024) compares, inside one block, sequence mixers that differ only in the
structure of the L×L matrix ``M`` they apply (per head) to the values. This
file has the four structured classes beside the quasiseparable one
(``hydra``), each in its *sequence-aligned* (data-dependent) form, where the
parameters of ``M`` are projections of the input, position by position:

* ``toeplitz``:    ``M[t, s] = σ f_{t-s}`` (t ≥ s), ``σ r_{s-t}`` (s > t);
  the kernels ``f, r`` are the projected sequences read by lag.
* ``vandermonde``: ``M[t, s] = σ Σ_n cos(2πε q_tn s) − cos(2πε k_sn t)``
  (the real part of the Vandermonde matrices ``(e^{2πiε q_t})^s`` and
  ``(e^{2πiε k_s})^t``).
* ``cauchy``:      ``M[t, s] = σ Σ_n 1 / (q̃_tn − k̃_sn)`` with
  ``q̃ = e^q + c``, ``k̃ = −(e^k + c)`` (so the denominator stays positive).
* ``low_rank``:    ``M = σ Q Kᵀ``.

Every one adds the identity (the block's residual ``+ v``), so
``y = (M + I) v``. The block around the mix is the Hydra layer: an input
projection to ``z``, the values ``v`` and the mixer's parameters, a centered
depthwise convolution over ``[v, params]`` (SiLU on ``v``; on the parameters
too for Toeplitz and low-rank), the mix, then ``out_proj(rmsnorm(y) ⊙ w ⊙
silu(z))``. ``σ`` is a constant output scale from ``max_length`` (the public
code's ``max_seq_len``), never from the running length, so that packed
segments equal separate runs.

Fast paths: Toeplitz by FFT convolution (:func:`seqjax.ops.fft_conv`,
O(L log L)); low-rank as ``Q (Kᵀ V)`` (:func:`seqjax.ops.linear_attention`,
non-causal, O(L)). The paper quotes near-linear superfast algorithms for
Vandermonde and Cauchy products (O(L log² L) multipoint evaluation); they are
numerically unstable and not implemented here: both build the dense matrix
and apply it once, O(L² (n + p)) time per head and O(L²) memory. Cauchy sums
it one state index ``n`` at a time (a custom backward recomputes each term);
Vandermonde evaluates its cosines by angle addition over blocks of √L
positions (O(L^1.5·n) cosines, the sum over ``n`` as contractions).
"""

import functools
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import (
    check_int, check_number, constant_init, dense, param, positions_in_segment, same_segment, uniform_init)
from seqjax.mixers.mamba_blocks import gated_rms_norm, head_dim, short_conv
from seqjax.mixers.registry import register
from seqjax.ops.fft_conv import fft_conv
from seqjax.ops.linear_attention import linear_attention
from seqjax.types import SegmentIds, Seq

HIGHEST = jax.lax.Precision.HIGHEST
CAUCHY_TOL = 1e-8  # added to every Cauchy denominator, as the public code does
CAUCHY_BIAS_INIT = 0.5


class MatrixMixerBlock(Mixer):
    """The Hydra paper's matrix-mixer block around a structured ``M`` (not registered).

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of projections; parameters float32, mixing in float32.
      impl: ``impl`` of the mixer's op (``ops``), if it has one.
      sequence_axis: unused (these mixers run unsplit).
      expand: ``d_in = expand·d_model`` (2).
      headdim: ``p``; None takes the largest divisor of ``d_in`` that is <= 64.
      qk_dim: ``n``, the size of each head's ``q_t, k_t`` (16, as the paper's runs).
      d_conv: taps of the centered depthwise conv, odd (7).
      max_length: the ``L`` of the constant output scale ``σ`` (the public
        code's ``max_seq_len``, 128 in its BERT runs); not a limit on the length.
    """

    causality = "bidirectional"
    values_index = 0  # v (b, l, h, p), the post-conv values

    expand: int = 2
    headdim: int | None = None
    qk_dim: int = 16
    d_conv: int = 7
    max_length: int = 128

    def check_fields(self):
        name = self.mixer_name
        for field in ("expand", "qk_dim", "d_conv", "max_length"):
            check_int(name, field, getattr(self, field))
        if self.d_conv % 2 == 0:
            raise ConfigError(f"{name}.d_conv={self.d_conv!r} must be odd (a centered window)")
        if self.d_model is not None:
            self.dims(self.d_model)

    def dims(self, d: int) -> tuple[int, int, int]:
        """``(d_in, h, p)`` for width ``d``."""
        d_in = self.expand * d
        p = head_dim(self.mixer_name, d_in, self.headdim)
        return d_in, d_in // p, p

    def param_channels(self, h: int) -> int:
        """Hook: channels of the mixer's own projected parameters (default ``q, k``: ``2·h·n``)."""
        return 2 * h * self.qk_dim

    def scale(self) -> float:
        """Hook: the constant output scale ``σ``."""
        return 1.0 / math.sqrt(self.max_length * self.qk_dim)

    # Hook: SiLU on the projected parameters too (Toeplitz, low-rank), as the public code.
    activate_params: ClassVar[bool] = False

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        d_in, h, _ = self.dims(d)
        conv_dim = d_in + self.param_channels(h)
        bound = 1.0 / math.sqrt(self.d_conv)  # PyTorch's default init of a depthwise conv
        parts = {
            "in_proj": dense(d_in + conv_dim, ("embed", "mlp"), dtype=self.dtype, name="in_proj"),
            "conv_weight": param(self, "conv_weight", uniform_init(bound), (self.d_conv, conv_dim), (None, "mlp")),
            "conv_bias": param(self, "conv_bias", uniform_init(bound), (conv_dim,), ("mlp",)),
            "norm": param(self, "norm", nn.initializers.ones_init(), (d_in,), ("mlp",)),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj"),
        }
        parts.update(self.extra_parts())
        return parts

    def extra_parts(self) -> dict[str, Any]:
        """Hook (called inside ``parts``): further parameters."""
        return {}

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        d_in, h, hp = self.dims(x.shape[-1])
        z, vp = jnp.split(p["in_proj"](x.astype(self.dtype)), [d_in], axis=-1)
        vp = short_conv(vp, p["conv_weight"], p["conv_bias"], segment_ids=segment_ids, causal=False)
        v, prm = jnp.split(vp, [d_in], axis=-1)
        v = jax.nn.silu(v).astype(self.dtype).reshape(v.shape[:-1] + (h, hp))
        if self.activate_params:
            prm = jax.nn.silu(prm)
        prm = prm.astype(self.dtype).reshape(prm.shape[:-1] + (h, -1))  # (b, l, h, 2n) or (b, l, h, 2)
        half = prm.shape[-1] // 2
        return Projection(tokens=(v, prm[..., :half], prm[..., half:], segment_ids),
                          shared=self.shared(p), rest=z)

    def shared(self, p) -> tuple:
        """Hook: the parameters the mix reads whole."""
        return ()

    def output(self, p, y, proj: Projection) -> Seq:
        y = y.reshape(y.shape[:-2] + (-1,)).astype(self.acc())
        y = gated_rms_norm(y, proj.rest, p["norm"], 1, norm_before_gate=True)
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)


def _dense_sum(v, q, k, entry, aux, mask):
    """``y = (Σ_n C_n) v`` with ``C_n[b, t, s, h] = entry(q[..., n], k[..., n], aux)``.

    The matrix is summed over ``n`` first and applied to ``v`` once (one
    ``L²·p`` product per head, not one per ``n``: the product costs more than
    an entry). The sum runs one ``n`` at a time with a custom backward that
    recomputes each ``C_n``'s VJP from the matrix's cotangent, so the memory
    is O(L²), not O(L² n), in both passes.
    """
    m = _matrix_sum(entry, q, k, aux)
    if mask is not None:
        m = jnp.where(mask[..., None], m, 0)
    return jnp.einsum("btsh,bshp->bthp", m, v, precision=HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _matrix_sum(entry, q, k, aux):
    """``Σ_n entry(q[..., n], k[..., n], aux)``: ``(b, l, h, n)`` twice → ``(b, l, l, h)``."""
    first = jax.eval_shape(entry, q[..., 0], k[..., 0], aux)

    def body(m, qk):
        return m + entry(*qk, aux), None

    m, _ = jax.lax.scan(body, jnp.zeros(first.shape, first.dtype), (jnp.moveaxis(q, -1, 0), jnp.moveaxis(k, -1, 0)))
    return m


def _matrix_sum_fwd(entry, q, k, aux):
    return _matrix_sum(entry, q, k, aux), (q, k, aux)


def _matrix_sum_bwd(entry, saved, dm):
    q, k, aux = saved

    def body(_, qk):
        _, vjp = jax.vjp(lambda qn, kn: entry(qn, kn, aux), *qk)
        return None, vjp(dm)

    _, (dq, dk) = jax.lax.scan(body, None, (jnp.moveaxis(q, -1, 0), jnp.moveaxis(k, -1, 0)))
    # aux holds positions (or nothing): constants of the entry, no gradient.
    return jnp.moveaxis(dq, 0, -1), jnp.moveaxis(dk, 0, -1), jax.tree.map(jnp.zeros_like, aux)


_matrix_sum.defvjp(_matrix_sum_fwd, _matrix_sum_bwd)


@register("toeplitz")
class Toeplitz(MatrixMixerBlock):
    """Sequence-aligned Toeplitz mixer: ``M[t, s] = σ f_{t-s}`` (t ≥ s), ``σ r_{s-t}`` (s > t), plus I.

    ``f, r: (b, l, h)`` are two projected channels per head (after the conv
    and SiLU), read as kernels by lag: the entry at lag ``d`` is the value
    at position ``d`` (of the segment). ``σ = 0.5 / sqrt(max_length)``.
    The fast path is one bidirectional FFT convolution
    (:func:`seqjax.ops.fft_conv`, O(L log L)), the batch folded into the
    channels because the kernels depend on the input. With ``segment_ids`` the
    kernel of each segment starts at the segment's first position, which no
    single convolution can express: the mix then builds the masked ``M``
    (O(L²) time and memory) and applies it.

    Attributes:
      (as :class:`MatrixMixerBlock`; ``qk_dim`` unused.)
    """

    ops = ("fft_conv",)
    activate_params = True

    def param_channels(self, h: int) -> int:
        return 2 * h

    def scale(self) -> float:
        return 0.5 / math.sqrt(self.max_length)

    def mix(self, axis, v, f, r, segment_ids):
        del axis
        acc = self.acc()
        sigma = self.scale()
        b, length, h, hp = v.shape
        f, r, vf = f[..., 0].astype(acc), r[..., 0].astype(acc), v.astype(acc)
        if segment_ids is None:
            kf = jnp.moveaxis(f, 1, -1)  # (b, h, L): tap d = f at position d
            # The backward taps i = 0.. are lags i + 1: r at positions 1..L-1, then an unused 0.
            kb = jnp.moveaxis(jnp.concatenate([r[:, 1:], jnp.zeros_like(r[:, :1])], axis=1), 1, -1)
            k = jnp.repeat(sigma * jnp.stack([kf, kb]).reshape(2, b * h, length), hp, axis=1)
            u = jnp.moveaxis(vf, 1, 0).reshape(1, length, b * h * hp)
            y = fft_conv(u, k, bidirectional=True, impl=self.impl_for("fft_conv"))
            y = jnp.moveaxis(y.reshape(length, b, h, hp), 0, 1)
        else:
            y = jnp.einsum("btsh,bshp->bthp", self._matrix(f, r, segment_ids), vf, precision=HIGHEST)
        return y + vf

    def _matrix(self, f, r, segment_ids):
        """The masked ``σ M`` (without I), ``(b, t, s, h)``: lags counted from each segment's start."""
        b, length = f.shape[:2]
        t = jnp.arange(length)
        start = t - positions_in_segment(segment_ids, b, length)  # (b, l)
        lag = t[:, None] - t[None, :]
        idx = jnp.clip(start[:, :, None] + jnp.abs(lag)[None], 0, length - 1)  # (b, t, s)
        take = jax.vmap(lambda a, i: a[i])  # a (l, h), i (t, s) -> (t, s, h)
        m = jnp.where((lag >= 0)[None, :, :, None], take(f, idx), take(r, idx))
        return self.scale() * jnp.where(same_segment(segment_ids, b, length)[..., None], m, 0)


@register("low_rank")
class LowRank(MatrixMixerBlock):
    """Sequence-aligned low-rank mixer: ``M = σ Q Kᵀ`` per head, plus I (linear attention without softmax).

    ``q_t, k_t ∈ R^n`` are projections of the input (after the conv and
    SiLU); ``σ = 1/sqrt(max_length·n)``. The fast path is ``Q (Kᵀ V)``
    (:func:`seqjax.ops.linear_attention`, ``causal=False``): O(L·n·p) time,
    O(n·p) state per head; with ``segment_ids`` each segment has its own
    ``Kᵀ V``.

    Attributes:
      (as :class:`MatrixMixerBlock`.)
    """

    ops = ("linear_attention",)
    activate_params = True

    def mix(self, axis, v, q, k, segment_ids):
        del axis
        acc = self.acc()
        y, _ = linear_attention((self.scale() * q.astype(acc)), k.astype(acc), v.astype(acc), causal=False,
                                segment_ids=segment_ids, impl=self.impl_for("linear_attention"))
        return y.astype(acc) + v.astype(acc)


@register("vandermonde")
class Vandermonde(MatrixMixerBlock):
    """Sequence-aligned Vandermonde mixer: ``M[t, s] = σ Σ_n cos(2πε q_tn s) − cos(2πε k_sn t)``, plus I.

    The real parts of two Vandermonde matrices, ``V(q)[t, s] = ω_t^s`` and
    ``V(k)ᵀ``, with nodes ``ω = e^{2πiε q}`` (the paper's cosine form);
    ``q, k`` are conv outputs without activation, ``ε = freq_scale``,
    ``σ = 1/sqrt(2·max_length·n)``. Positions ``t, s`` count from the start
    of their segment and ``M`` is zero across segments. Computed densely:
    O(L²·(n + p)) time, O(L²) memory (see the module docstring).

    Attributes:
      freq_scale: ``ε`` (1e-3, the public code's constant: the angles
        ``2πε q s`` stay moderate up to a few thousand positions; at short
        lengths ``M`` is then small next to ``I``).
      (the rest as :class:`MatrixMixerBlock`.)
    """

    freq_scale: float = 1e-3

    def check_fields(self):
        super().check_fields()
        check_number(self.mixer_name, "freq_scale", self.freq_scale, low=0.0, open_low=True)

    def scale(self) -> float:
        return 1.0 / math.sqrt(2 * self.max_length * self.qk_dim)

    def mix(self, axis, v, q, k, segment_ids):
        del axis
        acc = self.acc()
        b, length = v.shape[:2]
        pos = positions_in_segment(segment_ids, b, length).astype(acc)
        w = 2 * math.pi * self.freq_scale
        sigma = self.scale()

        # Σ_n cos(2πε q_tn s') with s' = pos_s; within t's segment pos_s = s − t + pos_t.
        m = _cos_sum(w * q.astype(acc), pos, length)
        # Σ_n cos(2πε k_sn t'), computed with s in the role of t, then transposed.
        m = sigma * (m - jnp.swapaxes(_cos_sum(w * k.astype(acc), pos, length), 1, 2))
        if segment_ids is not None:
            m = jnp.where(same_segment(segment_ids, b, length)[..., None], m, 0)
        vf = v.astype(acc)
        return jnp.einsum("btsh,bshp->bthp", m, vf, precision=HIGHEST) + vf


def _cos_sum(a, pos, length):
    """``Σ_n cos(a[b, t, h, n] · (s − t + pos[b, t]))`` for ``s < length``: ``(b, t, s, h)``.

    ``s − t + pos_t`` is ``s``'s position in ``t``'s segment (entries across
    segments are masked by the caller). The cosines go by angle addition over
    blocks of ``R ≈ √L`` positions, ``s = iR + r``: ``cos(α_i + β_r) = cos α_i cos β_r
    − sin α_i sin β_r``, so only O(L^{1.5}·n) cosines and sines are evaluated and
    the sum over ``n`` becomes two contractions (on CPU the L²·n cosines of the
    direct form cost ~2× the whole mix's forward and backward, measured at
    b=32, L=320, h=2, n=16). Each angle is still one product of a node and an
    integer, so the rounding is that of the direct form.
    """
    b, rows, h, n = a.shape
    block = math.isqrt(max(length - 1, 0)) + 1
    nb = -(-length // block)
    start = (jnp.arange(nb) * block).astype(a.dtype)
    shift = pos - jnp.arange(rows, dtype=pos.dtype)[None, :]  # (b, t)
    alpha = a[:, :, :, None, :] * (start[None, None, None, :, None] + shift[:, :, None, None, None])
    beta = a[:, :, :, None, :] * jnp.arange(block, dtype=a.dtype)[None, None, None, :, None]
    m = (jnp.einsum("bthin,bthrn->bthir", jnp.cos(alpha), jnp.cos(beta), precision=HIGHEST)
         - jnp.einsum("bthin,bthrn->bthir", jnp.sin(alpha), jnp.sin(beta), precision=HIGHEST))
    return jnp.moveaxis(m.reshape(b, rows, h, nb * block)[..., :length], 2, 3)


@register("cauchy")
class Cauchy(MatrixMixerBlock):
    """Sequence-aligned Cauchy mixer: ``M[t, s] = σ Σ_n 1 / (q̃_tn − k̃_sn)``, plus I.

    ``q̃ = e^q + c``, ``k̃ = −(e^k + c)`` with a learned scalar ``c``
    (``cauchy_bias``, init 0.5), ``q, k`` conv outputs without activation, so
    the denominator ``e^q + e^k + 2c`` (+1e-8) is positive while ``c > 0``;
    ``σ = 1/sqrt(max_length·n)``. Zero across segments. Computed densely:
    O(L²·(n + p)) time, O(L²) memory (see the module docstring).

    Attributes:
      (as :class:`MatrixMixerBlock`.)
    """

    def extra_parts(self) -> dict[str, Any]:
        return {"cauchy_bias": param(self, "cauchy_bias", constant_init(CAUCHY_BIAS_INIT), (), ())}

    def shared(self, p) -> tuple:
        return (p["cauchy_bias"],)

    def mix(self, axis, v, q, k, segment_ids, c):
        del axis
        acc = self.acc()
        b, length = v.shape[:2]
        c = c.astype(acc)
        qt = jnp.exp(q.astype(acc)) + c
        kt = -(jnp.exp(k.astype(acc)) + c)
        sigma = self.scale()

        def entry(qn, kn, aux):
            del aux
            return sigma / (qn[:, :, None, :] - kn[:, None, :, :] + CAUCHY_TOL)

        mask = None if segment_ids is None else same_segment(segment_ids, b, length)
        vf = v.astype(acc)
        return _dense_sum(vf, qt, kt, entry, (), mask) + vf


__all__ = ["MatrixMixerBlock", "Toeplitz", "LowRank", "Vandermonde", "Cauchy"]
