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

from seqjax.mixers.common import check_int, log_uniform_init, param
from seqjax.mixers.registry import register
from seqjax.mixers.s4 import ConvSSM
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
    the ``M = 1`` layer with the S4D output map (``output_map="linear"`` gives
    LSSL's ``Linear(d, d)``).

    Step (causal): ``init_cache`` materialises ``{"x": (batch, d_model, N)
    float32, "system": {"A" (d_model, N, N), "B", "C" (d_model, N)}}``;
    ``x_t = Ā x_{t-1} + B̄ u_t``, ``y_t = C x_t + D u_t`` (real state).

    Segments: the same-segment-masked Toeplitz matrix of the kernel (exact,
    O(B·d·L²) time and memory; see ``ConvSSM._segment_mix``).

    Mixing matrix: :class:`~seqjax.mixers.s4.ConvSSM`'s, ``K[l] = C Ā^l B̄``.

    Attributes:
      d_model: width ``d``; None takes it from the input.
      dtype: compute dtype.
      impl: ``impl`` of :func:`seqjax.ops.fft_conv`.
      sequence_axis: must be None.
      d_state: ``N``, the order of the LegS projection.
      dt_min: smallest initial step ``Δ``.
      dt_max: largest initial step ``Δ``.
      bidirectional: add the anti-causal kernel (second ``C``, shared ``Ā, B̄``).
      causal: ``not bidirectional``.
      output_map: ``"glu"`` (default) or ``"linear"``.
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("log_step",)

    def check_fields(self):
        super().check_fields()
        check_int(self.mixer_name, "d_state", self.d_state)

    def _ssm_params(self, d):
        log_step = param(self, "log_step", log_uniform_init(self.dt_min, self.dt_max), (d,), ("embed",))
        C = param(self, "C", nn.initializers.normal(1.0), (self.directions, d, self.d_state), (None, "embed", "state"))
        acc = self.acc()
        A, B = hippo_legs(self.d_state)  # init-time constants, not parameters
        step = jnp.exp(log_step.astype(acc))
        return {"A": jnp.asarray(A, acc), "B": jnp.asarray(B, acc), "C": C.astype(acc), "step": step}

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
        return jnp.zeros((batch_size, d, self.d_state), self.acc())

    def _recurrent_step(self, ssm, system, state, u):
        x = jnp.einsum("dnk,bdk->bdn", system["A"], state) + system["B"] * u[..., None]
        return jnp.einsum("dn,bdn->bd", system["C"], x), x

    def _state_bytes_per_channel(self):
        return self.d_state * jnp.dtype(self.acc()).itemsize
