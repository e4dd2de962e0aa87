"""Pieces of the linear time-invariant SSM family (S4, S4D, LSSL, S5, LRU).

* :class:`LTISSM`, the unregistered base of S4, S4D, LSSL
  (:class:`seqjax.mixers.s4.ConvSSM`) and S5: the state size, the initial
  step range and the one switch with two names (``causal`` /
  ``bidirectional``), with their construction-time checks.
* :class:`DiagonalRecurrence`, the hooks S5 and LRU share around their
  complex diagonal scans (projection, cache, step, state size), and
  :func:`complex_in` / :func:`real_out`, their complex projections
  ``(B_re + i B_im) u`` and ``Re(C h)`` from real matmuls in the compute
  dtype, accumulated in float32 at least.
"""

from typing import ClassVar

import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_int, check_number, complex_dtype
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


def _matmul(a: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """``a @ wᵀ`` over the last axis in the compute dtype, accumulated in float32 at least."""
    return jnp.einsum("...k,jk->...j", a.astype(dtype), w.astype(dtype), preferred_element_type=accum_dtype(dtype))


def complex_in(u: jax.Array, B_re: jax.Array, B_im: jax.Array, dtype) -> jax.Array:
    """``(B_re + i B_im) u`` for a real ``u (..., d)`` and ``B (n, d)``: ``(..., n)`` complex.

    Args:
      u: the real input.
      B_re: real part of ``B``.
      B_im: imaginary part of ``B``.
      dtype: the compute dtype of the two real matmuls.

    Returns:
      The complex product, accumulated in ``accum_dtype(dtype)``.
    """
    return jax.lax.complex(_matmul(u, B_re, dtype), _matmul(u, B_im, dtype))


def real_out(h: jax.Array, C_re: jax.Array, C_im: jax.Array, dtype) -> jax.Array:
    """``Re(C h)`` for complex states ``h (..., n)`` and ``C (d, n)``: ``(..., d)`` real."""
    return _matmul(h.real, C_re, dtype) - _matmul(h.imag, C_im, dtype)


class DiagonalRecurrence:
    """The hooks S5 and LRU share: a complex diagonal recurrence ``h_t = a ⊙ h_{t-1} + v_t``.

    A mixin listed before the Mixer base, for a class whose ``parts`` returns
    the decay ``"a"`` (``(n,)`` complex), whose ``_project_in(p, u)`` gives
    ``v`` and whose ``output(p, h, proj)`` reads the input as ``proj.rest``;
    ``num_modes`` is ``n``. The mix (the scan) is the class's own.
    """

    def project(self, p, x, segment_ids) -> Projection:
        return Projection(tokens=(self._project_in(p, x), segment_ids), shared=(p["a"][None, None],), rest=x)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"h": (batch, num_modes)}`` complex zeros."""
        return {"h": jnp.zeros((batch_size, self.num_modes), complex_dtype(self.dtype))}

    def step_mix(self, p, x_t, cache: dict):
        # h = a ⊙ h + v_t, then the output map.
        h = p["a"] * cache["h"] + self._project_in(p, x_t)
        return self.output(p, h, Projection(rest=x_t)), {"h": h}

    def state_size(self, length: int | None = None) -> int:
        """Bytes of recurrent state per sequence: ``num_modes`` complex numbers (needs no width).

        A bidirectional S5 has no streaming state; it reports the carries of
        its two scans (twice the causal size).

        Args:
          length: unused (the state does not grow with length).

        Returns:
          ``directions · num_modes · itemsize`` (itemsize 8 for complex64).
        """
        del length
        directions = getattr(self, "directions", 1)  # S5's; the LRU runs forwards only
        return directions * self.num_modes * jnp.dtype(complex_dtype(self.dtype)).itemsize


__all__ = ["LTISSM", "DiagonalRecurrence", "complex_in", "real_out"]
