"""LRU: the Linear Recurrent Unit (Orvieto et al. 2023).

"Resurrecting Recurrent Neural Networks for Long Sequences" (ICML 2023). A
complex diagonal linear recurrence with an exponential parameterisation of
its eigenvalues, a ring initialisation and an input normalisation::

    λ   = exp(-exp(ν) + i exp(θ))                    (|λ| < 1 for every ν)
    x_t = λ ⊙ x_{t-1} + γ ⊙ (B u_t)                  x ∈ C^N, γ = exp(log γ)
    y_t = Re(C x_t) + D ⊙ u_t

The hot loop is :func:`seqjax.ops.linear_scan` (complex, segment resets);
this module only computes ``λ``, ``γ ⊙ B u`` and the output projection.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_int, check_number, complex_dtype, param, scaled_normal_init
from seqjax.mixers.lti_blocks import DiagonalRecurrence, complex_in, real_out
from seqjax.mixers.registry import register
from seqjax.ops.linear_scan import linear_scan
from seqjax.types import Seq


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


@register("lru")
class LRU(DiagonalRecurrence, Mixer):
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

    Mixing matrix (the scan alone: per mode ``n``, acting on the projected
    input ``v = γ ⊙ B u``; ``C`` and ``D`` are outside it)::

        M[n, t, s] = λ_n^(t-s)      s <= t in the same segment, else 0

    lower triangular, semiseparable of rank 1, complex.

    Attributes:
      d_model: input/output width ``d``; None takes it from the input.
      dtype: compute dtype of the projections (float32, bfloat16, float64); the
        recurrence runs in complex64 (complex128 for float64).
      impl: ``impl`` of :func:`seqjax.ops.linear_scan`.
      sequence_axis: must be None (the LRU runs with the length unsplit).
      d_state: number of complex modes ``N``.
      r_min: smallest initial ``|λ|``.
      r_max: largest initial ``|λ|``.
      max_phase: initial phases are uniform on ``[0, max_phase]`` (2π by
        default; the paper uses π/10 on some LRA tasks).
    """

    # SSM dynamics: their own learning rate, no weight decay (seqjax.train.optim).
    ssm_params: ClassVar[tuple[str, ...]] = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im")
    # Of the rank 2 parameters, B_re and B_im are SSM dynamics and C_re, C_im decay.
    no_decay_params: ClassVar[tuple[str, ...]] = ()
    ops = ("linear_scan",)
    values_index = 0  # v = γ ⊙ B u, complex
    resettable = True  # h restarts from zero, as at a segment start
    width_param = (("D",), 0)

    d_state: int = 64
    r_min: float = 0.9
    r_max: float = 0.999
    max_phase: float = 2 * math.pi

    @property
    def num_modes(self) -> int:
        """``N``, the complex modes of the state."""
        return self.d_state

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "d_state", self.d_state)
        check_number(name, "r_min", self.r_min, low=0.0, high=1.0)
        check_number(name, "r_max", self.r_max, low=0.0, high=1.0)
        if self.r_min > self.r_max:
            raise ConfigError(f"{name}.r_min={self.r_min!r} must be <= {name}.r_max={self.r_max!r}")
        check_number(name, "max_phase", self.max_phase, low=0.0, open_low=True)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        n = self.d_state
        nu_log = param(self, "nu_log", _ring_nu_log(self.r_min, self.r_max), (n,), ("state",))
        theta_log = param(self, "theta_log", _ring_theta_log(self.max_phase), (n,), ("state",))

        def gamma_init(key, shape, dtype=jnp.float32):
            # γ = sqrt(1 - |λ|²) with |λ|² = exp(-2 exp(ν)); expm1 keeps
            # precision when |λ| is close to 1.
            del key
            return jnp.broadcast_to(0.5 * jnp.log(-jnp.expm1(-2.0 * jnp.exp(nu_log))), shape).astype(dtype)

        gamma_log = param(self, "gamma_log", gamma_init, (n,), ("state",))
        b_init, c_init = scaled_normal_init(1.0 / math.sqrt(2 * d)), scaled_normal_init(1.0 / math.sqrt(n))
        B_re = param(self, "B_re", b_init, (n, d), ("state", "embed"))
        B_im = param(self, "B_im", b_init, (n, d), ("state", "embed"))
        C_re = param(self, "C_re", c_init, (d, n), ("embed", "state"))
        C_im = param(self, "C_im", c_init, (d, n), ("embed", "state"))
        D = param(self, "D", scaled_normal_init(1.0), (d,), ("embed",))
        acc = self.acc()
        log_lam = (-jnp.exp(nu_log.astype(acc)) + 1j * jnp.exp(theta_log.astype(acc))).astype(complex_dtype(self.dtype))
        return {"a": jnp.exp(log_lam), "gamma": jnp.exp(gamma_log.astype(acc)), "B": (B_re, B_im),
                "C": (C_re, C_im), "D": D.astype(acc)}

    def _project_in(self, p, u):
        """``γ ⊙ (B u)``, complex."""
        return complex_in(u, *p["B"], self.dtype) * p["gamma"]

    def mix(self, axis, v, segment_ids, lam):
        del axis  # never split (no sequence_parallel)
        return linear_scan(lam, v, segment_ids=segment_ids, impl=self.impl_for("linear_scan"))[0]

    def output(self, p, h, proj: Projection) -> Seq:
        # Re(C h) + D ⊙ u; proj.rest is the raw input u.
        y = real_out(h, *p["C"], self.dtype) + p["D"] * proj.rest.astype(self.acc())
        return y.astype(self.dtype)
