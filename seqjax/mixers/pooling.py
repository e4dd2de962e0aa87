"""PoNet: token mixing by multi-granularity pooling (Tan et al. 2022).

"PoNet: Pooling Network for Efficient Token Mixing in Long Sequences" (ICLR
2022) replaces self-attention by three poolings of linear projections of the
input ``x_t`` (per token: ``q, k, v, o, s, l``, each of width d), fused per
channel:

* **global aggregation (GA)**, per head of size ``p``: a first stage averages
  the queries, ``g = mean_t q_t``; a second stage lets ``g`` cross-attend to
  the sequence, ``g' = Σ_t softmax_t(g·k_t/√p) v_t`` (one query, so O(L));
* **segment max-pooling (SMP)**: the sequence is cut into segments of
  ``segment_length`` positions and each channel takes its maximum over the
  token's segment, ``s'_t = max_{u ∈ seg(t)} s_u``;
* **local max-pooling (LMP)**: a centered sliding window of ``local_window``
  positions, ``l'_t = max_{|u-t| <= w//2} l_u``;
* **pooling fusion**: GA and SMP interact with each token through its own
  projection ``o_t`` (elementwise), LMP is added:
  ``y_t = (g' + s'_t) ⊙ o_t + l'_t``, then an output projection.

All of it is O(L·d) time and memory, and it is bidirectional only (the mean
query, the segment maximum and the window all look ahead). With packed
``segment_ids`` every packed sequence has its own ``g, g'``, its own
segment grid (counted from its first position) and its windows stop at its
borders, so a packed row equals separate runs; the reductions are segment
sums and maxima over run indices (``jax.ops.segment_*``).

The authors' released code ties the value projection of GA to the key
(``v = k``); the paper writes separate ``X^K, X^V``. ``share_kv`` selects.
Max-pooling makes the mix nonlinear in every projection: no mixing matrix.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_divides, check_int, dense, positions_in_segment, segment_runs
from seqjax.mixers.registry import register
from seqjax.types import SegmentIds, Seq


def _segment_reduce(kind: str, values: jax.Array, ids: jax.Array, count: int) -> jax.Array:
    """``jax.ops.segment_sum``/``segment_max`` over the leading axis, then read back per position.

    Args:
      kind: ``"sum"`` or ``"max"``.
      values: ``(n, ...)``.
      ids: ``(n,)`` sorted group ids in ``[0, count)``.
      count: the number of groups.

    Returns:
      ``(n, ...)``: each position's group total (or maximum).
    """
    reduce = jax.ops.segment_sum if kind == "sum" else jax.ops.segment_max
    return reduce(values, ids, count, indices_are_sorted=True)[ids]


def local_max(x: jax.Array, runs: jax.Array, window: int) -> jax.Array:
    """Centered sliding-window maximum over the length, inside each packed sequence.

    ``out[b, t] = max{x[b, u] : |u - t| <= window // 2, runs[b, u] == runs[b, t]}``
    (PyTorch's ``MaxPool1d(window, stride=1, padding=window // 2)`` per sequence).

    Args:
      x: ``(b, l, c)``.
      runs: ``(b, l)`` run indices (:func:`seqjax.mixers.common.segment_runs`).
      window: odd window size.

    Returns:
      ``(b, l, c)``.
    """
    half = window // 2
    length = x.shape[1]
    xp = jnp.pad(x, ((0, 0), (half, half), (0, 0)), constant_values=-jnp.inf)
    rp = jnp.pad(runs, ((0, 0), (half, half)), constant_values=-1)
    out = x
    for offset in range(window):
        if offset == half:
            continue
        same = (rp[:, offset:offset + length] == runs)[..., None]
        out = jnp.maximum(out, jnp.where(same, xp[:, offset:offset + length], -jnp.inf))
    return out


@register("ponet")
class PoNet(Mixer):
    """PoNet's multi-granularity pooling and pooling fusion (bidirectional only).

    ``y = out_proj((g' + s') ⊙ o + l')`` (module docstring); ``in_proj``
    (with bias, as the paper's linear layers) gives ``q, k, v, o, s, l``.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of the projections; pooling and softmax in float32.
      impl: unused (no op with implementations): ``"auto"`` only.
      sequence_axis: unused (runs unsplit).
      num_heads: heads of the GA cross-attention; divides d_model (2, as the
        paper's LRA runs).
      segment_length: positions per SMP segment, counted from each packed
        sequence's start (32; the paper's LRA runs cut 2K-4K tokens into
        32-64 segments).
      local_window: LMP window, odd (3, the authors' code).
      share_kv: GA's values are its keys (``v = k``, the released code) instead
        of their own projection (the paper's ``X^V``).
    """

    causality = "bidirectional"

    num_heads: int = 2
    segment_length: int = 32
    local_window: int = 3
    share_kv: bool = False

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_heads", self.num_heads)
        check_int(name, "segment_length", self.segment_length)
        check_int(name, "local_window", self.local_window)
        if self.local_window % 2 == 0:
            raise ConfigError(f"{name}.local_window={self.local_window!r} must be odd (a centered window)")
        if not isinstance(self.share_kv, bool):
            raise ConfigError(f"{name}.share_kv={self.share_kv!r} must be a bool")
        if self.d_model is not None:
            check_divides(name, "num_heads", self.num_heads, self.d_model, "d_model")

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        check_divides(self.mixer_name, "num_heads", self.num_heads, d, "d_model")
        branches = 5 if self.share_kv else 6
        return {
            "in_proj": dense(branches * d, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="in_proj"),
            "out_proj": dense(d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="out_proj"),
        }

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        d = x.shape[-1]
        proj = p["in_proj"](x.astype(self.dtype))
        if self.share_kv:
            q, k, o, s, loc = jnp.split(proj, 5, axis=-1)
            v = k
        else:
            q, k, v, o, s, loc = jnp.split(proj, 6, axis=-1)
        heads = x.shape[:2] + (self.num_heads, d // self.num_heads)
        return Projection(tokens=(q.reshape(heads), k.reshape(heads), v.reshape(heads), o, s, loc, segment_ids))

    def mix(self, axis, q, k, v, o, s, loc, segment_ids):
        del axis
        acc = self.acc()
        b, length, h, hp = q.shape
        n = b * length
        q, k, v = (a.astype(acc).reshape(n, h, hp) for a in (q, k, v))
        runs = segment_runs(segment_ids, b, length)
        offset = length * jnp.arange(b, dtype=jnp.int32)[:, None]  # every row's groups after the previous row's
        ids = (runs + offset).reshape(n)

        # GA, first stage: the mean query of each packed sequence.
        count = _segment_reduce("sum", jnp.ones((n,), acc), ids, n)
        g = _segment_reduce("sum", q, ids, n) / count[:, None, None]
        # Second stage: g attends to its sequence (a softmax over the sequence's positions).
        logits = jnp.sum(g * k, axis=-1) / math.sqrt(hp)  # (n, h)
        shift = jax.lax.stop_gradient(_segment_reduce("max", logits, ids, n))  # cancels in the softmax
        e = jnp.exp(logits - shift)
        ga = _segment_reduce("sum", e[..., None] * v, ids, n) / _segment_reduce("sum", e, ids, n)[..., None]

        # SMP: segments of segment_length positions, counted from each packed sequence's start.
        pos = positions_in_segment(segment_ids, b, length)
        chunks = (jnp.cumsum(pos % self.segment_length == 0, axis=1) - 1 + offset).reshape(n)
        smp = _segment_reduce("max", s.astype(acc).reshape(n, -1), chunks, n)

        lmp = local_max(loc.astype(acc), runs, self.local_window)
        return (ga.reshape(b, length, -1) + smp.reshape(b, length, -1)) * o.astype(acc) + lmp

    def output(self, p, y, proj: Projection) -> Seq:
        return p["out_proj"](y.astype(self.dtype)).astype(self.dtype)


__all__ = ["PoNet", "local_max"]
