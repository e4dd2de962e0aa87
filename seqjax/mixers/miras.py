"""Miras' deep memories: Moneta, Yaad and Memora.

Behrouz, Razaviyayn, Zhong and Mirrokni 2025, "It's All Connected: A Journey
Through Test-Time Memorization, Attentional Bias, Retention, and Online
Optimization". Each head holds a memory, the 2-layer residual MLP ``M(x) = x
+ W1 silu(W2 x)``, trained at test time by one gradient step per token on an
*attentional bias* ``ℓ(M(k_t), v_t)`` with a *retention* term; the output
reads the updated memory at the query (:func:`seqjax.ops.memory_update`)::

    A_t = α_t A_{t−1} − η_t ∇_W ℓ(M_{W_{t−1}}(k_t), v_t),   W_t = φ(A_t),   o_t = M_{W_t}(q_t)

  * ``moneta``: ℓp bias ``‖e‖_p^p`` (p = 3), ℓq retention ``φ(A) = A /
    ‖A‖_q^{q−2}`` (q = 4);
  * ``yaad``: coordinate-wise Huber bias (ℓ2 inside ``|e| ≤ δ_t``, ℓ1
    outside; ``δ_t = softplus(x W_δ + b_δ)`` per head), ℓ2 retention (weight
    decay ``α_t``);
  * ``memora``: ℓ2 bias, KL retention: ``W_t = Softmax(α_t log W_{t−1} − η_t
    ∇ℓ)`` per row of each weight matrix (the weights stay on the simplex).

Around the memory, the house layout of the delta-rule layers
(:mod:`seqjax.mixers.delta`): q, k, v projections, a causal depthwise short
convolution and SiLU, L2-normalised q and k, per head ``η_t = max_lr · sigmoid(x
W_η)`` and ``log α_t = −exp(A_log) softplus(x W_a + dt_bias)`` (Mamba-2's
parameterisation), a per-head RMSNorm of the output and the output
projection. The memory's initial weights ``memory_w1``, ``memory_w2`` are
learned (per head, shared by the batch); a segment start restarts from them.

The mixer's default runs the paper's chunk-wise training (``chunk_size``
tokens' gradients taken at the chunk's entry state: an approximation of the
recurrence for ``chunk_size > 1``); ``step`` runs the exact recurrence, so it
equals ``__call__`` with ``chunk_size=1`` or ``impl="sequential"``. The mix is
nonlinear in v (``values_index = None``: no mixing matrix).
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import (
    check_divides, check_int, check_number, dense, head_rms_norm, l2_normalize, param, uniform_init)
from seqjax.mixers.mamba_blocks import (
    a_log_init, check_a_range, check_dt_range, dt_bias_init, init_conv_buffer, short_conv, short_conv_step)
from seqjax.mixers.registry import register
from seqjax.ops.memory_update import memory_update
from seqjax.types import SegmentIds, Seq, SeqStep

SOFTPLUS_INV_1 = math.log(math.expm1(1.0))


class _MirasBase(Mixer):
    """What Moneta, Yaad and Memora share (not registered); subclasses set ``loss`` and ``retention``.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections and the convolution; the
        memory update, the norm and the gates run in float32 (float64 for a
        float64 ``dtype``).
      impl: ``impl`` of :func:`seqjax.ops.memory_update` (``"auto"``:
        chunked, ``"sequential"``, ``"chunked"``).
      sequence_axis: must be None (the chunk transition is nonlinear).
      num_heads: heads; must divide ``d_model`` (``dk = dv = d_model / h``).
      memory_expand: the memory's hidden width ``dh = memory_expand · dk``.
      d_conv: taps of the short convolution (4).
      norm_eps: epsilon of the per-head output RMSNorm.
      chunk_size: tokens per chunk of the chunk-wise training.
      max_lr: the largest inner learning rate, ``η_t = max_lr · sigmoid(x W_η)``.
      A_init_range: the ``U[low, high]`` of ``exp(A_log)`` (retention gate).
      dt_min: smallest initial ``softplus(dt_bias)``.
      dt_max: largest initial ``softplus(dt_bias)``.
      dt_init_floor: lower clamp of the initial ``softplus(dt_bias)``.
    """

    ops = ("memory_update",)
    ssm_params = ("A_log", "dt_bias")
    values_index = None
    loss: ClassVar[str] = "l2"
    retention: ClassVar[str] = "l2"

    num_heads: int = 4
    memory_expand: int = 2
    d_conv: int = 4
    norm_eps: float = 1e-5
    chunk_size: int = 16
    max_lr: float = 0.1
    A_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_heads", self.num_heads)
        check_int(name, "memory_expand", self.memory_expand)
        check_int(name, "d_conv", self.d_conv)
        check_number(name, "norm_eps", self.norm_eps, low=0, open_low=True)
        check_int(name, "chunk_size", self.chunk_size)
        check_number(name, "max_lr", self.max_lr, low=0, open_low=True)
        check_a_range(name, self.A_init_range)
        check_dt_range(name, self.dt_min, self.dt_max, self.dt_init_floor)
        if self.d_model is not None:
            self._dims(self.d_model)

    def _dims(self, d: int) -> tuple[int, int, int]:
        """``(h, dk, dh)``; ``dv = dk`` (the residual memory)."""
        dk = check_divides(self.mixer_name, "num_heads", self.num_heads, d, "d_model")
        return self.num_heads, dk, self.memory_expand * dk

    def _op_kwargs(self) -> dict:
        """The attentional bias's and retention's options of :func:`memory_update`."""
        return dict(loss=self.loss, retention=self.retention)

    def _extra_parts(self, d: int, h: int) -> dict:
        """Hook: parameters of one subclass (Yaad's threshold)."""
        return {}

    def _delta(self, p, x):
        """``(…, h)`` Huber thresholds, or None."""
        return None

    def _memory_init(self, std: float):
        """Initialiser of the raw state ``A_0`` whose weights ``φ(A_0)`` are ``N(0, std²)``: here φ = identity."""
        return nn.initializers.normal(std)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, dk, dh = self._dims(d)
        conv_dim = 3 * h * dk
        # PyTorch's default conv init: U(±1/sqrt(fan_in)), fan_in = taps for a depthwise conv.
        bound = 1.0 / math.sqrt(self.d_conv)
        parts = {name: dense(h * dk, ("embed", "mlp"), dtype=self.dtype, name=name)
                 for name in ("q_proj", "k_proj", "v_proj")}
        parts["b_proj"] = dense(h, ("embed", "heads"), dtype=self.dtype, name="b_proj")
        parts["a_proj"] = dense(h, ("embed", "heads"), dtype=self.dtype, name="a_proj")
        parts["dt_bias"] = param(self, "dt_bias", dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor),
                                 (h,), ("heads",))
        parts["A_log"] = param(self, "A_log", a_log_init(*self.A_init_range), (h,), ("heads",))
        parts["conv_weight"] = param(self, "conv_weight", uniform_init(bound), (self.d_conv, conv_dim), (None, "mlp"))
        # The memory's initial weights: W1 small so that M starts near the identity (the residual).
        parts["memory_w1"] = param(self, "memory_w1", self._memory_init(0.02), (h, dk, dh), ("heads", None, None))
        parts["memory_w2"] = param(self, "memory_w2", self._memory_init(dk**-0.5), (h, dh, dk), ("heads", None, None))
        parts["norm"] = param(self, "norm", nn.initializers.ones_init(), (dk,), (None,))
        parts["out_proj"] = dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj")
        parts.update(self._extra_parts(d, h))
        parts["dims"] = (h, dk, dh)
        return parts

    def _pre_conv(self, p, x):
        x = x.astype(self.dtype)
        return jnp.concatenate([p[n](x) for n in ("q_proj", "k_proj", "v_proj")], axis=-1)

    def _post_conv(self, p, qkv, x):
        """``(q, k, v, η, log α, δ)`` in the accumulation dtype."""
        h, dk, _ = p["dims"]
        acc = self.acc()
        qkv = jax.nn.silu(qkv.astype(self.dtype)).astype(acc)
        q, k, v = jnp.split(qkv, [h * dk, 2 * h * dk], axis=-1)
        lead = q.shape[:-1]
        q, k, v = (l2_normalize(q.reshape(lead + (h, dk))), l2_normalize(k.reshape(lead + (h, dk))),
                   v.reshape(lead + (h, dk)))
        xd = x.astype(self.dtype)
        lr = self.max_lr * jax.nn.sigmoid(p["b_proj"](xd).astype(acc))
        a = p["a_proj"](xd).astype(acc) + p["dt_bias"].astype(acc)
        log_decay = -jnp.exp(p["A_log"].astype(acc)) * jax.nn.softplus(a)
        return q, k, v, lr, log_decay, self._delta(p, x)

    def _params0(self, p, batch):
        acc = self.acc()
        return tuple(jnp.broadcast_to(p[n].astype(acc), (batch,) + p[n].shape) for n in ("memory_w1", "memory_w2"))

    # --- the hooks of the Mixer base ----------------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        qkv = short_conv(self._pre_conv(p, x), p["conv_weight"], segment_ids=segment_ids)
        q, k, v, lr, log_decay, delta = self._post_conv(p, qkv, x)
        return Projection(tokens=(q, k, v, lr, log_decay, delta, segment_ids),
                          shared=(p["memory_w1"], p["memory_w2"]), rest=x)

    def mix(self, axis, q, k, v, lr, log_decay, delta, segment_ids, w1, w2):
        del axis  # not sequence parallel
        params0 = self._params0({"memory_w1": w1, "memory_w2": w2}, q.shape[0])
        return memory_update(q, k, v, lr, params0=params0, log_decay=log_decay, delta=delta,
                             segment_ids=segment_ids, chunk_size=self.chunk_size,
                             impl=self.impl_for("memory_update"), **self._op_kwargs())[0]

    def output(self, p, y, proj: Projection) -> Seq:
        y = head_rms_norm(y.astype(self.acc()), p["norm"], self.norm_eps)
        return p["out_proj"](y.reshape(y.shape[:-2] + (-1,)).astype(self.dtype)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"conv": (b, d_conv−1, 3d) in dtype, "W1", "W2": the memory's raw state, float32}``."""
        p = self.parts(d)
        h, dk, _ = p["dims"]
        w1, w2 = self._params0(p, batch_size)
        return {"conv": init_conv_buffer(batch_size, self.d_conv, 3 * h * dk, self.dtype), "W1": w1, "W2": w2}

    def cache_keys(self, d: int) -> set[str]:
        # The memory's initial state is read from the parameters: eval_shape of
        # empty_cache would create them a second time.
        return {"conv", "W1", "W2"}

    def state_size(self, length: int | None = None) -> int:
        """Bytes of the cache per sequence, from shapes: the base's count reads the
        parameters (the memory starts from them), which an unbound call does not have.

        Args:
          length: unused (the memory does not grow).

        Returns:
          The conv window (``(d_conv-1)·3·h·dk`` in ``dtype``) plus the memory's
          ``W1`` ``(h, dk, dh)`` and ``W2`` ``(h, dh, dk)`` in the accumulation dtype.
        """
        del length
        self._require_causal("state_size")
        h, dk, dh = self._dims(self.width())
        conv = (self.d_conv - 1) * 3 * h * dk * jnp.dtype(self.dtype or jnp.float32).itemsize
        return conv + 2 * h * dk * dh * jnp.dtype(self.acc()).itemsize

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # One exact update of the memory (the recurrence), then norm and out-projection.
        qkv, conv = short_conv_step(self._pre_conv(p, x_t), cache["conv"], p["conv_weight"])
        q, k, v, lr, log_decay, delta = self._post_conv(p, qkv, x_t)
        tok = lambda a: None if a is None else a[:, None]  # noqa: E731
        o, (w1, w2) = memory_update(
            tok(q), tok(k), tok(v), tok(lr), params0=self._params0(p, x_t.shape[0]), log_decay=tok(log_decay),
            delta=tok(delta), initial_state=(cache["W1"], cache["W2"]), impl="sequential", **self._op_kwargs())
        return self.output(p, o[:, 0], Projection(rest=x_t)), {"conv": conv, "W1": w1, "W2": w2}


@register("yaad")
class Yaad(_MirasBase):
    """Yaad (Miras, Behrouz et al. 2025): Huber attentional bias, ℓ2 retention; causal.

    Per head, with the memory ``M(x) = x + W1 silu(W2 x)`` and ``e = M_{W_{t−1}}(k_t) − v_t``::

        δ_t = softplus(x W_δ + b_δ),   W_t = α_t W_{t−1} − η_t ∇_W Huber_{δ_t}(e)
        ∂Huber/∂M(k) = clip(e, −δ_t, δ_t)     (coordinate-wise: ℓ2 inside, ℓ1 outside)

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections and the convolution.
      impl: ``impl`` of :func:`seqjax.ops.memory_update`.
      sequence_axis: must be None.
      num_heads: heads; must divide ``d_model``.
      memory_expand: the memory's hidden width ``dh = memory_expand · dk``.
      d_conv: taps of the short convolution.
      norm_eps: epsilon of the output RMSNorm.
      chunk_size: tokens per chunk of the chunk-wise training.
      max_lr: the largest inner learning rate, ``η_t = max_lr · sigmoid(x W_η)``.
      A_init_range: the ``U[low, high]`` of ``exp(A_log)``.
      dt_min: smallest initial ``softplus(dt_bias)``.
      dt_max: largest initial ``softplus(dt_bias)``.
      dt_init_floor: lower clamp of the initial ``softplus(dt_bias)``.
    """

    loss = "huber"
    retention = "l2"

    def _extra_parts(self, d, h):
        return {"delta_proj": dense(h, ("embed", "heads"), use_bias=True, dtype=self.dtype, name="delta_proj")}

    def _delta(self, p, x):
        # + softplus⁻¹(1): thresholds start near 1 (unit-scale errors in the ℓ2 regime).
        return jax.nn.softplus(p["delta_proj"](x.astype(self.dtype)).astype(self.acc()) + SOFTPLUS_INV_1)


@register("moneta")
class Moneta(_MirasBase):
    """Moneta (Miras, Behrouz et al. 2025): ℓp attentional bias, ℓq retention; causal.

    Per head, with the memory ``M(x) = x + W1 silu(W2 x)`` and ``e = M_{W_{t−1}}(k_t) − v_t``
    (each weight matrix separately; ``‖·‖_q`` the entrywise q-norm)::

        A_t = α_t A_{t−1} − η_t ∇_W ‖e‖_p^p,   ∂‖e‖_p^p/∂M(k) = p sign(e) |e|^{p−1}
        W_t = A_t / ‖A_t‖_q^{q−2}

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections and the convolution.
      impl: ``impl`` of :func:`seqjax.ops.memory_update`.
      sequence_axis: must be None.
      num_heads: heads; must divide ``d_model``.
      memory_expand: the memory's hidden width ``dh = memory_expand · dk``.
      d_conv: taps of the short convolution.
      norm_eps: epsilon of the output RMSNorm.
      chunk_size: tokens per chunk of the chunk-wise training.
      max_lr: the largest inner learning rate, ``η_t = max_lr · sigmoid(x W_η)``.
      A_init_range: the ``U[low, high]`` of ``exp(A_log)``.
      dt_min: smallest initial ``softplus(dt_bias)``.
      dt_max: largest initial ``softplus(dt_bias)``.
      dt_init_floor: lower clamp of the initial ``softplus(dt_bias)``.
      p: the attentional bias's exponent (3; ≥ 2 keeps the outer gradient finite at e = 0).
      q: the retention's norm (4; ≥ 2).
    """

    loss = "lp"
    retention = "lq"

    p: float = 3.0
    q: float = 4.0

    def check_fields(self):
        check_number(self.mixer_name, "p", self.p, low=2)
        check_number(self.mixer_name, "q", self.q, low=2)
        super().check_fields()

    def _op_kwargs(self):
        return dict(loss=self.loss, retention=self.retention, p=self.p, q_norm=self.q)

    def _memory_init(self, std: float):
        # φ(A) = A / ‖A‖_q^{q−2} maps c·A to c^{3−q} φ(A) (for q = 4 it inverts the scale), so a
        # N(0, std²) draw stored as the raw state would give weights of quite another size. Store
        # A = W ‖W‖_q^{(q−2)/(3−q)}, for which φ(A) = W (up to the norm's eps); q = 3 is scale
        # invariant (φ(A) = A / ‖A‖_3 for every scale), so W is stored as drawn.
        q = self.q

        def init(key, shape, dtype=jnp.float32):
            w = jax.random.normal(key, shape, dtype) * std
            if q == 3:
                return w
            norm = jnp.sum(jnp.abs(w) ** q, axis=(-2, -1), keepdims=True) ** (1 / q)
            return w * norm ** ((q - 2) / (3 - q))

        return init


@register("memora")
class Memora(_MirasBase):
    """Memora (Miras, Behrouz et al. 2025): ℓ2 attentional bias, KL retention; causal.

    Per head, with the memory ``M(x) = x + W1 silu(W2 x)`` and ``e = M_{W_{t−1}}(k_t) − v_t``
    (the softmax over each row of each weight matrix; the state is the logits)::

        W_t = Softmax(α_t log W_{t−1} − η_t ∇_W ½‖e‖²)

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections and the convolution.
      impl: ``impl`` of :func:`seqjax.ops.memory_update`.
      sequence_axis: must be None.
      num_heads: heads; must divide ``d_model``.
      memory_expand: the memory's hidden width ``dh = memory_expand · dk``.
      d_conv: taps of the short convolution.
      norm_eps: epsilon of the output RMSNorm.
      chunk_size: tokens per chunk of the chunk-wise training.
      max_lr: the largest inner learning rate, ``η_t = max_lr · sigmoid(x W_η)``.
      A_init_range: the ``U[low, high]`` of ``exp(A_log)``.
      dt_min: smallest initial ``softplus(dt_bias)``.
      dt_max: largest initial ``softplus(dt_bias)``.
      dt_init_floor: lower clamp of the initial ``softplus(dt_bias)``.
    """

    loss = "l2"
    retention = "kl"
