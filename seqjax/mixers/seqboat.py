"""SeqBoat: Sparse Modular Activation of a Gated Attention Unit over SSM states (Ren et al. 2023).

"Sparse Modular Activation for Efficient Sequence Modeling" (Ren, Liu, Wang,
Xu, Zhu, Zhai; NeurIPS 2023, arXiv 2306.11197), Section 3 (SMA) and Section 4
(the SeqBoat layer), with the authors' public code for the constants. One
layer, for ``x: (b, l, d)``::

    h_t   = (1 − α⊙δ) ⊙ h_{t−1} + α⊙β x_t          MEGA's damped EMA, (d, n) per channel
    H^S_t = SiLU(Σ_n η_n h_{t,n} / √n + ω x_t)     (bidirectional: + the same scan run backwards)
    π_t   = softmax((W_c H^S_t + b_c) / τ)          latent configurator over {skip, activate}, τ = e^θ
    a_t   = [argmax π_t = activate],  g_t = a_t · π_t[activate]
    (activated tokens, in order, form the compressed sequence c(·); then on it)
    z, r, v = SiLU(W_m H^S + b_m),  q = γ_0 ⊙ z + β_0,  k = γ_1 ⊙ z + β_1
    o_i   = Σ_j A_ij v_j,  j: same segment, 0 ≤ c(i) − c(j) ≤ w    (bidirectional: |c(i) − c(j)| ≤ w)
    A_ij  = softmax_j(q_i·k_j / √z + b_rel[t_j − t_i])    (or "relu2": relu(q_i·k_j / w + b_rel)²)
    y_t   = W_x H^S_t + b_x + g_t (W_h (o_t ⊙ r_t) + b_h)  (0 attention for skipped tokens)

The GAU runs only on the activated tokens (the paper's compress / extract
operators): a token's working memory is the last ``w`` *activated* tokens,
however far back they are, so the attention span is unbounded while the cost
stays ``O(L·w)``. The hard choice has no gradient; the configurator learns
through ``g_t`` = the chosen option's probability (the paper's estimator,
the skip option's output being zero). The relative bias ``b_rel`` is indexed
by the tokens' *original* positions, as the authors' code does.

Differences from the paper, on purpose:

* JAX needs static shapes, so the compressed sequence is padded to ``L``
  (all tokens could be active): memory stays ``O(L·w)`` (blocks of ``w``
  queries against ``2w`` keys) but the FLOPs do not fall with the activation
  rate as they do with the paper's dynamic lengths.
* The residual connection, the norm and the final SiLU of the paper's layer
  (``SiLU(y + x)``), and dropout, belong to the model's block, not to the mixer.
* The EMA runs through :func:`seqjax.ops.linear_scan` (exactly MEGA's
  recurrence, no FFT kernel, no truncation).

Mixing matrix: given the activations and the attention weights, the output
is linear in the values ``v`` (the compressed attention scattered back):
``M[t, s] = a_t a_s A_{c(t) c(s)}`` (the ``o`` part, before ``⊙ r`` and
``W_h``), lower triangular when causal.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import (check_int, check_number, check_option, dense, param, positions_in_segment,
                                  segment_runs)
from seqjax.mixers.registry import register
from seqjax.ops import linear_scan
from seqjax.types import SegmentIds, Seq, SeqStep

ATTENTIONS = ("softmax", "relu2")
_NEG = -1e30  # a masked score: finite, so a row with no key gives zeros, not NaN


def _trunc_normal(std: float, mean: float = 0.0):
    # The authors' init: N(mean, std²) truncated at ±2 std.
    base = nn.initializers.truncated_normal(std)

    def init(key, shape, dtype=jnp.float32):
        return base(key, shape, dtype) + mean

    return init


def _beta_init(key, shape, dtype=jnp.float32):
    # MEGA's β: N(0, 0.02²) around (1, −1, 1, −1, ...) along the EMA dimensions.
    signs = jnp.where(jnp.arange(shape[-1]) % 2 == 0, 1.0, -1.0).astype(dtype)
    return nn.initializers.truncated_normal(0.02)(key, shape, dtype) + signs


def compress(a: jax.Array, dest: jax.Array) -> jax.Array:
    """The paper's compress operator: ``a[:, t]`` moved to slot ``dest[:, t]`` (slot ``l``: dropped).

    Args:
      a: ``(b, l, ...)``.
      dest: ``(b, l)`` int32 slot of each position (its index among the
        activated tokens), ``l`` for a skipped one.

    Returns:
      ``(b, l, ...)``: the activated tokens first, in order, zeros after.
    """
    rows = jnp.arange(a.shape[0])[:, None]
    return jnp.zeros_like(a).at[rows, dest].set(a, mode="drop")


def extract(c: jax.Array, index: jax.Array, active: jax.Array) -> jax.Array:
    """The paper's extract operator: ``c[:, index[:, t]]`` at activated positions, 0 elsewhere.

    Args:
      c: ``(b, l, ...)`` compressed values.
      index: ``(b, l)`` slot of each position (any value where inactive).
      active: ``(b, l)`` booleans.

    Returns:
      ``(b, l, ...)``.
    """
    rows = jnp.arange(c.shape[0])[:, None]
    out = c[rows, jnp.clip(index, 0, c.shape[1] - 1)]
    return jnp.where(active.reshape(active.shape + (1,) * (c.ndim - 2)), out, 0)


def relative_bias(table: jax.Array, offsets: jax.Array) -> jax.Array:
    """``b_rel[offset]`` from the ``(2P − 1,)`` table, offsets clipped to ``±(P − 1)`` (the code's extension)."""
    p = (table.shape[0] + 1) // 2
    return table[jnp.clip(offsets, -(p - 1), p - 1) + p - 1]


def _neighbours(a: jax.Array, nb: int, w: int, causal: bool, fill) -> jax.Array:
    """Blocks ``(b, nb, w, ...)`` → keys of each block: the previous block, itself (and the next)."""
    blocks = a.reshape((a.shape[0], nb, w) + a.shape[2:])
    pad = [(0, 0)] * blocks.ndim
    pad[1] = (1, 1)
    padded = jnp.pad(blocks, pad, constant_values=fill)
    parts = [padded[:, :nb], padded[:, 1 : nb + 1]] + ([] if causal else [padded[:, 2:]])
    return jnp.concatenate(parts, axis=2)


def local_attention(q, k, v, valid, pos, runs, table, *, window: int, causal: bool, attention: str, acc):
    """The GAU's attention on the compressed sequence: each slot sees the slots within ``window``.

    Blockwise (blocks of ``w`` queries against their own and the previous
    block, and the next when bidirectional), so memory is ``O(L·w)``.

    Args:
      q, k: ``(b, L, z)``; v: ``(b, L, e)`` (compressed).
      valid: ``(b, L)`` booleans (occupied slots).
      pos: ``(b, L)`` original positions (relative bias); runs: ``(b, L)`` segment runs.
      table: ``(2P − 1,)`` relative bias.
      window: ``w``; causal: keys at slot distance ``0..w`` before, else ``|i − j| ≤ w``.
      attention: ``"softmax"`` or ``"relu2"``.
      acc: accumulation dtype.

    Returns:
      ``(b, L, e)`` in ``acc``; zero at unoccupied slots.
    """
    b, length, zdim = q.shape
    w = window
    nb = -(-length // w)
    extra = nb * w - length

    def pad(a, fill):
        widths = [(0, 0)] * a.ndim
        widths[1] = (0, extra)
        return jnp.pad(a, widths, constant_values=fill)

    slot = jnp.broadcast_to(jnp.arange(nb * w, dtype=jnp.int32), (b, nb * w))
    q, k, v, valid, pos, runs = (pad(q, 0), pad(k, 0), pad(v, 0), pad(valid, False), pad(pos, 0), pad(runs, -1))
    qb = q.reshape(b, nb, w, zdim)
    kb, vb = _neighbours(k, nb, w, causal, 0), _neighbours(v, nb, w, causal, 0)
    valid_k = _neighbours(valid, nb, w, causal, False)
    pos_q, pos_k = pos.reshape(b, nb, w), _neighbours(pos, nb, w, causal, 0)
    run_q, run_k = runs.reshape(b, nb, w), _neighbours(runs, nb, w, causal, -1)
    slot_q, slot_k = slot.reshape(b, nb, w), _neighbours(slot, nb, w, causal, -(2 * w + 1))
    gap = slot_q[..., :, None] - slot_k[..., None, :]
    near = (gap >= 0) & (gap <= w) if causal else jnp.abs(gap) <= w
    mask = near & valid_k[..., None, :] & (run_q[..., :, None] == run_k[..., None, :])
    if attention == "softmax":
        scale = 1.0 / math.sqrt(zdim)
    else:  # relu2: the code divides q by the window's key count
        scale = 1.0 / (w if causal else 2 * w)
    s = jnp.einsum("bnqz,bnkz->bnqk", qb, kb, preferred_element_type=acc) * scale
    s = s + relative_bias(table.astype(acc), pos_k[..., None, :] - pos_q[..., :, None])
    if attention == "softmax":
        s = jnp.where(mask, s, _NEG)
        e = jnp.where(mask, jnp.exp(s - jnp.max(s, axis=-1, keepdims=True)), 0.0)
        weights = e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), jnp.finfo(acc).tiny)
    else:
        weights = jnp.where(mask, jnp.square(jax.nn.relu(s)), 0.0)
    o = jnp.einsum("bnqk,bnke->bnqe", weights.astype(v.dtype), vb, preferred_element_type=acc)
    return o.reshape(b, nb * w, -1)[:, :length]


@register("seqboat")
class SeqBoat(Mixer):
    """The SeqBoat layer (Ren et al. 2023): an EMA SSM, a latent configurator, a sparsely activated GAU.

    See the module docstring for the equations. With ``d = d_model``,
    ``n = d_state``, ``z = z_dim``, ``e = expand·d``, ``w = window``.

    Initialisation (the authors' code): projections, ``γ``, the relative bias
    ``N(0, 0.02²)`` truncated at 2σ with zero biases and ``β_qk = 0``; EMA
    ``α̃, δ̃ ~ N(0, 0.2²)`` (through sigmoids), ``β ~ ±1 + N(0, 0.02²)``,
    ``η, ω ~ N(0, 1)``; the configurator's temperature ``τ = init_temp_scale·√d``.

    Attributes:
      d_model: width ``d``; None takes it from the parameters.
      dtype: compute dtype of the projections; the EMA, the configurator and
        the attention accumulate in float32 (float64 for float64).
      impl: implementation of ``linear_scan`` (the EMA).
      sequence_axis: must be None.
      causal: True: causal EMA and attention (``step`` exists); False: the
        bidirectional layer (a second, backward EMA; attention on both sides).
      d_state: ``n``, EMA dimensions per channel (16 in the paper's LRA runs).
      z_dim: ``z``, width of the shared query/key representation.
      expand: ``e / d``, width of the values and the gate ``r`` (2 in the code).
      window: ``w``, the working memory: activated tokens a query sees on each side.
      attention: ``"softmax"`` (text tasks) or ``"relu2"`` (image tasks in the paper's LRA runs).
      max_positions: ``P``, the relative bias covers offsets ``|t − s| < P`` (clipped beyond).
      init_temp_scale: the configurator's temperature at init, in units of ``√d``.
    """

    ops: ClassVar[tuple[str, ...]] = ("linear_scan",)
    causality: ClassVar[str] = "either"
    ssm_params: ClassVar[tuple[str, ...]] = ("ema_alpha", "ema_delta")
    values_index: ClassVar[int | None] = 2  # v: the attention is linear in it given a, A
    width_param = (("hx_proj", "kernel"), -1)

    causal: bool = True
    d_state: int = 2
    z_dim: int = 32
    expand: int = 2
    window: int = 16
    attention: str = "softmax"
    max_positions: int = 1024
    init_temp_scale: float = 1.0

    def check_fields(self):
        name = self.mixer_name
        if not isinstance(self.causal, bool):
            raise ConfigError(f"{name}.causal={self.causal!r} must be True or False")
        for field in ("d_state", "z_dim", "expand", "window", "max_positions"):
            check_int(name, field, getattr(self, field))
        check_option(name, "attention", self.attention, ATTENTIONS)
        check_number(name, "init_temp_scale", self.init_temp_scale, low=0.0, open_low=True)

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        k, n, e = (1 if self.causal else 2), self.d_state, self.expand * d
        ema = (None, "embed", "state")
        return {
            "ema_delta": param(self, "ema_delta", _trunc_normal(0.2), (k, d, n), ema),
            "ema_alpha": param(self, "ema_alpha", _trunc_normal(0.2), (k, d, n), ema),
            "ema_beta": param(self, "ema_beta", _beta_init, (k, d, n), ema),
            "ema_eta": param(self, "ema_eta", _trunc_normal(1.0), (k, d, n), ema),
            "ema_omega": param(self, "ema_omega", _trunc_normal(1.0), (d,), ("embed",)),
            "log_temp": param(self, "log_temp", nn.initializers.constant(math.log(self.init_temp_scale * math.sqrt(d))),
                              (), ()),
            # The configurator runs in the accumulation dtype: a rounded logit must not flip the choice.
            "router": dense(2, ("embed", None), use_bias=True, dtype=self.acc(), name="router",
                            kernel_init=_trunc_normal(0.02)),
            "hx_proj": dense(d, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="hx_proj",
                             kernel_init=_trunc_normal(0.02)),
            "mx_proj": dense(self.z_dim + 2 * e, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="mx_proj",
                             kernel_init=_trunc_normal(0.02)),
            "qk_gamma": param(self, "qk_gamma", _trunc_normal(0.02), (2, self.z_dim), (None, "mlp")),
            "qk_beta": param(self, "qk_beta", nn.initializers.zeros_init(), (2, self.z_dim), (None, "mlp")),
            "rel_bias": param(self, "rel_bias", _trunc_normal(0.02), (2 * self.max_positions - 1,), (None,)),
            "h_proj": dense(d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="h_proj",
                            kernel_init=_trunc_normal(0.02)),
        }

    def _ema_coeffs(self, p, i):
        """``(1 − α⊙δ, α⊙β, η/√n)`` of direction ``i``, each ``(d, n)`` in the accumulation dtype."""
        acc = self.acc()
        alpha = jax.nn.sigmoid(p["ema_alpha"][i].astype(acc))
        delta = jax.nn.sigmoid(p["ema_delta"][i].astype(acc))
        eta = p["ema_eta"][i].astype(acc) / math.sqrt(self.d_state)
        return 1.0 - alpha * delta, alpha * p["ema_beta"][i].astype(acc), eta

    def _after_ema(self, p, ema):
        """From the EMA output ``(..., d)``: ``(q, k, v, r, hx, π_activate, active)``."""
        acc = self.acc()
        mx = jax.nn.silu(ema)
        logits = p["router"](mx) / jnp.exp(p["log_temp"].astype(acc))
        probs = jax.nn.softmax(logits, axis=-1)
        active = probs[..., 1] > probs[..., 0]  # argmax, ties to "skip" (the code's first index)
        mx = mx.astype(self.dtype)
        hx = p["hx_proj"](mx)
        e = self.expand * mx.shape[-1]
        zz, r, v = jnp.split(jax.nn.silu(p["mx_proj"](mx)), [self.z_dim, self.z_dim + e], axis=-1)
        gamma, beta = p["qk_gamma"].astype(self.dtype), p["qk_beta"].astype(self.dtype)
        q, k = zz * gamma[0] + beta[0], zz * gamma[1] + beta[1]
        return q, k, v, r, hx, probs[..., 1], active

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        acc = self.acc()
        b, length, _ = x.shape
        xa = x.astype(self.dtype).astype(acc)
        ema = p["ema_omega"].astype(acc) * xa
        for i in range(1 if self.causal else 2):
            decay, gain, eta = self._ema_coeffs(p, i)
            h, _ = linear_scan(decay[None, None], xa[..., None] * gain, reverse=i == 1, segment_ids=segment_ids,
                               impl=self.impl_for("linear_scan"))
            ema = ema + jnp.einsum("bldn,dn->bld", h, eta)
        q, k, v, r, hx, prob, active = self._after_ema(p, ema)
        pos = positions_in_segment(segment_ids, b, length)
        runs = segment_runs(segment_ids, b, length)
        gate = jnp.where(active, prob, 0.0)  # the estimator: the chosen option's probability
        return Projection(tokens=(q, k, v, active, pos, runs), shared=(p["rel_bias"],), rest=(hx, r, gate))

    def mix(self, axis, q, k, v, active, pos, runs, table):
        """Compress the activated tokens, local attention among them, extract: ``(b, l, e)``, linear in ``v``."""
        del axis  # never split (no sequence_parallel)
        length = q.shape[1]
        count = jnp.cumsum(active.astype(jnp.int32), axis=1)
        index = count - 1
        dest = jnp.where(active, index, length)
        valid = jnp.arange(length)[None, :] < count[:, -1:]
        o = local_attention(compress(q, dest), compress(k, dest), compress(v, dest), valid, compress(pos, dest),
                            compress(runs, dest), table, window=self.window, causal=self.causal,
                            attention=self.attention, acc=self.acc())
        return extract(o, index, active)

    def output(self, p, y, proj: Projection) -> Seq:
        hx, r, gate = proj.rest
        h = p["h_proj"]((y * r.astype(y.dtype)).astype(self.dtype)).astype(self.acc())
        return (hx.astype(self.acc()) + gate[..., None] * h).astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """The EMA state, the position, and a ring buffer of the last ``w`` activated tokens' keys and values.

        The state does not grow with the length (``max_length`` is unused).
        """
        b, w, acc = batch_size, self.window, self.acc()
        return {
            "ema": jnp.zeros((b, d, self.d_state), acc),
            "position": jnp.zeros((b,), jnp.int32),
            "count": jnp.zeros((b,), jnp.int32),
            "keys": jnp.zeros((b, w, self.z_dim), self.dtype),
            "values": jnp.zeros((b, w, self.expand * d), self.dtype),
            "key_position": jnp.zeros((b, w), jnp.int32),
            "key_valid": jnp.zeros((b, w), bool),
        }

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        acc = self.acc()
        decay, gain, eta = self._ema_coeffs(p, 0)
        xa = x_t.astype(self.dtype).astype(acc)
        state = decay * cache["ema"] + xa[..., None] * gain
        ema = p["ema_omega"].astype(acc) * xa + jnp.einsum("bdn,dn->bd", state, eta)
        q, k, v, r, hx, prob, active = self._after_ema(p, ema)
        pos = cache["position"]
        keys = jnp.concatenate([cache["keys"], k[:, None]], axis=1)
        values = jnp.concatenate([cache["values"], v[:, None]], axis=1)
        key_pos = jnp.concatenate([cache["key_position"], pos[:, None]], axis=1)
        key_valid = jnp.concatenate([cache["key_valid"], jnp.ones_like(active)[:, None]], axis=1)
        scale = 1.0 / math.sqrt(self.z_dim) if self.attention == "softmax" else 1.0 / self.window
        s = jnp.einsum("bz,bkz->bk", q, keys, preferred_element_type=acc) * scale
        s = s + relative_bias(p["rel_bias"].astype(acc), key_pos - pos[:, None])
        if self.attention == "softmax":
            weights = jax.nn.softmax(jnp.where(key_valid, s, _NEG), axis=-1)
        else:
            weights = jnp.where(key_valid, jnp.square(jax.nn.relu(s)), 0.0)
        o = jnp.einsum("bk,bke->be", weights.astype(self.dtype), values, preferred_element_type=acc)
        o = jnp.where(active[:, None], o, 0.0)
        gate = jnp.where(active, prob, 0.0)
        y = self.output(p, o, Projection(rest=(hx, r, gate)))
        # Only an activated token enters the working memory (slot count mod w: the oldest is dropped).
        write = active[:, None] & (jnp.arange(self.window)[None, :] == (cache["count"] % self.window)[:, None])
        new = {
            "ema": state,
            "position": pos + 1,
            "count": cache["count"] + active.astype(jnp.int32),
            "keys": jnp.where(write[..., None], k[:, None].astype(self.dtype), cache["keys"]),
            "values": jnp.where(write[..., None], v[:, None].astype(self.dtype), cache["values"]),
            "key_position": jnp.where(write, pos[:, None], cache["key_position"]),
            "key_valid": cache["key_valid"] | write,
        }
        return y, new


__all__ = ["SeqBoat", "compress", "extract", "local_attention", "relative_bias", "ATTENTIONS"]
