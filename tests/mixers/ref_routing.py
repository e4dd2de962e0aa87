"""Float64 NumPy reference of routing attention (Roy et al. 2021), from the paper's equations.

The routing is computed token by token from NumPy float64 values
(:func:`routing_of`: argsort for the top-w sets, argmax for the nearest
centroid), and the attention is dense masked softmaxes over the ``l × l``
scores, one per cluster, so the reference shares no code path with the
mixer's sort / gather / blockwise / scatter fast path. The differentiable part takes
``xp=jax.numpy`` (float64) for the gradient checks; the routing is piecewise
constant, so its gradient is the gradient at fixed routing.
"""

import math

import numpy as np


def params_of(variables, xp=np):
    """Flat float64 dict: the four projection kernels."""
    import flax.linen as nn

    return {name: xp.asarray(np.asarray(value["kernel"], np.float64))
            for name, value in nn.meta.unbox(variables["params"]).items()}


def centroids_of(variables):
    """The ``(hr, k, dh)`` centroids as float64."""
    return np.asarray(variables["routing"]["centroids"], np.float64)


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _runs(segment_ids, batch, length):
    if segment_ids is None:
        return np.zeros((batch, length), np.int64)
    ids = np.asarray(segment_ids)
    return np.concatenate([np.zeros((batch, 1), np.int64), np.cumsum(ids[:, 1:] != ids[:, :-1], axis=1)], axis=1)


def projections(p, x, hr, hl, xp=np):
    """``qr (b,l,hr,dh)``, ``ql (b,l,hl,dh)``, ``kl (b,l,hl,dh)``, ``v (b,l,hr+hl,dh)``."""
    b, length, _ = x.shape
    dh = p["q_proj"].shape[1] // (hr + hl)
    q = (x @ p["q_proj"]).reshape(b, length, hr + hl, dh)
    kl = (x @ p["k_proj"]).reshape(b, length, hl, dh) if hl else q[:, :, :0]
    v = (x @ p["v_proj"]).reshape(b, length, hr + hl, dh)
    return q[:, :, :hr], q[:, :, hr:], kl, v


def nearest(qr, centroids):
    """``c(t) = argmax_c μ̂_c · q̂_t`` per row, head and position: ``(b, l, hr)``."""
    b, length, hr, _ = qr.shape
    out = np.zeros((b, length, hr), np.int64)
    for bi in range(b):
        for h in range(hr):
            mu = _unit(centroids[h])
            for t in range(length):
                out[bi, t, h] = int(np.argmax(mu @ _unit(qr[bi, t, h])))
    return out


def balanced_clusters(qr, centroids):
    """Each centroid's top ``w = ceil(L/k)`` tokens by ``μ̂_c · q̂_t``: ``sets[b][h][c]`` (sorted positions)."""
    b, length, hr, _ = qr.shape
    k = centroids.shape[1]
    w = min(length, -(-length // k))
    sets = []
    for bi in range(b):
        per_head = []
        for h in range(hr):
            mu = _unit(centroids[h])
            scores = _unit(qr[bi, :, h]) @ mu.T  # (l, k)
            per_head.append([sorted(np.argsort(-scores[:, c], kind="stable")[:w].tolist()) for c in range(k)])
        sets.append(per_head)
    return sets


def routing_of(qr, centroids, balanced):
    """The routing as weights-free membership: ``groups[b][h]`` = list of (member positions) per cluster.

    Balanced: the top-w sets (a token may be in several or none); nearest:
    the partition by nearest centroid (every token in exactly one).
    """
    if balanced:
        return balanced_clusters(qr, centroids)
    cid = nearest(qr, centroids)
    b, _, hr = cid.shape
    k = centroids.shape[1]
    return [[[np.flatnonzero(cid[bi, :, h] == c).tolist() for c in range(k)] for h in range(hr)] for bi in range(b)]


def masks(groups, *, hr, hl, length, window, segment_ids=None, batch=1):
    """The visible sets as NumPy booleans, from the routing and the equations.

    Returns:
      ``(member (b, hr, k, l), visible_route (b, hr, k, l, l), visible_local (b, l, l))``:
      ``member[c, t]``: cluster ``c`` holds ``t``; ``visible_route[c, t, s]``: both
      in ``c``, ``s <= t``, same segment; ``visible_local[t, s]``: ``t − window <
      s <= t``, same segment.
    """
    runs = _runs(segment_ids, batch, length)
    k = len(groups[0][0]) if hr else 0
    member = np.zeros((batch, hr, k, length), bool)
    for bi in range(batch):
        for h in range(hr):
            for c, members in enumerate(groups[bi][h]):
                member[bi, h, c, members] = True
    t = np.arange(length)
    causal = t[None, :] <= t[:, None]
    same = runs[:, :, None] == runs[:, None, :]
    visible_route = member[..., :, None] & member[..., None, :] & (causal & same)[:, None, None]
    visible_local = causal[None] & (t[:, None] - t[None, :] < window)[None] & same
    return member, visible_route, visible_local


def _masked_softmax(scores, visible, xp):
    """Softmax over the visible entries of the last axis; rows with none visible are 0."""
    any_visible = visible.any(-1, keepdims=True)
    top = xp.max(xp.where(visible, scores, -1e300), axis=-1, keepdims=True)
    e = xp.where(visible, xp.exp(xp.where(visible, scores - top, 0.0)), 0.0)
    return e / xp.where(any_visible, xp.sum(e, axis=-1, keepdims=True), 1.0)


def attention_matrix(p, x, *, hr, hl, window, groups, segment_ids=None, xp=np):
    """The mixing matrix ``A (b, hr+hl, l, l)``, from the equations.

    Routing head: in each cluster ``c`` holding ``t``, the softmax over the
    cluster's ``s <= t`` in ``t``'s segment of ``q_t·q_s/√dh``; rows averaged
    over the clusters holding ``t``; ``e_t`` (itself only) if none holds it.
    Local head: softmax of ``q_t·k_s/√dh`` over ``t − window < s <= t`` in the segment.
    """
    b, length, _ = x.shape
    qr, ql, kl, _ = projections(p, x, hr, hl, xp)
    dh = p["q_proj"].shape[1] // (hr + hl)
    scale = 1.0 / math.sqrt(dh)
    member, vis_r, vis_l = masks(groups, hr=hr, hl=hl, length=length, window=window, segment_ids=segment_ids,
                                 batch=b)
    heads = []
    if hr:
        scores = xp.einsum("bthd,bshd->bhts", qr, qr) * scale  # shared queries and keys
        rows = _masked_softmax(scores[:, :, None], vis_r, xp)  # (b, hr, k, t, s)
        count = member.sum(2)  # (b, hr, l): clusters holding t
        total = (rows * member[..., None]).sum(2)
        eye = np.eye(length)[None, None]
        heads.append(xp.where((count > 0)[..., None], total / np.maximum(count, 1)[..., None], eye))
    if hl:
        scores = xp.einsum("bthd,bshd->bhts", ql, kl) * scale
        heads.append(_masked_softmax(scores, vis_l[:, None], xp))
    return xp.concatenate(heads, axis=1) if len(heads) > 1 else heads[0]


def matrix(p, x, **config):
    """``A (b, h, l, l)`` float64 NumPy (see :func:`attention_matrix`)."""
    return np.asarray(attention_matrix(p, x, **config))


def reference(p, x, *, hr, hl, window, groups, segment_ids=None, xp=np):
    """``y = W_o concat_h(A_h v_h)`` in float64 (``xp`` = NumPy, or ``jax.numpy`` for gradients)."""
    b, length, _ = x.shape
    _, _, _, v = projections(p, x, hr, hl, xp)
    A = attention_matrix(p, x, hr=hr, hl=hl, window=window, groups=groups, segment_ids=segment_ids, xp=xp)
    o = xp.einsum("bhts,bshd->bthd", A, v)
    return o.reshape(b, length, -1) @ p["out_proj"]


def ema_update(centroids, qr, decay):
    """``μ_c ← λ μ_c + (1−λ) Σ_{(b,t): c(t)=c} q̂_t`` per head (the paper's update with Q = K), loops."""
    new = decay * np.array(centroids, np.float64)
    b, length, hr, _ = qr.shape
    for h in range(hr):
        mu = _unit(centroids[h])
        for bi in range(b):
            for t in range(length):
                qhat = _unit(qr[bi, t, h])
                c = int(np.argmax(mu @ qhat))
                new[h, c] += (1.0 - decay) * qhat
    return new
