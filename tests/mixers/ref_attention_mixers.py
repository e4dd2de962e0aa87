"""Float64 references of the softmax-attention mixers (mha, sliding_window, ngram, aaren).

Each ``*_reference`` rebuilds a whole mixer from its parameters (pulled out of
the Flax variables with :func:`params_of`) and the papers' equations, with an
explicit Python loop over query positions: which keys a query sees is decided
with plain Python integers (causality, window, segment, n-gram match), and
the softmax is written out (max shift, exp, normalise). Each ``*_matrix`` is
the closed-form mixing matrix of the same equations (the per-query softmax
weights over the visible keys, NumPy only), the oracle of the matrix the
``Mixer`` base reads off the op. Nothing here calls seqjax. RoPE is written
as a complex rotation ``z_c · e^{i p θ_c}`` of the channel pairs
``(c, c + d/2)``, ALiBi slopes from the paper's formula.

Every ``*_reference`` takes an ``xp`` module (``numpy`` or ``jax.numpy``) and uses
only operations both support (lists + ``xp.stack``, no in-place assignment),
so the same code is differentiated by ``jax.grad`` under ``jax.enable_x64``.
Integer structure (segments, tokens to match) is always NumPy.
"""

import math

import numpy as np

from tests.mixers.harness import max_shift


def params_of(variables, xp=np):
    """Flat float64 dict of a mixer's parameters: kernels, the position table, the query."""
    import flax.linen as nn  # only to unbox logical-partitioning metadata

    out = {}
    for name, value in nn.meta.unbox(variables["params"]).items():
        if isinstance(value, dict):
            value = value["kernel"] if "kernel" in value else value["embedding"]
        out[name] = xp.asarray(np.asarray(value, np.float64))
    return out


def segment_starts_of(segment_ids, batch, length):
    """start[b][t]: the first position of t's segment (a change of id starts one)."""
    starts = []
    for bi in range(batch):
        row, s = [], 0
        for t in range(length):
            if segment_ids is not None and t > 0 and segment_ids[bi][t] != segment_ids[bi][t - 1]:
                s = t
            row.append(s)
        starts.append(row)
    return starts


def alibi_slopes_ref(n):
    """Press et al. 2022: for n a power of two, the geometric sequence starting at 2^(-8/n)
    with ratio 2^(-8/n); otherwise the closest lower power of two plus every other slope of
    twice that many heads."""
    def geometric(k):
        start = 2.0 ** (-8.0 / k)
        return [start * start**i for i in range(k)]

    if math.log2(n).is_integer():
        return geometric(n)
    p = 2 ** math.floor(math.log2(n))
    return geometric(p) + alibi_slopes_ref(2 * p)[0::2][: n - p]


def rope_ref(vec, pos, base, xp=np):
    """Rotates the channel pairs (c, c + d/2) of ``vec (l, h, d)`` by ``pos_t · base^(-2c/d)``.

    The pair is the complex number ``z = x_c + i x_{c+d/2}``, multiplied by ``e^{i pos θ_c}``.
    """
    d = vec.shape[-1]
    half = d // 2
    theta = np.array([base ** (-2.0 * c / d) for c in range(half)])
    rot = np.exp(1j * np.asarray(pos, np.float64)[:, None, None] * theta)  # constant (l, 1, half)
    re, im = vec[..., :half], vec[..., half:]
    # (re + i im)(cos + i sin) = (re cos - im sin) + i (im cos + re sin)
    return xp.concatenate([re * rot.real - im * rot.imag, im * rot.real + re * rot.imag], axis=-1)


def _softmax_average(scores, values, xp):
    """Σ_s softmax(scores)_s values_s over the last axis of scores (..., n) and values (..., n, d)."""
    w = xp.exp(scores - max_shift(scores, -1, xp))
    return xp.sum(w[..., None] * values, axis=-2) / xp.sum(w, axis=-1)[..., None]


def _softmax_weights(scores):
    """softmax over the last axis, NumPy, written out (max shift, exp, normalise)."""
    w = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return w / w.sum(axis=-1, keepdims=True)


def weights_matrix(rows, num_heads, length):
    """The dense (b, h, l, l) matrix of per-query softmax weights.

    ``rows[b][t] = (visible, scores)``: the key positions query ``t`` sees and
    their ``(h, n)`` scores; ``M[b, :, t, visible] = softmax(scores)``, 0
    elsewhere (a row that sees nothing stays 0). NumPy only.
    """
    M = np.zeros((len(rows), num_heads, length, length))
    for bi, row in enumerate(rows):
        for t, (visible, scores) in enumerate(row):
            if len(visible):
                M[bi, :, t, visible] = _softmax_weights(np.asarray(scores, np.float64)).T
    return M


def _mha_rows(p, x, *, num_heads, num_kv_heads=None, head_dim=None, causal=True, positions="rope",
              rope_base=10000.0, window=None, segment_ids=None, xp=np):
    """Per batch row: the values (l, h, dh) per query head and, per query t, (visible keys, scores (h, n))."""
    b, l, d = x.shape
    h = num_heads
    hk = num_kv_heads or h
    dh = head_dim or d // h
    kv_head = np.array([hi // (h // hk) for hi in range(h)])  # query head hi reads key/value head hi // (h/hk)
    starts = segment_starts_of(segment_ids, b, l)
    slopes = alibi_slopes_ref(h)
    out = []
    for bi in range(b):
        rel = [t - starts[bi][t] for t in range(l)]  # position within the segment
        xb = x[bi]
        xqk = xb
        if positions == "learned":
            xqk = xb + p["pos_embedding"][np.array(rel)]
        q = (xqk @ p["q_proj"]).reshape(l, h, dh)
        k = (xqk @ p["k_proj"]).reshape(l, hk, dh)[:, kv_head]
        v = (xb @ p["v_proj"]).reshape(l, hk, dh)[:, kv_head]
        if positions == "rope":
            q, k = rope_ref(q, rel, rope_base, xp), rope_ref(k, rel, rope_base, xp)
        rows = []
        for t in range(l):
            vis = np.array([s for s in range(l) if starts[bi][s] == starts[bi][t] and not (causal and s > t)
                            and (window is None or abs(t - s) < window)])
            scores = xp.einsum("nhd,hd->hn", k[vis], q[t]) / math.sqrt(dh)  # (h, n)
            if positions == "alibi":
                scores = scores - np.array(slopes)[:, None] * np.abs(t - vis).astype(np.float64)[None, :]
            rows.append((vis, scores))
        out.append((v, rows))
    return out


def mha_reference(p, x, *, segment_ids=None, xp=np, **config):
    """Multi-head attention (+ window), query by query.

    Args:
      p: params_of(variables): q_proj, k_proj, v_proj, out_proj (and pos_embedding).
      x: (b, l, d) float64.
      segment_ids: optional (b, l) ids.
      xp: numpy or jax.numpy.
      **config: num_heads, num_kv_heads, head_dim, causal, positions,
        rope_base, window (None for mha, sliding_window's ``window``).

    Returns:
      (b, l, d).
    """
    outs = []
    for v, rows in _mha_rows(p, x, segment_ids=segment_ids, xp=xp, **config):
        heads = [_softmax_average(scores, xp.swapaxes(v[vis], 0, 1), xp) for vis, scores in rows]  # (h, dh)
        outs.append(xp.stack([o.reshape(-1) for o in heads]) @ p["out_proj"])
    return xp.stack(outs)


def mha_matrix(p, x, *, segment_ids=None, **config):
    """The attention probabilities (b, h, l, l) of ``mha``/``sliding_window``: softmax over the visible keys."""
    rows = [r for _, r in _mha_rows(p, x, segment_ids=segment_ids, **config)]
    return weights_matrix(rows, config["num_heads"], x.shape[1])


def ngram_matches(keys, n, segment_ids=None):
    """For each (b, t), the list of s < t that followed the same (n-1)-gram.

    ``keys``: NumPy (b, l) tokens or (b, l, d) vectors (compared exactly). Key s
    matches query t iff the n-1 tokens ending at s-1 equal the n-1 tokens ending
    at t, all inside the respective segment, and s < t in t's segment.
    """
    keys = np.asarray(keys)
    b, l = keys.shape[:2]
    starts = segment_starts_of(segment_ids, b, l)
    out = []
    for bi in range(b):
        row = []
        for t in range(l):
            gram_t = [keys[bi, t - k] for k in range(n - 1)]
            ok_t = t - (n - 2) >= starts[bi][t]
            found = []
            for s in range(starts[bi][t], t):
                if not ok_t or s - (n - 1) < starts[bi][s]:
                    continue
                gram_s = [keys[bi, s - 1 - k] for k in range(n - 1)]
                if all(np.array_equal(a, c) for a, c in zip(gram_s, gram_t)):
                    found.append(s)
            row.append(found)
        out.append(row)
    return out


def ngram_reference(p, x, keys, *, n, num_heads=1, head_dim=None, segment_ids=None, xp=np):
    """n-gram head: o_t = mean of W_v x_s over the matching s (0 if none); y = W_o o."""
    b, l, d = x.shape
    width = p["v_proj"].shape[1]
    matches = ngram_matches(keys, n, segment_ids)
    outs = []
    for bi in range(b):
        v = x[bi] @ p["v_proj"]
        rows = []
        for t in range(l):
            found = matches[bi][t]
            if found:
                rows.append(sum(v[s] for s in found) / len(found))
            else:
                rows.append(xp.zeros(width))
        outs.append(xp.stack(rows) @ p["out_proj"])
    return xp.stack(outs)


def ngram_matrix(keys, *, n, num_heads, segment_ids=None):
    """M[b, h, t, s] = 1[s ∈ S_t] / |S_t| for every head (0 rows where nothing matches)."""
    matches = ngram_matches(keys, n, segment_ids)
    rows = [[(np.array(found, int), np.zeros((num_heads, len(found)))) for found in row] for row in matches]
    return weights_matrix(rows, num_heads, np.asarray(keys).shape[1])


def _aaren_rows(p, x, *, num_heads, head_dim=None, segment_ids=None, xp=np):
    """Per batch row: the values (l, h, dh) and, per query t, (its prefix in the segment, scores q·k_s/√dh (h, n))."""
    b, l, d = x.shape
    h = num_heads
    dh = head_dim or d // h
    starts = segment_starts_of(segment_ids, b, l)
    out = []
    for bi in range(b):
        k = (x[bi] @ p["k_proj"]).reshape(l, h, dh)
        v = (x[bi] @ p["v_proj"]).reshape(l, h, dh)
        rows = []
        for t in range(l):
            prefix = np.arange(starts[bi][t], t + 1)
            rows.append((prefix, xp.einsum("nhd,hd->hn", k[prefix], p["query"]) / math.sqrt(dh)))
        out.append((v, rows))
    return out


def aaren_reference(p, x, *, segment_ids=None, xp=np, **config):
    """Aaren: o_t = Σ_{s≤t, same segment} softmax_s(q·k_s/√dh) v_s per head; y = W_o o."""
    outs = []
    for v, rows in _aaren_rows(p, x, segment_ids=segment_ids, xp=xp, **config):
        heads = [_softmax_average(scores, xp.swapaxes(v[prefix], 0, 1), xp) for prefix, scores in rows]
        outs.append(xp.stack([o.reshape(-1) for o in heads]) @ p["out_proj"])
    return xp.stack(outs)


def aaren_matrix(p, x, *, segment_ids=None, **config):
    """The prefix-softmax weights (b, h, l, l): e^{q·k_s/√dh} / Σ_{r≤t} e^{q·k_r/√dh} for s ≤ t in t's segment."""
    rows = [r for _, r in _aaren_rows(p, x, segment_ids=segment_ids, **config)]
    return weights_matrix(rows, config["num_heads"], x.shape[1])


# --- test helpers (not references) ------------------------------------------------------


def random_variables(module, x, rng):
    """Fresh random parameters of ``module`` for input ``x``, without running ``init``.

    Shapes come from ``jax.eval_shape`` (a trace, no compile); kernels are
    ``N(0, 1/fan_in)``, every other parameter (position table, Aaren's query)
    ``N(0, 1)`` — unit scale, so that a bug in how they are used shows.
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.asarray(x)))

    def fill(path, leaf):
        scale = 1.0
        if getattr(path[-1], "key", None) == "kernel":
            scale = leaf.shape[0] ** -0.5
        return jnp.asarray(rng.standard_normal(leaf.shape) * scale, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def assert_gradients_match(module, variables, x, segment_ids, reference, rtol):
    """Gradients of ``Σ w ⊙ module(x)`` equal those of the float64 ``reference(p, x)``, for x and every parameter.

    Args:
      module: the (unjitted) Flax module.
      variables: its variables.
      x: ``(b, l, d)`` float32 input.
      segment_ids: NumPy ``(b, l)`` ids, passed to both.
      reference: ``reference(p, x)`` in ``jax.numpy`` (``p`` from :func:`params_of` with ``xp=jnp``).
      rtol: tolerance.
    """
    import jax
    import jax.numpy as jnp

    from tests.ops.utils import assert_rel_close

    w = np.random.default_rng(0).standard_normal(x.shape)

    def loss(params, x):
        return jnp.sum(module.apply({"params": params}, x, segment_ids=jnp.asarray(segment_ids)) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], jnp.float32(x))
    with jax.enable_x64(True):
        def ref_loss(p, x):
            return jnp.sum(reference(p, x) * w)

        r_p, r_x = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(params_of(variables, xp=jnp),
                                                              jnp.asarray(np.asarray(x, np.float64)))
    g_p = params_of({"params": g_p})
    assert set(g_p) == set(r_p)
    for k in r_p:
        assert_rel_close(g_p[k], r_p[k], rtol, f"d{k}")
    assert_rel_close(g_x, r_x, rtol, "dx")
