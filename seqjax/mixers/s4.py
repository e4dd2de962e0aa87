"""S4 and S4D: convolution-mode structured state-space layers, and their shared body.

* S4 (Gu, Goel & Ré 2022): DPLR ``A = Λ - P P*`` from HiPPO-LegS, bilinear,
  Cauchy + Woodbury kernel (:func:`seqjax.ops.ssm_kernels.dplr_kernel`).
* S4D (Gu, Gupta, Goel & Ré 2022): diagonal ``A = Λ`` (LegS/Lin/Inv), ZOH or
  bilinear, Vandermonde kernel (:func:`seqjax.ops.ssm_kernels.vandermonde_kernel`).

:class:`ConvSSM` is the layer body of the public S4/S4D code, shared with LSSL
(:mod:`seqjax.mixers.lssl`): one single-input SSM per channel ``h`` of
``d_model``, run as the long convolution (:func:`seqjax.ops.fft_conv`), then
GELU and a position-wise output map (``"glu"`` default, or ``"linear"``)::

    K[h, l] = C_h Ā_h^l B̄_h  (2 Re(...) over conjugate modes);  y = GELU(K * u + D ⊙ u);  out = GLU(W y + b)

Causal layers also run as the recurrence ``x_t = Ā x_{t-1} + B̄ u_t``,
``y_t = C x_t + D u_t``, identical to the convolution.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from seqjax.mixers.base import Projection
from seqjax.mixers.common import (
    as_complex, check_int, check_option, complex_dtype, constant_init, dense, gelu, log_uniform_init, param,
    same_segment, split_complex)
from seqjax.mixers.lti_blocks import LTISSM
from seqjax.mixers.registry import register
from seqjax.ops.common import segment_starts
from seqjax.ops.hippo import S4D_KINDS, nplr_legs, s4d_init
from seqjax.ops.fft_conv import fft_conv
from seqjax.ops.linear_scan import linear_scan
from seqjax.ops.ssm_kernels import DISCRETIZATIONS, discretize, discretize_dense
from seqjax.ops.ssm_kernels import dplr_c_tilde, dplr_kernel, vandermonde_kernel
from seqjax.types import SegmentIds, Seq, SeqStep

OUTPUT_MAPS = ("glu", "linear")
B_INITS = ("ones", "legs")

# (dirs, h, l) kernels: dirs = 2 for a bidirectional layer (S4's convention).
Kernel = Float[Array, "dirs d l"]


def complex_normal_init(key, shape, dtype=jnp.float32):
    """Real/imaginary parts ``(..., 2)`` each ``N(0, 1/2)`` (``torch.randn(cfloat)``)."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(0.5)


def d_modes(module) -> int:
    """``m = N/2`` stored complex modes (conjugate symmetry)."""
    return module.d_state // 2


def _tile(dirs, *arrays):
    """Repeats per-channel arrays along axis 0 so one kernel call serves both directions."""
    return [jnp.concatenate([a] * dirs, axis=0) for a in arrays]


def _masked_toeplitz(k: Kernel, segment_ids: SegmentIds) -> Float[Array, "b d l l"]:
    """The matrix of :func:`seqjax.ops.fft_conv` (without ``D``), zero between segments.

    ``M[b, h, t, s] = k[0, h, t-s]`` for ``s <= t`` and (``k`` of 2
    directions) ``k[1, h, s-t-1]`` for ``s > t``, where ``t`` and ``s`` are in
    the same segment of row ``b``; else 0.
    """
    length = k.shape[-1]
    pos = jnp.arange(length)
    lag = pos[:, None] - pos[None, :]
    zero = jnp.zeros((), k.dtype)
    M = jnp.where(lag >= 0, k[0][:, jnp.clip(lag, 0, length - 1)], zero)
    if k.shape[0] == 2:
        M = M + jnp.where(lag < 0, k[1][:, jnp.clip(-lag - 1, 0, length - 1)], zero)
    same = same_segment(segment_ids, segment_ids.shape[0], length)
    return jnp.where(same[:, None], M[None], zero)


# --- the shared layer body -----------------------------------------------------


class ConvSSM(LTISSM):
    """Shared body of the convolution-mode SSM layers (S4, S4D, LSSL); not registered.

    Subclasses provide the SSM (parameters, kernel, recurrence). Per channel
    ``h`` the layer computes ``y = GELU(K_h * u_h + D_h u_h)`` and then the
    position-wise output map (``"glu"``: ``a ⊙ σ(g)`` with ``[a, g] = W y + b``,
    ``W (d, 2d)``; ``"linear"``: ``W y + b``).

    Mixing matrix (the convolution with the skip ``D``, per channel, acting on
    ``u = x`` in the compute dtype; GELU and the output map are outside it)::

        M[h, t, s] = K[0, h, t-s] (s <= t) + K[1, h, s-t-1] (s > t, bidirectional) + D_h [s = t]

    zero between segments: a lower-triangular (causal) or full Toeplitz
    matrix per channel.

    Attributes:
      d_model: width ``d`` (channels); None takes it from the input.
      dtype: compute dtype; kernels and states are float32/complex64 at least.
      impl: ``impl`` of :func:`seqjax.ops.fft_conv` (a string), or a mapping
        ``{op: impl}`` over the class's ``ops``.
      sequence_axis: must be None (the convolution runs with the length unsplit).
      d_state: state size ``N`` of each channel's SSM.
      dt_min: smallest initial step ``Δ`` (``log Δ`` uniform).
      dt_max: largest initial step ``Δ``.
      bidirectional: add an anti-causal kernel (S4's convention, see
        :func:`seqjax.ops.fft_conv`). None means ``not causal``.
      causal: the contract's name for ``not bidirectional``. None means
        ``not bidirectional`` (True by default); both set inconsistently raises.
      output_map: ``"glu"`` (default, S4D's ``Conv1d(d, 2d) + GLU``) or ``"linear"``.
    """

    ops = ("fft_conv",)
    values_index = 0  # u, the input in the compute dtype

    output_map: str = "glu"

    def check_fields(self):
        super().check_fields()
        check_option(self.mixer_name, "output_map", self.output_map, OUTPUT_MAPS)

    # --- hooks for the subclasses -------------------------------------------------
    # _ssm_params(d) -> dict: creates the SSM's parameters, returns them cast to
    #   the accumulation dtype; _kernel(ssm, length) -> (dirs, d, length);
    # _recurrent_system(ssm, max_length) -> dict of constants for init_cache;
    # _recurrent_step(ssm, system, state, u) -> (C x (b, d), new state).
    # The default state is S4/S4D's: N/2 complex modes per channel.

    def _ssm_params(self, d: int) -> dict:
        raise NotImplementedError

    def _kernel(self, ssm: dict, length: int) -> Kernel:
        raise NotImplementedError

    def _segment_mix(self, ssm: dict, u, segment_ids):
        """``K * u`` restarted at segment boundaries (without ``D u``).

        Default for SSMs without a diagonal recurrence (S4's DPLR, LSSL's
        dense HiPPO): the kernel is time-invariant, so a packed row equals
        separate runs once the Toeplitz matrix is masked to same-segment
        pairs. Exact, but O(B·d·L²) time and memory; S4D overrides it with a
        segmented scan.
        """
        k = self._kernel(ssm, u.shape[1])
        M = _masked_toeplitz(k if self.bidirectional else k[:1], segment_ids)
        return jnp.einsum("bhts,bsh->bth", M, u.astype(M.dtype), precision=jax.lax.Precision.HIGHEST)

    def _recurrent_system(self, ssm: dict, max_length: int | None) -> dict:
        raise NotImplementedError

    def _recurrent_step(self, ssm: dict, system: dict, state, u):
        raise NotImplementedError

    def _modal_params(self, d: int, Lambda0, vectors: dict) -> dict:
        """S4/S4D's ``log Δ (d,)``, ``Λ (d, m)`` and complex ``(d, m)`` vectors.

        ``Λ = -exp(Lambda_log_re) + i Lambda_im`` keeps ``Re Λ < 0`` (stable)
        for any parameter value; every channel starts from ``Lambda0 (m,)``
        and each vector from its init ``(m,)`` (stored as real parts ``(d, m, 2)``).
        """
        m, acc = d_modes(self), self.acc()
        log_step = param(self, "log_step", log_uniform_init(self.dt_min, self.dt_max), (d,), ("embed",))
        log_re = param(self, "Lambda_log_re", constant_init(np.log(-Lambda0.real)), (d, m), ("embed", "state"))
        im = param(self, "Lambda_im", constant_init(Lambda0.imag), (d, m), ("embed", "state"))
        out = {
            "Lambda": jax.lax.complex(-jnp.exp(log_re.astype(acc)), im.astype(acc)),
            "step": jnp.exp(log_step.astype(acc)),
        }
        for name, v0 in vectors.items():
            v = param(self, name, constant_init(split_complex(v0)), (d, m, 2), ("embed", "state", None))
            out[name] = as_complex(v, acc)
        return out

    def _initial_state(self, batch_size: int, d: int):
        return jnp.zeros((batch_size, d, d_modes(self)), complex_dtype(self.dtype))

    def _state_bytes_per_channel(self) -> int:
        return d_modes(self) * jnp.dtype(complex_dtype(self.dtype)).itemsize

    # --- the Mixer hooks -------------------------------------------------------------

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        ssm = self._ssm_params(d)
        ssm["D"] = param(self, "D", nn.initializers.normal(1.0), (d,), ("embed",)).astype(self.acc())
        width = 2 * d if self.output_map == "glu" else d
        return {"ssm": ssm, "out": dense(width, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="out")}

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        return Projection(tokens=(x.astype(self.dtype), segment_ids), shared=(p["ssm"],))

    def mix(self, axis, u, segment_ids, ssm):
        del axis  # never split (no sequence_parallel)
        if segment_ids is not None:
            y = self._segment_mix(ssm, u, jnp.asarray(segment_ids))
            return (y + ssm["D"] * u.astype(y.dtype)).astype(self.dtype)
        k = self._kernel(ssm, u.shape[1])
        return fft_conv(u, k if self.bidirectional else k[0], D=ssm["D"], bidirectional=self.bidirectional,
                        impl=self.impl_for("fft_conv"))

    def output(self, p, y, proj: Projection) -> Seq:
        d = y.shape[-1]
        y = gelu(y.astype(self.dtype))  # PyTorch's nn.GELU (erf)
        z = p["out"](y)
        if self.output_map == "glu":
            z = z[..., :d] * jax.nn.sigmoid(z[..., d:])
        return z.astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """Zero state plus the discrete system, materialised once.

        Returns:
          ``{"x": state (batch, d_model, ...), "system": {constants, no batch axis}}``.
        """
        ssm = self.parts(d)["ssm"]
        return {"x": self._initial_state(batch_size, d), "system": self._recurrent_system(ssm, max_length)}

    def cache_keys(self, d: int) -> set[str]:
        # The system is built from the parameters: the base's eval_shape of
        # empty_cache would create them a second time.
        return {"x", "system"}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # x = Ā x + B̄ u_t, y_t = C x + D u_t, then GELU and the output map.
        ssm, acc = p["ssm"], self.acc()
        u = x_t.astype(self.dtype).astype(acc)
        y, state = self._recurrent_step(ssm, cache["system"], cache["x"], u)
        y = (y + ssm["D"] * u).astype(self.dtype)
        return self.output(p, y, Projection()), {"x": state, "system": cache["system"]}

    # --- beyond the contract ----------------------------------------------------------

    def kernel(self, length: int) -> Kernel:
        """The kernels for ``length`` (static): ``(dirs, d_model, length)``, ``K[1]`` anti-causal.

        Args:
          length: ``L``.

        Returns:
          ``K``, real (float32 at least).
        """
        return self._kernel(self.parts(self.width())["ssm"], length)

    def state_size(self, length: int | None = None) -> int:
        """Bytes of recurrent state per sequence; bidirectional: twice that (as S5).

        The system in the cache has no batch axis, so it is not counted; a
        bidirectional layer reports the carries of its two directions.

        Args:
          length: unused.

        Returns:
          ``dirs · d_model · (bytes of one channel's state)``.
        """
        del length
        return self.directions * self.width() * self._state_bytes_per_channel()


# --- S4D -------------------------------------------------------------------------


@register("s4d")
class S4D(ConvSSM):
    """S4D (Gu, Gupta, Goel & Ré 2022): diagonal state-space layer.

    Per channel ``h``, ``m = N/2`` complex modes standing for the real
    ``N``-state system on ``[Λ, Λ̄]`` (conjugate symmetry)::

        Λ = -exp(log_re) + i·im             (Re Λ < 0 always: stable)
        ZOH:      Ā = exp(ΛΔ),                B̄ = (Ā - 1)/Λ · B
        bilinear: Ā = (1 + ΛΔ/2)/(1 - ΛΔ/2),  B̄ = Δ/(1 - ΛΔ/2) · B
        K[l] = 2 Re(Σ_n C_n B̄_n Ā_n^l)       (Vandermonde)
        y = GELU(K * u + D u),  out = GLU(W y + b)

    Inits of ``Λ`` (field ``a_init``, :func:`seqjax.ops.s4d_init`): ``"legs"`` (eigenvalues of
    the normal part of LegS), ``"lin"`` (``-1/2 + iπn``), ``"inv"``
    (``-1/2 + i(N/π)(N/(2n+1) - 1)``); ``B = 1`` (S4D default) or the LegS
    projection ``V* B`` (``b_init="legs"``, S4's NPLR ``B``); ``C`` complex
    normal (parts ``N(0, 1/2)``); ``D ~ N(0, 1)``; ``log Δ`` uniform.

    Segments: with ``segment_ids`` the layer runs the same SSM as a diagonal
    recurrence (:func:`seqjax.ops.linear_scan`, state restarted at every
    segment start) instead of the convolution; bidirectional layers add the
    reversed scan. Step: ``x_t = Ā x_{t-1} + B̄ u_t``, ``y_t = 2 Re(C x_t) + D u_t``.

    Mixing matrix: :class:`ConvSSM`'s, ``K[l] = 2 Re(Σ_n C_n B̄_n Ā_n^l)``.

    Attributes:
      d_model: width ``d``; None takes it from the input.
      dtype: compute dtype.
      impl: a string sets ``fft_conv``; a mapping ``{op: impl}`` also
        ``vandermonde_kernel`` (``"reference"``, ``"chunked"``) and
        ``linear_scan`` (segments only).
      sequence_axis: must be None.
      d_state: ``N`` (even; ``N/2`` complex modes per channel).
      dt_min: smallest initial step ``Δ``.
      dt_max: largest initial step ``Δ``.
      bidirectional: add the anti-causal kernel (second ``C``, shared ``Λ, B, Δ``).
      causal: ``not bidirectional``.
      output_map: ``"glu"`` (default) or ``"linear"``.
      a_init: init of ``Λ``: ``"legs"`` (default), ``"lin"`` or ``"inv"`` (the
        S4 code's ``init``; ``init`` itself would shadow ``Module.init``).
      b_init: ``"ones"`` (default) or ``"legs"``.
      discretization: ``"zoh"`` (default) or ``"bilinear"``.
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("log_step", "Lambda_log_re", "Lambda_im", "B")
    ops = ("fft_conv", "vandermonde_kernel", "linear_scan")

    a_init: str = "legs"
    b_init: str = "ones"
    discretization: str = "zoh"

    def check_fields(self):
        super().check_fields()
        self.check_even_state()
        check_option(self.mixer_name, "a_init", self.a_init, S4D_KINDS)
        check_option(self.mixer_name, "b_init", self.b_init, B_INITS)
        check_option(self.mixer_name, "discretization", self.discretization, DISCRETIZATIONS)

    def _ssm_params(self, d):
        B0 = nplr_legs(self.d_state, conj_sym=True)[2] if self.b_init == "legs" else np.ones(d_modes(self))
        ssm = self._modal_params(d, s4d_init(self.d_state, self.a_init), {"B": B0})
        shape = (self.directions, d, d_modes(self), 2)
        C = param(self, "C", complex_normal_init, shape, (None, "embed", "state", None))
        return {**ssm, "C": as_complex(C, self.acc())}

    def _kernel(self, ssm, length):
        Lambda, B, step = _tile(self.directions, ssm["Lambda"], ssm["B"], ssm["step"])
        C = ssm["C"].reshape((-1,) + ssm["C"].shape[2:])
        K = vandermonde_kernel(Lambda, B, C, step, length, self.discretization,
                               impl=self.impl_for("vandermonde_kernel"))
        return K.reshape(self.directions, -1, length)

    def _discrete(self, ssm):
        return discretize(ssm["Lambda"], ssm["B"], ssm["step"][:, None], self.discretization)

    def _segment_mix(self, ssm, u, segment_ids):
        Abar, Bbar = self._discrete(ssm)  # (d, m)
        v = u.astype(self.acc())[..., None] * Bbar  # (b, l, d, m)
        a = Abar[None, None]
        impl = self.impl_for("linear_scan")
        h, _ = linear_scan(a, v, segment_ids=segment_ids, impl=impl)
        y = 2.0 * jnp.einsum("dm,bldm->bld", ssm["C"][0], h).real
        if self.bidirectional:
            # k_bwd[j] = 2 Re(C_b B̄ Ā^j) acts on u[t+1+j]: the reversed scan's
            # state one position ahead, cut where the next position starts
            # another segment.
            hr, _ = linear_scan(a, v, reverse=True, segment_ids=segment_ids, impl=impl)
            ahead = jnp.concatenate([hr[:, 1:], jnp.zeros_like(hr[:, :1])], axis=1)
            cut = segment_starts(segment_ids, reverse=True)[..., None, None]
            ahead = jnp.where(cut, jnp.zeros((), ahead.dtype), ahead)
            y = y + 2.0 * jnp.einsum("dm,bldm->bld", ssm["C"][1], ahead).real
        return y

    def _recurrent_system(self, ssm, max_length):
        # Ā, B̄ are elementwise functions of the parameters: recomputed per step.
        del ssm, max_length
        return {}

    def _recurrent_step(self, ssm, system, state, u):
        Abar, Bbar = self._discrete(ssm)
        x = Abar * state + Bbar * u[..., None]
        return 2.0 * jnp.einsum("dm,bdm->bd", ssm["C"][0], x).real, x


# --- S4 ----------------------------------------------------------------------------


@register("s4")
class S4(ConvSSM):
    """S4 (Gu, Goel & Ré 2022): DPLR state-space layer (S4-LegS).

    Per channel ``h``, ``m = N/2`` stored modes of the real ``N``-state system
    ``A = diag([Λ, Λ̄]) - [P, P̄][P, P̄]*`` (rank-1, ``Q = P``), bilinear::

        Λ = -exp(log_re) + i·im,   Ā = (I - Δ/2 A)⁻¹(I + Δ/2 A),  B̄ = (I - Δ/2 A)⁻¹ Δ B
        K̂(ω) = C̃ (I - ωĀ)⁻¹ B̄ at ω^L = 1,   C̃ = C (I - Ā^L)        (Cauchy + Woodbury)
        y = GELU(K * u + D u),  out = GLU(W y + b)

    ``A + A* = 2 Re Λ - 2 P P* ≺ 0``: stable for any ``P``. Init: ``Λ, P, B``
    from :func:`seqjax.ops.nplr_legs` (``V (Λ - P P*) V*`` is HiPPO-LegS),
    ``D ~ N(0, 1)``, ``log Δ`` uniform.

    ``C̃`` is the trained parameter (as in the public S4 code), tied to a
    length ``L_c``: with ``l_max`` set, ``L_c = l_max`` (every call uses the
    length-``l_max`` kernel truncated to the input, which must not be longer;
    init draws a complex normal ``C`` and stores ``C̃ = C (I - Ā^{l_max})``);
    with ``l_max`` None, ``L_c`` is the input length (init draws ``C̃``
    itself; each length then implies its own ``C = C̃ (I - Ā^L)⁻¹``).

    Step (causal): ``init_cache`` materialises the dense ``Ā`` of the full
    system and ``C = C̃ (I - Ā^{L_c})⁻¹``, ``L_c = l_max`` or else
    ``max_length`` (required then); rollouts of ``L ≤ l_max`` steps (or of
    exactly ``max_length``) equal the convolution. The state is the first half
    ``x`` of the conjugate-symmetric full state ``[x, x̄]``:
    ``x ← Ā₁₁ x + Ā₁₂ x̄ + B̄₁ u``, ``y = 2 Re(C x) + D u``.

    Segments: the kernel cannot restart inside an FFT convolution, so with
    ``segment_ids`` the layer applies the same-segment-masked Toeplitz matrix
    (exact, O(B·d·L²)). Packed rows equal separate runs when ``l_max`` is
    set; with ``l_max`` None, ``C̃`` stands for the packed length, so each
    segment sees the kernel of the whole row, not of its own length.

    Mixing matrix: :class:`ConvSSM`'s, with S4's kernel ``K``.

    Attributes:
      d_model: width ``d``; None takes it from the input.
      dtype: compute dtype.
      impl: ``impl`` of :func:`seqjax.ops.fft_conv`.
      sequence_axis: must be None.
      d_state: ``N`` (even; ``N/2`` stored complex modes per channel).
      dt_min: smallest initial step ``Δ``.
      dt_max: largest initial step ``Δ``.
      bidirectional: add the anti-causal kernel (second ``C̃``, shared ``Λ, P, B, Δ``).
      causal: ``not bidirectional``.
      output_map: ``"glu"`` (default) or ``"linear"``.
      l_max: the length ``C̃`` stands for; None: the input length.
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("log_step", "Lambda_log_re", "Lambda_im", "P", "B")

    l_max: int | None = None

    def check_fields(self):
        super().check_fields()
        self.check_even_state()
        check_int(self.mixer_name, "l_max", self.l_max, optional=True)

    def _ssm_params(self, d):
        Lambda0, P0, B0, _ = nplr_legs(self.d_state, conj_sym=True)
        ssm = self._modal_params(d, Lambda0, {"P": P0, "B": B0})
        acc = self.acc()

        def c_tilde_init(key, shape, dtype=jnp.float32):
            C = complex_normal_init(key, shape, dtype)
            if self.l_max is None:
                return C
            # The public code's init: a random plain C turned into C̃ for l_max.
            Ct = [dplr_c_tilde(ssm["Lambda"], ssm["P"], as_complex(c, acc), ssm["step"], self.l_max) for c in C]
            return jnp.stack([split_complex(c) for c in Ct]).astype(dtype)

        shape = (self.directions, d, d_modes(self), 2)
        C_tilde = param(self, "C_tilde", c_tilde_init, shape, (None, "embed", "state", None))
        ssm["C_tilde"] = as_complex(C_tilde, acc)
        return ssm

    def _kernel_length(self, length):
        if self.l_max is None:
            return length
        if length > self.l_max:
            raise ValueError(f"s4: sequence length {length} exceeds l_max={self.l_max} (C̃ is tied to l_max)")
        return self.l_max

    def _kernel(self, ssm, length):
        Lambda, P, B, step = _tile(self.directions, ssm["Lambda"], ssm["P"], ssm["B"], ssm["step"])
        Ct = ssm["C_tilde"].reshape((-1,) + ssm["C_tilde"].shape[2:])
        K = dplr_kernel(Lambda, P, B, Ct, step, self._kernel_length(length))
        return K.reshape(self.directions, -1, K.shape[-1])[..., :length]

    def _recurrent_system(self, ssm, max_length):
        lc = self.l_max if self.l_max is not None else max_length
        if lc is None:
            raise ValueError(
                "s4.init_cache: l_max is None, so C̃ stands for the sequence length: pass max_length "
                "(the length whose convolution the rollout must reproduce)"
            )
        m = d_modes(self)
        Lf = jnp.concatenate([ssm["Lambda"], jnp.conj(ssm["Lambda"])], axis=-1)
        Pf = jnp.concatenate([ssm["P"], jnp.conj(ssm["P"])], axis=-1)
        Bf = jnp.concatenate([ssm["B"], jnp.conj(ssm["B"])], axis=-1)
        A = jax.vmap(jnp.diag)(Lf) - Pf[:, :, None] * jnp.conj(Pf)[:, None, :]
        Abar, Bbar = discretize_dense(A, Bf, ssm["step"], "bilinear")
        C = dplr_c_tilde(ssm["Lambda"], ssm["P"], ssm["C_tilde"][0], ssm["step"], int(lc), inverse=True)
        return {"A11": Abar[:, :m, :m], "A12": Abar[:, :m, m:], "B": Bbar[:, :m], "C": C}

    def _recurrent_step(self, ssm, system, state, u):
        # The bottom half of the full state is conj(x): Ā₁₂ acts on it.
        x = (
            jnp.einsum("dnk,bdk->bdn", system["A11"], state)
            + jnp.einsum("dnk,bdk->bdn", system["A12"], jnp.conj(state))
            + system["B"] * u[..., None]
        )
        return 2.0 * jnp.einsum("dm,bdm->bd", system["C"], x).real, x
