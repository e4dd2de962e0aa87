"""Float64 references and closed-form mixing matrices of the linear-attention mixers, from the papers.

Each ``*_reference`` rebuilds a whole mixer from its parameters (pulled out of
the Flax variables with :func:`params_of`) as explicit Python loops over time:
projections, feature maps / rotations / decays, the state recurrence with
resets at segment starts, the per-head normalisation, the gate and the output
projection. Each ``*_matrix`` is the mixer's matrix ``M[b, h, t, s]`` (what the
mix does to the values ``v``) in closed form, pair by pair. Nothing here calls
seqjax.

  * :func:`linear_attention_reference`, :func:`linear_attention_matrix` —
    Katharopoulos et al. 2020 (elu + 1) and, with ``omega``, the Performer's
    FAVOR+ features (Choromanski et al. 2021).
  * :func:`retnet_reference`, :func:`retnet_matrix` — Sun et al. 2023,
    multi-scale retention.
  * :func:`gla_reference`, :func:`gla_matrix` — Yang et al. 2024, gated
    linear attention.

The references and :func:`linear_attention_matrix` take an ``xp`` module
(``numpy`` or ``jax.numpy``) and use only operations both support (lists +
``xp.stack``, no in-place assignment), so tests can also differentiate them
with ``jax.grad`` under ``jax.enable_x64``. Segment bookkeeping is NumPy on
the integer ids.

Last, the checks that ``test_linear.py`` and ``test_retention.py`` both run
against these oracles (float32 and float64 runs, gradients), written once;
they take the family file's ``reference(m, v, x, segment_ids, xp, params)``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from tests.mixers import harness
from tests.mixers.harness import runs_of, segments
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close


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
    """Every parameter moved by ``scale · N(0, 1)`` (norm scales 1 and biases 0 would hide a missing term)."""
    return harness.perturb(variables, rng, scale=scale)


def _dense(p, name, x):
    y = x @ p[f"{name}.kernel"]
    if f"{name}.bias" in p:
        y = y + p[f"{name}.bias"]
    return y


def _heads(y, heads):
    return y.reshape(y.shape[:-1] + (heads, y.shape[-1] // heads))


def _silu(v, xp):
    return v / (1.0 + xp.exp(-v))


def _recurrence(q, k, v, decay, runs, xp):
    """``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ`` (zero before a segment start), ``o_t = S_tᵀ q_t``.

    Args:
      q, k: ``(b, l, h, dk)``.
      v: ``(b, l, h, dv)``.
      decay: ``(b, l, h, dk)`` per-step decays ``a_t``, or None (no decay).
      runs: :func:`runs_of`.
      xp: numpy or jax.numpy.

    Returns:
      ``o`` ``(b, l, h, dv)``.
    """
    batch, length = q.shape[:2]
    S = 0.0
    outs = []
    for t in range(length):
        keep = np.zeros(batch) if t == 0 else (runs[:, t] == runs[:, t - 1]).astype(np.float64)
        a = keep[:, None, None, None] * (1.0 if decay is None else decay[:, t][..., None])
        S = a * S + k[:, t][..., :, None] * v[:, t][..., None, :]
        outs.append(xp.sum(q[:, t][..., :, None] * S, axis=-2))
    return xp.stack(outs, axis=1)


def _gated_output(p, o, gate, eps, xp):
    """``out = (swish(gate) ⊙ LN_h(o)) W_O``: LayerNorm over each head's channels, affine per channel."""
    mean = xp.mean(o, axis=-1, keepdims=True)
    var = xp.mean((o - mean) ** 2, axis=-1, keepdims=True)
    y = ((o - mean) / xp.sqrt(var + eps)).reshape(o.shape[:2] + (-1,)) * p["norm_scale"] + p["norm_bias"]
    return (_silu(gate, xp) * y) @ p["out_proj.kernel"]


# --- linear attention and Performer ------------------------------------------------------


def _elu_plus_one(v, xp):
    # elu(v) + 1 = v + 1 for v > 0, exp(v) otherwise (exp of min(v, 0) keeps both branches finite).
    return xp.where(v > 0, v + 1.0, xp.exp(xp.minimum(v, 0.0)))


def _favor(v, omega, stabilise, xp):
    """Positive random features ``exp(ωv − |v|²/2) / sqrt(m)`` of ``v (..., dk)``."""
    logits = xp.einsum("...k,mk->...m", v, omega) - 0.5 * xp.sum(v * v, axis=-1)[..., None]
    if stabilise:
        logits = logits - xp.max(logits, axis=-1, keepdims=True)
    return xp.exp(logits) / np.sqrt(omega.shape[0])


def linear_branches(p, x, heads, omega=None, xp=np):
    """``(φ(q), φ(k), v)`` per head, ``(b, l, h, m)``, ``(b, l, h, m)``, ``(b, l, h, dv)``.

    ``φ = elu + 1`` (Katharopoulos et al.) or, with ``omega``, the Performer's
    features of ``q dk^-1/4`` (queries divided by their largest feature) and
    ``k dk^-1/4``; projections with biases.
    """
    q, k, v = (_heads(_dense(p, n, x), heads) for n in ("q_proj", "k_proj", "v_proj"))
    if omega is None:
        return _elu_plus_one(q, xp), _elu_plus_one(k, xp), v
    scale = q.shape[-1] ** -0.25
    return _favor(q * scale, omega, True, xp), _favor(k * scale, omega, False, xp), v


def linear_attention_matrix(p, x, heads, *, causal=True, eps=1e-6, omega=None, segment_ids=None, xp=np):
    """``M[b, h, t, s] = φ(q_t)·φ(k_s) / (Σ_{s'} φ(q_t)·φ(k_{s'}) + eps)``, pair by pair.

    Over ``s, s' <= t`` (causal) or the whole segment, 0 elsewhere.

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
      ``(b, h, l, l)``.
    """
    batch, length, _ = x.shape
    runs = runs_of(segment_ids, batch, length)
    fq, fk, _ = linear_branches(p, x, heads, omega, xp)
    t, s = np.arange(length)[:, None], np.arange(length)[None, :]
    mask = (runs[:, None, :, None] == runs[:, None, None, :]) & ((t >= s) if causal else True)
    scores = xp.einsum("bthm,bshm->bhts", fq, fk) * mask
    return scores / (xp.sum(scores, axis=-1, keepdims=True) + eps)


def linear_attention_reference(p, x, heads, *, causal=True, eps=1e-6, omega=None, segment_ids=None, xp=np):
    """Normalised linear attention: ``out = concat_h(o) W_O + b_O``.

    Causal, position by position: ``S_t = S_{t-1} + φ(k_t) v_tᵀ``, ``z_t =
    z_{t-1} + φ(k_t)`` (zero at a segment start; ``z`` is ``S`` of a ones
    column), ``o_t = φ(q_t)ᵀS_t / (φ(q_t)·z_t + eps)``. Bidirectional: the
    same sums over the whole segment, ``o = M v`` with
    :func:`linear_attention_matrix`. Arguments as there.

    Returns:
      ``(b, l, d)``.
    """
    batch, length, _ = x.shape
    fq, fk, v = linear_branches(p, x, heads, omega, xp)
    if causal:
        ones = xp.ones(v.shape[:-1] + (1,))
        sz = _recurrence(fq, fk, xp.concatenate([v, ones], axis=-1), None, runs_of(segment_ids, batch, length), xp)
        o = sz[..., :-1] / (sz[..., -1:] + eps)
    else:
        M = linear_attention_matrix(p, x, heads, causal=False, eps=eps, omega=omega, segment_ids=segment_ids, xp=xp)
        o = xp.einsum("bhts,bshv->bthv", M, v)
    return _dense(p, "out_proj", o.reshape(batch, length, -1))


# --- RetNet and GLA ---------------------------------------------------------------------


def _rotate(v, pos, base, xp):
    """Rotates channel pairs ``(2i, 2i+1)`` of ``v (..., h, dk)`` by ``pos (...) · base^(−2i/dk)``."""
    dk = v.shape[-1]
    theta = base ** (-np.arange(0, dk, 2) / dk)
    angle = np.asarray(pos, np.float64)[..., None, None] * theta
    cos, sin = np.cos(angle), np.sin(angle)
    even, odd = v[..., 0::2], v[..., 1::2]
    return xp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(v.shape)


def positions_of(runs):
    """Each position's offset from the start of its segment, ``(b, l)``."""
    pos = np.zeros(runs.shape)
    for t in range(1, runs.shape[1]):
        pos[:, t] = np.where(runs[:, t] == runs[:, t - 1], pos[:, t - 1] + 1, 0)
    return pos


def retnet_branches(p, x, heads, *, rope_base=10000.0, segment_ids=None, xp=np):
    """``(q, k, v, log_decay, gate)`` of multi-scale retention, everything before the recurrence.

    ``q_t = RoPE(x_t W_Q, n_t) / sqrt(dk)``, ``k_t = RoPE(x_t W_K, n_t)`` with
    ``n_t`` the position within the segment; ``log_decay = log γ_h``, ``γ_h =
    1 − 2^(−5−h)``, broadcast to ``(b, l, h, dk)``; ``gate = x W_G``.
    """
    batch, length, _ = x.shape
    pos = positions_of(runs_of(segment_ids, batch, length))
    q, k, v = (_heads(_dense(p, n, x), heads) for n in ("q_proj", "k_proj", "v_proj"))
    dk = q.shape[-1]
    q, k = _rotate(q, pos, rope_base, xp) / np.sqrt(dk), _rotate(k, pos, rope_base, xp)
    gammas = np.array([1.0 - 2.0 ** (-5 - i) for i in range(heads)])
    log_decay = np.broadcast_to(np.log(gammas)[:, None], (batch, length, heads, dk))
    return q, k, v, log_decay, _dense(p, "g_proj", x)


def gla_branches(p, x, heads, *, temperature=16.0, xp=np):
    """``(q, k, v, log α, gate)`` of gated linear attention, everything before the recurrence.

    ``α_t = sigmoid(x_t W_α1 W_α2 + b_α)^(1/τ)`` per key channel, ``q_t = x_t
    W_Q / sqrt(dk)``, ``k_t = x_t W_K``, ``gate = x W_r + b_r``.
    """
    q, k, v = (_heads(_dense(p, n, x), heads) for n in ("q_proj", "k_proj", "v_proj"))
    logits = _heads((x @ p["alpha_down.kernel"]) @ p["alpha_up.kernel"] + p["alpha_up.bias"], heads)
    log_alpha = -xp.log(1.0 + xp.exp(-logits)) / temperature  # (b, l, h, dk)
    return q / np.sqrt(q.shape[-1]), k, v, log_alpha, _dense(p, "g_proj", x)


def retnet_reference(p, x, heads, *, eps=1e-5, rope_base=10000.0, segment_ids=None, xp=np):
    """Multi-scale retention (Sun et al. 2023), position by position.

    :func:`retnet_branches`; per head ``S_t = γ_h S_{t-1} + k_tᵀ v_t`` (zero
    at a segment start), ``o_t = q_t S_t``; ``y = GroupNorm_h(o)``; ``out =
    (swish(x W_G) ⊙ y) W_O``.

    Returns:
      ``(b, l, d)``.
    """
    q, k, v, log_decay, gate = retnet_branches(p, x, heads, rope_base=rope_base, segment_ids=segment_ids, xp=xp)
    o = _recurrence(q, k, v, np.exp(log_decay), runs_of(segment_ids, *x.shape[:2]), xp)
    return _gated_output(p, o, gate, eps, xp)


def gla_reference(p, x, heads, *, eps=1e-5, temperature=16.0, segment_ids=None, xp=np):
    """Gated linear attention (Yang et al. 2024), position by position.

    :func:`gla_branches`; ``S_t = diag(α_t) S_{t-1} + k_tᵀ v_t`` (zero at a
    segment start), ``o_t = q_t S_t``; ``out = (swish(x W_r + b_r) ⊙
    LN_h(o)) W_O``.

    Returns:
      ``(b, l, d)``.
    """
    q, k, v, log_alpha, gate = gla_branches(p, x, heads, temperature=temperature, xp=xp)
    o = _recurrence(q, k, v, xp.exp(log_alpha), runs_of(segment_ids, *x.shape[:2]), xp)
    return _gated_output(p, o, gate, eps, xp)


# --- closed-form matrices of the decayed recurrence ------------------------------------------


def pairwise_sums(a, runs):
    """``S[..., t, s] = Σ_{s<r≤t} a[..., r]`` and where it applies (``s <= t``, same segment).

    Args:
      a: ``(b, ..., l)`` per-position terms (log decays).
      runs: ``(b, l)`` :func:`runs_of`.

    Returns:
      ``(S (b, ..., l, l), keep (b, 1..., l, l))``.
    """
    length = a.shape[-1]
    idx = np.arange(length)
    S = np.cumsum(np.where(idx[:, None] > idx[None, :], a[..., :, None], 0.0), axis=-2)
    keep = (idx[:, None] >= idx[None, :]) & (runs[:, :, None] == runs[:, None, :])
    return S, keep.reshape((a.shape[0],) + (1,) * (a.ndim - 2) + (length, length))


def masked_exp(exponent, keep):
    """``exp(exponent)`` where ``keep``, exactly 0 elsewhere (no ``exp`` of junk)."""
    return np.exp(np.where(keep, exponent, -np.inf))


def decayed_matrix(q, k, log_decay, segment_ids=None):
    """``M[b, h, t, s] = Σ_j q_t[j] k_s[j] Π_{s<r≤t} a_r[j]`` for ``s <= t`` in one segment, else 0.

    Args:
      q, k: ``(b, l, h, dk)``.
      log_decay: ``(b, l, h, dk)`` ``log a_t``.
      segment_ids: optional ``(b, l)`` ids.

    Returns:
      ``(b, h, l, l)`` float64.
    """
    runs = runs_of(segment_ids, *q.shape[:2])
    S, keep = pairwise_sums(np.transpose(np.asarray(log_decay, np.float64), (0, 2, 3, 1)), runs)  # (b, h, dk, l, l)
    return np.einsum("bthk,bshk,bhkts->bhts", q, k, masked_exp(S, keep))


def retnet_matrix(p, x, heads, *, rope_base=10000.0, segment_ids=None):
    """RetNet's ``M[b, h, t, s] = γ_h^(t−s) q_t·k_s`` (rotated, scaled; ``s <= t``, same segment)."""
    q, k, _, log_decay, _ = retnet_branches(p, x, heads, rope_base=rope_base, segment_ids=segment_ids)
    return decayed_matrix(q, k, log_decay, segment_ids)


def gla_matrix(p, x, heads, *, temperature=16.0, segment_ids=None):
    """GLA's ``M[b, h, t, s] = Σ_j q_t[j] k_s[j] Π_{s<r≤t} α_r[j]`` (``s <= t``, same segment)."""
    q, k, _, log_alpha, _ = gla_branches(p, x, heads, temperature=temperature)
    return decayed_matrix(q, k, log_alpha, segment_ids)


# --- checks shared by test_linear.py and test_retention.py -------------------------------------


def check_float32(m, v, x, reference, rng, what):
    """The float32 mixer equals its float64 reference, without and with random segments."""
    x64 = np.asarray(x, np.float64)
    assert_rel_close(m.apply(v, x), reference(m, v, x64), harness.RTOL, what)
    seg = segments(rng, *x.shape[:2])
    y = m.apply(v, x, segment_ids=jnp.asarray(seg))
    assert_rel_close(y, reference(m, v, x64, seg), harness.RTOL, f"{what} segments")


def check_float64(make, rng, reference, matrix, what):
    """In float64 the op, the dense-matrix path and the matrix itself equal the oracles to rounding.

    Args:
      make: ``make(**fields)`` builds the mixer (float64 ``dtype``, chunked op added here).
      rng: the test's generator.
      reference: ``reference(m, v, x, segment_ids)``, the float64 loop reference.
      matrix: ``matrix(m, v, x, segment_ids)``, the closed-form mixing matrix.
      what: the mixer, for messages.
    """
    x = rng.standard_normal((2, 13, 16))
    seg = segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = make(dtype=jnp.float64, impl="chunked", chunk_size=4)
        v = perturb(harness.init(m, jnp.asarray(x)), rng)
        y = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg))
        assert y.dtype == jnp.float64
        M = m.apply(v, jnp.asarray(x), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        y_m = m.apply(v, jnp.asarray(x), M, segment_ids=jnp.asarray(seg), method="apply_mixing_matrix")
    y_ref = reference(m, v, x, seg)
    assert_rel_close(y, y_ref, RTOL_F64, f"{what} f64 op")
    assert_rel_close(y_m, y_ref, RTOL_F64, f"{what} f64 mixing matrix")
    assert_rel_close(M, matrix(m, v, x, seg), RTOL_F64, f"{what} f64 matrix vs closed form")


def check_gradients(m, v, x, seg, reference, rng):
    """Gradients of ``Σ w ⊙ m(x)`` for every parameter and ``x`` equal autodiff of the float64 reference.

    Args:
      m: the mixer (float32).
      v: its variables, unboxed (``constants`` are held fixed).
      x: ``(b, l, d)`` NumPy float64 input.
      seg: ``(b, l)`` segment ids.
      reference: ``reference(m, v, x, segment_ids, xp=..., params=...)``.
      rng: the test's generator (draws the weights ``w``).
    """
    w = rng.standard_normal(x.shape)
    rest = {k: val for k, val in v.items() if k != "params"}

    def loss(params, x):
        return jnp.sum(m.apply({"params": params, **rest}, x, segment_ids=jnp.asarray(seg)) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], jnp.float32(x))
    with jax.enable_x64(True):

        def ref_loss(p, x):
            return jnp.sum(reference(m, v, x, seg, xp=jnp, params=p) * w)

        # Eager: cheaper than compiling the unrolled float64 loop.
        r_p, r_x = jax.grad(ref_loss, argnums=(0, 1))(params_of(v, xp=jnp), jnp.asarray(x))
    g_p = params_of({"params": g_p})
    assert set(g_p) == set(r_p)
    for k in r_p:
        assert_rel_close(g_p[k], r_p[k], RTOL_GRAD, f"d{k}")
    assert_rel_close(g_x, r_x, RTOL_GRAD, "dx")
