"""Mixture-of-Memories (Du, Sun, Lan, Hu and Cheng 2025, "MoM: Linear Sequence Modeling with Mixture-of-Memories").

A router sends each token to the top-k of ``M`` linear memories; only those
memories are written (and decayed) by the token, the others keep their state
unchanged; a shared memory that every token updates is added. Per head, with
``S^m`` the ``(dk, dv)`` state of memory ``m``::

    p_t     = softmax(x_t W_r)                            (M router probabilities)
    T_t     = topk(p_t, k),   g_{t,m} = p_{t,m} / Σ_{m'∈T_t} p_{t,m'}   (m ∈ T_t, else 0)
    k^m_t, v^m_t = x_t W_k^m, x_t W_v^m                   (each memory its own key/value projections)
    S^m_t   = update(S^m_{t−1}; k^m_t, v^m_t)   if m ∈ T_t,   else S^m_{t−1}
    o_t     = Σ_{m∈T_t} g_{t,m} S^mᵀ_t q_t  +  S^sᵀ_t q_t  (shared memory s: every token, weight 1)
    out     = concat_h(RMSNorm(o_t) ⊙ w ⊙ silu(x_t W_g)) W_O

The query ``q_t = x_t W_q`` is shared by the memories. Two kinds of memory
(the field ``memory``), both from the paper's table of update rules:

  * ``"gla"``: ``S = diag(α_t) S + k_t v_tᵀ``, ``log α_t = log_sigmoid(x W_α1^m
    W_α2^m + b^m) / τ`` per key channel (GLA's gate, one per memory); q scaled
    by ``dk^−1/2``; no feature map.
  * ``"gated_delta"``: ``S = a_t (I − β_t k_t k_tᵀ) S + β_t k_t v_tᵀ`` with
    ``β_t = sigmoid(x W_β^m)``, ``log a_t = −exp(A_log)·softplus(x W_a^m +
    dt_bias)`` (Gated DeltaNet's, ``A_log`` and ``dt_bias`` shared by the
    memories as in the authors' code), ``q, k = l2norm(silu(·))`` (q scaled by
    ``dk^−1/2``), ``v = silu(x W_v^m)``.

No new loop: every memory is a run of an existing op with the routing folded
into its inputs. With ``r_{t,m} ∈ {0, 1}`` ("t routed to m"), the GLA kind runs
``linear_attention(q, k·r, v, log_decay=log α·r)`` (``r = 0``: no write, no
decay, so the state passes through) and the delta kind ``delta_rule(q, k, v,
β·r, log_decay=log a·r)`` (``β = 0``: no write). The ``M`` (+1 shared) memories
are stacked as extra heads, ``(b, l, (M+1)·h, ·)``, in one op call; each
channel's read is scaled by its routing weight (``g``, 1 for the shared
memory) and the memories are summed in the output. The routing is discrete,
the weights ``g`` differentiable (the router learns through them; with
``top_k = 1`` the renormalised weight is always 1, so the router gets no
gradient at all, from the output or from the balance loss, and the routing
stays as initialised).

Left out from the authors' code: the short convolutions (they run over each
memory's routed subsequence, which has no per-token form here), and the
capacity limit that drops tokens of an over-full memory (here every routed
token is kept). The authors train with a load-balancing loss on the router;
:func:`load_balancing_loss` computes it from :meth:`MoM.router_logits`, and a
training application (the ``"losses"`` collection mutable) sows
``balance_weight ×`` it as ``"balance_loss"``, which the trainer adds to the
task's loss averaged over the layers (:func:`seqjax.train.step.aux_losses`),
as the authors do. With ``top_k = 1`` it has no gradient (see above).

Given the routing and the other projections, the mix is linear in the
stacked values ``v``: the base class reads the mixing matrix off the op, one
channel per (memory, head), ``M[(m, h), t, s] = g_{t,m} · M^m_h[t, s]`` where
``M^m_h`` is the memory's GLA or gated-delta matrix over its routed tokens;
the output sums the channels of a head over the memories.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import AUX_LOSSES, Mixer, Projection
from seqjax.mixers.common import (
    check_int, check_number, check_option, dense, head_rms_norm, l2_normalize, param)
from seqjax.mixers.mamba_blocks import a_log_init, check_a_range, check_dt_range, dt_bias_init
from seqjax.mixers.registry import register
from seqjax.ops import dispatch
from seqjax.ops.delta_rule import delta_rule
from seqjax.ops.linear_attention import linear_attention
from seqjax.types import SegmentIds, Seq, SeqStep

HIGHEST = jax.lax.Precision.HIGHEST
MEMORY_KINDS = ("gla", "gated_delta")
# The op each memory kind runs.
MEMORY_OP = {"gla": "linear_attention", "gated_delta": "delta_rule"}
# Xavier-uniform gain of every projection in the authors' code (as GLA's).
SMALL_GAIN = 2**-2.5


def _xavier(gain: float, stacked: bool = False):
    """Xavier-uniform; ``stacked``: a ``(n, fan_in, fan_out)`` kernel, one matrix per memory."""
    if stacked:
        return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform", in_axis=-2, out_axis=-1,
                                                batch_axis=(0,))
    return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


def route(logits: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
    """The top-k routing of the paper: softmax, top-k, renormalised.

    Args:
      logits: ``(..., M)`` router logits ``x W_r``.
      top_k: memories per token.

    Returns:
      ``(weights, mask)``, both ``(..., M)``: ``weights[m] = p_m / Σ_{topk} p``
      on the top-k memories and 0 elsewhere (differentiable in ``logits``);
      ``mask`` 1.0 on the top-k memories, else 0.0 (no gradient).
    """
    probs = jax.nn.softmax(logits, axis=-1)
    top, idx = jax.lax.top_k(probs, top_k)
    one_hot = jax.nn.one_hot(idx, logits.shape[-1], dtype=probs.dtype)  # (..., k, M)
    weights = jnp.sum(one_hot * (top / jnp.sum(top, axis=-1, keepdims=True))[..., None], axis=-2)
    return weights, jax.lax.stop_gradient(jnp.sum(one_hot, axis=-2))


def load_balancing_loss(logits: jax.Array, top_k: int, mask: jax.Array | None = None) -> jax.Array:
    """The router's load-balancing loss of the MoM code (Switch Transformer's eqs. 4–6, per row).

    Per sequence: ``f_m`` = fraction of tokens routed to memory ``m``, ``P_m`` =
    mean routing weight ``g_{t,m}`` (top-k renormalised, 0 when not routed);
    the loss is ``M · Σ_m f_m P_m``, averaged over the sequences. Its minimum
    over balanced routings is ``top_k``. The authors add ``0.01 ×`` this (per
    layer, averaged over layers) to the language-model loss.

    Args:
      logits: ``(batch, length, M)`` router logits (:meth:`MoM.router_logits`).
      top_k: memories per token.
      mask: optional ``(batch, length)`` 1/0 (or bool) of the tokens to count
        (padding excluded); None: all.

    Returns:
      A scalar in float32 (float64 for float64 logits).
    """
    if logits.ndim != 3:
        raise ValueError(f"load_balancing_loss: logits must be (batch, length, M), got {logits.shape}")
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    weights, routed = route(logits, top_k)
    w = jnp.ones(logits.shape[:2], logits.dtype) if mask is None else jnp.asarray(mask).astype(logits.dtype)
    count = jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1.0)  # (b, 1)
    f = jnp.sum(routed * w[..., None], axis=1) / count  # (b, M)
    P = jnp.sum(weights * w[..., None], axis=1) / count
    return jnp.mean(logits.shape[-1] * jnp.sum(f * P, axis=-1))


@register("mom")
class MoM(Mixer):
    """Mixture-of-Memories (Du et al. 2025), causal (see the module docstring).

    Parameters: ``router (d, M)``, ``q_proj (d, h·dk)``, per memory (``n = M``
    + 1 with the shared memory, which is the last) ``k_proj (n, d, h·dk)``,
    ``v_proj (n, d, h·dv)``, and the gates: GLA kind ``alpha_down (n, d,
    r)``, ``alpha_up (n, r, h·dk)``, ``alpha_bias (n, h·dk)``; gated-delta
    kind ``b_proj (n, d, h)``, ``a_proj (n, d, h)``, ``dt_bias (h,)``,
    ``A_log (h,)``; then ``g_proj (d, h·dv)``, ``norm (dv,)``, ``out_proj``.
    No biases besides the GLA gate's. Init as the authors' code: Xavier-uniform
    with gain ``2^−2.5`` (Mamba-2's for ``A_log`` and ``dt_bias``).

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections; routing, gates, the op and the
        norm run in float32 (float64 for a float64 ``dtype``).
      impl: implementation of the memory kind's op (``linear_attention`` for
        ``gla``, ``delta_rule`` for ``gated_delta``), or ``{op: impl}``.
      sequence_axis: mesh axis that splits the length (the ops' sequence-parallel
        forms: ``linear_attention_sp`` or ``delta_rule_sp``).
      num_heads: heads ``h``.
      head_dim: ``dk``; None: ``d_model / num_heads``.
      expand_v: ``dv = expand_v · dk`` (1, the authors' config).
      num_memories: routed memories ``M`` (4, the authors' config).
      top_k: memories per token, ``1 <= top_k <= num_memories`` (2).
      balance_weight: scale of the sown router balance loss (0.01, the
        authors'; 0 sows nothing).
      shared_memory: add the shared memory every token updates (True).
      memory: ``"gated_delta"`` (the paper's main model) or ``"gla"``.
      gate_low_rank: rank of the GLA gate's ``W_α1 W_α2`` (16).
      gate_temperature: GLA gate's ``τ`` (16).
      A_init_range: ``U[low, high]`` of ``exp(A_log)`` (gated delta).
      dt_min: smallest initial ``softplus(dt_bias)`` (gated delta).
      dt_max: largest initial ``softplus(dt_bias)`` (gated delta).
      dt_init_floor: lower clamp of the initial ``softplus(dt_bias)``.
      norm_eps: epsilon of the per-head output RMSNorm.
      chunk_size: ``chunk_size`` of the op.
    """

    ops = ("linear_attention", "delta_rule")  # the first's implementations include the second's
    sequence_parallel = True
    ssm_params = ("A_log", "dt_bias")  # gated-delta kind only (the GLA kind has none)
    no_decay_params = ("alpha_bias",)  # a bias of rank 2 (one per memory)
    values_index = 2  # v in (q, k, v, beta, log_decay, weights, segment_ids)

    num_heads: int = 4
    head_dim: int | None = None
    expand_v: int = 1
    num_memories: int = 4
    top_k: int = 2
    shared_memory: bool = True
    memory: str = "gated_delta"
    gate_low_rank: int = 16
    gate_temperature: float = 16.0
    A_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    norm_eps: float = 1e-5
    chunk_size: int = 64
    balance_weight: float = 0.01

    # --- construction -------------------------------------------------------------------

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_heads", self.num_heads)
        check_int(name, "head_dim", self.head_dim, optional=True)
        check_int(name, "expand_v", self.expand_v)
        check_int(name, "num_memories", self.num_memories)
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or not 1 <= self.top_k <= self.num_memories:
            raise ConfigError(f"{name}.top_k={self.top_k!r} must be an int in [1, num_memories={self.num_memories}]")
        if not isinstance(self.shared_memory, bool):
            raise ConfigError(f"{name}.shared_memory={self.shared_memory!r} must be a bool (True or False)")
        check_option(name, "memory", self.memory, MEMORY_KINDS)
        check_int(name, "gate_low_rank", self.gate_low_rank)
        check_number(name, "gate_temperature", self.gate_temperature, low=0, open_low=True)
        check_number(name, "balance_weight", self.balance_weight, low=0.0)
        check_a_range(name, self.A_init_range)
        check_dt_range(name, self.dt_min, self.dt_max, self.dt_init_floor)
        check_number(name, "norm_eps", self.norm_eps, low=0, open_low=True)
        check_int(name, "chunk_size", self.chunk_size)
        op = MEMORY_OP[self.memory]
        if isinstance(self.impl, str) and self.impl not in dispatch.implementations(op):
            # The base checked it against linear_attention; the gated-delta kind runs delta_rule.
            raise ConfigError(f"{name}.impl={self.impl!r} is not an implementation of {op} (memory="
                              f"{self.memory!r}); allowed: {', '.join(dispatch.implementations(op))}")
        if self.d_model is not None:
            self._dims(self.d_model)

    def impl_for(self, op: str) -> str:
        """A string ``impl`` applies to the op of the memory kind (the base gives it to ``ops[0]``)."""
        if isinstance(self.impl, str):
            return self.impl if op == MEMORY_OP[self.memory] else "auto"
        return super().impl_for(op)

    def _dims(self, d: int) -> tuple[int, int, int]:
        if self.head_dim is None:
            if d % self.num_heads:
                raise ConfigError(f"{self.mixer_name}.num_heads={self.num_heads!r} must divide d_model={d} "
                                  f"(or set head_dim)")
            dk = d // self.num_heads
        else:
            dk = self.head_dim
        return self.num_heads, dk, self.expand_v * dk

    @property
    def num_states(self) -> int:
        """Memories with a state: ``num_memories`` (+1 shared)."""
        return self.num_memories + int(self.shared_memory)

    # --- parameters and projections --------------------------------------------------

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        h, dk, dv = self._dims(d)
        n, r = self.num_states, self.gate_low_rank
        small, stacked = _xavier(SMALL_GAIN), _xavier(SMALL_GAIN, stacked=True)
        parts = {
            "dims": (h, dk, dv),
            "router": dense(self.num_memories, ("embed", None), dtype=self.dtype, name="router", kernel_init=small),
            "q_proj": dense(h * dk, ("embed", "mlp"), dtype=self.dtype, name="q_proj", kernel_init=small),
            "k_proj": param(self, "k_proj", stacked, (n, d, h * dk), (None, "embed", "mlp")),
            "v_proj": param(self, "v_proj", stacked, (n, d, h * dv), (None, "embed", "mlp")),
            "g_proj": dense(h * dv, ("embed", "mlp"), dtype=self.dtype, name="g_proj", kernel_init=small),
            "norm": param(self, "norm", nn.initializers.ones_init(), (dv,), (None,)),
            "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj", kernel_init=small),
        }
        if self.memory == "gla":
            parts["alpha_down"] = param(self, "alpha_down", stacked, (n, d, r), (None, "embed", None))
            parts["alpha_up"] = param(self, "alpha_up", stacked, (n, r, h * dk), (None, None, "mlp"))
            parts["alpha_bias"] = param(self, "alpha_bias", nn.initializers.zeros_init(), (n, h * dk), (None, "mlp"))
        else:
            parts["b_proj"] = param(self, "b_proj", stacked, (n, d, h), (None, "embed", "heads"))
            parts["a_proj"] = param(self, "a_proj", stacked, (n, d, h), (None, "embed", "heads"))
            dt_init = dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor)
            parts["dt_bias"] = param(self, "dt_bias", dt_init, (h,), ("heads",))
            parts["A_log"] = param(self, "A_log", a_log_init(*self.A_init_range), (h,), ("heads",))
        return parts

    def router_logits(self, x: Seq) -> jax.Array:
        """The router's logits ``x W_r``, ``(batch, length, num_memories)``, for :func:`load_balancing_loss`.

        Args:
          x: ``(batch, length, d_model)`` input.

        Returns:
          Logits in the accumulation dtype.
        """
        p = self.parts(self.width(x))
        return p["router"](x.astype(self.dtype)).astype(self.acc())

    def _per_memory(self, x, kernel):
        """``x (b, l, d)`` through a stacked ``(n, d, f)`` kernel: ``(b, l, n, f)`` in the accumulation dtype."""
        y = jnp.einsum("bld,ndf->blnf", x, kernel.astype(self.dtype), precision=HIGHEST)
        return y.astype(self.acc())

    def _project(self, p, x):
        """``(q, k, v, β, log decay, weights, gate)`` stacked over the memories' heads, ``(b, l, n·h, ·)``.

        The routing is folded in: an unrouted (token, memory) pair has ``k = 0``
        and log decay 0 (GLA kind) or ``β = 0`` and log decay 0 (gated delta),
        and weight 0; the shared memory has mask and weight 1.
        """
        h, dk, dv = p["dims"]
        n, acc = self.num_states, self.acc()
        b, l = x.shape[:2]
        x = x.astype(self.dtype)
        logits = p["router"](x).astype(acc)
        if self.is_mutable_collection(AUX_LOSSES) and not self.is_initializing() and self.balance_weight:
            # Training only (the trainer makes the collection mutable); init keeps no losses.
            self.sow(AUX_LOSSES, "balance_loss", self.balance_weight * load_balancing_loss(logits, self.top_k))
        weights, routed = route(logits, self.top_k)  # (b, l, M)
        if self.shared_memory:
            ones = jnp.ones((b, l, 1), acc)
            weights, routed = jnp.concatenate([weights, ones], -1), jnp.concatenate([routed, ones], -1)
        q = p["q_proj"](x).astype(acc).reshape(b, l, 1, h, dk)
        k = self._per_memory(x, p["k_proj"]).reshape(b, l, n, h, dk)
        v = self._per_memory(x, p["v_proj"]).reshape(b, l, n, h, dv)
        r = routed[..., None]  # (b, l, n, 1): broadcast over heads
        if self.memory == "gla":
            q = q * dk**-0.5
            low = jnp.einsum("bld,ndr->blnr", x, p["alpha_down"].astype(self.dtype), precision=HIGHEST)
            logits = jnp.einsum("blnr,nrf->blnf", low, p["alpha_up"].astype(self.dtype), precision=HIGHEST)
            logits = logits.astype(acc) + p["alpha_bias"].astype(acc)
            log_decay = (jax.nn.log_sigmoid(logits) / self.gate_temperature).reshape(b, l, n, h, dk) * r[..., None]
            k, beta = k * r[..., None], None
        else:
            q = l2_normalize(jax.nn.silu(q)) * dk**-0.5
            k, v = l2_normalize(jax.nn.silu(k)), jax.nn.silu(v)
            beta = jax.nn.sigmoid(self._per_memory(x, p["b_proj"])) * r
            a = self._per_memory(x, p["a_proj"]) + p["dt_bias"].astype(acc)
            log_decay = -jnp.exp(p["A_log"].astype(acc)) * jax.nn.softplus(a) * r
            beta = beta.reshape(b, l, n * h)
        stack = lambda y: y.reshape((b, l, n * h) + y.shape[4:])  # noqa: E731
        q = jnp.broadcast_to(q, (b, l, n, h, dk))
        w = jnp.broadcast_to(weights[..., None], (b, l, n, h))
        gate = p["g_proj"](x).astype(acc).reshape(b, l, h, dv)
        return stack(q), stack(k), stack(v), beta, stack(log_decay), w.reshape(b, l, n * h), gate

    # --- the hooks of the Mixer base ----------------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        q, k, v, beta, log_decay, weights, gate = self._project(p, x)
        return Projection(tokens=(q, k, v, beta, log_decay, weights, segment_ids), rest=gate)

    def mix(self, axis, q, k, v, beta, log_decay, weights, segment_ids):
        # Under sequence parallelism the ops pass the shards' states (the routing
        # and the weighting are per position).
        if self.memory == "gla":
            o = linear_attention(q, k, v, log_decay=log_decay, segment_ids=segment_ids, chunk_size=self.chunk_size,
                                 impl=self.impl_for("linear_attention"), sequence_axis=axis)[0]
        else:
            o = delta_rule(q, k, v, beta, log_decay=log_decay, segment_ids=segment_ids, chunk_size=self.chunk_size,
                           impl=self.impl_for("delta_rule"), sequence_axis=axis)[0]
        return o * weights[..., None].astype(o.dtype)  # each (memory, head)'s read, weighted

    def output(self, p, y, proj: Projection) -> Seq:
        """Sum over the memories, per-head RMSNorm ⊙ silu gate, out-projection of ``y (b, l, n·h, dv)``."""
        h, _, dv = p["dims"]
        y = y.astype(self.acc())
        y = jnp.sum(y.reshape(y.shape[:2] + (self.num_states, h, dv)), axis=2)
        y = head_rms_norm(y, p["norm"], self.norm_eps) * jax.nn.silu(proj.rest)
        return p["out_proj"](y.reshape(y.shape[:2] + (h * dv,)).astype(self.dtype)).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """``{"S": (b, n·h, dk, dv)}`` in float32: every memory's state, the shared one last."""
        h, dk, dv = self._dims(d)
        return {"S": jnp.zeros((batch_size, self.num_states * h, dk, dv), self.acc())}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        # Every state advances, but an unrouted memory's inputs are the identity update
        # (k = 0 or β = 0, decay 1), so only the routed memories (and the shared one) change.
        q, k, v, beta, log_decay, weights, gate = self._project(p, x_t[:, None])
        q, k, v, log_decay, weights = q[:, 0], k[:, 0], v[:, 0], log_decay[:, 0], weights[:, 0]
        S = cache["S"]
        if self.memory == "gla":
            S = jnp.exp(log_decay)[..., None] * S + k[..., :, None] * v[..., None, :]
        else:
            S = jnp.exp(log_decay)[..., None, None] * S
            u = beta[:, 0, :, None] * (v - jnp.einsum("bck,bckv->bcv", k, S, precision=HIGHEST))
            S = S + k[..., :, None] * u[..., None, :]
        o = jnp.einsum("bck,bckv->bcv", q, S, precision=HIGHEST) * weights[..., None]
        return self.output(p, o[:, None], Projection(rest=gate))[:, 0], {"S": S}


__all__ = ["MoM", "route", "load_balancing_loss", "MEMORY_KINDS"]
