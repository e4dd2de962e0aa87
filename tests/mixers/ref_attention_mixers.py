"""Float64 references of the softmax-attention mixers (mha, sliding_window, ngram, aaren).

Each function rebuilds a whole mixer from its parameters (pulled out of the
Flax variables with :func:`params_of`) and the papers' equations, with an
explicit Python loop over query positions: which keys a query sees is decided
with plain Python integers (causality, window, segment, n-gram match), and
the softmax is written out (max shift, exp, normalise). Nothing here calls
seqjax. RoPE is written as a complex rotation ``z_c · e^{i p θ_c}`` of the
channel pairs ``(c, c + d/2)``, ALiBi slopes from the paper's formula.

Every function takes an ``xp`` module (``numpy`` or ``jax.numpy``) and uses
only operations both support (lists + ``xp.stack``, no in-place assignment),
so the same code is differentiated by ``jax.grad`` under ``jax.enable_x64``.
Integer structure (segments, tokens to match) is always NumPy.
"""

import math

import numpy as np


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
    m = xp.max(scores, axis=-1, keepdims=True)
    w = xp.exp(scores - m)
    return xp.sum(w[..., None] * values, axis=-2) / xp.sum(w, axis=-1)[..., None]


def mha_reference(p, x, *, num_heads, num_kv_heads=None, head_dim=None, causal=True,
                  positions="rope", rope_base=10000.0, window=None, segment_ids=None, xp=np):
    """Multi-head attention (+ window), query by query.

    Args:
      p: params_of(variables): q_proj, k_proj, v_proj, out_proj (and pos_embedding).
      x: (b, l, d) float64.
      window: None (mha) or sliding_window's ``window``.

    Returns:
      (b, l, d).
    """
    b, l, d = x.shape
    h = num_heads
    hk = num_kv_heads or h
    dh = head_dim or d // h
    g = h // hk
    starts = segment_starts_of(segment_ids, b, l)
    slopes = alibi_slopes_ref(h)
    outs = []
    for bi in range(b):
        rel = [t - starts[bi][t] for t in range(l)]  # position within the segment
        xb = x[bi]
        xqk = xb
        if positions == "learned":
            xqk = xb + p["pos_embedding"][np.array(rel)]
        q = (xqk @ p["q_proj"]).reshape(l, h, dh)
        k = (xqk @ p["k_proj"]).reshape(l, hk, dh)
        v = (xb @ p["v_proj"]).reshape(l, hk, dh)
        if positions == "rope":
            q, k = rope_ref(q, rel, rope_base, xp), rope_ref(k, rel, rope_base, xp)
        kv_head = np.array([hi // g for hi in range(h)])
        rows = []
        for t in range(l):
            vis = []
            for s in range(l):
                if starts[bi][s] != starts[bi][t]:
                    continue
                if causal and s > t:
                    continue
                if window is not None and abs(t - s) >= window:
                    continue
                vis.append(s)
            vis = np.array(vis)
            # Query head hi reads key/value head hi // g: (n, h, dh) for the visible keys.
            ks, vs = k[vis][:, kv_head], v[vis][:, kv_head]
            scores = xp.einsum("nhd,hd->hn", ks, q[t]) / math.sqrt(dh)  # (h, n)
            if positions == "alibi":
                dist = np.abs(t - vis).astype(np.float64)
                scores = scores - np.array(slopes)[:, None] * dist[None, :]
            out = _softmax_average(scores, xp.swapaxes(vs, 0, 1), xp)  # (h, dh)
            rows.append(out.reshape(h * dh))
        outs.append(xp.stack(rows) @ p["out_proj"])
    return xp.stack(outs)


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


def aaren_reference(p, x, *, num_heads, head_dim=None, segment_ids=None, xp=np):
    """Aaren: o_t = Σ_{s≤t, same segment} softmax_s(q·k_s/√dh) v_s per head; y = W_o o."""
    b, l, d = x.shape
    h = num_heads
    dh = head_dim or d // h
    starts = segment_starts_of(segment_ids, b, l)
    outs = []
    for bi in range(b):
        k = (x[bi] @ p["k_proj"]).reshape(l, h, dh)
        v = (x[bi] @ p["v_proj"]).reshape(l, h, dh)
        rows = []
        for t in range(l):
            prefix = np.arange(starts[bi][t], t + 1)
            ks, vs = k[prefix], v[prefix]  # (n, h, dh)
            scores = xp.einsum("nhd,hd->hn", ks, p["query"]) / math.sqrt(dh)
            rows.append(_softmax_average(scores, xp.swapaxes(vs, 0, 1), xp).reshape(h * dh))
        outs.append(xp.stack(rows) @ p["out_proj"])
    return xp.stack(outs)


# --- test helper (not a reference) ------------------------------------------------------


class Jitted:
    """A Flax module whose ``init``/``apply`` run under ``jax.jit``.

    Eager Flax applies compile every primitive separately for each new shape,
    which costs several times one jitted compile; the mixer tests (and the
    shared harness, which takes any object with ``apply``) use this wrapper to
    stay within their CPU budget. Python scalars (batch sizes, lengths, flags)
    and ``method`` are static; arrays and pytrees of arrays are traced.
    Attribute reads fall through to the module (``m.causal``, ``m.n``, ...).
    """

    def __init__(self, module):
        self.module = module
        self._fns = {}

    def __getattr__(self, name):
        return getattr(self.module, name)

    @staticmethod
    def _is_static(value):
        return value is None or isinstance(value, (bool, int, float, str))

    def init(self, key, *args, **kwargs):
        return self.apply(None, key, *args, _init=True, **kwargs)

    def apply(self, variables, *args, method=None, _init=False, **kwargs):
        import jax

        static = tuple((i, a) for i, a in enumerate(args) if self._is_static(a))
        static_kw = tuple(sorted((k, v) for k, v in kwargs.items() if self._is_static(v)))
        dyn = [a for a in args if not self._is_static(a)]
        dyn_kw = {k: v for k, v in kwargs.items() if not self._is_static(v)}
        key = (_init, method, len(args), static, static_kw, tuple(sorted(dyn_kw)))
        if key not in self._fns:
            def call(variables, dyn, dyn_kw):
                it = iter(dyn)
                full = [dict(static)[i] if i in dict(static) else next(it) for i in range(len(args))]
                kw = dict(static_kw, **dyn_kw)
                if _init:
                    return self.module.init(*full, **kw)
                return self.module.apply(variables, *full, method=method, **kw)

            self._fns[key] = jax.jit(call)
        return self._fns[key](variables, dyn, dyn_kw)


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
