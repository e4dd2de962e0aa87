"""LRU: the Linear Recurrent Unit (Orvieto et al. 2023).

"Resurrecting Recurrent Neural Networks for Long Sequences" (ICML 2023). A
complex diagonal linear recurrence with an exponential parameterisation of
its eigenvalues, a ring initialisation and an input normalisation::

    λ   = exp(-exp(ν) + i exp(θ))                    (|λ| < 1 for every ν)
    x_t = λ ⊙ x_{t-1} + γ ⊙ (B u_t)                  x ∈ C^N, γ = exp(log γ)
    y_t = Re(C x_t) + D ⊙ u_t

The hot loop is :func:`seqjax.ops.linear_scan` (complex, segment resets);
this module only computes ``λ``, ``γ ⊙ B u`` and the output projection.

The module also holds :func:`decay_power_matrix`, the dense ``λ^(t-s)`` matrix
of a time-invariant diagonal recurrence, which the S5 mixer reuses for its
``mixing_matrix``.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex

from seqjax.mixers.registry import register
from seqjax.ops.common import accum_dtype
from seqjax.ops import dispatch
from seqjax.ops.linear_scan import linear_scan
from seqjax.types import ComplexSeq, SegmentIds, Seq, SeqStep


def complex_dtype(dtype) -> jnp.dtype:
    """The complex accumulation dtype for a compute dtype (complex64 at least)."""
    return jnp.result_type(accum_dtype(dtype), jnp.complex64)


def check_input(name: str, x, d_model: int | None, segment_ids=None) -> None:
    """Validates a mixer input ``(batch, length, d_model)`` and its segment ids.

    Args:
      name: the mixer's name, for the message.
      x: the input.
      d_model: the configured width, or None (taken from ``x``).
      segment_ids: optional ``(batch, length)`` ids.
    """
    if x.ndim != 3:
        raise ValueError(f"{name}: x must have shape (batch, length, d_model), got {x.shape}")
    if d_model is not None and x.shape[-1] != d_model:
        raise ValueError(f"{name}: x has width {x.shape[-1]} but d_model={d_model}")
    if segment_ids is not None and tuple(jnp.shape(segment_ids)) != x.shape[:2]:
        raise ValueError(
            f"{name}: segment_ids {jnp.shape(segment_ids)} must be (batch, length) = {x.shape[:2]}"
        )


def decay_power_matrix(
    log_a: Complex[Array, "n"],
    batch: int,
    length: int,
    segment_ids: SegmentIds | None = None,
    *,
    reverse: bool = False,
) -> Complex[Array, "b n l l"]:
    """Dense mixing matrix of ``h_t = a ⊙ h_{t-1} + v_t`` for a constant ``a``.

    ``M[b, n, t, s] = a_n^(t-s)`` for ``s <= t`` in the same segment, else 0, so
    that ``h[b, t, n] = Σ_s M[b, n, t, s] v[b, s, n]``. With ``reverse`` the scan
    runs from the end: ``M[b, n, t, s] = a_n^(s-t)`` for ``s >= t``. Powers are
    ``exp(k log a)`` (exact for integer ``k`` on any branch of the logarithm).

    Args:
      log_a: ``(n,)`` logarithm of the decay (complex).
      batch: batch size ``b`` of the result.
      length: sequence length ``l``.
      segment_ids: optional ``(b, l)`` ids; a change of id starts a new segment.
      reverse: the matrix of the reversed (anti-causal) scan.

    Returns:
      ``(b, n, l, l)`` complex matrix in ``log_a``'s dtype.
    """
    pos = jnp.arange(length)
    lag = pos[:, None] - pos[None, :]
    if reverse:
        lag = -lag
    mask = jnp.broadcast_to(lag >= 0, (batch, length, length))
    if segment_ids is not None:
        # Run index: counts id changes, so a repeated id after a different one
        # is still a new segment (as in linear_scan).
        seg = jnp.asarray(segment_ids)
        change = jnp.concatenate(
            [jnp.zeros_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1
        )
        run = jnp.cumsum(change, axis=1)
        mask = mask & (run[:, :, None] == run[:, None, :])
    k = jnp.maximum(lag, 0).astype(jnp.real(log_a).dtype)
    powers = jnp.exp(k[None] * log_a[:, None, None])  # (n, l, l)
    return jnp.where(mask[:, None], powers[None], jnp.zeros((), powers.dtype))


def _ring_nu_log(r_min, r_max):
    def init(key, shape, dtype=jnp.float32):
        # |λ|² uniform on [r_min², r_max²]: λ uniform on the ring's area.
        u = jax.random.uniform(key, shape, dtype)
        return jnp.log(-0.5 * jnp.log(u * (r_max**2 - r_min**2) + r_min**2))

    return init


def _ring_theta_log(max_phase):
    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, dtype)
        return jnp.log(max_phase * u)

    return init


def _scaled_normal(scale):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) * scale

    return init


@register("lru")
class LRU(nn.Module):
    """Linear Recurrent Unit (Orvieto et al. 2023), a causal complex diagonal RNN.

    Equations (``N = d_state`` complex modes, ``d = d_model``)::

        λ_n = exp(-exp(ν_n) + i exp(θ_n))
        x_t = λ ⊙ x_{t-1} + γ ⊙ (B u_t)          B ∈ C^{N×d}, x_0 = 0
        y_t = Re(C x_t) + D ⊙ u_t                C ∈ C^{d×N}, D ∈ R^d

    Initialisation (paper, Lemma 3.2 and Appendix A): with ``u1, u2 ~ U[0, 1]``,
    ``ν = log(-½ log(u1 (r_max² - r_min²) + r_min²))`` so that ``|λ|`` lies on
    the ring ``[r_min, r_max]`` with ``|λ|²`` uniform (λ uniform in the ring's
    area), ``θ = log(max_phase · u2)`` (phase uniform on ``[0, max_phase]``),
    ``log γ = log sqrt(1 - |λ|²)`` (learned afterwards), real and imaginary
    parts of ``B`` ~ N(0, 1/(2d)), of ``C`` ~ N(0, 1/N), ``D`` ~ N(0, 1).

    Mixing matrix: per mode ``n``, ``M[n, t, s] = λ_n^(t-s)`` (``s <= t``, same
    segment) acting on the projected input ``γ ⊙ B u`` (see
    :meth:`mixing_matrix`); lower triangular, semiseparable of rank 1.

    Attributes:
      d_model: input/output width ``d``; None takes it from the input.
      d_state: number of complex modes ``N``.
      r_min: smallest initial ``|λ|``.
      r_max: largest initial ``|λ|``.
      max_phase: initial phases are uniform on ``[0, max_phase]`` (2π by
        default; the paper uses π/10 on some LRA tasks).
      dtype: compute dtype of the projections (float32, bfloat16, float64); the
        recurrence runs in complex64 (complex128 for float64).
      scan_impl: ``impl`` of :func:`seqjax.ops.linear_scan`.
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im")

    d_model: int | None = None
    d_state: int = 64
    r_min: float = 0.9
    r_max: float = 0.999
    max_phase: float = 2 * math.pi
    dtype: Any = jnp.float32
    scan_impl: str = "auto"

    # --- parameters --------------------------------------------------------

    def _check_config(self):
        if not isinstance(self.d_state, int) or self.d_state < 1:
            raise ValueError(f"lru: d_state must be a positive int, got {self.d_state!r}")
        if not 0.0 <= self.r_min <= self.r_max <= 1.0:
            raise ValueError(
                f"lru: need 0 <= r_min <= r_max <= 1, got r_min={self.r_min}, r_max={self.r_max}"
            )
        if not self.max_phase > 0:
            raise ValueError(f"lru: max_phase must be positive, got {self.max_phase}")
        dispatch.check("linear_scan", self.scan_impl)

    @nn.compact
    def _params(self, d: int):
        """Creates/reads the parameters; returns ``(λ, γ, B, C, D)`` in accumulation dtypes."""
        self._check_config()
        n = self.d_state
        part = nn.with_logical_partitioning
        nu_log = self.param("nu_log", part(_ring_nu_log(self.r_min, self.r_max), ("state",)), (n,))
        theta_log = self.param("theta_log", part(_ring_theta_log(self.max_phase), ("state",)), (n,))

        def gamma_init(key, shape, dtype=jnp.float32):
            # γ = sqrt(1 - |λ|²) with |λ|² = exp(-2 exp(ν)); expm1 keeps
            # precision when |λ| is close to 1.
            del key
            return jnp.broadcast_to(0.5 * jnp.log(-jnp.expm1(-2.0 * jnp.exp(nu_log))), shape).astype(dtype)

        gamma_log = self.param("gamma_log", part(gamma_init, ("state",)), (n,))
        b_init = part(_scaled_normal(1.0 / math.sqrt(2 * d)), ("state", "embed"))
        c_init = part(_scaled_normal(1.0 / math.sqrt(n)), ("embed", "state"))
        B_re = self.param("B_re", b_init, (n, d))
        B_im = self.param("B_im", b_init, (n, d))
        C_re = self.param("C_re", c_init, (d, n))
        C_im = self.param("C_im", c_init, (d, n))
        D = self.param("D", part(_scaled_normal(1.0), ("embed",)), (d,))

        rdt = accum_dtype(self.dtype)
        cdt = complex_dtype(self.dtype)
        log_lam = (-jnp.exp(nu_log.astype(rdt)) + 1j * jnp.exp(theta_log.astype(rdt))).astype(cdt)
        gamma = jnp.exp(gamma_log.astype(rdt))
        B = (B_re, B_im)
        C = (C_re, C_im)
        return log_lam, gamma, B, C, D.astype(rdt)

    def _width(self) -> int:
        if self.d_model is not None:
            return self.d_model
        return nn.meta.unbox(self.variables["params"]["D"]).shape[0]

    # --- shared pieces of every path ----------------------------------------

    def _project_in(self, u, gamma, B):
        """``γ ⊙ (B u)`` as complex, from real matmuls in the compute dtype."""
        rdt = accum_dtype(self.dtype)
        u = u.astype(self.dtype)
        re = jnp.einsum("...d,nd->...n", u, B[0].astype(self.dtype), preferred_element_type=rdt)
        im = jnp.einsum("...d,nd->...n", u, B[1].astype(self.dtype), preferred_element_type=rdt)
        return jax.lax.complex(re * gamma, im * gamma)

    def _project_out(self, h, u, C, D):
        """``Re(C h) + D ⊙ u`` in the compute dtype."""
        rdt = accum_dtype(self.dtype)
        dt = self.dtype
        y = jnp.einsum("...n,dn->...d", h.real.astype(dt), C[0].astype(dt), preferred_element_type=rdt)
        y = y - jnp.einsum("...n,dn->...d", h.imag.astype(dt), C[1].astype(dt), preferred_element_type=rdt)
        return (y + D * u.astype(rdt)).astype(self.dtype)

    # --- public API ----------------------------------------------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """Runs the LRU over a sequence.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids; the state restarts at
            zero where the id changes (packed sequences).
          deterministic: unused (no dropout).

        Returns:
          ``(batch, length, d_model)`` output in the compute dtype.
        """
        del deterministic
        check_input("lru", x, self.d_model, segment_ids)
        log_lam, gamma, B, C, D = self._params(x.shape[-1])
        v = self._project_in(x, gamma, B)
        lam = jnp.exp(log_lam)[None, None]
        h, _ = linear_scan(lam, v, segment_ids=segment_ids, impl=self.scan_impl)
        return self._project_out(h, x, C, D)

    def init_cache(self, batch_size: int, max_length: int | None = None) -> dict:
        """Zero recurrent state ``{"h": (batch_size, d_state)}`` (complex).

        Args:
          batch_size: number of sequences.
          max_length: unused (the state does not grow).

        Returns:
          The cache pytree.
        """
        del max_length
        return {"h": jnp.zeros((batch_size, self.d_state), complex_dtype(self.dtype))}

    def step(self, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        """One recurrent step: ``x = λ x + γ ⊙ B u_t``, ``y_t = Re(C x) + D u_t``.

        Args:
          x_t: ``(batch, d_model)`` input at one position.
          cache: from :meth:`init_cache` or a previous step.

        Returns:
          ``(y_t, cache)``: ``(batch, d_model)`` output and the updated cache.
        """
        if x_t.ndim != 2:
            raise ValueError(f"lru.step: x_t must have shape (batch, d_model), got {x_t.shape}")
        log_lam, gamma, B, C, D = self._params(self._width())
        h = jnp.exp(log_lam) * cache["h"] + self._project_in(x_t, gamma, B)
        return self._project_out(h, x_t, C, D), {"h": h}

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> ComplexSeq:
        """Per-mode mixing matrices ``M[b, n, t, s] = λ_n^(t-s)`` (``s <= t``).

        They act on the projected input ``v = γ ⊙ B u``:
        ``x[b, t, n] = Σ_s M[b, n, t, s] v[b, s, n]`` (see
        :meth:`apply_mixing_matrix`). Zero across segment boundaries.

        Args:
          x: ``(batch, length, d_model)`` input (only its shape is used).
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          ``(batch, d_state, length, length)`` complex.
        """
        check_input("lru", x, self.d_model, segment_ids)
        log_lam, *_ = self._params(x.shape[-1])
        return decay_power_matrix(log_lam, x.shape[0], x.shape[1], segment_ids)

    def apply_mixing_matrix(self, x: Seq, M: Complex[Array, "b n l l"]) -> Seq:
        """The LRU with the dense per-mode matrices ``M`` instead of the scan.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: ``(batch, d_state, length, length)`` from :meth:`mixing_matrix`.

        Returns:
          ``(batch, length, d_model)`` output.
        """
        check_input("lru", x, self.d_model)
        expected = (x.shape[0], self.d_state, x.shape[1], x.shape[1])
        if M.shape != expected:
            raise ValueError(f"lru: M must have shape {expected}, got {M.shape}")
        _, gamma, B, C, D = self._params(x.shape[-1])
        v = self._project_in(x, gamma, B)
        h = jnp.einsum("bnts,bsn->btn", M.astype(v.dtype), v)
        return self._project_out(h, x, C, D)

    def state_size(self, length: int | None = None) -> int:
        """Bytes of recurrent state per sequence: ``d_state`` complex numbers.

        Args:
          length: unused (the state does not grow with length).

        Returns:
          ``d_state * itemsize`` of the complex state dtype (8 for complex64).
        """
        del length
        return self.d_state * jnp.dtype(complex_dtype(self.dtype)).itemsize
