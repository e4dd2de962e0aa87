"""ConvLSTM: an LSTM whose state is a frame, with convolutional transitions (Shi et al. 2015).

"Convolutional LSTM Network: A Machine Learning Approach for Precipitation
Nowcasting" (Shi, Chen, Wang, Yeung, Wong & Woo, NeurIPS 2015, arXiv
1506.04214), eq. 3. Each step is a frame ``X_t ∈ R^{H×W×U}``; the hidden
state ``H_t`` and the cell ``C_t`` are frames of the same shape::

    i_t = σ(W_xi ∗ X_t + W_hi ∗ H_{t-1} + W_ci ∘ C_{t-1} + b_i)
    f_t = σ(W_xf ∗ X_t + W_hf ∗ H_{t-1} + W_cf ∘ C_{t-1} + b_f)
    C_t = f_t ∘ C_{t-1} + i_t ∘ tanh(W_xc ∗ X_t + W_hc ∗ H_{t-1} + b_c)
    o_t = σ(W_xo ∗ X_t + W_ho ∗ H_{t-1} + W_co ∘ C_t + b_o)
    H_t = o_t ∘ tanh(C_t)

``∗`` is a 2-D "same" convolution (zero padding: the paper's "state of the
outside world"), ``∘`` the Hadamard product: the peephole weights ``W_c·``
are ``H×W×U`` tensors, one weight per pixel and channel (``peephole=False``
drops them: the peephole-free ConvLSTM most later code uses). The states
start at zero ("total ignorance", as the paper) and restart at zero at a new
segment (``segment_ids``) or a ``step`` reset (Lu et al. 2023).

Run over time as a convolutional RNN is: the input-to-state convolution
``W_x· ∗ X`` acts on every frame at once (the parallel part, in the
projection); only the state-to-state convolution ``W_h· ∗ H_{t-1}`` and the
gates sit inside a ``lax.scan`` over time (the mix). Nonlinear in every
projection of ``x``: no mixing matrix, no ``seqjax.ops`` op (``impl`` is
``"auto"`` only). The output is ``H_t`` flattened, hidden channels = input
channels ``U`` so the width stays ``d = H·W·U``; no output projection (the
paper stacks ConvLSTM layers directly), so the surrounding block's read-out
does that job.

The frame layout (``frame_height``, ``frame_width``, 5-D inputs) and the
convolution are :mod:`seqjax.mixers.frames`'s, shared with ``convs5``.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Projection
from seqjax.mixers.common import param, positions_in_segment
from seqjax.mixers.frames import FrameMixer, check_odd_kernel, conv2d
from seqjax.mixers.registry import register
from seqjax.types import SegmentIds, Seq, SeqStep

# Gates in the layout order of the stacked kernels' output axis (the paper's order).
GATES = ("i", "f", "c", "o")
# Gers et al. 2000 / Jozefowicz et al. 2015: a positive forget bias keeps memories early on
# (the same value as the registry's LSTM, seqjax/mixers/recurrent.py).
FORGET_BIAS = 1.0


@register("convlstm")
class ConvLSTM(FrameMixer):
    """ConvLSTM (Shi et al. 2015, eq. 3), hidden channels = input channels ``U``, output ``H_t``.

    Input ``(b, l, d)`` with ``d = frame_height · frame_width · U`` (each
    position a frame, row-major ``(height, width, U)``), or ``(b, l, height,
    width, U)`` directly (then the output is 5-D too; ``step`` likewise takes
    ``(b, d)`` or ``(b, height, width, U)``).

    Parameters (float32): ``input_kernel`` ``(k, k, U, 4U)`` (``W_x·``, gates
    ``i, f, c, o`` stacked on the output axis), ``recurrent_kernel`` ``(k, k,
    U, 4U)`` (``W_h·``), ``bias`` ``(4, U)`` (one per gate and channel,
    shared over pixels as a convolution's bias) and, with ``peephole``,
    ``peephole`` ``(3, H, W, U)`` (``W_ci, W_cf, W_co``).

    Initialisation (the paper gives none): kernels LeCun normal over the fan-in
    ``k²U`` (Flax's convolution default); biases zero except the forget gate's,
    +1 (``FORGET_BIAS``); peepholes zero (they start as the plain ConvLSTM).

    Attributes:
      d_model: width ``d = frame_height · frame_width · U``; None takes it from
        the input.
      dtype: compute dtype of the convolutions; the gates and states run in
        float32 (float64 for float64).
      impl: only ``"auto"`` (the scan is the mixer's own).
      sequence_axis: unsupported (None).
      frame_height: frame height ``H``.
      frame_width: frame width ``W``.
      kernel_size: ``k`` of both convolutions (input-to-state and
        state-to-state), odd (a symmetric "same" padding).
      peephole: include the Hadamard peephole terms ``W_c· ∘ C`` (the paper's
        eq. 3).
    """

    no_decay_params: ClassVar[tuple[str, ...]] = ("bias",)
    resettable: ClassVar[bool] = True  # (H, C) restart at zero, as at a segment start
    width_param = (("bias",), -1)  # bias is (4, U): width() multiplies by the frame size

    kernel_size: int = 3
    peephole: bool = True

    def check_fields(self):
        name = self.mixer_name
        self.check_frame_fields()
        check_odd_kernel(name, "kernel_size", self.kernel_size)
        if not isinstance(self.peephole, bool):
            raise ConfigError(f"{name}.peephole={self.peephole!r} must be a bool (True or False)")

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        """The kernels ``W_x, W_h (k, k, U, 4U)``, ``bias (4, U)`` and the peepholes ``(3, H, W, U)`` (or None)."""
        u, k = self._channels(d), self.kernel_size

        def bias_init(key, shape, dtype=jnp.float32):
            del key
            return jnp.zeros(shape, dtype).at[GATES.index("f")].set(FORGET_BIAS)

        conv_init = nn.initializers.lecun_normal()  # fan-in k·k·U (receptive field × input channels)
        p = {
            "input_kernel": param(self, "input_kernel", conv_init, (k, k, u, 4 * u), (None, None, "embed", "mlp")),
            "recurrent_kernel": param(self, "recurrent_kernel", conv_init, (k, k, u, 4 * u),
                                      (None, None, "embed", "mlp")),
            "bias": param(self, "bias", bias_init, (4, u), (None, "embed")),
            "peephole": None,
        }
        if self.peephole:
            p["peephole"] = param(self, "peephole", nn.initializers.zeros_init(),
                                  (3, self.frame_height, self.frame_width, u), (None, None, None, "embed"))
        return p

    # --- the recurrence ---------------------------------------------------------------

    def _pre(self, p, x: jax.Array) -> jax.Array:
        """``W_x ∗ X + b`` for every frame at once: ``(..., d)`` -> ``(..., H, W, 4U)`` in float32."""
        pre = conv2d(self._frames(x), p["input_kernel"], self.dtype)
        pre = pre + p["bias"].reshape(-1).astype(self.acc())  # (4, U) -> 4U, gate-major as the kernel
        return pre.reshape(x.shape[:-1] + pre.shape[1:])

    def _cell(self, pre_t, state, recurrent_kernel, peephole):
        """One step of eq. 3: ``pre_t (b, H, W, 4U)``, ``state = (H, C)`` -> the new ``(H, C)``."""
        h, c = state
        g = pre_t + conv2d(h, recurrent_kernel, self.dtype)
        gi, gf, gc, go = jnp.split(g, 4, axis=-1)
        if peephole is not None:
            w = peephole.astype(self.acc())
            gi, gf = gi + w[0] * c, gf + w[1] * c
        c = jax.nn.sigmoid(gf) * c + jax.nn.sigmoid(gi) * jnp.tanh(gc)
        if peephole is not None:
            go = go + w[2] * c  # the output gate peeks at the NEW cell C_t
        return jax.nn.sigmoid(go) * jnp.tanh(c), c

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        shared = (p["recurrent_kernel"],) + (() if p["peephole"] is None else (p["peephole"],))
        return Projection(tokens=(self._pre(p, x), segment_ids), shared=shared)

    def mix(self, axis, pre, segment_ids, recurrent_kernel, peephole=None):
        del axis  # never split (sequence_parallel is False)
        batch, length = pre.shape[:2]
        # Where a segment starts (t = 0 too, a no-op on the zero state), time-major.
        starts = None if segment_ids is None else (positions_in_segment(segment_ids, batch, length) == 0).T

        def body(state, inputs):
            pre_t, start_t = inputs
            if start_t is not None:
                # A new packed sequence starts from the zero state.
                state = tuple(jnp.where(start_t[:, None, None, None], jnp.zeros_like(s), s) for s in state)
            state = self._cell(pre_t, state, recurrent_kernel, peephole)
            return state, state[0]

        zeros = jnp.zeros((batch,) + pre.shape[2:-1] + (pre.shape[-1] // 4,), self.acc())
        _, hs = jax.lax.scan(body, (zeros, zeros), (jnp.moveaxis(pre, 1, 0), starts))  # time-major
        return jnp.moveaxis(hs, 0, 1)  # (b, l, H, W, U)

    def output(self, p, h, proj: Projection) -> Seq:
        """``H_t`` flattened to ``(..., d)``: no output projection (Shi et al.)."""
        return h.reshape(h.shape[:-3] + (-1,)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"h", "c"}``: zero ``(batch, H, W, U)`` frames in float32."""
        del max_length  # the state does not grow
        shape = (batch_size, self.frame_height, self.frame_width, self._channels(d))
        return {"h": jnp.zeros(shape, self.acc()), "c": jnp.zeros(shape, self.acc())}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        state = (cache["h"].astype(self.acc()), cache["c"].astype(self.acc()))
        h, c = self._cell(self._pre(p, x_t), state, p["recurrent_kernel"], p["peephole"])
        return self.output(p, h, Projection()), {"h": h, "c": c}


__all__ = ["FORGET_BIAS", "GATES", "ConvLSTM"]
