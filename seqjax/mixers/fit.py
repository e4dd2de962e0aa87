"""FIT: local attention in groups, global attention over per-group latents (Chen & Li 2023).

"FIT: Far-reaching Interleaved Transformers" (arXiv 2305.12689) cuts the
``L`` data tokens into ``T = ⌈L/n⌉`` groups of ``n`` (``group_size``) and gives
every group ``m`` latent tokens (``num_latents``, learned initial values
shared by the groups). One FIT block, which is one call of this mixer, is
(pre-LayerNorm residual layers, as the paper's transformer layers):

1. **local layers** (``local_layers``), inside each group ``X_g`` (n tokens):
   ``X_g ← X_g + MHA(LN(X_g))``, then ``X_g ← X_g + FFN(LN(X_g))``;
2. **read**: the group's latents cross-attend to its tokens,
   ``Z_g ← Z_g + MHA(q = LN(Z_g), kv = LN'(X_g))``;
3. **global layers** (``global_layers``) over the ``T·m`` latents of all
   groups: ``Z ← Z + MHA(LN(Z))``, then ``Z ← Z + FFN(LN(Z))``;
4. **write**: the group's tokens cross-attend to its latents,
   ``X_g ← X_g + MHA(q = LN(X_g), kv = LN'(Z_g))``;

then an output projection of the tokens. ``MHA`` has its own ``W_q, W_k,
W_v, W_o`` per layer (no biases), ``FFN(u) = W_2 gelu(W_1 u + b_1) + b_2``
with hidden width ``mlp_ratio · d`` (``mlp_ratio = 0``: no FFN), ``gelu`` the
tanh form, LayerNorm with ε = 1e-6. The latents here have the tokens' width
``d`` (the paper allows a different one) and neither carries a position
embedding: positions are the model's business (as for ``mha`` with
``positions="none"``).

Cost (the paper's Sec. 2): local attention ``O(L·n)``, read/write ``O(L·m)``,
global attention ``O((L·m/n)²)``; with ``n ∝ L^(1/3)`` and fixed ``m`` the
total is ``O(L^(4/3))``. Every attention call is ``seqjax.ops.attention``
(the ``impl`` field picks its implementation): groups are folded into the
batch for the local, read and write steps, the latents form one sequence for
the global step. With ``impl="reference"`` the global scores are materialised,
so compiled memory grows with ``(T·m)²``; ``"blockwise"`` keeps it linear.

Lengths that are not a multiple of ``n``: the last group is padded with
zero tokens that no query sees (segment masks of the attention calls) and
whose outputs are dropped, so it equals a group of the shorter length.

Packed sequences (``segment_ids``): every packed sequence has its own groups,
counted from its first position (the last one may be short), its own latents,
and the global layers see only the latents of the same sequence, so a packed
row equals separate runs. The tokens are scattered onto a grid of group slots;
the number of groups of a packed row is data dependent (each sequence's last
group may be short), so the grid has the static worst case of ``L`` slots
(``L·n`` token places, ``L·m`` latents, empty slots masked): exact, but
costlier than the unpacked path (``⌈L/n⌉`` slots).

Bidirectional only (the paper's encoder setting): a token reads its group's
latents, which read every token of the group, and the global layers mix all
groups. The mix is not linear in any projection of ``x`` (each stage's output
is the next stage's queries and keys, through LayerNorms and FFNs), so there
is no mixing matrix (``values_index = None``).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import (
    check_divides, check_int, check_number, dense, param, positions_in_segment, scaled_normal_init, segment_runs)
from seqjax.mixers.registry import register
from seqjax.ops import attention
from seqjax.types import SegmentIds, Seq

LN_EPS = 1e-6


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """LayerNorm over the last axis in ``x``'s dtype: ``(x − μ)/√(σ² + ε) · scale + bias``.

    Args:
      x: ``(..., d)``, float32 or float64 (the residual stream's dtype).
      scale: ``(d,)``.
      bias: ``(d,)``.

    Returns:
      ``(..., d)`` in ``x``'s dtype.
    """
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + LN_EPS) * scale.astype(x.dtype) + bias.astype(x.dtype)


@register("fit")
class FIT(Mixer):
    """One FIT block: local layers, latent read, global layers, write back (bidirectional).

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the matrix products and attention inputs; the
        residual streams, LayerNorms and softmax statistics are float32
        (float64 for float64).
      impl: implementation of every ``attention`` call (``"auto"``,
        ``"reference"``, ``"blockwise"``, ...).
      sequence_axis: unused (runs unsplit).
      num_heads: attention heads of every layer; divides ``d_model``.
      group_size: data tokens per group ``n`` (64).
      num_latents: latent tokens per group ``m`` (8).
      local_layers: local transformer layers per block (1; 0 allowed).
      global_layers: global transformer layers per block (1; 0 allowed).
      mlp_ratio: FFN hidden width over ``d`` in the local and global layers
        (4.0, the standard transformer's; 0: attention-only layers).
    """

    causality = "bidirectional"
    ops = ("attention",)

    num_heads: int = 2
    group_size: int = 64
    num_latents: int = 8
    local_layers: int = 1
    global_layers: int = 1
    mlp_ratio: float = 4.0

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_heads", self.num_heads)
        check_int(name, "group_size", self.group_size)
        check_int(name, "num_latents", self.num_latents)
        check_int(name, "local_layers", self.local_layers, minimum=0)
        check_int(name, "global_layers", self.global_layers, minimum=0)
        check_number(name, "mlp_ratio", self.mlp_ratio, low=0)
        if self.d_model is not None:
            check_divides(name, "num_heads", self.num_heads, self.d_model, "d_model")

    def hidden(self, d: int) -> int:
        """The FFN hidden width ``round(mlp_ratio · d)`` (0: no FFN)."""
        return int(round(self.mlp_ratio * d))

    def layer_names(self) -> tuple[list[str], list[str]]:
        """Parameter prefixes of the self-attention layers: ``(local, global)``."""
        return ([f"local{i}" for i in range(self.local_layers)],
                [f"global{i}" for i in range(self.global_layers)])

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        check_divides(self.mixer_name, "num_heads", self.num_heads, d, "d_model")
        kernel = nn.initializers.lecun_normal()
        ones, zeros = nn.initializers.ones_init(), nn.initializers.zeros_init()
        w = {"latents": param(self, "latents", scaled_normal_init(0.02), (self.num_latents, d), (None, "embed"))}

        def add(name, init, shape, axes):
            w[name] = param(self, name, init, shape, axes)

        def attention_layer(prefix, cross):
            add(f"{prefix}_ln_scale", ones, (d,), ("embed",))
            add(f"{prefix}_ln_bias", zeros, (d,), ("embed",))
            if cross:  # the keys/values side has its own LayerNorm
                add(f"{prefix}_lnkv_scale", ones, (d,), ("embed",))
                add(f"{prefix}_lnkv_bias", zeros, (d,), ("embed",))
            for proj in ("q", "k", "v"):
                add(f"{prefix}_{proj}", kernel, (d, d), ("embed", "mlp"))
            add(f"{prefix}_o", kernel, (d, d), ("mlp", "embed"))

        def ffn(prefix):
            f = self.hidden(d)
            if f == 0:
                return
            add(f"{prefix}_ffn_ln_scale", ones, (d,), ("embed",))
            add(f"{prefix}_ffn_ln_bias", zeros, (d,), ("embed",))
            add(f"{prefix}_w1", kernel, (d, f), ("embed", "mlp"))
            add(f"{prefix}_b1", zeros, (f,), ("mlp",))
            add(f"{prefix}_w2", kernel, (f, d), ("mlp", "embed"))
            add(f"{prefix}_b2", zeros, (d,), ("embed",))

        local, glob = self.layer_names()
        for prefix in local:
            attention_layer(prefix, cross=False)
            ffn(prefix)
        attention_layer("read", cross=True)
        for prefix in glob:
            attention_layer(prefix, cross=False)
            ffn(prefix)
        attention_layer("write", cross=True)
        return {"w": w, "out_proj": dense(d, ("mlp", "embed"), dtype=self.dtype, name="out_proj")}

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        return Projection(tokens=(x, segment_ids), shared=(p["w"],))

    # --- the block ---------------------------------------------------------------------

    def _mm(self, a: jax.Array, w: jax.Array) -> jax.Array:
        """``a @ w`` in the compute dtype, accumulated (and returned) in the accumulation dtype."""
        return jnp.einsum("...i,ij->...j", a.astype(self.dtype), w.astype(self.dtype),
                          preferred_element_type=self.acc())

    def _attend(self, w, prefix, q_in, kv_in, segment_ids):
        """``MHA(q = LN(q_in), kv = LN'(kv_in))`` of layer ``prefix`` (``kv_in`` None: self-attention).

        Args:
          w: the parameters.
          prefix: the layer's parameter prefix.
          q_in: ``(B, lq, d)`` residual stream of the queries (accumulation dtype).
          kv_in: ``(B, lk, d)`` residual stream of the keys and values, or None.
          segment_ids: as :func:`seqjax.ops.attention` takes them (masks), or None.

        Returns:
          ``(B, lq, d)`` in the accumulation dtype (before the residual add).
        """
        d = q_in.shape[-1]
        h = self.num_heads
        qn = layer_norm(q_in, w[f"{prefix}_ln_scale"], w[f"{prefix}_ln_bias"])
        kvn = qn if kv_in is None else layer_norm(kv_in, w[f"{prefix}_lnkv_scale"], w[f"{prefix}_lnkv_bias"])

        def heads(u, proj):
            y = self._mm(u, w[f"{prefix}_{proj}"]).astype(self.dtype)
            return y.reshape(u.shape[:2] + (h, d // h))

        o = attention(heads(qn, "q"), heads(kvn, "k"), heads(kvn, "v"), segment_ids=segment_ids,
                      impl=self.impl_for("attention"))
        return self._mm(o.reshape(q_in.shape), w[f"{prefix}_o"])

    def _ffn(self, w, prefix, u):
        """``u + FFN(LN(u))`` of layer ``prefix`` (``u`` itself when ``mlp_ratio`` is 0)."""
        if f"{prefix}_w1" not in w:
            return u
        a = layer_norm(u, w[f"{prefix}_ffn_ln_scale"], w[f"{prefix}_ffn_ln_bias"])
        a = jax.nn.gelu(self._mm(a, w[f"{prefix}_w1"]) + w[f"{prefix}_b1"].astype(u.dtype), approximate=True)
        return u + self._mm(a, w[f"{prefix}_w2"]) + w[f"{prefix}_b2"].astype(u.dtype)

    def _grid(self, x, segment_ids):
        """The tokens on a grid of group slots.

        Returns:
          ``(grid (b, G, n, d), valid (b, G, n) bool, group_ids (b, G) or None,
          read)``: ``group_ids`` is each slot's packed sequence (−1: an empty
          slot; None without segments), ``read(grid)`` takes ``(b, L, d)`` back.
        """
        b, length, d = x.shape
        n = self.group_size
        if segment_ids is None:
            groups = -(-length // n)
            grid = jnp.pad(x, ((0, 0), (0, groups * n - length), (0, 0))).reshape(b, groups, n, d)
            valid = jnp.broadcast_to((jnp.arange(groups * n) < length).reshape(1, groups, n), (b, groups, n))
            return grid, valid, None, lambda g: g.reshape(b, groups * n, d)[:, :length]
        # Groups restart at every packed sequence's first position; their number depends on
        # the data (a sequence's last group may be short), so the grid holds the worst case:
        # one group slot per position.
        groups = length
        runs = segment_runs(segment_ids, b, length)
        pos = positions_in_segment(segment_ids, b, length)
        group = jnp.cumsum((pos % n == 0).astype(jnp.int32), axis=1) - 1  # (b, L), in [0, L)
        slot = group * n + pos % n
        rows = jnp.arange(b)[:, None]
        grid = jnp.zeros((b, groups * n, d), x.dtype).at[rows, slot].set(x).reshape(b, groups, n, d)
        valid = jnp.zeros((b, groups * n), bool).at[rows, slot].set(True).reshape(b, groups, n)
        group_ids = jnp.full((b, groups), -1, jnp.int32).at[rows, group].set(runs)
        return grid, valid, group_ids, lambda g: g.reshape(b, groups * n, d)[rows, slot]

    def mix(self, axis, x, segment_ids, w):
        del axis
        acc = self.acc()
        b, length, d = x.shape
        n, m = self.group_size, self.num_latents
        grid, valid, group_ids, read = self._grid(x.astype(acc), segment_ids)
        groups = grid.shape[1]
        tok = grid.reshape(b * groups, n, d)
        # Padding (and empty slots) as segment 0, real tokens 1: no real query sees padding.
        tok_ids = valid.reshape(b * groups, n).astype(jnp.int32)
        local, glob = self.layer_names()
        for prefix in local:
            tok = self._ffn(w, prefix, tok + self._attend(w, prefix, tok, None, tok_ids))
        lat = jnp.broadcast_to(w["latents"].astype(acc), (b * groups, m, d))
        lat = lat + self._attend(w, "read", lat, tok, (jnp.ones((b * groups, m), jnp.int32), tok_ids))
        lat = lat.reshape(b, groups * m, d)
        lat_ids = None if group_ids is None else jnp.repeat(group_ids, m, axis=1)
        for prefix in glob:
            lat = self._ffn(w, prefix, lat + self._attend(w, prefix, lat, None, lat_ids))
        lat = lat.reshape(b * groups, m, d)
        tok = tok + self._attend(w, "write", tok, lat, None)
        return read(tok.reshape(b, groups, n, d))

    def output(self, p, y, proj: Projection) -> Seq:
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)


__all__ = ["FIT", "layer_norm", "LN_EPS"]
