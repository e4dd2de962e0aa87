"""xLSTM residual blocks (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", §2.4).

The paper stacks two kinds of residual block. In seqjax the model's block
(``seqjax/models/backbone.py``) already does the pre-LayerNorm and the residual
add, ``x + mixer(LN(x))``; each mixer here is the part inside that residual.
Use them with ``channel="none"`` (the ``xlstm71``/``xlstm11`` presets of
``seqjax.config`` set it): the blocks carry their own projections.

* ``mlstm_block``, "pre up-projection" (§2.4; the layout of the authors' code): up-project
  to ``2 x expand·d``, a causal conv + swish branch feeding q and k, values from
  the pre-conv branch, the mLSTM cell (:func:`seqjax.ops.mlstm`, ``impl`` and
  ``chunk_size`` fields; ``step``: :func:`seqjax.ops.mlstm.mlstm_step`), a head-wise
  GroupNorm, a learnable skip from the conv branch, the swish output gate of
  the other branch, and the down-projection.
* ``slstm_block``, "post up-projection" (§2.4): an
  optional causal conv + swish feeding the input and forget gates, the sLSTM
  cell (:class:`seqjax.mixers.xlstm.SLSTM`'s cell and scan) with head-wise
  block-diagonal input and recurrent weights, a head-wise GroupNorm, then a
  GeLU-gated MLP with up-projection factor 4/3.

Both are nonlinear in every projection of ``x`` (the gates read the values,
the GroupNorm follows the cell), so neither has a mixing matrix. The short
convolutions stop at segment starts and the cells restart there, so packed
sequences equal separate runs; ``step`` keeps the conv window and the cell state.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.base import Projection
from seqjax.mixers.common import check_divides, check_int, check_number, dense, gelu, param, uniform_init
from seqjax.mixers.mamba_blocks import init_conv_buffer, short_conv, short_conv_step
from seqjax.mixers.recurrent import RECURRENT_INIT, Heads
from seqjax.mixers.registry import register
from seqjax.mixers.xlstm import FORGET_BIAS_RANGE, INPUT_BIAS_STD, SLSTM
from seqjax.ops.mlstm import mlstm, mlstm_step
from seqjax.types import SegmentIds, Seq, SeqStep

# eps of the head-wise GroupNorm (the xLSTM code's MultiHeadLayerNorm).
GROUP_NORM_EPS = 1e-5


def small_init(d: int):
    """``N(0, 2 / (5 d))``: the xLSTM code's "small init" (Nguyen & Salazar 2019) for width ``d``."""
    std = math.sqrt(2.0 / (5.0 * d))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) * std

    return init


def headwise_norm(h: jax.Array, scale: jax.Array) -> jax.Array:
    """GroupNorm with one group per head: a LayerNorm over each head's units, then a scale.

    Args:
      h: ``(..., heads, head_dim)``.
      scale: ``(heads * head_dim,)`` learned scale (no bias, as in the paper's code).

    Returns:
      ``(..., heads * head_dim)`` in ``h``'s dtype.
    """
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
    y = (h - mean) * jax.lax.rsqrt(var + GROUP_NORM_EPS)
    return y.reshape(h.shape[:-2] + (-1,)) * scale.astype(h.dtype)


def _conv_params(module, kernel: int, channels: int) -> tuple[jax.Array, jax.Array]:
    # PyTorch's default init of a depthwise conv, as Mamba's.
    bound = 1.0 / math.sqrt(kernel)
    return (param(module, "conv_weight", uniform_init(bound), (kernel, channels), (None, "mlp")),
            param(module, "conv_bias", uniform_init(bound), (channels,), ("mlp",)))


@register("mlstm_block")
class MLSTMBlock(Heads):
    """The mLSTM block (Beck et al. 2024, §2.4), causal.

    With ``E = expand``, ``D = E·d``, ``H = num_heads``, ``P = D / H``, on the
    (already LayerNorm-ed) input ``x``::

        [a, z] = W_up x                              a, z ∈ R^D
        u      = swish(conv(a))                      causal depthwise, d_conv taps, bias
        q = Bq u,  k = Bk u,  v = Bv a               block-diagonal, blocks of qkv_blocksize
        [i~, f~] = W_g [q; k; v] + b_g               one pair per head
        h~     = mLSTM(q, k / sqrt(P), v, i~, log sigmoid(f~))   per head
        y      = W_down ((GN(h~) + s ⊙ u) ⊙ swish(z))

    ``mLSTM`` is the cell of :class:`~seqjax.mixers.xlstm.MLSTM` without its
    output gate (``swish(z)`` is the block's output gate): :func:`seqjax.ops.mlstm`
    for a sequence, its recurrent form in ``step``. ``GN`` is
    the head-wise GroupNorm (a LayerNorm over each head's ``P`` units, learned
    scale, no bias); ``s`` the learnable skip (starts at 1). The gates read
    ``[q; k; v]`` and start with zero weights, forget bias ``linspace(3, 6)``
    over heads and input bias ``N(0, 0.1²)`` (the authors' code, which the paper
    does not spell out). ``W_up``, ``W_down`` and the dense layers have no
    bias; the q, k, v blocks start at ``N(0, 2/(5d))``.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of projections; the cell, the conv and the norm run
        in float32 (float64 for float64).
      impl: ``impl`` of :func:`seqjax.ops.mlstm` (``"auto"``, ``"reference"``,
        ``"sequential"``, ``"chunked"``).
      sequence_axis: must stay None.
      num_heads: ``H``, heads of the cell (4); must divide ``expand·d_model``.
      expand: ``E``, the up-projection factor (2).
      d_conv: taps of the causal conv (4).
      qkv_blocksize: block size of the block-diagonal q, k, v projections (4);
        must divide ``expand·d_model``.
      chunk_size: ``chunk_size`` of :func:`seqjax.ops.mlstm` (64).
    """

    ops = ("mlstm",)
    resettable = True  # conv window and (C, n, m) restart from zeros, as at a segment start

    # Rank <= 1 leaves (norm scale, skip, conv bias) are undecayed anyway (models/param_groups.py).
    no_decay_params: ClassVar[tuple[str, ...]] = ("gate_bias",)

    expand: int = 2
    d_conv: int = 4
    qkv_blocksize: int = 4
    chunk_size: int = 64

    def check_fields(self):
        for field in ("num_heads", "expand", "d_conv", "qkv_blocksize", "chunk_size"):
            check_int(self.mixer_name, field, getattr(self, field))
        if self.d_model is not None:
            self.head_dim(self.d_model)

    def head_dim(self, d: int) -> int:
        """``P = expand·d / num_heads``; ConfigError unless both the heads and the q/k/v blocks divide ``expand·d``."""
        inner = self.expand * d
        check_divides(self.mixer_name, "qkv_blocksize", self.qkv_blocksize, inner, "expand*d_model")
        return check_divides(self.mixer_name, "num_heads", self.num_heads, inner, "expand*d_model")

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        heads, inner, bs = self.num_heads, self.expand * d, self.qkv_blocksize
        self.head_dim(d)

        def gate_bias_init(key, shape, dtype=jnp.float32):
            i_bias = INPUT_BIAS_STD * jax.random.normal(key, shape[1:], dtype)
            return jnp.stack([i_bias, jnp.linspace(*FORGET_BIAS_RANGE, shape[1], dtype=dtype)])

        conv_weight, conv_bias = _conv_params(self, self.d_conv, inner)
        return {
            "in_proj": dense(2 * inner, ("embed", "mlp"), dtype=self.dtype, name="in_proj"),
            "conv_weight": conv_weight,
            "conv_bias": conv_bias,
            "qkv": param(self, "qkv", small_init(d), (3, inner // bs, bs, bs), (None, "mlp", None, None)),
            "gate_proj": dense(2 * heads, ("mlp", "heads"), dtype=self.dtype, name="gate_proj",
                               kernel_init=nn.initializers.zeros_init()),
            "gate_bias": param(self, "gate_bias", gate_bias_init, (2, heads), (None, "heads")),
            "norm_scale": param(self, "norm_scale", nn.initializers.ones_init(), (inner,), ("mlp",)),
            "skip": param(self, "skip", nn.initializers.ones_init(), (inner,), ("mlp",)),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj"),
        }

    def _cell_inputs(self, p, a, u):
        """q, k (scaled), v ``(..., H, P)`` and i~, log f ``(..., H)`` from the branches ``a`` and ``u``."""
        acc, bs = self.acc(), self.qkv_blocksize
        w = p["qkv"].astype(self.dtype)

        def blocks(x, j):  # block-diagonal projection: one (bs, bs) matrix per block of bs units
            xb = x.astype(self.dtype).reshape(*x.shape[:-1], -1, bs)
            return jnp.einsum("...ni,nij->...nj", xb, w[j]).reshape(x.shape).astype(acc)

        q, k, v = blocks(u, 0), blocks(u, 1), blocks(a, 2)
        gates = p["gate_proj"](jnp.concatenate([q, k, v], axis=-1).astype(self.dtype)).astype(acc)
        gates = gates.reshape(*gates.shape[:-1], 2, self.num_heads) + p["gate_bias"].astype(acc)
        heads = lambda t: t.reshape(*t.shape[:-1], self.num_heads, -1)  # noqa: E731
        q, k, v = heads(q), heads(k), heads(v)
        k = k / math.sqrt(k.shape[-1])  # the paper's 1/sqrt(d_k); the gates saw the unscaled k
        return q, k, v, gates[..., 0, :], jax.nn.log_sigmoid(gates[..., 1, :])

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        a, z = jnp.split(p["in_proj"](x.astype(self.dtype)), 2, axis=-1)
        u = jax.nn.silu(short_conv(a, p["conv_weight"], p["conv_bias"], segment_ids=segment_ids))
        q, k, v, log_i, log_f = self._cell_inputs(p, a, u)
        return Projection(tokens=(q, k, v, log_i, log_f, segment_ids), rest=(u, z))

    def mix(self, axis, q, k, v, log_i, log_f, segment_ids):
        del axis  # never split (sequence_parallel is False)
        return mlstm(q, k, v, log_i, log_f, segment_ids=segment_ids, chunk_size=self.chunk_size,
                     impl=self.impl_for("mlstm"))

    def output(self, p, y, proj: Projection) -> Seq:
        u, z = proj.rest
        acc = self.acc()
        h = headwise_norm(y.astype(acc), p["norm_scale"]) + p["skip"].astype(acc) * u.astype(acc)
        h = h * jax.nn.silu(z.astype(acc))
        return p["out_proj"](h.astype(self.dtype)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """The conv window ``(b, d_conv-1, E·d)`` in ``dtype``; the cell's ``C, n, m`` in float32."""
        del max_length  # the state does not grow
        shape = (batch_size, self.num_heads, self.head_dim(d))
        return {"conv": init_conv_buffer(batch_size, self.d_conv, self.expand * d, self.dtype),
                "C": jnp.zeros(shape + shape[-1:], self.acc()), "n": jnp.zeros(shape, self.acc()),
                "m": jnp.zeros(shape[:2], self.acc())}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        a, z = jnp.split(p["in_proj"](x_t.astype(self.dtype)), 2, axis=-1)
        conv, window = short_conv_step(a, cache["conv"], p["conv_weight"], p["conv_bias"])
        u = jax.nn.silu(conv)
        q, k, v, log_i, log_f = self._cell_inputs(p, a, u)
        state = tuple(cache[key].astype(q.dtype) for key in ("C", "n", "m"))
        h, c, n, m = mlstm_step(q, k, v, log_i, log_f, *state)
        return self.output(p, h, Projection(rest=(u, z))), {"conv": window, "C": c, "n": n, "m": m}


@register("slstm_block")
class SLSTMBlock(SLSTM):
    """The sLSTM block (Beck et al. 2024, §2.4), causal.

    With ``H = num_heads`` heads of ``P = d / H`` units, on the (already
    LayerNorm-ed) input ``x``::

        u = swish(conv(x))  (u = x when d_conv = 0)       causal depthwise, d_conv taps, bias
        [i~, f~] = U_if u + b_if,   [z~, o~] = U_zo x + b_zo   head-wise block-diagonal
        h_t = sLSTM(i~, f~, z~, o~; h_{t-1} R)            R block-diagonal per head
        g = GN(h)                                         head-wise GroupNorm (scale, no bias)
        y = W_down (gelu(W_gate g) ⊙ (W_up g))            hidden round(proj_factor·d)

    The cell is :class:`~seqjax.mixers.xlstm.SLSTM`'s (exponential input gate,
    sigmoid forget gate, normaliser state, stabiliser; same bias init), run by
    the same scan, with the block's pre-activations in place of its dense input
    projection and the block's norm and gated MLP in place of its output
    projection. GELU is the exact (erf) one. The MLP sits inside this one
    residual block, as §2.4 describes a post up-projection block (summarise
    the past, then up-project, activate, down-project); the block figure itself
    was not re-checked for a second residual. The authors' code gives the MLP
    its own pre-LayerNorm and residual; a mixer inside one residual cannot
    express that (with ``channel="mlp"`` the model's own MLP branch comes
    closest, but as an ungated MLP in every layer).

    Attributes:
      num_heads: ``H`` (4); must divide ``d_model``.
      d_conv: taps of the causal conv before the input and forget gates (4);
        0: no conv.
      proj_factor: hidden width of the gated MLP over ``d_model`` (4/3).
        The other fields (``d_model``, ``dtype``, ``impl``, ``sequence_axis``)
        are those of :class:`~seqjax.mixers.recurrent.HeadwiseRNN`.
    """

    d_conv: int = 4
    proj_factor: float = 4.0 / 3.0

    def check_fields(self):
        super().check_fields()
        check_int(self.mixer_name, "d_conv", self.d_conv, minimum=0)
        check_number(self.mixer_name, "proj_factor", self.proj_factor, low=0.0, open_low=True)

    def hidden(self, d: int) -> int:
        """Hidden width of the gated MLP: ``round(proj_factor·d)``, at least 1."""
        return max(1, int(round(self.proj_factor * d)))

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        heads, head_dim = self.num_heads, self.head_dim(d)
        parts = {}
        if self.d_conv:
            parts["conv_weight"], parts["conv_bias"] = _conv_params(self, self.d_conv, d)
        hidden = self.hidden(d)
        return parts | {
            "if_proj": param(self, "if_proj", small_init(d), (heads, head_dim, 2, head_dim), ("heads", None, None, None)),
            "zo_proj": param(self, "zo_proj", small_init(d), (heads, head_dim, 2, head_dim), ("heads", None, None, None)),
            "bias": param(self, "bias", self._bias_init, (heads, 4, head_dim), ("heads", None, None)),
            "recurrent": param(self, "recurrent", RECURRENT_INIT, (heads, head_dim, 4 * head_dim),
                               ("heads", None, None)),
            "norm_scale": param(self, "norm_scale", nn.initializers.ones_init(), (d,), ("embed",)),
            "up_proj": dense(2 * hidden, ("embed", "mlp"), dtype=self.dtype, name="up_proj"),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj"),
        }

    def _gate_pre(self, p, x, u):
        """``(..., H, 4, P)`` pre-activations (without ``h R``): i, f from ``u``; z, o from ``x``."""
        def headwise(t, w):
            t = t.astype(self.dtype).reshape(*t.shape[:-1], self.num_heads, -1)
            return jnp.einsum("...hi,higj->...hgj", t, w.astype(self.dtype)).astype(self.acc())

        pre = jnp.concatenate([headwise(u, p["if_proj"]), headwise(x, p["zo_proj"])], axis=-2)
        return pre + p["bias"].astype(self.acc())

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        u = x
        if self.d_conv:
            u = jax.nn.silu(short_conv(x.astype(self.dtype), p["conv_weight"], p["conv_bias"],
                                       segment_ids=segment_ids))
        return Projection(tokens=(self._gate_pre(p, x, u), segment_ids), shared=(p["recurrent"],))

    def output(self, p, y, proj: Projection) -> Seq:
        g = headwise_norm(y.astype(self.acc()), p["norm_scale"]).astype(self.dtype)
        gate, up = jnp.split(p["up_proj"](g), 2, axis=-1)
        return p["out_proj"](gelu(gate) * up).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """The cell's ``h, c, n, m`` ``(b, H, P)`` in float32, and the conv window ``(b, d_conv-1, d)`` in ``dtype``."""
        cache = super().empty_cache(batch_size, d, max_length)
        if self.d_conv:
            cache["conv"] = init_conv_buffer(batch_size, self.d_conv, d, self.dtype)
        return cache

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        new = {}
        u = x_t
        if self.d_conv:
            conv, new["conv"] = short_conv_step(x_t.astype(self.dtype), cache["conv"], p["conv_weight"],
                                                p["conv_bias"])
            u = jax.nn.silu(conv)
        state = tuple(cache[k].astype(self.acc()) for k in self.states)
        state = self._step_state(self._gate_pre(p, x_t, u), state, p["recurrent"], ())
        new.update(zip(self.states, state))
        return self.output(p, state[0], Projection()), new

