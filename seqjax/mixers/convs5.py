"""ConvS5: a convolutional state-space layer (Smith, De Mello, Kautz, Linderman & Byeon 2023).

"Convolutional State Space Models for Long-Range Spatiotemporal Modeling"
(NeurIPS 2023, arXiv 2310.19694; authors' code NVlabs/ConvSSM). Each step is a
frame: the state is a tensor ``X_t ∈ C^{H×W×P}`` (one ``P``-vector per
pixel), the input ``U_t ∈ R^{H×W×U}``::

    X_t = Ā ⊙ X_{t-1} + B̄ ∗ U_t          Ā = exp(ΛΔ) (P,), pointwise in space
    Y_t = 2 Re(C̃ ∗ X_t) + D ⊙ U_t        ∗: 2-D convolution ("same" zero padding)

The paper shows (Prop. 1) that a ConvSSM whose state kernel is pointwise is a
block-diagonal SSM, one S5 system per pixel whose input and output matrices
are the convolutions; so ConvS5 takes S5's parameterisation: ``Λ`` the
eigenvalues of HiPPO-LegS's normal part (block-diagonal, conjugate-symmetric:
``P/2`` stored modes and ``2 Re`` at the output), per-mode step ``Δ`` learned
in log space, ZOH discretisation ``B̄ = (Ā - 1)/Λ ⊙ B̃`` applied along the
kernel's output (state) axis.

Run over time as the paper does: the convolutions act on all frames at once
and the diagonal recurrence runs through :func:`seqjax.ops.linear_scan`
(complex; segments reset the state, Lu et al. 2023). The mixer is linear in
``v = B̄ ∗ U`` (one channel per pixel and mode), so the contract's per-channel
mixing matrix applies as it is: ``M[(pixel, n), t, s] = Ā_n^(t-s)``; the
spatial mixing sits in the projection (``B̄ ∗``) and the output (``C̃ ∗``).

Simplifications against the authors' code (documented, deliberate):

* ``D`` is a per-channel scale ``D ⊙ U``; the code's ``C_D_config`` blocks
  (a ``k_D`` convolution of ``U`` with GroupNorm and an activation, or a
  ResNet block) are left to the surrounding layer, not part of this mixer.
* ZOH only (the code's only rule); odd kernel sizes only (a "same" padding
  that is symmetric); causal only (the paper models video forwards in time).

The frame layout (fields ``frame_height``, ``frame_width``, the 5-D entry
points) and ``conv2d`` live in ``seqjax/mixers/frames.py``, shared with
``convlstm``.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Projection
from seqjax.mixers.common import (
    check_int, check_number, complex_dtype, constant_init, log_uniform_init, param, split_complex)
from seqjax.mixers.frames import FrameMixer, check_odd_kernel, conv2d
from seqjax.mixers.registry import register
from seqjax.ops.hippo import block_diagonal_legs
from seqjax.ops.linear_scan import linear_scan
from seqjax.ops.ssm_kernels import discretize
from seqjax.types import Seq


def _b_init(Vinv, channels: int, k: int):
    """``B̃ = V⁻¹ B`` for a real kernel ``B (k, k, U, P)``, He-normal with fan-in ``U k²`` (the ConvS5 code)."""

    def init(key, shape, dtype=jnp.float32):
        P = Vinv.shape[1]
        B = jax.nn.initializers.he_normal()(key, (k * k * channels, P), jnp.float32).reshape(k, k, channels, P)
        Bt = jnp.einsum("ijcp,mp->ijcm", B.astype(jnp.complex64), jnp.asarray(Vinv, jnp.complex64))
        return split_complex(Bt).astype(dtype).reshape(shape)

    return init


def _c_init(V, channels: int, k: int):
    """``C̃ = C V`` for a real kernel ``C (k, k, P, U)``, He-normal with fan-in ``P k²`` (the ConvS5 code)."""

    def init(key, shape, dtype=jnp.float32):
        P = V.shape[0]
        C = jax.nn.initializers.he_normal()(key, (k * k * P, channels), jnp.float32).reshape(k, k, P, channels)
        Ct = jnp.einsum("ijpo,pm->ijmo", C.astype(jnp.complex64), jnp.asarray(V, jnp.complex64))
        return split_complex(Ct).astype(dtype).reshape(shape)

    return init


@register("convs5")
class ConvS5(FrameMixer):
    """ConvS5 (Smith et al. 2023): a diagonal SSM per pixel, with convolutional input and output maps.

    Input ``(b, l, d)`` with ``d = frame_height · frame_width · U`` (each
    position a frame, row-major ``(height, width, U)``), or ``(b, l, height,
    width, U)`` directly (then the output is 5-D too; ``step`` likewise takes
    ``(b, d)`` or ``(b, height, width, U)``). ``M = d_state / 2`` stored modes::

        Λ̄ = exp(ΛΔ),  B̄ = (Λ̄ - 1)/Λ ⊙ B̃            B̃ (k_B, k_B, U, M), C̃ (k_C, k_C, M, U)
        X_t = Λ̄ ⊙ X_{t-1} + B̄ ∗ U_t                  X_t (height, width, M) complex
        Y_t = 2 Re(C̃ ∗ X_t) + D ⊙ U_t                D (U,)

    Initialisation (the ConvS5 code): ``Λ`` from HiPPO-LegS's normal part in
    ``blocks`` blocks (as S5, :func:`seqjax.ops.hippo.block_diagonal_legs`);
    ``B̃ = V⁻¹ B`` and ``C̃ = C V`` (over the state axis) for real He-normal
    kernels ``B`` (fan-in ``U k_B²``) and ``C`` (fan-in ``P k_C²``); ``log Δ``
    uniform on ``[log dt_min, log dt_max]``; ``D ~ N(0, 1)``.

    Mixing matrix: ``(b, height·width·M, l, l)`` complex, channel ``pixel · M +
    n`` holding ``Λ̄_n^(t-s)`` (``s <= t``, same segment), acting on ``v = B̄ ∗
    U``; the convolutions are outside it.

    Attributes:
      d_model: width ``d = frame_height · frame_width · U``; None takes it from
        the input.
      dtype: compute dtype of the convolutions; the scan runs in complex64
        (complex128 for float64).
      impl: ``impl`` of :func:`seqjax.ops.linear_scan`.
      sequence_axis: unsupported (None).
      frame_height: frame height ``H`` (named so: ``width`` is the Mixer's
        method that returns ``d``).
      frame_width: frame width ``W``.
      d_state: ``P``, the real state size per pixel (even; ``P/2`` complex
        modes are stored). The authors' Moving-MNIST configs use 256
        (300-frame training, U = 256) and 128 (600-frame, U = 128).
      blocks: LegS blocks ``J`` in the init (divides ``P`` into even blocks).
      b_kernel_size: ``k_B``, odd (the paper: 3).
      c_kernel_size: ``k_C``, odd (the paper: 3).
      dt_min: smallest initial step ``Δ``.
      dt_max: largest initial step ``Δ``.
      clip_eigs: clip ``Re Λ`` to ``<= -1e-4`` (the paper's runs set it).
    """

    ssm_params: ClassVar[tuple[str, ...]] = ("log_step", "Lambda_re", "Lambda_im", "B")
    ops = ("linear_scan",)
    values_index = 0  # v = B̄ ∗ U, complex, flattened to (b, l, height·width·M)
    resettable = True  # the state restarts from zero, as at a segment start
    width_param = (("D",), 0)  # D is (U,): width() multiplies by the frame size

    d_state: int = 64
    blocks: int = 1
    b_kernel_size: int = 3
    c_kernel_size: int = 3
    dt_min: float = 0.001
    dt_max: float = 0.1
    clip_eigs: bool = False

    @property
    def num_modes(self) -> int:
        """``M = d_state / 2`` stored complex modes per pixel."""
        return self.d_state // 2

    def check_fields(self):
        name = self.mixer_name
        self.check_frame_fields()
        check_int(name, "d_state", self.d_state, minimum=2)
        if self.d_state % 2:
            raise ConfigError(f"{name}.d_state={self.d_state!r} must be even (conjugate pairs of modes)")
        check_int(name, "blocks", self.blocks)
        if self.d_state % self.blocks or (self.d_state // self.blocks) % 2:
            raise ConfigError(f"{name}.blocks={self.blocks!r} must divide d_state={self.d_state} "
                              "into blocks of even size")
        for field in ("b_kernel_size", "c_kernel_size"):
            check_odd_kernel(name, field, getattr(self, field))
        check_number(name, "dt_min", self.dt_min, low=0.0, open_low=True)
        check_number(name, "dt_max", self.dt_max, low=0.0, open_low=True)
        if self.dt_min > self.dt_max:
            raise ConfigError(f"{name}.dt_min={self.dt_min!r} must be <= {name}.dt_max={self.dt_max!r}")

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        """The discrete system: ``Λ̄ (M,)``, kernels ``B̄ (k_B, k_B, U, M)``, ``C̃ (k_C, k_C, M, U)``, ``D (U,)``."""
        u, m, kb, kc = self._channels(d), self.num_modes, self.b_kernel_size, self.c_kernel_size
        # Init-time constants (float64 NumPy); only their values enter params.
        Lambda0, V, Vinv = block_diagonal_legs(self.d_state, self.blocks, conj_sym=True)
        Lambda_re = param(self, "Lambda_re", constant_init(Lambda0.real), (m,), ("state",))
        Lambda_im = param(self, "Lambda_im", constant_init(Lambda0.imag), (m,), ("state",))
        B = param(self, "B", _b_init(Vinv, u, kb), (kb, kb, u, m, 2), (None, None, "embed", "state", None))
        C = param(self, "C", _c_init(V, u, kc), (kc, kc, m, u, 2), (None, None, "state", "embed", None))
        D = param(self, "D", jax.nn.initializers.normal(1.0), (u,), ("embed",))
        log_step = param(self, "log_step", log_uniform_init(self.dt_min, self.dt_max), (m,), ("state",))

        acc, cdt = self.acc(), complex_dtype(self.dtype)
        re = Lambda_re.astype(acc)
        if self.clip_eigs:
            re = jnp.minimum(re, -1e-4)
        Lambda = jax.lax.complex(re, Lambda_im.astype(acc))
        B, C = B.astype(acc), C.astype(acc)
        # ZOH along the state axis, the kernel's last: B̄[..., n] = (Λ̄_n - 1)/Λ_n B̃[..., n].
        Abar, Bbar = discretize(Lambda, jax.lax.complex(B[..., 0], B[..., 1]), jnp.exp(log_step.astype(acc)))
        return {"a": Abar.astype(cdt), "Bbar": Bbar.astype(cdt), "C": jax.lax.complex(C[..., 0], C[..., 1]),
                "D": D.astype(acc)}

    def _project_in(self, p, x: jax.Array) -> jax.Array:
        """``B̄ ∗ U`` per frame: ``(..., d)`` real to ``(..., H·W·M)`` complex (one real conv, re|im stacked)."""
        bbar = p["Bbar"]
        kernel = jnp.concatenate([bbar.real, bbar.imag], axis=-1)  # (k, k, U, 2M)
        v = conv2d(self._frames(x), kernel, self.dtype)
        m = self.num_modes
        v = jax.lax.complex(v[..., :m], v[..., m:])
        return v.reshape(x.shape[:-1] + (self.pixels * m,))

    def _a(self, p) -> jax.Array:
        # Λ̄ per (pixel, mode) channel, pixel-major as the flattened state.
        return jnp.tile(p["a"], self.pixels)

    def project(self, p, x, segment_ids) -> Projection:
        return Projection(tokens=(self._project_in(p, x), segment_ids), shared=(self._a(p)[None, None],), rest=x)

    def mix(self, axis, v, segment_ids, a):
        h, _ = linear_scan(a, v, segment_ids=segment_ids, impl=self.impl_for("linear_scan"), sequence_axis=axis)
        return h

    def output(self, p, h, proj: Projection) -> Seq:
        """``2 Re(C̃ ∗ X) + D ⊙ U``: ``Re(C̃ ∗ X) = C_re ∗ Re X - C_im ∗ Im X``, one real conv."""
        u = proj.rest
        frames = h.reshape((-1, self.frame_height, self.frame_width, self.num_modes))
        kernel = jnp.concatenate([p["C"].real, -p["C"].imag], axis=2)  # (k, k, 2M, U)
        y = conv2d(jnp.concatenate([frames.real, frames.imag], axis=-1), kernel, self.dtype)
        skip = p["D"] * self._frames(u).astype(self.acc())  # D per channel U
        y = 2.0 * y.reshape(u.shape) + skip.reshape(u.shape)
        return y.astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"h": (batch, H·W·M)}`` complex zeros: the state tensor, flattened."""
        return {"h": jnp.zeros((batch_size, self.pixels * self.num_modes), complex_dtype(self.dtype))}

    def step_mix(self, p, x_t, cache: dict):
        h = self._a(p) * cache["h"] + self._project_in(p, x_t)
        return self.output(p, h, Projection(rest=x_t)), {"h": h}

    def state_size(self, length: int | None = None) -> int:
        """Bytes of recurrent state per sequence: ``H · W · d_state/2`` complex numbers (no width needed).

        Args:
          length: unused (the state does not grow with length).

        Returns:
          ``frame_height · frame_width · d_state/2 · itemsize`` (8 for complex64).
        """
        del length
        return self.pixels * self.num_modes * jnp.dtype(complex_dtype(self.dtype)).itemsize


__all__ = ["ConvS5", "conv2d"]
