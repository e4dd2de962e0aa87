"""Head-wise nonlinear recurrences: LSTM and GRU in the FlashRNN layout.

FlashRNN (Pöppel et al. 2024) splits the ``d_model`` hidden units into
``num_heads`` heads; each head is a small, independent recurrent cell whose
recurrent matrix only mixes units of its own head, so the full recurrent matrix
is block-diagonal: ``R: (heads, head_dim, gates * head_dim)``. The input
projection ``W: (d_model, gates * d_model)`` is dense over the full width and is
applied to the whole sequence at once; only ``h_{t-1} R`` (one small matmul per
head) stays inside the time loop. The recurrence is nonlinear in ``h``, so the
loop is a sequential ``lax.scan`` (there is no parallel form and no mixing
matrix).

:class:`HeadwiseRNN` holds the shared machinery (parameters, scan, segment
resets, ``step``/``init_cache``/``state_size``); :class:`LSTM` and :class:`GRU`
only define the cell. The xLSTM ``slstm`` (``seqjax/mixers/xlstm.py``) reuses it.

Parameter layout (all float32): ``in_proj`` (dense, ``d -> gates * d``, no
bias), ``bias: (heads, gates, head_dim)``, ``recurrent: (heads, head_dim, gates *
head_dim)`` and ``out_proj`` (dense, ``d -> d``). The input pre-activations are
read as ``(heads, gates, head_dim)`` per position, and ``h R`` likewise.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.common import dense
from seqjax.mixers.registry import register
from seqjax.ops.common import accum_dtype, segment_starts
from seqjax.types import SegmentIds, Seq, SeqStep

Cache = dict[str, jax.Array]

# Per-head LeCun normal over the head's fan-in: every head is its own small RNN.
RECURRENT_INIT = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
# FlashRNN / Gers et al.: a positive forget bias keeps memories early in training.
LSTM_FORGET_BIAS = 1.0


def check_heads(name: str, d: int, num_heads: int) -> int:
    """Returns ``d // num_heads``; raises a ValueError if the heads do not divide ``d``.

    Args:
      name: the mixer, for the message.
      d: the model width.
      num_heads: the number of heads.

    Returns:
      The head dimension.
    """
    if num_heads < 1 or d % num_heads:
        raise ValueError(
            f"{name}: num_heads={num_heads} must be a positive divisor of d_model={d}"
        )
    return d // num_heads


def model_width(module: nn.Module, x: jax.Array | None = None) -> int:
    """The model width: ``d_model`` if set, else from ``x``, else from ``out_proj``.

    Args:
      module: a mixer with a ``d_model`` field and an ``out_proj`` dense layer.
      x: an input whose last axis is the width, or None.

    Returns:
      The width ``d``.
    """
    name = type(module).__name__
    if x is not None:
        if module.d_model is not None and x.shape[-1] != module.d_model:
            raise ValueError(
                f"{name}: x has shape {x.shape}; expected last axis d_model={module.d_model}"
            )
        return x.shape[-1]
    if module.d_model is not None:
        return module.d_model
    params = module.variables.get("params", {})
    if "out_proj" not in params:
        raise ValueError(f"{name}: d_model is None and the module has no parameters to infer it from")
    return nn.meta.unbox(params["out_proj"]["kernel"]).shape[-1]


def check_seq(name: str, x: jax.Array, segment_ids: jax.Array | None) -> None:
    """Validates ``x: (b, l, d)`` and ``segment_ids: (b, l)``."""
    if x.ndim != 3:
        raise ValueError(f"{name}: x must have shape (batch, length, d_model), got {x.shape}")
    if segment_ids is not None and segment_ids.shape != x.shape[:2]:
        raise ValueError(
            f"{name}: segment_ids has shape {segment_ids.shape}; expected (batch, length) = {x.shape[:2]}"
        )


class HeadwiseRNN(nn.Module):
    """Shared machinery of head-wise nonlinear RNNs (subclasses define the cell).

    Subclasses set ``gates`` (names of the pre-activation blocks, in layout
    order) and ``states`` (names of the carried states; ``states[0]`` is ``h``,
    the output and the recurrent input), and implement ``_cell``.

    Attributes:
      d_model: model width; None takes it from the input (or the parameters).
      num_heads: number of independent heads; must divide ``d_model``.
      dtype: compute dtype of the projections; the recurrence runs in float32
        (or float64 when ``dtype`` is float64).
    """

    d_model: int | None = None
    num_heads: int = 4
    dtype: Any = jnp.float32

    gates: ClassVar[tuple[str, ...]] = ()
    states: ClassVar[tuple[str, ...]] = ()

    # -- hooks -------------------------------------------------------------
    def _bias_init(self, key, shape, dtype=jnp.float32):
        """Initial input bias ``(heads, gates, head_dim)``; zeros by default."""
        del key
        return jnp.zeros(shape, dtype)

    def _extra_params(self, heads: int, head_dim: int) -> dict[str, jax.Array]:
        """Further parameters of the cell (called inside the compact method)."""
        del heads, head_dim
        return {}

    def _cell(self, pre, rec, state, extra):
        """One step: ``pre``/``rec`` ``(b, heads, gates, head_dim)`` -> new state tuple."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------
    @nn.compact
    def _parts(self, d: int):
        head_dim = check_heads(type(self).__name__, d, self.num_heads)
        gates = len(self.gates)
        in_proj = dense(gates * d, ("embed", "mlp"), dtype=self.dtype, name="in_proj")
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(self._bias_init, ("heads", None, None)),
            (self.num_heads, gates, head_dim),
            jnp.float32,
        )
        recurrent = self.param(
            "recurrent",
            nn.with_logical_partitioning(RECURRENT_INIT, ("heads", None, None)),
            (self.num_heads, head_dim, gates * head_dim),
            jnp.float32,
        )
        extra = self._extra_params(self.num_heads, head_dim)
        out_proj = dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj")
        return in_proj, bias, recurrent, extra, out_proj

    def _acc(self):
        return accum_dtype(self.dtype)

    def _pre(self, in_proj, bias, x):
        # Input pre-activations for every position at once (the dense, parallel part).
        pre = in_proj(x.astype(self.dtype))
        pre = pre.reshape(*x.shape[:-1], self.num_heads, len(self.gates), -1)
        return pre.astype(self._acc()) + bias.astype(self._acc())

    def _step_state(self, pre_t, state, recurrent, extra):
        acc = self._acc()
        h = state[0]
        rec = jnp.einsum("bhd,hde->bhe", h, recurrent.astype(acc))
        rec = rec.reshape(h.shape[0], self.num_heads, len(self.gates), -1)
        extra = {k: v.astype(acc) for k, v in extra.items()}
        return self._cell(pre_t, rec, state, extra)

    def _zero_state(self, batch: int, head_dim: int):
        shape = (batch, self.num_heads, head_dim)
        return tuple(jnp.zeros(shape, self._acc()) for _ in self.states)

    def __call__(
        self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True
    ) -> Seq:
        """Runs the recurrence over the sequence.

        Args:
          x: ``(b, l, d)`` input.
          segment_ids: ``(b, l)`` ids of packed sequences; the state restarts
            from zero where the id changes.
          deterministic: unused (no dropout).

        Returns:
          ``(b, l, d)`` output in ``dtype``.
        """
        del deterministic
        name = type(self).__name__
        check_seq(name, x, segment_ids)
        batch, length, d = x.shape
        in_proj, bias, recurrent, extra, out_proj = self._parts(model_width(self, x))
        pre = jnp.moveaxis(self._pre(in_proj, bias, x), 1, 0)  # time-major for the scan
        starts = None if segment_ids is None else segment_starts(segment_ids).T

        def body(state, inputs):
            pre_t, start_t = inputs
            if start_t is not None:
                # A new packed sequence starts from the zero state.
                state = tuple(jnp.where(start_t[:, None, None], jnp.zeros_like(s), s) for s in state)
            state = self._step_state(pre_t, state, recurrent, extra)
            return state, state[0]

        init = self._zero_state(batch, d // self.num_heads)
        _, hs = jax.lax.scan(body, init, (pre, starts))
        h = jnp.moveaxis(hs, 0, 1).reshape(batch, length, d)
        return out_proj(h.astype(self.dtype)).astype(self.dtype)

    def init_cache(self, batch_size: int, max_length: int | None = None) -> Cache:
        """Zero recurrent state for ``step``.

        Args:
          batch_size: number of sequences.
          max_length: unused (the state does not grow).

        Returns:
          A dict mapping each name in ``states`` to a ``(b, heads, head_dim)``
          float32 array.
        """
        del max_length
        d = model_width(self)
        head_dim = check_heads(type(self).__name__, d, self.num_heads)
        return dict(zip(self.states, self._zero_state(batch_size, head_dim)))

    def step(self, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One token of the recurrence.

        Args:
          x_t: ``(b, d)`` input at the current position.
          cache: the state from ``init_cache`` or the previous ``step``.

        Returns:
          ``(y_t, cache)`` with ``y_t: (b, d)`` in ``dtype``.
        """
        name = type(self).__name__
        if x_t.ndim != 2:
            raise ValueError(f"{name}.step: x_t must have shape (batch, d_model), got {x_t.shape}")
        missing = set(self.states) - set(cache)
        if missing:
            raise ValueError(f"{name}.step: cache lacks {sorted(missing)}; use init_cache")
        in_proj, bias, recurrent, extra, out_proj = self._parts(model_width(self, x_t))
        state = tuple(cache[k].astype(self._acc()) for k in self.states)
        state = self._step_state(self._pre(in_proj, bias, x_t), state, recurrent, extra)
        y = out_proj(state[0].reshape(x_t.shape).astype(self.dtype)).astype(self.dtype)
        return y, dict(zip(self.states, state))

    def state_size(self, length: int | None = None) -> int:
        """Bytes of recurrent state per sequence: ``len(states) * d_model`` floats.

        Args:
          length: unused (the state does not grow with the sequence).

        Returns:
          The size in bytes.
        """
        del length
        return len(self.states) * model_width(self) * jnp.dtype(self._acc()).itemsize


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
    zero and restart at zero at a new segment.

    Attributes:
      d_model: model width; None takes it from the input (or the parameters).
      num_heads: number of independent heads (default 4); must divide ``d_model``.
      dtype: compute dtype of the projections; the recurrence runs in float32.
    """

    gates: ClassVar[tuple[str, ...]] = ("i", "f", "z", "o")
    states: ClassVar[tuple[str, ...]] = ("h", "c")

    def _bias_init(self, key, shape, dtype=jnp.float32):
        del key
        return jnp.zeros(shape, dtype).at[:, 1].set(LSTM_FORGET_BIAS)

    def _cell(self, pre, rec, state, extra):
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
    zero at a new segment.

    Attributes:
      d_model: model width; None takes it from the input (or the parameters).
      num_heads: number of independent heads (default 4); must divide ``d_model``.
      dtype: compute dtype of the projections; the recurrence runs in float32.
    """

    gates: ClassVar[tuple[str, ...]] = ("r", "u", "n")
    states: ClassVar[tuple[str, ...]] = ("h",)

    def _extra_params(self, heads, head_dim):
        b_hn = self.param(
            "recurrent_bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("heads", None)),
            (heads, head_dim),
            jnp.float32,
        )
        return {"recurrent_bias": b_hn}

    def _cell(self, pre, rec, state, extra):
        (h,) = state
        r = jax.nn.sigmoid(pre[:, :, 0] + rec[:, :, 0])
        u = jax.nn.sigmoid(pre[:, :, 1] + rec[:, :, 1])
        n = jnp.tanh(pre[:, :, 2] + r * (rec[:, :, 2] + extra["recurrent_bias"]))
        return ((1.0 - u) * n + u * h,)
