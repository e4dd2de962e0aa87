"""LSSL: the Linear State-Space Layer (Gu et al. 2021), in its fixed-HiPPO form.

"Combining Recurrent, Convolutional, and Continuous-time Models with Linear
State-Space Layers" (NeurIPS 2021). Each channel runs the continuous-time
HiPPO-LegS system (``A``, ``B`` fixed, time-invariant form) discretised by the
bilinear transform with a learned step, read out by a learned ``C``; the
layer is the long convolution with its Krylov kernel
(:func:`seqjax.ops.ssm_kernels.krylov_kernel`) followed by the shared S4
layer body (:class:`seqjax.mixers.s4.ConvSSM`: ``D`` skip, GELU, output map).
"""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from seqjax.mixers.registry import register
from seqjax.mixers.s4 import ConvSSM, log_uniform_init
from seqjax.ops.common import accum_dtype
from seqjax.ops.hippo import hippo_legs
from seqjax.ops.ssm_kernels import discretize_dense, krylov_kernel


@register("lssl")
class LSSL(ConvSSM):
    """LSSL (Gu et al. 2021) with the fixed HiPPO-LegS state matrix ("LSSL-fixed").

    Per channel ``h`` (real state of size ``N``)::

        A, B = HiPPO-LegS (fixed):  A[i,k] = -sqrt(2i+1)sqrt(2k+1) (i > k), -(i+1) (i = k);
                                    B[i] = sqrt(2i+1)
        Ā = (I - Δ/2 A)⁻¹(I + Δ/2 A),  B̄ = (I - Δ/2 A)⁻¹ Δ B      (bilinear, Δ = exp(log_step))
        K[l] = C Ā^l B̄                                              (Krylov, by doubling)
        y = GELU(K * u + D u),  out = GLU(W y + b)

    Learned: ``C ~ N(0, 1)`` (``(dirs, d, N)``, the public code's
    ``init="normal"``), ``D ~ N(0, 1)``, ``log Δ`` uniform on
    ``[log dt_min, log dt_max]``, the output map. The public LSSL reads out
    ``M`` copies per channel and mixes them with a ``Linear(M·d, d)``; this is
    the ``M = 1`` layer with the S4D output map (``output="linear"`` gives
    LSSL's ``Linear(d, d)``).

    Step (causal): ``init_cache`` materialises ``Ā (d, N, N)``, ``B̄ (d, N)``
    and ``C``; ``x_t = Ā x_{t-1} + B̄ u_t``, ``y_t = C x_t + D u_t`` (real state).

    Segments: the same-segment-masked Toeplitz matrix of the kernel (exact,
    O(B·d·L²) time and memory; see ``ConvSSM._segment_mix``).

    Attributes:
      d_model: width ``d``; None takes it from the input.
      d_state: ``N``, the order of the LegS projection.
      dt_min: smallest initial step ``Δ``.
      dt_max: largest initial step ``Δ``.
      bidirectional: add the anti-causal kernel (second ``C``, shared ``Ā, B̄``).
      causal: ``not bidirectional``.
      output: ``"glu"`` (default) or ``"linear"``.
      dtype: compute dtype.
      conv_impl: ``impl`` of :func:`seqjax.ops.fft_conv`.
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("log_step",)

    def _check_config(self):
        super()._check_config()
        N = self.d_state
        if not isinstance(N, int) or N < 1:
            raise ValueError(f"lssl: d_state must be a positive int, got {N!r}")

    def _ssm_params(self, d):
        part = nn.with_logical_partitioning
        log_step = self.param("log_step", part(log_uniform_init(self.dt_min, self.dt_max), ("embed",)), (d,))
        shape = (self.directions, d, self.d_state)
        C = self.param("C", part(nn.initializers.normal(1.0), (None, "embed", "state")), shape)
        rdt = accum_dtype(self.dtype)
        A, B = hippo_legs(self.d_state)  # init-time constants, not parameters
        step = jnp.exp(log_step.astype(rdt))
        return {"A": jnp.asarray(A, rdt), "B": jnp.asarray(B, rdt), "C": C.astype(rdt), "step": step}

    def _discrete(self, ssm):
        return discretize_dense(ssm["A"], ssm["B"], ssm["step"], "bilinear")  # (d, N, N), (d, N)

    def _kernel(self, ssm, length):
        Abar, Bbar = self._discrete(ssm)
        return jnp.stack([krylov_kernel(Abar, Bbar, C, length) for C in ssm["C"]])

    def _recurrent_system(self, ssm, max_length):
        del max_length
        Abar, Bbar = self._discrete(ssm)
        return {"A": Abar, "B": Bbar, "C": ssm["C"][0]}

    def _initial_state(self, batch_size, d):
        return jnp.zeros((batch_size, d, self.d_state), accum_dtype(self.dtype))

    def _recurrent_step(self, ssm, system, state, u):
        x = jnp.einsum("dnk,bdk->bdn", system["A"], state) + system["B"] * u[..., None]
        return jnp.einsum("dn,bdn->bd", system["C"], x), x

    def _state_bytes_per_channel(self):
        return self.d_state * jnp.dtype(accum_dtype(self.dtype)).itemsize

    def init_cache(self, batch_size: int, max_length: int | None = None) -> dict:
        """Zero state and the materialised recurrence (causal only).

        Args:
          batch_size: number of sequences.
          max_length: unused (the state does not grow).

        Returns:
          ``{"x": (batch, d_model, N) float32, "system": {"A" (d_model, N, N),
          "B", "C" (d_model, N)}}``.
        """
        return super().init_cache(batch_size, max_length)
