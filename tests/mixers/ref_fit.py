"""Float64 reference of one FIT block (Chen & Li 2023), written from the paper's equations.

Per packed sequence, the tokens are cut into groups ``X_1 .. X_T`` of
``n`` consecutive tokens counted from the sequence's first position (the
last group may be shorter: it is simply a shorter group, no padding), and
every group gets the learned latents ``Z_g = Z⁰ (m × d)``. Then

* local layers, per group: ``X_g += MHA(LN(X_g))``, ``X_g += FFN(LN(X_g))``;
* read, per group: ``Z_g += MHA(q = LN(Z_g), kv = LN'(X_g))``;
* global layers over ``Z = [Z_1; ...; Z_T]``: ``Z += MHA(LN(Z))``, ``Z += FFN(LN(Z))``;
* write, per group: ``X_g += MHA(q = LN(X_g), kv = LN'(Z_g))``;

and ``y = [X_1; ...; X_T] W_out``. ``MHA(q, kv) = concat_h softmax(q W_q^h
(kv W_k^h)ᵀ / √dh) kv W_v^h · W_o``; ``FFN(u) = gelu(u W_1 + b_1) W_2 + b_2``
(tanh gelu); LayerNorm with ε = 1e-6.

Group by group and sequence by sequence with slices: no grid, no padding, no
masks, nothing from seqjax. Every function takes ``xp`` (``numpy`` or
``jax.numpy``) so the reference can be differentiated under ``jax.enable_x64``.
"""

import math

import numpy as np

from tests.mixers.harness import max_shift, runs_of

LN_EPS = 1e-6


def params_of(variables, xp=np):
    """Flat float64 dict of the parameters (``out_proj`` as ``"out_proj/kernel"``)."""
    import flax.linen as nn  # only to unbox logical-partitioning metadata

    out = {}
    for name, value in nn.meta.unbox(variables["params"]).items():
        if isinstance(value, dict):
            for leaf, v in value.items():
                out[f"{name}/{leaf}"] = xp.asarray(np.asarray(v, np.float64))
        else:
            out[name] = xp.asarray(np.asarray(value, np.float64))
    return out


def _ln(u, p, prefix, xp):
    mu = xp.mean(u, axis=-1, keepdims=True)
    var = xp.mean((u - mu) ** 2, axis=-1, keepdims=True)
    return (u - mu) / xp.sqrt(var + LN_EPS) * p[f"{prefix}_scale"] + p[f"{prefix}_bias"]


def _mha(p, prefix, q_in, kv_in, num_heads, xp):
    """Multi-head softmax attention of layer ``prefix``: ``(lq, d)`` queries over ``(lk, d)`` keys."""
    lq, d = q_in.shape
    dh = d // num_heads
    q = (q_in @ p[f"{prefix}_q"]).reshape(lq, num_heads, dh)
    k = (kv_in @ p[f"{prefix}_k"]).reshape(-1, num_heads, dh)
    v = (kv_in @ p[f"{prefix}_v"]).reshape(-1, num_heads, dh)
    s = xp.einsum("ihc,jhc->hij", q, k) / math.sqrt(dh)
    e = xp.exp(s - max_shift(s, 2, xp))
    o = xp.einsum("hij,jhc->ihc", e / xp.sum(e, axis=2, keepdims=True), v)
    return o.reshape(lq, d) @ p[f"{prefix}_o"]


def _self_layer(p, prefix, u, num_heads, xp):
    u = u + _mha(p, prefix, _ln(u, p, f"{prefix}_ln", xp), _ln(u, p, f"{prefix}_ln", xp), num_heads, xp)
    if f"{prefix}_w1" in p:
        a = _ln(u, p, f"{prefix}_ffn_ln", xp) @ p[f"{prefix}_w1"] + p[f"{prefix}_b1"]
        a = 0.5 * a * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3)))
        u = u + a @ p[f"{prefix}_w2"] + p[f"{prefix}_b2"]
    return u


def _cross_layer(p, prefix, u, kv, num_heads, xp):
    return u + _mha(p, prefix, _ln(u, p, f"{prefix}_ln", xp), _ln(kv, p, f"{prefix}_lnkv", xp), num_heads, xp)


def sequence_block(p, x, *, num_heads, group_size, local_layers, global_layers, xp=np):
    """One FIT block over one packed sequence ``x: (len, d)`` (before the output projection).

    Returns:
      ``(len, d)``: the tokens after the write step.
    """
    groups = [x[s:s + group_size] for s in range(0, x.shape[0], group_size)]
    for i in range(local_layers):
        groups = [_self_layer(p, f"local{i}", g, num_heads, xp) for g in groups]
    lat = [_cross_layer(p, "read", p["latents"], g, num_heads, xp) for g in groups]
    m = p["latents"].shape[0]
    z = xp.concatenate(lat, axis=0)
    for i in range(global_layers):
        z = _self_layer(p, f"global{i}", z, num_heads, xp)
    out = [_cross_layer(p, "write", g, z[j * m:(j + 1) * m], num_heads, xp) for j, g in enumerate(groups)]
    return xp.concatenate(out, axis=0)


def reference(p, x, *, num_heads, group_size, local_layers=1, global_layers=1, segment_ids=None, xp=np):
    """The ``fit`` mixer: every packed sequence of every row through :func:`sequence_block`, then ``W_out``.

    Args:
      p: :func:`params_of` of the variables.
      x: ``(b, l, d)`` float64.
      num_heads, group_size, local_layers, global_layers: the mixer's fields.
      segment_ids: optional ``(b, l)`` ids (a change of id starts a sequence).
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``(b, l, d)``.
    """
    b, length, _ = x.shape
    runs = runs_of(segment_ids, b, length)
    rows = []
    for r in range(b):
        bounds = [0] + [t for t in range(1, length) if runs[r, t] != runs[r, t - 1]] + [length]
        pieces = [sequence_block(p, x[r, s:e], num_heads=num_heads, group_size=group_size,
                                 local_layers=local_layers, global_layers=global_layers, xp=xp)
                  for s, e in zip(bounds[:-1], bounds[1:])]
        rows.append(xp.concatenate(pieces, axis=0))
    return xp.stack(rows) @ p["out_proj/kernel"]
