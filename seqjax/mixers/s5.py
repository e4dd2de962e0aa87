"""S5: the simplified state-space layer (Smith, Warrington & Linderman 2023).

"Simplified State Space Layers for Sequence Modeling" (ICLR 2023). One
multi-input multi-output SSM with a diagonal state matrix, shared by all
channels (S4 runs one single-input SSM per channel)::

    x' = Λ x + B̃ u,   y = Re(C̃ x) + D u       (continuous, Λ diagonal)
    x_t = Λ̄ x_{t-1} + B̄ u_t                   (discrete, per-mode step Δ)

initialised from the eigendecomposition of the (block-diagonal) normal part
of HiPPO-LegS (:func:`seqjax.ops.hippo.block_diagonal_legs`), discretised
with :func:`seqjax.ops.ssm_kernels.discretize`, and run with
:func:`seqjax.ops.linear_scan` (segment resets as in Lu et al. 2023, "Structured
State Space Models for In-Context Reinforcement Learning": the state restarts
from zero at every episode/segment boundary).
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array

from seqjax.errors import ConfigError
from seqjax.mixers.base import Projection
from seqjax.mixers.common import (
    check_int, check_option, complex_dtype, constant_init, log_uniform_init, param, split_complex)
from seqjax.mixers.lti_blocks import LTISSM, DiagonalRecurrence, complex_in, real_out
from seqjax.mixers.registry import register
from seqjax.ops.hippo import block_diagonal_legs
from seqjax.ops.linear_scan import linear_scan
from seqjax.ops.ssm_kernels import DISCRETIZATIONS, discretize
from seqjax.types import Seq


def _vinv_b(Vinv, width):
    """``B̃ = V⁻¹ B`` for a real ``B (P, H)`` drawn as in the public S5 code.

    ``B`` is LeCun-normal with the fan-in counted on its first axis (``P``),
    i.e. std ``1/sqrt(P)``, as ``lecun_normal()(key, (P, H))`` does there.
    """

    def init(key, shape, dtype=jnp.float32):
        B = jax.nn.initializers.lecun_normal()(key, (Vinv.shape[1], width), jnp.float32)
        Bt = jnp.asarray(Vinv, jnp.complex64) @ B.astype(jnp.complex64)
        return split_complex(Bt).astype(dtype).reshape(shape)

    return init


def _c_v(V, width, directions):
    """``C̃ = C V`` per direction, ``C (H, P)`` complex with LeCun-normal parts."""

    def init(key, shape, dtype=jnp.float32):
        parts = []
        for k in jax.random.split(key, directions):
            C = jax.nn.initializers.lecun_normal(in_axis=1, out_axis=2, batch_axis=(0,))(
                k, (width, V.shape[0], 2), jnp.float32
            )
            parts.append((C[..., 0] + 1j * C[..., 1]) @ jnp.asarray(V, jnp.complex64))
        return split_complex(jnp.concatenate(parts, axis=-1)).astype(dtype).reshape(shape)

    return init


@register("s5")
class S5(DiagonalRecurrence, LTISSM):
    """S5 (Smith, Warrington & Linderman 2023): a MIMO diagonal SSM.

    Equations (``H = d_model`` channels, ``P = d_state``, ``M = P/2`` stored
    complex modes, per-mode step ``Δ = exp(log_step)``)::

        ZOH:      Λ̄ = exp(ΛΔ),                 B̄ = (Λ̄ - 1)/Λ ⊙ B̃
        bilinear: Λ̄ = (1 + ΛΔ/2)/(1 - ΛΔ/2),   B̄ = Δ/(1 - ΛΔ/2) ⊙ B̃
        x_t = Λ̄ ⊙ x_{t-1} + B̄ u_t              x ∈ C^M, B̃ ∈ C^{M×H}
        y_t = 2 Re(C̃ x_t) + D ⊙ u_t             C̃ ∈ C^{H×M}, D ∈ R^H

    Conjugate symmetry (as S5's ``conj_sym=True``): the real ``P``-state system
    has its eigenvalues in conjugate pairs, so only the ``M = P/2`` modes of
    positive imaginary part are stored and ``2 Re(C̃ x)`` adds the conjugate
    half back. ``d_state`` is ``P``, the size of that real system.

    Bidirectional (as the S5 code): a second scan runs from the end with the
    same ``Λ̄, B̄`` (``x^b_t = Λ̄ x^b_{t+1} + B̄ u_t``); the two states are
    concatenated before the output matrix, ``C̃ = [C̃_fwd, C̃_bwd] ∈ C^{H×2M}``,
    so ``y_t = 2 Re(C̃_fwd x_t + C̃_bwd x^b_t) + D u_t``.

    Initialisation: ``Λ`` = eigenvalues of the normal part ``S = A + p pᵀ``
    (``p_n = sqrt(n + 1/2)``) of HiPPO-LegS of size ``P / blocks``, repeated
    over ``blocks`` diagonal blocks; ``S = V Λ V*``; ``B̃ = V⁻¹ B`` and
    ``C̃ = C V`` for random ``B`` (real, LeCun-normal) and ``C`` (complex,
    LeCun-normal parts); ``log Δ`` uniform on ``[log dt_min, log dt_max]``;
    ``D ~ N(0, 1)``.

    Mixing matrix (the scans alone: per stored mode, acting on ``v = B̄ u``;
    ``C̃`` and ``D`` are outside it)::

        M[n, t, s]     = Λ̄_n^(t-s)     s <= t in the same segment, else 0
        M[M + n, t, s] = Λ̄_n^(s-t)     s >= t (bidirectional: the reversed scan's modes)

    complex, ``(b, M, l, l)`` causal and ``(b, 2M, l, l)`` bidirectional, the
    channels in the order of the concatenated state that ``C̃`` reads.

    Attributes:
      d_model: width ``H``; None takes it from the input.
      dtype: compute dtype of the projections; the scan runs in complex64
        (complex128 for float64).
      impl: ``impl`` of :func:`seqjax.ops.linear_scan`.
      sequence_axis: mesh axis that splits the length (the sequence-parallel
        ``linear_scan`` under a context mesh, see
        :func:`seqjax.parallel.sequence_map`); None: never split.
      d_state: ``P``, size of the real state the init describes (even;
        ``P/2`` complex modes are stored).
      dt_min: smallest initial step ``Δ``.
      dt_max: largest initial step ``Δ``.
      bidirectional: add the reversed scan (non-causal). None (default)
        means ``not causal``; after construction it is a bool.
      causal: the contract's name for ``not bidirectional``. None (default)
        means ``not bidirectional``; after construction it is a bool (True by
        default). Setting both inconsistently raises ConfigError.
      blocks: number ``J`` of LegS blocks in the init (divides ``P``, with
        ``P/J`` even). The S5 code defaults to ``J = 8`` with ``P = 256``.
      discretization: ``"zoh"`` (default) or ``"bilinear"``.
      clip_eigs: clip ``Re Λ`` to ``<= -1e-4`` (S5's left-half-plane option).
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("log_step", "Lambda_re", "Lambda_im", "B")
    ops = ("linear_scan",)
    sequence_parallel = True
    values_index = 0  # v = B̄ u, complex
    resettable = True  # h restarts from zero, as at a segment start (Lu et al. 2023)

    blocks: int = 1
    discretization: str = "zoh"
    clip_eigs: bool = False

    @property
    def num_modes(self) -> int:
        """``M = d_state / 2`` stored complex modes per direction."""
        return self.d_state // 2

    def check_fields(self):
        super().check_fields()
        name, P, J = self.mixer_name, self.d_state, self.blocks
        self.check_even_state()
        check_int(name, "blocks", J)
        if P % J or (P // J) % 2:
            raise ConfigError(f"{name}.blocks={J!r} must divide d_state={P} into blocks of even size")
        check_option(name, "discretization", self.discretization, DISCRETIZATIONS)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        """The discrete system ``Λ̄ (M,)``, ``B̄ (M, d)``, ``C̃ (d, dirs·M)``, ``D (d,)``."""
        m = self.num_modes
        # Init-time constants (float64 NumPy); only their values enter params.
        Lambda0, V, Vinv = block_diagonal_legs(self.d_state, self.blocks, conj_sym=True)
        Lambda_re = param(self, "Lambda_re", constant_init(Lambda0.real), (m,), ("state",))
        Lambda_im = param(self, "Lambda_im", constant_init(Lambda0.imag), (m,), ("state",))
        B = param(self, "B", _vinv_b(Vinv, d), (m, d, 2), ("state", "embed", None))
        C = param(self, "C", _c_v(V, d, self.directions), (d, self.directions * m, 2), ("embed", "state", None))
        D = param(self, "D", jax.nn.initializers.normal(1.0), (d,), ("embed",))
        log_step = param(self, "log_step", log_uniform_init(self.dt_min, self.dt_max), (m,), ("state",))

        acc, cdt = self.acc(), complex_dtype(self.dtype)
        re = Lambda_re.astype(acc)
        if self.clip_eigs:
            re = jnp.minimum(re, -1e-4)
        Lambda = jax.lax.complex(re, Lambda_im.astype(acc))
        B = B.astype(acc)
        step = jnp.exp(log_step.astype(acc))
        Abar, Bbar = discretize(Lambda[:, None], jax.lax.complex(B[..., 0], B[..., 1]), step[:, None],
                                self.discretization)
        C = C.astype(acc)
        return {"a": Abar[:, 0].astype(cdt), "Bbar": Bbar.astype(cdt), "C": jax.lax.complex(C[..., 0], C[..., 1]),
                "D": D.astype(acc)}

    def _project_in(self, p, u):
        """``B̄ u``, complex."""
        return complex_in(u, p["Bbar"].real, p["Bbar"].imag, self.dtype)

    def mix(self, axis, v, segment_ids, a):
        impl = self.impl_for("linear_scan")
        h, _ = linear_scan(a, v, segment_ids=segment_ids, impl=impl, sequence_axis=axis)
        if self.bidirectional:
            h_b, _ = linear_scan(a, v, reverse=True, segment_ids=segment_ids, impl=impl, sequence_axis=axis)
            h = jnp.concatenate([h, h_b], axis=-1)
        return h

    def expand_values(self, v: jax.Array, channels: int) -> jax.Array:
        # Mode M + n of the reversed scan reads the same value channel n as mode n.
        return jnp.concatenate([v] * (channels // v.shape[2]), axis=2)

    def output(self, p, h, proj: Projection) -> Seq:
        # 2 Re(C̃ h) + D ⊙ u; proj.rest is the raw input u.
        y = 2.0 * real_out(h, p["C"].real, p["C"].imag, self.dtype) + p["D"] * proj.rest.astype(self.acc())
        return y.astype(self.dtype)

    def discrete_ssm(self) -> tuple[Array, Array, Array]:
        """The discretised system ``(Λ̄ (M,), B̄ (M, H), C̃ (H, dirs·M))``.

        Returns:
          Complex arrays in the accumulation dtype (for inspection and tests).
        """
        p = self.parts(self.width())
        return p["a"], p["Bbar"], p["C"]
