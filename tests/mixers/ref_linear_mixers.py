"""Float64 references of the linear-attention mixers, written from the papers.

Each function rebuilds a whole mixer from its parameters (pulled out of the
Flax variables with :func:`params_of`) as explicit Python loops over time:
projections, feature maps / rotations / decays, the state recurrence with
resets at segment starts, the per-head normalisation, the gate and the output
projection. Nothing here calls seqjax.

  * :func:`linear_attention_reference` — Katharopoulos et al. 2020 (elu + 1)
    and, with ``omega``, the Performer's FAVOR+ features (Choromanski et al. 2021).
  * :func:`retnet_reference` — Sun et al. 2023, multi-scale retention.
  * :func:`gla_reference` — Yang et al. 2024, gated linear attention.

Every function takes an ``xp`` module (``numpy`` or ``jax.numpy``) and uses
only operations both support (lists + ``xp.stack``, no in-place assignment),
so tests can also differentiate the same reference with ``jax.grad`` under
``jax.enable_x64``. Segment bookkeeping is NumPy on the integer ids.
"""

import functools

import jax
import numpy as np


def params_of(variables, xp=np, collection="params"):
    """Flat float64 dict ``{"q_proj.kernel": ..., "norm_scale": ...}`` of one collection."""
    import flax.linen as nn  # only to unbox logical-partitioning metadata

    out = {}
    for name, value in nn.meta.unbox(variables[collection]).items():
        if isinstance(value, dict):
            for leaf_name, leaf in value.items():
                out[f"{name}.{leaf_name}"] = xp.asarray(np.asarray(leaf, np.float64))
        else:
            out[name] = xp.asarray(np.asarray(value, np.float64))
    return out


def perturb(variables, rng, scale=0.2):
    """Adds ``scale · N(0, 1)`` to every parameter (not to ``constants``) so tests see all of them.

    At init norm scales are 1 and biases 0, values that would hide a missing
    scale or bias.
    """
    def move(path, leaf):
        if "constants" in jax.tree_util.keystr(path):
            return leaf
        leaf = np.asarray(leaf)
        return jax.numpy.asarray((leaf + scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype))

    return jax.tree_util.tree_map_with_path(move, variables)


@functools.partial(jax.jit, static_argnames=("module", "kind", "method", "statics"))
def _run_jitted(variables, *args, module, kind, method, statics, **kwargs):
    args = list(args)
    for i, value in statics:
        args.insert(i, value)
    fn = module.init if kind == "init" else module.apply
    return fn(variables, *args, method=method, **kwargs)


class Jitted:
    """A Flax module whose ``apply`` (and ``init``) run under ``jax.jit``.

    The harness calls ``module.apply(variables, ...)``; eager Flax compiles one
    small program per primitive and shape, jit one per method and shape (shared
    by every test with an equal module), which keeps these test files within
    their CPU budget. Integer arguments (``batch_size``, ``length``) are static.
    ``eager_init=True`` keeps ``init`` eager (cheaper where it holds a large
    primitive, such as the Performer's QR, whose eager compile is shared).
    """

    def __init__(self, module, eager_init=False):
        self.module = module
        self.eager_init = eager_init

    def _call(self, kind, variables, args, method, kwargs):
        statics = tuple((i, a) for i, a in enumerate(args) if isinstance(a, int))
        dynamic = [a for a in args if not isinstance(a, int)]
        return _run_jitted(
            variables, *dynamic, module=self.module, kind=kind, method=method, statics=statics, **kwargs
        )

    def apply(self, variables, *args, method=None, **kwargs):
        return self._call("apply", variables, args, method, kwargs)

    def init(self, key, *args, method=None, **kwargs):
        if self.eager_init:
            return self.module.init(key, *args, method=method, **kwargs)
        return self._call("init", key, args, method, kwargs)

    def __getattr__(self, name):
        return getattr(self.module, name)


def runs_of(segment_ids, batch, length):
    """Segment index per position (a new one wherever the id changes), ``(b, l)``."""
    if segment_ids is None:
        return np.zeros((batch, length), np.int64)
    ids = np.asarray(segment_ids)
    runs = np.zeros((batch, length), np.int64)
    for t in range(1, length):
        runs[:, t] = runs[:, t - 1] + (ids[:, t] != ids[:, t - 1])
    return runs


def _dense(p, name, x):
    y = x @ p[f"{name}.kernel"]
    if f"{name}.bias" in p:
        y = y + p[f"{name}.bias"]
    return y


def _heads(y, heads):
    return y.reshape(y.shape[:-1] + (heads, y.shape[-1] // heads))


def _silu(v, xp):
    return v / (1.0 + xp.exp(-v))


def _layer_norm_heads(o, scale, bias, eps, xp):
    """LayerNorm over each head's channels of ``o (b, h, dv)``, then the per-channel affine."""
    mean = xp.mean(o, axis=-1, keepdims=True)
    var = xp.mean((o - mean) ** 2, axis=-1, keepdims=True)
    y = (o - mean) / xp.sqrt(var + eps)
    return y.reshape(o.shape[0], -1) * scale + bias


# --- linear attention and Performer ------------------------------------------------------


def _elu_plus_one(v, xp):
    # elu(v) + 1 = v + 1 for v > 0, exp(v) otherwise (exp of min(v, 0) keeps both branches finite).
    return xp.where(v > 0, v + 1.0, xp.exp(xp.minimum(v, 0.0)))


def _favor(v, omega, stabilise, xp):
    """Positive random features ``exp(ωv − |v|²/2) / sqrt(m)`` of ``v (b, h, dk)``."""
    logits = xp.einsum("bhk,mk->bhm", v, omega) - 0.5 * xp.sum(v * v, axis=-1)[..., None]
    if stabilise:
        logits = logits - xp.max(logits, axis=-1, keepdims=True)
    return xp.exp(logits) / np.sqrt(omega.shape[0])


def linear_attention_reference(p, x, heads, *, causal=True, eps=1e-6, omega=None, segment_ids=None, xp=np):
    """Normalised linear attention, position by position.

    ``φ = elu + 1`` (Katharopoulos et al.) or, with ``omega``, the Performer's
    features of ``q dk^-1/4`` (queries divided by their largest feature) and
    ``k dk^-1/4``. Causal: ``S_t = S_{t-1} + φ(k_t) v_tᵀ``, ``z_t = z_{t-1} +
    φ(k_t)`` (zero at a segment start), ``o_t = φ(q_t)ᵀS_t / (φ(q_t)·z_t +
    eps)``. Bidirectional: the same sums over the whole segment, pair by pair.
    ``out = concat_h(o) W_O + b_O``.

    Args:
      p: :func:`params_of` dict (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, with biases).
      x: ``(b, l, d)`` float64.
      heads: number of heads.
      causal: causal or bidirectional.
      eps: denominator epsilon.
      omega: ``(m, dk)`` Performer projection, or None for elu + 1.
      segment_ids: optional ``(b, l)`` ids.
      xp: numpy or jax.numpy.

    Returns:
      ``(b, l, d)``.
    """
    batch, length, _ = x.shape
    runs = runs_of(segment_ids, batch, length)
    q, k, v = (_heads(_dense(p, n, x), heads) for n in ("q_proj", "k_proj", "v_proj"))
    dk = q.shape[-1]

    def features(t):
        if omega is None:
            return _elu_plus_one(q[:, t], xp), _elu_plus_one(k[:, t], xp)
        scale = dk**-0.25
        return _favor(q[:, t] * scale, omega, True, xp), _favor(k[:, t] * scale, omega, False, xp)

    fq, fk = zip(*(features(t) for t in range(length)))
    outs = []
    if causal:
        S = z = 0.0
        for t in range(length):
            keep = np.zeros(batch) if t == 0 else (runs[:, t] == runs[:, t - 1]).astype(np.float64)
            S = S * keep[:, None, None, None] + fk[t][..., :, None] * v[:, t][..., None, :]
            z = z * keep[:, None, None] + fk[t]
            num = xp.sum(fq[t][..., :, None] * S, axis=-2)
            den = xp.sum(fq[t] * z, axis=-1)[..., None]
            outs.append(num / (den + eps))
    else:
        for t in range(length):
            num = den = 0.0
            for s in range(length):
                same = (runs[:, t] == runs[:, s]).astype(np.float64)[:, None]
                w = xp.sum(fq[t] * fk[s], axis=-1) * same  # (b, h)
                num = num + w[..., None] * v[:, s]
                den = den + w
            outs.append(num / (den[..., None] + eps))
    o = xp.stack(outs, axis=1)
    return _dense(p, "out_proj", o.reshape(batch, length, -1))


# --- RetNet ---------------------------------------------------------------------------------


def _rotate(v, pos, base, xp):
    """Rotates channel pairs ``(2i, 2i+1)`` of ``v (b, h, dk)`` by ``pos · base^(−2i/dk)``."""
    dk = v.shape[-1]
    theta = base ** (-np.arange(0, dk, 2) / dk)
    angle = pos[:, None, None] * theta[None, None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    even, odd = v[..., 0::2], v[..., 1::2]
    return xp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(v.shape)


def retnet_reference(p, x, heads, *, eps=1e-5, rope_base=10000.0, segment_ids=None, xp=np):
    """Multi-scale retention (Sun et al. 2023), position by position.

    Per head ``h`` with ``γ_h = 1 − 2^(−5−h)``: ``q_t = RoPE(x_t W_Q, n_t) /
    sqrt(dk)``, ``k_t = RoPE(x_t W_K, n_t)`` with ``n_t`` the position within
    the segment; ``S_t = γ_h S_{t-1} + k_tᵀ v_t`` (zero at a segment start);
    ``o_t = q_t S_t``; ``y = GroupNorm_h(o)``; ``out = (swish(x W_G) ⊙ y) W_O``.

    Returns:
      ``(b, l, d)``.
    """
    batch, length, _ = x.shape
    runs = runs_of(segment_ids, batch, length)
    gammas = np.array([1.0 - 2.0 ** (-5 - i) for i in range(heads)])
    q, k, v = (_heads(_dense(p, n, x), heads) for n in ("q_proj", "k_proj", "v_proj"))
    dk = q.shape[-1]
    gate = _dense(p, "g_proj", x)
    pos = np.zeros(batch)
    S = 0.0
    outs = []
    for t in range(length):
        new = np.ones(batch, bool) if t == 0 else runs[:, t] != runs[:, t - 1]
        pos = np.where(new, 0.0, pos + 1.0)
        qt = _rotate(q[:, t], pos, rope_base, xp) / np.sqrt(dk)
        kt = _rotate(k[:, t], pos, rope_base, xp)
        decay = np.where(new, 0.0, 1.0)[:, None, None, None] * gammas[None, :, None, None]
        S = decay * S + kt[..., :, None] * v[:, t][..., None, :]
        o = xp.sum(qt[..., :, None] * S, axis=-2)  # (b, h, dv)
        y = _layer_norm_heads(o, p["norm_scale"], p["norm_bias"], eps, xp)
        outs.append(_silu(gate[:, t], xp) * y)
    return xp.stack(outs, axis=1) @ p["out_proj.kernel"]


# --- GLA ------------------------------------------------------------------------------------


def gla_reference(p, x, heads, *, eps=1e-5, temperature=16.0, segment_ids=None, xp=np):
    """Gated linear attention (Yang et al. 2024), position by position.

    ``α_t = sigmoid(x_t W_α1 W_α2 + b_α)^(1/τ)`` per key channel;
    ``S_t = diag(α_t) S_{t-1} + k_tᵀ v_t`` (zero at a segment start) with
    ``q_t = x_t W_Q / sqrt(dk)``; ``o_t = q_t S_t``; ``out = (swish(x W_r +
    b_r) ⊙ LN_h(o)) W_O``.

    Returns:
      ``(b, l, d)``.
    """
    batch, length, _ = x.shape
    runs = runs_of(segment_ids, batch, length)
    q, k, v = (_heads(_dense(p, n, x), heads) for n in ("q_proj", "k_proj", "v_proj"))
    dk = q.shape[-1]
    logits = _heads((x @ p["alpha_down.kernel"]) @ p["alpha_up.kernel"] + p["alpha_up.bias"], heads)
    alpha = (1.0 / (1.0 + xp.exp(-logits))) ** (1.0 / temperature)  # (b, l, h, dk)
    gate = _dense(p, "g_proj", x)
    S = 0.0
    outs = []
    for t in range(length):
        keep = np.zeros(batch) if t == 0 else (runs[:, t] == runs[:, t - 1]).astype(np.float64)
        S = keep[:, None, None, None] * alpha[:, t][..., :, None] * S + k[:, t][..., :, None] * v[:, t][..., None, :]
        o = xp.sum((q[:, t] / np.sqrt(dk))[..., :, None] * S, axis=-2)
        y = _layer_norm_heads(o, p["norm_scale"], p["norm_bias"], eps, xp)
        outs.append(_silu(gate[:, t], xp) * y)
    return xp.stack(outs, axis=1) @ p["out_proj.kernel"]
