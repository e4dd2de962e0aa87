"""Head-wise nonlinear recurrences: LSTM and GRU in the FlashRNN layout.

FlashRNN (Pöppel et al. 2024) splits the ``d_model`` hidden units into
``num_heads`` heads; each head is a small, independent recurrent cell whose
recurrent matrix only mixes units of its own head, so the full recurrent matrix
is block-diagonal: ``R: (heads, head_dim, gates * head_dim)``. The input
projection ``W: (d_model, gates * d_model)`` is dense over the full width and is
applied to the whole sequence at once (:meth:`HeadwiseRNN.project`); only
``h_{t-1} R`` (one small matmul per head) stays inside the time loop
(:meth:`HeadwiseRNN.mix`). The recurrence is nonlinear in ``h``, so the loop is
a sequential ``lax.scan`` of its own (no ``seqjax.ops`` op, so no ``impl``
choice; no parallel form and no mixing matrix).

:class:`Heads` holds what the whole family shares (the ``num_heads`` field and
its checks); :class:`HeadwiseRNN` the shared machinery of the nonlinear cells
(parameters, scan, segment resets, the step); :class:`LSTM` and :class:`GRU`
only define the cell. The xLSTM mixers (``seqjax/mixers/xlstm.py``) reuse
both: ``slstm`` is a :class:`HeadwiseRNN`, ``mlstm`` a :class:`Heads`.

Parameter layout (all float32): ``in_proj`` (dense, ``d -> gates * d``, no
bias), ``bias: (heads, gates, head_dim)``, ``recurrent: (heads, head_dim, gates *
head_dim)`` and ``out_proj`` (dense, ``d -> d``). The input pre-activations are
read as ``(heads, gates, head_dim)`` per position, and ``h R`` likewise.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_divides, check_int, dense, param, positions_in_segment
from seqjax.mixers.registry import register
from seqjax.types import SegmentIds, Seq, SeqStep

# Per-head LeCun normal over the head's fan-in: every head is its own small RNN.
RECURRENT_INIT = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
# FlashRNN / Gers et al.: a positive forget bias keeps memories early in training.
LSTM_FORGET_BIAS = 1.0


class Heads(Mixer):
    """What the recurrent family shares: ``num_heads`` heads of ``d_model / num_heads`` units (not registered).

    The family's recurrences are loops of their own (no ``seqjax.ops`` op), so
    ``impl`` can only be ``"auto"``.

    Attributes:
      num_heads: number of independent heads; must divide ``d_model``.
    """

    ops = ()

    num_heads: int = 4

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_heads", self.num_heads)
        if self.d_model is not None:
            self.head_dim(self.d_model)

    def head_dim(self, d: int) -> int:
        """``d // num_heads``; ConfigError unless the heads divide the width.

        Args:
          d: the model width.

        Returns:
          The head dimension.
        """
        return check_divides(self.mixer_name, "num_heads", self.num_heads, d, "d_model")


class HeadwiseRNN(Heads):
    """Shared machinery of head-wise nonlinear RNNs (subclasses define the cell; not registered).

    Subclasses set ``gates`` (names of the pre-activation blocks, in layout
    order) and ``states`` (names of the carried states; ``states[0]`` is ``h``,
    the output and the recurrent input), and implement ``_cell``. The projection
    is ``W x + b`` for the whole sequence, ``(b, l, heads, gates, head_dim)``;
    the mix is the scan over it, returning ``h`` as ``(b, l, heads, head_dim)``;
    the output is ``W_out h``. States start at zero and restart at zero where
    the segment id changes. Nonlinear in every projection of ``x``: no mixing
    matrix (``values_index = None``).

    Attributes:
      d_model: model width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections; the recurrence runs in float32
        (or float64 when ``dtype`` is float64).
      impl: only ``"auto"`` (the scan is the mixer's own, no op to choose).
      sequence_axis: must stay None (a sequential scan does not split).
      num_heads: number of independent heads; must divide ``d_model``.
    """

    gates: ClassVar[tuple[str, ...]] = ()
    states: ClassVar[tuple[str, ...]] = ()

    # -- hooks of the cell -------------------------------------------------
    def _bias_init(self, key, shape, dtype=jnp.float32):
        """Initial input bias ``(heads, gates, head_dim)``; zeros by default."""
        del key
        return jnp.zeros(shape, dtype)

    def _extra_params(self, heads: int, head_dim: int) -> tuple[jax.Array, ...]:
        """Further parameters of the cell, passed to ``_cell`` (called inside ``parts``)."""
        del heads, head_dim
        return ()

    def _cell(self, pre, rec, state, *extra):
        """One step: ``pre``/``rec`` ``(b, heads, gates, head_dim)`` -> new state tuple."""
        raise NotImplementedError

    # -- the Mixer hooks ---------------------------------------------------
    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        head_dim = self.head_dim(d)
        gates = len(self.gates)
        return {
            "in_proj": dense(gates * d, ("embed", "mlp"), dtype=self.dtype, name="in_proj"),
            "bias": param(self, "bias", self._bias_init, (self.num_heads, gates, head_dim), ("heads", None, None)),
            "recurrent": param(self, "recurrent", RECURRENT_INIT, (self.num_heads, head_dim, gates * head_dim),
                               ("heads", None, None)),
            "extra": self._extra_params(self.num_heads, head_dim),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj"),
        }

    def _pre(self, p, x):
        # Input pre-activations for every position at once (the dense, parallel part).
        pre = p["in_proj"](x.astype(self.dtype))
        pre = pre.reshape(*x.shape[:-1], self.num_heads, len(self.gates), -1)
        return pre.astype(self.acc()) + p["bias"].astype(self.acc())

    def _step_state(self, pre_t, state, recurrent, extra):
        acc = self.acc()
        h = state[0]
        rec = jnp.einsum("bhd,hde->bhe", h, recurrent.astype(acc))
        rec = rec.reshape(h.shape[0], self.num_heads, len(self.gates), -1)
        return self._cell(pre_t, rec, state, *(e.astype(acc) for e in extra))

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        return Projection(tokens=(self._pre(p, x), segment_ids), shared=(p["recurrent"], *p["extra"]))

    def mix(self, axis, pre, segment_ids, recurrent, *extra):
        del axis  # never split (sequence_parallel is False)
        batch, length = pre.shape[:2]
        # Where a segment starts (t = 0 too, a no-op on the zero state), time-major.
        starts = None if segment_ids is None else (positions_in_segment(segment_ids, batch, length) == 0).T

        def body(state, inputs):
            pre_t, start_t = inputs
            if start_t is not None:
                # A new packed sequence starts from the zero state.
                state = tuple(jnp.where(start_t[:, None, None], jnp.zeros_like(s), s) for s in state)
            state = self._step_state(pre_t, state, recurrent, extra)
            return state, state[0]

        init = tuple(jnp.zeros((batch, self.num_heads, pre.shape[-1]), self.acc()) for _ in self.states)
        _, hs = jax.lax.scan(body, init, (jnp.moveaxis(pre, 1, 0), starts))  # time-major
        return jnp.moveaxis(hs, 0, 1)

    def output(self, p, y, proj: Projection) -> Seq:
        h = y.reshape(y.shape[:-2] + (-1,))  # (..., heads, head_dim) -> (..., d)
        return p["out_proj"](h.astype(self.dtype)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """Each name in ``states`` -> a zero ``(b, heads, head_dim)`` array in float32."""
        del max_length  # the state does not grow
        shape = (batch_size, self.num_heads, self.head_dim(d))
        return {k: jnp.zeros(shape, self.acc()) for k in self.states}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        state = tuple(cache[k].astype(self.acc()) for k in self.states)
        state = self._step_state(self._pre(p, x_t), state, p["recurrent"], p["extra"])
        return self.output(p, state[0], Projection()), dict(zip(self.states, state))


@register("lstm")
class LSTM(HeadwiseRNN):
    """Head-wise LSTM (Hochreiter & Schmidhuber 1997; FlashRNN layout, Pöppel et al. 2024).

    Per head, with ``W x_t + b`` from the dense input projection and ``R`` the
    head's recurrent block::

        [i~, f~, z~, o~] = W x_t + b + h_{t-1} R
        i = sigmoid(i~), f = sigmoid(f~), z = tanh(z~), o = sigmoid(o~)
        c_t = f * c_{t-1} + i * z
        h_t = o * tanh(c_t)
        y_t = W_out h_t

    The forget-gate bias starts at +1 (``LSTM_FORGET_BIAS``; Gers et al. 2000,
    Jozefowicz et al. 2015), the other biases at 0. States ``h``, ``c`` start at
    zero and restart at zero at a new segment. No mixing matrix (nonlinear).

    Attributes:
      num_heads: number of independent heads (default 4); must divide ``d_model``.
        The other fields (``d_model``, ``dtype``, ``impl``, ``sequence_axis``)
        are those of :class:`HeadwiseRNN`.
    """

    no_decay_params: ClassVar[tuple[str, ...]] = ("bias",)
    # The scan restarts (h, c) at zero at a segment start and the cache is per row:
    # ``step(..., reset)`` restarts rows the same way (Lu et al. 2023's baseline LSTM).
    resettable: ClassVar[bool] = True
    gates: ClassVar[tuple[str, ...]] = ("i", "f", "z", "o")
    states: ClassVar[tuple[str, ...]] = ("h", "c")

    def _bias_init(self, key, shape, dtype=jnp.float32):
        del key
        return jnp.zeros(shape, dtype).at[:, 1].set(LSTM_FORGET_BIAS)

    def _cell(self, pre, rec, state):
        _, c = state
        g = pre + rec
        i, f, o = (jax.nn.sigmoid(g[:, :, k]) for k in (0, 1, 3))
        c = f * c + i * jnp.tanh(g[:, :, 2])
        return o * jnp.tanh(c), c


@register("gru")
class GRU(HeadwiseRNN):
    """Head-wise GRU (Cho et al. 2014) in the cuDNN/PyTorch "reset-after" variant.

    Per head, with ``W x_t + b`` from the dense input projection, ``R`` the
    head's recurrent block and ``b_hn`` a recurrent bias of the candidate::

        [r~, u~, n~] = W x_t + b,   [R_r, R_u, R_n] = h_{t-1} R
        r = sigmoid(r~ + R_r),  u = sigmoid(u~ + R_u)
        n = tanh(n~ + r * (R_n + b_hn))      # reset applied AFTER the matmul
        h_t = (1 - u) * n + u * h_{t-1}
        y_t = W_out h_t

    Cho et al.'s original applies the reset before the matmul,
    ``tanh(n~ + (r * h_{t-1}) R_n)``; the reset-after form used here (as in
    cuDNN, PyTorch ``nn.GRU`` and FlashRNN) lets the whole ``h_{t-1} R`` be one
    matmul per step. Biases start at zero; ``h`` starts at zero and restarts at
    zero at a new segment. No mixing matrix (nonlinear).

    Attributes:
      num_heads: number of independent heads (default 4); must divide ``d_model``.
        The other fields (``d_model``, ``dtype``, ``impl``, ``sequence_axis``)
        are those of :class:`HeadwiseRNN`.
    """

    no_decay_params: ClassVar[tuple[str, ...]] = ("bias", "recurrent_bias")
    gates: ClassVar[tuple[str, ...]] = ("r", "u", "n")
    states: ClassVar[tuple[str, ...]] = ("h",)

    def _extra_params(self, heads, head_dim):
        return (param(self, "recurrent_bias", nn.initializers.zeros_init(), (heads, head_dim), ("heads", None)),)

    def _cell(self, pre, rec, state, recurrent_bias):
        (h,) = state
        r = jax.nn.sigmoid(pre[:, :, 0] + rec[:, :, 0])
        u = jax.nn.sigmoid(pre[:, :, 1] + rec[:, :, 1])
        n = jnp.tanh(pre[:, :, 2] + r * (rec[:, :, 2] + recurrent_bias))
        return ((1.0 - u) * n + u * h,)
