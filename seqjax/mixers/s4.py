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

from seqjax.mixers.common import dense
from seqjax.mixers.lru import check_input, complex_dtype
from seqjax.mixers.registry import register
from seqjax.ops.common import accum_dtype, segment_starts
from seqjax.ops import dispatch
from seqjax.ops.hippo import S4D_KINDS, nplr_legs, s4d_init
from seqjax.ops.fft_conv import fft_conv
from seqjax.ops.linear_scan import linear_scan
from seqjax.ops.ssm_kernels import DISCRETIZATIONS, discretize, discretize_dense
from seqjax.ops.ssm_kernels import dplr_c_tilde, dplr_kernel, vandermonde_kernel
from seqjax.types import SegmentIds, Seq, SeqStep

OUTPUTS = ("glu", "linear")
B_INITS = ("ones", "legs")

# (dirs, h, l) kernels: dirs = 2 for a bidirectional layer (S4's convention).
Kernel = Float[Array, "dirs d l"]
ChannelMatrix = Float[Array, "b d l l"]


# --- initialisers ------------------------------------------------------------


def constant_init(value):
    """An initializer returning ``value`` broadcast to the requested shape."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.broadcast_to(jnp.asarray(value, dtype), shape)

    return init


def log_uniform_init(low: float, high: float):
    """``log Δ`` uniform on ``[log low, log high]`` (Δ log-uniform, as S4)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, math.log(low), math.log(high))

    return init


def complex_normal_init(key, shape, dtype=jnp.float32):
    """Real/imaginary parts ``(..., 2)`` each ``N(0, 1/2)`` (``torch.randn(cfloat)``)."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(0.5)


def as_complex(p, dtype) -> Array:
    """A ``(..., 2)`` real parameter as a complex array of real dtype ``dtype``."""
    p = p.astype(dtype)
    return jax.lax.complex(p[..., 0], p[..., 1])


def split_complex(z) -> Array:
    """A complex array as real ``(..., 2)`` parts (the storage of complex parameters)."""
    xp = np if isinstance(z, np.ndarray) else jnp  # init-time constants stay NumPy float64
    return xp.stack([xp.real(z), xp.imag(z)], axis=-1)


def _part(init, *axes):
    return nn.with_logical_partitioning(init, axes)


def d_modes(module) -> int:
    """``m = N/2`` stored complex modes (conjugate symmetry)."""
    return module.d_state // 2


def _tile(dirs, *arrays):
    """Repeats per-channel arrays along axis 0 so one kernel call serves both directions."""
    return [jnp.concatenate([a] * dirs, axis=0) for a in arrays]


def toeplitz_matrix(k: Kernel, D, batch: int, segment_ids: SegmentIds | None = None) -> ChannelMatrix:
    """The dense per-channel matrix of :func:`seqjax.ops.fft_conv`.

    ``M[b, h, t, s] = k[0, h, t-s]`` for ``s <= t``, ``+ D[h]`` on the
    diagonal, and (``k`` of 2 directions) ``k[1, h, s-t-1]`` for ``s > t``;
    zero between different segments (runs of equal ids).

    Args:
      k: ``(dirs, h, l)`` kernels.
      D: ``(h,)`` skip.
      batch: batch size of the result.
      segment_ids: optional ``(b, l)`` ids.

    Returns:
      ``(batch, h, l, l)`` real matrix in ``k``'s dtype.
    """
    length = k.shape[-1]
    pos = jnp.arange(length)
    lag = pos[:, None] - pos[None, :]
    zero = jnp.zeros((), k.dtype)
    M = jnp.where(lag >= 0, k[0][:, jnp.clip(lag, 0, length - 1)], zero)
    if k.shape[0] == 2:
        M = M + jnp.where(lag < 0, k[1][:, jnp.clip(-lag - 1, 0, length - 1)], zero)
    M = M + D.astype(k.dtype)[:, None, None] * jnp.eye(length, dtype=k.dtype)
    M = jnp.broadcast_to(M, (batch,) + M.shape)
    if segment_ids is not None:
        run = jnp.cumsum(segment_starts(jnp.asarray(segment_ids)), axis=1)
        same = run[:, :, None] == run[:, None, :]
        M = jnp.where(same[:, None], M, zero)
    return M


# --- the shared layer body -----------------------------------------------------


class ConvSSM(nn.Module):
    """Shared body of the convolution-mode SSM layers (S4, S4D, LSSL).

    Not registered; subclasses provide the SSM (parameters, kernel, recurrence).
    Per channel ``h`` the layer computes ``y = GELU(K_h * u_h + D_h u_h)`` and
    then the position-wise output map (``"glu"``: ``a ⊙ σ(g)`` with
    ``[a, g] = W y + b``, ``W (d, 2d)``; ``"linear"``: ``W y + b``).

    Attributes:
      d_model: width ``d`` (channels); None takes it from the input.
      d_state: state size ``N`` of each channel's SSM.
      dt_min: smallest initial step ``Δ`` (``log Δ`` uniform).
      dt_max: largest initial step ``Δ``.
      bidirectional: add an anti-causal kernel (S4's convention, see
        :func:`seqjax.ops.fft_conv`). None means ``not causal``.
      causal: the contract's name for ``not bidirectional``. None means
        ``not bidirectional`` (True by default); both set inconsistently raises.
      output: ``"glu"`` (default, S4D's ``Conv1d(d, 2d) + GLU``) or ``"linear"``.
      dtype: compute dtype; kernels and states are float32/complex64 at least.
      conv_impl: ``impl`` of :func:`seqjax.ops.fft_conv`.
    """

    d_model: int | None = None
    d_state: int = 64
    dt_min: float = 0.001
    dt_max: float = 0.1
    bidirectional: bool | None = None
    causal: bool | None = None
    output: str = "glu"
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    # --- configuration ---------------------------------------------------------

    def __post_init__(self):
        # Both names of one switch become plain bools that agree.
        bidir, causal = self.bidirectional, self.causal
        if bidir is not None and causal is not None and bool(causal) == bool(bidir):
            raise ValueError(f"{self._name()}: causal={causal} contradicts bidirectional={bidir}")
        if bidir is None:
            bidir = causal is False
        object.__setattr__(self, "bidirectional", bool(bidir))
        object.__setattr__(self, "causal", not bidir)
        super().__post_init__()

    def _name(self) -> str:
        return getattr(type(self), "mixer_name", type(self).__name__)

    @property
    def directions(self) -> int:
        """Number of kernels: 2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    def _check_config(self):
        name = self._name()
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"{name}: need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.output not in OUTPUTS:
            raise ValueError(f"{name}: output={self.output!r} is not one of {', '.join(map(repr, OUTPUTS))}")
        dispatch.check("fft_conv", self.conv_impl)

    def _check_even_state(self):
        N = self.d_state
        if not isinstance(N, int) or N < 2 or N % 2:
            raise ValueError(f"{self._name()}: d_state must be a positive even int (conjugate pairs), got {N!r}")

    @property
    def _rdt(self):
        return accum_dtype(self.dtype)

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
        k = k if self.bidirectional else k[:1]
        M = toeplitz_matrix(k, jnp.zeros(k.shape[1], k.dtype), u.shape[0], segment_ids)
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
        m, rdt = d_modes(self), self._rdt
        log_step = self.param("log_step", _part(log_uniform_init(self.dt_min, self.dt_max), "embed"), (d,))
        log_re = self.param("Lambda_log_re", _part(constant_init(np.log(-Lambda0.real)), "embed", "state"), (d, m))
        im = self.param("Lambda_im", _part(constant_init(Lambda0.imag), "embed", "state"), (d, m))
        out = {
            "Lambda": jax.lax.complex(-jnp.exp(log_re.astype(rdt)), im.astype(rdt)),
            "step": jnp.exp(log_step.astype(rdt)),
        }
        for name, v0 in vectors.items():
            v = self.param(name, _part(constant_init(split_complex(v0)), "embed", "state", None), (d, m, 2))
            out[name] = as_complex(v, rdt)
        return out

    def _initial_state(self, batch_size: int, d: int):
        return jnp.zeros((batch_size, d, d_modes(self)), complex_dtype(self.dtype))

    def _state_bytes_per_channel(self) -> int:
        return d_modes(self) * jnp.dtype(complex_dtype(self.dtype)).itemsize

    # --- parameters and the post-processing (one compact method) ------------------

    @nn.compact
    def _layer(self, d: int, fn, post: bool):
        """Creates/reads every parameter, runs ``fn(ssm)`` and (``post``) the output map.

        ``fn`` returns ``(y, aux)`` when ``post`` (``y``: the SSM output incl.
        ``D u``, any leading shape, last axis ``d``) and anything otherwise.
        """
        self._check_config()
        ssm = self._ssm_params(d)
        D = self.param("D", _part(nn.initializers.normal(1.0), "embed"), (d,))
        ssm["D"] = D.astype(self._rdt)
        out = fn(ssm)
        if not post:
            return out
        y, aux = out
        y = jax.nn.gelu(y.astype(self.dtype), approximate=False)  # PyTorch's nn.GELU (erf)
        if self.output == "glu":
            z = dense(2 * d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="out")(y)
            y = z[..., :d] * jax.nn.sigmoid(z[..., d:])
        else:
            y = dense(d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="out")(y)
        return y.astype(self.dtype), aux

    def _width(self) -> int:
        if self.d_model is not None:
            return self.d_model
        params = self.variables.get("params", {})
        if "D" not in params:
            raise ValueError(f"{self._name()}: d_model is None and there are no parameters to infer the width from")
        return nn.meta.unbox(params["D"]).shape[0]

    def _require_causal(self, what):
        if self.bidirectional:
            raise ValueError(f"{self._name()}.{what}: a bidirectional layer has no recurrent step (it is not causal)")

    # --- public API ---------------------------------------------------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """Runs the layer: long convolution (or segmented scan), GELU, output map.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids; packed sequences equal
            separate runs (where the subclass supports it, see its docstring).
          deterministic: unused (no dropout).

        Returns:
          ``(batch, length, d_model)`` in the compute dtype.
        """
        del deterministic
        check_input(self._name(), x, self.d_model, segment_ids)
        u = x.astype(self.dtype)

        def mix(ssm):
            if segment_ids is not None:
                y = self._segment_mix(ssm, u, jnp.asarray(segment_ids))
                y = (y + ssm["D"] * u.astype(y.dtype)).astype(self.dtype)
            else:
                k = self._kernel(ssm, x.shape[1])
                k = k if self.bidirectional else k[0]
                y = fft_conv(u, k, D=ssm["D"], bidirectional=self.bidirectional, impl=self.conv_impl)
            return y, None

        return self._layer(x.shape[-1], mix, post=True)[0]

    def kernel(self, length: int) -> Kernel:
        """The kernels for ``length`` (static): ``(dirs, d_model, length)``, ``K[1]`` anti-causal.

        Args:
          length: ``L``.

        Returns:
          ``K``, real (float32 at least).
        """
        return self._layer(self._width(), lambda ssm: self._kernel(ssm, length), post=False)

    def init_cache(self, batch_size: int, max_length: int | None = None) -> dict:
        """Zero state plus the discrete system, materialised once (causal only).

        Args:
          batch_size: number of sequences.
          max_length: used by S4 without ``l_max`` only (see its docstring).

        Returns:
          ``{"x": state (batch, d_model, ...), "system": {constants, no batch axis}}``.
        """
        self._require_causal("init_cache")
        d = self._width()

        def fn(ssm):
            return {"x": self._initial_state(batch_size, d), "system": self._recurrent_system(ssm, max_length)}

        return self._layer(d, fn, post=False)

    def step(self, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        """One recurrent step ``x = Ā x + B̄ u_t``, ``y_t = C x + D u_t``, then the output map.

        Args:
          x_t: ``(batch, d_model)`` input at one position.
          cache: from :meth:`init_cache` or a previous step.

        Returns:
          ``(y_t, cache)``.
        """
        self._require_causal("step")
        if x_t.ndim != 2:
            raise ValueError(f"{self._name()}.step: x_t must have shape (batch, d_model), got {x_t.shape}")
        u = x_t.astype(self.dtype)

        def fn(ssm):
            y, state = self._recurrent_step(ssm, cache["system"], cache["x"], u.astype(self._rdt))
            y = y + ssm["D"] * u.astype(self._rdt)
            return y.astype(self.dtype), {"x": state, "system": cache["system"]}

        return self._layer(x_t.shape[-1], fn, post=True)

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> ChannelMatrix:
        """Per-channel Toeplitz matrices of the convolution: see :func:`toeplitz_matrix`.

        Args:
          x: ``(batch, length, d_model)`` (only its shape is used).
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          ``(batch, d_model, length, length)`` real matrices (float32 at least).
        """
        check_input(self._name(), x, self.d_model, segment_ids)

        def fn(ssm):
            return toeplitz_matrix(self._kernel(ssm, x.shape[1]), ssm["D"], x.shape[0], segment_ids)

        return self._layer(x.shape[-1], fn, post=False)

    def apply_mixing_matrix(self, x: Seq, M: ChannelMatrix) -> Seq:
        """The layer with the dense ``M`` in place of the convolution.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: from :meth:`mixing_matrix`.

        Returns:
          ``(batch, length, d_model)``.
        """
        check_input(self._name(), x, self.d_model)
        b, l, d = x.shape
        if M.shape != (b, d, l, l):
            raise ValueError(f"{self._name()}: M must have shape {(b, d, l, l)}, got {M.shape}")

        def fn(ssm):
            u = x.astype(self.dtype).astype(self._rdt)
            y = jnp.einsum("bhts,bsh->bth", M.astype(self._rdt), u, precision=jax.lax.Precision.HIGHEST)
            return y.astype(self.dtype), None

        return self._layer(d, fn, post=True)[0]

    def state_size(self, length: int | None = None) -> int:
        """Bytes of recurrent state per sequence; bidirectional: twice that (as S5).

        Args:
          length: unused.

        Returns:
          ``dirs · d_model · (bytes of one channel's state)``.
        """
        del length
        return self.directions * self._width() * self._state_bytes_per_channel()


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

    Attributes:
      d_model: width ``d``; None takes it from the input.
      d_state: ``N`` (even; ``N/2`` complex modes per channel).
      dt_min: smallest initial step ``Δ``.
      dt_max: largest initial step ``Δ``.
      bidirectional: add the anti-causal kernel (second ``C``, shared ``Λ, B, Δ``).
      causal: ``not bidirectional``.
      output: ``"glu"`` (default) or ``"linear"``.
      dtype: compute dtype.
      conv_impl: ``impl`` of :func:`seqjax.ops.fft_conv`.
      a_init: init of ``Λ``: ``"legs"`` (default), ``"lin"`` or ``"inv"`` (the
        S4 code's ``init``; ``init`` itself would shadow ``Module.init``).
      b_init: ``"ones"`` (default) or ``"legs"``.
      discretization: ``"zoh"`` (default) or ``"bilinear"``.
      kernel_impl: ``impl`` of :func:`seqjax.ops.vandermonde_kernel`.
      scan_impl: ``impl`` of :func:`seqjax.ops.linear_scan` (segments only).
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("log_step", "Lambda_log_re", "Lambda_im", "B")

    a_init: str = "legs"
    b_init: str = "ones"
    discretization: str = "zoh"
    kernel_impl: str = "auto"
    scan_impl: str = "auto"

    def _check_config(self):
        super()._check_config()
        self._check_even_state()
        if self.a_init not in S4D_KINDS:
            raise ValueError(f"s4d: a_init={self.a_init!r} is not one of {', '.join(map(repr, S4D_KINDS))}")
        if self.b_init not in B_INITS:
            raise ValueError(f"s4d: b_init={self.b_init!r} is not one of {', '.join(map(repr, B_INITS))}")
        if self.discretization not in DISCRETIZATIONS:
            allowed = ", ".join(map(repr, DISCRETIZATIONS))
            raise ValueError(f"s4d: discretization={self.discretization!r} is not one of {allowed}")
        dispatch.check("vandermonde_kernel", self.kernel_impl)
        dispatch.check("linear_scan", self.scan_impl)

    def _ssm_params(self, d):
        B0 = nplr_legs(self.d_state, conj_sym=True)[2] if self.b_init == "legs" else np.ones(d_modes(self))
        ssm = self._modal_params(d, s4d_init(self.d_state, self.a_init), {"B": B0})
        shape = (self.directions, d, d_modes(self), 2)
        C = self.param("C", _part(complex_normal_init, None, "embed", "state", None), shape)
        return {**ssm, "C": as_complex(C, self._rdt)}

    def _kernel(self, ssm, length):
        Lambda, B, step = _tile(self.directions, ssm["Lambda"], ssm["B"], ssm["step"])
        C = ssm["C"].reshape((-1,) + ssm["C"].shape[2:])
        K = vandermonde_kernel(Lambda, B, C, step, length, self.discretization, impl=self.kernel_impl)
        return K.reshape(self.directions, -1, length)

    def _discrete(self, ssm):
        return discretize(ssm["Lambda"], ssm["B"], ssm["step"][:, None], self.discretization)

    def _segment_mix(self, ssm, u, segment_ids):
        Abar, Bbar = self._discrete(ssm)  # (d, m)
        v = u.astype(self._rdt)[..., None] * Bbar  # (b, l, d, m)
        a = Abar[None, None]
        h, _ = linear_scan(a, v, segment_ids=segment_ids, impl=self.scan_impl)
        y = 2.0 * jnp.einsum("dm,bldm->bld", ssm["C"][0], h).real
        if self.bidirectional:
            # k_bwd[j] = 2 Re(C_b B̄ Ā^j) acts on u[t+1+j]: the reversed scan's
            # state one position ahead, cut where the next position starts
            # another segment.
            hr, _ = linear_scan(a, v, reverse=True, segment_ids=segment_ids, impl=self.scan_impl)
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

    Attributes:
      d_model: width ``d``; None takes it from the input.
      d_state: ``N`` (even; ``N/2`` stored complex modes per channel).
      dt_min: smallest initial step ``Δ``.
      dt_max: largest initial step ``Δ``.
      bidirectional: add the anti-causal kernel (second ``C̃``, shared ``Λ, P, B, Δ``).
      causal: ``not bidirectional``.
      output: ``"glu"`` (default) or ``"linear"``.
      dtype: compute dtype.
      conv_impl: ``impl`` of :func:`seqjax.ops.fft_conv`.
      l_max: the length ``C̃`` stands for; None: the input length.
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("log_step", "Lambda_log_re", "Lambda_im", "P", "B")

    l_max: int | None = None

    def _check_config(self):
        super()._check_config()
        self._check_even_state()
        if self.l_max is not None and (not isinstance(self.l_max, int) or self.l_max < 1):
            raise ValueError(f"s4: l_max must be None or a positive int, got {self.l_max!r}")

    def _ssm_params(self, d):
        Lambda0, P0, B0, _ = nplr_legs(self.d_state, conj_sym=True)
        ssm = self._modal_params(d, Lambda0, {"P": P0, "B": B0})
        rdt = self._rdt

        def c_tilde_init(key, shape, dtype=jnp.float32):
            C = complex_normal_init(key, shape, dtype)
            if self.l_max is None:
                return C
            # The public code's init: a random plain C turned into C̃ for l_max.
            Ct = [dplr_c_tilde(ssm["Lambda"], ssm["P"], as_complex(c, rdt), ssm["step"], self.l_max) for c in C]
            return jnp.stack([split_complex(c) for c in Ct]).astype(dtype)

        shape = (self.directions, d, d_modes(self), 2)
        C_tilde = self.param("C_tilde", _part(c_tilde_init, None, "embed", "state", None), shape)
        ssm["C_tilde"] = as_complex(C_tilde, rdt)
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

