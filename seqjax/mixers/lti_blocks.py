"""Pieces of the linear time-invariant SSM family (S4, S4D, LSSL, S5, LRU).

* :class:`LTISSM`, the unregistered base of S4, S4D, LSSL
  (:class:`seqjax.mixers.s4.ConvSSM`) and S5: the state size, the initial
  step range and the one switch with two names (``causal`` /
  ``bidirectional``), with their construction-time checks.
* :func:`complex_in` and :func:`real_out`, the complex projections of the
  diagonal recurrences (S5, LRU): ``(B_re + i B_im) u`` and ``Re(C h)``
  from real matmuls in the compute dtype, accumulated in float32 at least.
"""

from typing import ClassVar

import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer
from seqjax.mixers.common import check_int, check_number
from seqjax.ops.common import accum_dtype


class LTISSM(Mixer):
    """Fields and checks that S4, S4D, LSSL and S5 share (not registered).

    A layer is causal or bidirectional; the contract's ``causal`` and the
    papers' ``bidirectional`` name that one switch. Either may be set (the
    other left None); after construction both are plain bools that agree
    (``causal = not bidirectional``, causal by default), and setting both
    inconsistently is a :class:`~seqjax.errors.ConfigError`.

    Attributes:
      d_state: the SSM's state size ``N`` (S4, S4D, S5: even, ``N/2``
        complex modes are stored).
      dt_min: smallest initial step ``Δ`` (``log Δ`` uniform).
      dt_max: largest initial step ``Δ``.
      bidirectional: add the anti-causal direction. None means ``not causal``.
      causal: ``not bidirectional``. None means ``not bidirectional``.
    """

    causality = "either"
    width_param = (("D",), 0)
    # Every rank > 1 parameter here is a matrix that decays (or an SSM parameter).
    no_decay_params: ClassVar[tuple[str, ...]] = ()

    d_state: int = 64
    dt_min: float = 0.001
    dt_max: float = 0.1
    bidirectional: bool | None = None
    causal: bool | None = None

    def __post_init__(self):
        # Both names of one switch become plain bools that agree, before the
        # base's checks (which read ``causal``) run.
        bidir, causal = self.bidirectional, self.causal
        if bidir is not None and causal is not None and bool(causal) == bool(bidir):
            raise ConfigError(f"{self.mixer_name}.causal={causal!r} contradicts "
                              f"{self.mixer_name}.bidirectional={bidir!r}")
        if bidir is None:
            bidir = causal is False
        object.__setattr__(self, "bidirectional", bool(bidir))
        object.__setattr__(self, "causal", not bidir)
        super().__post_init__()

    @property
    def directions(self) -> int:
        """Number of directions: 2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    def check_fields(self):
        name = self.mixer_name
        check_number(name, "dt_min", self.dt_min, low=0.0, open_low=True)
        check_number(name, "dt_max", self.dt_max, low=0.0, open_low=True)
        if self.dt_min > self.dt_max:
            raise ConfigError(f"{name}.dt_min={self.dt_min!r} must be <= {name}.dt_max={self.dt_max!r}")

    def check_even_state(self) -> None:
        """Raises ConfigError unless ``d_state`` is an even int >= 2 (conjugate pairs of modes)."""
        check_int(self.mixer_name, "d_state", self.d_state, minimum=2)
        if self.d_state % 2:
            raise ConfigError(f"{self.mixer_name}.d_state={self.d_state!r} must be even (conjugate pairs of modes)")


def complex_in(u: jax.Array, B_re: jax.Array, B_im: jax.Array, dtype) -> jax.Array:
    """``(B_re + i B_im) u`` from two real matmuls in the compute dtype.

    Args:
      u: ``(..., d)`` real input.
      B_re: ``(n, d)`` real part.
      B_im: ``(n, d)`` imaginary part.
      dtype: the compute dtype of the matmuls.

    Returns:
      ``(..., n)`` complex, accumulated in ``accum_dtype(dtype)``.
    """
    acc = accum_dtype(dtype)
    u = u.astype(dtype)
    re = jnp.einsum("...d,nd->...n", u, B_re.astype(dtype), preferred_element_type=acc)
    im = jnp.einsum("...d,nd->...n", u, B_im.astype(dtype), preferred_element_type=acc)
    return jax.lax.complex(re, im)


def real_out(h: jax.Array, C_re: jax.Array, C_im: jax.Array, dtype) -> jax.Array:
    """``Re((C_re + i C_im) h)`` from two real matmuls in the compute dtype.

    Args:
      h: ``(..., n)`` complex states.
      C_re: ``(d, n)`` real part.
      C_im: ``(d, n)`` imaginary part.
      dtype: the compute dtype of the matmuls.

    Returns:
      ``(..., d)`` real, in ``accum_dtype(dtype)``.
    """
    acc = accum_dtype(dtype)

    def matmul(a, b):
        return jnp.einsum("...n,dn->...d", a.astype(dtype), b.astype(dtype), preferred_element_type=acc)

    return matmul(h.real, C_re) - matmul(h.imag, C_im)


__all__ = ["LTISSM", "complex_in", "real_out"]
