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

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex

from seqjax.mixers.lru import check_input, complex_dtype, decay_power_matrix
from seqjax.mixers.registry import register
from seqjax.ops.common import accum_dtype
from seqjax.ops import dispatch
from seqjax.ops.hippo import block_diagonal_legs
from seqjax.ops.linear_scan import linear_scan
from seqjax.ops.ssm_kernels import DISCRETIZATIONS, discretize
from seqjax.parallel.sequence import sequence_map
from seqjax.types import ComplexSeq, SegmentIds, Seq, SeqStep


def _constant(value):
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.broadcast_to(jnp.asarray(value, dtype), shape)

    return init


def _log_uniform(low, high):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, math.log(low), math.log(high))

    return init


def _vinv_b(Vinv, width):
    """``B̃ = V⁻¹ B`` for a real ``B (P, H)`` drawn as in the public S5 code.

    ``B`` is LeCun-normal with the fan-in counted on its first axis (``P``),
    i.e. std ``1/sqrt(P)``, as ``lecun_normal()(key, (P, H))`` does there.
    """

    def init(key, shape, dtype=jnp.float32):
        B = jax.nn.initializers.lecun_normal()(key, (Vinv.shape[1], width), jnp.float32)
        Bt = jnp.asarray(Vinv, jnp.complex64) @ B.astype(jnp.complex64)
        return jnp.stack([Bt.real, Bt.imag], axis=-1).astype(dtype).reshape(shape)

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
        Ct = jnp.concatenate(parts, axis=-1)
        return jnp.stack([Ct.real, Ct.imag], axis=-1).astype(dtype).reshape(shape)

    return init


@register("s5")
class S5(nn.Module):
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

    Mixing matrix: per stored mode, ``M[n, t, s] = Λ̄_n^(t-s)`` (``s <= t``)
    acting on ``B̄ u``; a bidirectional layer adds ``M`` modes of the
    anti-causal ``Λ̄_n^(s-t)`` (``s >= t``): see :meth:`mixing_matrix`.

    Attributes:
      d_model: width ``H``; None takes it from the input.
      d_state: ``P``, size of the real state the init describes (even;
        ``P/2`` complex modes are stored).
      blocks: number ``J`` of LegS blocks in the init (divides ``P``, with
        ``P/J`` even). The S5 code defaults to ``J = 8`` with ``P = 256``.
      dt_min: smallest initial step ``Δ``.
      dt_max: largest initial step ``Δ``.
      discretization: ``"zoh"`` (default) or ``"bilinear"``.
      bidirectional: add the reversed scan (non-causal). None (default)
        means ``not causal``; after construction it is a bool.
      causal: the contract's name for ``not bidirectional``. None (default)
        means ``not bidirectional``; after construction it is a bool (True by
        default). Setting both inconsistently raises ValueError.
      clip_eigs: clip ``Re Λ`` to ``<= -1e-4`` (S5's left-half-plane option).
      dtype: compute dtype of the projections; the scan runs in complex64
        (complex128 for float64).
      scan_impl: ``impl`` of :func:`seqjax.ops.linear_scan`.
      sequence_axis: mesh axis that splits the length (the sequence-parallel
        ``linear_scan`` under a context mesh, see
        :func:`seqjax.parallel.sequence_map`); None: never split.
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("log_step", "Lambda_re", "Lambda_im", "B")

    d_model: int | None = None
    d_state: int = 64
    blocks: int = 1
    dt_min: float = 0.001
    dt_max: float = 0.1
    discretization: str = "zoh"
    bidirectional: bool | None = None
    causal: bool | None = None
    clip_eigs: bool = False
    dtype: Any = jnp.float32
    scan_impl: str = "auto"
    sequence_axis: str | None = None

    # --- configuration -------------------------------------------------------

    def __post_init__(self):
        # Resolve the two names of one switch, so that after construction both
        # fields are plain bools that agree (outside checks read ``causal``).
        bidir, causal = self.bidirectional, self.causal
        if bidir is not None and causal is not None and bool(causal) == bool(bidir):
            raise ValueError(f"s5: causal={causal} contradicts bidirectional={bidir}")
        if bidir is None:
            bidir = causal is False
        object.__setattr__(self, "bidirectional", bool(bidir))
        object.__setattr__(self, "causal", not bidir)
        super().__post_init__()

    @property
    def is_bidirectional(self) -> bool:
        """Whether the layer runs the extra reversed scan."""
        return bool(self.bidirectional)

    @property
    def num_modes(self) -> int:
        """``M = d_state / 2`` stored complex modes per direction."""
        return self.d_state // 2

    def _check_config(self):
        P, J = self.d_state, self.blocks
        if not isinstance(P, int) or P < 2 or P % 2:
            raise ValueError(f"s5: d_state must be a positive even int (conjugate pairs), got {P!r}")
        if not isinstance(J, int) or J < 1 or P % J or (P // J) % 2:
            raise ValueError(
                f"s5: blocks={J!r} must divide d_state={P} into blocks of even size"
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"s5: need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.discretization not in DISCRETIZATIONS:
            raise ValueError(
                f"s5: discretization={self.discretization!r} is not one of "
                + ", ".join(map(repr, DISCRETIZATIONS))
            )
        dispatch.check("linear_scan", self.scan_impl)

    # --- parameters ----------------------------------------------------------

    @nn.compact
    def _params(self, d: int):
        """Creates/reads the parameters; returns the discrete system.

        Returns ``(Λ̄ (M,), log Λ̄ (M,), B̄ (M, d), C̃ (d, dirs·M), D (d,))``
        in the accumulation dtypes.
        """
        self._check_config()
        m = self.num_modes
        dirs = 2 if self.is_bidirectional else 1
        # Init-time constants (float64 NumPy); only their values enter params.
        Lambda0, V, Vinv = block_diagonal_legs(self.d_state, self.blocks, conj_sym=True)
        part = nn.with_logical_partitioning
        Lambda_re = self.param("Lambda_re", part(_constant(Lambda0.real), ("state",)), (m,))
        Lambda_im = self.param("Lambda_im", part(_constant(Lambda0.imag), ("state",)), (m,))
        B = self.param("B", part(_vinv_b(Vinv, d), ("state", "embed", None)), (m, d, 2))
        C = self.param("C", part(_c_v(V, d, dirs), ("embed", "state", None)), (d, dirs * m, 2))
        D = self.param("D", part(jax.nn.initializers.normal(1.0), ("embed",)), (d,))
        log_step = self.param(
            "log_step", part(_log_uniform(self.dt_min, self.dt_max), ("state",)), (m,)
        )

        rdt = accum_dtype(self.dtype)
        cdt = complex_dtype(self.dtype)
        re = Lambda_re.astype(rdt)
        if self.clip_eigs:
            re = jnp.minimum(re, -1e-4)
        Lambda = jax.lax.complex(re, Lambda_im.astype(rdt))
        B = B.astype(rdt)
        B_tilde = jax.lax.complex(B[..., 0], B[..., 1])
        step = jnp.exp(log_step.astype(rdt))
        Abar, Bbar = discretize(Lambda[:, None], B_tilde, step[:, None], self.discretization)
        Abar = Abar[:, 0].astype(cdt)
        if self.discretization == "zoh":
            log_abar = (Lambda * step).astype(cdt)
        else:
            log_abar = jnp.log(Abar)
        C = C.astype(rdt)
        C_tilde = jax.lax.complex(C[..., 0], C[..., 1])
        return Abar, log_abar, Bbar.astype(cdt), C_tilde, D.astype(rdt)

    def _width(self) -> int:
        if self.d_model is not None:
            return self.d_model
        return nn.meta.unbox(self.variables["params"]["D"]).shape[0]

    # --- shared pieces of every path ------------------------------------------

    def _project_in(self, u, Bbar):
        """``B̄ u`` as complex, from real matmuls in the compute dtype."""
        rdt = accum_dtype(self.dtype)
        dt = self.dtype
        u = u.astype(dt)
        re = jnp.einsum("...d,nd->...n", u, Bbar.real.astype(dt), preferred_element_type=rdt)
        im = jnp.einsum("...d,nd->...n", u, Bbar.imag.astype(dt), preferred_element_type=rdt)
        return jax.lax.complex(re, im)

    def _project_out(self, h, u, C_tilde, D):
        """``2 Re(C̃ h) + D ⊙ u`` in the compute dtype."""
        rdt = accum_dtype(self.dtype)
        dt = self.dtype
        def proj(a, b):
            return jnp.einsum("...n,dn->...d", a.astype(dt), b.astype(dt), preferred_element_type=rdt)

        y = proj(h.real, C_tilde.real) - proj(h.imag, C_tilde.imag)
        return (2.0 * y + D * u.astype(rdt)).astype(dt)

    # --- public API -------------------------------------------------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """Runs the S5 layer's SSM over a sequence.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids; both scans restart
            from zero at segment boundaries.
          deterministic: unused (no dropout).

        Returns:
          ``(batch, length, d_model)`` output in the compute dtype.
        """
        del deterministic
        check_input("s5", x, self.d_model, segment_ids)
        Abar, _, Bbar, C_tilde, D = self._params(x.shape[-1])
        v = self._project_in(x, Bbar)

        def core(axis, v, segments, a):
            h, _ = linear_scan(a, v, segment_ids=segments, impl=self.scan_impl, sequence_axis=axis)
            if self.is_bidirectional:
                h_b, _ = linear_scan(a, v, reverse=True, segment_ids=segments, impl=self.scan_impl,
                                     sequence_axis=axis)
                h = jnp.concatenate([h, h_b], axis=-1)
            return h

        h = sequence_map(core, self.sequence_axis, (v, segment_ids), (Abar[None, None],), what="s5")
        return self._project_out(h, x, C_tilde, D)

    def _require_causal(self, what):
        if self.is_bidirectional:
            raise ValueError(f"s5.{what}: a bidirectional S5 has no recurrent step (it is not causal)")

    def init_cache(self, batch_size: int, max_length: int | None = None) -> dict:
        """Zero state ``{"h": (batch_size, d_state // 2)}`` (complex), causal only.

        Args:
          batch_size: number of sequences.
          max_length: unused (the state does not grow).

        Returns:
          The cache pytree.
        """
        del max_length
        self._require_causal("init_cache")
        return {"h": jnp.zeros((batch_size, self.num_modes), complex_dtype(self.dtype))}

    def step(self, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        """One step: ``x = Λ̄ x + B̄ u_t``, ``y_t = 2 Re(C̃ x) + D u_t`` (causal only).

        Args:
          x_t: ``(batch, d_model)`` input at one position.
          cache: from :meth:`init_cache` or a previous step.

        Returns:
          ``(y_t, cache)``: ``(batch, d_model)`` output and the updated cache.
        """
        self._require_causal("step")
        if x_t.ndim != 2:
            raise ValueError(f"s5.step: x_t must have shape (batch, d_model), got {x_t.shape}")
        Abar, _, Bbar, C_tilde, D = self._params(self._width())
        h = Abar * cache["h"] + self._project_in(x_t, Bbar)
        return self._project_out(h, x_t, C_tilde, D), {"h": h}

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> ComplexSeq:
        """Per-mode mixing matrices, acting on ``v = B̄ u``.

        Causal: ``(batch, M, l, l)`` with ``M[b, n, t, s] = Λ̄_n^(t-s)`` for
        ``s <= t`` in the same segment. Bidirectional: ``(batch, 2M, l, l)``,
        the causal matrices followed by the anti-causal ones
        (``Λ̄_n^(s-t)`` for ``s >= t``), matching the concatenated state that
        ``C̃ = [C̃_fwd, C̃_bwd]`` reads.

        Args:
          x: ``(batch, length, d_model)`` input (only its shape is used).
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          The complex matrices.
        """
        check_input("s5", x, self.d_model, segment_ids)
        _, log_abar, *_ = self._params(x.shape[-1])
        b, l = x.shape[:2]
        M = decay_power_matrix(log_abar, b, l, segment_ids)
        if self.is_bidirectional:
            M_b = decay_power_matrix(log_abar, b, l, segment_ids, reverse=True)
            M = jnp.concatenate([M, M_b], axis=1)
        return M

    def apply_mixing_matrix(self, x: Seq, M: Complex[Array, "b n l l"]) -> Seq:
        """The S5 layer with dense per-mode matrices ``M`` instead of the scans.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: from :meth:`mixing_matrix`.

        Returns:
          ``(batch, length, d_model)`` output.
        """
        check_input("s5", x, self.d_model)
        dirs = 2 if self.is_bidirectional else 1
        expected = (x.shape[0], dirs * self.num_modes, x.shape[1], x.shape[1])
        if M.shape != expected:
            raise ValueError(f"s5: M must have shape {expected}, got {M.shape}")
        _, _, Bbar, C_tilde, D = self._params(x.shape[-1])
        v = self._project_in(x, Bbar)
        v = jnp.concatenate([v] * dirs, axis=-1)
        h = jnp.einsum("bnts,bsn->btn", M.astype(v.dtype), v)
        return self._project_out(h, x, C_tilde, D)

    def discrete_ssm(self) -> tuple[Array, Array, Array]:
        """The discretised system ``(Λ̄ (M,), B̄ (M, H), C̃ (H, dirs·M))``.

        Returns:
          Complex arrays in the accumulation dtype (for inspection and tests).
        """
        Abar, _, Bbar, C_tilde, _ = self._params(self._width())
        return Abar, Bbar, C_tilde

    def state_size(self, length: int | None = None) -> int:
        """Bytes of recurrent state per sequence: ``d_state / 2`` complex numbers.

        A bidirectional layer has no streaming state; it reports the carries of
        its two scans (twice the causal size).

        Args:
          length: unused (the state does not grow with length).

        Returns:
          ``dirs · d_state/2 · itemsize`` (itemsize 8 for complex64).
        """
        del length
        dirs = 2 if self.is_bidirectional else 1
        return dirs * self.num_modes * jnp.dtype(complex_dtype(self.dtype)).itemsize

