"""xLSTM mixers (Beck et al. 2024): sLSTM (scalar memory) and mLSTM (matrix memory).

Both use exponential input gates, kept finite by a stabiliser state ``m``: the
stored states are the true ones times ``exp(-m_t)``, for a running maximum
``m_t`` of the log gate products, so no ``exp`` ever sees a positive argument.
Outputs are ratios in which ``exp(-m_t)`` cancels, so they do not depend on
which ``m`` is used and ``m`` carries no gradient (``stop_gradient`` is exact
here, not an approximation).

* ``slstm``: a nonlinear recurrence (the gates read ``h_{t-1}`` through a
  head-wise block-diagonal ``R``), run with the sequential scan of
  :class:`seqjax.mixers.recurrent.HeadwiseRNN`.
* ``mlstm``: linear in ``v`` given the gates; its mix is the op
  :func:`seqjax.ops.mlstm` (``impl``: the paper's parallel form
  ``"reference"``, the recurrence ``"sequential"`` or the chunkwise form
  ``"chunked"``; ``auto``: one chunk's parallel form up to ``chunk_size``
  positions, chunked beyond), ``step`` its recurrent form
  (:func:`seqjax.ops.mlstm.mlstm_step`); the base class's ``mixing_matrix``
  reads ``M`` off that mix.

``slstm`` calls no ``seqjax.ops`` op (``impl`` is only ``"auto"``). The names
:func:`mlstm_parallel` and :func:`mlstm_recurrent_step` stay importable here
(the op's ``"reference"`` form and :func:`~seqjax.ops.mlstm.mlstm_step`).
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.base import Projection
from seqjax.mixers.common import check_int, dense, param
from seqjax.mixers.recurrent import Heads, HeadwiseRNN
from seqjax.mixers.registry import register
from seqjax.ops.mlstm import mlstm, mlstm_step
from seqjax.types import SegmentIds, Seq, SeqStep

# Forget-gate bias range at init (xLSTM reference code: linspace(3, 6)); sigmoid(3..6)
# = 0.95..0.998, i.e. memories that last tens to hundreds of steps from the start.
FORGET_BIAS_RANGE = (3.0, 6.0)
# Std of the mLSTM input-gate bias at init (xLSTM reference code).
INPUT_BIAS_STD = 0.1


def mlstm_parallel(q: jax.Array, k: jax.Array, v: jax.Array, log_i: jax.Array, log_f: jax.Array,
                   segment_ids: SegmentIds | None = None) -> jax.Array:
    """The mLSTM cell's parallel stabilised form (xLSTM App. B): :func:`seqjax.ops.mlstm` with ``impl="reference"``.

    Args:
      q: ``(b, l, heads, dk)`` queries.
      k: ``(b, l, heads, dk)`` keys (already scaled, e.g. by ``1/sqrt(dk)``).
      v: ``(b, l, heads, dv)`` values.
      log_i: ``(b, l, heads)`` input-gate pre-activations ``i~`` (``i = exp(i~)``).
      log_f: ``(b, l, heads)`` log forget gates (``log sigmoid(f~)``).
      segment_ids: optional ``(b, l)`` ids; a new segment restarts the memory.

    Returns:
      ``h~``: ``(b, l, heads, dv)`` in the dtype of the inputs.
    """
    return mlstm(q, k, v, log_i, log_f, segment_ids=segment_ids, impl="reference")


# One position of the stabilised recurrence (the old name of the op's step).
mlstm_recurrent_step = mlstm_step


@register("slstm")
class SLSTM(HeadwiseRNN):
    """sLSTM (Beck et al. 2024, xLSTM §2.2): scalar memory, exponential gating.

    Per head, with ``W x_t + b`` from the dense input projection and ``R`` the
    head's block of the block-diagonal recurrent matrix::

        [i~, f~, z~, o~] = W x_t + b + h_{t-1} R
        i_t = exp(i~),  f_t = sigmoid(f~),  z_t = tanh(z~),  o_t = sigmoid(o~)
        c_t = f_t c_{t-1} + i_t z_t,   n_t = f_t n_{t-1} + i_t
        h_t = o_t * c_t / n_t,         y_t = W_out h_t

    The forget gate is the sigmoid variant (the paper allows sigmoid or exp).
    It runs in the paper's stabilised form (eqs. 15-17)::

        m_t = max(log f_t + m_{t-1}, i~)
        i'_t = exp(i~ - m_t),  f'_t = exp(log f_t + m_{t-1} - m_t)
        c_t = f'_t c_{t-1} + i'_t z_t,  n_t = f'_t n_{t-1} + i'_t

    with ``m_1 = i~_1`` on an empty state (``n == 0``; as in the reference code),
    which keeps ``n_t >= 1`` so ``c/n`` is always defined. States ``h, c, n, m``
    start at zero and restart at zero at a new segment. Forget-gate biases start
    at ``linspace(3, 6)`` over each head's units, the others at zero.

    No mixing matrix (nonlinear in ``h``).

    Attributes:
      num_heads: number of heads of the block-diagonal ``R`` (default 4); must
        divide ``d_model``. The other fields are those of
        :class:`~seqjax.mixers.recurrent.HeadwiseRNN`.
    """

    no_decay_params: ClassVar[tuple[str, ...]] = ("bias",)
    gates: ClassVar[tuple[str, ...]] = ("i", "f", "z", "o")
    states: ClassVar[tuple[str, ...]] = ("h", "c", "n", "m")

    def _bias_init(self, key, shape, dtype=jnp.float32):
        del key
        heads, _, head_dim = shape
        forget = jnp.linspace(*FORGET_BIAS_RANGE, head_dim, dtype=dtype)
        return jnp.zeros(shape, dtype).at[:, 1].set(jnp.broadcast_to(forget, (heads, head_dim)))

    def _cell(self, pre, rec, state):
        _, c, n, m = state
        g = pre + rec
        log_i = g[:, :, 0]
        log_f = jax.nn.log_sigmoid(g[:, :, 1])
        # An empty state has nothing to decay: -inf makes m_t = i~ and f' = exp(-inf) = 0
        # without overflow (a finite m_{t-1} = 0 could give exp(log f - i~) = inf).
        log_fm = jnp.where(n == 0, -jnp.inf, log_f + m)
        m_new = jax.lax.stop_gradient(jnp.maximum(log_fm, log_i))
        i_s = jnp.exp(log_i - m_new)
        f_s = jnp.exp(log_fm - m_new)
        c = f_s * c + i_s * jnp.tanh(g[:, :, 2])
        n = f_s * n + i_s
        h = jax.nn.sigmoid(g[:, :, 3]) * c / n
        return h, c, n, m_new


@register("mlstm")
class MLSTM(Heads):
    """mLSTM (Beck et al. 2024, xLSTM §2.3): matrix memory, covariance update rule.

    Per head, with ``q, k, v, o~`` from the dense input projection (plus bias),
    ``k`` scaled by ``1/sqrt(head_dim)`` and scalar gates ``i~, f~`` per head::

        C_t = f_t C_{t-1} + i_t k_t v_t^T      (stored as (dk, dv); the paper's v k^T)
        n_t = f_t n_{t-1} + i_t k_t
        h~_t = C_t^T q_t / max(|n_t^T q_t|, 1)
        h_t = sigmoid(o~_t) * h~_t,   y_t = W_out h_t
        i_t = exp(i~_t),  f_t = sigmoid(f~_t)

    Unrolled, ``h~_t = sum_s M_ts v_s`` with the paper's parallel form (App. B)::

        log D_ts = sum_{j=s+1..t} log f_j + i~_s   (s <= t, same segment; else -inf)
        m_t = max_s log D_ts,   S = (Q K^T) * exp(log D - m)
        M = S / max(|S 1|, exp(-m))  (row-wise)

    The mix is :func:`seqjax.ops.mlstm`: that form (``impl="reference"``,
    O(l^2) time and memory), the chunkwise form (``"chunked"``: that form
    inside chunks, the stabilised ``(C, n, m)`` carried across them; O(l·C)),
    or the recurrence (``"sequential"``); ``step`` runs the
    stabilised recurrence (``m_t = max(log f_t + m_{t-1}, i~_t)``, ``C, n``
    scaled by ``exp(-m_t)``, denominator ``max(|n^T q|, exp(-m_t))``). Both
    skip the reference code's ``eps`` in the denominator: ``exp(-m_t) > 0``
    already bounds it away from 0. ``dk = dv = d_model / num_heads``. The
    forget-gate bias starts at ``linspace(3, 6)`` over heads, the input-gate
    bias at N(0, 0.1^2).

    Mixing matrix: ``mixing_matrix`` returns ``M`` above, per head
    ``(b, heads, l, l)``, acting on ``v`` (the projection's values); the output
    gate ``sigmoid(o~)`` and ``W_out`` come after the mix, so they are not in ``M``.

    Attributes:
      d_model: model width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections; the cell runs in float32
        (float64 when ``dtype`` is float64).
      impl: ``impl`` of :func:`seqjax.ops.mlstm` (``"auto"``, ``"reference"``,
        ``"sequential"``, ``"chunked"``).
      sequence_axis: must stay None.
      num_heads: number of heads (default 4); must divide ``d_model``.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.mlstm` (64).
    """

    ops = ("mlstm",)
    resettable = True  # (C, n, m) restart from (0, 0, 0), as at a segment start of the op
    no_decay_params: ClassVar[tuple[str, ...]] = ("bias", "gate_bias")
    values_index = 2  # v in (q, k, v, log i, log f, segment_ids)

    chunk_size: int = 64

    def check_fields(self):
        super().check_fields()
        check_int(self.mixer_name, "chunk_size", self.chunk_size)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        heads, head_dim = self.num_heads, self.head_dim(d)

        def gate_bias_init(key, shape, dtype=jnp.float32):
            i_bias = INPUT_BIAS_STD * jax.random.normal(key, shape[1:], dtype)
            f_bias = jnp.linspace(*FORGET_BIAS_RANGE, shape[1], dtype=dtype)
            return jnp.stack([i_bias, f_bias])

        return {
            "in_proj": dense(4 * d, ("embed", "mlp"), dtype=self.dtype, name="in_proj"),
            "bias": param(self, "bias", nn.initializers.zeros_init(), (heads, 4, head_dim), ("heads", None, None)),
            "gate_proj": dense(2 * heads, ("embed", "heads"), dtype=self.dtype, name="gate_proj"),
            "gate_bias": param(self, "gate_bias", gate_bias_init, (2, heads), (None, "heads")),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj"),
        }

    def _qkvo(self, p, x):
        """q, k, v, o~: ``(..., heads, head_dim)``; i~, log f: ``(..., heads)``; in acc dtype."""
        acc = self.acc()
        xc = x.astype(self.dtype)
        pre = p["in_proj"](xc).reshape(*x.shape[:-1], self.num_heads, 4, -1).astype(acc) + p["bias"].astype(acc)
        q, k, v, o = (pre[..., j, :] for j in range(4))
        k = k / math.sqrt(k.shape[-1])
        gates = p["gate_proj"](xc).reshape(*x.shape[:-1], 2, self.num_heads).astype(acc)
        gates = gates + p["gate_bias"].astype(acc)
        log_i, log_f = gates[..., 0, :], jax.nn.log_sigmoid(gates[..., 1, :])
        return q, k, v, o, log_i, log_f

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        q, k, v, o, log_i, log_f = self._qkvo(p, x)
        return Projection(tokens=(q, k, v, log_i, log_f, segment_ids), rest=o)

    def mix(self, axis, q, k, v, log_i, log_f, segment_ids):
        """``h~ = M v`` per head with the normalised matrix ``M``, by :func:`seqjax.ops.mlstm`."""
        del axis  # never split (sequence_parallel is False)
        return mlstm(q, k, v, log_i, log_f, segment_ids=segment_ids, chunk_size=self.chunk_size,
                     impl=self.impl_for("mlstm"))

    def output(self, p, y, proj: Projection) -> Seq:
        h = jax.nn.sigmoid(proj.rest) * y  # the output gate o~
        return p["out_proj"](h.reshape(h.shape[:-2] + (-1,)).astype(self.dtype)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """Zero state: ``C (b, h, dk, dv)``, ``n (b, h, dk)``, ``m (b, h)``, in float32."""
        del max_length  # the state does not grow
        shape = (batch_size, self.num_heads, self.head_dim(d))
        return {"C": jnp.zeros(shape + shape[-1:], self.acc()), "n": jnp.zeros(shape, self.acc()),
                "m": jnp.zeros(shape[:2], self.acc())}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # The stabilised recurrent form: m = max(log f + m, i~), C, n rescaled by exp(-m).
        q, k, v, o, log_i, log_f = self._qkvo(p, x_t)
        state = tuple(cache[key].astype(q.dtype) for key in ("C", "n", "m"))
        h, c, n, m = mlstm_step(q, k, v, log_i, log_f, *state)
        return self.output(p, h, Projection(rest=o)), {"C": c, "n": n, "m": m}
