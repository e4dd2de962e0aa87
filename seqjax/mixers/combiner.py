"""Combiner: full attention through local abstractions (Ren et al., NeurIPS 2021, arXiv 2107.05768).

Combiner reads softmax attention as a conditional expectation ``A(x_i) =
E_{p(j|i)}[v_j]`` and factorises ``p(j|i)`` so that every position still gets
nonzero weight (full attention) at sub-quadratic cost. The positions a query
``i`` may see are split into its own part ``Ω⁰_i`` (attended directly) and
regions ``Ω¹_i … Ωⁿ_i``; a region is attended through one abstraction, with the
paper's local factorisation ``p(j|i) = p(Ω^r_i|i) · q(j|Ω^r_i)`` for ``j ∈ Ω^r_i``
(eq. 6-7). Per head, with ``s(a, b) = a·b / √dh``::

    q_R = maxpool_{j∈R} q_j,   k_R = maxpool_{j∈R} k_j                (max pooling, the paper's choice)
    q(j|R) = exp s(q_R, k_j) / Σ_{j'∈R} exp s(q_R, k_j')               (independent of the query)
    Z_i  = Σ_{j∈Ω⁰_i} exp s(q_i, k_j) + Σ_r exp s(q_i, k_{Ω^r_i})
    p(j|i) = exp s(q_i, k_j) / Z_i                                     j ∈ Ω⁰_i
    p(j|i) = exp s(q_i, k_{Ω^r_i}) / Z_i · q(j|Ω^r_i)                  j ∈ Ω^r_i
    A(x_i) = Σ_j p(j|i) v_j

(the region's value is ``v_R = Σ_{j∈R} q(j|R) v_j``). The region layouts
(``variant``; ``s = region_size``; positions ``p`` counted from the segment start):

* ``"fixed"`` (Combiner-Fixed, from Sparse Transformer's fixed pattern): spans
  ``⌊p/s⌋``; ``Ω⁰_i`` = the query's span, every other visible span is one region.
* ``"axial"`` (Combiner-Axial, default): the sequence as rows of ``s``
  (row ``⌊p/s⌋``, column ``p mod s``); ``Ω⁰_i`` = the query's row and column
  (the axial pattern); the rest of column ``c ≠ c_i`` is one region above the
  query's row (rows ``< row_i``) and, bidirectional, one below (rows ``> row_i``).
* ``"logsparse"`` (Combiner-Logsparse): leaves of ``s`` positions under a
  binary tree; ``Ω⁰_i`` = the query's leaf; for each level ``k`` the sibling of
  the query's level-``k`` ancestor (2^k leaves, the leaves whose index first
  differs from the query's in bit ``k``) is one region, so the regions grow
  exponentially away from the query (causal: only siblings on the left).

These are the paper's causal plans (§4: eq. 10, "axial-vertical", and §4.2,
whose regions from the bits of ``i-1`` are these aligned dyadic blocks, exactly
so at ``s = 1``); the paper's bidirectional axial and logsparse plans are in
its appendices, and the bidirectional forms here mirror the causal ones.

Causal: only ``j <= i`` are visible (``Ω⁰`` cut at ``i``; the regions are then
whole earlier spans / column prefixes / left siblings). Every visible position
is in exactly one part, so the attention is full (checked by the tests).

Segments: the layout is laid on the positions inside each segment and every
part is cut to the query's segment, so a packed row equals separate runs. The
blocked fast path serves rows without ``segment_ids``; with them, the mix runs
:func:`combiner_rows` over the whole row (O(L²·dh), the same definitions): a
packed document need not start on a region boundary, and realigning every
document to the region grid is not done here.

Cost (fast path, per head): fixed and axial O(L·(s + L/s)·dh), O(L√L·dh) at
``s ≈ √L``; logsparse O(L·(s + log L)·dh). Decoding (``step``) keeps a cache of
``q, k, v`` (the abstractions need the region's queries) and recomputes the
query's row from the definitions: O(t·dh) per step.
"""

import math

import jax
import jax.numpy as jnp

from seqjax.mixers.attention import Cache, RopeHeads, cache_slots
from seqjax.mixers.base import Projection
from seqjax.mixers.common import check_int, check_option, positions_in_segment, segment_runs
from seqjax.mixers.registry import register
from seqjax.types import SeqStep

VARIANTS = ("axial", "fixed", "logsparse")


# --- the layout: which part of query i's attention key j belongs to --------------------


def part_labels(p_i, p_j, visible, variant: str, region_size: int):
    """The part of ``Ω_i`` that key ``j`` is in: -1 not visible, 0 ``Ω⁰_i``, ``g >= 1`` a region.

    Labels of one query are distinct per region (they index the abstraction);
    the same label means the same region only for the same query.

    Args:
      p_i: query positions inside their segment (broadcastable int array).
      p_j: key positions inside their segment.
      visible: keys the query may see (same segment; ``j <= i`` when causal): the
        visible set cuts the layout, so causal and bidirectional share the labels.
      variant: ``"fixed"``, ``"axial"`` or ``"logsparse"``.
      region_size: ``s``.

    Returns:
      int32 labels in ``[-1, num_labels(...))``.
    """
    s = region_size
    if variant == "fixed":
        ri, rj = p_i // s, p_j // s
        label = jnp.where(ri == rj, 0, 1 + rj)
    elif variant == "axial":
        ri, rj, ci, cj = p_i // s, p_j // s, p_i % s, p_j % s
        region = 1 + cj + s * (rj > ri)  # column cj above (or below) the query's row
        label = jnp.where((ri == rj) | (ci == cj), 0, region)
    else:
        ri, rj = p_i // s, p_j // s
        diff = jnp.bitwise_xor(ri, rj)
        # Level of the sibling subtree holding j: the highest bit where the leaves differ.
        level = 31 - jax.lax.clz(jnp.maximum(diff, 1).astype(jnp.int32))
        label = jnp.where(diff == 0, 0, 1 + level)
    return jnp.where(visible, label, -1).astype(jnp.int32)


def num_labels(length: int, region_size: int) -> int:
    """A static bound on the labels of one query (``1 +`` the most regions of any layout)."""
    return 2 + max(length // region_size + 1, 2 * region_size, 32)


def combiner_row(q_i, labels, q, k, *, num: int, scale: float, acc) -> jax.Array:
    """One query's Combiner attention weights over the keys, from the definitions (module docstring).

    Args:
      q_i: ``(dh,)`` the query.
      labels: ``(t,)`` from :func:`part_labels`.
      q, k: ``(t, dh)`` queries and keys of the positions (for the abstractions).
      num: static number of labels (:func:`num_labels`).
      scale: ``1/√dh``.
      acc: accumulation dtype.

    Returns:
      ``(t,)`` the weights ``p(j|i)`` (zero where not visible), summing to 1.
    """
    q_i, q, k = q_i.astype(acc), q.astype(acc), k.astype(acc)
    ids = jnp.where(labels < 0, num, labels)  # invisible keys go to a discarded bucket
    seen = labels >= 0
    big = jnp.finfo(acc).min
    # Max pooling per region: the query and key of each abstraction.
    qr = jax.ops.segment_max(jnp.where(seen[:, None], q, big), ids, num + 1)
    kr = jax.ops.segment_max(jnp.where(seen[:, None], k, big), ids, num + 1)
    count = jax.ops.segment_sum(seen.astype(acc), ids, num + 1)
    present = (count > 0) & (jnp.arange(num + 1) >= 1) & (jnp.arange(num + 1) < num)
    qr = jnp.where(present[:, None], qr, 0.0)
    kr = jnp.where(present[:, None], kr, 0.0)
    # q(j|R): softmax of s(q_R, k_j) inside each region.
    a = jnp.sum(qr[ids] * k, axis=-1) * scale
    a = jnp.where(seen & (labels > 0), a, big)
    amax = jax.ops.segment_max(a, ids, num + 1)
    e = jnp.where(seen & (labels > 0), jnp.exp(a - amax[ids]), 0.0)
    within = e / jnp.maximum(jax.ops.segment_sum(e, ids, num + 1)[ids], jnp.finfo(acc).tiny)
    # The joint normaliser over Ω⁰'s keys and the regions' abstractions.
    sd = jnp.where(labels == 0, (k @ q_i) * scale, big)
    sr = jnp.where(present, (kr @ q_i) * scale, big)
    m = jnp.maximum(jnp.max(sd), jnp.max(sr))
    ed = jnp.where(labels == 0, jnp.exp(sd - m), 0.0)
    er = jnp.where(present, jnp.exp(sr - m), 0.0)
    z = jnp.sum(ed) + jnp.sum(er)
    return (ed + er[ids] * within) / z


def combiner_rows(q, k, *, variant: str, region_size: int, causal: bool, segment_ids=None) -> jax.Array:
    """The whole ``(b, h, l, l)`` attention matrix from :func:`combiner_row` (any segments; O(L²·dh)).

    Args:
      q, k: ``(b, l, h, dh)``.
      variant: the layout.
      region_size: ``s``.
      causal: only ``j <= i``.
      segment_ids: ``(b, l)`` run indices (a change of id starts a segment) or None.

    Returns:
      ``(b, h, l, l)`` weights in the accumulation dtype.
    """
    b, length, h, dh = q.shape
    acc = jnp.promote_types(q.dtype, jnp.float32)
    pos = positions_in_segment(segment_ids, b, length)  # (b, l)
    runs = jnp.zeros((b, length), jnp.int32) if segment_ids is None else segment_runs(segment_ids, b, length)
    t = jnp.arange(length)
    visible = runs[:, :, None] == runs[:, None, :]
    if causal:
        visible &= t[None, :, None] >= t[None, None, :]
    labels = part_labels(pos[:, :, None], pos[:, None, :], visible, variant, region_size)  # (b, l, l)
    kw = dict(num=num_labels(length, region_size), scale=1.0 / math.sqrt(dh), acc=acc)
    row = lambda qi, lab, qq, kk: combiner_row(qi, lab, qq, kk, **kw)  # noqa: E731
    row = jax.vmap(row, in_axes=(0, 0, None, None))  # over queries
    row = jax.vmap(row, in_axes=(1, None, 1, 1))  # over heads
    return jax.vmap(row)(q, labels, q, k)  # over the batch


# --- the blocked fast path (no segments) -----------------------------------------------


def _pool(x, valid, axis, acc):
    """Max over ``axis`` of the valid entries (``valid`` broadcast to ``x``), and whether any is valid."""
    big = jnp.finfo(acc).min
    pooled = jnp.max(jnp.where(valid, x.astype(acc), big), axis=axis)
    some = jnp.any(valid, axis=axis)
    return jnp.where(some, pooled, 0.0), some


def _softmax_joint(parts):
    """One softmax over the last axes of several masked logit arrays ``(logits, mask)``; the weights per part."""
    big = -jnp.inf
    m = None
    for s, mask in parts:
        cur = jnp.max(jnp.where(mask, s, big), axis=-1, keepdims=True)
        m = cur if m is None else jnp.maximum(m, cur)
    m = jax.lax.stop_gradient(m)  # every query sees itself: m is finite
    es = [jnp.where(mask, jnp.exp(jnp.where(mask, s, m) - m), 0.0) for s, mask in parts]
    z = sum(jnp.sum(e, axis=-1, keepdims=True) for e in es)
    return [e / z for e in es]


def _region_values(qr, k, v, valid, scale, acc):
    """``v_R = Σ_{j∈R} softmax_j s(q_R, k_j) v_j`` for regions along axis -3 of ``k, v (..., n, h, dh)``.

    ``qr (..., h, dh)``, ``valid`` broadcast to ``k`` without the head axes.
    """
    a = jnp.einsum("...hd,...nhd->...hn", qr, k.astype(acc)) * scale
    mask = valid[..., None, :]
    # A finite fill: an empty region's softmax stays finite (then zeroed), so no NaN reaches the backward pass.
    w = jnp.where(mask, jax.nn.softmax(jnp.where(mask, a, jnp.finfo(acc).min), axis=-1), 0.0)
    w = jnp.where(jnp.any(mask, axis=-1, keepdims=True), w, 0.0)
    return jnp.einsum("...hn,...nhd->...hd", w, v.astype(acc))


def combiner_blocked(q, k, v, *, variant: str, region_size: int, causal: bool) -> jax.Array:
    """Combiner attention without segments, region by region (never an L×L array).

    Args:
      q, k, v: ``(b, l, h, dh)`` in the compute dtype.
      variant: ``"fixed"``, ``"axial"`` or ``"logsparse"``.
      region_size: ``s``.
      causal: only ``j <= i``.

    Returns:
      ``(b, l, h, dh)`` in the accumulation dtype (float32, float64 for float64).
    """
    b, length, h, dh = q.shape
    acc = jnp.promote_types(q.dtype, jnp.float32)
    scale = 1.0 / math.sqrt(dh)
    s = region_size
    n = -(-length // s)
    if variant == "logsparse":
        n = 1 << max(n - 1, 0).bit_length()  # a whole binary tree of leaves
    pad = n * s - length
    qp, kp, vp = (jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, n, s, h, dh) for a in (q, k, v))
    valid = (jnp.arange(n * s) < length).reshape(n, s)
    qa, ka, va = qp.astype(acc), kp.astype(acc), vp.astype(acc)
    # Ω⁰ inside the query's span / row / leaf (its own block), causal inside it.
    sd = jnp.einsum("bnqhd,bnkhd->bnhqk", qa, ka) * scale
    md = jnp.broadcast_to(valid[:, None, None, :], (n, 1, s, s))
    if causal:
        md = md & (jnp.arange(s)[:, None] >= jnp.arange(s)[None, :])
    if variant == "fixed":
        qr, some = _pool(qa, valid[None, :, :, None, None], 2, acc)  # (b, n, h, dh); some (1, n, 1, 1)
        kr, _ = _pool(ka, valid[None, :, :, None, None], 2, acc)
        vr = _region_values(qr, ka, va, valid[None], scale, acc)  # (b, n, h, dh)
        sr = jnp.einsum("bnqhd,bmhd->bnhqm", qa, kr) * scale
        blk = jnp.arange(n)
        mr = (blk[None, :] < blk[:, None]) if causal else (blk[None, :] != blk[:, None])
        mr = (mr & some[0, :, 0, 0][None, :])[:, None, None, :]
        wd, wr = _softmax_joint([(sd, md), (sr, mr)])
        o = jnp.einsum("bnhqk,bnkhd->bnqhd", wd, va) + jnp.einsum("bnhqm,bmhd->bnqhd", wr, vr)
    elif variant == "axial":
        o = _axial(qa, ka, va, sd, md, valid, causal, scale, acc)
    else:
        o = _logsparse(qa, ka, va, sd, md, valid, causal, scale, acc)
    return o.reshape(b, n * s, h, dh)[:, :length]


def _axial(qa, ka, va, sd, md, valid, causal, scale, acc):
    """Combiner-Axial: row and column direct, column regions above (and below) the query's row."""
    n, s = valid.shape
    rows = jnp.arange(n)
    # Column direct: same column, other rows (the query itself is in the row part).
    sc = jnp.einsum("bnchd,bmchd->bnhcm", qa, ka) * scale  # (b, row n, h, col c, row m)
    mc = (rows[None, :] < rows[:, None]) if causal else (rows[None, :] != rows[:, None])
    mc = mc[:, None, None, :] & valid.T[None, None, :, :]  # (n, 1, s, m)
    parts = [(sd, md), (sc, mc)]
    values = []
    big = jnp.finfo(acc).min
    vm = valid[None, :, :, None, None]
    cols = jnp.arange(s)
    # Nonempty regions: above row n needs n >= 1; below needs the next row of the column (validity is a prefix).
    nonempty = {False: (rows[:, None] > 0) & valid[0][None, :],
                True: jnp.concatenate([valid[1:], jnp.zeros((1, s), bool)], axis=0)}
    for below in ((False, True) if not causal else (False,)):
        # Exclusive cumulative max down (up) each column: the abstraction of rows < n (> n).
        qx = _exclusive(jax.lax.cummax(jnp.where(vm, qa, big), axis=1, reverse=below), below, big)
        kx = _exclusive(jax.lax.cummax(jnp.where(vm, ka, big), axis=1, reverse=below), below, big)
        some = nonempty[below]
        qx = jnp.where(some[None, :, :, None, None], qx, 0.0)
        kx = jnp.where(some[None, :, :, None, None], kx, 0.0)
        # v of the region (row n, column c): softmax over rows above (below) n in column c.
        a = jnp.einsum("bnchd,bmchd->bnhcm", qx, ka) * scale
        inside = (rows[None, :] > rows[:, None]) if below else (rows[None, :] < rows[:, None])
        mask = inside[:, None, None, :] & valid.T[None, None, :, :]
        w = jnp.where(mask, jax.nn.softmax(jnp.where(mask, a, big), axis=-1), 0.0)
        w = jnp.where(jnp.any(mask, axis=-1, keepdims=True), w, 0.0)
        vx = jnp.einsum("bnhcm,bmchd->bnchd", w, va)  # (b, n, c, h, dh)
        sx = jnp.einsum("bnqhd,bnchd->bnhqc", qa, kx) * scale
        mx = (cols[:, None] != cols[None, :])[None, None] & some[:, None, None, :]
        parts.append((sx, mx))
        values.append(vx)
    ws = _softmax_joint(parts)
    o = jnp.einsum("bnhqk,bnkhd->bnqhd", ws[0], va) + jnp.einsum("bnhcm,bmchd->bnchd", ws[1], va)
    for wx, vx in zip(ws[2:], values):
        o = o + jnp.einsum("bnhqc,bnchd->bnqhd", wx, vx)
    return o


def _exclusive(x, reverse, fill):
    """Shifts a cumulative op along axis 1 by one (the first entry becomes ``fill``): rows strictly before (after)."""
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, 1) if reverse else (1, 0)
    x = jnp.pad(x, widths, constant_values=fill)
    return x[:, 1:] if reverse else x[:, :-1]


def _logsparse(qa, ka, va, sd, md, valid, causal, scale, acc):
    """Combiner-Logsparse: the query's leaf direct, the sibling subtree of each level as one region."""
    b, n, s, h, dh = qa.shape
    leaves = jnp.arange(n)
    krs, vrs, masks = [], [], []
    for level in range(max(n.bit_length() - 1, 0)):
        size = 1 << level
        shape = (b, n // size, size * s, h, dh)
        vnode = valid.reshape(n // size, size * s)
        qn, some = _pool(qa.reshape(shape), vnode[None, :, :, None, None], 2, acc)  # (b, nodes, h, dh)
        kn, _ = _pool(ka.reshape(shape), vnode[None, :, :, None, None], 2, acc)
        vn = _region_values(qn, ka.reshape(shape), va.reshape(shape), vnode[None], scale, acc)
        sib = jnp.bitwise_xor(leaves >> level, 1)  # each leaf's sibling node at this level
        krs.append(kn[:, sib])
        vrs.append(vn[:, sib])
        seen = some[0, :, 0, 0][sib]
        if causal:
            seen &= ((leaves >> level) & 1) == 1  # the sibling is on the left
        masks.append(seen)
    if not krs:  # one leaf: Ω⁰ is everything
        wd, = _softmax_joint([(sd, md)])
        return jnp.einsum("bnhqk,bnkhd->bnqhd", wd, va)
    kr, vr = jnp.stack(krs, axis=2), jnp.stack(vrs, axis=2)  # (b, n, levels, h, dh)
    mr = jnp.stack(masks, axis=1)[:, None, None, :]  # (n, 1, 1, levels)
    sr = jnp.einsum("bnqhd,bnlhd->bnhql", qa, kr) * scale
    wd, wr = _softmax_joint([(sd, md), (sr, mr)])
    return jnp.einsum("bnhqk,bnkhd->bnqhd", wd, va) + jnp.einsum("bnhql,bnlhd->bnqhd", wr, vr)


def combiner_attention(q, k, v, *, variant: str, region_size: int, causal: bool, segment_ids=None) -> jax.Array:
    """Combiner attention ``A(x_i) = Σ_j p(j|i) v_j`` (module docstring), per head.

    Args:
      q, k, v: ``(b, l, h, dh)``.
      variant: ``"fixed"``, ``"axial"`` or ``"logsparse"``.
      region_size: ``s``.
      causal: only ``j <= i``.
      segment_ids: ``(b, l)`` run indices or None (then the blocked fast path runs).

    Returns:
      ``(b, l, h, dh)`` in the accumulation dtype.
    """
    if segment_ids is None:
        return combiner_blocked(q, k, v, variant=variant, region_size=region_size, causal=causal)
    w = combiner_rows(q, k, variant=variant, region_size=region_size, causal=causal, segment_ids=segment_ids)
    return jnp.einsum("bhts,bshd->bthd", w, v.astype(w.dtype), precision=jax.lax.Precision.HIGHEST)


# --- the mixer -----------------------------------------------------------------------------


@register("combiner")
class Combiner(RopeHeads):
    """Combiner attention (Ren et al. 2021; equations, layouts and choices in the module docstring).

    Projections as ``mha`` (``q, k, v = W_q x, W_k x, W_v x`` in ``h`` heads of
    ``dh``, optional RoPE on ``q, k``, ``y = W_o concat_h(o)``); the mixing is
    Combiner's factorised full attention.

    Mixing matrix (per head, on ``v``; read off the mix by the base class): the
    weights ``p(j|i)``, nonzero for every visible ``j`` (full attention),
    lower triangular when causal, zero across segments.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype (and cache dtype); parameters are float32, scores,
        pooling and softmax accumulate in float32.
      num_heads: heads ``h`` (4).
      head_dim: ``dh`` (None: ``d_model // num_heads``).
      causal: autoregressive Combiner (``j <= i``, has ``step``); False: bidirectional.
      variant: ``"axial"`` (default), ``"fixed"`` or ``"logsparse"``: the region layout.
      region_size: ``s`` (16): span length (fixed), row length (axial), leaf
        size (logsparse); ``s ≈ √L`` gives the paper's O(L√L) for fixed and axial.
      positions: ``"rope"`` (default) or ``"none"``.
      rope_base: RoPE's frequency base (10000).
      max_length: the default cache length of ``init_cache``.
    """

    causality = "either"
    values_index = 2  # v (b, l, h, dh)

    causal: bool = True
    variant: str = "axial"
    region_size: int = 16
    max_length: int | None = None

    def check_fields(self):
        name = self.mixer_name
        check_option(name, "causal", self.causal, (True, False))
        check_option(name, "variant", self.variant, VARIANTS)
        check_int(name, "region_size", self.region_size)
        check_int(name, "max_length", self.max_length, optional=True)
        super().check_fields()

    # --- the hooks of the Mixer contract ---------------------------------------------

    def mix(self, axis, q, k, v, runs):
        del axis  # not sequence parallel
        o = combiner_attention(q, k, v, variant=self.variant, region_size=self.region_size, causal=self.causal,
                               segment_ids=runs)
        return o.astype(self.dtype)

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> Cache:
        """``{"q", "k", "v": (b, max_length, h, dh) in dtype, "pos": (b,) int32}``.

        The queries are cached too: a region's abstraction pools its queries.
        """
        _, h, dh = self.heads(d)
        kv = jnp.zeros((batch_size, cache_slots(self.mixer_name, self.max_length, max_length), h, dh), self.dtype)
        return {"q": kv, "k": kv, "v": kv, "pos": jnp.zeros((batch_size,), jnp.int32)}

    def step_mix(self, p, x_t: SeqStep, cache: Cache) -> tuple[SeqStep, Cache]:
        """One position: append ``q_t, k_t, v_t``, then the query's row from the definitions; NaN past the cache."""
        b = x_t.shape[0]
        pos = cache["pos"]
        q, k, v = self._qkv(p, x_t[:, None], pos[:, None])
        rows = jnp.arange(b)
        new = {n: cache[n].at[rows, pos].set(a[:, 0].astype(cache[n].dtype), mode="drop")
               for n, a in (("q", q), ("k", k), ("v", v))}
        slots, _, dh = cache["k"].shape[1:]
        acc = self.acc()
        j = jnp.arange(slots)
        labels = part_labels(pos[:, None], j[None, :], j[None, :] <= pos[:, None], self.variant,
                             self.region_size)  # (b, slots)
        row = lambda qi, lab, qq, kk: combiner_row(  # noqa: E731
            qi, lab, qq, kk, num=num_labels(slots, self.region_size), scale=1.0 / math.sqrt(dh), acc=acc)
        w = jax.vmap(jax.vmap(row, in_axes=(0, None, 1, 1)))(q[:, 0], labels, new["q"], new["k"])  # (b, h, slots)
        o = jnp.einsum("bhs,bshd->bhd", w, new["v"].astype(acc), precision=jax.lax.Precision.HIGHEST)
        o = jnp.where((pos < slots)[:, None, None], o, jnp.nan)  # past the cache: no right answer
        return self.output(p, o, Projection()), {**new, "pos": pos + 1}


__all__ = ["Combiner", "combiner_attention", "combiner_blocked", "combiner_rows", "combiner_row", "part_labels",
           "num_labels", "VARIANTS"]
