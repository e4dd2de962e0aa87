"""Routing attention (Roy, Saffar, Vaswani & Grangier 2021, "Efficient Content-Based
Sparse Attention with Routing Transformers"), causal.

Half of the heads (``num_routing_heads``) route by online k-means: the
queries are shared with the keys (``K = Q``, the paper's causal LM setting),
each head keeps ``num_clusters`` centroids ``μ`` (unit-normalised for the
assignment), and a token attends, with the causal mask, only to tokens of its
own cluster. The other heads (``num_local_heads``) are sliding-window
attention. The centroids are not trained by gradients: they live in the
non-``"params"`` variable collection ``"routing"`` and move by the paper's
exponential moving average (:func:`update_centroids`) when the module is
applied with ``deterministic=False`` and ``mutable=["routing"]``.

Two parallel forms (``balanced``):

* ``balanced=True`` (the paper's training fast path): each centroid takes its
  ``w = ceil(L / num_clusters)`` closest tokens (top-w of ``μ̂_c · q̂_t``), so
  every cluster has the same size; tokens are gathered per cluster in position
  order, attend blockwise inside the cluster (causal on the original
  positions, same segment), and are scattered back. O(L·w·d) = O(L^1.5 d) time
  with ``num_clusters ≈ √L``.
* ``balanced=False``: each token goes to its nearest centroid (argmax) and
  attends to every earlier token of that cluster: the decode rule, which
  :meth:`RoutingAttention.step` follows exactly. Run as one attention call whose
  segment ids are (segment run, cluster): O(L²d) time, O(L·d) memory.

The balanced form only approximates the decode rule: a token kept by no
centroid's top-w, or kept by another centroid than its nearest, attends
differently from ``step``; and because the top-w selection compares all tokens
of the row, a later token can change which earlier tokens a cluster keeps (the
values still flow only from the past, but the routing of position t sees the
whole row). Use ``balanced=False`` where exact causality or parity with
decoding matters.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.common import check_input, check_int, check_number, check_option, dense, segment_runs
from seqjax.mixers.registry import register
from seqjax.ops.attention import attention
from seqjax.types import SegmentIds, Seq, SeqStep

COLLECTION = "routing"  # the variable collection of the centroids


def _unit(x: jax.Array, acc) -> jax.Array:
    """``x / ‖x‖`` over the last axis, in ``acc`` (a zero vector stays zero)."""
    x = x.astype(acc)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), jnp.finfo(acc).tiny))


def assign(q: jax.Array, centroids: jax.Array) -> jax.Array:
    """Nearest centroid of each routing query (dot product of unit vectors).

    Args:
      q: ``(b, l, h, dh)`` routing queries (= keys), any scale.
      centroids: ``(h, k, dh)``, any scale.

    Returns:
      ``(b, l, h)`` int32 cluster ids.
    """
    acc = jnp.promote_types(q.dtype, jnp.float32)
    scores = jnp.einsum("blhd,hkd->blhk", _unit(q, acc), _unit(centroids, acc))
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def update_centroids(centroids: jax.Array, q: jax.Array, decay: float, mask: jax.Array | None = None) -> jax.Array:
    """One online k-means step: the paper's exponential moving average of the centroids.

    ``μ ← λ μ + (1−λ)/2 Σ_{i: μ(Q_i)=μ} Q̂_i + (1−λ)/2 Σ_{j: μ(K_j)=μ} K̂_j``; with
    shared queries and keys (``K = Q``) the two sums are one,
    ``μ ← λ μ + (1−λ) Σ_{t: μ(q_t)=μ} q̂_t``, over every token of the batch,
    ``q̂`` the unit-normalised query and ``μ(q)`` its nearest centroid
    (:func:`assign`). ``μ`` itself is not renormalised (the routing uses only
    its direction), as in the paper's formula. Pure: no gradient flows through it.

    Args:
      centroids: ``(h, k, dh)`` float32.
      q: ``(b, l, h, dh)`` routing queries.
      decay: ``λ`` in [0, 1).
      mask: optional ``(b, l)`` booleans: tokens that take part (others, such as
        padding, do not move the centroids).

    Returns:
      The new ``(h, k, dh)`` centroids, in ``centroids``' dtype.
    """
    centroids, q = jax.lax.stop_gradient(centroids), jax.lax.stop_gradient(q)
    acc = jnp.promote_types(centroids.dtype, jnp.float32)
    k = centroids.shape[1]
    member = jax.nn.one_hot(assign(q, centroids), k, dtype=acc)  # (b, l, h, k)
    if mask is not None:
        member = member * jnp.asarray(mask, acc)[:, :, None, None]
    sums = jnp.einsum("blhk,blhd->hkd", member, _unit(q, acc), precision=jax.lax.Precision.HIGHEST)
    return (decay * centroids.astype(acc) + (1.0 - decay) * sums).astype(centroids.dtype)


def _init_centroids(key, shape):
    """Random normal directions, normalised to unit length (the paper's random init)."""
    return _unit(jax.random.normal(key, shape, jnp.float32), jnp.float32)


@register("routing")
class RoutingAttention(Mixer):
    """Routing Transformer attention: k-means routing heads beside local heads (causal).

    With ``hr`` routing and ``hl`` local heads of size ``dh``::

        q_t = W_q x_t (hr + hl heads),  k_t = W_k x_t (hl local heads),  v_t = W_v x_t
        routing head r: k = q (shared),  c(t) = argmax_c μ̂_c · q̂_t
          o_t = Σ_{s ≤ t, s ∈ C(t)} softmax_s(q_t·q_s / √dh) v_s
        local head:    o_t = Σ_{t−window < s ≤ t} softmax_s(q_t·k_s / √dh) v_s
        y_t = W_o concat_h(o_t)

    (all in the same segment). ``C(t)``: with ``balanced=False``, the tokens
    whose nearest centroid is ``c(t)``; with ``balanced=True``, each cluster
    ``c`` is the top ``w = ceil(L/k)`` tokens by ``μ̂_c·q̂_t`` (see the module
    docstring), a token kept by several clusters takes the **average** of its
    outputs in each (the scatter divides by the count), and a token kept by
    none attends to **itself only** in that head (``o_t = v_t``; its local
    heads still see the window). A token always attends to itself (shared
    Q/K, as in the paper; no self-mask). No position encoding: the local heads
    and the model around them supply order.

    Mixing matrix (per head, acting on ``v``; given the routing the mixer is
    linear in ``v``): for routing heads the in-cluster causal softmax rows
    (averaged over the clusters that keep ``t`` when balanced), for local
    heads the banded causal softmax.

    Complexity: balanced O(L·w·d) time (O(L^1.5·d) with k ≈ √L), O(L·k)
    routing scores plus O(L·w) in-cluster scores (O(L·d) once the attention
    op goes blockwise, w ≥ 256 on CPU with ``impl="auto"``); unbalanced
    O(L²·d) time, O(L·d) memory with the blockwise op.
    Decoding: O(L·d) per step against a cache of all routing keys/values with
    their cluster ids plus a window ring buffer for the local heads.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype (and cache dtype); parameters and centroids are float32.
      impl: ``impl`` of :func:`seqjax.ops.attention`.
      num_routing_heads: k-means routing heads ``hr`` (2); 0 for local heads only.
      num_local_heads: sliding-window heads ``hl`` (2); 0 for routing heads only.
      head_dim: ``dh`` (None: ``d_model // (hr + hl)``).
      num_clusters: centroids per routing head ``k`` (4; the paper takes ≈ √L).
      window: keys each local head sees, itself included (16).
      balanced: the top-w balanced clusters (True, the paper's training path)
        or nearest-centroid clusters (False, equal to ``step``).
      ema_decay: ``λ`` of the centroid update (0.999, the paper's).
      max_length: the default routing KV-cache length of ``init_cache``.
    """

    ops = ("attention",)
    causality = "causal"
    values_index = 3  # v (b, l, h, dh)

    num_routing_heads: int = 2
    num_local_heads: int = 2
    head_dim: int | None = None
    num_clusters: int = 4
    window: int = 16
    balanced: bool = True
    ema_decay: float = 0.999
    max_length: int | None = None

    # --- configuration and parameters -----------------------------------------------

    def check_fields(self):
        name = self.mixer_name
        check_int(name, "num_routing_heads", self.num_routing_heads, minimum=0)
        check_int(name, "num_local_heads", self.num_local_heads, minimum=0)
        if self.num_routing_heads + self.num_local_heads < 1:
            raise ConfigError(f"{name}.num_routing_heads={self.num_routing_heads!r}: with num_local_heads="
                              f"{self.num_local_heads!r} there are no heads; allowed: a sum >= 1")
        check_int(name, "head_dim", self.head_dim, optional=True)
        check_int(name, "num_clusters", self.num_clusters)
        check_int(name, "window", self.window)
        check_option(name, "balanced", self.balanced, (True, False))
        check_number(name, "ema_decay", self.ema_decay, low=0.0, high=1.0)
        if self.ema_decay == 1.0:
            raise ConfigError(f"{name}.ema_decay=1.0 never moves the centroids; allowed: a number in [0, 1)")
        check_int(name, "max_length", self.max_length, optional=True)
        if self.d_model is not None:
            self.heads(self.d_model)

    def heads(self, d: int) -> tuple[int, int, int]:
        """``(hr, hl, dh)`` for width ``d``."""
        hr, hl, dh = self.num_routing_heads, self.num_local_heads, self.head_dim
        if dh is None:
            if d % (hr + hl):
                raise ConfigError(f"{self.mixer_name}.num_routing_heads={hr!r}: with num_local_heads={hl!r} the "
                                  f"{hr + hl} heads must divide d_model={d} (or set head_dim)")
            dh = d // (hr + hl)
        return hr, hl, dh

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        hr, hl, dh = self.heads(d)
        # Read always; the init function runs only when the collection has no centroids yet.
        centroids = self.variable(COLLECTION, "centroids",
                                  lambda: _init_centroids(self.make_rng("params"), (hr, self.num_clusters, dh)))
        parts = {
            "q_proj": dense((hr + hl) * dh, ("embed", "heads"), dtype=self.dtype, name="q_proj"),
            "v_proj": dense((hr + hl) * dh, ("embed", "heads"), dtype=self.dtype, name="v_proj"),
            "out_proj": dense(d, ("heads", "embed"), dtype=self.dtype, name="out_proj"),
            "centroids": centroids,
        }
        if hl:  # the local heads' keys (routing heads share theirs with the queries)
            parts["k_proj"] = dense(hl * dh, ("embed", "heads"), dtype=self.dtype, name="k_proj")
        return parts

    def _qkv(self, p, x):
        """``qr (b,l,hr,dh)``, ``ql (b,l,hl,dh)``, ``kl (b,l,hl,dh)``, ``v (b,l,hr+hl,dh)``."""
        b, length, d = x.shape
        hr, hl, dh = self.heads(d)
        xc = x.astype(self.dtype)
        q = p["q_proj"](xc).reshape(b, length, hr + hl, dh)
        kl = p["k_proj"](xc).reshape(b, length, hl, dh) if hl else q[:, :, :0]
        v = p["v_proj"](xc).reshape(b, length, hr + hl, dh)
        return q[:, :, :hr], q[:, :, hr:], kl, v

    # --- the hooks of the Mixer contract ---------------------------------------------

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        b, length, _ = x.shape
        qr, ql, kl, v = self._qkv(p, x)
        # Run indices, not raw ids: a reused id (0, 1, 0) is still three sequences.
        runs = segment_runs(segment_ids, b, length)
        return Projection(tokens=(qr, ql, kl, v, runs), shared=(p["centroids"].value,))

    def mix(self, axis, qr, ql, kl, v, runs, centroids):
        del axis  # no sequence parallelism
        hr = qr.shape[2]
        outs = []
        if hr:
            route = self._balanced if self.balanced else self._nearest
            outs.append(route(qr, v[:, :, :hr], runs, centroids))
        if ql.shape[2]:
            outs.append(attention(ql, kl, v[:, :, hr:], causal=True, segment_ids=runs, window=self.window,
                                  impl=self.impl_for("attention")))
        return jnp.concatenate(outs, axis=2) if len(outs) > 1 else outs[0]

    def _nearest(self, qr, vr, runs, centroids):
        """Nearest-centroid routing: one causal attention whose segments are (run, cluster) pairs."""
        b, length, hr, dh = qr.shape
        cid = assign(qr, centroids)  # (b, l, hr)
        seg = runs[:, :, None] * self.num_clusters + cid
        fold = lambda a: jnp.moveaxis(a, 2, 1).reshape((b * hr, length) + a.shape[3:])  # noqa: E731
        o = attention(fold(qr)[:, :, None], fold(qr)[:, :, None], fold(vr)[:, :, None], causal=True,
                      segment_ids=fold(seg[..., None])[..., 0], impl=self.impl_for("attention"))
        return jnp.moveaxis(o[:, :, 0].reshape(b, hr, length, dh), 1, 2)

    def _balanced(self, qr, vr, runs, centroids):
        """Balanced routing: top-w tokens per centroid, attention inside each cluster, scatter back."""
        b, length, hr, dh = qr.shape
        k = self.num_clusters
        w = min(length, -(-length // k))
        acc = self.acc()
        scores = jnp.einsum("blhd,hkd->bhkl", _unit(qr, acc), _unit(centroids, acc))
        # Integer routing: no gradient flows through the selection.
        _, idx = jax.lax.top_k(jax.lax.stop_gradient(scores), w)  # (b, hr, k, w)
        idx = jnp.sort(idx, axis=-1)  # position order, so the causal mask on the cluster's order is the original one
        qh, vh = jnp.moveaxis(qr, 2, 1), jnp.moveaxis(vr, 2, 1)  # (b, hr, l, dh)
        flat = idx.reshape(b, hr, k * w)
        gather = lambda a: jnp.take_along_axis(a, flat[..., None], axis=2).reshape(b * hr * k, w, 1, dh)  # noqa: E731
        qg, vg = gather(qh), gather(vh)
        seg = jnp.take_along_axis(jnp.broadcast_to(runs[:, None], (b, hr, length)), flat, axis=2)
        o = attention(qg, qg, vg, causal=True, segment_ids=seg.reshape(b * hr * k, w),
                      impl=self.impl_for("attention"))
        o = o.reshape(b, hr, k * w, dh).astype(acc)
        rows = jnp.arange(b)[:, None, None]
        heads = jnp.arange(hr)[None, :, None]
        total = jnp.zeros((b, hr, length, dh), acc).at[rows, heads, flat].add(o)
        count = jnp.zeros((b, hr, length), acc).at[rows, heads, flat].add(1.0)
        # A token kept by several clusters averages its outputs; one kept by none attends to itself.
        mean = total / jnp.maximum(count, 1.0)[..., None]
        o = jnp.where(count[..., None] > 0, mean, vh.astype(acc))
        return jnp.moveaxis(o, 1, 2).astype(qr.dtype)

    def output(self, p, o, proj: Projection) -> Seq:
        del proj
        return p["out_proj"](o.reshape(o.shape[:-2] + (-1,)).astype(self.dtype)).astype(self.dtype)

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """Runs the mixer; with ``deterministic=False`` and ``mutable=["routing"]`` also moves the centroids.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids of packed sequences.
          deterministic: False (training) updates the centroids by
            :func:`update_centroids` when the ``"routing"`` collection is
            mutable; the output always uses the centroids as they were.

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        check_input(self.mixer_name, x, segment_ids)
        p = self.parts(self.width(x))
        proj = self.project(p, x, segment_ids)
        y = self.mix(None, *proj.tokens, *proj.shared)
        if (not deterministic and self.num_routing_heads and self.is_mutable_collection(COLLECTION)
                and not self.is_initializing()):
            p["centroids"].value = update_centroids(p["centroids"].value, proj.tokens[0], self.ema_decay)
        return self.output(p, y, proj)

    # --- decoding ----------------------------------------------------------------------

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """Routing keys/values and cluster ids per position, a local ring buffer, the position.

        ``{"k", "v": (b, slots, hr, dh), "cid": (b, slots, hr) int32,
        "lk", "lv": (b, window, hl, dh), "pos": (b,) int32}``; ``slots`` is
        ``max_length`` (else the field).
        """
        hr, hl, dh = self.heads(d)
        slots = max_length if max_length is not None else self.max_length
        if slots is None:
            raise ValueError(f"{self.mixer_name}: max_length is required for its cache (one slot per position); "
                             "pass init_cache(batch_size, max_length) or set the max_length field")
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise ValueError(f"{self.mixer_name}: max_length must be a positive int, got {slots!r}")
        kv = jnp.zeros((batch_size, slots, hr, dh), self.dtype)
        ring = jnp.zeros((batch_size, self.window, hl, dh), self.dtype)
        return {"k": kv, "v": kv, "cid": jnp.zeros((batch_size, slots, hr), jnp.int32), "lk": ring, "lv": ring,
                "pos": jnp.zeros((batch_size,), jnp.int32)}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        """One decoding position: the paper's rule, the new token's nearest cluster of the cached tokens.

        Equals ``balanced=False`` exactly (not the balanced training path).
        Past the cache's end the output is NaN (a jitted step cannot raise).
        """
        b = x_t.shape[0]
        pos = cache["pos"]
        qr, ql, kl, v = self._qkv(p, x_t[:, None])
        hr = qr.shape[2]
        rows = jnp.arange(b)
        acc = self.acc()
        outs = []
        new = dict(cache, pos=pos + 1)
        if hr:
            cid = assign(qr, p["centroids"].value)[:, 0]  # (b, hr)
            slots = cache["k"].shape[1]
            kc = cache["k"].at[rows, pos].set(qr[:, 0].astype(cache["k"].dtype), mode="drop")
            vc = cache["v"].at[rows, pos].set(v[:, 0, :hr].astype(cache["v"].dtype), mode="drop")
            cc = cache["cid"].at[rows, pos].set(cid, mode="drop")
            seen = jnp.arange(slots)[None, :, None] <= pos[:, None, None]
            mask = seen & (cc == cid[:, None, :])  # (b, slots, hr)
            o = _masked_softmax_average(qr[:, 0], kc, vc, mask, acc)
            outs.append(jnp.where((pos < slots)[:, None, None], o, jnp.nan))
            new.update(k=kc, v=vc, cid=cc)
        if ql.shape[2]:
            slot = pos % self.window
            lk = cache["lk"].at[rows, slot].set(kl[:, 0].astype(cache["lk"].dtype))
            lv = cache["lv"].at[rows, slot].set(v[:, 0, hr:].astype(cache["lv"].dtype))
            # Before the ring wraps, the filled slots are 0..pos; afterwards all of them.
            mask = (jnp.arange(self.window)[None, :] <= pos[:, None])[:, :, None]
            mask = jnp.broadcast_to(mask, lk.shape[:3])
            outs.append(_masked_softmax_average(ql[:, 0], lk, lv, mask, acc))
            new.update(lk=lk, lv=lv)
        o = jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
        return self.output(p, o.astype(self.dtype), Projection()), new


def _masked_softmax_average(q, k, v, mask, acc):
    """``Σ_j softmax_j(q·k_j/√dh) v_j`` over the visible slots; ``q (b,h,dh)``, ``k, v (b,s,h,dh)``, ``mask (b,s,h)``."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = jnp.einsum("bhd,bshd->bhs", q.astype(acc), k.astype(acc)) * scale
    s = jnp.where(jnp.moveaxis(mask, 1, 2), s, -jnp.inf)
    prob = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhs,bshd->bhd", prob, v.astype(acc))


__all__ = ["RoutingAttention", "assign", "update_centroids", "COLLECTION"]
