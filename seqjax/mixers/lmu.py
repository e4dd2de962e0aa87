"""LMU: the Legendre Memory Unit in LMUFormer's parallel mixer form.

Voelker, Kajić & Eliasmith 2019, "Legendre Memory Units: Continuous-Time
Representation in Recurrent Neural Networks": a linear memory ``m`` of order
``N`` holds the Legendre coefficients of its input over a sliding window of
``θ`` steps::

    θ ṁ(t) = A m(t) + B u(t)
    A[i, j] = (2i+1) · (-1 if i < j else (-1)^(i-j+1)),   B[i] = (2i+1) (-1)^i

(HiPPO's LegT, :func:`seqjax.ops.hippo.hippo_legt`, is ``A/θ, B/θ``),
discretised by zero-order hold with a unit step. Liu et al. 2024 ("LMUFormer:
Low Complexity Yet Powerful Spiking Model With Legendre Memory Units") drop the
LMU's recurrent connections into ``u`` so that the memory is an LTI system of
the input alone and trains in parallel (Chilkuri & Eliasmith 2021): the memory
is the causal convolution of ``u`` with the impulse response
``H[:, k] = Ā^k B̄``, and a step is ``m_t = Ā m_{t-1} + B̄ u_t``.

The parallel form is :func:`seqjax.ops.fft_conv` with that impulse response,
not ``linear_scan`` on a diagonalised ``Ā``: LegT's ``A`` is far from normal
(its eigenvector matrix's condition number grows exponentially with ``N``), so
a diagonal form loses the memory in float32 already at ``N ≈ 16``, while the
powers ``Ā^k B̄`` are well behaved (``Ā`` is a contraction on the window's
signals). Packed sequences (``segment_ids``) run the exact recurrence instead,
a ``lax.scan`` of the dense ``Ā`` that restarts at every segment start
(``O(L N²)``, linear memory), since a convolution cannot restart.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_int, check_number, dense
from seqjax.mixers.registry import register
from seqjax.ops.common import segment_starts
from seqjax.ops.fft_conv import fft_conv
from seqjax.ops.hippo import hippo_legt
from seqjax.types import SegmentIds, Seq, SeqStep

_HI = jax.lax.Precision.HIGHEST  # the memory's matmuls: no TF32/bf16 passes on accelerators


def legt_zoh(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """The LMU's discrete memory: LegT ``(A, B)`` of ``order`` and window ``theta``, ZOH with step 1.

    ``Ā = exp(A/θ)`` and ``B̄ = ∫_0^1 exp(sA/θ) ds · B/θ``, both read off one
    matrix exponential of the augmented ``[[A/θ, B/θ], [0, 0]]`` (float64).

    Args:
      order: ``N``, the memory's order.
      theta: ``θ``, the window in steps.

    Returns:
      ``(Abar (N, N), Bbar (N,))``, float64 NumPy.
    """
    A, B = hippo_legt(order, theta)
    aug = np.zeros((order + 1, order + 1))
    aug[:order, :order], aug[:order, order] = A, B
    E = scipy.linalg.expm(aug)
    return E[:order, :order], E[:order, order]


def impulse_response(Abar: jax.Array, Bbar: jax.Array, length: int) -> jax.Array:
    """``H[:, k] = Ā^k B̄`` for ``k < length``, by doubling (``O(N³ log L + N² L)``).

    Args:
      Abar: ``(N, N)``.
      Bbar: ``(N,)``.
      length: ``L`` (static).

    Returns:
      ``(N, L)`` in the inputs' dtype.
    """
    cols, power = Bbar[:, None], Abar
    while cols.shape[1] < length:
        cols = jnp.concatenate([cols, jnp.matmul(power, cols, precision=_HI)], axis=1)
        if cols.shape[1] < length:
            power = jnp.matmul(power, power, precision=_HI)
    return cols[:, :length]


@register("lmu")
class LMU(Mixer):
    """The LMU mixer of LMUFormer (Liu et al. 2024), causal.

    With ``d = d_model``, ``N = d_state``, ``U = d_u`` memory channels::

        u_t = relu(W_u x_t + b_u)               ∈ R^U   (LMUFormer: U = 1)
        m_t = Ā m_{t-1} + B̄ u_t                 one order-N LegT memory per channel of u
        h_t = relu(W_h [m_t; x_t] + b_h)        ∈ R^d   (W_h reads the U·N memory and x)
        y_t = W_o h_t + b_o                     (LMUFormer's 1×1 projection)

    ``Ā, B̄`` are fixed (LMUFormer registers them as buffers): LegT of order
    ``N`` and window ``θ = theta`` discretised by ZOH (:func:`legt_zoh`). The
    spiking variant and the BatchNorm after the projection are not part of
    this mixer.

    Mixing matrix (the memory alone, acting on ``u``; channel ``c = j·N + n``
    is Legendre coefficient ``n`` of memory channel ``j`` and reads ``u[j]``)::

        M[c, t, s] = (Ā^(t-s) B̄)[n]     s <= t in the same segment, else 0

    Attributes:
      d_model: width ``d``; None takes it from the input.
      dtype: compute dtype of the projections; the memory runs in float32
        (float64 for float64).
      impl: ``impl`` of :func:`seqjax.ops.fft_conv` (the parallel form).
      sequence_axis: must be None (the memory's convolution is not split).
      d_state: ``N``, the order of each Legendre memory.
      theta: ``θ``, the memory's window in steps (> 0).
      d_u: ``U``, the channels of ``u`` (each with its own memory).
    """

    ops = ("fft_conv",)
    values_index = 0  # u, the memory's input
    resettable = True  # the memory restarts from zero, as at a segment start

    d_state: int = 64
    theta: float = 128.0
    d_u: int = 1

    def check_fields(self):
        check_int(self.mixer_name, "d_state", self.d_state)
        check_number(self.mixer_name, "theta", self.theta, low=0.0, open_low=True)
        check_int(self.mixer_name, "d_u", self.d_u)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        Abar, Bbar = legt_zoh(self.d_state, float(self.theta))  # init-time constants, float64
        acc = self.acc()
        return {
            "u_proj": dense(self.d_u, ("embed", None), use_bias=True, dtype=self.dtype, name="u_proj"),
            "hidden": dense(d, (None, "mlp"), use_bias=True, dtype=self.dtype, name="hidden"),
            "out_proj": dense(d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="out_proj"),
            "Abar": jnp.asarray(Abar, acc), "Bbar": jnp.asarray(Bbar, acc),
        }

    def _u(self, p, x):
        return jax.nn.relu(p["u_proj"](x.astype(self.dtype))).astype(self.acc())

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        return Projection(tokens=(self._u(p, x), segment_ids), shared=(p["Abar"], p["Bbar"]), rest=x)

    def mix(self, axis, u, segment_ids, Abar, Bbar):
        """The memories ``(b, l, U·N)`` of ``u (b, l, U)``."""
        del axis  # never split (no sequence_parallel)
        b, length, nu = u.shape
        n = Abar.shape[0]
        if segment_ids is not None:
            return self._segment_memory(u, jnp.asarray(segment_ids), Abar, Bbar).reshape(b, length, nu * n)
        H = impulse_response(Abar, Bbar, length)  # (N, L)
        # One convolution channel per (memory channel j, coefficient n): u[j] with H[n].
        v = jnp.repeat(u, n, axis=-1)  # (b, l, U·N), channel j·N + n reads u[j]
        k = jnp.tile(H, (nu, 1))
        return fft_conv(v, k, impl=self.impl_for("fft_conv"))

    def _segment_memory(self, u, segment_ids, Abar, Bbar):
        """The exact recurrence, restarted where a segment starts: ``(b, l, U, N)``."""
        keep = ~segment_starts(segment_ids)  # (b, l): False where the memory restarts

        def step(m, inputs):
            u_t, keep_t = inputs
            m = jnp.where(keep_t[:, None, None], m, 0.0)
            m = jnp.einsum("bjn,kn->bjk", m, Abar, precision=_HI) + u_t[..., None] * Bbar
            return m, m

        m0 = jnp.zeros(u.shape[:1] + (u.shape[2], Abar.shape[0]), u.dtype)
        _, ms = jax.lax.scan(step, m0, (jnp.swapaxes(u, 0, 1), jnp.swapaxes(keep, 0, 1)))
        return jnp.swapaxes(ms, 0, 1)

    def expand_values(self, v: jax.Array, channels: int) -> jax.Array:
        return jnp.repeat(v, channels // v.shape[2], axis=2)  # channel j·N + n reads u[j]

    def output(self, p, m, proj: Projection) -> Seq:
        x = proj.rest.astype(self.dtype)
        h = jax.nn.relu(p["hidden"](jnp.concatenate([m.astype(self.dtype), x], axis=-1)))
        return p["out_proj"](h).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"m": (batch, d_u, d_state)}`` zeros in the accumulation dtype."""
        return {"m": jnp.zeros((batch_size, self.d_u, self.d_state), self.acc())}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # m = Ā m + B̄ u_t, then the same output map as the parallel form.
        u = self._u(p, x_t)
        m = jnp.einsum("bjn,kn->bjk", cache["m"], p["Abar"], precision=_HI) + u[..., None] * p["Bbar"]
        return self.output(p, m.reshape(m.shape[0], -1), Projection(rest=x_t)), {"m": m}

    def discrete_ssm(self) -> tuple[jax.Array, jax.Array]:
        """The memory's ``(Ā (N, N), B̄ (N,))`` in the accumulation dtype (for inspection and tests)."""
        p = self.parts(self.width())
        return p["Abar"], p["Bbar"]


__all__ = ["LMU", "legt_zoh", "impulse_response"]
